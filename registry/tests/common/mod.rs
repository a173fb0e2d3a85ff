//! Shared helpers of the registry's integration tests: an in-process server on
//! 127.0.0.1:0 with its own temp storage, and small digest/body helpers.
#![allow(dead_code)]

use gantry_registry::auth::Users;
use gantry_registry::{FsStorage, Registry, StorageConfig};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// A running registry; the server task is aborted on drop, the storage removed.
pub struct TestRegistry {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    pub storage: FsStorage,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestRegistry {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn u(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
    /// Files under `blobs/` (the visible content).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        files_under(&self.root().join("blobs"))
    }
    /// Files under `_uploads/` and `_tmp/` (work in progress).
    pub fn scratch_files(&self) -> Vec<PathBuf> {
        let mut v = files_under(&self.root().join("_uploads"));
        v.extend(files_under(&self.root().join("_tmp")));
        v
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub async fn start_with(config: StorageConfig, users: Users, delete: bool) -> TestRegistry {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FsStorage::open(dir.path(), config).expect("open storage");
    let registry = Registry::new(storage.clone(), users, delete);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        gantry_registry::serve(listener, registry).await.unwrap();
    });
    TestRegistry {
        url: format!("http://{addr}"),
        addr,
        dir,
        storage,
        task,
    }
}

pub async fn start() -> TestRegistry {
    start_with(
        StorageConfig::default(),
        Users::new(Default::default(), Default::default()),
        true,
    )
    .await
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("client")
}

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Error code of a distribution-spec error body.
pub async fn code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_string()
}

pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

/// Pushes a blob monolithically, asserting success.
pub async fn push_blob(c: &reqwest::Client, reg: &TestRegistry, repo: &str, data: &[u8]) -> String {
    let d = digest(data);
    let r = c
        .post(reg.u(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "push blob");
    d
}

pub fn image_manifest(config: &str, config_len: usize, layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, n)| {
            serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":d,"size":n})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType":"application/vnd.oci.image.config.v1+json","digest":config,"size":config_len},
        "layers": layers,
    }))
    .unwrap()
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

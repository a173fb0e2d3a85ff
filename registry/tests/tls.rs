//! The registry over mutual TLS: client certificates required and verified against the
//! cluster CA, the role in the certificate decides (pull: agent, viewer, controller,
//! operator, admin; push and delete: operator, admin), and a certificate file replaced on
//! disk is what the next connection gets.

mod common;

use common::{code, digest};
use gantry_registry::tls::{server_config, TlsListener};
use gantry_registry::{FsStorage, Registry, StorageConfig};
use gantry_security::pki::{Ca, LeafOptions};
use gantry_security::reload::CredentialFiles;
use gantry_security::{Credential, Identity, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

fn issue(ca: &Ca, role: Role, name: &str) -> Credential {
    ca.issue(
        &Identity::new(role, name).unwrap(),
        HOUR,
        &LeafOptions::default(),
    )
    .unwrap()
}

/// A registry serving mTLS with a `registry/reg-1` certificate from `ca`; its credential
/// files live in `dir` (`reg.crt`, `reg.key`, `ca.crt`).
struct TlsRegistry {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(ca: &Ca) -> TlsRegistry {
    let dir = tempfile::tempdir().unwrap();
    issue(ca, Role::Registry, "reg-1")
        .save(dir.path(), "reg")
        .unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    let certs =
        CredentialFiles::load(&dir.path().join("reg.crt"), &dir.path().join("reg.key")).unwrap();
    let cfg = server_config(&dir.path().join("ca.crt"), certs).unwrap();
    let storage = FsStorage::open(dir.path().join("data"), StorageConfig::default()).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, cfg).unwrap();
    let task = tokio::spawn(async move {
        gantry_registry::serve_tls(listener, Registry::with_roles(storage, true))
            .await
            .unwrap();
    });
    TlsRegistry { addr, dir, task }
}

impl TlsRegistry {
    fn u(&self, path: &str) -> String {
        format!(
            "https://{}:{}{path}",
            gantry_security::identity::REGISTRY_SERVER_NAME,
            self.addr.port()
        )
    }
}

/// A client trusting `trust` (the CA), presenting `cred` if any; it dials the registry's
/// name (`registry.gantry`, resolved to the test's address) as a cluster client does.
/// No connection reuse: every request is a new connection (and a full handshake: the
/// registry offers no session resumption).
fn client(trust: &Ca, cred: Option<&Credential>, addr: SocketAddr) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(trust.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match cred {
        Some(c) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .resolve(gantry_security::identity::REGISTRY_SERVER_NAME, addr)
        .pool_max_idle_per_host(0)
        .tls_info(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An error from below HTTP (connection/TLS), never a status.
fn assert_refused_below_http(r: Result<reqwest::Response, reqwest::Error>, what: &str) {
    match r {
        Ok(resp) => panic!(
            "{what}: expected a refused handshake, got HTTP {}",
            resp.status()
        ),
        Err(e) => assert!(
            e.is_connect() || e.is_request(),
            "{what}: expected a connection error, got {e:?}"
        ),
    }
}

#[tokio::test]
async fn no_certificate_or_another_cas_certificate_is_refused_in_the_handshake() {
    let ca = Ca::create("test").unwrap();
    let reg = start(&ca).await;

    let anonymous = client(&ca, None, reg.addr);
    assert_refused_below_http(anonymous.get(reg.u("/v2/")).send().await, "no certificate");

    let other = Ca::create("other").unwrap();
    let foreign = issue(&other, Role::Admin, "eve");
    let c = client(&ca, Some(&foreign), reg.addr);
    assert_refused_below_http(c.get(reg.u("/v2/")).send().await, "another CA's admin");

    // a client trusting another CA refuses the registry (the server is verified too)
    let viewer = issue(&ca, Role::Viewer, "v");
    let c = client(&other, Some(&viewer), reg.addr);
    assert_refused_below_http(c.get(reg.u("/v2/")).send().await, "server from another CA");

    // the right CA and certificate: served
    let c = client(&ca, Some(&viewer), reg.addr);
    let r = c.get(reg.u("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

async fn push_image(c: &reqwest::Client, reg: &TlsRegistry, repo: &str) -> reqwest::StatusCode {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let d = digest(config);
    let r = c
        .post(reg.u(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    if r.status() != 201 {
        return r.status();
    }
    let manifest = common::image_manifest(&d, config.len(), &[]);
    let r = c
        .put(reg.u(&format!("/v2/{repo}/manifests/v1")))
        .header("content-type", common::OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    r.status()
}

#[tokio::test]
async fn roles_decide_pull_and_push() {
    let ca = Ca::create("test").unwrap();
    let reg = start(&ca).await;
    let as_role = |role, name: &str| client(&ca, Some(&issue(&ca, role, name)), reg.addr);

    // operator and admin push
    assert_eq!(
        push_image(&as_role(Role::Operator, "ops"), &reg, "team/app").await,
        201
    );
    assert_eq!(
        push_image(&as_role(Role::Admin, "root"), &reg, "team/other").await,
        201
    );

    // agent, viewer, controller pull (manifest, blob HEAD, tags, catalog) and cannot push
    for (role, name) in [
        (Role::Agent, "node-1"),
        (Role::Viewer, "alice"),
        (Role::Controller, "1"),
    ] {
        let c = as_role(role, name);
        let r = c
            .get(reg.u("/v2/team/app/manifests/v1"))
            .header("accept", common::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{role} pulls the manifest");
        let m: serde_json::Value = r.json().await.unwrap();
        let config = m["config"]["digest"].as_str().unwrap().to_string();
        let r = c
            .head(reg.u(&format!("/v2/team/app/blobs/{config}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{role} HEADs a blob");
        let r = c.get(reg.u("/v2/team/app/tags/list")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{role} lists tags");
        let r = c.get(reg.u("/v2/_catalog")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{role} reads the catalog");

        // pushes: refused with DENIED naming the role, and nothing is stored
        let r = c
            .post(reg.u(&format!(
                "/v2/team/app/blobs/uploads/?digest={}",
                digest(b"x")
            )))
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{role} pushes a blob");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("role {role}")) && msg.contains(name),
            "{msg}"
        );
        let r = c
            .put(reg.u("/v2/team/app/manifests/v2"))
            .header("content-type", common::OCI_MANIFEST)
            .body(common::image_manifest(&config, 10, &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{role} pushes a manifest");
        assert_eq!(code(r).await, "DENIED");
        let r = c
            .delete(reg.u("/v2/team/app/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{role} deletes");
    }
    let r = as_role(Role::Viewer, "alice")
        .get(reg.u("/v2/team/app/manifests/v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the refused manifest was not stored");
    assert!(!reg
        .dir
        .path()
        .join("data/blobs/sha256")
        .join(&digest(b"x")[7..9])
        .join(&digest(b"x")[7..])
        .exists());

    // a registry's own certificate is no client credential
    let r = as_role(Role::Registry, "reg-2")
        .get(reg.u("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("role registry"));
}

fn served_identity(r: &reqwest::Response) -> Identity {
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    Identity::from_cert_der(info.peer_certificate().expect("server certificate")).unwrap()
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_used_by_the_next_connection() {
    let ca = Ca::create("test").unwrap();
    let reg = start(&ca).await;
    let c = client(&ca, Some(&issue(&ca, Role::Agent, "n1")), reg.addr);
    let r = c.get(reg.u("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_identity(&r).name, "reg-1");

    // rotation: new key and certificate written in place (temp + rename, key first)
    issue(&ca, Role::Registry, "reg-1-rotated")
        .save(reg.dir.path(), "reg")
        .unwrap();
    let r = c.get(reg.u("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_identity(&r).name, "reg-1-rotated");

    // a broken file does not take the registry down: the last good pair stays in use
    std::fs::write(reg.dir.path().join("reg.crt"), "not a certificate").unwrap();
    let r = c.get(reg.u("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_identity(&r).name, "reg-1-rotated");
}

//! The registry client against real registries on 127.0.0.1: the gantry registry (in
//! process) and the reference registry (`docker-registry`, started here, killed by PID).

mod image_support;

use gantry_agent::distribution::{self, ClientConfig, Credentials, DistributionError, Silent};
use gantry_agent::image::{manifest, Digest, ImageStore, Reference};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use image_support::{put_image, require_root, tree, Layer};

struct Server {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(router: axum::Router) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    (addr, task)
}

fn gantry_registry(
    users: gantry_registry::auth::Users,
) -> (gantry_registry::Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        gantry_registry::FsStorage::open(dir.path(), gantry_registry::StorageConfig::default())
            .unwrap();
    (gantry_registry::Registry::new(storage, users, true), dir)
}

async fn start_gantry() -> Server {
    let (reg, dir) = gantry_registry(gantry_registry::auth::Users::new(
        HashMap::new(),
        HashMap::new(),
    ));
    let (addr, task) = serve(gantry_registry::router(reg)).await;
    Server { addr, dir, task }
}

/// The reference registry on a free loopback port; killed by PID on drop.
struct RefRegistry {
    addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for RefRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_reference() -> RefRegistry {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start docker-registry ({e}): install it (scripts/setup.sh)")
        });
    let r = RefRegistry {
        addr: addr.clone(),
        child,
        _dir: dir,
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("docker-registry did not listen on {addr} within 10 s");
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Builds an image in `store` named `name` with one gzip layer per file set; returns the
/// manifest digest.
fn make_image(store: &ImageStore, name: &str, layers: &[Vec<(&str, Vec<u8>)>]) -> Digest {
    let tars: Vec<Vec<u8>> = layers
        .iter()
        .map(|files| {
            let mut l = Layer::new();
            for (n, d) in files {
                l.file(n, d, 0o644, 1_600_000_000);
            }
            l.tar()
        })
        .collect();
    put_image(store, name, &tars)
}

fn store() -> (ImageStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (ImageStore::open(dir.path()).unwrap(), dir)
}

fn cfg() -> ClientConfig {
    ClientConfig {
        max_parallel: 4,
        ..Default::default()
    }
}

fn random(n: usize, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    let mut x: u32 = 0x9e37_79b9 ^ seed as u32;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}

/// Push from one store, pull into another: same digest, layers unpacked, a second pull
/// and push skip everything.
async fn round_trip(host: &str) {
    let (a, _da) = store();
    let name = format!("{host}/test/app:v1");
    let md = make_image(
        &a,
        &name,
        &[
            vec![("etc/hello", b"hello\n".to_vec())],
            vec![("data/big.bin", random(3 << 20, 1))],
        ],
    );
    let r = distribution::push(&a, &name, &cfg(), Arc::new(Silent))
        .await
        .unwrap();
    assert_eq!(r.digest.as_ref(), Some(&md));
    assert_eq!(r.blobs_uploaded, 3);
    let again = distribution::push(&a, &name, &cfg(), Arc::new(Silent))
        .await
        .unwrap();
    assert_eq!((again.blobs_present, again.blobs_uploaded), (3, 0));

    let (b, _db) = store();
    let p = distribution::pull(&b, &name, &cfg(), &Silent)
        .await
        .unwrap();
    assert_eq!(p.digest, md);
    assert_eq!(p.layers_downloaded, 2);
    assert_eq!(p.name.as_deref(), Some(name.as_str()));
    let image = b.resolve(&Reference::parse(&name).unwrap()).unwrap();
    assert_eq!(image.manifest_digest, md);
    assert_eq!(p.chain_id.as_ref(), image.top_chain_id());
    let again = distribution::pull(&b, &name, &cfg(), &Silent)
        .await
        .unwrap();
    assert_eq!((again.layers_present, again.layers_downloaded), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_with_the_gantry_registry() {
    let s = start_gantry().await;
    round_trip(&s.addr.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_with_the_reference_registry() {
    let r = start_reference().await;
    round_trip(&r.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_push_and_cross_repository_mount() {
    let s = start_gantry().await;
    let host = s.addr.to_string();
    let (a, _da) = store();
    let first = format!("{host}/team/base:1");
    let md = make_image(&a, &first, &[vec![("x.bin", random(300_000, 2))]]);
    let chunked = ClientConfig {
        chunk_size: Some(64 * 1024),
        ..cfg()
    };
    let r = distribution::push(&a, &first, &chunked, Arc::new(Silent))
        .await
        .unwrap();
    assert_eq!(r.blobs_uploaded, 2);
    // The same image under another repository of the same registry: blobs are mounted.
    let second = format!("{host}/team/copy:1");
    a.index()
        .tag(
            &Reference::parse(&second).unwrap(),
            &md,
            manifest::OCI_MANIFEST,
            1,
        )
        .unwrap();
    let r = distribution::push(&a, &second, &cfg(), Arc::new(Silent))
        .await
        .unwrap();
    assert_eq!((r.blobs_mounted, r.blobs_uploaded), (2, 0));
    let (b, _db) = store();
    let p = distribution::pull(&b, &second, &cfg(), &Silent)
        .await
        .unwrap();
    assert_eq!(p.digest, md);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_refused_and_nothing_is_stored() {
    let s = start_gantry().await;
    let host = s.addr.to_string();
    let (a, _da) = store();
    let name = format!("{host}/bad/img:v1");
    make_image(&a, &name, &[vec![("f", random(100_000, 3))]]);
    distribution::push(&a, &name, &cfg(), Arc::new(Silent))
        .await
        .unwrap();
    let image = a.resolve(&Reference::parse(&name).unwrap()).unwrap();
    let layer = Digest::try_from(image.layers[0].digest()).unwrap();
    // Flip bytes of the layer on the registry's disk (same size).
    let path = s
        .dir
        .path()
        .join("blobs/sha256")
        .join(&layer.hex()[..2])
        .join(layer.hex());
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&path, &data).unwrap();

    let (b, db) = store();
    let err = distribution::pull(&b, &name, &cfg(), &Silent)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DistributionError::DigestMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&layer.to_string()), "{err}");
    assert!(!b.content().exists(&layer));
    assert!(
        b.index().list().unwrap().is_empty(),
        "no name for a failed pull"
    );
    assert!(
        empty_or_missing(&db.path().join("content/ingest")),
        "no leftovers in ingest"
    );
}

fn empty_or_missing(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_resolves_to_linux_amd64() {
    let s = start_gantry().await;
    let host = s.addr.to_string();
    let (a, _da) = store();
    let amd = format!("{host}/multi/app:amd64");
    let arm = format!("{host}/multi/app:arm64");
    let md_amd = make_image(&a, &amd, &[vec![("which", b"amd64".to_vec())]]);
    let md_arm = make_image(&a, &arm, &[vec![("which", b"arm64".to_vec())]]);
    distribution::push(&a, &amd, &cfg(), Arc::new(Silent))
        .await
        .unwrap();
    distribution::push(&a, &arm, &cfg(), Arc::new(Silent))
        .await
        .unwrap();
    let size = |d: &Digest| a.content().read(d).unwrap().len();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_INDEX,
        "manifests": [
            {"mediaType": manifest::OCI_MANIFEST, "digest": md_arm.to_string(), "size": size(&md_arm),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": manifest::OCI_MANIFEST, "digest": md_amd.to_string(), "size": size(&md_amd),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }))
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .put(format!("http://{host}/v2/multi/app/manifests/latest"))
        .header("content-type", manifest::OCI_INDEX)
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let (b, _db) = store();
    let name = format!("{host}/multi/app:latest");
    let p = distribution::pull(&b, &name, &cfg(), &Silent)
        .await
        .unwrap();
    assert_eq!(p.digest.to_string(), sha(&index));
    let image = b.resolve(&Reference::parse(&name).unwrap()).unwrap();
    assert_eq!(image.manifest_digest, md_amd);
    assert_eq!(p.layers_downloaded, 1, "only the amd64 layer is fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_the_gantry_registry() {
    let h = |p| bcrypt::hash(p, 4).unwrap();
    let users = gantry_registry::auth::Users::new(
        HashMap::new(),
        HashMap::from([("writer".to_string(), h("secret"))]),
    );
    let (reg, _dir) = gantry_registry(users);
    let (addr, task) = serve(gantry_registry::router(reg)).await;
    let _guard = AbortOnDrop(task);
    let host = addr.to_string();
    let (a, _da) = store();
    let name = format!("{host}/private/app:1");
    make_image(&a, &name, &[vec![("f", b"x".to_vec())]]);
    let err = distribution::push(&a, &name, &cfg(), Arc::new(Silent))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DistributionError::Unauthorized { .. }),
        "{err}"
    );
    let with = |pw: &str| ClientConfig {
        credentials: vec![(
            host.clone(),
            Credentials {
                username: "writer".into(),
                password: pw.into(),
            },
        )],
        ..cfg()
    };
    let err = distribution::push(&a, &name, &with("wrong"), Arc::new(Silent))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DistributionError::Unauthorized { .. }),
        "{err}"
    );
    distribution::push(&a, &name, &with("secret"), Arc::new(Silent))
        .await
        .unwrap();
    let (b, _db) = store();
    distribution::pull(&b, &name, &with("secret"), &Silent)
        .await
        .unwrap();
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A bearer-token registry: the gantry registry behind a gate that wants
/// `Bearer tok-123`, which `/token` issues for basic credentials `u:p`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow() {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let (reg, _dir) = gantry_registry(gantry_registry::auth::Users::new(
        HashMap::new(),
        HashMap::new(),
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let realm = format!("http://{addr}/token");
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let issued2 = issued.clone();
    let gate = axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let realm = realm.clone();
            let issued = issued2.clone();
            async move {
                let auth = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if req.uri().path() == "/token" {
                    let q = req.uri().query().unwrap_or("").to_string();
                    // "u:p" in base64
                    if auth == "Basic dTpw" && q.contains("scope=repository") {
                        issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return (StatusCode::OK, r#"{"token":"tok-123"}"#).into_response();
                    }
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                if auth != "Bearer tok-123" {
                    let challenge = format!(
                        "Bearer realm=\"{realm}\",service=\"test\",scope=\"repository:tok/app:pull,push\""
                    );
                    return (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, challenge)],
                    )
                        .into_response();
                }
                next.run(req).await
            }
        },
    );
    let app = gantry_registry::router(reg).layer(gate);
    let task = tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let _guard = AbortOnDrop(task);
    let host = addr.to_string();
    let (a, _da) = store();
    let name = format!("{host}/tok/app:1");
    let md = make_image(&a, &name, &[vec![("f", b"token".to_vec())]]);
    let creds = ClientConfig {
        credentials: vec![(
            host.clone(),
            Credentials {
                username: "u".into(),
                password: "p".into(),
            },
        )],
        ..cfg()
    };
    let r = distribution::push(&a, &name, &creds, Arc::new(Silent))
        .await
        .unwrap();
    assert_eq!(r.digest, Some(md.clone()));
    let (b, _db) = store();
    let p = distribution::pull(&b, &name, &creds, &Silent)
        .await
        .unwrap();
    assert_eq!(p.digest, md);
    assert!(issued.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let err = distribution::pull(&b, &name, &cfg(), &Silent)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DistributionError::Unauthorized { .. }),
        "{err}"
    );
}

/// Unmounts (detached) on drop.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Layers are unpacked while they download, each into its own snapshot, then stacked by
/// chain ID: the mounted stack shows the upper layer's whiteout hiding a lower file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_layers_stack_by_chain_id_with_whiteouts() {
    require_root("pulling into overlay snapshots (whiteout devices, overlay mount)");
    let s = start_gantry().await;
    let (a, _da) = store();
    let name = format!("{}/stack/img:v1", s.addr);
    let lower = Layer::new()
        .dir("a/", 0o755, 1_600_000_000)
        .file("a/keep", b"keep\n", 0o644, 1_600_000_000)
        .file("a/gone", b"gone\n", 0o644, 1_600_000_000)
        .tar();
    let upper = Layer::new()
        .file("a/.wh.gone", b"", 0o644, 1_600_000_000)
        .file("b/new", &random(2 << 20, 7), 0o600, 1_600_000_000)
        .tar();
    put_image(&a, &name, &[lower, upper]);
    distribution::push(&a, &name, &cfg(), Arc::new(Silent))
        .await
        .unwrap();

    let (b, db) = store();
    let p = distribution::pull(&b, &name, &cfg(), &Silent)
        .await
        .unwrap();
    let image = b.resolve(&Reference::parse(&name).unwrap()).unwrap();
    let snaps = b.snapshotter();
    use gantry_agent::image::Snapshotter;
    let top = snaps.stat(&image.chain_ids[1].to_string()).unwrap();
    assert_eq!(top.parent, Some(image.chain_ids[0].to_string()));
    assert_eq!(
        snaps.stat(&image.chain_ids[0].to_string()).unwrap().parent,
        None
    );
    assert_eq!(p.chain_id.as_ref(), Some(&image.chain_ids[1]));
    let keys: Vec<String> = snaps.list().unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(keys.len(), 2, "only the two layers remain: {keys:?}");

    let key = format!("view-{}", std::process::id());
    let mounts = snaps.view(&key, Some(&top.key)).unwrap();
    assert_eq!(mounts[0].kind, "overlay");
    let target = db.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(mounts[0].options.join(",").as_str()),
    )
    .expect("mount overlay");
    let guard = Unmount(target.clone());
    assert_eq!(std::fs::read(target.join("a/keep")).unwrap(), b"keep\n");
    assert!(!target.join("a/gone").exists(), "the whiteout hides a/gone");
    assert_eq!(
        std::fs::read(target.join("b/new")).unwrap(),
        random(2 << 20, 7)
    );
    drop(guard);
    snaps.remove(&key).unwrap();
}

/// A layer the unpacker refuses (an entry climbing out of the target) fails the pull while
/// it streams: the error names the entry, and neither blob, snapshot, name nor file
/// outside is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_layer_during_pull_leaves_nothing() {
    require_root("unpacking layers (owners, whiteouts)");
    let s = start_gantry().await;
    let (a, _da) = store();
    let name = format!("{}/evil/img:v1", s.addr);
    let escape = format!("escape-{}", std::process::id());
    let good = Layer::new()
        .file("ok.bin", &random(1 << 20, 9), 0o644, 1_600_000_000)
        .tar();
    let evil = Layer::new()
        .file("fine", b"x", 0o644, 1_600_000_000)
        .file(
            &format!("../../../{escape}"),
            b"pwned",
            0o644,
            1_600_000_000,
        )
        .tar();
    let md = put_image(&a, &name, &[good, evil]);
    distribution::push(&a, &name, &cfg(), Arc::new(Silent))
        .await
        .unwrap();
    let image = a.resolve_digest(&name, &md, None).unwrap();
    let evil_blob = Digest::try_from(image.layers[1].digest()).unwrap();

    let (b, db) = store();
    let err = distribution::pull(&b, &name, &cfg(), &Silent)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&escape), "entry named: {err}");
    assert!(
        !b.content().exists(&evil_blob),
        "refused layer's blob not stored"
    );
    use gantry_agent::image::Snapshotter;
    assert!(
        b.snapshotter().list().unwrap().is_empty(),
        "no snapshot left"
    );
    assert!(
        b.index().list().unwrap().is_empty(),
        "no name for a failed pull"
    );
    let left: Vec<String> = tree(&db.path().join("snapshots"))
        .into_iter()
        .filter(|p| !p.starts_with("metadata"))
        .collect();
    assert!(left.is_empty(), "snapshot dirs left behind: {left:?}");
    assert!(empty_or_missing(&db.path().join("content/ingest")));
    assert!(!tree(db.path()).iter().any(|p| p.contains(&escape)));
    assert!(!db.path().parent().unwrap().join(&escape).exists());
}

/// A gantry registry serving mutual TLS with a certificate of `server_role` from `ca`;
/// the client's files (`NAME.crt`, `NAME.key`, `ca.crt`) go to the returned dir too.
async fn start_mtls(
    ca: &gantry_security::Ca,
    server_role: gantry_security::Role,
) -> (Server, std::path::PathBuf) {
    use gantry_security::pki::LeafOptions;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    ca.issue(
        &gantry_security::Identity::new(server_role, "srv").unwrap(),
        Duration::from_secs(3600),
        &LeafOptions::default(),
    )
    .unwrap()
    .save(&pki, "srv")
    .unwrap();
    std::fs::write(pki.join("ca.crt"), ca.cert_pem()).unwrap();
    let certs =
        gantry_security::reload::CredentialFiles::load(&pki.join("srv.crt"), &pki.join("srv.key"))
            .unwrap();
    let cfg = gantry_registry::tls::server_config(&pki.join("ca.crt"), certs).unwrap();
    let storage = gantry_registry::FsStorage::open(
        dir.path().join("data"),
        gantry_registry::StorageConfig::default(),
    )
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let listener = gantry_registry::tls::TlsListener::new(l, cfg).unwrap();
    let task = tokio::spawn(async move {
        gantry_registry::serve_tls(
            listener,
            gantry_registry::Registry::with_roles(storage, true),
        )
        .await
        .unwrap()
    });
    (Server { addr, dir, task }, pki)
}

fn mtls_cfg(ca: &gantry_security::Ca, pki: &Path, role: gantry_security::Role) -> ClientConfig {
    let name = role.as_str();
    ca.issue(
        &gantry_security::Identity::new(role, name).unwrap(),
        Duration::from_secs(3600),
        &gantry_security::pki::LeafOptions::default(),
    )
    .unwrap()
    .save(pki, name)
    .unwrap();
    ClientConfig {
        max_parallel: 4,
        mtls: Some(
            distribution::tls::client_config(&distribution::tls::TlsFiles {
                cert: pki.join(format!("{name}.crt")),
                key: pki.join(format!("{name}.key")),
                ca: pki.join("ca.crt"),
            })
            .unwrap(),
        ),
        ..Default::default()
    }
}

/// The client over mutual TLS: an operator pushes and a viewer pulls from a registry
/// dialled by address (verified under registry.gantry); a server whose certificate is
/// from the same CA but not of role registry is refused, and so is one from another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_push_pull_and_the_registry_is_verified_by_role() {
    use gantry_security::{Ca, Role};
    let ca = Ca::create("test").unwrap();
    let (s, pki) = start_mtls(&ca, Role::Registry).await;
    let host = s.addr.to_string();
    let (a, _da) = store();
    let name = format!("{host}/tls/app:1");
    let md = make_image(&a, &name, &[vec![("f", random(100_000, 7))]]);
    // a viewer may not push; an operator may
    let e = distribution::push(
        &a,
        &name,
        &mtls_cfg(&ca, &pki, Role::Viewer),
        Arc::new(Silent),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("DENIED") && e.contains("role viewer"), "{e}");
    let r = distribution::push(
        &a,
        &name,
        &mtls_cfg(&ca, &pki, Role::Operator),
        Arc::new(Silent),
    )
    .await
    .unwrap();
    assert_eq!(r.digest.as_ref(), Some(&md));
    let (b, _db) = store();
    let p = distribution::pull(&b, &name, &mtls_cfg(&ca, &pki, Role::Agent), &Silent)
        .await
        .unwrap();
    assert_eq!(p.digest, md);

    // same CA, but the server is not a registry: no registry.gantry name, refused
    let (imposter, pki2) = start_mtls(&ca, Role::Operator).await;
    let (c, _dc) = store();
    let e = distribution::pull(
        &c,
        &format!("{}/tls/app:1", imposter.addr),
        &mtls_cfg(&ca, &pki2, Role::Agent),
        &Silent,
    )
    .await
    .unwrap_err();
    let chain = format!("{:?}", anyhow::Error::from(e));
    assert!(
        chain.contains("certificate") && chain.contains("registry.gantry"),
        "{chain}"
    );

    // a registry from another CA: refused
    let other = Ca::create("other").unwrap();
    let (foreign, _pki3) = start_mtls(&other, Role::Registry).await;
    let e = distribution::pull(
        &c,
        &format!("{}/tls/app:1", foreign.addr),
        &mtls_cfg(&ca, &pki2, Role::Agent),
        &Silent,
    )
    .await
    .unwrap_err();
    let chain = format!("{:?}", anyhow::Error::from(e));
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    assert!(c
        .resolve_str(&format!("{}/tls/app:1", foreign.addr))
        .is_err());
}

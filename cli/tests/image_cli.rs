//! The image verbs of the `gantry` binary on a temp store: load, images, tag, save, unpack,
//! rmi, prune — output and exit codes as scripts see them.
use std::path::Path;
use std::process::{Command, Output};

use gantry_agent::image::Digest;

mod common;

fn gantry(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .env("GANTRY_STORE", store)
        .output()
        .expect("run gantry")
}

fn ok(store: &Path, args: &[&str]) -> String {
    let o = gantry(store, args);
    assert!(
        o.status.success(),
        "gantry {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Writes a one-layer OCI layout (one file, hello.txt) naming its image by tag `1` only.
fn layout(dir: &Path) -> (Digest, Digest) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(5);
    h.set_mtime(1);
    b.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
    let layer = b.into_inner().unwrap();
    common::oci_layout(dir, &layer, serde_json::json!({}))
}

fn names(store: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(store, &["images", "--format", "json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn image_verbs_end_to_end() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "image_verbs_end_to_end needs root (unpack sets owners); run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (manifest, layer) = layout(&dir.path().join("layout"));
    let layout_dir = dir.path().join("layout");

    let out = ok(
        &store,
        &[
            "image",
            "load",
            "-i",
            layout_dir.to_str().unwrap(),
            "--name",
            "test/app",
        ],
    );
    assert_eq!(out.trim(), "Loaded image: test/app:1");
    assert_eq!(names(&store), vec!["test/app:1"]);
    let table = ok(&store, &["images"]);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(
        table.contains("test/app") && table.contains("2026-11-28"),
        "{table}"
    );

    ok(&store, &["tag", "test/app:1", "test/app:2"]);
    assert_eq!(names(&store), vec!["test/app:1", "test/app:2"]);
    // Bad target name: refused, names the part, nothing changes.
    let o = gantry(&store, &["image", "tag", "test/app:1", "test/App"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("\"App\"") && err.contains("lowercase"),
        "{err}"
    );
    assert_eq!(names(&store).len(), 2);

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&store, &["image", "inspect", "test/app:2"])).unwrap();
    assert_eq!(inspect[0]["manifestDigest"], manifest.to_string());
    assert_eq!(inspect[0]["unpacked"], false);
    // One layer: its chain ID is its diff_id.
    assert_eq!(
        ok(&store, &["image", "unpack", "test/app:2"]).trim(),
        layer.to_string()
    );

    let saved = dir.path().join("saved.tar");
    ok(
        &store,
        &["image", "save", "-o", saved.to_str().unwrap(), "test/app:2"],
    );
    let store2 = dir.path().join("store2");
    let out = ok(&store2, &["image", "load", "-i", saved.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: test/app:2");
    let again: serde_json::Value =
        serde_json::from_str(&ok(&store2, &["image", "inspect", "test/app:2"])).unwrap();
    assert_eq!(again[0]["manifestDigest"], manifest.to_string());

    // image rm with one unknown name changes nothing.
    let o = gantry(&store, &["image", "rm", "test/app:1", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(names(&store).len(), 2);
    // Removing one of two names frees nothing; removing the last frees everything.
    let out = ok(&store, &["image", "rm", "test/app:1"]);
    assert!(out.contains("Removed 0 blobs"), "{out}");
    let out = ok(&store, &["image", "rm", "test/app:2"]);
    assert!(
        out.contains("Removed 3 blobs") && out.contains("1 snapshots"),
        "{out}"
    );
    assert!(names(&store).is_empty());
    assert_eq!(
        std::fs::read_dir(store.join("content/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

/// Starts `gantry registry` on a free loopback port with `extra` flags; waits until it
/// listens.
fn start_registry(root: &Path, extra: &[&str]) -> (String, KillOnDrop) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["registry", "--listen", &addr, "--root"])
            .arg(root)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start gantry registry"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "gantry registry did not listen on {addr} within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (addr, child)
}

/// `gantry push` / `gantry pull` over mutual TLS: the credential's role decides (viewer
/// pulls, operator pushes), no credential gets nowhere; the registry refuses to start
/// without TLS flags or --insecure, and with a certificate that is not a registry's.
#[test]
fn push_and_pull_over_mutual_tls() {
    use gantry_security::pki::{Ca, LeafOptions};
    use gantry_security::{Identity, Role};
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "push_and_pull_over_mutual_tls needs root (unpack sets owners); run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = Ca::create("test").unwrap();
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("ca.crt"), ca.cert_pem()).unwrap();
    for (role, name) in [
        (Role::Registry, "reg"),
        (Role::Operator, "ops"),
        (Role::Viewer, "alice"),
    ] {
        ca.issue(
            &Identity::new(role, name).unwrap(),
            std::time::Duration::from_secs(3600),
            &LeafOptions::default(),
        )
        .unwrap()
        .save(&pki, name)
        .unwrap();
    }
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    // the flags for credential `name`, after `args`
    let with = |args: &[&str], name: &str| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--tls-cert".into(),
            p(&format!("{name}.crt")),
            "--tls-key".into(),
            p(&format!("{name}.key")),
            "--tls-ca".into(),
            p("ca.crt"),
        ]);
        v
    };
    let run = |store: &Path, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        gantry(store, &a)
    };
    let reg_root = dir.path().join("registry");
    let serve = [
        "registry",
        "--listen",
        "127.0.0.1:0",
        "--root",
        reg_root.to_str().unwrap(),
    ];

    // refusals at start: neither TLS nor --insecure; a certificate that is not a registry's
    let o = gantry(dir.path(), &serve);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--insecure"), "{err}");
    let o = run(dir.path(), with(&serve, "ops"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("operator/ops") && err.contains("role registry"),
        "{err}"
    );
    assert!(!reg_root.exists(), "a refused start created the storage");

    let reg_args = with(&[], "reg");
    let reg_args: Vec<&str> = reg_args.iter().map(String::as_str).collect();
    let (addr, _registry) = start_registry(&reg_root, &reg_args);

    let store = dir.path().join("store");
    let (manifest, layer) = layout(&dir.path().join("layout"));
    let name = format!("{addr}/test/app");
    let image = format!("{name}:1");
    let layout_dir = dir.path().join("layout");
    ok(
        &store,
        &[
            "image",
            "load",
            "-i",
            layout_dir.to_str().unwrap(),
            "--name",
            &name,
        ],
    );
    // no credential: plain HTTP to a TLS port gets nowhere
    let o = gantry(&store, &["push", &image]);
    assert!(!o.status.success(), "push without a credential succeeded");
    // a viewer may not push
    let o = run(&store, with(&["push", &image], "alice"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("DENIED") && err.contains("role viewer"),
        "{err}"
    );
    // an operator pushes
    let o = run(&store, with(&["push", &image], "ops"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("Digest: {manifest}")
    );

    // a viewer pulls it into another store, unpacked
    let store2 = dir.path().join("store2");
    let o = run(&store2, with(&["pull", &image], "alice"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "pull failed: {err}");
    assert!(
        err.contains(&format!("{}: pull complete (unpacked)", &layer.hex()[..12])),
        "{err}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&store2, &["image", "inspect", &image])).unwrap();
    assert_eq!(inspect[0]["unpacked"], true);
}

/// Kills the child (by its PID, through `Child::kill`) on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gantry push` to and `gantry pull` from a `gantry registry` on loopback: the pull says
/// per layer what it did in plain lines (stderr is not a terminal) and leaves the image
/// unpacked under its name.
#[test]
fn push_and_pull_through_gantry_registry() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "push_and_pull_through_gantry_registry needs root (unpack sets owners); run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let reg_root = dir.path().join("registry");
    let (addr, _registry) = start_registry(&reg_root, &["--insecure"]);

    let store = dir.path().join("store");
    let (manifest, layer) = layout(&dir.path().join("layout"));
    let name = format!("{addr}/test/app");
    ok(
        &store,
        &[
            "image",
            "load",
            "-i",
            dir.path().join("layout").to_str().unwrap(),
            "--name",
            &name,
        ],
    );
    let pushed = ok(&store, &["push", &format!("{name}:1")]);
    assert_eq!(pushed.trim(), format!("Digest: {manifest}"));

    let store2 = dir.path().join("store2");
    let o = gantry(&store2, &["pull", &format!("{name}:1")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "pull failed: {err}");
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![format!("{name}:1"), format!("Digest: {manifest}")]
    );
    let short = &layer.hex()[..12];
    assert!(
        err.contains(&format!("{short}: downloading"))
            && err.contains(&format!("{short}: pull complete (unpacked)")),
        "{err}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&store2, &["image", "inspect", &format!("{name}:1")])).unwrap();
    assert_eq!(inspect[0]["unpacked"], true);

    // A second pull finds everything present.
    let o = gantry(&store2, &["pull", &format!("{name}:1")]);
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("{short}: already exists")),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

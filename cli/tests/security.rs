//! Issue 10 end to end with real processes: a controller bootstrapped with mutual TLS
//! (`controller run --bootstrap`, no --insecure), the admin context it writes, join tokens
//! (`gantry token`), `gantry credential request`, and an agent joining with a token.
//! No certificate / another CA's certificate → refused; expired, revoked, unknown tokens →
//! refused naming why; an agent's certificate may not create services, report another
//! node's allocations or list tokens; a viewer may not write; an agent renews its
//! certificate (TTL of seconds) under write load and its node never goes down.

mod common;

use common::cluster::{agent_args, strings, Daemon};
use gantry_controller::api::ControllerClient;
use gantry_controller::raft::network::Transport;
use gantry_controller::state::{Command, Node, NodeStatus, Reply, Resources, ServiceSpec};
use gantry_proto::cluster::ReadKind;
use gantry_security::context::Context;
use gantry_security::pki::{Ca, Credential, LeafOptions};
use gantry_security::tls::CertStore;
use gantry_security::{Identity, Role};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::{Duration, Instant};

/// A TLS controller bootstrapped in `dir`; waits for its admin context to answer.
async fn secure_controller(dir: &Path, extra: &[&str]) -> (Daemon, String, PathBuf) {
    let addr = common::free_addr("127.0.0.1");
    let data = dir.join("ctl");
    let mut args = strings(&[
        "controller",
        "run",
        "--id",
        "1",
        "--listen",
        &addr,
        "--data-dir",
        &data.display().to_string(),
        "--bootstrap",
        "--heartbeat-ms",
        "50",
        "--election-timeout-ms",
        "300",
        "--node-ttl-ms",
        "1500",
        "--node-grace-ms",
        "1000",
    ]);
    args.extend(strings(extra));
    let d = Daemon::spawn_with(&args, &dir.join("ctl.log"), false);
    let ctx = data.join("pki").join("admin.context");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ctx.exists() {
            let mut c = client_for(&ctx, &addr);
            c.retry_for = Duration::from_millis(300);
            if c.status().await.is_ok_and(|s| s.leader.is_some()) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "controller not up in 30 s: {}",
            std::fs::read_to_string(dir.join("ctl.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mode = std::fs::metadata(&ctx).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin context mode");
    let key_mode = std::fs::metadata(data.join("pki/ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600, "ca.key mode");
    (d, addr, ctx)
}

fn client_with(ca_pem: &str, cred: Option<&Credential>, addr: &str) -> ControllerClient {
    let certs = cred.map(|c| CertStore::new(c).unwrap());
    let mut c =
        ControllerClient::with_transport(vec![addr.into()], Transport::tls(ca_pem, certs).unwrap());
    c.retry_for = Duration::from_secs(2);
    c
}

fn client_for(ctx: &Path, addr: &str) -> ControllerClient {
    let ctx = Context::load(ctx).unwrap();
    client_with(&ctx.ca_pem, Some(&ctx.credential()), addr)
}

/// The CLI with the admin context and no GANTRY_INSECURE: (ok, stdout, stderr).
fn cli(ctx: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Proc::new(common::gantry_bin())
        .env_remove("GANTRY_INSECURE")
        .env("GANTRY_CONTEXT", ctx)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn token(ctx: &Path, role: &str, ttl: &str) -> String {
    let (ok, out, err) = cli(ctx, &["token", "create", "--role", role, "--ttl", ttl]);
    assert!(ok, "token create: {err}");
    out
}

/// `credential request` for `name` into `dir`: Ok(credential) or Err(stderr).
fn request(addr: &str, tok: &str, name: &str, dir: &Path) -> Result<Credential, String> {
    let (ok, _, err) = cli(
        Path::new("/nonexistent"),
        &[
            "credential",
            "request",
            "--join",
            addr,
            "--token",
            tok,
            "--name",
            name,
            "--out",
            &dir.display().to_string(),
        ],
    );
    if !ok {
        return Err(err);
    }
    let key_mode = std::fs::metadata(dir.join(format!("{name}.key")))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    Ok(Credential::load(dir, name).unwrap())
}

fn register(name: &str) -> Command {
    Command::RegisterNode {
        name: name.into(),
        address: "127.0.0.1:1".into(),
        labels: BTreeMap::new(),
        capacity: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            pids: 100,
        },
        allocatable: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            pids: 100,
        },
        api: None,
    }
}

fn code(e: &gantry_controller::api::ClientError) -> Option<tonic::Code> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_tokens_and_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ctl, addr, ctx) = secure_controller(tmp.path(), &[]).await;
    let ca_pem = Context::load(&ctx).unwrap().ca_pem;

    // no certificate: TLS, but no identity → UNAUTHENTICATED
    let mut anon = client_with(&ca_pem, None, &addr);
    let e = anon
        .read::<Vec<Node>>(ReadKind::Nodes, true)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
    // plain TCP gets nowhere
    let mut plain = ControllerClient::new(vec![addr.clone()]);
    plain.retry_for = Duration::from_millis(500);
    assert!(plain.status().await.is_err());
    // a certificate from another CA: the handshake fails
    let other = Ca::create("other").unwrap();
    let eve = other
        .issue(
            &Identity::new(Role::Admin, "eve").unwrap(),
            Duration::from_secs(3600),
            &LeafOptions::default(),
        )
        .unwrap();
    let mut foreign = client_with(&ca_pem, Some(&eve), &addr);
    foreign.retry_for = Duration::from_millis(500);
    let e = foreign.status().await.unwrap_err();
    assert!(code(&e) != Some(tonic::Code::Ok), "{e}");
    assert!(foreign.write(&register("eve")).await.is_err());
    // the CLI without a context file says what to do
    let (ok, _, err) = cli(&tmp.path().join("missing"), &["node", "ls"]);
    assert!(!ok && err.contains("no context file"), "{err}");

    // tokens: a good one works once per name; expired, revoked, unknown are refused
    let creds = tmp.path().join("creds");
    let agent_tok = token(&ctx, "agent", "1h");
    let n1 = request(&addr, &agent_tok, "n1", &creds).unwrap();
    assert_eq!(n1.identity().unwrap().to_string(), "agent/n1");
    assert!(std::fs::read_to_string(creds.join("ca.crt")).unwrap() == ca_pem);

    let short = token(&ctx, "viewer", "1s");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = request(&addr, &short, "late", &creds).unwrap_err();
    assert!(e.contains("expired"), "{e}");

    let revoked = token(&ctx, "viewer", "1h");
    let id = gantry_security::token::JoinToken::parse(&revoked)
        .unwrap()
        .id;
    let (ok, _, err) = cli(&ctx, &["token", "revoke", &id]);
    assert!(ok, "{err}");
    let e = request(&addr, &revoked, "r", &creds).unwrap_err();
    assert!(e.contains("revoked"), "{e}");

    let mut unknown = gantry_security::token::JoinToken::parse(&agent_tok).unwrap();
    unknown.id = "000000000000".into();
    let e = request(&addr, &unknown.to_string(), "u", &creds).unwrap_err();
    assert!(e.contains("unknown"), "{e}");
    let mut wrong = gantry_security::token::JoinToken::parse(&agent_tok).unwrap();
    wrong.secret = "0".repeat(64);
    let e = request(&addr, &wrong.to_string(), "w", &creds).unwrap_err();
    assert!(e.contains("wrong secret"), "{e}");
    // a token pinning another CA is never sent
    let mut pinned = gantry_security::token::JoinToken::parse(&agent_tok).unwrap();
    pinned.ca_sha256 = "0".repeat(64);
    let e = request(&addr, &pinned.to_string(), "p", &creds).unwrap_err();
    assert!(e.contains("refusing to send the token"), "{e}");

    let (ok, out, err) = cli(&ctx, &["token", "ls"]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked") && out.contains("expired") && out.contains("agent"));

    // the agent's certificate: its own node only
    let mut agent = client_with(&ca_pem, Some(&n1), &addr);
    let (_, r) = agent.write(&register("n1")).await.unwrap();
    let Ok(Reply::NodeRegistered { id: me }) = r else {
        panic!("{r:?}")
    };
    let e = agent.write(&register("n2")).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    let mut admin = client_for(&ctx, &addr);
    let (_, r) = admin.write(&register("n2")).await.unwrap();
    let Ok(Reply::NodeRegistered { id: n2 }) = r else {
        panic!("{r:?}")
    };
    let upsert = Command::UpsertService {
        name: "web".into(),
        spec: ServiceSpec::default(),
        expected_index: None,
    };
    let e = agent.write(&upsert).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    assert!(e.to_string().contains("agent/n1"), "{e}");
    let other_node = Command::ReportAllocStatus {
        node: n2,
        batch: vec![],
    };
    let e = agent.write(&other_node).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    let own = Command::ReportAllocStatus {
        node: me,
        batch: vec![],
    };
    agent.write(&own).await.unwrap().1.unwrap();
    let e = agent.heartbeat(n2).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    agent.heartbeat(me).await.unwrap();
    let e = agent
        .read::<serde_json::Value>(ReadKind::Tokens, false)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    // it reads the state (for DNS and endpoints), without the tokens
    let (_, image): (u64, serde_json::Value) = agent.read(ReadKind::State, false).await.unwrap();
    assert!(image.get("tokens").is_none(), "{image}");
    let (_, image): (u64, serde_json::Value) = admin.read(ReadKind::State, false).await.unwrap();
    assert!(image.get("tokens").is_some(), "{image}");
    let e = agent.add_member(9, "127.0.0.1:1").await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");

    // a viewer reads and never writes
    let viewer = request(&addr, &token(&ctx, "viewer", "1h"), "eyes", &creds).unwrap();
    let mut v = client_with(&ca_pem, Some(&viewer), &addr);
    let (_, nodes): (u64, Vec<Node>) = v.read(ReadKind::Nodes, false).await.unwrap();
    assert_eq!(nodes.len(), 2);
    let e = v.write(&upsert).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    let drain = Command::SetNodeStatus {
        node: me,
        status: NodeStatus::Draining,
    };
    let e = v.write(&drain).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    // an operator drains but does not touch tokens or membership
    let op = request(&addr, &token(&ctx, "operator", "1h"), "ops", &creds).unwrap();
    let mut o = client_with(&ca_pem, Some(&op), &addr);
    o.write(&drain).await.unwrap().1.unwrap();
    let e = o
        .write(&Command::RevokeToken { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    let e = o.remove_member(1).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
}

/// A second member joins with a controller token (and receives the CA key, 0600), Raft
/// and forwarding run over mutual TLS; an agent token does not make a controller; the
/// joined member restarts without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_join_with_a_controller_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ctl, addr, ctx) = secure_controller(tmp.path(), &[]).await;
    let member = |id: u64, tok: Option<&str>, log: &str| {
        let a = common::free_addr("127.0.0.1");
        let mut args = strings(&[
            "controller",
            "run",
            "--id",
            &id.to_string(),
            "--listen",
            &a,
            "--data-dir",
            &tmp.path().join(format!("ctl{id}")).display().to_string(),
            "--heartbeat-ms",
            "50",
            "--election-timeout-ms",
            "300",
            "--join",
            &addr,
        ]);
        if let Some(t) = tok {
            args.extend(strings(&["--token", t]));
        }
        (a, Daemon::spawn_with(&args, &tmp.path().join(log), false))
    };
    // an agent token: refused, nothing joins
    let agent_tok = token(&ctx, "agent", "1h");
    let (_, mut bad) = member(3, Some(&agent_tok), "m3.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = bad.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "member with an agent token still running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(tmp.path().join("m3.log")).unwrap();
    assert!(log.contains("not a controller token"), "{log}");

    let tok = token(&ctx, "controller", "1h");
    let (addr2, m2) = member(2, Some(&tok), "m2.log");
    let mut admin = client_for(&ctx, &addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = admin.status().await.unwrap();
        if st.members.iter().filter(|m| m.voter).count() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 2 did not join: {}",
            std::fs::read_to_string(tmp.path().join("m2.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = tmp.path().join("ctl2/pki/ca.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cred = Credential::load(&tmp.path().join("ctl2/pki"), "member").unwrap();
    assert_eq!(cred.identity().unwrap().to_string(), "controller/2");
    // a write through member 2 (forwarded to the leader over mTLS when it follows)
    let mut via2 = client_for(&ctx, &addr2);
    via2.write(&register("via2")).await.unwrap().1.unwrap();
    // restart without a token: its certificate is in its data dir
    drop(m2);
    let _m2 = {
        let args = strings(&[
            "controller",
            "run",
            "--id",
            "2",
            "--listen",
            &addr2,
            "--data-dir",
            &tmp.path().join("ctl2").display().to_string(),
            "--heartbeat-ms",
            "50",
            "--election-timeout-ms",
            "300",
        ]);
        Daemon::spawn_with(&args, &tmp.path().join("m2-again.log"), false)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = client_for(&ctx, &addr2);
        c.retry_for = Duration::from_millis(300);
        if c.status().await.is_ok_and(|s| s.leader.is_some()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 2 did not come back: {}",
            std::fs::read_to_string(tmp.path().join("m2-again.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent joins with a token, renews its 6 s certificate several times while an admin
/// writes in a loop, and its node stays Ready all along (node TTL 1.5 s: one lost second
/// of heartbeats would mark it down); restarted without a token it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_joins_with_a_token_and_rotates_without_losing_heartbeats() {
    common::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (_ctl, addr, ctx) = secure_controller(tmp.path(), &["--cert-ttl", "6s"]).await;
    let tok = token(&ctx, "agent", "1h");
    let mut args = agent_args(tmp.path(), "rot", &[], &addr);
    args.extend(strings(&["--token", &tok]));
    let agent = Daemon::spawn_with(&args, &tmp.path().join("rot.log"), false);
    let mut admin = client_for(&ctx, &addr);

    let ready = |nodes: &[Node]| {
        nodes
            .iter()
            .find(|n| n.name == "rot")
            .map(|n| n.status == NodeStatus::Ready)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, nodes): (u64, Vec<Node>) = admin.read(ReadKind::Nodes, false).await.unwrap();
        if ready(&nodes) == Some(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent not registered: {}",
            std::fs::read_to_string(tmp.path().join("rot.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pki = tmp.path().join("rot-root").join("pki");
    let first = Credential::load(&pki, "node").unwrap();
    assert_eq!(first.identity().unwrap().to_string(), "agent/rot");

    // 14 s: at least three renewals of a 6 s certificate, under load
    let mut load = client_for(&ctx, &addr);
    let writer = tokio::spawn(async move {
        let mut i = 0u64;
        let until = Instant::now() + Duration::from_secs(14);
        while Instant::now() < until {
            let _ = load.write(&register(&format!("load-{}", i % 50))).await;
            i += 1;
        }
        i
    });
    let until = Instant::now() + Duration::from_secs(14);
    let mut seen = std::collections::HashSet::new();
    while Instant::now() < until {
        let (_, nodes): (u64, Vec<Node>) = admin.read(ReadKind::Nodes, false).await.unwrap();
        assert_eq!(
            ready(&nodes),
            Some(true),
            "node went down during rotation: {}",
            std::fs::read_to_string(tmp.path().join("rot.log")).unwrap_or_default()
        );
        seen.insert(Credential::load(&pki, "node").unwrap().cert_pem);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let writes = writer.await.unwrap();
    assert!(writes > 50, "load: {writes} writes");
    assert!(
        seen.len() >= 3,
        "{} distinct certificates seen in 14 s",
        seen.len()
    );
    let log = std::fs::read_to_string(tmp.path().join("rot.log")).unwrap();
    assert!(
        log.matches("node certificate renewed").count() >= 2,
        "{log}"
    );

    // restart without a token: the kept certificate is enough
    drop(agent);
    let args = agent_args(tmp.path(), "rot", &[], &addr);
    let _again = Daemon::spawn_with(&args, &tmp.path().join("rot-again.log"), false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(tmp.path().join("rot-again.log")).unwrap_or_default();
        if log.contains("cluster mode") {
            break;
        }
        assert!(Instant::now() < deadline, "agent did not restart: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, nodes): (u64, Vec<Node>) = admin.read(ReadKind::Nodes, false).await.unwrap();
    assert_eq!(ready(&nodes), Some(true));
}

/// The agent's node API over mutual TLS (`gantry service logs`): admin and viewer
/// credentials read an allocation's log from the node; the node certificate of an agent
/// is refused by role; the node is verified under its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_logs_over_mutual_tls_by_role() {
    common::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rootfs = common::busybox_rootfs(dir);
    let (_ctl, addr, ctx) = secure_controller(dir, &[]).await;
    let tok = token(&ctx, "agent", "1h");
    let mut args = agent_args(dir, "tlsnode", &[], &addr);
    args.extend(strings(&["--token", &tok]));
    let mut agent = Daemon::spawn_with(&args, &dir.join("tlsnode.log"), false);
    let image = format!("rootfs:{}", rootfs.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = cli(&ctx, &["node", "ls"]);
        if out.contains("tlsnode") {
            break;
        }
        assert!(Instant::now() < deadline, "agent not registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, _, err) = cli(
        &ctx,
        &[
            "service",
            "create",
            "talk",
            "--image",
            &image,
            "--entrypoint",
            "/bin/sh",
            "--",
            "-c",
            "echo hello-over-tls; exec sleep 1000",
        ],
    );
    assert!(ok, "service create: {err}");

    // admin: the line, prefixed, read from the node over mutual TLS
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, err) = cli(&ctx, &["service", "logs", "talk"]);
        if out.contains("@tlsnode | hello-over-tls") {
            break;
        }
        assert!(Instant::now() < deadline, "no log in 30 s: {out} / {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin = Context::load(&ctx).unwrap();
    let context_of = |cred: &Credential, name: &str| {
        let path = dir.join(format!("{name}.context"));
        Context {
            controllers: vec![addr.clone()],
            ca_pem: admin.ca_pem.clone(),
            cert_pem: cred.cert_pem.clone(),
            key_pem: cred.key_pem.clone(),
        }
        .save(&path)
        .unwrap();
        path
    };
    // viewer: reads
    let creds = dir.join("creds");
    let viewer = request(&addr, &token(&ctx, "viewer", "1h"), "eyes", &creds).unwrap();
    let (ok, out, err) = cli(&context_of(&viewer, "eyes"), &["service", "logs", "talk"]);
    assert!(
        ok && out.contains("hello-over-tls"),
        "viewer: {out} / {err}"
    );
    // an agent's certificate (another node's, here the node's own): refused by role
    let node = Credential::load(&dir.join("tlsnode-root").join("pki"), "node").unwrap();
    let (ok, out, err) = cli(&context_of(&node, "node"), &["service", "logs", "talk"]);
    assert!(!ok && !out.contains("hello"), "agent: {out}");
    assert!(err.contains("may not read this node's logs"), "{err}");

    let (ok, _, err) = cli(&ctx, &["service", "rm", "talk"]);
    assert!(ok, "{err}");
    // Wait for the removal itself (stop, the runtime's delete, the record): stopping
    // the agent before that once left the container running, with its cgroup.
    let sock = format!("unix://{}", dir.join("tlsnode-sock").display());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(common::gantry_bin())
            .args(["ps", "-a", "-q", "--host", &sock])
            .output()
            .unwrap();
        if out.status.success() && out.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container was not removed 30 s after rm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.signal(libc::SIGTERM);
    common::assert_cgroups_gone(&common::cluster::cgroup_parent(dir, "tlsnode"));
    common::assert_no_processes_mentioning(&dir.join("tlsnode-run"));
}

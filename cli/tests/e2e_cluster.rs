//! End to end on the namespace cluster of `deploy/cluster.sh` (issue 8): 3 controllers
//! (sites onprem, cloud, dr), a registry and 5 agents (env dev/qa/prod at sites onprem and
//! cloud), each in its own network namespace on a bridge, run by the real `gantry` binary.
//! Every test brings up its own cluster (own prefix, /24, state dir), drives it with the
//! CLI and the controller API, breaks hosts with the script's verbs, and tears it down in
//! a Drop guard, then checks that nothing of it is left (namespaces, links, mounts,
//! processes, cgroups of its containers). Images come from a `rootfs:` directory or, as
//! in production, from a Dockerfile built with `gantry build`, pushed to the cluster's
//! registry and pulled by the agents.
//!
//! The clusters run mutual TLS (issue 10: the script's default; the CLI and the API client
//! use the admin context the script keeps), except the migration test, which runs the
//! script's `up --insecure` so that option stays exercised.

mod common;

use common::cluster::View;
use gantry_controller::api::ControllerClient;
use gantry_controller::state::{NodeStatus, Observed};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/cluster.sh");

/// One cluster of deploy/cluster.sh, taken down on drop.
struct Cluster {
    prefix: String,
    net: String,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    down: bool,
    /// `up --insecure`: plain TCP/HTTP, no credentials.
    insecure: bool,
}

impl Cluster {
    /// A mutual-TLS cluster; `n` tells the tests of this file apart (prefix and /24).
    fn up(n: u32) -> Cluster {
        Cluster::start(n, false)
    }

    /// A cluster of `up --insecure`.
    fn up_insecure(n: u32) -> Cluster {
        Cluster::start(n, true)
    }

    fn start(n: u32, insecure: bool) -> Cluster {
        common::require_root();
        let pid = std::process::id();
        let tmp = tempfile::Builder::new()
            .prefix("gantry-e2e")
            .tempdir()
            .unwrap();
        let c = Cluster {
            prefix: format!("ge{}{}", n, pid % 100_000),
            net: format!("10.{}.{}", 80 + n, pid % 250 + 1),
            dir: tmp.path().join("cluster"),
            _tmp: tmp,
            down: false,
            insecure,
        };
        let mut up = vec!["up", "--bin", common::gantry_bin()];
        if insecure {
            up.push("--insecure");
        }
        c.script(&up);
        c
    }

    /// The admin context `up` keeps (TLS clusters).
    fn context(&self) -> PathBuf {
        self.dir.join("admin.context")
    }

    /// The CLI against this cluster's controllers: with the admin context, or plain TCP
    /// for an --insecure cluster.
    fn cli(&self) -> Command {
        let mut cmd = Command::new(common::gantry_bin());
        cmd.env("GANTRY_CONTROLLER", self.controllers());
        if self.insecure {
            cmd.env("GANTRY_INSECURE", "1").env_remove("GANTRY_CONTEXT");
        } else {
            cmd.env_remove("GANTRY_INSECURE")
                .env("GANTRY_CONTEXT", self.context());
        }
        cmd
    }

    /// Flags for `gantry push` to the cluster's registry `reg`: an operator certificate
    /// obtained with a join token (TLS), or --insecure-registry.
    fn push_flags(&self, reg: &str) -> Vec<String> {
        if self.insecure {
            return vec!["--insecure-registry".into(), reg.into()];
        }
        let tok = self.gantry(&["token", "create", "--role", "operator", "--ttl", "10m"]);
        let out = self._tmp.path().join("operator");
        let o = self
            .cli()
            .args(["credential", "request", "--join", &self.controllers()])
            .args(["--name", "e2e", "--out"])
            .arg(&out)
            .env("GANTRY_TOKEN", tok.trim())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "credential request: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let f = |n: &str| out.join(n).display().to_string();
        vec![
            "--tls-cert".into(),
            f("e2e.crt"),
            "--tls-key".into(),
            f("e2e.key"),
            "--tls-ca".into(),
            f("ca.crt"),
        ]
    }

    fn script(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .env("GANTRY_CLUSTER_DIR", &self.dir)
            .env("GANTRY_CLUSTER_PREFIX", &self.prefix)
            .env("GANTRY_CLUSTER_NET", &self.net)
            .env(
                "GANTRY_CLUSTER_CONTROLLER_ARGS",
                "--node-ttl-ms 1500 --node-grace-ms 1500",
            )
            .env(
                "GANTRY_CLUSTER_AGENT_ARGS",
                "--heartbeat-ms 300 --stop-timeout 1",
            )
            .output()
            .expect("run deploy/cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.stderr.is_empty() {
            eprintln!(
                "cluster.sh {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn controllers(&self) -> String {
        (11..=13)
            .map(|o| format!("{}.{o}:7700", self.net))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn client(&self) -> ControllerClient {
        let addrs: Vec<String> = self.controllers().split(',').map(String::from).collect();
        let mut c = if self.insecure {
            ControllerClient::new(addrs)
        } else {
            let ctx = gantry_security::context::Context::load(&self.context()).unwrap();
            let certs = gantry_security::tls::CertStore::new(&ctx.credential()).unwrap();
            let transport =
                gantry_controller::raft::network::Transport::tls(&ctx.ca_pem, Some(certs)).unwrap();
            ControllerClient::with_transport(addrs, transport)
        };
        c.retry_for = Duration::from_secs(20);
        c
    }

    fn gantry(&self, args: &[&str]) -> String {
        let out = self.cli().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "gantry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.stderr.is_empty() {
            eprintln!(
                "cluster.sh {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The host name of the controller member that leads now.
    async fn leader_host(&self, c: &mut ControllerClient) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = c.status().await {
                if let Some(id) = s.leader {
                    return ["ctl-onprem", "ctl-cloud", "ctl-dr"][id as usize - 1].to_string();
                }
            }
            assert!(Instant::now() < deadline, "no controller leader in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Take the cluster down and check that nothing of it is left.
    fn down_and_check(&mut self, containers: &[String]) {
        self.script(&["down"]);
        self.down = true;
        let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let netns = String::from_utf8_lossy(&netns.stdout);
        assert!(
            !netns
                .lines()
                .any(|l| l.starts_with(&format!("{}-", self.prefix))),
            "namespaces left: {netns}"
        );
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(
            !links.contains(&format!(": {}", self.prefix)),
            "links left: {links}"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.dir.display().to_string();
        assert!(!mounts.contains(&dir), "mounts left under {dir}");
        assert!(!self.dir.exists(), "{dir} left");
        for id in containers {
            assert!(
                !cgroup_exists(&self.prefix, id),
                "cgroup of container {id} left after down"
            );
        }
        // the agents' cgroup parent (gantry-PREFIX/HOST) goes too
        let parents: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|h| h.path().join(format!("gantry-{}", self.prefix)))
            .filter(|p| p.exists())
            .collect();
        assert!(parents.is_empty(), "cgroups left after down: {parents:?}");
        assert!(
            leftover_processes(&dir).is_empty(),
            "processes left: {:?}",
            leftover_processes(&dir)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.down {
            let _ = Command::new("bash")
                .arg(SCRIPT)
                .arg("down")
                .env("GANTRY_CLUSTER_DIR", &self.dir)
                .env("GANTRY_CLUSTER_PREFIX", &self.prefix)
                .env("GANTRY_CLUSTER_NET", &self.net)
                .output();
        }
    }
}

/// Whether container `id` of the cluster with `prefix` has a cgroup (its agent's parent
/// is `gantry-PREFIX/HOST`, see deploy/cluster.sh).
fn cgroup_exists(prefix: &str, id: &str) -> bool {
    ["memory", "pids", "cpu", "unified"].iter().any(|h| {
        std::fs::read_dir(format!("/sys/fs/cgroup/{h}/gantry-{prefix}"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|host| host.path().join(id).exists())
    })
}

/// Processes whose command line or root points into `dir`.
fn leftover_processes(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let root = std::fs::read_link(e.path().join("root"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if cmd.contains(dir) || root.starts_with(dir) {
            out.push(format!("{name}: {cmd}"));
        }
    }
    out
}

/// Node names of the running allocations of `svc`, sorted.
fn on(v: &View, svc: &str) -> Vec<String> {
    let mut n: Vec<String> = v.running(svc).into_iter().map(|(_, n)| n).collect();
    n.sort();
    n
}

fn node_status(v: &View, name: &str) -> Option<NodeStatus> {
    v.nodes.iter().find(|n| n.name == name).map(|n| n.status)
}

fn containers(v: &View) -> Vec<String> {
    v.allocs
        .iter()
        .filter_map(|a| a.container.clone())
        .collect()
}

/// The cluster of `up` runs mutual TLS only: plain TCP is refused, the admin context is
/// private, the script made one join token per role it needed, and every agent runs on a
/// node certificate of its own name.
fn check_tls_only(cl: &Cluster) {
    use std::os::unix::fs::PermissionsExt;
    let plain = Command::new(common::gantry_bin())
        .env("GANTRY_INSECURE", "1")
        .env("GANTRY_CONTROLLER", cl.controllers())
        .args(["node", "ls"])
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "plain TCP answered: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    let mode = std::fs::metadata(cl.context())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "admin context mode");
    let tokens = cl.gantry(&["token", "ls"]);
    for role in ["controller", "agent", "registry"] {
        assert!(
            tokens
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(role)),
            "no {role} token: {tokens}"
        );
    }
    for agent in [
        "dev-onprem",
        "qa-onprem",
        "prod-onprem",
        "qa-cloud",
        "prod-cloud",
    ] {
        let cred =
            gantry_security::pki::Credential::load(&cl.dir.join(agent).join("agent/pki"), "node")
                .unwrap();
        assert_eq!(
            cred.identity().unwrap().to_string(),
            format!("agent/{agent}"),
            "{agent}'s node certificate"
        );
    }
}

/// Poll the state until `pred` holds (45 s at most: a whole cluster on 2 cores).
async fn wait_for(c: &mut ControllerClient, what: &str, pred: impl Fn(&View) -> bool) -> View {
    common::cluster::wait_for(c, what, 45, |_| {}, pred).await
}

/// `gantry service create NAME` of `replicas` running `/bin/sleep 1000` from `image`.
fn create(cl: &Cluster, image: &str, name: &str, replicas: u32, constraint: &str) {
    let replicas = replicas.to_string();
    cl.gantry(&[
        "service",
        "create",
        name,
        "--image",
        image,
        "--replicas",
        &replicas,
        "--constraint",
        constraint,
        "--entrypoint",
        "/bin/sleep",
        "--",
        "1000",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_deploy_across_environments_host_loss_and_full_restart() {
    let mut cl = Cluster::up(1);
    let rootfs = common::busybox_rootfs(cl._tmp.path());
    let image = format!("rootfs:{}", rootfs.display());
    let mut c = cl.client();
    wait_for(&mut c, "five agents ready", |v| {
        v.nodes.len() == 5 && v.nodes.iter().all(|n| n.status == NodeStatus::Ready)
    })
    .await;
    check_tls_only(&cl);

    // deploy across environments: each service only on its environment's nodes
    create(&cl, &image, "web-dev", 1, "env==dev");
    create(&cl, &image, "web-prod", 2, "env==prod");
    create(&cl, &image, "api-qa", 1, "env==qa");
    let v = wait_for(&mut c, "every service running", |v| {
        on(v, "web-dev").len() == 1 && on(v, "web-prod").len() == 2 && on(v, "api-qa").len() == 1
    })
    .await;
    assert_eq!(on(&v, "web-dev"), ["dev-onprem"]);
    assert_eq!(on(&v, "web-prod"), ["prod-cloud", "prod-onprem"]);
    let qa_host = on(&v, "api-qa")[0].clone();
    assert!(qa_host.starts_with("qa-"), "{qa_host}");
    let mut seen = containers(&v);

    // the api's host is lost: the node goes down, the api runs on the other qa host
    cl.script(&["kill", &qa_host]);
    let v = wait_for(&mut c, "api-qa replaced on the other qa host", |v| {
        node_status(v, &qa_host) == Some(NodeStatus::Down)
            && on(v, "api-qa").len() == 1
            && on(v, "api-qa")[0] != qa_host
    })
    .await;
    assert!(on(&v, "api-qa")[0].starts_with("qa-"));
    seen.extend(containers(&v));
    cl.script(&["restart", &qa_host]);

    // full cluster restart: every host lost at once, then started again
    let hosts = [
        "ctl-onprem",
        "ctl-cloud",
        "ctl-dr",
        "registry",
        "dev-onprem",
        "qa-onprem",
        "prod-onprem",
        "qa-cloud",
        "prod-cloud",
    ];
    for h in hosts {
        cl.script(&["kill", h]);
    }
    for h in hosts {
        cl.script(&["restart", h]);
    }
    let mut c = cl.client();
    let v = wait_for(&mut c, "every service back after a full restart", |v| {
        v.nodes.iter().all(|n| n.status == NodeStatus::Ready)
            && on(v, "web-dev").len() == 1
            && on(v, "web-prod").len() == 2
            && on(v, "api-qa").len() == 1
    })
    .await;
    seen.extend(containers(&v));
    for s in ["web-dev", "web-prod", "api-qa"] {
        cl.gantry(&["service", "rm", s]);
    }
    wait_for(&mut c, "services removed", |v| {
        v.allocs.iter().all(|a| a.observed != Observed::Running)
    })
    .await;
    seen.sort();
    seen.dedup();
    cl.down_and_check(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_leader_host_lost_and_partitioned_leader_heals_without_lost_writes() {
    let mut cl = Cluster::up(2);
    let rootfs = common::busybox_rootfs(cl._tmp.path());
    let image = format!("rootfs:{}", rootfs.display());
    let mut c = cl.client();
    wait_for(&mut c, "five agents ready", |v| {
        v.nodes.len() == 5 && v.nodes.iter().all(|n| n.status == NodeStatus::Ready)
    })
    .await;

    // the leader's host is lost: deploys still work through the two left
    let leader = cl.leader_host(&mut c).await;
    cl.script(&["kill", &leader]);
    create(&cl, &image, "after-loss", 2, "env==prod");
    wait_for(&mut c, "a deploy after the leader host's loss", |v| {
        on(v, "after-loss").len() == 2
    })
    .await;
    cl.script(&["restart", &leader]);
    wait_for(&mut c, "the lost member is back", |_| true).await;

    // a partition isolates the (new) leader; writes acknowledged meanwhile survive the heal
    let leader = cl.leader_host(&mut c).await;
    cl.script(&["partition", &leader]);
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while acked.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no write acknowledged in 20 s while {leader} was cut off"
        );
        let name = format!("during-{i}");
        i += 1;
        let out = cl
            .cli()
            .args([
                "service",
                "create",
                &name,
                "--image",
                &image,
                "--replicas",
                "1",
                "--constraint",
                "env==qa",
                "--entrypoint",
                "/bin/sleep",
                "--",
                "1000",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            acked.push(name);
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    cl.script(&["heal", &leader]);
    let mut c = cl.client();
    let v = wait_for(
        &mut c,
        "every acknowledged service running after the heal",
        |v| acked.iter().all(|s| on(v, s).len() == 1),
    )
    .await;
    // no acknowledged write lost, and no service above its replicas plus the surge
    let names: Vec<&str> = v.services.iter().map(|s| s.name.as_str()).collect();
    for s in &acked {
        assert!(
            names.contains(&s.as_str()),
            "acknowledged {s} lost: {names:?}"
        );
    }
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &v.allocs {
        if a.observed == Observed::Running {
            *running.entry(a.service.as_str()).or_default() += 1;
        }
    }
    for s in &v.services {
        let n = running.get(s.name.as_str()).copied().unwrap_or(0);
        assert!(
            n as u32 <= s.spec.replicas + s.spec.update.max_parallel,
            "{}: {n} running > {} replicas + {} surge",
            s.name,
            s.spec.replicas,
            s.spec.update.max_parallel
        );
    }
    let seen = containers(&v);
    cl.down_and_check(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_built_image_pulled_from_the_registry_fails_over_when_a_site_is_lost() {
    let mut cl = Cluster::up(3);
    // build an image from a Dockerfile and push it to the cluster's registry
    let ctx = cl._tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sleep\", \"1000\"]\n",
    )
    .unwrap();
    let reg = format!("{}.5:5000", cl.net);
    let image = format!("{reg}/e2e/sleeper:1");
    let store = cl._tmp.path().join("store").display().to_string();
    cl.gantry(&[
        "build",
        "--store",
        &store,
        "-t",
        &image,
        "-q",
        &ctx.display().to_string(),
    ]);
    let mut push = vec!["push".to_string(), "--store".into(), store.clone()];
    push.extend(cl.push_flags(&reg));
    push.push(image.clone());
    cl.gantry(&push.iter().map(String::as_str).collect::<Vec<_>>());

    let mut c = cl.client();
    wait_for(&mut c, "five agents ready", |v| {
        v.nodes.len() == 5 && v.nodes.iter().all(|n| n.status == NodeStatus::Ready)
    })
    .await;
    // prod runs in site onprem first, cloud when onprem is lost
    cl.gantry(&[
        "service",
        "create",
        "shop",
        "--image",
        &image,
        "--constraint",
        "env==prod",
        "--failover",
        "site=onprem,site=cloud",
    ]);
    let v = wait_for(&mut c, "shop pulled and running in onprem", |v| {
        on(v, "shop") == ["prod-onprem"]
    })
    .await;
    let mut seen = containers(&v);

    let lost = Instant::now();
    cl.script(&["kill-site", "onprem"]);
    let mut c = cl.client();
    let v = wait_for(&mut c, "shop failed over to cloud", |v| {
        on(v, "shop") == ["prod-cloud"]
    })
    .await;
    eprintln!(
        "site onprem lost -> shop running in cloud after {:.1} s",
        lost.elapsed().as_secs_f64()
    );
    seen.extend(containers(&v));
    seen.sort();
    seen.dedup();
    cl.down_and_check(&seen);
}

/// One HTTP GET of `addr` (a node's published endpoint); whether it answered 200.
fn http_ok(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_migration_dev_to_qa_keeps_the_endpoint_answering() {
    // the data plane does not depend on the control plane's TLS: this one keeps the
    // script's --insecure option exercised
    let mut cl = Cluster::up_insecure(4);
    let rootfs = common::busybox_rootfs(cl._tmp.path());
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/index.html"), "hello\n").unwrap();
    let image = format!("rootfs:{}", rootfs.display());
    let mut c = cl.client();
    wait_for(&mut c, "five agents ready", |v| {
        v.nodes.len() == 5 && v.nodes.iter().all(|n| n.status == NodeStatus::Ready)
    })
    .await;
    cl.gantry(&[
        "service",
        "create",
        "web",
        "--image",
        &image,
        "--replicas",
        "1",
        "--constraint",
        "env==dev",
        "--network",
        "web",
        "--endpoint",
        "8080:8080",
        "--entrypoint",
        "/bin/httpd",
        "--",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    let v = wait_for(&mut c, "web running on dev", |v| {
        !v.running("web").is_empty()
    })
    .await;
    let mut seen = containers(&v);
    // the endpoint answers on every node, also those running no replica
    let via = format!("{}.31:8080", cl.net); // qa-cloud
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_ok(&via) {
        assert!(Instant::now() < deadline, "endpoint {via} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a client polls through the whole move and counts failures
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let via = via.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if http_ok(&via) {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };
    cl.gantry(&["migrate", "web", "--to", "env==qa"]);
    let v = wait_for(
        &mut c,
        "web moved to qa and the dev replicas stopped",
        |v| {
            !v.running("web").is_empty()
                && v.allocs
                    .iter()
                    .filter(|a| a.service == "web" && a.observed == Observed::Running)
                    .all(|a| v.node_name(a.node).starts_with("qa-"))
        },
    )
    .await;
    // keep polling a little after the old replicas are gone
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = poller.join().unwrap();
    eprintln!("migration dev -> qa: {ok} requests answered, {failed} failed");
    assert!(ok > 10, "too few requests during the move: {ok}");
    // Zero: the old replica stops only once its replacement is in the mesh (the scheduler
    // waits for the address the readiness gate records), after the drain delay, and once
    // every live node's mesh has dropped it (confirmed through the heartbeats).
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the migration ({ok} answered)"
    );
    seen.extend(containers(&v));
    cl.gantry(&["service", "rm", "web"]);
    wait_for(&mut c, "web removed", |v| {
        v.allocs.iter().all(|a| a.observed != Observed::Running)
    })
    .await;
    seen.sort();
    seen.dedup();
    cl.down_and_check(&seen);
}

//! Cluster-mode harness: real `gantry controller run` and `gantry agent --join` processes
//! on 127.0.0.x with their own temp roots and sockets (no bridge), a `gantry registry`,
//! and polling of the replicated state. Every process is SIGKILLed by PID on drop.

use gantry_controller::api::ControllerClient;
use gantry_controller::state::{Allocation, Desired, Node, Observed, Service};
use gantry_proto::cluster::ReadKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::gantry_bin;

/// A daemon killed by PID on drop.
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    /// A daemon of a cluster run with --insecure (GANTRY_INSECURE=1).
    pub fn spawn(args: &[String], log: &Path) -> Daemon {
        Self::spawn_with(args, log, true)
    }

    /// `insecure` false: the daemon runs mutual TLS (GANTRY_INSECURE unset).
    pub fn spawn_with(args: &[String], log: &Path, insecure: bool) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new(gantry_bin());
        if insecure {
            cmd.env("GANTRY_INSECURE", "1");
        } else {
            cmd.env_remove("GANTRY_INSECURE");
        }
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gantry");
        Daemon { child: Some(child) }
    }
    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// One controller member: fast Raft timers, node TTL 1.5 s, grace 1 s.
pub struct Controller {
    pub id: u64,
    pub addr: String,
    pub daemon: Daemon,
}

impl Controller {
    /// Member `id` on 127.0.0.(1+id); `join` None bootstraps a new cluster.
    pub fn start(dir: &Path, id: u64, join: Option<&str>) -> Controller {
        let addr = super::free_addr(&format!("127.0.0.{}", id + 1));
        let data = dir.join(format!("ctl{id}")).display().to_string();
        let mut args = strings(&[
            "controller",
            "run",
            "--id",
            &id.to_string(),
            "--listen",
            &addr,
            "--data-dir",
            &data,
            "--heartbeat-ms",
            "50",
            "--election-timeout-ms",
            "300",
            "--node-ttl-ms",
            "1500",
            "--node-grace-ms",
            "1000",
        ]);
        match join {
            None => args.push("--bootstrap".into()),
            Some(seed) => args.extend(strings(&["--join", seed])),
        }
        let daemon = Daemon::spawn(&args, &dir.join(format!("ctl{id}.log")));
        Controller { id, addr, daemon }
    }
}

/// Start members 1..=n: 1 bootstraps, the others join it; waits until all vote.
pub async fn controllers(dir: &Path, n: u64) -> Vec<Controller> {
    let mut out: Vec<Controller> = Vec::new();
    for id in 1..=n {
        let seed = out.first().map(|c| c.addr.clone());
        out.push(Controller::start(dir, id, seed.as_deref()));
        let addrs: Vec<String> = out.iter().map(|c| c.addr.clone()).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c = ControllerClient::new(addrs.clone());
            c.retry_for = Duration::from_millis(500);
            if let Ok(st) = c.status().await {
                if st.leader.is_some() && st.members.iter().filter(|m| m.voter).count() == out.len()
                {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{id} controllers not ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

pub struct Agent {
    pub name: String,
    labels: Vec<String>,
    join: String,
    root: PathBuf,
    pub daemon: Daemon,
}

/// The agent `name`'s own cgroup parent (in [`agent_args`]): `dir` is a test's temp dir,
/// so parallel tests never share one, and [`super::assert_cgroups_gone`] can check it.
pub fn cgroup_parent(dir: &Path, name: &str) -> String {
    let tmp: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("gantry-test-{tmp}-{name}")
}

pub fn agent_args(dir: &Path, name: &str, labels: &[String], join: &str) -> Vec<String> {
    let s = |p: &str| dir.join(format!("{name}-{p}")).display().to_string();
    let mut args = strings(&[
        "agent",
        "--cgroup-parent",
        &cgroup_parent(dir, name),
        "--root",
        &s("root"),
        "--run-root",
        &s("run"),
        "--host",
        &format!("unix://{}", s("sock")),
        "--no-bridge",
        "--join",
        join,
        "--name",
        name,
        "--advertise",
        "127.0.0.1:1",
        "--heartbeat-ms",
        "300",
        "--stop-timeout",
        "1",
        "--pull-backoff-ms",
        "500",
    ]);
    for l in labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    args
}

impl Agent {
    /// An agent joining the controllers at `join` (comma-separated), with labels k=v.
    pub fn start(dir: &Path, name: &str, labels: &[&str], join: &str) -> Agent {
        Agent::start_with(dir, name, labels, join, &[])
    }
    /// [`Agent::start`] with `extra` flags and values (`["--stop-timeout", "20"]`), which
    /// replace the harness's own of the same name. A restart does not repeat them.
    pub fn start_with(
        dir: &Path,
        name: &str,
        labels: &[&str],
        join: &str,
        extra: &[&str],
    ) -> Agent {
        let labels = strings(labels);
        let mut args = agent_args(dir, name, &labels, join);
        for pair in extra.chunks(2) {
            if let Some(i) = args.iter().position(|a| a == pair[0]) {
                args.drain(i..i + 2);
            }
            args.extend(strings(pair));
        }
        let daemon = Daemon::spawn(&args, &dir.join(format!("{name}.log")));
        Agent {
            name: name.into(),
            labels,
            join: join.into(),
            root: dir.to_path_buf(),
            daemon,
        }
    }
    pub fn restart(&mut self) {
        self.daemon = Daemon::spawn(
            &agent_args(&self.root, &self.name, &self.labels, &self.join),
            &self.root.join(format!("{}-again.log", self.name)),
        );
    }
    /// Short ids of the containers this agent's engine holds; waits (bounded) for the
    /// engine to answer, so a restarting agent is never read as holding nothing.
    pub fn containers(&self) -> Vec<String> {
        let sock = self.root.join(format!("{}-sock", self.name));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(gantry_bin())
                .env("GANTRY_INSECURE", "1")
                .args(["ps", "-a", "-q", "--host"])
                .arg(format!("unix://{}", sock.display()))
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "{}: the engine did not answer ps within 20 s: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// The engine's log of a container (stdout and stderr).
    pub fn logs(&self, container: &str) -> String {
        let sock = self.root.join(format!("{}-sock", self.name));
        let out = Command::new(gantry_bin())
            .env("GANTRY_INSECURE", "1")
            .args(["logs", "--host"])
            .arg(format!("unix://{}", sock.display()))
            .arg(container)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// SIGTERM every agent, then SIGKILL container processes left rooted under `rootfs`
/// (failing if there were any); then fails if any agent left a container cgroup or a
/// shim.
pub fn stop_agents_and_check_leaks(agents: &mut [Agent], rootfs: &Path) {
    for a in agents.iter_mut() {
        a.daemon.signal(libc::SIGTERM);
    }
    let left = super::processes_rooted_under(rootfs);
    for pid in &left {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "container processes left: {left:?}");
    // A container in its own mount namespace is not found by its root (that reads as
    // `/`): its agent's cgroup parent holds it, and its shim names the agent's run dir.
    for a in agents.iter() {
        super::assert_cgroups_gone(&cgroup_parent(&a.root, &a.name));
        super::assert_no_processes_mentioning(&a.root.join(format!("{}-run", a.name)));
    }
}

/// Wait (bounded) until no agent holds a container.
pub async fn wait_no_containers(agents: &[Agent], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while agents.iter().any(|a| !a.containers().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "{what}: containers left after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run the CLI against `controller` (GANTRY_CONTROLLER); its stdout, failing on error.
pub fn gantry(controller: &str, args: &[&str]) -> String {
    let out = gantry_any(controller, args);
    assert!(out.0, "gantry {args:?}: {}", out.2);
    out.1
}

/// `gantry service create NAME` of `replicas` running `/bin/sleep 1000` from `image`,
/// with `extra` flags (constraints, failover).
pub fn create_sleeper(controller: &str, name: &str, image: &str, replicas: u32, extra: &[&str]) {
    let replicas = replicas.to_string();
    let mut args = vec![
        "service",
        "create",
        name,
        "--image",
        image,
        "--replicas",
        &replicas,
        "--entrypoint",
        "/bin/sleep",
    ];
    args.extend_from_slice(extra);
    args.extend(["--", "1000"]);
    gantry(controller, &args);
}

/// Run the CLI: (success, stdout, stderr).
pub fn gantry_any(controller: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(gantry_bin())
        .env("GANTRY_INSECURE", "1")
        .args(args)
        .env("GANTRY_CONTROLLER", controller)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One read of nodes, services and allocations.
pub struct View {
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    pub allocs: Vec<Allocation>,
}

impl View {
    pub fn node_name(&self, id: u64) -> &str {
        &self.nodes.iter().find(|n| n.id == id).unwrap().name
    }
    /// Allocations of `svc` that should run and do, with their node names.
    pub fn running(&self, svc: &str) -> Vec<(u64, String)> {
        self.allocs
            .iter()
            .filter(|a| {
                a.service == svc && a.desired == Desired::Run && a.observed == Observed::Running
            })
            .map(|a| (a.id, self.node_name(a.node).to_string()))
            .collect()
    }
    /// Allocations of `svc` that should run (in any observed state).
    pub fn wanted(&self, svc: &str) -> usize {
        self.allocs
            .iter()
            .filter(|a| a.service == svc && a.desired == Desired::Run)
            .count()
    }
    pub fn allocs_of(&self, svc: &str) -> Vec<&Allocation> {
        self.allocs.iter().filter(|a| a.service == svc).collect()
    }
    pub fn version(&self, svc: &str) -> u64 {
        self.services
            .iter()
            .find(|s| s.name == svc)
            .map_or(0, |s| s.version)
    }
}

pub async fn view(c: &mut ControllerClient) -> View {
    let (_, nodes) = c.read(ReadKind::Nodes, false).await.unwrap();
    let (_, services) = c.read(ReadKind::Services, false).await.unwrap();
    let (_, allocs) = c.read(ReadKind::Allocations, false).await.unwrap();
    View {
        nodes,
        services,
        allocs,
    }
}

/// A client of the controllers that retries through elections.
pub fn client(addrs: &[String]) -> ControllerClient {
    let mut c = ControllerClient::new(addrs.to_vec());
    c.retry_for = Duration::from_secs(20);
    c
}

/// Poll the state until `pred` holds (`secs` at most); `each` runs on every view.
pub async fn wait_for(
    c: &mut ControllerClient,
    what: &str,
    secs: u64,
    mut each: impl FnMut(&View),
    pred: impl Fn(&View) -> bool,
) -> View {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = view(c).await;
        each(&v);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s; allocations: {:#?}",
            v.allocs
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start a `gantry registry` (plain HTTP) on a free port of `ip`; waits until it listens.
pub fn registry(dir: &Path, ip: &str) -> (Daemon, String) {
    let addr = super::free_addr(ip);
    let root = dir.join("registry").display().to_string();
    let d = Daemon::spawn(
        &strings(&["registry", "--listen", &addr, "--root", &root, "--insecure"]),
        &dir.join("registry.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "gantry registry did not listen on {addr} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (d, addr)
}

/// Load the root filesystem as an image named `name:1` into a scratch store and push it
/// (the registry then serves it to the agents).
pub fn push_rootfs_image(dir: &Path, rootfs: &Path, name: &str) {
    let layout = super::rootfs_layout(rootfs, &dir.join("push-layout"));
    let store = dir.join("push-store");
    let run = |args: &[&str]| {
        let o = Command::new(gantry_bin())
            .env("GANTRY_INSECURE", "1")
            .args(args)
            .env("GANTRY_STORE", &store)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "gantry {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "image",
        "load",
        "-i",
        layout.to_str().unwrap(),
        "--name",
        name,
    ]);
    run(&["push", &format!("{name}:1")]);
}

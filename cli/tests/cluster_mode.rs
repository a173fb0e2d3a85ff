//! Cluster mode end to end, as root: a real controller and three real agents
//! (`gantry agent --join`) on 127.0.0.x with their own temp roots, sockets and no bridge;
//! services run from a busybox root filesystem the test writes (`rootfs:DIR` images).
//! A constrained service lands only on matching nodes; scale down; an agent SIGKILLed →
//! its allocation runs elsewhere; it comes back → its stale container is stopped;
//! migrate dev → qa never leaves the service without a running replica.
//! Every process is killed by PID in Drop guards; containers are removed by the agents
//! (services removed at the end) and the leak check looks for processes rooted in the
//! test's rootfs.

mod common;

use gantry_controller::api::ControllerClient;
use gantry_controller::state::{Allocation, Desired, Node, Observed};
use gantry_proto::cluster::ReadKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gantry");

/// A daemon killed by PID on drop.
struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn spawn(args: &[String], log: &Path) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gantry");
        Daemon { child: Some(child) }
    }
    fn signal(&mut self, sig: i32) {
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

struct Agent {
    name: String,
    label: String,
    root: PathBuf,
    daemon: Daemon,
}

fn agent_args(dir: &Path, name: &str, label: &str, controller: &str) -> Vec<String> {
    let s = |p: &str| dir.join(format!("{name}-{p}")).display().to_string();
    [
        "agent",
        "--root",
        &s("root"),
        "--run-root",
        &s("run"),
        "--host",
        &format!("unix://{}", s("sock")),
        "--no-bridge",
        "--join",
        controller,
        "--name",
        name,
        "--label",
        label,
        "--advertise",
        "127.0.0.1:1",
        "--heartbeat-ms",
        "300",
        "--stop-timeout",
        "1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

impl Agent {
    fn start(dir: &Path, name: &str, label: &str, controller: &str) -> Agent {
        let daemon = Daemon::spawn(
            &agent_args(dir, name, label, controller),
            &dir.join(format!("{name}.log")),
        );
        Agent {
            name: name.into(),
            label: label.into(),
            root: dir.to_path_buf(),
            daemon,
        }
    }
    fn restart(&mut self, controller: &str) {
        self.daemon = Daemon::spawn(
            &agent_args(&self.root, &self.name, &self.label, controller),
            &self.root.join(format!("{}-again.log", self.name)),
        );
    }
    /// Ids of the containers this agent's engine holds.
    fn containers(&self) -> Vec<String> {
        let sock = self.root.join(format!("{}-sock", self.name));
        let out = Command::new(BIN)
            .args(["ps", "-a", "-q", "--host"])
            .arg(format!("unix://{}", sock.display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn gantry(controller: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("GANTRY_CONTROLLER", controller)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gantry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct View {
    nodes: Vec<Node>,
    allocs: Vec<Allocation>,
}

impl View {
    fn node_name(&self, id: u64) -> &str {
        &self.nodes.iter().find(|n| n.id == id).unwrap().name
    }
    /// Allocations of `svc` that should run and do, with their node names.
    fn running(&self, svc: &str) -> Vec<(u64, String)> {
        self.allocs
            .iter()
            .filter(|a| {
                a.service == svc && a.desired == Desired::Run && a.observed == Observed::Running
            })
            .map(|a| (a.id, self.node_name(a.node).to_string()))
            .collect()
    }
    fn wanted(&self, svc: &str) -> usize {
        self.allocs
            .iter()
            .filter(|a| a.service == svc && a.desired == Desired::Run)
            .count()
    }
}

async fn view(c: &mut ControllerClient) -> View {
    let (_, nodes) = c.read(ReadKind::Nodes, false).await.unwrap();
    let (_, allocs) = c.read(ReadKind::Allocations, false).await.unwrap();
    View { nodes, allocs }
}

/// Poll the state until `pred` holds (30 s at most); `each` runs on every view.
async fn wait_for(
    c: &mut ControllerClient,
    what: &str,
    mut each: impl FnMut(&View),
    pred: impl Fn(&View) -> bool,
) -> View {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = view(c).await;
        each(&v);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 30 s; allocations: {:#?}",
            v.allocs
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_place_scale_fail_over_and_migrate_across_real_agents() {
    common::require_root();
    let tmp = tempfile::Builder::new()
        .prefix("gantry-cluster-test")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let rootfs = common::busybox_rootfs(dir);
    let ctl_addr = common::free_addr("127.0.0.2");
    let _controller = Daemon::spawn(
        &[
            "controller",
            "run",
            "--id",
            "1",
            "--listen",
            &ctl_addr,
            "--data-dir",
            &dir.join("ctl").display().to_string(),
            "--bootstrap",
            "--node-ttl-ms",
            "1500",
            "--node-grace-ms",
            "1000",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>(),
        &dir.join("controller.log"),
    );
    let mut agents = [
        Agent::start(dir, "dev-a", "env=dev", &ctl_addr),
        Agent::start(dir, "dev-b", "env=dev", &ctl_addr),
        Agent::start(dir, "qa-a", "env=qa", &ctl_addr),
    ];
    let mut c = ControllerClient::new(vec![ctl_addr.clone()]);
    c.retry_for = Duration::from_secs(20);
    wait_for(
        &mut c,
        "three nodes registered",
        |_| {},
        |v| v.nodes.len() == 3,
    )
    .await;
    let out = gantry(&ctl_addr, &["node", "ls"]);
    assert!(out.contains("dev-a") && out.contains("env=qa"), "{out}");

    let image = format!("rootfs:{}", rootfs.display());
    let create = |name: &str, replicas: &str, constraint: Option<&str>| {
        let mut args = vec![
            "service",
            "create",
            name,
            "--image",
            &image,
            "--replicas",
            replicas,
            "--entrypoint",
            "/bin/sleep",
        ];
        if let Some(c) = constraint {
            args.extend(["--constraint", c]);
        }
        args.extend(["--", "1000"]);
        gantry(&ctl_addr, &args);
    };

    // A constrained service lands only on matching nodes, and really runs there.
    create("web", "2", Some("env==dev"));
    let v = wait_for(
        &mut c,
        "web running twice",
        |_| {},
        |v| v.running("web").len() == 2,
    )
    .await;
    let mut on: Vec<String> = v.running("web").into_iter().map(|(_, n)| n).collect();
    on.sort();
    assert_eq!(on, vec!["dev-a", "dev-b"]);
    assert_eq!(agents[0].containers().len(), 1);
    assert_eq!(agents[1].containers().len(), 1);
    assert!(agents[2].containers().is_empty());
    let ps = gantry(&ctl_addr, &["service", "ps", "web"]);
    assert_eq!(ps.matches("Running").count(), 2, "{ps}");

    // An impossible constraint: pending, with the reason.
    create("nowhere", "1", Some("env==prod"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = gantry(&ctl_addr, &["service", "ps", "nowhere"]);
        if ps.contains("unplaced:") {
            assert!(ps.contains("3 nodes"), "{ps}");
            break;
        }
        assert!(Instant::now() < deadline, "no unplaced reason: {ps}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gantry(&ctl_addr, &["service", "rm", "nowhere"]);

    // Scale down: one container goes away.
    gantry(&ctl_addr, &["service", "scale", "web", "1"]);
    wait_for(
        &mut c,
        "web scaled to 1",
        |_| {},
        |v| v.running("web").len() == 1 && v.wanted("web") == 1,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while agents[0].containers().len() + agents[1].containers().len() != 1 {
        assert!(
            Instant::now() < deadline,
            "scaled-down container not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGKILL the agent running web: the replacement runs on the other dev node.
    let v = view(&mut c).await;
    let (old_alloc, victim) = v.running("web")[0].clone();
    let vi = agents.iter().position(|a| a.name == victim).unwrap();
    let killed_at = Instant::now();
    agents[vi].daemon.signal(libc::SIGKILL);
    let v = wait_for(
        &mut c,
        "web replaced on the other dev node",
        |_| {},
        |v| {
            let r = v.running("web");
            r.len() == 1 && r[0].1 != victim
        },
    )
    .await;
    eprintln!(
        "failover: {:?} from SIGKILL to running elsewhere",
        killed_at.elapsed()
    );
    let old = v.allocs.iter().find(|a| a.id == old_alloc).unwrap();
    assert_eq!(old.desired, Desired::Stop);

    // It comes back: its stale container is stopped and removed.
    agents[vi].restart(&ctl_addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agents[vi].containers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the returning agent kept its stale container"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Migrate dev → qa: make-before-break, never zero running replicas.
    gantry(&ctl_addr, &["migrate", "web", "--to", "env=qa"]);
    wait_for(
        &mut c,
        "web moved to qa",
        |v| {
            assert!(
                !v.running("web").is_empty(),
                "no running replica mid-migration"
            )
        },
        |v| {
            let r = v.running("web");
            r.len() == 1 && r[0].1 == "qa-a" && v.wanted("web") == 1
        },
    )
    .await;

    // Remove the service: every agent ends with no container.
    gantry(&ctl_addr, &["service", "rm", "web"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while agents.iter().any(|a| !a.containers().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "containers left after service rm"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in agents.iter_mut() {
        a.daemon.signal(libc::SIGTERM);
    }
    let left = common::processes_rooted_under(&rootfs);
    for pid in &left {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "container processes left: {left:?}");
}

//! Cluster mode with images from a registry, as root: a `gantry registry` on loopback
//! serves a busybox image pushed once; two agents pull it when an allocation needs it
//! (reported `pulling` first), run it, and roll it over on `service update` and
//! `service restart` (new allocations running before old ones stop). An unknown image
//! fails its allocations with the pull error as the reason, backs off instead of
//! storming, and allocation GC keeps what is left bounded.

mod common;

use common::cluster::{
    gantry, gantry_any, push_rootfs_image, registry, wait_for, Agent, Controller, View,
};
use gantry_controller::state::{Desired, Observed};
use std::time::{Duration, Instant};

/// Fails when fewer than `replicas` allocations of `svc` run, or more than
/// `replicas + surge` are wanted.
fn never_below(v: &View, svc: &str, replicas: usize, surge: usize) {
    let running = v.running(svc).len();
    assert!(
        running >= replicas,
        "{svc}: {running} running < {replicas} during a rolling change: {:#?}",
        v.allocs_of(svc)
    );
    assert!(
        v.wanted(svc) <= replicas + surge,
        "{svc}: {} wanted > replicas + surge",
        v.wanted(svc)
    );
}

fn all_at(v: &View, svc: &str, replicas: usize, version: u64) -> bool {
    let r = v.running(svc);
    r.len() == replicas
        && v.wanted(svc) == replicas
        && v.allocs
            .iter()
            .filter(|a| a.service == svc && a.desired == Desired::Run)
            .all(|a| a.version == version)
}

/// The first output line of each running allocation of `svc`, read from the engine of
/// the agent it runs on (bounded wait for the line to appear).
async fn outputs(agents: &[Agent], v: &View, svc: &str) -> Vec<String> {
    let mut out = Vec::new();
    for a in v.allocs_of(svc) {
        if a.desired != Desired::Run {
            continue;
        }
        let node = v.node_name(a.node);
        let agent = agents.iter().find(|x| x.name == node).unwrap();
        let container = a
            .container
            .clone()
            .expect("a running allocation has a container");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = agent.logs(&container);
            if let Some(line) = logs.lines().next() {
                out.push(line.to_string());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no output from {container} on {node}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_rolled_and_bad_ones_fail_with_a_reason() {
    common::require_root();
    let tmp = tempfile::Builder::new()
        .prefix("gantry-cluster-images")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let rootfs = common::busybox_rootfs(dir);
    let (_registry, reg) = registry(dir, "127.0.0.9");
    push_rootfs_image(dir, &rootfs, &format!("{reg}/test/bb"));
    let image = format!("{reg}/test/bb:1");

    let controller = Controller::start(dir, 1, None);
    let ctl = controller.addr.clone();
    let mut agents = [
        Agent::start(dir, "img-a", &["env=dev"], &ctl),
        Agent::start(dir, "img-b", &["env=dev"], &ctl),
    ];
    let mut c = common::cluster::client(std::slice::from_ref(&ctl));
    wait_for(&mut c, "two nodes", 30, |_| {}, |v| v.nodes.len() == 2).await;

    // Neither agent has the image: both pull it, say so, and run it.
    gantry(
        &ctl,
        &[
            "service",
            "create",
            "web",
            "--image",
            &image,
            "--replicas",
            "2",
            "--env",
            "V=1",
            "--entrypoint",
            "/bin/sh",
            "--",
            "-c",
            "echo v=$V from=$FROM_IMAGE; exec sleep 1000",
        ],
    );
    let v = wait_for(
        &mut c,
        "web running twice",
        60,
        |_| {},
        |v| v.running("web").len() == 2,
    )
    .await;
    for a in v.allocs_of("web") {
        assert!(
            a.history.iter().any(|h| h.observed == Observed::Pulling),
            "allocation {} never reported pulling: {:?}",
            a.id,
            a.history
        );
    }
    // Each allocation's output, from the engine of the agent that runs it: the service's
    // env and the image's own config both apply.
    assert_eq!(outputs(&agents, &v, "web").await, vec!["v=1 from=yes"; 2]);

    // Rolling update: never fewer than 2 running, never more than 2 + 1 wanted.
    gantry(&ctl, &["service", "update", "web", "--env", "V=2"]);
    let v = wait_for(
        &mut c,
        "web updated to version 2",
        60,
        |v| never_below(v, "web", 2, 1),
        |v| all_at(v, "web", 2, 2),
    )
    .await;
    assert_eq!(outputs(&agents, &v, "web").await, vec!["v=2 from=yes"; 2]);

    // Restart: every allocation replaced the same way, the spec unchanged.
    let before: Vec<u64> = wait_for(&mut c, "view", 5, |_| {}, |_| true)
        .await
        .running("web")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    gantry(&ctl, &["service", "restart", "web"]);
    let v = wait_for(
        &mut c,
        "web restarted",
        60,
        |v| never_below(v, "web", 2, 1),
        |v| all_at(v, "web", 2, 3),
    )
    .await;
    assert!(
        v.running("web").iter().all(|(id, _)| !before.contains(id)),
        "restart kept an old allocation"
    );

    // An image the registry does not have: failed, with the pull error as the reason.
    let bad = format!("{reg}/test/nope:1");
    gantry(&ctl, &["service", "create", "bad", "--image", &bad]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = gantry(&ctl, &["service", "ps", "bad"]);
        if ps.contains("Failed") {
            assert!(ps.contains(&format!("pulling {bad}")), "{ps}");
            break;
        }
        assert!(Instant::now() < deadline, "bad image never failed: {ps}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Retries back off, and GC keeps at most 5 finished allocations besides the current
    // one (7 between a plan and the purge that follows it).
    let started = Instant::now();
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(6) {
        let v = common::cluster::view(&mut c).await;
        most = most.max(v.allocs_of("bad").len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        most <= 7,
        "{most} allocations of bad at once: no backoff or no GC"
    );
    let failed_web = gantry_any(&ctl, &["service", "update", "web"]);
    assert!(
        !failed_web.0 && failed_web.2.contains("nothing to update"),
        "{failed_web:?}"
    );

    // Removing both: no container left, and GC forgets every finished allocation.
    gantry(&ctl, &["service", "rm", "bad"]);
    gantry(&ctl, &["service", "rm", "web"]);
    common::cluster::wait_no_containers(&agents, "service rm").await;
    wait_for(
        &mut c,
        "allocations purged",
        30,
        |_| {},
        |v| v.allocs.is_empty(),
    )
    .await;
    common::cluster::stop_agents_and_check_leaks(&mut agents, &rootfs);
}

/// A "registry" on 127.0.0.1 that accepts connections and never answers: a pull from it
/// hangs (until the client's read timeout, 60 s). Dropping it closes every connection.
struct StalledRegistry {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl StalledRegistry {
    fn start() -> StalledRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            held.len()
        });
        StalledRegistry {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Close everything; how many connections it held.
    fn stop(&mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for StalledRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Issue 7: an agent's slow work runs beside its passes. An allocation whose image pull
/// hangs (a registry that accepts and never answers) and a container that takes its whole
/// stop timeout (20 s: `sleep` as pid 1 ignores SIGTERM) do not delay another allocation
/// on the same node: it runs while both are still in progress (waited for at most 15 s,
/// less than either would take).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_pull_and_a_slow_stop_do_not_delay_other_allocations() {
    common::require_root();
    let tmp = tempfile::Builder::new()
        .prefix("gantry-cluster-bg")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let rootfs = common::busybox_rootfs(dir);
    let local = format!("rootfs:{}", rootfs.display());
    let mut stalled = StalledRegistry::start();
    let controller = Controller::start(dir, 1, None);
    let ctl = controller.addr.clone();
    let mut agents = [Agent::start_with(
        dir,
        "bg-a",
        &["env=dev"],
        &ctl,
        &["--stop-timeout", "20"],
    )];
    let mut c = common::cluster::client(std::slice::from_ref(&ctl));
    wait_for(&mut c, "the node", 30, |_| {}, |v| v.nodes.len() == 1).await;

    common::cluster::create_sleeper(&ctl, "slow-stop", &local, 1, &[]);
    wait_for(
        &mut c,
        "slow-stop running",
        30,
        |_| {},
        |v| v.running("slow-stop").len() == 1,
    )
    .await;
    let hung = format!("{}/stall/img:1", stalled.addr);
    gantry(&ctl, &["service", "create", "hung", "--image", &hung]);
    let pulling = |v: &View| {
        v.allocs_of("hung")
            .iter()
            .any(|a| a.desired == Desired::Run && a.observed == Observed::Pulling)
    };
    wait_for(&mut c, "hung pulling", 30, |_| {}, pulling).await;
    gantry(&ctl, &["service", "rm", "slow-stop"]);

    // Both are in progress; another allocation runs meanwhile.
    common::cluster::create_sleeper(&ctl, "quick", &local, 1, &[]);
    let v = wait_for(
        &mut c,
        "quick running",
        15,
        |_| {},
        |v| v.running("quick").len() == 1,
    )
    .await;
    assert!(
        pulling(&v),
        "the hung pull ended before quick ran: {:#?}",
        v.allocs_of("hung")
    );
    // (in the same snapshot: run serially, slow-stop would have been removed, and
    // reported exited, in the pass that ran quick)
    let slow: Vec<_> = v.allocs_of("slow-stop");
    assert!(
        slow.iter()
            .any(|a| a.desired == Desired::Stop && a.observed == Observed::Running),
        "slow-stop's stop was not still in progress when quick ran: {slow:#?}"
    );
    assert!(stalled.stop() >= 1, "the agent never reached the registry");

    // The stalled pull fails once its connection closes; everything is removed.
    gantry(&ctl, &["service", "rm", "hung"]);
    gantry(&ctl, &["service", "rm", "quick"]);
    common::cluster::wait_no_containers(&agents, "service rm").await;
    common::cluster::stop_agents_and_check_leaks(&mut agents, &rootfs);
}

/// `gantry migrate --with-state`: a single-instance service writes a file on a dev node;
/// migrated to qa with its state, the agent commits the container and pushes it to the
/// registry, and the new allocation on qa finds the file. A service of two replicas is
/// refused, and the refusal changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_with_state_carries_the_writable_layer_to_the_target() {
    common::require_root();
    let tmp = tempfile::Builder::new()
        .prefix("gantry-cluster-state")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let rootfs = common::busybox_rootfs(dir);
    let (_registry, reg) = registry(dir, "127.0.0.9");
    push_rootfs_image(dir, &rootfs, &format!("{reg}/test/bb"));
    let image = format!("{reg}/test/bb:1");
    let controller = Controller::start(dir, 1, None);
    let ctl = controller.addr.clone();
    let mut agents = [
        Agent::start(dir, "st-dev", &["env=dev"], &ctl),
        Agent::start(dir, "st-qa", &["env=qa"], &ctl),
    ];
    let mut c = common::cluster::client(std::slice::from_ref(&ctl));
    wait_for(&mut c, "two nodes", 30, |_| {}, |v| v.nodes.len() == 2).await;

    let script = "if [ -f /state ]; then echo found-$(cat /state); \
                  else echo $GANTRY_ALLOC_ID > /state; echo fresh-$GANTRY_ALLOC_ID; fi; \
                  exec sleep 1000";
    let create = |name: &str, replicas: &str| {
        gantry(
            &ctl,
            &[
                "service",
                "create",
                name,
                "--image",
                &image,
                "--replicas",
                replicas,
                "--constraint",
                "env==dev",
                "--entrypoint",
                "/bin/sh",
                "--",
                "-c",
                script,
            ],
        )
    };
    create("keeper", "1");
    let v = wait_for(
        &mut c,
        "keeper running on dev",
        60,
        |_| {},
        |v| v.running("keeper").len() == 1,
    )
    .await;
    let (old, on) = v.running("keeper")[0].clone();
    assert_eq!(on, "st-dev");
    // the file is written before the fresh- line
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gantry(&ctl, &["service", "logs", "keeper"]).contains(&format!("fresh-{old}")) {
        assert!(Instant::now() < deadline, "keeper wrote nothing in 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = gantry(
        &ctl,
        &["migrate", "keeper", "--to", "env=qa", "--with-state"],
    );
    assert!(
        out.contains(&format!("{reg}/test/bb:state-keeper-{old}")),
        "{out}"
    );
    let v = wait_for(
        &mut c,
        "keeper moved to qa",
        60,
        |_| {},
        |v| {
            let r = v.running("keeper");
            r.len() == 1 && r[0].1 == "st-qa" && v.wanted("keeper") == 1
        },
    )
    .await;
    let (new, _) = v.running("keeper")[0].clone();
    assert_ne!(new, old);
    let svc = v.services.iter().find(|s| s.name == "keeper").unwrap();
    assert_eq!(svc.spec.image, format!("{reg}/test/bb:state-keeper-{old}"));
    // the new allocation found the file the old one wrote
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = gantry(&ctl, &["service", "logs", "keeper"]);
        if logs.contains(&format!("keeper.{new}@st-qa | found-{old}")) {
            break;
        }
        assert!(
            !logs.contains(&format!("fresh-{new}")),
            "the new allocation started without the state: {logs}"
        );
        assert!(Instant::now() < deadline, "no found- line in 20 s: {logs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // two replicas: refused, nothing changed
    create("pair", "2");
    let before = common::cluster::view(&mut c).await;
    let pair = before.services.iter().find(|s| s.name == "pair").unwrap();
    let (ok, _, err) = gantry_any(&ctl, &["migrate", "pair", "--to", "env=qa", "--with-state"]);
    assert!(!ok && err.contains("has 2 replicas"), "{err}");
    let after = common::cluster::view(&mut c).await;
    let pair2 = after.services.iter().find(|s| s.name == "pair").unwrap();
    assert_eq!(pair.modify_index, pair2.modify_index);
    assert_eq!(pair.spec, pair2.spec);

    gantry(&ctl, &["service", "rm", "keeper"]);
    gantry(&ctl, &["service", "rm", "pair"]);
    common::cluster::wait_no_containers(&agents, "service rm").await;
    common::cluster::stop_agents_and_check_leaks(&mut agents, &rootfs);
}

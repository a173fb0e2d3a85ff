//! Cluster mode with three controllers and four agents in two sites, as root: the leader
//! controller SIGKILLed right after a deploy is accepted → the deploy completes under the
//! new leader; a service with `--failover site=onprem,site=cloud` lands in onprem; a
//! drain moves its replica off the node without a moment below its replica count; the
//! onprem agents SIGKILLed → replacements run in cloud; when they come back their stale
//! containers are stopped, and a service with `--failback` moves back to onprem
//! (make-before-break) while one without stays in cloud.

mod common;

use common::cluster::{controllers, gantry, view, wait_for, Agent, View};
use gantry_controller::api::ControllerClient;
use std::time::Duration;

fn site_of<'v>(v: &'v View, node: &str) -> &'v str {
    v.nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.labels.get("site"))
        .map(String::as_str)
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_drain_and_site_failover() {
    common::require_root();
    let tmp = tempfile::Builder::new()
        .prefix("gantry-cluster-ha")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let rootfs = common::busybox_rootfs(dir);
    let mut ctls = controllers(dir, 3).await;
    let addrs: Vec<String> = ctls.iter().map(|c| c.addr.clone()).collect();
    let join = addrs.join(",");
    let mut agents = [
        Agent::start(dir, "onprem-a", &["site=onprem"], &join),
        Agent::start(dir, "onprem-b", &["site=onprem"], &join),
        Agent::start(dir, "cloud-a", &["site=cloud"], &join),
        Agent::start(dir, "cloud-b", &["site=cloud"], &join),
    ];
    let mut c = common::cluster::client(&addrs);
    wait_for(&mut c, "four nodes", 30, |_| {}, |v| v.nodes.len() == 4).await;
    let image = format!("rootfs:{}", rootfs.display());
    let create = |ctl: &str, name: &str, replicas: u32, extra: &[&str]| {
        common::cluster::create_sleeper(ctl, name, &image, replicas, extra)
    };

    // Deploy, then SIGKILL the leader at once: the new leader places and the agents
    // (following whichever member answers) run all three replicas.
    let leader = c.status().await.unwrap().leader.expect("a leader");
    create(&join, "mid", 3, &[]);
    let li = ctls.iter().position(|x| x.id == leader).unwrap();
    ctls[li].daemon.signal(libc::SIGKILL);
    let live: Vec<String> = ctls
        .iter()
        .filter(|x| x.id != leader)
        .map(|x| x.addr.clone())
        .collect();
    let mut c = common::cluster::client(&live);
    wait_for(
        &mut c,
        "mid running 3 after the leader died",
        60,
        |_| {},
        |v| v.running("mid").len() == 3,
    )
    .await;
    let new_leader = c.status().await.unwrap().leader.expect("a new leader");
    assert_ne!(new_leader, leader);
    let join = live.join(",");

    // Ordered failover: both replicas in the first site.
    create(&join, "fo", 2, &["--failover", "site=onprem,site=cloud"]);
    let v = wait_for(
        &mut c,
        "fo running twice",
        30,
        |_| {},
        |v| v.running("fo").len() == 2,
    )
    .await;
    for (_, node) in v.running("fo") {
        assert_eq!(site_of(&v, &node), "onprem", "fo placed on {node}");
    }
    create(
        &join,
        "fb",
        1,
        &["--failover", "site=onprem,site=cloud", "--failback"],
    );
    let v = wait_for(
        &mut c,
        "fb running",
        30,
        |_| {},
        |v| v.running("fb").len() == 1,
    )
    .await;
    assert_eq!(site_of(&v, &v.running("fb")[0].1), "onprem");

    // Drain onprem-a: its fo replica moves (make-before-break: never below 2 running).
    gantry(&join, &["node", "drain", "onprem-a"]);
    let never_below = |v: &View| {
        assert!(
            v.running("fo").len() >= 2,
            "fo below 2 running during the drain: {:#?}",
            v.allocs_of("fo")
        )
    };
    wait_for(&mut c, "onprem-a drained", 30, never_below, |v| {
        let on_a = |svc: &str| v.running(svc).iter().any(|(_, n)| n == "onprem-a");
        !on_a("fo") && !on_a("mid") && v.running("fo").len() == 2
    })
    .await;
    gantry(&join, &["node", "activate", "onprem-a"]);

    // Site onprem lost: every fo replica runs in cloud.
    for a in agents.iter_mut().filter(|a| a.name.starts_with("onprem")) {
        a.daemon.signal(libc::SIGKILL);
    }
    wait_for(
        &mut c,
        "fo failed over to cloud",
        30,
        |_| {},
        |v| {
            let r = v.running("fo");
            r.len() == 2
                && r.iter().all(|(_, n)| site_of(v, n) == "cloud")
                && v.running("fb").len() == 1
                && site_of(v, &v.running("fb")[0].1) == "cloud"
        },
    )
    .await;

    // The onprem agents return: their stale containers stop.
    for a in agents.iter_mut().filter(|a| a.name.starts_with("onprem")) {
        a.restart();
    }
    let returning: Vec<&Agent> = agents
        .iter()
        .filter(|a| a.name.starts_with("onprem"))
        .collect();
    let first = stale(&mut c, &returning).await;
    assert!(
        !first.is_empty(),
        "the returning agents recovered none of their old containers"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !stale(&mut c, &returning).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "stale containers still there after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Fail-back: fb moves back to onprem without a moment at zero; fo stays in cloud.
    let fb_never_zero = |v: &View| {
        assert!(
            !v.running("fb").is_empty(),
            "fb had no running replica during the fail-back: {:#?}",
            v.allocs_of("fb")
        )
    };
    wait_for(&mut c, "fb back in onprem", 60, fb_never_zero, |v| {
        let r = v.running("fb");
        r.len() == 1 && site_of(v, &r[0].1) == "onprem" && v.wanted("fb") == 1
    })
    .await;
    let v = view(&mut c).await;
    assert!(
        v.running("fo")
            .iter()
            .all(|(_, n)| site_of(&v, n) == "cloud"),
        "fo (no fail-back) moved: {:?}",
        v.running("fo")
    );

    gantry(&join, &["service", "rm", "mid"]);
    gantry(&join, &["service", "rm", "fo"]);
    gantry(&join, &["service", "rm", "fb"]);
    common::cluster::wait_no_containers(&agents, "service rm").await;
    common::cluster::stop_agents_and_check_leaks(&mut agents, &rootfs);
}

/// Containers on `agents` of no allocation the controllers want run (`ps -q` shows
/// short ids).
async fn stale(c: &mut ControllerClient, agents: &[&Agent]) -> Vec<String> {
    let v = view(c).await;
    let wanted: Vec<String> = v
        .allocs
        .iter()
        .filter(|a| a.desired == gantry_controller::state::Desired::Run)
        .filter_map(|a| a.container.clone())
        .collect();
    agents
        .iter()
        .flat_map(|a| a.containers())
        .filter(|id| !wanted.iter().any(|w| w.starts_with(id.as_str())))
        .collect()
}

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

use common::cluster::{gantry, wait_for, Agent, Controller};
use gantry_controller::state::Desired;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_place_scale_fail_over_and_migrate_across_real_agents() {
    common::require_root();
    let tmp = tempfile::Builder::new()
        .prefix("gantry-cluster-test")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let rootfs = common::busybox_rootfs(dir);
    let controller = Controller::start(dir, 1, None);
    let ctl_addr = controller.addr.clone();
    let mut agents = [
        Agent::start(dir, "dev-a", &["env=dev"], &ctl_addr),
        Agent::start(dir, "dev-b", &["env=dev"], &ctl_addr),
        Agent::start(dir, "qa-a", &["env=qa"], &ctl_addr),
    ];
    let mut c = common::cluster::client(std::slice::from_ref(&ctl_addr));
    wait_for(
        &mut c,
        "three nodes registered",
        30,
        |_| {},
        |v| v.nodes.len() == 3,
    )
    .await;
    let out = gantry(&ctl_addr, &["node", "ls"]);
    assert!(out.contains("dev-a") && out.contains("env=qa"), "{out}");

    let image = format!("rootfs:{}", rootfs.display());
    let create = |name: &str, replicas: u32, constraint: &str| {
        common::cluster::create_sleeper(
            &ctl_addr,
            name,
            &image,
            replicas,
            &["--constraint", constraint],
        )
    };

    // A constrained service lands only on matching nodes, and really runs there.
    create("web", 2, "env==dev");
    let v = wait_for(
        &mut c,
        "web running twice",
        30,
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
    create("nowhere", 1, "env==prod");
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
        30,
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
    let v = common::cluster::view(&mut c).await;
    let (old_alloc, victim) = v.running("web")[0].clone();
    let vi = agents.iter().position(|a| a.name == victim).unwrap();
    let killed_at = Instant::now();
    agents[vi].daemon.signal(libc::SIGKILL);
    let v = wait_for(
        &mut c,
        "web replaced on the other dev node",
        30,
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
    agents[vi].restart();
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
        30,
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

    // A Compose file: a malformed one is refused naming its line and creates nothing;
    // a good one becomes a service placed by its Swarm-style constraint.
    let bad = dir.join("bad-compose.yaml");
    std::fs::write(&bad, "services:\n  app:\n    image: x\n   oops: [\n").unwrap();
    let (ok, _, err) =
        common::cluster::gantry_any(&ctl_addr, &["deploy", "-f", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("line 4"), "{err}");
    let unknown = dir.join("unknown-compose.yaml");
    std::fs::write(
        &unknown,
        "services:\n  app:\n    image: x\n    healthcheck: {}\n",
    )
    .unwrap();
    let (ok, _, err) =
        common::cluster::gantry_any(&ctl_addr, &["deploy", "-f", unknown.to_str().unwrap()]);
    assert!(!ok && err.contains("services.app.healthcheck"), "{err}");
    assert!(!gantry(&ctl_addr, &["service", "ls"]).contains("app"));
    let compose = dir.join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  app:\n    image: \"{image}\"\n    entrypoint: [/bin/sleep]\n    command: \"1000\"\n    network_mode: host\n    deploy:\n      replicas: 2\n      placement:\n        constraints: [node.labels.env == dev]\n"
        ),
    )
    .unwrap();
    let out = gantry(&ctl_addr, &["deploy", "-f", compose.to_str().unwrap()]);
    assert!(out.contains("app: created"), "{out}");
    let v = wait_for(
        &mut c,
        "app running twice",
        30,
        |_| {},
        |v| v.running("app").len() == 2,
    )
    .await;
    let mut on: Vec<String> = v.running("app").into_iter().map(|(_, n)| n).collect();
    on.sort();
    assert_eq!(on, vec!["dev-a", "dev-b"]);
    gantry(&ctl_addr, &["service", "rm", "app"]);

    // Remove the service: every agent ends with no container.
    gantry(&ctl_addr, &["service", "rm", "web"]);
    common::cluster::wait_no_containers(&agents, "service rm").await;
    common::cluster::stop_agents_and_check_leaks(&mut agents, &rootfs);
}

/// `gantry service logs`: two agents, a service of two replicas that print lines → every
/// line of both allocations, prefixed SERVICE.ALLOC@NODE, read from each node's API;
/// `--tail`; `--follow` streams; an unknown service is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_logs_gathers_every_allocation_from_its_node() {
    use std::io::BufRead;
    common::require_root();
    let tmp = tempfile::Builder::new()
        .prefix("gantry-cluster-logs")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let rootfs = common::busybox_rootfs(dir);
    let controller = Controller::start(dir, 1, None);
    let ctl_addr = controller.addr.clone();
    let mut agents = [
        Agent::start(dir, "log-a", &["env=dev"], &ctl_addr),
        Agent::start(dir, "log-b", &["env=dev"], &ctl_addr),
    ];
    let mut c = common::cluster::client(std::slice::from_ref(&ctl_addr));
    wait_for(&mut c, "two nodes", 30, |_| {}, |v| v.nodes.len() == 2).await;
    // each node registered the address of its node API
    let inspect = gantry(&ctl_addr, &["node", "inspect", "log-a"]);
    assert!(inspect.contains("\"api\": \"127.0.0.1:"), "{inspect}");

    let image = format!("rootfs:{}", rootfs.display());
    gantry(
        &ctl_addr,
        &[
            "service",
            "create",
            "talk",
            "--image",
            &image,
            "--replicas",
            "2",
            "--entrypoint",
            "/bin/sh",
            "--",
            "-c",
            // stdout and stderr are separate pipes: the pause keeps `last` the last record
            "echo first-$GANTRY_ALLOC_ID; echo oops-$GANTRY_ALLOC_ID >&2; sleep 1; \
             echo last-$GANTRY_ALLOC_ID; exec sleep 1000",
        ],
    );
    let v = wait_for(
        &mut c,
        "talk running twice",
        30,
        |_| {},
        |v| v.running("talk").len() == 2,
    )
    .await;
    let mut running = v.running("talk");
    running.sort();
    let mut nodes: Vec<&str> = running.iter().map(|(_, n)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["log-a", "log-b"], "one replica per node");

    // every line of both allocations, prefixed; stderr lines on stderr (bounded wait for
    // the shells to have written)
    let deadline = Instant::now() + Duration::from_secs(20);
    let (out, err) = loop {
        let (ok, out, err) = common::cluster::gantry_any(&ctl_addr, &["service", "logs", "talk"]);
        assert!(ok, "service logs: {err}");
        if running
            .iter()
            .all(|(id, _)| out.contains(&format!("last-{id}")))
        {
            break (out, err);
        }
        assert!(
            Instant::now() < deadline,
            "lines missing after 20 s: {out} / {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (id, node) in &running {
        let p = format!("talk.{id}@{node} | ");
        assert!(out.contains(&format!("{p}first-{id}\n")), "{out}");
        assert!(out.contains(&format!("{p}last-{id}\n")), "{out}");
        assert!(err.contains(&format!("{p}oops-{id}\n")), "{err}");
        assert!(!out.contains(&format!("oops-{id}")), "{out}");
    }
    assert_eq!(out.lines().count(), 4, "{out}");

    // --tail 1: the last line of each allocation
    let out = gantry(&ctl_addr, &["service", "logs", "talk", "--tail", "1"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    let mut want: Vec<String> = running
        .iter()
        .map(|(id, node)| format!("talk.{id}@{node} | last-{id}"))
        .collect();
    want.sort();
    assert_eq!(lines, want);

    // --follow keeps the stream open: the lines arrive, and the command is still running
    let mut follow = std::process::Command::new(common::gantry_bin())
        .env("GANTRY_INSECURE", "1")
        .env("GANTRY_CONTROLLER", &ctl_addr)
        .args(["service", "logs", "--follow", "talk"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < 4 {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "--follow ended early"
        );
        seen += 1;
    }
    assert!(follow.try_wait().unwrap().is_none(), "--follow exited");
    unsafe { libc::kill(follow.id() as i32, libc::SIGKILL) };
    let _ = follow.wait();

    // an unknown service: a clear error
    let (ok, _, err) = common::cluster::gantry_any(&ctl_addr, &["service", "logs", "nosuch"]);
    assert!(!ok && err.contains("no service named \"nosuch\""), "{err}");

    gantry(&ctl_addr, &["service", "rm", "talk"]);
    common::cluster::wait_no_containers(&agents, "service rm").await;
    common::cluster::stop_agents_and_check_leaks(&mut agents, &rootfs);
}

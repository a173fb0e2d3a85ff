//! The leader loop in a real one-member cluster on 127.0.0.1: services are placed on
//! matching nodes, unplaced replicas keep their reason, a node that stops heartbeating
//! goes down and its allocations are replaced elsewhere, heartbeats of unknown nodes are
//! refused.

use gantry_controller::api::ControllerClient;
use gantry_controller::leader::LeaderConfig;
use gantry_controller::member::{Member, MemberConfig, StartMode};
use gantry_controller::nodes::LivenessConfig;
use gantry_controller::state::*;
use gantry_proto::cluster::ReadKind;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

struct One {
    _dir: tempfile::TempDir,
    member: Option<Member>,
    addr: String,
}

impl One {
    async fn start() -> One {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = MemberConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.path().join("m1"));
        cfg.leader = LeaderConfig {
            liveness: LivenessConfig {
                ttl: Duration::from_millis(600),
                grace: Duration::from_millis(300),
            },
            tick: Duration::from_millis(50),
            batch: Duration::from_millis(2),
            ..Default::default()
        };
        let member = Member::start(cfg, StartMode::Bootstrap).await.unwrap();
        let addr = member.addr.clone();
        One {
            _dir: dir,
            member: Some(member),
            addr,
        }
    }

    fn client(&self) -> ControllerClient {
        let mut c = ControllerClient::new(vec![self.addr.clone()]);
        c.retry_for = Duration::from_secs(5);
        c
    }

    async fn stop(mut self) {
        if let Some(m) = self.member.take() {
            m.stop().await;
        }
    }
}

impl Drop for One {
    /// A test that panics before [`One::stop`] still stops its member before the data dir
    /// goes: a member writing into a removed dir can hang sled for every database here.
    fn drop(&mut self) {
        if let Some(m) = self.member.take() {
            // the tests here run on a multi-thread runtime: a blocking wait is allowed
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(m.stop()));
        }
    }
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn register(c: &mut ControllerClient, name: &str, env: &str) -> NodeId {
    let r = Resources {
        cpu_millis: 2000,
        memory_bytes: 1 << 30,
        pids: 1000,
    };
    let (_, resp) = c
        .write(&Command::RegisterNode {
            name: name.into(),
            address: format!("127.0.0.1:{}", 9000 + name.len()),
            labels: labels(&[("env", env)]),
            capacity: r,
            allocatable: r,
            api: None,
        })
        .await
        .unwrap();
    match resp.unwrap() {
        Reply::NodeRegistered { id } => id,
        r => panic!("{r:?}"),
    }
}

async fn upsert(c: &mut ControllerClient, name: &str, replicas: u32, constraint: &str) {
    let (_, resp) = c
        .write(&Command::UpsertService {
            name: name.into(),
            spec: ServiceSpec {
                image: "busybox".into(),
                replicas,
                constraints: vec![constraint.parse().unwrap()],
                resources: Resources {
                    cpu_millis: 100,
                    memory_bytes: 1 << 20,
                    pids: 10,
                },
                ..Default::default()
            },
            expected_index: None,
        })
        .await
        .unwrap();
    resp.unwrap();
}

/// Beats for the given nodes every 100 ms until `alive` of a node is cleared.
fn beat(addr: String, nodes: Vec<(NodeId, Arc<AtomicBool>)>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut c = ControllerClient::new(vec![addr]);
        loop {
            for (id, alive) in &nodes {
                if alive.load(Ordering::Relaxed) {
                    let _ = c.heartbeat(*id).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Wait until the allocations that should run satisfy `pred`; panics after 10 s.
async fn wait_allocs(
    c: &mut ControllerClient,
    what: &str,
    pred: impl Fn(&[Allocation]) -> bool,
) -> Vec<Allocation> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, all): (u64, Vec<Allocation>) = c.read(ReadKind::Allocations, false).await.unwrap();
        let running: Vec<Allocation> = all
            .into_iter()
            .filter(|a| a.desired == Desired::Run)
            .collect();
        if pred(&running) {
            return running;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: allocations {running:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_placed_on_matching_nodes_and_unplaced_replicas_say_why() {
    let one = One::start().await;
    let mut c = one.client();
    let a = register(&mut c, "dev-a", "dev").await;
    let b = register(&mut c, "dev-b", "dev").await;
    let q = register(&mut c, "qa-a", "qa").await;
    let alive: Vec<_> = [a, b, q]
        .iter()
        .map(|id| (*id, Arc::new(AtomicBool::new(true))))
        .collect();
    let beats = beat(one.addr.clone(), alive);

    upsert(&mut c, "web", 2, "env==dev").await;
    let placed = wait_allocs(&mut c, "web on both dev nodes", |v| v.len() == 2).await;
    let mut nodes: Vec<NodeId> = placed.iter().map(|x| x.node).collect();
    nodes.sort();
    assert_eq!(nodes, vec![a, b], "replicas on distinct dev nodes only");

    // A third replica fits on no dev node (one replica per node): it stays unplaced,
    // and the reason names the constraint and the distinct-node rule.
    upsert(&mut c, "web", 3, "env==dev").await;
    upsert(&mut c, "db", 1, "env==prod").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let reasons = loop {
        let r = c.unplaced().await.unwrap();
        if r.contains_key("web") && r.contains_key("db") {
            break r;
        }
        assert!(Instant::now() < deadline, "unplaced reasons: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reasons["db"].contains("3 nodes"), "{}", reasons["db"]);
    assert!(reasons["db"].contains("env"), "{}", reasons["db"]);
    assert!(
        reasons["web"].starts_with("1 replica(s) of web"),
        "{}",
        reasons["web"]
    );
    let after = wait_allocs(&mut c, "still two", |v| v.len() == 2).await;
    assert!(
        after.iter().all(|x| x.node != q),
        "nothing on qa: {after:?}"
    );

    // Scale down: one allocation is told to stop.
    upsert(&mut c, "web", 1, "env==dev").await;
    wait_allocs(&mut c, "web scaled to 1", |v| {
        v.iter().filter(|x| x.service == "web").count() == 1
    })
    .await;
    beats.abort();
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_goes_down_and_its_allocations_are_replaced() {
    let one = One::start().await;
    let mut c = one.client();
    let a = register(&mut c, "dev-a", "dev").await;
    let b = register(&mut c, "dev-b", "dev").await;
    let flags: BTreeMap<NodeId, Arc<AtomicBool>> = [a, b]
        .iter()
        .map(|id| (*id, Arc::new(AtomicBool::new(true))))
        .collect();
    let beats = beat(
        one.addr.clone(),
        flags.iter().map(|(k, v)| (*k, v.clone())).collect(),
    );
    upsert(&mut c, "web", 1, "env==dev").await;
    let first = wait_allocs(&mut c, "web placed", |v| v.len() == 1).await;
    let victim = first[0].node;
    let other = if victim == a { b } else { a };
    // Both nodes heartbeat past the grace period: nobody goes down.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, nodes): (u64, Vec<Node>) = c.read(ReadKind::Nodes, false).await.unwrap();
    assert!(
        nodes.iter().all(|n| n.status == NodeStatus::Ready),
        "{nodes:?}"
    );

    flags[&victim].store(false, Ordering::Relaxed);
    let moved = wait_allocs(&mut c, "web replaced on the other node", |v| {
        v.len() == 1 && v[0].node == other
    })
    .await;
    assert_ne!(moved[0].id, first[0].id);
    let (_, all): (u64, Vec<Allocation>) = c.read(ReadKind::Allocations, false).await.unwrap();
    let old = all.iter().find(|x| x.id == first[0].id).unwrap();
    assert_eq!(old.desired, Desired::Stop);
    assert_eq!(old.observed, Observed::Lost);
    let (_, nodes): (u64, Vec<Node>) = c.read(ReadKind::Nodes, false).await.unwrap();
    let down = nodes.iter().find(|n| n.id == victim).unwrap();
    assert_eq!(down.status, NodeStatus::Down);

    // Unknown nodes are refused, so an agent knows to register.
    let e = c.heartbeat(999).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    // A node that comes back finds itself down.
    assert_eq!(c.heartbeat(victim).await.unwrap(), "Down");
    beats.abort();
    one.stop().await;
}

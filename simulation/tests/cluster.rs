//! The in-process cluster: a crashed member restarts from its data dir and catches up; an
//! isolated leader is replaced and acknowledged writes survive.

use gantry_controller::raft::RaftTimings;
use gantry_controller::state::Reply;
use gantry_sim::cluster::{ClusterConfig, SimCluster, Store};
use gantry_sim::net::FaultState;
use gantry_sim::topology;
use std::time::{Duration, Instant};

fn config(store: Store) -> ClusterConfig {
    ClusterConfig {
        members: 3,
        timings: RaftTimings {
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 20,
        },
        leader_loop: None,
        seed: 9,
        store,
    }
}

async fn all_applied(c: &SimCluster, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let behind: Vec<u64> = c
            .running()
            .into_iter()
            .filter(|&id| c.handle(id).unwrap().last_applied_index() < index)
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members {behind:?} never applied {index}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_restarts_from_disk_and_catches_up() {
    crashed_leader_restarts_and_catches_up(Store::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_leader_restarts_from_its_memory_disk_and_catches_up() {
    crashed_leader_restarts_and_catches_up(Store::Memory).await;
}

async fn crashed_leader_restarts_and_catches_up(store: Store) {
    let c = SimCluster::start(config(store)).await.expect("start");
    let t = Duration::from_secs(10);
    let first = c.wait_leader(t).await.expect("leader");
    for i in 0..5 {
        let r = c.write(topology::register_node(i), t).await.expect("write");
        assert!(matches!(r, Ok(Reply::NodeRegistered { .. })), "{r:?}");
    }
    c.crash(first).await;
    assert!(!c.running().contains(&first));
    // The others elect a new leader and go on (past a snapshot: 20 entries).
    for i in 5..40 {
        c.write(topology::register_node(i), t)
            .await
            .expect("write")
            .expect("applied");
    }
    let second = c.wait_leader(t).await.unwrap();
    assert_ne!(second, first);
    c.restart(first).await.expect("restart from its data dir");
    let idx = c.handle(second).unwrap().last_applied_index();
    all_applied(&c, idx).await;
    let h = c.handle(first).unwrap();
    assert_eq!(
        h.read().state.nodes().count(),
        40,
        "restarted member has every node"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let c = SimCluster::start(config(Store::Sled)).await.expect("start");
    let t = Duration::from_secs(10);
    let first = c.wait_leader(t).await.expect("leader");
    c.write(topology::register_node(0), t)
        .await
        .unwrap()
        .unwrap();
    c.router.set_faults(FaultState {
        isolated: [first].into(),
        ..Default::default()
    });
    // A new leader among the two others; writes go there.
    let deadline = Instant::now() + t;
    let second = loop {
        let others: Vec<u64> = c.running().into_iter().filter(|&i| i != first).collect();
        if let Some(&l) = others
            .iter()
            .find(|&&i| c.raft(i).unwrap().metrics().borrow().state.is_leader())
        {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader while {first} is isolated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let raft = c.raft(second).unwrap();
    raft.client_write(topology::register_node(1))
        .await
        .expect("written on the majority");
    c.router.set_faults(FaultState::healed());
    let idx = c.handle(second).unwrap().last_applied_index();
    all_applied(&c, idx).await;
    for id in c.running() {
        assert_eq!(
            c.handle(id).unwrap().read().state.nodes().count(),
            2,
            "member {id}"
        );
    }
    c.shutdown().await;
}

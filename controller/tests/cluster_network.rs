//! The cluster network's plan (`--cluster-cidr`, `--node-subnet-prefix`) through a real
//! member: recorded at bootstrap, node subnets come from it, agents read it, and a
//! restart that asks for another plan is refused before anything starts.

use gantry_controller::api::ControllerClient;
use gantry_controller::member::{Member, MemberConfig, MemberError, StartMode};
use gantry_controller::state::*;
use gantry_proto::cluster::ReadKind;
use std::collections::BTreeMap;
use std::path::Path;

fn config(dir: &Path, network: Option<ClusterNetwork>) -> MemberConfig {
    let mut c = MemberConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.to_path_buf());
    c.cluster_network = network;
    c
}

fn register(name: &str) -> Command {
    Command::RegisterNode {
        name: name.into(),
        address: format!("{name}:7000"),
        labels: BTreeMap::new(),
        capacity: Resources::default(),
        allocatable: Resources::default(),
        api: None,
    }
}

async fn start(dir: &Path, network: Option<ClusterNetwork>, mode: StartMode) -> Member {
    Member::start(config(dir, network), mode)
        .await
        .expect("member starts")
}

async fn refused(dir: &Path, network: ClusterNetwork, mode: StartMode) -> String {
    match Member::start(config(dir, Some(network)), mode).await {
        Err(e @ MemberError::ClusterNetwork(_)) => e.to_string(),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(m) => {
            m.stop().await;
            panic!("started with {network}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_network_is_chosen_at_bootstrap_and_cannot_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let mine = ClusterNetwork {
        cidr: "10.50.0.0/20".parse().unwrap(),
        node_prefix: 22,
    };
    let m = start(&dir, Some(mine), StartMode::Bootstrap).await;
    let mut c = ControllerClient::new(vec![m.addr.clone()]);
    let (_, read): (u64, ClusterNetwork) = c.read(ReadKind::ClusterNetwork, false).await.unwrap();
    assert_eq!(read, mine);
    for n in ["a", "b"] {
        c.write(&register(n)).await.unwrap().1.unwrap();
    }
    let (_, nodes): (u64, Vec<Node>) = c.read(ReadKind::Nodes, false).await.unwrap();
    let mut subnets: Vec<String> = nodes
        .iter()
        .map(|n| n.subnet.unwrap().to_string())
        .collect();
    subnets.sort();
    assert_eq!(subnets, vec!["10.50.0.0/22", "10.50.4.0/22"]);
    // Written through the API, another plan is refused by the state.
    let other = ClusterNetwork {
        cidr: "10.60.0.0/16".parse().unwrap(),
        node_prefix: 24,
    };
    let (_, r) = c
        .write(&Command::SetClusterNetwork { network: other })
        .await
        .unwrap();
    assert!(
        r.unwrap_err().to_string().contains("cannot change"),
        "another plan accepted"
    );
    m.stop().await;

    // Restarts: another plan is refused (resume, or a no-op --bootstrap), naming both.
    for mode in [StartMode::Resume, StartMode::Bootstrap] {
        let e = refused(&dir, other, mode).await;
        assert!(
            e.contains("10.50.0.0/20 with /22 node subnets")
                && e.contains("cannot change to 10.60.0.0/16"),
            "{e}"
        );
    }
    // The same plan, or none, starts; the plan and the subnets are still there.
    let m = start(&dir, Some(mine), StartMode::Resume).await;
    m.stop().await;
    let m = start(&dir, None, StartMode::Resume).await;
    let mut c = ControllerClient::new(vec![m.addr.clone()]);
    let (_, read): (u64, ClusterNetwork) = c.read(ReadKind::ClusterNetwork, false).await.unwrap();
    assert_eq!(read, mine);
    let (_, nodes): (u64, Vec<Node>) = c.read(ReadKind::Nodes, false).await.unwrap();
    assert!(nodes.iter().all(|n| mine.cidr.contains(&n.subnet.unwrap())));
    m.stop().await;

    // A bad plan, or one given to a joining member, is refused before anything starts.
    let bad = ClusterNetwork {
        cidr: "10.50.0.0/24".parse().unwrap(),
        node_prefix: 24,
    };
    let fresh = tmp.path().join("m2");
    let e = refused(&fresh, bad, StartMode::Bootstrap).await;
    assert!(e.contains("fewer than two /24"), "{e}");
    let e = refused(&fresh, mine, StartMode::Join("127.0.0.1:1".into())).await;
    assert!(e.contains("joining member"), "{e}");
    assert!(!fresh.exists(), "a refused start left {}", fresh.display());

    // Without a plan, a new cluster records the default.
    let m = start(&tmp.path().join("m3"), None, StartMode::Bootstrap).await;
    let mut c = ControllerClient::new(vec![m.addr.clone()]);
    let (_, read): (u64, ClusterNetwork) = c.read(ReadKind::ClusterNetwork, false).await.unwrap();
    assert_eq!(read, ClusterNetwork::default());
    assert_eq!(
        m.handle.read().state.recorded_cluster_network(),
        Some(ClusterNetwork::default())
    );
    m.stop().await;
}

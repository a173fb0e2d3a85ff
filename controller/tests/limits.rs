//! Oversized and malformed requests to every RPC a controller member serves (the cluster
//! API and the Raft peer service) are refused with a clear status, change nothing, and
//! the member keeps serving normal requests afterwards.

use gantry_controller::limits::*;
use gantry_controller::member::{Member, MemberConfig, StartMode};
use gantry_controller::raft::RaftTimings;
use gantry_controller::state::*;
use gantry_proto::cluster::cluster_client::ClusterClient;
use gantry_proto::cluster::*;
use gantry_proto::limits::{CLUSTER_REQUEST_MAX, MAX_STATUS_MESSAGE, RAFT_MESSAGE_MAX};
use gantry_proto::raft::raft_client::RaftClient;
use gantry_proto::raft::RaftRequest;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

/// One member and its data dir. The member is declared first: it stops (on drop) before
/// the dir is removed.
struct One {
    member: Running,
    _dir: tempfile::TempDir,
}

/// A member that is stopped when dropped, even when a test panics: a member writing into a
/// removed data dir can hang sled for every database in this process.
struct Running(Option<Member>);

impl std::ops::Deref for Running {
    type Target = Member;
    fn deref(&self) -> &Member {
        self.0.as_ref().expect("the member runs until dropped")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // the tests here run on a multi-thread runtime: a blocking wait is allowed
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(m.stop()));
        }
    }
}

async fn one_member() -> One {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = MemberConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir.path().join("m1"));
    cfg.timings = RaftTimings {
        heartbeat_ms: 50,
        election_min_ms: 150,
        election_max_ms: 300,
        snapshot_every: 10_000,
    };
    cfg.write_timeout = Duration::from_secs(5);
    // No leader-loop writes while the test compares states.
    cfg.leader.liveness.grace = Duration::from_secs(3600);
    let member = Member::start(cfg, StartMode::Bootstrap).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while member.raft.metrics().borrow().current_leader != Some(1) {
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    One {
        member: Running(Some(member)),
        _dir: dir,
    }
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A raw API client with no limits of its own: what an attacker or a broken client sends.
async fn api(addr: &str) -> ClusterClient<Channel> {
    ClusterClient::new(channel(addr).await)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX)
}

fn register(name: &str, labels: BTreeMap<String, String>) -> Command {
    Command::RegisterNode {
        name: name.into(),
        address: format!("{name}:7000"),
        labels,
        capacity: Resources::default(),
        allocatable: Resources::default(),
        api: None,
    }
}

fn write_req(json: Vec<u8>) -> WriteRequest {
    WriteRequest {
        command_json: json,
        forwarded: false,
    }
}

/// A normal write goes through and answers Ok: the member still serves.
async fn still_serves(c: &mut ClusterClient<Channel>, name: &str) {
    let cmd = serde_json::to_vec(&register(name, BTreeMap::new())).unwrap();
    let reply = c
        .write(write_req(cmd))
        .await
        .expect("normal write")
        .into_inner();
    let r: Response = serde_json::from_slice(&reply.response_json).unwrap();
    r.expect("normal command accepted");
    c.status(StatusRequest {}).await.expect("status answers");
}

fn image(m: &Member) -> StateImage {
    m.handle.read().state.to_image()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_api_requests_are_refused_and_the_member_keeps_serving() {
    let one = one_member().await;
    let addr = one.member.addr.clone();
    let mut c = api(&addr).await;
    still_serves(&mut c, "before").await;

    // Over the transport limit: refused while decoding, RESOURCE_EXHAUSTED naming the limit.
    let e = c
        .write(write_req(vec![b' '; CLUSTER_REQUEST_MAX + 1]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains(&CLUSTER_REQUEST_MAX.to_string()),
        "{e:?}"
    );
    still_serves(&mut c, "after-transport-limit").await;
    let before = image(&one.member);

    // Over the command limit (under the transport's): the field and the limit are named.
    let e = c
        .write(write_req(vec![b' '; MAX_COMMAND_JSON + 1]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("command_json"), "{e:?}");
    assert!(e.message().contains(&MAX_COMMAND_JSON.to_string()), "{e:?}");

    // Not JSON, JSON of the wrong shape, nesting deeper than the decoder's recursion limit.
    for bad in [
        b"\xff\xfe not json".to_vec(),
        br#"{"RegisterNode":{"name":1}}"#.to_vec(),
        br#"{"NoSuchVerb":{}}"#.to_vec(),
        "[".repeat(100_000).into_bytes(),
        // serde quotes an unknown variant: the status message must stay small.
        format!("{{\"{}\":{{}}}}", "V".repeat(500_000)).into_bytes(),
        br#"{"Batch":{"commands":"#.iter().chain("[".repeat(50_000).as_bytes()).copied().collect(),
    ] {
        let e = c.write(write_req(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with("command_json:"), "{e:?}");
        assert!(
            e.message().len() <= MAX_STATUS_MESSAGE,
            "{}",
            e.message().len()
        );
    }

    // Valid JSON over an object limit: committed as a refusal naming field and limit.
    let labels = (0..=MAX_LABELS)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let json = serde_json::to_vec(&register("many-labels", labels)).unwrap();
    let reply = c.write(write_req(json)).await.unwrap().into_inner();
    let r: Response = serde_json::from_slice(&reply.response_json).unwrap();
    let e = r.expect_err("65 labels refused");
    assert!(e.to_string().starts_with("labels:"), "{e}");
    assert!(e.to_string().contains("the limit is 64"), "{e}");

    // Other RPCs with bad fields.
    let e = c
        .read(ReadRequest {
            kind: 99,
            stale: false,
            forwarded: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for address in [
        String::new(),
        "h".repeat(MAX_ADDRESS_LEN + 1),
        "no port".into(),
        "user@host:1".into(),
        "host:99999".into(),
    ] {
        let e = c
            .add_member(AddMemberRequest {
                id: 2,
                address: address.clone(),
                forwarded: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{address:?}: {e:?}");
        assert!(e.message().starts_with("address:"), "{e:?}");
    }
    let e = c
        .election_control(ElectionControlRequest {
            pause_ms: u32::MAX,
            elect_now: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("pause_ms:"), "{e:?}");
    let e = c
        .heartbeat(HeartbeatRequest {
            node: u64::MAX,
            forwarded: false,
            mesh_index: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .transfer_leader(TransferLeaderRequest {
            target: u64::MAX,
            forwarded: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A watch from an index far in the future opens and waits (no full state, no panic).
    let mut w = c
        .watch(WatchRequest {
            from_index: u64::MAX,
        })
        .await
        .unwrap()
        .into_inner();
    drop(w.message());

    // Garbage on the TCP port (not HTTP/2): the connection is dropped, nothing else.
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    raw.write_all(&[0x16; 4096]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut sink)).await;

    // Nothing refused changed the state; normal requests still work.
    let after = image(&one.member);
    assert_eq!(
        after.nodes, before.nodes,
        "a refused request changed the nodes"
    );
    assert_eq!(
        one.member
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count(),
        1
    );
    still_serves(&mut c, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_peer_rpcs_refuse_oversized_foreign_and_malformed_requests() {
    let one = one_member().await;
    let addr = one.member.addr.clone();
    let mut api = api(&addr).await;
    let cluster_id = api
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .cluster_id;
    let mut raft = RaftClient::new(channel(&addr).await)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let term_before = one.member.raft.metrics().borrow().current_term;

    let req = |data: Vec<u8>, cluster_id: &str| RaftRequest {
        data,
        cluster_id: cluster_id.to_string(),
    };
    let e = raft
        .append_entries(req(vec![b'x'; RAFT_MESSAGE_MAX + 1], &cluster_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let e = raft
        .vote(req(b"{}".to_vec(), &"another-cluster".repeat(100_000)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().len() <= MAX_STATUS_MESSAGE,
        "{}",
        e.message().len()
    );
    for bad in [
        b"".to_vec(),
        b"\x00\x01\x02".to_vec(),
        br#"{"vote":{"leader_id":{"term":"#.to_vec(),
        "[".repeat(100_000).into_bytes(),
        format!("{{\"{}\":{{}}}}", "V".repeat(500_000)).into_bytes(),
    ] {
        let e = raft.vote(req(bad.clone(), &cluster_id)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = raft
            .append_entries(req(bad.clone(), &cluster_id))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let e = raft
            .install_snapshot(req(bad, &cluster_id))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // The same on AppendStream: the bad request's answer is the stream's error, which
    // ends it.
    let streamed = |r: RaftRequest| {
        let mut raft = raft.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(r).await.unwrap();
            let mut replies = raft
                .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("the stream opens")
                .into_inner();
            let e = replies
                .message()
                .await
                .expect_err("a bad request ends the stream");
            drop(tx);
            e
        }
    };
    // (tonic's stream decoder says OutOfRange where the unary one says ResourceExhausted)
    let e = streamed(req(vec![b'x'; RAFT_MESSAGE_MAX + 1], &cluster_id)).await;
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too large"), "{e:?}");
    let e = streamed(req(b"{}".to_vec(), "another-cluster")).await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for bad in [
        b"".to_vec(),
        b"\x00\x01".to_vec(),
        "[".repeat(100_000).into_bytes(),
    ] {
        let e = streamed(req(bad, &cluster_id)).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // Still the leader of the same term, and serving.
    let m = one.member.raft.metrics().borrow().clone();
    assert_eq!(m.current_term, term_before);
    assert_eq!(m.current_leader, Some(1));
    still_serves(&mut api, "after-raft").await;
}

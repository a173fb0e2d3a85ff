//! In-process clusters of controller members on 127.0.0.1 (random ports, temp data dirs):
//! election, replication, forwarding, failover, catch-up by log and by snapshot,
//! membership changes, restart, DR, watches, and bad input.

use gantry_controller::api::ControllerClient;
use gantry_controller::dr::{self, SnapshotFile};
use gantry_controller::member::{Member, MemberConfig, MemberError, StartMode};
use gantry_controller::raft::RaftTimings;
use gantry_controller::state::*;
use gantry_proto::cluster::{watch_event, ReadKind};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::Code;

fn timings(snapshot_every: u64) -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 50,
        election_min_ms: 150,
        election_max_ms: 300,
        snapshot_every,
    }
}

fn config(id: u64, dir: PathBuf, listen: &str, snapshot_every: u64) -> MemberConfig {
    let mut c = MemberConfig::new(id, listen.parse().unwrap(), dir);
    c.timings = timings(snapshot_every);
    c.write_timeout = Duration::from_secs(2);
    // These tests compare replicated states taken at different times: the leader loop
    // must not change them meanwhile (the fake nodes never heartbeat; services ask for
    // no replicas). tests/leader.rs covers the leader loop.
    c.leader.liveness.grace = Duration::from_secs(3600);
    c
}

/// Members of one test cluster, their data dirs and addresses; stops them on drop.
struct Cluster {
    dir: TempDir,
    members: BTreeMap<u64, Member>,
    addrs: BTreeMap<u64, String>,
    snapshot_every: u64,
    /// Raft timings other than [`timings`]'s, for one test.
    timings: Option<RaftTimings>,
}

impl Cluster {
    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("m{id}"))
    }

    async fn new(n: u64, snapshot_every: u64) -> Cluster {
        Self::new_with(n, snapshot_every, None).await
    }

    async fn new_with(n: u64, snapshot_every: u64, timings: Option<RaftTimings>) -> Cluster {
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            members: BTreeMap::new(),
            addrs: BTreeMap::new(),
            snapshot_every,
            timings,
        };
        c.start(1, StartMode::Bootstrap).await.unwrap();
        c.wait_leader(Duration::from_secs(5)).await;
        for id in 2..=n {
            let seed = c.addrs[&1].clone();
            c.start(id, StartMode::Join(seed)).await.unwrap();
        }
        c
    }

    /// Start member `id` (on its old address when it had one).
    async fn start(&mut self, id: u64, mode: StartMode) -> Result<(), MemberError> {
        let listen = self
            .addrs
            .get(&id)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let mut cfg = config(id, self.data_dir(id), &listen, self.snapshot_every);
        if let Some(t) = &self.timings {
            cfg.timings = t.clone();
            // Big entries under a loaded debug build: writes wait their turn longer.
            cfg.write_timeout = Duration::from_secs(20);
        }
        let m = Member::start(cfg, mode).await?;
        self.addrs.insert(id, m.addr.clone());
        self.members.insert(id, m);
        Ok(())
    }

    async fn stop(&mut self, id: u64) {
        if let Some(m) = self.members.remove(&id) {
            let closed = m.db_closed();
            m.stop().await;
            assert!(
                closed.is_closed(),
                "member {id} stopped with its database still open"
            );
        }
    }

    fn client(&self) -> ControllerClient {
        let mut c = ControllerClient::new(self.addrs.values().cloned().collect());
        c.retry_for = Duration::from_secs(8);
        c
    }

    fn client_of(&self, id: u64) -> ControllerClient {
        let mut c = ControllerClient::new(vec![self.addrs[&id].clone()]);
        c.retry_for = Duration::from_secs(8);
        c
    }

    /// The leader id, as seen by a running member, within `within`.
    async fn wait_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            for m in self.members.values() {
                let metrics = m.raft.metrics().borrow().clone();
                if let Some(l) = metrics.current_leader {
                    if self.members.contains_key(&l) && metrics.state.is_leader() == (l == m.id) {
                        return l;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader elected within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every running member applied at least `index`.
    async fn wait_applied(&self, index: u64, within: Duration) {
        let deadline = Instant::now() + within;
        for m in self.members.values() {
            while m.handle.last_applied_index() < index {
                assert!(
                    Instant::now() < deadline,
                    "member {} applied {} < {index} after {within:?}",
                    m.id,
                    m.handle.last_applied_index()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn image(&self, id: u64) -> StateImage {
        self.members[&id].handle.read().state.to_image()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop every member before the data dirs go: a member writing into a removed dir
        // can hang sled's flush (and with it every database in this process) for good.
        // Every test here runs on a multi-thread runtime, so a blocking wait is allowed.
        let members = std::mem::take(&mut self.members);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for (_, m) in members {
                    m.stop().await;
                }
            })
        });
    }
}

fn register(name: &str) -> Command {
    Command::RegisterNode {
        name: name.into(),
        address: format!("{name}:7000"),
        labels: BTreeMap::new(),
        capacity: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            pids: 100,
        },
        allocatable: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            pids: 100,
        },
        api: None,
    }
}

fn upsert(name: &str, image: &str) -> Command {
    Command::UpsertService {
        name: name.into(),
        spec: ServiceSpec {
            image: image.into(),
            replicas: 0,
            ..Default::default()
        },
        expected_index: None,
    }
}

async fn write_ok(client: &mut ControllerClient, cmd: &Command) -> u64 {
    let (index, resp) = client.write(cmd).await.expect("write");
    resp.expect("command accepted");
    index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_forward_and_read() {
    let c = Cluster::new(3, 10_000).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();

    // a write sent to a follower is forwarded to the leader
    let mut fc = c.client_of(follower);
    let idx = write_ok(&mut fc, &register("n1")).await;
    let (_, resp) = fc.write(&upsert("web", "")).await.unwrap();
    assert!(
        matches!(resp, Err(ApplyError::Invalid { ref field, .. }) if field == "spec.image"),
        "{resp:?}"
    );
    c.wait_applied(idx, Duration::from_secs(5)).await;
    for id in c.members.keys() {
        assert_eq!(c.image(*id).nodes.len(), 1, "member {id} has the node");
    }

    // linearizable read through a follower sees the write; stale read too after apply
    let (ridx, nodes): (u64, Vec<Node>) = fc.read(ReadKind::Nodes, false).await.unwrap();
    assert!(ridx >= idx);
    assert_eq!(nodes[0].name, "n1");
    let (_, nodes): (u64, Vec<Node>) = fc.read(ReadKind::Nodes, true).await.unwrap();
    assert_eq!(nodes.len(), 1);

    let st = fc.status().await.unwrap();
    assert_eq!(st.leader, Some(leader));
    assert_eq!(st.members.iter().filter(|m| m.voter).count(), 3);
    let mut lc = c.client_of(leader);
    let st = lc.status().await.unwrap();
    assert!(
        st.members.iter().all(|m| m.lag.is_some()),
        "leader reports lag: {st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_new_leader_and_keeps_acknowledged_writes() {
    let mut c = Cluster::new(3, 10_000).await;
    let mut client = c.client();
    let mut acked = Vec::new();
    for i in 0..20 {
        write_ok(&mut client, &register(&format!("a{i}"))).await;
        acked.push(format!("a{i}"));
    }
    let old = c.wait_leader(Duration::from_secs(5)).await;
    c.stop(old).await;
    let t = Instant::now();
    for i in 0..20 {
        write_ok(&mut client, &register(&format!("b{i}"))).await;
        acked.push(format!("b{i}"));
    }
    eprintln!("20 writes after leader loss took {:?}", t.elapsed());
    let new = c.wait_leader(Duration::from_secs(5)).await;
    assert_ne!(new, old);
    let (_, nodes): (u64, Vec<Node>) = client.read(ReadKind::Nodes, false).await.unwrap();
    for name in &acked {
        assert!(
            nodes.iter().any(|n| &n.name == name),
            "acknowledged write {name} lost"
        );
    }
}

/// The failover watchdog (raft/failover.rs): with election timeouts of 3–6 s, openraft
/// alone starts the next election no sooner than lease (6 s) + the follower's own timeout
/// (≥ 3 s) after the leader falls silent. A stopped leader closes its connections, so
/// the watchdog campaigns right after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_leader_is_replaced_after_its_lease_not_after_a_further_timeout() {
    let long = RaftTimings {
        heartbeat_ms: 100,
        election_min_ms: 3000,
        election_max_ms: 6000,
        snapshot_every: 10_000,
    };
    let mut c = Cluster::new_with(3, 10_000, Some(long)).await;
    let mut client = c.client();
    write_ok(&mut client, &register("before")).await;
    c.wait_applied(2, Duration::from_secs(10)).await;
    let old = c.wait_leader(Duration::from_secs(5)).await;
    // before stopping: the last heartbeat was at most one interval before this
    let silent = Instant::now();
    c.stop(old).await;
    let new = c.wait_leader(Duration::from_secs(30)).await;
    let took = silent.elapsed();
    assert_ne!(new, old);
    // lease 6 s + margin 50 ms (+ 100 ms for the second-ranked follower) after the last
    // heartbeat; openraft's own timer could not fire before 9 s
    assert!(
        took < Duration::from_millis(8500),
        "the new leader took {took:?}: the watchdog did not campaign after the 6 s lease"
    );
    assert!(
        took >= Duration::from_millis(5800),
        "the new leader came after {took:?}, before the old one's lease had lapsed"
    );
    write_ok(&mut client, &register("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_from_log_and_from_snapshot_after_compaction() {
    let mut c = Cluster::new(3, 50).await;
    let mut client = c.client();
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let lagging = *c.addrs.keys().find(|id| **id != leader).unwrap();

    // down for a few writes: catches up from the log
    c.stop(lagging).await;
    let mut last = 0;
    for i in 0..10 {
        last = write_ok(&mut client, &register(&format!("x{i}"))).await;
    }
    c.start(lagging, StartMode::Resume).await.unwrap();
    c.wait_applied(last, Duration::from_secs(10)).await;
    assert_eq!(c.image(lagging), c.image(leader));

    // down for many writes: the leader compacts its log and must send a snapshot
    c.stop(lagging).await;
    for i in 0..200 {
        last = write_ok(&mut client, &register(&format!("y{i}"))).await;
    }
    let purged = c.members[&leader].raft.metrics().borrow().purged;
    assert!(
        purged.is_some_and(|p| p.index > 20),
        "leader purged its log: {purged:?}"
    );
    c.start(lagging, StartMode::Resume).await.unwrap();
    c.wait_applied(last, Duration::from_secs(15)).await;
    assert_eq!(c.image(lagging), c.image(leader));
    let snap = c.members[&lagging].raft.metrics().borrow().snapshot;
    assert!(snap.is_some(), "the follower installed a snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_three_to_five_to_three() {
    let mut c = Cluster::new(3, 10_000).await;
    let mut client = c.client();
    let idx = write_ok(&mut client, &register("n1")).await;
    for id in [4, 5] {
        let seed = c.addrs[&2].clone();
        c.start(id, StartMode::Join(seed)).await.unwrap();
    }
    let st = client.status().await.unwrap();
    assert_eq!(st.members.iter().filter(|m| m.voter).count(), 5, "{st:?}");
    c.wait_applied(idx, Duration::from_secs(5)).await;
    assert_eq!(c.image(5).nodes.len(), 1, "new members got the data");

    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let remove: Vec<u64> = c
        .addrs
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .take(2)
        .collect();
    for id in &remove {
        let r = client.remove_member(*id).await.unwrap();
        assert!(!r.voters.contains(id));
    }
    for id in &remove {
        c.stop(*id).await;
        c.addrs.remove(id);
    }
    let mut client = c.client();
    let st = client.status().await.unwrap();
    assert_eq!(st.members.iter().filter(|m| m.voter).count(), 3, "{st:?}");
    // the 3 left still commit
    write_ok(&mut client, &register("n2")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_all_data() {
    let mut c = Cluster::new(3, 30).await;
    let mut client = c.client();
    for i in 0..60 {
        write_ok(&mut client, &register(&format!("n{i}"))).await;
    }
    let last = write_ok(&mut client, &upsert("web", "app:1")).await;
    c.wait_applied(last, Duration::from_secs(5)).await;
    let before = c.image(1);
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    for id in [1, 2, 3] {
        c.start(id, StartMode::Resume).await.unwrap();
    }
    c.wait_leader(Duration::from_secs(5)).await;
    for id in [1, 2, 3] {
        assert_eq!(c.image(id), before, "member {id} after restart");
    }
    let mut client = c.client();
    let (_, services): (u64, Vec<Service>) = client.read(ReadKind::Services, false).await.unwrap();
    assert_eq!(services.len(), 1);
    write_ok(&mut client, &register("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_restore_gives_identical_state_and_recover_works() {
    let mut c = Cluster::new(3, 10_000).await;
    let mut client = c.client();
    for i in 0..15 {
        write_ok(&mut client, &register(&format!("n{i}"))).await;
    }
    write_ok(&mut client, &upsert("web", "app:1")).await;
    let bytes = client.snapshot_save().await.unwrap();
    let file_path = c.dir.path().join("snap.json");
    std::fs::write(&file_path, &bytes).unwrap();
    let file = SnapshotFile::read(&file_path).unwrap();
    let (_, live): (u64, StateImage) = client.read(ReadKind::State, false).await.unwrap();
    assert_eq!(file.state, live);

    // restore into a new data dir: a new one-member cluster with the same state
    let restored_dir = c.dir.path().join("restored");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let new_id = dr::restore(&file, &restored_dir, 1, &addr).unwrap();
    assert_ne!(new_id, file.cluster_id, "a restore seeds a new cluster");
    let err = dr::restore(&file, &restored_dir, 1, &addr).unwrap_err();
    assert!(err.to_string().contains("already holds"), "{err}");
    let m = Member::start(config(1, restored_dir, &addr, 10_000), StartMode::Resume)
        .await
        .unwrap();
    let mut rc = ControllerClient::new(vec![addr.clone()]);
    let (_, restored): (u64, StateImage) = rc.read(ReadKind::State, false).await.unwrap();
    assert_eq!(restored, live);
    // it takes writes, with ids continuing
    write_ok(&mut rc, &register("after-restore")).await;
    m.stop().await;

    // recover: quorum lost for good, one survivor forced into a one-member cluster
    let survivor = 3;
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    let last = dr::recover(&c.data_dir(survivor), survivor, &c.addrs[&survivor]).unwrap();
    assert!(last.is_some());
    c.start(survivor, StartMode::Resume).await.unwrap();
    let mut sc = c.client_of(survivor);
    let (_, recovered): (u64, StateImage) = sc.read(ReadKind::State, false).await.unwrap();
    assert_eq!(recovered, live);
    let st = sc.status().await.unwrap();
    assert_eq!(st.members.len(), 1);
    write_ok(&mut sc, &register("after-recover")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_and_resumes_on_another_member() {
    use tokio_stream::StreamExt;
    let c = Cluster::new(3, 10_000).await;
    let mut client = c.client();
    write_ok(&mut client, &register("n1")).await;
    let mut w1 = c.client_of(1);
    let mut stream = w1.watch(0).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let Some(watch_event::Event::FullStateJson(full)) = first.event else {
        panic!("full state first")
    };
    let image: StateImage = serde_json::from_slice(&full).unwrap();
    assert_eq!(image.nodes.len(), 1);
    let mut seen = first.index;
    let i2 = write_ok(&mut client, &register("n2")).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(watch_event::Event::ChangesJson(ch)) = ev.event else {
        panic!("changes")
    };
    let changes: Vec<Change> = serde_json::from_slice(&ch).unwrap();
    assert!(matches!(&changes[..], [Change::Node(n)] if n.name == "n2" && n.modify_index == i2));
    seen = seen.max(ev.index);
    drop(stream);

    // resume on member 2 from where we were: only the newer change arrives
    let i3 = write_ok(&mut client, &register("n3")).await;
    c.wait_applied(i3, Duration::from_secs(5)).await;
    let mut w2 = c.client_of(2);
    let mut stream = w2.watch(seen).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev.event {
        Some(watch_event::Event::ChangesJson(ch)) => {
            let changes: Vec<Change> = serde_json::from_slice(&ch).unwrap();
            assert!(
                matches!(&changes[..], [Change::Node(n)] if n.name == "n3"),
                "{changes:?}"
            );
        }
        // member 2 may hold fewer changes (it started later): then a full state
        Some(watch_event::Event::FullStateJson(full)) => {
            let image: StateImage = serde_json::from_slice(&full).unwrap();
            assert_eq!(image.nodes.len(), 3);
        }
        None => panic!("empty event"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_refused() {
    let mut c = Cluster::new(1, 10_000).await;
    let mut client = c.client();
    // removing the last voter
    let e = client.remove_member(1).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("last voter"), "{e}");
    let e = client.remove_member(9).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");

    // joining twice: id 1 is already a voter
    let e = client
        .add_member(1, &c.addrs[&1].clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}");
    c.start(2, StartMode::Join(c.addrs[&1].clone()))
        .await
        .unwrap();
    let other_dir = c.dir.path().join("other-m2");
    let e = Member::start(
        config(2, other_dir, "127.0.0.1:0", 10_000),
        StartMode::Join(c.addrs[&1].clone()),
    )
    .await
    .err()
    .expect("joining with an id already in the cluster fails");
    assert!(e.to_string().contains("already a voter"), "{e}");

    // a data dir of another cluster cannot join this one
    let mut other = Cluster::new(1, 10_000).await;
    let foreign = other.data_dir(1);
    other.stop(1).await;
    let e = Member::start(
        config(7, foreign, "127.0.0.1:0", 10_000),
        StartMode::Join(c.addrs[&1].clone()),
    )
    .await
    .err()
    .expect("foreign data dir refused");
    assert!(e.to_string().contains("belongs to cluster"), "{e}");

    // a data dir never initialized cannot just resume
    let e = Member::start(
        config(8, c.dir.path().join("fresh"), "127.0.0.1:0", 10_000),
        StartMode::Resume,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(e, MemberError::Uninitialized(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_without_quorum_is_never_acknowledged() {
    let mut c = Cluster::new(3, 10_000).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let others: Vec<u64> = c.addrs.keys().copied().filter(|id| *id != leader).collect();
    for id in &others {
        c.stop(*id).await;
    }
    let mut lc = c.client_of(leader);
    lc.retry_for = Duration::from_secs(1);
    let e = lc.write(&register("lonely")).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            Some(Code::DeadlineExceeded) | Some(Code::Unavailable)
        ) || e.to_string().contains("no controller"),
        "{e}"
    );
    // not applied on the lone member
    assert!(c.image(leader).nodes.iter().all(|n| n.name != "lonely"));
    // linearizable reads fail too; stale reads still answer
    assert!(lc.read::<Vec<Node>>(ReadKind::Nodes, false).await.is_err());
    assert!(lc.read::<Vec<Node>>(ReadKind::Nodes, true).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_data_dir_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m1");
    {
        let m = Member::start(
            config(1, data.clone(), "127.0.0.1:0", 10_000),
            StartMode::Bootstrap,
        )
        .await
        .unwrap();
        let mut c = ControllerClient::new(vec![m.addr.clone()]);
        write_ok(&mut c, &register("n1")).await;
        m.stop().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // overwrite every file of the sled dir with garbage
    for e in walk(&data) {
        let len = std::fs::metadata(&e).unwrap().len() as usize;
        std::fs::write(&e, vec![0xA5u8; len.max(64)]).unwrap();
    }
    let r = Member::start(
        config(1, data.clone(), "127.0.0.1:0", 10_000),
        StartMode::Resume,
    )
    .await;
    let e = r.err().expect("a corrupted data dir must not start");
    assert!(
        e.to_string().contains(&data.display().to_string()),
        "error names the dir: {e}"
    );
}

fn walk(p: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_to_the_chosen_voter() {
    let c = Cluster::new(3, 10_000).await;
    let mut client = c.client();
    let idx = write_ok(&mut client, &register("before")).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    // twice, so the second transfer starts from a leader made by the first
    let mut from = leader;
    for _ in 0..2 {
        let target = *c.addrs.keys().find(|id| **id != from).unwrap();
        let r = client.transfer_leader(target).await.unwrap();
        assert_eq!(r.leader, target, "{r:?}");
        assert_eq!(c.wait_leader(Duration::from_secs(5)).await, target);
        let st = client.status().await.unwrap();
        assert_eq!(st.leader, Some(target), "{st:?}");
        assert!(st.committed.unwrap() >= idx, "{st:?}");
        from = target;
    }
    // the cluster still commits, and a transfer to the leader itself is a no-op
    let idx2 = write_ok(&mut client, &register("after")).await;
    c.wait_applied(idx2, Duration::from_secs(5)).await;
    assert_eq!(c.image(from).nodes.len(), 2);
    let r = client.transfer_leader(from).await.unwrap();
    assert_eq!(r.leader, from);
    // unknown member: a clear error
    let e = client.transfer_leader(42).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    assert!(e.to_string().contains("42"), "{e}");
}

/// openraft 0.9 gives every AppendEntries RPC one heartbeat interval to finish, and one
/// entry cannot be split: the interval must exceed the time to ship and persist the biggest
/// single entry. A 1,000-placement plan is ~55 KB of JSON; in this debug build, with three
/// members sharing the test's two runtime threads on a loaded machine, one such RPC was seen
/// taking 50-110 ms, so this test uses a 100 ms heartbeat (election 300-600 ms, the usual
/// 3× margin). Release members on their own processes ship it in a few ms.
fn large_entry_timings() -> Option<RaftTimings> {
    Some(RaftTimings {
        heartbeat_ms: 100,
        election_min_ms: 300,
        election_max_ms: 600,
        snapshot_every: 100,
    })
}

/// Big plans (1,000 placements each, ~150 KB of JSON) from 8 concurrent writers, with
/// snapshots taken meanwhile, must not cost the leader its leadership: each AppendEntries
/// has to finish within a heartbeat interval, and snapshot building must not starve Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_plans_from_several_writers_keep_the_leader() {
    const WRITERS: u64 = 8;
    const PLANS_PER_WRITER: u64 = 2;
    const REPLICAS: u64 = 1000;
    let c = Cluster::new_with(3, 100, large_entry_timings()).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let term = c.members[&leader].raft.metrics().borrow().current_term;
    let mut client = c.client_of(leader);
    let big = Resources {
        cpu_millis: 64_000,
        memory_bytes: 256 << 30,
        pids: 1 << 20,
    };
    let mut nodes = Vec::new();
    for i in 0..100 {
        let cmd = Command::RegisterNode {
            name: format!("big-{i:03}"),
            address: format!("10.0.0.{i}:7000"),
            labels: BTreeMap::new(),
            capacity: big,
            allocatable: big,
            api: None,
        };
        match client.write(&cmd).await.unwrap().1.unwrap() {
            Reply::NodeRegistered { id } => nodes.push(id),
            r => panic!("register: {r:?}"),
        }
    }
    let nodes = std::sync::Arc::new(nodes);

    // Every member's view of (term, leader), sampled until the writers are done.
    let watched: Vec<_> = c.members.values().map(|m| (m.id, m.raft.clone())).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (id, raft) in &watched {
                    let m = raft.metrics().borrow().clone();
                    if m.current_term != term || m.current_leader.is_some_and(|l| l != leader) {
                        seen.push((*id, m.current_term, m.current_leader));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };

    let addr = c.addrs[&leader].clone();
    let writers = (0..WRITERS).map(|w| {
        let (addr, nodes) = (addr.clone(), nodes.clone());
        tokio::spawn(async move {
            let mut client = ControllerClient::new(vec![addr]);
            let mut last = 0;
            let mut acked = Vec::new();
            for p in 0..PLANS_PER_WRITER {
                let name = format!("svc-{w}-{p}");
                let upsert = Command::UpsertService {
                    name: name.clone(),
                    spec: ServiceSpec {
                        image: format!("registry.local/{name}:1"),
                        resources: Resources {
                            cpu_millis: 10,
                            memory_bytes: 16 << 20,
                            pids: 16,
                        },
                        replicas: REPLICAS as u32,
                        ..Default::default()
                    },
                    expected_index: None,
                };
                let version = match client.write(&upsert).await.unwrap().1.unwrap() {
                    Reply::ServiceUpserted { version } => version,
                    r => panic!("upsert: {r:?}"),
                };
                let placements = (0..REPLICAS)
                    .map(|r| Placement {
                        service: name.clone(),
                        version,
                        node: nodes[((w * 7919 + p * 131 + r) % nodes.len() as u64) as usize],
                        ports: vec![],
                    })
                    .collect();
                let plan = Command::ApplyPlan {
                    placements,
                    stops: vec![],
                };
                let (index, r) = client.write(&plan).await.expect("plan written");
                match r.expect("plan accepted") {
                    Reply::PlanApplied { allocations } => acked.extend(allocations),
                    r => panic!("plan: {r:?}"),
                }
                last = index;
            }
            (last, acked)
        })
    });
    let all = futures::future::join_all(writers);
    let results = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("the plans were not committed within 120 s");
    let mut last = 0;
    let mut acked = Vec::new();
    for r in results {
        let (l, a) = r.unwrap();
        last = last.max(l);
        acked.extend(a);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changed = sampler.await.unwrap();
    assert!(
        changed.is_empty(),
        "leadership changed while committing large plans (member, term, leader): {:?}",
        &changed[..changed.len().min(10)]
    );
    c.wait_applied(last, Duration::from_secs(30)).await;
    assert_eq!(acked.len() as u64, WRITERS * PLANS_PER_WRITER * REPLICAS);
    // (The leader loop may place replicas of these services too: count only the plans'.)
    for id in c.members.keys() {
        let have: std::collections::HashSet<AllocId> =
            c.image(*id).allocations.iter().map(|a| a.id).collect();
        let missing = acked.iter().filter(|a| !have.contains(a)).count();
        assert_eq!(
            missing, 0,
            "member {id} lacks {missing} acknowledged allocations"
        );
    }
}

/// Members started together (as systemd starts a fresh cluster's units) all join: a
/// join that meets another membership change in progress waits and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_at_once_all_become_voters() {
    let mut c = Cluster::new(1, 10_000).await;
    let seed = c.addrs[&1].clone();
    let cfgs: Vec<MemberConfig> = (2..=4)
        .map(|id| config(id, c.data_dir(id), "127.0.0.1:0", 10_000))
        .collect();
    let mut starts = Vec::new();
    for cfg in cfgs {
        let seed = seed.clone();
        starts.push(tokio::spawn(async move {
            Member::start(cfg, StartMode::Join(seed)).await
        }));
    }
    for s in starts {
        let m = s
            .await
            .unwrap()
            .expect("a member joining while others join");
        c.addrs.insert(m.id, m.addr.clone());
        c.members.insert(m.id, m);
    }
    let st = c.client().status().await.unwrap();
    assert_eq!(st.members.iter().filter(|m| m.voter).count(), 4, "{st:?}");
}

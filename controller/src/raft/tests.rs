use super::*;
use openraft::testing::{StoreBuilder, Suite};

struct SledBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, SledStateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, SledLogStore, SledStateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = ControllerDb::open(dir.path()).expect("open sled");
        let sm = SledStateMachine::open(db.clone()).expect("open state machine");
        Ok((dir, SledLogStore::new(db), sm))
    }
}

#[test]
fn sled_stores_pass_openraft_conformance_suite() {
    Suite::test_all(SledBuilder).expect("openraft storage suite");
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, MemStateMachine, ()> for MemBuilder {
    async fn build(&self) -> Result<((), MemLogStore, MemStateMachine), StorageError> {
        let (log, sm) = MemDisk::new().open();
        Ok(((), log, sm))
    }
}

#[test]
fn memory_stores_pass_openraft_conformance_suite() {
    Suite::test_all(MemBuilder).expect("openraft storage suite");
}

#[tokio::test]
async fn a_memory_disk_reopens_with_its_log_vote_and_applied_state() {
    use crate::state::{Command, Resources};
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
    let disk = MemDisk::new();
    let (mut log, mut sm) = disk.open();
    // Entries 0..=10 of term 1 and the vote (1, 0), through openraft's own append callback.
    Suite::<TypeConfig, MemLogStore, MemStateMachine, MemBuilder, ()>::feed_10_logs_vote_self(
        &mut log,
    )
    .await
    .unwrap();
    let r = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        pids: 100,
    };
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), 1),
        payload: EntryPayload::Normal(Command::RegisterNode {
            name: "n1".into(),
            address: "10.0.0.1".into(),
            labels: Default::default(),
            capacity: r,
            allocatable: r,
            api: None,
        }),
    };
    sm.apply([entry.clone()]).await.unwrap();
    let before = sm.handle();
    drop((log, sm));

    let (mut log, mut sm) = disk.open();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 0)));
    let entries = log.try_get_log_entries(0..=10).await.unwrap();
    assert_eq!(entries.len(), 11);
    assert_eq!(entries[10].log_id.index, 10);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(entry.log_id));
    let after = sm.handle();
    assert!(
        !std::sync::Arc::ptr_eq(&before, &after),
        "a new incarnation"
    );
    assert_eq!(
        after.read().state.to_image(),
        before.read().state.to_image()
    );
    assert_eq!(after.read().state.nodes().count(), 1);
}

#[test]
fn append_entries_over_the_byte_cap_asks_for_fewer_entries() {
    use network::entries_hint;
    assert_eq!(entries_hint(300, 1000, 1 << 20), None, "small: all fit");
    assert_eq!(
        entries_hint(1, 50 << 20, 1 << 20),
        None,
        "one big entry goes alone"
    );
    // 300 plan entries of ~150 KB: about 6 fit in 1 MiB.
    assert_eq!(entries_hint(300, 300 * 150_000, 1 << 20), Some(6));
    // Always fewer than sent (progress), never zero.
    assert_eq!(entries_hint(2, (1 << 20) + 1, 1 << 20), Some(1));
    assert_eq!(entries_hint(10, 1 << 30, 1 << 20), Some(1));
}

#[test]
fn append_budget_halves_on_timeouts_and_grows_back_on_fast_rpcs() {
    use network::{AppendBudget, MAX_APPEND_BYTES, MIN_APPEND_BYTES};
    use std::time::Duration;
    let ttl = Duration::from_millis(50);
    let mut b = AppendBudget::default();
    assert_eq!(b.bytes(), MAX_APPEND_BYTES);
    assert_eq!(b.hint(17, 380_000), None, "fits the initial budget");
    b.timed_out(380_000);
    assert_eq!(b.bytes(), 190_000);
    assert_eq!(b.hint(17, 380_000), Some(8), "half the entries next");
    for _ in 0..20 {
        b.timed_out(b.bytes());
    }
    assert_eq!(b.bytes(), MIN_APPEND_BYTES, "never below the floor");
    b.finished(Duration::from_millis(30), ttl);
    assert_eq!(
        b.bytes(),
        MIN_APPEND_BYTES,
        "a slow success does not grow it"
    );
    for _ in 0..20 {
        b.finished(Duration::from_millis(2), ttl);
    }
    assert_eq!(
        b.bytes(),
        MAX_APPEND_BYTES,
        "fast successes grow it back to the cap"
    );
}

fn register(index: u64, name: &str) -> Entry {
    use crate::state::{Command, Resources};
    use openraft::{CommittedLeaderId, EntryPayload};
    let r = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        pids: 100,
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Command::RegisterNode {
            name: name.into(),
            address: "10.0.0.1".into(),
            labels: Default::default(),
            capacity: r,
            allocatable: r,
            api: None,
        }),
    }
}

/// Node names in the `nodes` tree of a data dir.
fn nodes_in_trees(db: &ControllerDb) -> Vec<String> {
    let mut names: Vec<String> = db
        .nodes
        .iter()
        .map(|kv| {
            let (_, v) = kv.unwrap();
            serde_json::from_slice::<crate::state::Node>(&v)
                .unwrap()
                .name
        })
        .collect();
    names.sort();
    names
}

fn last_applied_in_trees(db: &ControllerDb) -> Option<u64> {
    let v = db.sm_meta.get(b"last_applied").unwrap()?;
    serde_json::from_slice::<Option<LogId>>(&v)
        .unwrap()
        .map(|l| l.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trees_catch_up_before_a_snapshot_is_built_and_when_the_state_machine_stops() {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    let db = ControllerDb::open(dir.path()).unwrap();
    let mut sm = SledStateMachine::open(db.clone()).unwrap();
    sm.persister().hold(true);
    sm.apply([register(1, "n1")]).await.unwrap();
    sm.apply([register(2, "n2")]).await.unwrap();
    assert_eq!(sm.handle().read().state.nodes().count(), 2, "applied");
    assert!(nodes_in_trees(&db).is_empty(), "written behind the apply");
    assert_eq!(last_applied_in_trees(&db), None);

    // A built snapshot lets openraft purge the log up to it: it waits for the trees.
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!build.is_finished(), "the snapshot waits for the trees");
    sm.persister().hold(false);
    let snap = build.await.unwrap().unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));
    assert_eq!(nodes_in_trees(&db), ["n1", "n2"]);
    assert_eq!(last_applied_in_trees(&db), Some(2));

    // Stopping writes what is queued; reopening finds it.
    sm.persister().hold(true);
    sm.apply([register(3, "n3")]).await.unwrap();
    drop(sm);
    assert_eq!(nodes_in_trees(&db), ["n1", "n2", "n3"]);
    assert_eq!(last_applied_in_trees(&db), Some(3));
    let mut sm = SledStateMachine::open(db.clone()).unwrap();
    assert_eq!(
        sm.applied_state().await.unwrap().0.map(|l| l.index),
        Some(3)
    );
    assert_eq!(sm.handle().read().state.nodes().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_queued_is_written_over_an_installed_snapshot() {
    use openraft::storage::RaftStateMachine;
    // The snapshot: a state with only node "x", at index 5.
    let other = tempfile::tempdir().unwrap();
    let mut source = SledStateMachine::open(ControllerDb::open(other.path()).unwrap()).unwrap();
    source.apply([register(5, "x")]).await.unwrap();
    let snap = source.get_current_snapshot().await.unwrap().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = ControllerDb::open(dir.path()).unwrap();
    let mut sm = SledStateMachine::open(db.clone()).unwrap();
    sm.persister().hold(true);
    sm.apply([register(1, "n1"), register(2, "n2")])
        .await
        .unwrap();
    // Still queued when the install begins: they must not land over the image.
    let meta = snap.meta.clone();
    let persister = sm.persister();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        persister.hold(false);
    });
    sm.install_snapshot(&meta, snap.snapshot).await.unwrap();
    release.join().unwrap();
    assert_eq!(nodes_in_trees(&db), ["x"]);
    assert_eq!(last_applied_in_trees(&db), Some(5));
    sm.apply([register(6, "n6")]).await.unwrap();
    drop(sm);
    assert_eq!(nodes_in_trees(&db), ["n6", "x"]);
    assert_eq!(last_applied_in_trees(&db), Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_counts_as_closed_once_every_handle_let_go() {
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir().unwrap();
    let db = ControllerDb::open(dir.path()).unwrap();
    let closed = db.closed();
    // the state machine and its persister thread hold clones
    let mut sm = SledStateMachine::open(db.clone()).unwrap();
    sm.apply([register(1, "n1")]).await.unwrap();
    let log = SledLogStore::new(db);
    assert!(!closed.is_closed());
    drop(sm);
    assert!(
        !closed.is_closed(),
        "the log store still holds the database"
    );
    drop(log);
    assert!(closed.wait(std::time::Duration::from_secs(10)).await);
    // sled let go of its files: the dir reopens, with what the state machine wrote
    let db = ControllerDb::open(dir.path()).unwrap();
    assert_eq!(nodes_in_trees(&db), vec!["n1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_small_applies_is_written_in_few_transactions_and_sync_still_waits() {
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir().unwrap();
    let db = ControllerDb::open(dir.path()).unwrap();
    let mut sm = SledStateMachine::open(db.clone()).unwrap();
    sm.apply([register(1, "n1")]).await.unwrap();
    sm.persister().sync().unwrap();
    let before = sm.persister().transactions();
    assert_eq!(before, 1, "the first apply is written at once");
    // 50 applies, 1 ms or more apart: the flusher could write each alone; it gathers them.
    for i in 2..=51u64 {
        sm.apply([register(i, &format!("n{i}"))]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    sm.persister().sync().unwrap();
    let written = sm.persister().transactions() - before;
    assert!(
        (1..25).contains(&written),
        "50 applies took {written} transactions"
    );
    // Whatever was gathered is in the trees once sync returns.
    assert_eq!(nodes_in_trees(&db).len(), 51);
    assert_eq!(last_applied_in_trees(&db), Some(51));
}

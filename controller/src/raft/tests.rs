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

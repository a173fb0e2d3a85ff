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

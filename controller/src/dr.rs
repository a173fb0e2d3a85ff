//! Disaster recovery: the snapshot file (`snapshot save`), seeding a new cluster from it
//! (`snapshot restore`), and forcing a one-member cluster from a survivor's data dir
//! (`recover`) when quorum is lost for good.
//!
//! Both seeds write the state into the data dir as applied at the snapshot's log id, with a
//! membership of one voter (the given id and address), a vote at the snapshot's term (so the
//! next election moves to a later term) and an empty log. The member then elects itself.

use crate::raft::db::{new_cluster_id, ControllerDb, DbError};
use crate::raft::state_machine::{save_snapshot, write_image};
use crate::raft::{BasicNode, Entry, LogId, NodeId, SnapshotMeta, StoredMembership, Vote};
use crate::state::{State, StateImage};
use openraft::{EntryPayload, Membership};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const SNAPSHOT_FORMAT: &str = "gantry-controller-snapshot/1";

#[derive(Debug, thiserror::Error)]
pub enum DrError {
    #[error("snapshot file {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {path} already holds controller state: restore into an empty data dir")]
    NotEmpty { path: PathBuf },
    #[error("data dir {path} holds no controller state to recover from")]
    NothingToRecover { path: PathBuf },
    #[error("encoding the snapshot: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What `snapshot save` writes: the state at a log id, and the cluster it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub format: String,
    pub cluster_id: String,
    pub meta: SnapshotMeta,
    pub state: StateImage,
}

impl SnapshotFile {
    pub fn new(cluster_id: &str, meta: SnapshotMeta, data: &[u8]) -> Result<Self, DrError> {
        let state = serde_json::from_slice(data).map_err(DrError::Encode)?;
        Ok(SnapshotFile {
            format: SNAPSHOT_FORMAT.into(),
            cluster_id: cluster_id.into(),
            meta,
            state,
        })
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshot serializes")
    }
    pub fn read(path: &Path) -> Result<Self, DrError> {
        let bytes = std::fs::read(path).map_err(|source| DrError::Io {
            path: path.into(),
            source,
        })?;
        let f: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| DrError::BadFile {
            path: path.into(),
            reason: format!("not a controller snapshot: {e}"),
        })?;
        if f.format != SNAPSHOT_FORMAT {
            return Err(DrError::BadFile {
                path: path.into(),
                reason: format!("format {:?}, expected {SNAPSHOT_FORMAT:?}", f.format),
            });
        }
        Ok(f)
    }
    /// Write atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> Result<(), DrError> {
        let tmp = path.with_extension("tmp");
        let io = |source| DrError::Io {
            path: path.into(),
            source,
        };
        std::fs::write(&tmp, self.to_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn single_voter(id: NodeId, addr: &str, log_id: Option<LogId>) -> StoredMembership {
    let nodes: BTreeMap<NodeId, BasicNode> = [(id, BasicNode::new(addr))].into();
    let voters: BTreeSet<NodeId> = [id].into();
    StoredMembership::new(log_id, Membership::new(vec![voters], nodes))
}

/// Make `db` a one-member cluster holding `image` as applied at `last`.
fn seed(
    db: &ControllerDb,
    image: &StateImage,
    last: Option<LogId>,
    id: NodeId,
    addr: &str,
) -> Result<(), DrError> {
    let membership = single_voter(id, addr, last);
    let meta = SnapshotMeta {
        last_log_id: last,
        last_membership: membership.clone(),
        snapshot_id: format!("seed-{}", last.map_or(0, |l| l.index)),
    };
    let data = serde_json::to_vec(image).map_err(DrError::Encode)?;
    save_snapshot(db, &meta, &data)?;
    write_image(db, image, last, &membership)?;
    let werr = |what| {
        let path = db.path.clone();
        move |source| DbError::Write { path, what, source }
    };
    db.log.clear().map_err(werr("log"))?;
    let term = last.map_or(0, |l| l.leader_id.term);
    let vote = Vote::new(term, id);
    let mut b = sled::Batch::default();
    b.insert(b"vote", serde_json::to_vec(&vote).map_err(DrError::Encode)?);
    b.insert(
        b"last_purged",
        serde_json::to_vec(&last).map_err(DrError::Encode)?,
    );
    b.remove(b"committed");
    db.raft_meta.apply_batch(b).map_err(werr("raft_meta"))?;
    db.db.flush().map_err(werr("flush"))?;
    Ok(())
}

/// `snapshot restore`: seed an empty data dir (a new cluster, with a new cluster id).
pub fn restore(
    file: &SnapshotFile,
    data_dir: &Path,
    id: NodeId,
    addr: &str,
) -> Result<String, DrError> {
    let db = ControllerDb::open(data_dir)?;
    if db.has_raft_state() || db.cluster_id()?.is_some() {
        return Err(DrError::NotEmpty {
            path: data_dir.into(),
        });
    }
    let cluster_id = new_cluster_id();
    seed(&db, &file.state, file.meta.last_log_id, id, addr)?;
    db.claim_cluster(&cluster_id)?;
    Ok(cluster_id)
}

/// `recover`: turn a survivor's data dir into a one-member cluster. Every entry in its log
/// is kept (like etcd's --force-new-cluster), committed or not: the survivor's view wins.
/// Returns the last log id kept.
pub fn recover(data_dir: &Path, id: NodeId, addr: &str) -> Result<Option<LogId>, DrError> {
    let db = ControllerDb::open(data_dir)?;
    if !db.has_raft_state() {
        return Err(DrError::NothingToRecover {
            path: data_dir.into(),
        });
    }
    let sm = crate::raft::SledStateMachine::open(db.clone())?;
    let handle = sm.handle();
    let (mut state, mut last): (State, Option<LogId>) = {
        let a = handle.read();
        (a.state.clone(), a.last_applied)
    };
    drop(sm);
    let from = last.map_or(0, |l| l.index + 1);
    for kv in db.log.range(from.to_be_bytes()..) {
        let (_, v) = kv.map_err(|e| DbError::Corrupt {
            path: data_dir.into(),
            what: "log".into(),
            reason: e.to_string(),
        })?;
        let entry: Entry = serde_json::from_slice(&v).map_err(|e| DbError::Corrupt {
            path: data_dir.into(),
            what: "log entry".into(),
            reason: e.to_string(),
        })?;
        if let EntryPayload::Normal(cmd) = &entry.payload {
            let _ = state.apply(entry.log_id.index, cmd);
        }
        last = Some(entry.log_id);
    }
    seed(&db, &state.to_image(), last, id, addr)?;
    Ok(last)
}

//! In-memory stores for the simulator's deterministic runs, in the style of openraft's
//! memstore: [`MemLogStore`] (log, vote, committed, last purged in a `BTreeMap` behind a
//! mutex) and [`MemStateMachine`], which applies through the very code the sled state
//! machine uses ([`apply_entries`]: `State::apply`, the change log, watchers) and builds
//! and installs the same JSON snapshots; only the sled persistence is left out. Nothing
//! here spawns a task or a thread, so a current-thread tokio runtime drives it all.
//!
//! A [`MemDisk`] is what survives a member's crash: the log store's data, and the state
//! machine's last applied state (every `apply` is atomic, as the sled transaction is). A
//! restarted member reopens its disk: the state is rebuilt from its image, as from sled's
//! trees. Production never uses these stores (the controller runs `SledLogStore` +
//! `SledStateMachine`); openraft's `Suite::test_all` runs against both.

use super::state_machine::{
    apply_entries, built_snapshot, capture, Applied, StateHandle, CHANGE_LOG_CAPACITY,
};
use super::Vote;
use super::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{Response, State, StateImage};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::StorageIOError;
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, RaftSnapshotBuilder};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
struct LogData {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

/// One member's durable data in memory: it outlives the member's stores (a crash drops
/// them) and is reopened by the next ones.
#[derive(Clone, Default)]
pub struct MemDisk {
    log: Arc<Mutex<LogData>>,
    /// The state machine of the last incarnation (its state is the persisted one).
    state: Arc<Mutex<Option<Arc<StateHandle>>>>,
}

impl MemDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// Open the stores on this disk (a fresh member, or a restart after a crash).
    pub fn open(&self) -> (MemLogStore, MemStateMachine) {
        let applied = match lock(&self.state).as_ref() {
            Some(h) => {
                let a = h.read();
                Applied {
                    state: State::from_image(a.state.to_image()),
                    last_applied: a.last_applied,
                    membership: a.membership.clone(),
                }
            }
            None => Applied::default(),
        };
        let handle = StateHandle::new(applied, CHANGE_LOG_CAPACITY);
        *lock(&self.state) = Some(handle.clone());
        (
            MemLogStore {
                data: self.log.clone(),
            },
            MemStateMachine { handle },
        )
    }
}

/// The Raft log, vote and committed index in memory: durable as soon as written.
#[derive(Clone)]
pub struct MemLogStore {
    data: Arc<Mutex<LogData>>,
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.data)
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = MemLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let d = lock(&self.data);
        let last = d.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: d.last_purged,
            last_log_id: last.or(d.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        lock(&self.data).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.data).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        lock(&self.data).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.data).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        {
            let mut d = lock(&self.data);
            for e in entries {
                d.entries.insert(e.log_id.index, e);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.data).entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut d = lock(&self.data);
        d.last_purged = Some(log_id);
        d.entries = d.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}

/// The state machine in memory: the sled state machine's apply, without sled.
pub struct MemStateMachine {
    handle: Arc<StateHandle>,
}

impl MemStateMachine {
    pub fn handle(&self) -> Arc<StateHandle> {
        self.handle.clone()
    }
}

pub struct MemSnapshotBuilder {
    handle: Arc<StateHandle>,
}

impl RaftSnapshotBuilder<TypeConfig> for MemSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // As the sled one: openraft keeps only the meta; `get_current_snapshot` serializes.
        Ok(built_snapshot(&self.handle))
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = MemSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.handle.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        apply_entries(&self.handle, entries.into_iter().collect(), |_, _| Ok(()))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MemSnapshotBuilder {
            handle: self.handle.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let image: StateImage = serde_json::from_slice(snapshot.get_ref()).map_err(|e| {
            StorageError::from(StorageIOError::new(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                AnyError::new(&e),
            ))
        })?;
        self.handle.installed(meta, State::from_image(image));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        if self.handle.read().last_applied.is_none() {
            return Ok(None);
        }
        let (meta, data) = capture(&self.handle);
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

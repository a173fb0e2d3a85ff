//! The state replicated with openraft 0.9 over sled and tonic.
//!
//! Vocabulary: [`TypeConfig`] binds openraft to our types (log payload = [`Command`],
//! response = [`Response`], node id = `u64`, node = [`BasicNode`] with the member's
//! address); [`SledLogStore`] keeps the Raft log, vote and committed index (durable before
//! acknowledged); [`SledStateMachine`] applies committed commands to the in-memory
//! [`State`](crate::state::State) and its [`persist::Persister`] writes every changed
//! object to its kind's sled tree behind the apply path;
//! a *snapshot* is the serialized state at an applied log id, streamed to lagging members in
//! chunks; the *cluster id* names the cluster a data dir belongs to. [`GantryRuntime`] is
//! openraft's tokio runtime with an election-timeout generator a simulation can seed;
//! [`MemLogStore`] + [`MemStateMachine`] on a [`MemDisk`] are the simulator's in-memory
//! stores (the same apply path, no sled); [`failover`] campaigns as soon as a silent
//! leader's lease has lapsed (fed by [`RaftService`] through a [`LeaderWatch`]).

// openraft's StorageError (the trait's error type, not ours to shrink) is 224 bytes.
#![allow(clippy::result_large_err)]

pub mod db;
pub mod failover;
pub mod log_store;
pub mod mem;
pub mod network;
pub mod persist;
pub mod runtime;
pub mod service;
pub mod state_machine;
#[cfg(test)]
mod tests;

pub use db::{ControllerDb, DbClosed, DbError};
pub use failover::LeaderWatch;
pub use log_store::SledLogStore;
pub use mem::{MemDisk, MemLogStore, MemStateMachine};
pub use network::{NetworkFactory, PeerNetwork};
pub use runtime::{seed_thread_rng, GantryRuntime};
pub use service::RaftService;
pub use state_machine::{ChangeLog, SledStateMachine, StateHandle};

use crate::state::{Command, Response};
pub use openraft::BasicNode;
use std::io::Cursor;

openraft::declare_raft_types!(
    /// openraft's type configuration for gantry's controller.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = GantryRuntime,
);

pub type NodeId = u64;
pub type GantryRaft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// A few entries of small commands (`Command::is_small`): cheap enough to encode, write and
/// apply on the runtime's thread that asks, where a hand-off to the blocking pool and back
/// would cost more than the work. Anything bigger (plans) goes to the blocking pool, so
/// that heartbeats and election timers never queue behind it.
pub(crate) fn all_small(entries: &[Entry]) -> bool {
    entries.len() <= 8
        && entries.iter().all(|e| match &e.payload {
            openraft::EntryPayload::Normal(cmd) => cmd.is_small(),
            _ => true,
        })
}

/// Timings of a controller member's Raft. Tests use short ones.
#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log before it) after this many applied entries.
    pub snapshot_every: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 50,
            election_min_ms: 150,
            election_max_ms: 300,
            snapshot_every: 10_000,
        }
    }
}

impl RaftTimings {
    pub fn config(&self, cluster_name: &str) -> openraft::Config {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            snapshot_max_chunk_size: 1 << 20,
            // Entries per AppendEntries: a plan entry can be ~100 KB, and the raft service
            // accepts messages up to 256 MiB.
            max_payload_entries: 300,
            install_snapshot_timeout: 2000,
            ..Default::default()
        }
    }
}

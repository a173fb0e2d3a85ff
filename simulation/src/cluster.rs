//! [`SimCluster`]: three (or more) real controller members in one process, connected by the
//! in-process [`Router`], on one of two stores ([`Store`]): the controller's
//! [`SledLogStore`] + [`SledStateMachine`] on their own sled data dirs under one temp dir
//! (the real, durable store), or the in-memory [`MemLogStore`] + [`MemStateMachine`]
//! (the same apply code without sled: no threads, no file I/O, what a deterministic run
//! needs). A member can crash (Raft shut down, handles dropped, its data dir or
//! [`MemDisk`] kept) and restart from that disk state. Optionally every member runs the
//! controller's real leader loop ([`gantry_controller::leader::run`]), which evaluates and
//! commits plans while it leads. Time is tokio's: virtual on a paused runtime.

use crate::net::Router;
use gantry_controller::leader::{self, LeaderConfig, LeaderShared};
use gantry_controller::raft::{
    BasicNode, ControllerDb, GantryRaft, MemDisk, NodeId, RaftTimings, SledLogStore,
    SledStateMachine, StateHandle,
};
use gantry_controller::state::{Command, Response};
use openraft::error::{ClientWriteError, RaftError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("creating the temp dir for the members' data: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("member {id}: opening its data dir {path}: {source}")]
    Open {
        id: NodeId,
        path: PathBuf,
        #[source]
        source: gantry_controller::raft::DbError,
    },
    #[error("member {id}: starting Raft: {reason}")]
    Raft { id: NodeId, reason: String },
    #[error("member {id} is not running")]
    NotRunning { id: NodeId },
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("writing {verb}: {reason}")]
    Write { verb: &'static str, reason: String },
}

/// One running member.
pub struct Member {
    pub id: NodeId,
    pub raft: GantryRaft,
    pub handle: Arc<StateHandle>,
    pub shared: Arc<LeaderShared>,
    leader_loop: Option<JoinHandle<()>>,
}

/// How the cluster is started.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub members: u64,
    pub timings: RaftTimings,
    /// Run the controller's leader loop on every member (chaos); the scale driver plays
    /// the leader's role itself to time each evaluation.
    pub leader_loop: Option<LeaderConfig>,
    /// Seed of the network's fault decisions.
    pub seed: u64,
    pub store: Store,
}

/// Where the members keep their Raft log and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Store {
    /// The controller's sled stores on disk (real file I/O and sled's own threads).
    #[default]
    Sled,
    /// In-memory stores with the same apply code (deterministic runs).
    Memory,
}

impl Store {
    /// What the members run on, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Store::Sled => "sled on a temp dir per member (SledLogStore + SledStateMachine)",
            Store::Memory => {
                "in memory per member (MemLogStore + MemStateMachine, the same apply code)"
            }
        }
    }
}

pub struct SimCluster {
    pub config: ClusterConfig,
    pub router: Router,
    dir: tempfile::TempDir,
    cluster_id: String,
    members: Mutex<BTreeMap<NodeId, Member>>,
    /// The members' disks with [`Store::Memory`].
    disks: Mutex<BTreeMap<NodeId, MemDisk>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimCluster {
    /// Start every member and initialize the cluster with all of them as voters.
    pub async fn start(config: ClusterConfig) -> Result<Arc<SimCluster>, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("gantry-sim-")
            .tempdir()
            .map_err(ClusterError::TempDir)?;
        let cluster = Arc::new(SimCluster {
            router: Router::new(config.seed),
            cluster_id: format!("sim-{}", config.seed),
            config,
            dir,
            members: Mutex::new(BTreeMap::new()),
            disks: Mutex::new(BTreeMap::new()),
        });
        for id in 1..=cluster.config.members {
            cluster.restart(id).await?;
        }
        let voters: BTreeMap<NodeId, BasicNode> = (1..=cluster.config.members)
            .map(|id| (id, BasicNode::new(format!("sim://{id}"))))
            .collect();
        let first = cluster.raft(1).ok_or(ClusterError::NotRunning { id: 1 })?;
        first
            .initialize(voters)
            .await
            .map_err(|e| ClusterError::Raft {
                id: 1,
                reason: e.to_string(),
            })?;
        Ok(cluster)
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("member-{id}"))
    }

    /// Start member `id` from its data dir (new or left by a crash). No-op when running.
    pub async fn restart(&self, id: NodeId) -> Result<(), ClusterError> {
        if lock(&self.members).contains_key(&id) {
            return Ok(());
        }
        let raft_err = |reason: String| ClusterError::Raft { id, reason };
        let config = Arc::new(
            self.config
                .timings
                .config(&self.cluster_id)
                .validate()
                .map_err(|e| raft_err(e.to_string()))?,
        );
        let network = self.router.network_for(id);
        let (raft, handle) = match self.config.store {
            Store::Sled => {
                let path = self.data_dir(id);
                let open_err = |source| ClusterError::Open {
                    id,
                    path: path.clone(),
                    source,
                };
                let db = ControllerDb::open(&path).map_err(open_err)?;
                if db.cluster_id().map_err(open_err)?.is_none() {
                    db.claim_cluster(&self.cluster_id).map_err(open_err)?;
                }
                let sm = SledStateMachine::open(db.clone()).map_err(open_err)?;
                let handle = sm.handle();
                let log = SledLogStore::new(db);
                let raft = GantryRaft::new(id, config, network, log, sm).await;
                (raft, handle)
            }
            Store::Memory => {
                let disk = lock(&self.disks).entry(id).or_default().clone();
                let (log, sm) = disk.open();
                let handle = sm.handle();
                let raft = GantryRaft::new(id, config, network, log, sm).await;
                (raft, handle)
            }
        };
        let raft = raft.map_err(|e| raft_err(e.to_string()))?;
        let shared = Arc::new(LeaderShared::default());
        let leader_loop = self.config.leader_loop.clone().map(|cfg| {
            tokio::spawn(leader::run(
                raft.clone(),
                handle.clone(),
                shared.clone(),
                cfg,
            ))
        });
        self.router.attach(id, raft.clone());
        lock(&self.members).insert(
            id,
            Member {
                id,
                raft,
                handle,
                shared,
                leader_loop,
            },
        );
        Ok(())
    }

    /// Crash member `id`: unplug it, stop its leader loop and Raft, drop every handle on
    /// its data dir (which stays for a restart). No-op when not running.
    pub async fn crash(&self, id: NodeId) {
        let Some(m) = lock(&self.members).remove(&id) else {
            return;
        };
        self.router.detach(id);
        if let Some(l) = &m.leader_loop {
            l.abort();
        }
        let _ = m.raft.shutdown().await;
    }

    /// Crash every member (end of a run).
    pub async fn shutdown(&self) {
        for id in self.running() {
            self.crash(id).await;
        }
    }

    pub fn running(&self) -> Vec<NodeId> {
        lock(&self.members).keys().copied().collect()
    }

    pub fn raft(&self, id: NodeId) -> Option<GantryRaft> {
        lock(&self.members).get(&id).map(|m| m.raft.clone())
    }

    pub fn handle(&self, id: NodeId) -> Option<Arc<StateHandle>> {
        lock(&self.members).get(&id).map(|m| m.handle.clone())
    }

    pub fn shared(&self, id: NodeId) -> Option<Arc<LeaderShared>> {
        lock(&self.members).get(&id).map(|m| m.shared.clone())
    }

    /// The running member that believes it leads, in the highest term seen.
    pub fn leader(&self) -> Option<NodeId> {
        let members = lock(&self.members);
        members
            .values()
            .filter_map(|m| {
                let metrics = m.raft.metrics().borrow().clone();
                metrics
                    .state
                    .is_leader()
                    .then_some((metrics.current_term, m.id))
            })
            .max()
            .map(|(_, id)| id)
    }

    pub async fn wait_leader(&self, timeout: Duration) -> Result<NodeId, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader() {
                return Ok(id);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoLeader(timeout));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Commit a command through the current leader, following leader changes until
    /// `timeout`. Ok: the command was committed and applied (its response, which may be a
    /// rejection by the state). Err: unknown whether it was committed.
    pub async fn write(&self, cmd: Command, timeout: Duration) -> Result<Response, ClusterError> {
        let verb = cmd.verb();
        let deadline = Instant::now() + timeout;
        let fail = |reason: String| ClusterError::Write { verb, reason };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(format!("not committed within {timeout:?}")));
            }
            let leader = self
                .wait_leader(left)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let Some(raft) = self.raft(leader) else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, raft.client_write(cmd.clone())).await {
                Ok(Ok(r)) => return Ok(r.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(Err(e)) => {
                    // A leader that crashed or stepped down mid-write: the outcome is
                    // unknown, so do not retry blindly.
                    return Err(fail(e.to_string()));
                }
                Err(_) => return Err(fail(format!("not committed within {timeout:?}"))),
            }
        }
    }
}

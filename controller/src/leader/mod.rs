//! The leader loop: the work only the Raft leader does, run by every member but active
//! only while openraft's metrics say this member leads.
//!
//! Vocabulary:
//! - **term of office**: from the moment this member is seen as leader of a term until
//!   it is not; a fresh [`Liveness`] table (with its grace period) is created for each;
//! - **heartbeat**: an agent's beat, recorded in memory ([`LeaderShared::heartbeat`]),
//!   never in Raft; only a ready → down transition becomes a command;
//! - **evaluation**: the scheduler run over every service of the newest applied state,
//!   triggered by any applied change (services, nodes, allocation reports) and batched:
//!   changes that land while one evaluation runs, or within [`LeaderConfig::batch`], are
//!   covered by the next one; its plan is re-verified ([`plan_apply::verify`]) and
//!   committed as one `ApplyPlan`;
//! - **unplaced**: per service, why the last evaluation could not place all replicas
//!   (served by the `Unplaced` RPC for `gantry service ps`);
//! - **gc**: finished allocations beyond a bound are purged after each evaluation
//!   ([`gc::purgeable`]).

pub mod gc;

use crate::nodes::{Liveness, LivenessConfig};
use crate::plan_apply;
use crate::raft::{GantryRaft, StateHandle};
use crate::scheduler::{Plan, Scheduler};
use crate::state::{Command, State};
use openraft::error::{ClientWriteError, RaftError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Now, on tokio's clock: the real clock in the daemon; the simulator's virtual one when
/// it runs the leader loop on a paused runtime (std's `Instant::now` would be real time
/// there, and liveness would judge nodes by the wall clock).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Tunables of the leader loop.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub liveness: LivenessConfig,
    /// How often silent nodes are checked (and rejected plans retried).
    pub tick: Duration,
    /// How long an evaluation waits after a change for more changes to batch with it.
    pub batch: Duration,
    pub gc: gc::GcConfig,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            liveness: LivenessConfig::default(),
            tick: Duration::from_millis(250),
            batch: Duration::from_millis(5),
            gc: gc::GcConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("committing {verb}: {reason}")]
    Commit { verb: &'static str, reason: String },
}

#[derive(Debug, Default)]
struct Inner {
    /// Some while this member is leader.
    liveness: Option<Liveness>,
    unplaced: BTreeMap<String, String>,
}

/// What the leader loop shares with the API handlers of the same member.
#[derive(Debug, Default)]
pub struct LeaderShared {
    inner: Mutex<Inner>,
}

impl LeaderShared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a heartbeat; false when this member is not (yet) acting as leader.
    pub fn heartbeat(&self, node: u64) -> bool {
        match self.lock().liveness.as_mut() {
            Some(l) => {
                l.heartbeat(node, now());
                true
            }
            None => false,
        }
    }

    /// Record the state index `node`'s routing mesh reflects (its heartbeat's) and answer
    /// the index every live node's mesh has reached ([`Liveness::mesh_synced`]); None when
    /// this member is not (yet) acting as leader.
    pub fn mesh(&self, node: u64, index: u64, state: &State) -> Option<u64> {
        let mut g = self.lock();
        let l = g.liveness.as_mut()?;
        l.mesh_applied(node, index);
        Some(l.mesh_synced(state, now()))
    }

    /// Why replicas are unplaced, per service; None when this member is not leader.
    pub fn unplaced(&self) -> Option<BTreeMap<String, String>> {
        let g = self.lock();
        g.liveness.as_ref().map(|_| g.unplaced.clone())
    }

    fn take_office(&self, config: LivenessConfig) {
        let mut g = self.lock();
        g.liveness = Some(Liveness::new(config, now()));
        g.unplaced.clear();
    }

    fn leave_office(&self) {
        let mut g = self.lock();
        g.liveness = None;
        g.unplaced.clear();
    }

    fn expired(&self, state: &State) -> Vec<Command> {
        match self.lock().liveness.as_ref() {
            Some(l) => l.expired(state, now()),
            None => Vec::new(),
        }
    }

    fn set_unplaced(&self, plan: &Plan) {
        self.lock().unplaced = unplaced_reasons(plan);
    }
}

/// Per service, the failures of a plan as `service ps` shows them.
pub fn unplaced_reasons(plan: &Plan) -> BTreeMap<String, String> {
    plan.failures
        .iter()
        .map(|f| (f.service.clone(), f.to_string()))
        .collect()
}

/// Evaluate every service on `state` and re-verify the plan against the same state: the
/// command to commit (if any), and the plan for its failures. Pure.
pub fn evaluate(scheduler: &Scheduler, state: &State) -> (Option<Command>, Plan, usize) {
    let plan = scheduler.evaluate_all(state);
    let verified = plan_apply::verify(state, &plan);
    let rejected = verified.rejected.len();
    (verified.into_command(), plan, rejected)
}

/// Run the leader loop until the Raft instance shuts down.
pub async fn run(
    raft: GantryRaft,
    handle: Arc<StateHandle>,
    shared: Arc<LeaderShared>,
    config: LeaderConfig,
) {
    let mut metrics = raft.metrics();
    loop {
        let term = loop {
            let m = metrics.borrow().clone();
            if m.state.is_leader() {
                break m.current_term;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        };
        tracing::info!(term, "leader loop: taking office");
        shared.take_office(config.liveness);
        let r = lead(&raft, &handle, &shared, &config, term).await;
        shared.leave_office();
        match r {
            Ok(true) => tracing::info!(term, "leader loop: leaving office"),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(term, error = %e, "leader loop: leaving office");
                // Do not spin on a persistent error: let Raft settle first.
                tokio::time::sleep(config.tick).await;
            }
        }
    }
}

fn still_leader(raft: &GantryRaft, term: u64) -> bool {
    let m = raft.metrics().borrow().clone();
    m.state.is_leader() && m.current_term == term
}

/// Commit a command as leader. Ok(false): leadership was lost.
async fn commit(raft: &GantryRaft, cmd: Command) -> Result<bool, LeaderError> {
    let verb = cmd.verb();
    match raft.client_write(cmd).await {
        Ok(r) => {
            if let Err(e) = r.data {
                // The state refused it (e.g. raced with another command): the next
                // evaluation starts from the newer state.
                tracing::debug!(verb, error = %e, "leader command rejected by the state");
            }
            Ok(true)
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(false),
        Err(e) => Err(LeaderError::Commit {
            verb,
            reason: e.to_string(),
        }),
    }
}

/// One term of office. Ok(true): no longer leader; Ok(false): Raft shut down.
async fn lead(
    raft: &GantryRaft,
    handle: &StateHandle,
    shared: &LeaderShared,
    config: &LeaderConfig,
    term: u64,
) -> Result<bool, LeaderError> {
    let scheduler = Scheduler::default();
    let mut metrics = raft.metrics();
    let mut applied = handle.subscribe();
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    let mut retry_on_tick = false;
    loop {
        if !still_leader(raft, term) {
            return Ok(true);
        }
        let downs = shared.expired(&handle.read().state);
        for cmd in downs {
            tracing::info!(?cmd, "node missed its heartbeats");
            if !commit(raft, cmd).await? {
                return Ok(true);
            }
        }
        if dirty {
            dirty = false;
            applied.borrow_and_update();
            let (cmd, plan, rejected) = evaluate(&scheduler, &handle.read().state);
            shared.set_unplaced(&plan);
            retry_on_tick = rejected > 0;
            if let Some(cmd) = cmd {
                if !commit(raft, cmd).await? {
                    return Ok(true);
                }
            }
            let ids = gc::purgeable(&handle.read().state, config.gc);
            if !ids.is_empty() {
                tracing::debug!(allocations = ids.len(), "purging finished allocations");
                if !commit(raft, Command::PurgeAllocations { ids }).await? {
                    return Ok(true);
                }
            }
        }
        // Biased (branches tried in order) rather than tokio's random start: the loop's
        // top re-checks leadership and liveness whatever woke it, so no branch can be
        // starved of anything, and the order does not depend on tokio's unseedable
        // generator (the simulator replays a seed exactly).
        tokio::select! {
            biased;
            r = applied.changed() => {
                if r.is_err() {
                    return Ok(false);
                }
                tokio::time::sleep(config.batch).await;
                dirty = true;
            }
            r = metrics.changed() => {
                if r.is_err() {
                    return Ok(false);
                }
            }
            _ = tick.tick() => dirty |= retry_on_tick,
        }
    }
}

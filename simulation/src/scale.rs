//! `gantry-sim scale`: the real scheduler, plan verification, state machine and Raft (three
//! in-process members on sled) against a simulated fleet whose agents acknowledge every
//! new allocation at once.
//!
//! Vocabulary:
//! - **phase**: one scenario step, timed on its own — `place` (every service from
//!   nothing), `node-fail` (10% of the nodes go down at once), `site-fail` (every node of
//!   one site goes down), `rolling-update` (every service gets a new image);
//! - **evaluation**: the scheduler over one service on the leader's newest applied state,
//!   then [`plan_apply::verify`] (the leader's re-check); its latency is the *scheduling
//!   latency*; the plan is then committed through Raft (*commit latency*);
//! - **ack**: the simulated agents' report that new allocations run, committed as
//!   `ReportAllocStatus` batches (one per node) by the [`Acker`] while evaluations go on;
//! - **converged**: a service has exactly its replicas, all at the current version and
//!   running.
//!
//! The driver plays the leader's evaluation role itself — one evaluation per group of
//! `services_per_eval` services (1: Nomad's per-job evaluations) — instead of the
//! controller's leader loop, which evaluates every service in one plan: that would make
//! one 1,000,000-placement Raft entry and give no per-evaluation latency. Evaluations are
//! pipelined as in Nomad's plan queue: while one plan commits, the next group is evaluated
//! on the newest state with the plan in flight counted as applied
//! ([`Scheduler::evaluate_after`]), then verified on the state that plan produced. One
//! plan is in flight at a time, and none across passes, so a service is never evaluated
//! while its own plan is in flight.

use crate::cluster::{ClusterConfig, ClusterError, SimCluster};
use crate::invariants::{self, Violation};
use crate::stats::{self, percentile_ms, Quality};
use crate::topology;
use futures::stream::{self, StreamExt};
use gantry_controller::plan_apply;
use gantry_controller::raft::{NodeId, RaftTimings, StateHandle};
use gantry_controller::scheduler::{Plan, Scheduler};
use gantry_controller::state::{
    AllocId, AllocReport, Command, Desired, NodeStatus, Observed, Reply, State,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A failure scenario run after the initial placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    NodeFail,
    SiteFail,
    RollingUpdate,
    /// Churn like a production trace: rounds in which services of heavy-tailed sizes
    /// arrive and others end (see [`trace_round`]).
    Trace,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::NodeFail => "node-fail",
            Phase::SiteFail => "site-fail",
            Phase::RollingUpdate => "rolling-update",
            Phase::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScaleConfig {
    pub nodes: u64,
    pub services: u64,
    pub replicas: u32,
    pub phases: Vec<Phase>,
    /// Where to write placements over time (CSV).
    pub csv: Option<PathBuf>,
    /// A directory for CSV + SVG plots of the run ([`crate::plot`]).
    pub plots: Option<PathBuf>,
    /// Concurrent Raft writes of the setup and of the acks.
    pub concurrency: usize,
    /// Services per evaluation (one plan, one Raft entry). 25 by default: bigger groups
    /// mean fewer plans and fewer walks over the nodes, at the cost of a longer wait per
    /// evaluation (docs/benchmarks.md, the 10% phase with 10, 25 and 40).
    pub services_per_eval: usize,
    /// Give up on a phase after this long.
    pub phase_timeout: Duration,
    /// Rounds of the trace phase, and the seed of its arrivals, sizes and lifetimes.
    pub trace_rounds: u32,
    pub trace_seed: u64,
    /// The members' Raft log and state machine store.
    pub store: crate::cluster::Store,
    /// Print progress lines on stderr.
    pub progress: bool,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig {
            nodes: 10_000,
            services: 1_000,
            replicas: 1_000,
            phases: vec![Phase::NodeFail, Phase::SiteFail, Phase::RollingUpdate],
            csv: None,
            plots: None,
            concurrency: 64,
            services_per_eval: 25,
            phase_timeout: Duration::from_secs(600),
            trace_rounds: 5,
            trace_seed: 1,
            store: crate::cluster::Store::Sled,
            progress: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the state rejected {verb}: {reason}")]
    Rejected { verb: &'static str, reason: String },
    #[error("writing the CSV {path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("phase {phase}: not converged within {timeout:?}")]
    Timeout {
        phase: &'static str,
        timeout: Duration,
    },
    #[error("the ack task ended: {0}")]
    Acker(String),
    #[error("plots: {0}")]
    Plot(#[from] crate::plot::PlotError),
}

/// What one phase did and how long it took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    /// From the first evaluation until every service converged (acks included).
    pub seconds: f64,
    /// From the first evaluation until the last plan was committed (acks may still run).
    pub placed_seconds: f64,
    /// Committing the fault itself (node status changes), before `seconds` starts.
    pub fault_seconds: f64,
    pub nodes_failed: u64,
    pub allocations_lost: u64,
    pub evaluations: u64,
    pub plans_committed: u64,
    pub placements: u64,
    pub stops: u64,
    pub placements_per_s: f64,
    pub eval_p50_ms: f64,
    pub eval_p99_ms: f64,
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    /// Time the driver spent scheduling + verifying (evaluation latency: the same, per
    /// evaluation), waiting for the leader's state (the state machine holds it while
    /// applying), waiting for plans to commit (only what the next evaluation did not
    /// overlap; `commit_p50_ms` is each plan's own commit latency), and waiting for acks.
    pub schedule_seconds: f64,
    pub state_lock_wait_seconds: f64,
    pub commit_seconds: f64,
    pub ack_wait_seconds: f64,
    pub reports_committed: u64,
    /// Services that could not converge (replicas that fit nowhere).
    pub unconverged_services: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub nodes: u64,
    pub services: u64,
    pub replicas: u32,
    pub raft_members: u64,
    pub store: &'static str,
    pub network: &'static str,
    pub register_nodes_seconds: f64,
    pub upsert_services_seconds: f64,
    pub phases: Vec<PhaseReport>,
    pub total_seconds: f64,
    pub quality: Quality,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Invariant violations found at the end (must be empty).
    pub violations: Vec<Violation>,
}

/// The simulated agents: new allocations go in, `ReportAllocStatus` batches come out.
struct Acker {
    tx: mpsc::UnboundedSender<Vec<(NodeId, AllocId)>>,
    pending: Arc<AtomicU64>,
    running: Arc<AtomicU64>,
    reports: Arc<AtomicU64>,
    task: JoinHandle<Result<(), ScaleError>>,
}

impl Acker {
    fn start(cluster: Arc<SimCluster>, concurrency: usize) -> Acker {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<(NodeId, AllocId)>>();
        let pending = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicU64::new(0));
        let reports = Arc::new(AtomicU64::new(0));
        let (p, r, rep) = (pending.clone(), running.clone(), reports.clone());
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut by_node: BTreeMap<NodeId, Vec<AllocReport>> = BTreeMap::new();
                let mut n = 0u64;
                let mut add = |v: Vec<(NodeId, AllocId)>| {
                    for (node, id) in v {
                        n += 1;
                        by_node.entry(node).or_default().push(AllocReport {
                            id,
                            observed: Observed::Running,
                            container: None,
                        });
                    }
                };
                add(first);
                while let Ok(more) = rx.try_recv() {
                    add(more);
                }
                let batches = by_node.len() as u64;
                let mut results = stream::iter(by_node)
                    .map(|(node, batch)| {
                        let c = cluster.clone();
                        async move {
                            c.write(
                                Command::ReportAllocStatus { node, batch },
                                Duration::from_secs(60),
                            )
                            .await
                        }
                    })
                    .buffer_unordered(concurrency);
                while let Some(res) = results.next().await {
                    if let Err(e) = res? {
                        return Err(ScaleError::Rejected {
                            verb: "ReportAllocStatus",
                            reason: e.to_string(),
                        });
                    }
                }
                rep.fetch_add(batches, Ordering::Relaxed);
                r.fetch_add(n, Ordering::Relaxed);
                p.fetch_sub(n, Ordering::Release);
            }
            Ok(())
        });
        Acker {
            tx,
            pending,
            running,
            reports,
            task,
        }
    }

    fn send(&self, v: Vec<(NodeId, AllocId)>) -> Result<(), ScaleError> {
        self.pending.fetch_add(v.len() as u64, Ordering::Acquire);
        self.tx
            .send(v)
            .map_err(|_| ScaleError::Acker("channel closed".into()))
    }

    /// Wait until every allocation sent so far was reported running.
    async fn wait_idle(&self) -> Result<(), ScaleError> {
        while self.pending.load(Ordering::Acquire) > 0 {
            if self.task.is_finished() {
                return Err(ScaleError::Acker("stopped with acks pending".into()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    async fn stop(self) -> Result<(), ScaleError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| ScaleError::Acker(e.to_string()))?
    }
}

/// The CSV of placements over time: `phase,t_ms,placements,running`.
struct Timeline {
    start: Instant,
    rows: Mutex<Vec<(&'static str, u128, u64, u64)>>,
}

/// Does the service have exactly its replicas, current and running?
pub fn converged(state: &State, name: &str) -> bool {
    let Some(svc) = state.service(name) else {
        return true;
    };
    let mut n = 0;
    for a in state.allocations_of(name) {
        if a.desired != Desired::Run {
            continue;
        }
        if a.version != svc.version || a.observed != Observed::Running {
            return false;
        }
        n += 1;
    }
    n == svc.spec.replicas
}

/// A plan whose `ApplyPlan` is being committed.
struct InFlight {
    plan: Plan,
    /// The state's next allocation id when the plan was verified: applying the plan's
    /// placements moves it.
    next_alloc: AllocId,
    started: Instant,
    task: JoinHandle<Result<gantry_controller::state::Response, ClusterError>>,
}

impl InFlight {
    /// Is the plan in `state` already?
    fn landed(&self, state: &State) -> bool {
        if !self.plan.placements.is_empty() {
            return state.counters().1 != self.next_alloc;
        }
        self.plan.stops.first().is_none_or(|id| {
            state
                .allocation(*id)
                .is_none_or(|a| a.desired != Desired::Run)
        })
    }
}

struct Driver {
    cfg: ScaleConfig,
    cluster: Arc<SimCluster>,
    acker: Acker,
    timeline: Timeline,
    scheduler: Scheduler,
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

impl Driver {
    fn leader_handle(&self) -> Result<Arc<StateHandle>, ScaleError> {
        let id = self
            .cluster
            .leader()
            .ok_or(ClusterError::NoLeader(Duration::ZERO))?;
        Ok(self
            .cluster
            .handle(id)
            .ok_or(ClusterError::NotRunning { id })?)
    }

    /// Commit many independent commands, `concurrency` at a time.
    async fn write_all(&self, cmds: Vec<Command>) -> Result<(), ScaleError> {
        let mut results = stream::iter(cmds)
            .map(|cmd| {
                let c = self.cluster.clone();
                async move {
                    let verb = cmd.verb();
                    (verb, c.write(cmd, WRITE_TIMEOUT).await)
                }
            })
            .buffer_unordered(self.cfg.concurrency);
        while let Some((verb, res)) = results.next().await {
            if let Err(e) = res? {
                return Err(ScaleError::Rejected {
                    verb,
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }

    fn progress(&self, phase: &str, rep: &PhaseReport) {
        if self.cfg.progress {
            eprintln!(
                "[{:7.1}s] {phase}: {} evaluations, {} placed, {} stopped, {} running",
                self.timeline.start.elapsed().as_secs_f64(),
                rep.evaluations,
                rep.placements,
                rep.stops,
                self.acker.running.load(Ordering::Relaxed)
            );
        }
    }

    /// Evaluate services one by one, commit their plans, until every one converged.
    async fn converge(&self, phase: &'static str, rep: &mut PhaseReport) -> Result<(), ScaleError> {
        let start = Instant::now();
        let reports_before = self.acker.reports.load(Ordering::Relaxed);
        let mut todo: Vec<String> = self
            .leader_handle()?
            .read()
            .state
            .services()
            .map(|s| s.name.clone())
            .collect();
        let (mut eval_lat, mut commit_lat) = (Vec::new(), Vec::new());
        let (mut sched_t, mut commit_t, mut ack_t, mut lock_t) = (
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        let mut last_progress = Instant::now();
        let mut idle_passes = 0;
        while !todo.is_empty() {
            if start.elapsed() > self.cfg.phase_timeout {
                return Err(ScaleError::Timeout {
                    phase,
                    timeout: self.cfg.phase_timeout,
                });
            }
            let mut next = Vec::new();
            let mut committed_any = false;
            // The plan being committed while the next chunk is evaluated (pipelining, as
            // Nomad's plan queue: the evaluation counts it as applied until it is).
            let mut inflight: Option<InFlight> = None;
            for chunk in todo.chunks(self.cfg.services_per_eval.max(1)) {
                let handle = self.leader_handle()?;
                let waited = Instant::now();
                // Tens of milliseconds of CPU: off the runtime's worker, so that the
                // members' Raft and apply tasks queued on it move to another thread.
                let (lock_wait, evaluated) = tokio::task::block_in_place(|| {
                    let applied = handle.read();
                    // Time spent waiting for the state machine to release the state.
                    let lock_wait = waited.elapsed();
                    let t = Instant::now();
                    let pending: Vec<&str> = chunk
                        .iter()
                        .map(String::as_str)
                        .filter(|n| !converged(&applied.state, n))
                        .collect();
                    if pending.is_empty() {
                        return (lock_wait, None);
                    }
                    let plan = match inflight.as_ref().filter(|f| !f.landed(&applied.state)) {
                        Some(prior) => {
                            self.scheduler
                                .evaluate_after(&applied.state, &pending, &prior.plan)
                        }
                        None => self.scheduler.evaluate(&applied.state, &pending),
                    };
                    let pending: Vec<String> = pending.into_iter().map(String::from).collect();
                    (lock_wait, Some((plan, pending, t)))
                });
                lock_t += lock_wait;
                let Some((plan, pending, t)) = evaluated else {
                    continue;
                };
                let mut took = t.elapsed();
                rep.evaluations += 1;
                next.extend(pending);
                if let Some(f) = inflight.take() {
                    let t = Instant::now();
                    self.land(f, phase, start, rep, &mut commit_lat).await?;
                    commit_t += t.elapsed();
                    committed_any = true;
                }
                // The leader's re-check, on the newest state (the prior plan applied).
                let t = Instant::now();
                let (verified, next_alloc) = tokio::task::block_in_place(|| {
                    let applied = handle.read();
                    (
                        plan_apply::verify(&applied.state, &plan),
                        applied.state.counters().1,
                    )
                });
                took += t.elapsed();
                eval_lat.push(took);
                sched_t += took;
                let plan = Plan {
                    placements: verified.placements.clone(),
                    stops: verified.stops.clone(),
                    failures: Vec::new(),
                };
                let Some(cmd) = verified.into_command() else {
                    continue;
                };
                let c = self.cluster.clone();
                inflight = Some(InFlight {
                    plan,
                    next_alloc,
                    started: Instant::now(),
                    task: tokio::spawn(async move { c.write(cmd, WRITE_TIMEOUT).await }),
                });
                if last_progress.elapsed() > Duration::from_secs(5) {
                    self.progress(phase, rep);
                    last_progress = Instant::now();
                }
            }
            if let Some(f) = inflight.take() {
                let t = Instant::now();
                self.land(f, phase, start, rep, &mut commit_lat).await?;
                commit_t += t.elapsed();
                committed_any = true;
            }
            if !committed_any {
                // Nothing to place: what is left waits for acks, or cannot be placed.
                let t = Instant::now();
                self.acker.wait_idle().await?;
                ack_t += t.elapsed();
                idle_passes += 1;
                if idle_passes > 2 {
                    rep.unconverged_services = next;
                    break;
                }
            } else {
                idle_passes = 0;
            }
            todo = next;
        }
        let t = Instant::now();
        self.acker.wait_idle().await?;
        ack_t += t.elapsed();
        self.record(phase, rep);
        rep.seconds = start.elapsed().as_secs_f64();
        rep.placements_per_s = rep.placements as f64 / rep.seconds.max(1e-9);
        rep.eval_p50_ms = percentile_ms(&mut eval_lat, 0.5);
        rep.eval_p99_ms = percentile_ms(&mut eval_lat, 0.99);
        rep.commit_p50_ms = percentile_ms(&mut commit_lat, 0.5);
        rep.commit_p99_ms = percentile_ms(&mut commit_lat, 0.99);
        rep.schedule_seconds = sched_t.as_secs_f64();
        rep.state_lock_wait_seconds = lock_t.as_secs_f64();
        rep.commit_seconds = commit_t.as_secs_f64();
        rep.ack_wait_seconds = ack_t.as_secs_f64();
        rep.reports_committed = self.acker.reports.load(Ordering::Relaxed) - reports_before;
        self.progress(phase, rep);
        Ok(())
    }

    /// Wait for a plan in flight to commit, then count it and hand its new allocations
    /// to the simulated agents.
    async fn land(
        &self,
        f: InFlight,
        phase: &'static str,
        phase_start: Instant,
        rep: &mut PhaseReport,
        commit_lat: &mut Vec<Duration>,
    ) -> Result<(), ScaleError> {
        let r = f.task.await.map_err(|e| ScaleError::Rejected {
            verb: "ApplyPlan",
            reason: format!("the commit task ended: {e}"),
        })??;
        commit_lat.push(f.started.elapsed());
        let ids = match r {
            Ok(Reply::PlanApplied { allocations }) => allocations,
            Ok(other) => {
                return Err(ScaleError::Rejected {
                    verb: "ApplyPlan",
                    reason: format!("unexpected reply {other:?}"),
                })
            }
            Err(e) => {
                return Err(ScaleError::Rejected {
                    verb: "ApplyPlan",
                    reason: e.to_string(),
                })
            }
        };
        rep.placed_seconds = phase_start.elapsed().as_secs_f64();
        rep.plans_committed += 1;
        rep.placements += ids.len() as u64;
        rep.stops += f.plan.stops.len() as u64;
        let nodes = f.plan.placements.iter().map(|p| p.node);
        self.acker.send(nodes.zip(ids).collect())?;
        self.record(phase, rep);
        Ok(())
    }

    fn record(&self, phase: &'static str, rep: &PhaseReport) {
        if self.cfg.csv.is_none() && self.cfg.plots.is_none() {
            return;
        }
        let mut rows = self.timeline.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.push((
            phase,
            self.timeline.start.elapsed().as_millis(),
            rep.placements,
            self.acker.running.load(Ordering::Relaxed),
        ));
    }

    /// Create (version 1) or update every service to an image version.
    async fn upsert_services(&self, image_version: u32) -> Result<(), ScaleError> {
        let (n, replicas) = (self.cfg.services, self.cfg.replicas);
        self.write_all(
            (0..n)
                .map(|s| topology::upsert_service(s, replicas, image_version))
                .collect(),
        )
        .await
    }

    async fn set_status(&self, nodes: &[NodeId], status: NodeStatus) -> Result<(), ScaleError> {
        self.write_all(
            nodes
                .iter()
                .map(|&node| Command::SetNodeStatus { node, status })
                .collect(),
        )
        .await
    }

    /// Take nodes down (all at once), then converge; returns the phase's report.
    async fn fail_nodes(
        &self,
        phase: Phase,
        pick: impl Fn(&gantry_controller::state::Node) -> bool,
    ) -> Result<PhaseReport, ScaleError> {
        let mut rep = PhaseReport {
            phase: phase.name().into(),
            ..Default::default()
        };
        let (down, lost): (Vec<NodeId>, u64) = {
            let h = self.leader_handle()?;
            let applied = h.read();
            let ids: Vec<NodeId> = applied
                .state
                .nodes()
                .filter(|n| n.status == NodeStatus::Ready && pick(n))
                .map(|n| n.id)
                .collect();
            let lost = ids
                .iter()
                .map(|&id| {
                    applied
                        .state
                        .allocations_on(id)
                        .filter(|a| a.desired == Desired::Run)
                        .count() as u64
                })
                .sum();
            (ids, lost)
        };
        rep.nodes_failed = down.len() as u64;
        rep.allocations_lost = lost;
        let t = Instant::now();
        self.set_status(&down, NodeStatus::Down).await?;
        rep.fault_seconds = t.elapsed().as_secs_f64();
        self.converge(phase_name(phase), &mut rep).await?;
        // Bring them back (empty) for the next phase.
        self.set_status(&down, NodeStatus::Ready).await?;
        Ok(rep)
    }
}

/// The trace phase's services: which are alive, and the next id to hand out.
struct Trace {
    rng: rand::rngs::StdRng,
    /// (service id, rounds left to live)
    live: Vec<(u64, u32)>,
    next_id: u64,
}

/// A heavy-tailed service size: P(replicas > r) = r^-1.1 (a Pareto tail, as in cluster
/// traces: most services are small, a few are very large), at most `max`.
pub fn trace_replicas(u: f64, max: u32) -> u32 {
    let u = u.clamp(1e-12, 1.0);
    (u.powf(-1.0 / 1.1).floor() as u32).clamp(1, max.max(1))
}

impl Driver {
    /// One round of the trace phase: services whose lifetime ended are removed, new ones
    /// (a tenth of `--services` per round, sizes from [`trace_replicas`] up to twice
    /// `--replicas`, lifetimes of 1–4 rounds) arrive, then everything converges.
    async fn trace_round(&self, round: u32, t: &mut Trace) -> Result<PhaseReport, ScaleError> {
        use rand::Rng;
        let mut rep = PhaseReport {
            phase: format!("trace-{round}"),
            ..Default::default()
        };
        let mut cmds = Vec::new();
        t.live.retain_mut(|(id, left)| {
            *left -= 1;
            if *left == 0 {
                cmds.push(Command::RemoveService {
                    name: topology::service_name(*id),
                });
            }
            *left > 0
        });
        let removed = cmds.len();
        let arrivals = (self.cfg.services / 10).max(1);
        for _ in 0..arrivals {
            let id = t.next_id;
            t.next_id += 1;
            let replicas = trace_replicas(t.rng.random::<f64>(), self.cfg.replicas * 2);
            t.live.push((id, t.rng.random_range(1..=4)));
            cmds.push(topology::upsert_service(id, replicas, 1));
        }
        let start = Instant::now();
        self.write_all(cmds).await?;
        rep.fault_seconds = start.elapsed().as_secs_f64();
        if self.cfg.progress {
            eprintln!("trace round {round}: {removed} services ended, {arrivals} arrived");
        }
        self.converge("trace", &mut rep).await?;
        Ok(rep)
    }
}

fn phase_name(p: Phase) -> &'static str {
    p.name()
}

/// Run the scale scenario and report. Needs a multi-thread runtime: evaluations run in
/// `block_in_place`, off the worker that would otherwise also carry the members' tasks.
pub async fn run(cfg: ScaleConfig) -> Result<ScaleReport, ScaleError> {
    let total = Instant::now();
    let cluster = SimCluster::start(ClusterConfig {
        members: 3,
        // openraft times an AppendEntries out after one heartbeat interval, including the
        // follower's fsync of the entries: large plans need more than the daemon's 50 ms.
        timings: RaftTimings {
            heartbeat_ms: 250,
            election_min_ms: 2000,
            election_max_ms: 4000,
            snapshot_every: 1_000_000,
        },
        leader_loop: None,
        seed: 0,
        store: cfg.store,
    })
    .await?;
    cluster.wait_leader(Duration::from_secs(10)).await?;
    let acker = Acker::start(cluster.clone(), cfg.concurrency);
    let driver = Driver {
        timeline: Timeline {
            start: Instant::now(),
            rows: Mutex::new(Vec::new()),
        },
        cfg: cfg.clone(),
        cluster: cluster.clone(),
        acker,
        scheduler: Scheduler::default(),
    };
    let result = drive(&driver, total).await;
    let Driver { acker, .. } = driver;
    let ack_result = acker.stop().await;
    cluster.shutdown().await;
    let report = result?;
    ack_result?;
    Ok(report)
}

async fn drive(d: &Driver, total: Instant) -> Result<ScaleReport, ScaleError> {
    let cfg = &d.cfg;
    let t = Instant::now();
    d.write_all((0..cfg.nodes).map(topology::register_node).collect())
        .await?;
    let register_nodes_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    d.upsert_services(1).await?;
    let upsert_services_seconds = t.elapsed().as_secs_f64();

    let mut phases = Vec::new();
    let mut place = PhaseReport {
        phase: "place".into(),
        ..Default::default()
    };
    d.converge("place", &mut place).await?;
    phases.push(place);
    let utilisation = match &cfg.plots {
        Some(_) => Some(stats::node_utilisation(&d.leader_handle()?.read().state)),
        None => None,
    };
    let mut trace = Trace {
        rng: rand::SeedableRng::seed_from_u64(cfg.trace_seed),
        live: Vec::new(),
        next_id: cfg.services,
    };
    for &phase in &cfg.phases {
        if phase == Phase::Trace {
            for round in 1..=cfg.trace_rounds {
                phases.push(d.trace_round(round, &mut trace).await?);
            }
            continue;
        }
        let rep = match phase {
            Phase::NodeFail => d.fail_nodes(phase, |n| n.id % 10 == 0).await?,
            Phase::SiteFail => {
                let site = topology::SITES[0];
                d.fail_nodes(phase, |n| {
                    n.labels.get("site").map(String::as_str) == Some(site)
                })
                .await?
            }
            Phase::RollingUpdate => {
                let t = Instant::now();
                d.upsert_services(2).await?;
                let mut rep = PhaseReport {
                    phase: phase.name().into(),
                    fault_seconds: t.elapsed().as_secs_f64(),
                    ..Default::default()
                };
                d.converge("rolling-update", &mut rep).await?;
                rep
            }
            Phase::Trace => unreachable!("handled above"),
        };
        phases.push(rep);
    }
    if let Some(path) = &cfg.csv {
        write_csv(path, &d.timeline)?;
    }
    if let (Some(dir), Some(u)) = (&cfg.plots, &utilisation) {
        std::fs::create_dir_all(dir).map_err(|e| crate::plot::PlotError {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let rows = d
            .timeline
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        crate::plot::placements(dir, &rows)?;
        crate::plot::utilisation(dir, u)?;
    }
    let h = d.leader_handle()?;
    let (quality, violations) = {
        let applied = h.read();
        let mut v = invariants::placement::check(&applied.state);
        v.extend(invariants::replicas::check(&applied.state));
        (stats::quality(&applied.state), v)
    };
    let (rss, peak) = stats::rss_mib();
    Ok(ScaleReport {
        nodes: cfg.nodes,
        services: cfg.services,
        replicas: cfg.replicas,
        raft_members: d.cluster.config.members,
        store: cfg.store.describe(),
        network: "in-process router calling each member's openraft handle",
        register_nodes_seconds,
        upsert_services_seconds,
        phases,
        total_seconds: total.elapsed().as_secs_f64(),
        quality,
        rss_mib: rss,
        peak_rss_mib: peak,
        violations,
    })
}

fn write_csv(path: &PathBuf, timeline: &Timeline) -> Result<(), ScaleError> {
    let err = |source| ScaleError::Csv {
        path: path.clone(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    writeln!(f, "phase,t_ms,placements_in_phase,running_total").map_err(err)?;
    let rows = timeline.rows.lock().unwrap_or_else(|p| p.into_inner());
    for (phase, t, placed, running) in rows.iter() {
        writeln!(f, "{phase},{t},{placed},{running}").map_err(err)?;
    }
    f.flush().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_sizes_are_heavy_tailed_and_capped() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut v: Vec<u32> = (0..10_000)
            .map(|_| trace_replicas(rng.random::<f64>(), 2000))
            .collect();
        v.sort_unstable();
        assert_eq!(v[0], 1);
        assert!(v[5_000] <= 2, "median {}", v[5_000]);
        assert!(v[9_999] > 100 && v[9_999] <= 2000, "max {}", v[9_999]);
        assert_eq!(trace_replicas(0.0, 50), 50, "capped");
        assert_eq!(trace_replicas(1.0, 50), 1);
    }
}

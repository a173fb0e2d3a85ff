//! `gantry-sim chaos`: three controller members running the real controller code (Raft on
//! sled, state machine, and the leader loop: liveness, scheduler, plan apply), a dozen
//! simulated agents, and clients writing under a seeded *fault schedule*: member
//! isolation (partitions), message loss and delay, member crashes and restarts from their
//! data dirs, leader kills, agents going silent. After the schedule the faults are healed
//! and the run must converge within a bound. The invariants (`invariants/`) are checked
//! throughout (leaders, placement) and at the end (acknowledged writes, replicas,
//! convergence, members agree).
//!
//! Determinism ([`run_seed`] with [`Store::Memory`], the default): one seed is run on its
//! own current-thread tokio runtime whose clock is paused (virtual time that jumps to the
//! next timer whenever every task waits: seconds of faults in milliseconds), with the
//! members on in-memory stores (no threads, no I/O) and openraft's election timeouts drawn
//! from a generator seeded with the seed ([`seed_thread_rng`]). The schedule
//! ([`schedule`]), every network decision and the interleaving of every task then follow
//! from the seed: a run records a [`Trace`] (faults, leaders per term, acknowledged
//! writes, the final states) and the same seed gives the same trace, which
//! `--reproduce SEED` replays exactly. With [`Store::Sled`] (the real durable store) a run
//! uses a multi-thread runtime in real time and is not deterministic.

use crate::cluster::{ClusterConfig, ClusterError, SimCluster, Store};
use crate::invariants::{
    acked_writes::History, convergence, placement, replicas, single_leader::LeaderLog, Violation,
};
use crate::net::FaultState;
use gantry_controller::leader::LeaderConfig;
use gantry_controller::nodes::LivenessConfig;
use gantry_controller::raft::{seed_thread_rng, NodeId, RaftTimings};
use gantry_controller::state::{
    AllocReport, Command, Desired, NodeStatus, Observed, Reply, ServiceSpec, State,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// One fault (or repair) of the schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Cut a member off from the others.
    Isolate(NodeId),
    /// Reconnect every member; no loss, no delay.
    HealNetwork,
    /// Drop this fraction of messages.
    Loss(f64),
    /// Delay every message by a uniform time in this range (ms).
    Delay(u64, u64),
    /// Crash a member (its data dir stays).
    Crash(NodeId),
    /// Crash whichever member leads at that moment.
    KillLeader,
    /// Restart a crashed member from its data dir.
    Restart(NodeId),
    /// An agent stops heartbeating and reporting (its node will be marked down).
    SilenceAgent(usize),
    /// The agent comes back (re-registers if its node was marked down).
    ReviveAgent(usize),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub fault: Fault,
}

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub seed: u64,
    pub members: u64,
    pub agents: usize,
    pub clients: usize,
    /// How long faults are injected.
    pub fault_time: Duration,
    /// After the faults stop, everything must converge within this.
    pub convergence_bound: Duration,
    /// Print the schedule and progress.
    pub verbose: bool,
    pub store: Store,
}

impl ChaosConfig {
    pub fn new(seed: u64) -> Self {
        ChaosConfig {
            seed,
            members: 3,
            agents: 12,
            clients: 3,
            fault_time: Duration::from_secs(6),
            convergence_bound: Duration::from_secs(20),
            verbose: false,
            store: Store::Memory,
        }
    }
}

/// The fault schedule of a seed (pure): an event every 200–800 ms.
pub fn schedule(seed: u64, members: u64, agents: usize, duration: Duration) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut out = Vec::new();
    let mut at = rng.random_range(100..400);
    let mut crashed: BTreeSet<NodeId> = BTreeSet::new();
    let mut silent: BTreeSet<usize> = BTreeSet::new();
    while at < duration.as_millis() as u64 {
        let fault = match rng.random_range(0..10) {
            0 | 1 => Fault::Isolate(rng.random_range(1..=members)),
            2 => Fault::HealNetwork,
            3 => Fault::Loss(rng.random_range(1..=30) as f64 / 100.0),
            4 => Fault::Delay(0, rng.random_range(5..=80)),
            5 => {
                let id = rng.random_range(1..=members);
                crashed.insert(id);
                Fault::Crash(id)
            }
            6 => Fault::KillLeader,
            7 => match crashed.iter().next().copied() {
                Some(id) => {
                    crashed.remove(&id);
                    Fault::Restart(id)
                }
                None => Fault::HealNetwork,
            },
            8 => {
                let a = rng.random_range(0..agents);
                silent.insert(a);
                Fault::SilenceAgent(a)
            }
            _ => match silent.iter().next().copied() {
                Some(a) => {
                    silent.remove(&a);
                    Fault::ReviveAgent(a)
                }
                None => Fault::Loss(0.0),
            },
        };
        out.push(Event { at_ms: at, fault });
        at += rng.random_range(200..800);
    }
    out
}

/// One thing a run did, at its time since the run started (virtual ms on a paused runtime).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum TraceEvent {
    /// A fault of the schedule was applied.
    Fault { at_ms: u64, fault: Fault },
    /// A member was first seen leading a term.
    Leader {
        at_ms: u64,
        term: u64,
        member: NodeId,
    },
    /// A client's write was acknowledged.
    Ack { at_ms: u64, key: String, seq: u64 },
    /// Faults stopped, every member restarted.
    Healed { at_ms: u64 },
    /// Desired and observed converged, members agree.
    Converged { at_ms: u64 },
    /// A member's final applied index and the SHA-256 of its applied state (JSON image).
    Final {
        member: NodeId,
        applied: u64,
        state_sha256: String,
    },
}

/// What a run did, in order: with [`Store::Memory`], a function of the seed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Trace {
    pub events: Vec<TraceEvent>,
}

impl Trace {
    /// SHA-256 of the trace's JSON: equal digests, equal runs.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(&self.events).expect("trace serializes");
        hex(&Sha256::digest(json))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace being recorded, with the run's start.
struct Recorder {
    start: Instant,
    trace: Mutex<Trace>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            start: Instant::now(),
            trace: Mutex::new(Trace::default()),
        }
    }
    fn at_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn push(&self, e: TraceEvent) {
        lock(&self.trace).events.push(e);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub schedule: Vec<Event>,
    pub leader_terms: usize,
    pub writes_acknowledged: usize,
    pub writes_attempted: u64,
    /// From the end of the faults until converged (None: not within the bound).
    pub converged_after_seconds: Option<f64>,
    pub violations: Vec<Violation>,
    pub store: Store,
    /// Seconds on the run's clock (virtual with [`Store::Memory`]).
    pub simulated_seconds: f64,
    /// SHA-256 of the trace: the same for every run of a seed with [`Store::Memory`].
    pub trace_digest: String,
    pub trace_events: usize,
    #[serde(skip)]
    pub trace: Trace,
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("seed {seed}: starting the tokio runtime: {source}")]
    Runtime {
        seed: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("seed {seed}: setting up: {source}")]
    Setup {
        seed: u64,
        #[source]
        source: ClusterError,
    },
    #[error("seed {seed}: setting up: the state rejected {verb}: {reason}")]
    Rejected {
        seed: u64,
        verb: &'static str,
        reason: String,
    },
}

/// The workload: a few services with constraints, spread and updates.
fn workload() -> Vec<(String, ServiceSpec)> {
    let spec = |replicas: u32, constraints: &[&str], spread: Option<&str>| ServiceSpec {
        image: "registry.local/app:1".into(),
        resources: gantry_controller::state::Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            pids: 16,
        },
        replicas,
        constraints: constraints
            .iter()
            .map(|c| c.parse().expect("built-in constraint"))
            .collect(),
        spread: spread.map(String::from),
        ..Default::default()
    };
    vec![
        ("web".into(), spec(4, &["env==prod"], Some("site"))),
        (
            "api".into(),
            spec(3, &["env==prod", "site!=cloud-east"], None),
        ),
        ("batch".into(), spec(3, &["env!=prod"], None)),
        ("cache".into(), spec(2, &["env==qa"], Some("site"))),
    ]
}

const ORACLE_KEY: &str = "SEQ";

fn oracle_spec(seq: u64) -> ServiceSpec {
    ServiceSpec {
        image: "registry.local/oracle:1".into(),
        env: [(ORACLE_KEY.to_string(), seq.to_string())].into(),
        replicas: 0,
        ..Default::default()
    }
}

fn oracle_value(state: &State, key: &str) -> Option<u64> {
    state
        .service(key)
        .and_then(|s| s.spec.env.get(ORACLE_KEY))
        .and_then(|v| v.parse().ok())
}

/// A simulated agent: heartbeats to the leader, reports its new allocations running, and
/// re-registers when its node was marked down.
async fn agent(
    cluster: Arc<SimCluster>,
    index: usize,
    node: NodeId,
    silent: Arc<Mutex<BTreeSet<usize>>>,
    stop: Arc<AtomicBool>,
) {
    let register = crate::topology::register_node(index as u64);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if silent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&index)
        {
            continue;
        }
        let Some(leader) = cluster.leader() else {
            continue;
        };
        if let Some(shared) = cluster.shared(leader) {
            shared.heartbeat(node);
        }
        let Some(handle) = cluster.handle(leader) else {
            continue;
        };
        let (down, batch) = {
            let applied = handle.read();
            let down = applied
                .state
                .node(node)
                .is_some_and(|n| n.status == NodeStatus::Down);
            let batch: Vec<AllocReport> = applied
                .state
                .allocations_on(node)
                .filter(|a| a.desired == Desired::Run && a.observed != Observed::Running)
                .map(|a| AllocReport {
                    id: a.id,
                    observed: Observed::Running,
                    container: Some(format!("ctr-{}", a.id)),
                })
                .collect();
            (down, batch)
        };
        let cmd = if down {
            register.clone()
        } else if !batch.is_empty() {
            Command::ReportAllocStatus { node, batch }
        } else {
            continue;
        };
        // Outcome unknown on error: the next round looks at the state again.
        let _ = cluster.write(cmd, Duration::from_secs(1)).await;
    }
}

/// A client owning one oracle key: writes increasing sequence numbers, one at a time.
async fn client(
    cluster: Arc<SimCluster>,
    key: String,
    history: Arc<Mutex<History>>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attempt(&key, seq);
        let cmd = Command::UpsertService {
            name: key.clone(),
            spec: oracle_spec(seq),
            expected_index: None,
        };
        if let Ok(Ok(_)) = cluster.write(cmd, Duration::from_millis(1500)).await {
            history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .ack(&key, seq);
            rec.push(TraceEvent::Ack {
                at_ms: rec.at_ms(),
                key: key.clone(),
                seq,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seq
}

/// Watch every member: leaders per term, and placement on each applied state.
async fn monitor(
    cluster: Arc<SimCluster>,
    leaders: Arc<Mutex<LeaderLog>>,
    found: Arc<Mutex<Vec<Violation>>>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = 0u64;
    let mut seen = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        for id in cluster.running() {
            if let Some(raft) = cluster.raft(id) {
                let m = raft.metrics().borrow().clone();
                if m.state.is_leader() {
                    leaders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .observe(m.current_term, id);
                    if seen.insert((m.current_term, id)) {
                        rec.push(TraceEvent::Leader {
                            at_ms: rec.at_ms(),
                            term: m.current_term,
                            member: id,
                        });
                    }
                }
            }
            if tick.is_multiple_of(10) {
                if let Some(h) = cluster.handle(id) {
                    let v = placement::check(&h.read().state);
                    if !v.is_empty() {
                        found.lock().unwrap_or_else(|p| p.into_inner()).extend(v);
                    }
                }
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn apply_fault(cluster: &SimCluster, fault: &Fault, silent: &Mutex<BTreeSet<usize>>) {
    let mut net = cluster.router.faults();
    match fault {
        Fault::Isolate(id) => {
            net.isolated.insert(*id);
            cluster.router.set_faults(net);
        }
        Fault::HealNetwork => cluster.router.set_faults(FaultState::healed()),
        Fault::Loss(p) => {
            net.loss = *p;
            cluster.router.set_faults(net);
        }
        Fault::Delay(lo, hi) => {
            net.delay_ms = (*lo, *hi);
            cluster.router.set_faults(net);
        }
        Fault::Crash(id) => cluster.crash(*id).await,
        Fault::KillLeader => {
            if let Some(id) = cluster.leader() {
                cluster.crash(id).await;
            }
        }
        Fault::Restart(id) => {
            if let Err(e) = cluster.restart(*id).await {
                tracing::warn!(member = id, error = %e, "restart failed; retried at heal");
            }
        }
        Fault::SilenceAgent(a) => {
            silent.lock().unwrap_or_else(|p| p.into_inner()).insert(*a);
        }
        Fault::ReviveAgent(a) => {
            silent.lock().unwrap_or_else(|p| p.into_inner()).remove(a);
        }
    }
}

/// Run one seed on a runtime of its own: with [`Store::Memory`] a current-thread runtime
/// with a paused clock and openraft's generator seeded (deterministic, in virtual time);
/// with [`Store::Sled`] a multi-thread runtime in real time.
pub fn run_seed(cfg: ChaosConfig) -> Result<ChaosReport, ChaosError> {
    let seed = cfg.seed;
    let rt = match cfg.store {
        Store::Memory => tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build(),
        Store::Sled => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .map_err(|source| ChaosError::Runtime { seed, source })?;
    if cfg.store == Store::Memory {
        seed_thread_rng(Some(seed));
    }
    let report = rt.block_on(run(cfg));
    // Tasks still queued (e.g. replication of a crashed member) are dropped here, on this
    // thread, before the generator goes back to the OS-seeded one.
    drop(rt);
    seed_thread_rng(None);
    report
}

/// Run one seed on the current tokio runtime (see [`run_seed`] for a deterministic one).
pub async fn run(cfg: ChaosConfig) -> Result<ChaosReport, ChaosError> {
    let seed = cfg.seed;
    let setup = |source| ChaosError::Setup { seed, source };
    let rec = Arc::new(Recorder::new());
    let cluster = SimCluster::start(ClusterConfig {
        members: cfg.members,
        timings: RaftTimings {
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 200,
        },
        leader_loop: Some(LeaderConfig {
            liveness: LivenessConfig {
                ttl: Duration::from_millis(1000),
                grace: Duration::from_millis(1000),
            },
            tick: Duration::from_millis(100),
            batch: Duration::from_millis(5),
            ..Default::default()
        }),
        seed,
        store: cfg.store,
    })
    .await
    .map_err(setup)?;
    let result = run_on(&cluster, &cfg, &rec).await;
    cluster.shutdown().await;
    result
}

async fn run_on(
    cluster: &Arc<SimCluster>,
    cfg: &ChaosConfig,
    rec: &Arc<Recorder>,
) -> Result<ChaosReport, ChaosError> {
    let seed = cfg.seed;
    let setup = |source| ChaosError::Setup { seed, source };
    let write_timeout = Duration::from_secs(10);
    cluster
        .wait_leader(Duration::from_secs(10))
        .await
        .map_err(setup)?;
    // Nodes and services, before any fault.
    let mut nodes = Vec::new();
    for i in 0..cfg.agents {
        let cmd = crate::topology::register_node(i as u64);
        match cluster.write(cmd, write_timeout).await.map_err(setup)? {
            Ok(Reply::NodeRegistered { id }) => nodes.push(id),
            other => {
                return Err(ChaosError::Rejected {
                    seed,
                    verb: "RegisterNode",
                    reason: format!("{other:?}"),
                })
            }
        }
    }
    for (name, spec) in workload() {
        let cmd = Command::UpsertService {
            name,
            spec,
            expected_index: None,
        };
        if let Err(e) = cluster.write(cmd, write_timeout).await.map_err(setup)? {
            return Err(ChaosError::Rejected {
                seed,
                verb: "UpsertService",
                reason: e.to_string(),
            });
        }
    }

    let stop_faults = Arc::new(AtomicBool::new(false));
    let stop_all = Arc::new(AtomicBool::new(false));
    let silent = Arc::new(Mutex::new(BTreeSet::new()));
    let history = Arc::new(Mutex::new(History::default()));
    let leaders = Arc::new(Mutex::new(LeaderLog::default()));
    let found = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, &node) in nodes.iter().enumerate() {
        tasks.push(tokio::spawn(agent(
            cluster.clone(),
            i,
            node,
            silent.clone(),
            stop_all.clone(),
        )));
    }
    let monitor_task = tokio::spawn(monitor(
        cluster.clone(),
        leaders.clone(),
        found.clone(),
        rec.clone(),
        stop_all.clone(),
    ));
    let clients: Vec<_> = (0..cfg.clients)
        .map(|k| {
            tokio::spawn(client(
                cluster.clone(),
                format!("oracle-{k}"),
                history.clone(),
                rec.clone(),
                stop_faults.clone(),
            ))
        })
        .collect();
    // A rolling update of every workload service halfway through the faults.
    let updater = {
        let cluster = cluster.clone();
        let half = cfg.fault_time / 2;
        tokio::spawn(async move {
            tokio::time::sleep(half).await;
            for (name, mut spec) in workload() {
                spec.image = "registry.local/app:2".into();
                let cmd = Command::UpsertService {
                    name,
                    spec,
                    expected_index: None,
                };
                let _ = cluster.write(cmd, Duration::from_secs(2)).await;
            }
        })
    };

    let events = schedule(seed, cfg.members, cfg.agents, cfg.fault_time);
    let start = Instant::now();
    for ev in &events {
        let at = Duration::from_millis(ev.at_ms);
        tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
        if cfg.verbose {
            eprintln!("[{:6} ms] {:?}", start.elapsed().as_millis(), ev.fault);
        }
        rec.push(TraceEvent::Fault {
            at_ms: rec.at_ms(),
            fault: ev.fault.clone(),
        });
        apply_fault(cluster, &ev.fault, &silent).await;
    }
    tokio::time::sleep(cfg.fault_time.saturating_sub(start.elapsed())).await;

    // Heal everything.
    stop_faults.store(true, Ordering::Relaxed);
    cluster.router.set_faults(FaultState::healed());
    silent.lock().unwrap_or_else(|p| p.into_inner()).clear();
    for id in 1..=cfg.members {
        if let Err(e) = cluster.restart(id).await {
            found
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Violation::new(
                    convergence::NAME,
                    format!("member {id} did not restart from its data dir: {e}"),
                ));
        }
    }
    let mut attempted = 0;
    for c in clients {
        attempted += c.await.unwrap_or(0);
    }
    let _ = updater.await;
    if cfg.verbose {
        eprintln!("[{:6} ms] healed", start.elapsed().as_millis());
    }
    rec.push(TraceEvent::Healed { at_ms: rec.at_ms() });

    // Converge within the bound.
    let healed = Instant::now();
    let mut converged_after = None;
    let mut left = Vec::new();
    while healed.elapsed() < cfg.convergence_bound {
        left = converged_violations(cluster);
        if left.is_empty() {
            converged_after = Some(healed.elapsed().as_secs_f64());
            rec.push(TraceEvent::Converged { at_ms: rec.at_ms() });
            if cfg.verbose {
                eprintln!("[{:6} ms] converged", start.elapsed().as_millis());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_all.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = monitor_task.await;

    let mut violations = found.lock().unwrap_or_else(|p| p.into_inner()).clone();
    violations.dedup();
    violations.extend(leaders.lock().unwrap_or_else(|p| p.into_inner()).check());
    if converged_after.is_none() {
        violations.extend(left);
    }
    let history = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for id in cluster.running() {
        if let Some(h) = cluster.handle(id) {
            let applied = h.read();
            for mut v in history.check(|k| oracle_value(&applied.state, k)) {
                v.detail = format!("member {id}: {}", v.detail);
                violations.push(v);
            }
            violations.extend(replicas::check(&applied.state));
            let image = serde_json::to_vec(&applied.state.to_image()).expect("state serializes");
            rec.push(TraceEvent::Final {
                member: id,
                applied: applied.last_applied.map_or(0, |l| l.index),
                state_sha256: hex(&Sha256::digest(image)),
            });
        }
    }
    let trace = lock(&rec.trace).clone();
    let report = ChaosReport {
        seed,
        schedule: events,
        leader_terms: leaders.lock().unwrap_or_else(|p| p.into_inner()).terms(),
        writes_acknowledged: history.acknowledged(),
        writes_attempted: attempted,
        converged_after_seconds: converged_after,
        violations,
        store: cfg.store,
        simulated_seconds: rec.start.elapsed().as_secs_f64(),
        trace_digest: trace.digest(),
        trace_events: trace.events.len(),
        trace,
    };
    Ok(report)
}

/// What keeps the cluster from being converged: the leader's state, and every member
/// agreeing with it.
fn converged_violations(cluster: &SimCluster) -> Vec<Violation> {
    let Some(leader) = cluster.leader() else {
        return vec![Violation::new(convergence::NAME, "no leader")];
    };
    let Some(h) = cluster.handle(leader) else {
        return vec![Violation::new(convergence::NAME, "leader gone")];
    };
    let mut v = {
        let applied = h.read();
        let mut v = convergence::check(&applied.state);
        v.extend(replicas::check(&applied.state));
        v
    };
    if v.is_empty() {
        let images: Vec<_> = cluster
            .running()
            .into_iter()
            .filter_map(|id| {
                cluster.handle(id).map(|h| {
                    let a = h.read();
                    (
                        id,
                        a.last_applied.map_or(0, |l| l.index),
                        a.state.to_image(),
                    )
                })
            })
            .collect();
        v.extend(convergence::check_members(&images));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_a_function_of_the_seed() {
        let d = Duration::from_secs(6);
        let a = schedule(42, 3, 12, d);
        assert_eq!(a, schedule(42, 3, 12, d));
        assert_ne!(a, schedule(43, 3, 12, d));
        assert!(
            a.len() >= 6,
            "an event every 200-800 ms over 6 s: {}",
            a.len()
        );
        assert!(a.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert!(a.iter().all(|e| e.at_ms < 6000));
        // Restarts only name members the schedule crashed before.
        let mut crashed = BTreeSet::new();
        for e in &a {
            match e.fault {
                Fault::Crash(id) => {
                    crashed.insert(id);
                }
                Fault::Restart(id) => assert!(crashed.remove(&id), "{a:?}"),
                _ => {}
            }
        }
    }
}

//! Cluster mode: `gantry agent --join ADDR[,ADDR…]` makes this agent a node of a gantry
//! cluster. It registers (name, address, labels, capacity), heartbeats, watches the
//! replicated state, and converges its containers to the allocations the controller
//! placed on it.
//!
//! Vocabulary:
//! - **mirror**: this agent's copy of what it needs from the replicated state — its
//!   node, its allocations and the services they belong to — built from the controller's
//!   `Watch` stream (a full state first, then changes from an index; the stream resumes
//!   on any member after a reconnect);
//! - **pass**: list the local containers, [`reconcile::reconcile`] them against the
//!   mirror, start pulls of the images that allocations to run lack (they are reported
//!   `pulling`; a failed pull fails them and backs the image off, [`backoff`]), carry the
//!   actions out through [`executor::Containers`], then report what changed in one
//!   `ReportAllocStatus` batch ([`reconcile::reports`]);
//! - **background work**: pulls and stops (which may wait a stop timeout) run as tasks
//!   beside the passes, at most [`PULLS_AT_ONCE`] and [`STOPS_AT_ONCE`] at a time; a pass
//!   never waits for them, so a hanging registry or a container slow to stop does not
//!   hold up other allocations. A finished task wakes the loop for the next pass;
//! - **synced**: the mirror has received a state. Before that, and whenever no
//!   controller answers, the agent changes nothing: its containers keep running.

pub mod api;
pub mod backoff;
pub mod credentials;
pub mod executor;
pub mod reconcile;

use backoff::PullBackoff;
use executor::{Containers, Images};
use gantry_controller::api::ControllerClient;
use gantry_controller::state::{
    AllocId, AllocReport, Allocation, Change, Command, Desired, NodeId, Reply, Resources, Service,
    StateImage,
};
use gantry_proto::cluster::watch_event;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How this agent joins.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Controller member addresses (any of them; the client follows the leader).
    pub join: Vec<String>,
    /// Mutual TLS with the node certificate, or plain TCP (`--insecure`).
    pub transport: gantry_controller::raft::network::Transport,
    /// The node's name (unique in the cluster).
    pub name: String,
    /// The address the node is reachable at (its published ports).
    pub advertise: String,
    /// Where this node serves its node API ([`api`]), as clients dial it; registered with
    /// the node.
    pub api: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What the host has; detected by [`detect_capacity`].
    pub capacity: Resources,
    /// Kept for the host: not handed out to allocations.
    pub reserved: Resources,
    pub heartbeat: Duration,
    /// How often local containers are re-listed without a state change (exits).
    pub resync: Duration,
    /// Seconds a stopped allocation's container gets between its stop signal and SIGKILL.
    pub stop_timeout_s: i32,
    /// Wait after a failed pull before pulling that image again (doubled per failure).
    pub pull_backoff: Duration,
    /// The longest wait between pulls of an image that keeps failing.
    pub pull_backoff_max: Duration,
    /// How long a stopped allocation of a service with published endpoints keeps running
    /// after it left the rotation (desired Stop), before its stop signal: every node's
    /// mesh drops it first, so a migration or update fails no request (a deregistration
    /// delay, as load balancers have).
    pub drain_delay: Duration,
    /// The routing mesh's progress, shared with the overlay follower (see [`MeshSync`]).
    pub mesh: MeshSync,
}

/// How far the routing mesh has come, on this node and on every node: an allocation of a
/// service with endpoints is stopped only once every live node's mesh has dropped it (or,
/// when that is not confirmed, after [`DRAIN_MAX_FACTOR`] × the drain delay).
#[derive(Debug, Clone, Default)]
pub struct MeshSync {
    /// The state index this node's mesh rules reflect (set by the overlay follower after
    /// each rewrite; 0: no mesh here). Sent with every heartbeat.
    pub applied: Arc<AtomicU64>,
    /// The index every live node's mesh has reached, from the leader's heartbeat replies
    /// (0: not known).
    pub synced: Arc<AtomicU64>,
}

/// A draining allocation whose removal from every node's mesh is not confirmed is stopped
/// after this many drain delays anyway (a leader in its grace period, an old controller).
pub const DRAIN_MAX_FACTOR: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("label {entry:?}: expected KEY=VALUE")]
    BadLabel { entry: String },
    #[error("registering node {name}: {reason}")]
    Register { name: String, reason: String },
    #[error("reading {path}: {source}")]
    Detect {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Parse `--label k=v` entries.
pub fn parse_labels(entries: &[String]) -> Result<BTreeMap<String, String>, ClusterError> {
    entries
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(ClusterError::BadLabel { entry: e.clone() }),
        })
        .collect()
}

/// The host's CPUs (online), memory (MemTotal) and process limit (pid_max).
pub fn detect_capacity() -> Result<Resources, ClusterError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").map_err(|source| ClusterError::Detect {
            path: "/proc/meminfo",
            source,
        })?;
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    Ok(Resources {
        cpu_millis: cpus * 1000,
        memory_bytes: mem_kib * 1024,
        pids: pid_max,
    })
}

/// What the agent knows of the replicated state.
#[derive(Debug, Default)]
struct Mirror {
    me: NodeId,
    synced: bool,
    index: u64,
    allocs: HashMap<AllocId, Allocation>,
    services: HashMap<String, Service>,
}

impl Mirror {
    fn full(&mut self, index: u64, image: StateImage) {
        self.allocs = image
            .allocations
            .into_iter()
            .filter(|a| a.node == self.me)
            .map(|a| (a.id, a))
            .collect();
        self.services = image
            .services
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        self.index = index;
        self.synced = true;
    }

    fn apply(&mut self, index: u64, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Allocation(a) if a.node == self.me => {
                    self.allocs.insert(a.id, std::sync::Arc::unwrap_or_clone(a));
                }
                Change::Allocation(a) => {
                    self.allocs.remove(&a.id);
                }
                Change::AllocationRemoved { id, .. } => {
                    self.allocs.remove(&id);
                }
                Change::Service(s) => {
                    self.services.insert(s.name.clone(), *s);
                }
                Change::ServiceRemoved { name, .. } => {
                    self.services.remove(&name);
                }
                Change::Node(_) | Change::Token(_) => {}
            }
        }
        self.index = index;
    }
}

/// Run cluster mode until the task is dropped.
pub async fn run(cfg: ClusterConfig, containers: Arc<dyn Containers>, images: Arc<dyn Images>) {
    let node = Arc::new(AtomicU64::new(0));
    let mirror = Arc::new(Mutex::new(Mirror::default()));
    let (dirty_tx, mut dirty_rx) = tokio::sync::watch::channel(0u64);
    let beat = tokio::spawn(heartbeat_loop(cfg.clone(), node.clone()));
    let watch = tokio::spawn(watch_loop(
        cfg.clone(),
        node.clone(),
        mirror.clone(),
        dirty_tx,
    ));
    let _guard = AbortOnDrop(vec![beat, watch]);
    let mut client = client(&cfg);
    let mut failures: HashMap<AllocId, String> = HashMap::new();
    let mut exits: HashMap<AllocId, i32> = HashMap::new();
    let mut backoff = PullBackoff::new(cfg.pull_backoff, cfg.pull_backoff_max);
    let mut draining: HashMap<AllocId, (Instant, u64)> = HashMap::new();
    // dropped with this task: aborts the pulls and stops in flight
    let mut bg = Background::new(PULLS_AT_ONCE, STOPS_AT_ONCE);
    loop {
        tokio::select! {
            r = dirty_rx.changed() => if r.is_err() { return },
            Some(r) = bg.tasks.join_next(), if !bg.tasks.is_empty() => bg.finished(r),
            _ = tokio::time::sleep(cfg.resync) => {}
        }
        let id = node.load(Ordering::SeqCst);
        if id == 0 || !lock(&mirror).synced {
            continue;
        }
        let mut st = PassState {
            failures: &mut failures,
            exits: &mut exits,
            backoff: &mut backoff,
            draining: &mut draining,
            bg: &mut bg,
        };
        if let Err(e) = pass(
            &cfg,
            id,
            &mirror,
            &containers,
            &images,
            &mut client,
            &mut st,
        )
        .await
        {
            tracing::warn!(error = %e, "cluster pass");
        }
    }
}

/// Images pulled at once by one agent (each pull also fetches its layers in parallel).
pub const PULLS_AT_ONCE: usize = 3;
/// Containers stopped at once (each may wait its stop timeout before SIGKILL).
pub const STOPS_AT_ONCE: usize = 8;

/// What a background task finished.
#[derive(Debug)]
enum Done {
    Pulled {
        image: String,
        result: Result<(), String>,
        took: Duration,
    },
    Removed {
        alloc: AllocId,
        container: String,
        result: Result<i32, String>,
    },
}

/// The slow work of a pass — image pulls and container stops (with their stop timeouts) —
/// runs beside the passes as tasks, bounded by a semaphore each, so one hanging registry
/// or one container that ignores its stop signal never holds up the actions of other
/// allocations. A finished task wakes the loop, and the next pass takes its result.
struct Background {
    tasks: tokio::task::JoinSet<Done>,
    pull_slots: Arc<tokio::sync::Semaphore>,
    stop_slots: Arc<tokio::sync::Semaphore>,
    /// Images being pulled, and the allocations that wait for each.
    pulling: HashMap<String, std::collections::BTreeSet<AllocId>>,
    /// Containers being stopped and removed, and their allocations.
    removing: HashMap<String, AllocId>,
    /// Results taken from `tasks`, not yet seen by a pass.
    done: Vec<Done>,
}

impl Background {
    fn new(pulls: usize, stops: usize) -> Background {
        Background {
            tasks: tokio::task::JoinSet::new(),
            pull_slots: Arc::new(tokio::sync::Semaphore::new(pulls)),
            stop_slots: Arc::new(tokio::sync::Semaphore::new(stops)),
            pulling: HashMap::new(),
            removing: Default::default(),
            done: Vec::new(),
        }
    }

    fn finished(&mut self, r: Result<Done, tokio::task::JoinError>) {
        match r {
            Ok(d) => self.done.push(d),
            // a task panicked: its image or container is taken up again by a later pass
            Err(e) => tracing::warn!(error = %e, "cluster background task"),
        }
    }

    /// Take every finished result (also those the loop has not been woken for yet).
    fn take_done(&mut self) -> Vec<Done> {
        while let Some(r) = self.tasks.try_join_next() {
            self.finished(r);
        }
        std::mem::take(&mut self.done)
    }

    fn pull(&mut self, images: &Arc<dyn Images>, image: &str) {
        let (images, image, slots) = (images.clone(), image.to_string(), self.pull_slots.clone());
        self.tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let started = Instant::now();
            let result = images.pull(&image).await.map_err(|e| e.to_string());
            Done::Pulled {
                image,
                result,
                took: started.elapsed(),
            }
        });
    }

    fn remove(
        &mut self,
        containers: &Arc<dyn Containers>,
        alloc: AllocId,
        container: &str,
        timeout_s: i32,
    ) {
        let (containers, container, slots) = (
            containers.clone(),
            container.to_string(),
            self.stop_slots.clone(),
        );
        self.removing.insert(container.clone(), alloc);
        self.tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let result = containers
                .remove(&container, timeout_s)
                .await
                .map_err(|e| e.to_string());
            Done::Removed {
                alloc,
                container,
                result,
            }
        });
    }

    /// The allocations waiting for a pull in flight.
    fn waiting_for_pulls(&self) -> std::collections::HashSet<AllocId> {
        self.pulling.values().flatten().copied().collect()
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

fn lock(m: &Mutex<Mirror>) -> std::sync::MutexGuard<'_, Mirror> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn client(cfg: &ClusterConfig) -> ControllerClient {
    let mut c = ControllerClient::with_transport(cfg.join.clone(), cfg.transport.clone());
    c.retry_for = Duration::from_secs(2);
    c
}

/// Registers (or re-registers) this node; its id.
pub async fn register(
    cfg: &ClusterConfig,
    c: &mut ControllerClient,
) -> Result<NodeId, ClusterError> {
    let fail = |reason: String| ClusterError::Register {
        name: cfg.name.clone(),
        reason,
    };
    let cmd = Command::RegisterNode {
        name: cfg.name.clone(),
        address: cfg.advertise.clone(),
        labels: cfg.labels.clone(),
        capacity: cfg.capacity,
        allocatable: cfg.capacity.saturating_sub(cfg.reserved),
        api: cfg.api.clone(),
    };
    match c.write(&cmd).await {
        Ok((_, Ok(Reply::NodeRegistered { id }))) => Ok(id),
        Ok((_, Ok(other))) => Err(fail(format!("unexpected reply {other:?}"))),
        Ok((_, Err(e))) => Err(fail(e.to_string())),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Register, then beat; register again when the controller does not know the node or
/// has marked it down.
async fn heartbeat_loop(cfg: ClusterConfig, node: Arc<AtomicU64>) {
    let mut c = client(&cfg);
    loop {
        let id = node.load(Ordering::SeqCst);
        if id == 0 {
            match register(&cfg, &mut c).await {
                Ok(id) => {
                    tracing::info!(node = id, name = %cfg.name, "registered with the controller");
                    node.store(id, Ordering::SeqCst);
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "not registered yet"),
            }
        } else {
            let applied = cfg.mesh.applied.load(Ordering::SeqCst);
            match c.heartbeat_mesh(id, applied).await {
                Ok((status, synced)) => {
                    cfg.mesh.synced.store(synced, Ordering::SeqCst);
                    if status == "Down" {
                        tracing::info!(
                            node = id,
                            "marked down by the controller: registering again"
                        );
                        node.store(0, Ordering::SeqCst);
                        continue;
                    }
                }
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    node.store(0, Ordering::SeqCst);
                    continue;
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat"),
            }
        }
        tokio::time::sleep(cfg.heartbeat).await;
    }
}

/// Follow the controller's Watch stream into the mirror; reconnect (to any member) from
/// the last index seen when the stream breaks.
async fn watch_loop(
    cfg: ClusterConfig,
    node: Arc<AtomicU64>,
    mirror: Arc<Mutex<Mirror>>,
    dirty: tokio::sync::watch::Sender<u64>,
) {
    let mut c = client(&cfg);
    loop {
        let id = node.load(Ordering::SeqCst);
        if id == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let from = {
            let mut m = lock(&mirror);
            if m.me != id {
                m.me = id;
                m.synced = false;
                m.index = 0;
            }
            m.index
        };
        let mut stream = match c.watch(from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "watch");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    let mut m = lock(&mirror);
                    match ev.event {
                        Some(watch_event::Event::FullStateJson(b)) => {
                            match serde_json::from_slice::<StateImage>(&b) {
                                Ok(img) => m.full(ev.index, img),
                                Err(e) => tracing::warn!(error = %e, "undecodable full state"),
                            }
                        }
                        Some(watch_event::Event::ChangesJson(b)) => {
                            match serde_json::from_slice::<Vec<Change>>(&b) {
                                Ok(ch) => m.apply(ev.index, ch),
                                Err(e) => tracing::warn!(error = %e, "undecodable changes"),
                            }
                        }
                        None => {}
                    }
                    drop(m);
                    dirty.send_modify(|v| *v += 1);
                }
                Ok(None) | Err(_) => break,
            }
            if node.load(Ordering::SeqCst) != id {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What passes carry over from one to the next.
struct PassState<'a> {
    /// Allocations whose container could not be made, and why.
    failures: &'a mut HashMap<AllocId, String>,
    /// The last exit code of containers removed for stopped allocations.
    exits: &'a mut HashMap<AllocId, i32>,
    backoff: &'a mut PullBackoff,
    /// When this agent first saw a stop of an allocation that is draining, and the state
    /// index it saw it at.
    draining: &'a mut HashMap<AllocId, (Instant, u64)>,
    bg: &'a mut Background,
}

/// Reports in batches of at most the controller's `MAX_REPORTS`.
async fn report(client: &mut ControllerClient, node: NodeId, batch: Vec<AllocReport>) {
    for chunk in batch.chunks(gantry_controller::limits::MAX_REPORTS) {
        let n = chunk.len();
        let cmd = Command::ReportAllocStatus {
            node,
            batch: chunk.to_vec(),
        };
        match client.write(&cmd).await {
            Ok((_, Ok(_))) => tracing::debug!(reports = n, "status reported"),
            Ok((_, Err(e))) => tracing::warn!(error = %e, "status report refused"),
            Err(e) => tracing::debug!(error = %e, "status report not delivered"),
        }
    }
}

/// Whether a draining allocation may stop: it left the rotation at state index `index`
/// `waited` ago; every live node's mesh reflects the state up to `synced`. Pure.
fn drained(waited: Duration, delay: Duration, index: u64, synced: u64) -> bool {
    waited >= delay && (synced >= index || waited >= delay * DRAIN_MAX_FACTOR)
}

/// Take the results of finished background work: pulled images (a failure fails the
/// allocations that waited for it and backs the image off), removed containers (their exit
/// code, reported once the container is gone).
fn take_finished(st: &mut PassState<'_>) {
    for d in st.bg.take_done() {
        match d {
            Done::Pulled {
                image,
                result,
                took,
            } => {
                let waiting = st.bg.pulling.remove(&image).unwrap_or_default();
                match result {
                    Ok(()) => {
                        tracing::info!(image = %image, ?took, "pulled");
                        st.backoff.succeeded(&image);
                    }
                    Err(e) => {
                        let wait = st.backoff.failed(&image, Instant::now());
                        tracing::warn!(image = %image, error = %e, retry_in = ?wait, "pull failed");
                        for id in waiting {
                            st.failures.insert(id, e.clone());
                        }
                    }
                }
            }
            Done::Removed {
                alloc,
                container,
                result,
            } => {
                st.bg.removing.remove(&container);
                match result {
                    Ok(code) => {
                        tracing::info!(alloc, container = %container, "stopped and removed");
                        st.exits.insert(alloc, code);
                    }
                    Err(e) => tracing::warn!(alloc, error = %e, "removing"),
                }
            }
        }
    }
}

/// Start pulls for the missing images of the allocations about to run (once per image;
/// none while the image is backed off) and note which allocations wait for one. The
/// allocations that cannot run in this pass: their image is being pulled or backed off.
fn pull_missing(
    work: &HashMap<AllocId, (Allocation, Service)>,
    images: &Arc<dyn Images>,
    st: &mut PassState<'_>,
) -> std::collections::HashSet<AllocId> {
    let mut held = std::collections::HashSet::new();
    let now = Instant::now();
    let mut ids: Vec<&AllocId> = work.keys().collect();
    ids.sort();
    for id in ids {
        let image = &work[id].1.spec.image;
        if images.present(image) {
            continue;
        }
        held.insert(*id);
        if let Some(waiting) = st.bg.pulling.get_mut(image) {
            waiting.insert(*id);
            continue;
        }
        if st.backoff.blocked_until(image, now).is_some() {
            continue;
        }
        st.bg.pull(images, image);
        st.bg.pulling.insert(image.clone(), [*id].into());
    }
    held
}

async fn pass(
    cfg: &ClusterConfig,
    node: NodeId,
    mirror: &Mutex<Mirror>,
    containers: &Arc<dyn Containers>,
    images: &Arc<dyn Images>,
    client: &mut ControllerClient,
    st: &mut PassState<'_>,
) -> Result<(), executor::ExecError> {
    take_finished(st);
    let mut observed = containers.list().await?;
    let (actions, work) = {
        let m = lock(mirror);
        let desired = reconcile::desired_here(&m.allocs, &m.services);
        let mut actions = reconcile::reconcile(&desired, &observed);
        // Allocations of services with endpoints drain before they stop: out of the
        // rotation (desired Stop), they keep running for the drain delay (requests in
        // flight finish) and until every live node's mesh has dropped them (confirmed
        // through the heartbeats), so no node sends a new connection to a stopped one.
        let now = Instant::now();
        let synced = cfg.mesh.synced.load(Ordering::SeqCst);
        st.draining.retain(|id, _| m.allocs.contains_key(id));
        actions.retain(|a| match a {
            reconcile::Action::Remove { alloc, .. } => {
                let published = m
                    .allocs
                    .get(alloc)
                    .and_then(|a| m.services.get(&a.service))
                    .is_some_and(|s| !s.spec.endpoints.is_empty());
                if !published || cfg.drain_delay.is_zero() {
                    return true;
                }
                let (since, index) = *st.draining.entry(*alloc).or_insert((now, m.index));
                drained(now.duration_since(since), cfg.drain_delay, index, synced)
            }
            _ => true,
        });
        let work: HashMap<AllocId, (Allocation, Service)> = actions
            .iter()
            .filter_map(|a| match a {
                reconcile::Action::Run { alloc } => {
                    let a = m.allocs.get(alloc)?.clone();
                    let s = m.services.get(&a.service)?.clone();
                    Some((*alloc, (a, s)))
                }
                _ => None,
            })
            .collect();
        (actions, work)
    };
    let held = pull_missing(&work, images, st);
    let mut changed = false;
    for action in &actions {
        match action {
            reconcile::Action::Run { alloc } => {
                let Some((a, s)) = work.get(alloc) else {
                    continue;
                };
                if held.contains(alloc) {
                    continue;
                }
                changed = true;
                match containers.run(a, s).await {
                    Ok(id) => {
                        tracing::info!(alloc, container = %id, service = %a.service, "started");
                        st.failures.remove(alloc);
                    }
                    Err(e) => {
                        tracing::warn!(alloc, error = %e, "allocation failed");
                        st.failures.insert(*alloc, e.to_string());
                    }
                }
            }
            reconcile::Action::Start { container, alloc } => {
                changed = true;
                if let Err(e) = containers.start(container).await {
                    st.failures.insert(*alloc, e.to_string());
                }
            }
            reconcile::Action::Remove { container, alloc } => {
                if !st.bg.removing.contains_key(container) {
                    st.bg
                        .remove(containers, *alloc, container, cfg.stop_timeout_s);
                }
            }
        }
    }
    if changed {
        observed = containers.list().await?;
    }
    let pulling = st.bg.waiting_for_pulls();
    let batch = {
        let m = lock(mirror);
        st.failures.retain(|id, _| m.allocs.contains_key(id));
        st.exits.retain(|id, _| m.allocs.contains_key(id));
        for waiting in st.bg.pulling.values_mut() {
            waiting.retain(|id| m.allocs.contains_key(id));
        }
        let mut batch = reconcile::reports(&m.allocs, &observed, st.failures, st.exits, &pulling);
        // An allocation told to stop whose container is still being stopped keeps what it
        // was last reported as (a lost one is not reported running again) until the
        // removal ends; then it is reported exited with the container's exit code.
        batch.retain(|r| {
            !st.bg.removing.values().any(|a| *a == r.id)
                || m.allocs
                    .get(&r.id)
                    .is_some_and(|a| a.desired == Desired::Run)
        });
        batch
    };
    if !batch.is_empty() {
        report(client, node, batch).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_bad_entries_are_named() {
        let l = parse_labels(&["env=qa".into(), "site=onprem".into()]).unwrap();
        assert_eq!(l["env"], "qa");
        assert_eq!(l["site"], "onprem");
        let e = parse_labels(&["env".into()]).unwrap_err();
        assert!(e.to_string().contains("\"env\""), "{e}");
        assert!(parse_labels(&["=x".into()]).is_err());
    }

    #[test]
    fn a_draining_allocation_stops_after_the_delay_once_every_mesh_dropped_it() {
        let s = Duration::from_secs(1);
        let delay = 2 * s;
        // every mesh past the stop's index: the delay alone decides
        assert!(!drained(s, delay, 40, 41));
        assert!(drained(2 * s, delay, 40, 40));
        // a mesh still behind (or not known): wait, up to DRAIN_MAX_FACTOR delays
        assert!(!drained(3 * s, delay, 40, 39));
        assert!(!drained(9 * s, delay, 40, 0));
        assert!(drained(delay * DRAIN_MAX_FACTOR, delay, 40, 0));
    }

    #[test]
    fn capacity_is_detected_from_the_host() {
        let r = detect_capacity().unwrap();
        assert!(r.cpu_millis >= 1000);
        assert!(r.memory_bytes > 64 << 20);
        assert!(r.pids > 100);
    }
}

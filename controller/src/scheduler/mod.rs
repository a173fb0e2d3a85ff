//! The scheduler: pure. It reads a [`State`] and proposes a [`Plan`]; it never writes
//! state — the leader's `plan_apply` re-verifies the plan against the newest state and
//! commits it through Raft (Nomad's plan/apply split).
//!
//! Vocabulary:
//! - **evaluation**: one pass over a set of services ([`Scheduler::evaluate`]);
//! - **reconcile** ([`reconcile`]): per service, existing allocations → how many to place,
//!   which to stop;
//! - **stack**: for one placement, walk candidate nodes through the feasibility checks
//!   ([`feasible`]) and keep the best by the rankers ([`rank`]); at most
//!   `candidate_limit` feasible nodes are scored per placement, so the cost of a placement
//!   does not grow with the size of the cluster;
//! - **failure**: replicas that fit nowhere, with the reason each node gave, aggregated
//!   ("2 nodes: env!=qa; 1 node: memory 512Mi > 300Mi free") — a value, not an error.

pub mod feasible;
mod pool;
pub mod rank;
pub mod reconcile;
#[cfg(test)]
mod tests;

use crate::state::{
    AllocId, Allocation, Constraint, Desired, Node, NodeId, NodeStatus, Placement, PortMapping,
    Protocol, Resources, Service, State,
};
use pool::{LabelMemo, Pool};
use rank::Score;
use reconcile::{reconcile, NodeFit};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Feasible nodes scored per placement (Nomad's limit iterator).
    pub candidate_limit: usize,
    /// Host ports handed out when a service publishes a port without fixing it.
    pub dynamic_ports: (u16, u16),
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            candidate_limit: 8,
            dynamic_ports: (30000, 32767),
        }
    }
}

/// Replicas of a service that fit nowhere, and why, per reason the number of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementFailure {
    pub service: String,
    pub missing: u32,
    pub nodes_evaluated: usize,
    pub reasons: BTreeMap<String, u32>,
}

impl fmt::Display for PlacementFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} replica(s) of {} not placed",
            self.missing, self.service
        )?;
        if self.nodes_evaluated == 0 {
            return write!(f, ": no nodes");
        }
        let mut reasons: Vec<(&String, &u32)> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = reasons
            .iter()
            .map(|(r, n)| format!("{n} node{}: {r}", if **n == 1 { "" } else { "s" }))
            .collect();
        write!(f, ": {}", parts.join("; "))
    }
}

/// What one evaluation proposes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub stops: Vec<AllocId>,
    pub failures: Vec<PlacementFailure>,
}

/// What the plan has changed so far, on top of the state it was computed from.
#[derive(Debug, Default)]
pub struct PlanContext {
    // Looked up for every candidate node: foldhash, as the state's per-node maps.
    added: foldhash::HashMap<NodeId, Resources>,
    freed: foldhash::HashMap<NodeId, Resources>,
    ports_added: foldhash::HashSet<(NodeId, Protocol, u16)>,
    ports_freed: foldhash::HashSet<(NodeId, Protocol, u16)>,
    /// Nodes that hold a current replica of the service being placed.
    service_nodes: foldhash::HashSet<NodeId>,
    /// Replicas of the service being placed per value of its spread label, by the
    /// value's number in the pool's memo ([`Pool::spread_value`]).
    spread_counts: Vec<i64>,
}

impl PlanContext {
    /// What is free on the node for this plan, from what the node offers and what the
    /// state's allocations hold on it.
    fn free_given(&self, node: NodeId, allocatable: Resources, used: Resources) -> Resources {
        let used = used
            .saturating_sub(self.freed.get(&node).copied().unwrap_or_default())
            .saturating_add(self.added.get(&node).copied().unwrap_or_default());
        allocatable.saturating_sub(used)
    }

    pub fn port_taken(&self, state: &State, node: NodeId, proto: Protocol, port: u16) -> bool {
        let key = (node, proto, port);
        self.ports_added.contains(&key)
            || (state.host_port_taken(node, proto, port) && !self.ports_freed.contains(&key))
    }

    pub fn service_on_node(&self, node: NodeId) -> bool {
        self.service_nodes.contains(&node)
    }

    fn stop(&mut self, a: &Allocation) {
        let f = self.freed.entry(a.node).or_default();
        *f = f.saturating_add(a.resources);
        for p in &a.ports {
            self.ports_freed.insert((a.node, p.protocol, p.host));
        }
    }

    /// `spread`: the number of the node's value of the service's spread label, if any.
    fn place(&mut self, node: &Node, svc: &Service, ports: &[PortMapping], spread: Option<u32>) {
        let a = self.added.entry(node.id).or_default();
        *a = a.saturating_add(svc.spec.resources);
        for p in ports {
            self.ports_added.insert((node.id, p.protocol, p.host));
        }
        self.service_nodes.insert(node.id);
        if let Some(v) = spread {
            self.count_spread(v);
        }
    }

    fn count_spread(&mut self, value: u32) {
        if value == pool::NO_VALUE {
            return;
        }
        let v = value as usize;
        if self.spread_counts.len() <= v {
            self.spread_counts.resize(v + 1, 0);
        }
        self.spread_counts[v] += 1;
    }

    /// Replicas of the service being placed on nodes with this spread value.
    fn spread_count(&self, value: u32) -> i64 {
        self.spread_counts.get(value as usize).copied().unwrap_or(0)
    }

    /// Take in a plan that is not in the state yet (see [`Scheduler::evaluate_after`]).
    fn absorb(&mut self, state: &State, prior: &Plan) {
        for &id in &prior.stops {
            if let Some(a) = state.allocation(id) {
                self.stop(a);
            }
        }
        for p in &prior.placements {
            let Some(svc) = state.service(&p.service) else {
                continue;
            };
            let a = self.added.entry(p.node).or_default();
            *a = a.saturating_add(svc.spec.resources);
            for m in &p.ports {
                self.ports_added.insert((p.node, m.protocol, m.host));
            }
        }
    }

    /// Start placing `svc`: remember where its kept, current allocations are.
    /// `spread`: the memo slot of its spread label, if it has one.
    fn begin_service(
        &mut self,
        state: &State,
        svc: &Service,
        kept: &[&Allocation],
        pool: &mut Pool<'_>,
        spread: Option<usize>,
    ) {
        self.service_nodes.clear();
        self.spread_counts.clear();
        for a in kept {
            if a.version >= svc.version {
                self.service_nodes.insert(a.node);
            }
            if let Some(slot) = spread {
                let v = pool.spread_value(slot, state, a.node);
                self.count_spread(v);
            }
        }
    }
}

/// The scheduler: its configuration, and what it learnt about node labels. A plan
/// depends only on the state and the services given; the memo only saves work.
#[derive(Debug, Default)]
pub struct Scheduler {
    pub config: SchedulerConfig,
    /// Taken by an evaluation and put back after it (a concurrent one starts empty).
    labels: Mutex<LabelMemo>,
}

impl Clone for Scheduler {
    fn clone(&self) -> Self {
        Scheduler::new(self.config.clone())
    }
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            labels: Mutex::default(),
        }
    }

    /// Evaluate the named services against `state` (missing names are skipped: a removed
    /// service's allocations were stopped by the command that removed it).
    pub fn evaluate(&self, state: &State, services: &[&str]) -> Plan {
        self.evaluate_after(state, services, &Plan::default())
    }

    /// [`Self::evaluate`] on top of `prior`, a plan of other services that is being
    /// committed but is not in `state` yet: its placements take room and host ports on
    /// their nodes and its stops free them, as if applied. This lets the next evaluation
    /// run while the previous plan commits (Nomad's plan queue); `plan_apply::verify`
    /// then re-checks the result against the state the prior plan produced.
    pub fn evaluate_after(&self, state: &State, services: &[&str], prior: &Plan) -> Plan {
        let mut plan = Plan::default();
        let mut ctx = PlanContext::default();
        ctx.absorb(state, prior);
        let memo = std::mem::take(&mut *self.labels.lock().unwrap_or_else(|p| p.into_inner()));
        let mut pool = Pool::new(state, prior.placements.len(), memo);
        for name in services {
            if let Some(svc) = state.service(name) {
                self.evaluate_service(state, svc, &mut ctx, &mut pool, &mut plan);
            }
        }
        *self.labels.lock().unwrap_or_else(|p| p.into_inner()) = pool.into_memo();
        plan
    }

    /// Evaluate every service.
    pub fn evaluate_all(&self, state: &State) -> Plan {
        let names: Vec<&str> = state.services().map(|s| s.name.as_str()).collect();
        self.evaluate(state, &names)
    }

    fn evaluate_service<'s>(
        &self,
        state: &'s State,
        svc: &'s Service,
        ctx: &mut PlanContext,
        pool: &mut Pool<'s>,
        plan: &mut Plan,
    ) {
        let allocs: Vec<&Allocation> = state
            .allocations_of(&svc.name)
            .filter(|a| a.desired == Desired::Run)
            .collect();
        let back = failback_moves(state, svc, &allocs);
        let fit = pool.fit_slots(svc);
        let buckets = reconcile(svc, &allocs, |id| {
            if back.contains(&id) {
                NodeFit::Move
            } else {
                pool.node_fit(state, &fit, id)
            }
        });
        let stopped: HashSet<AllocId> = buckets.stop.iter().map(|(id, _)| *id).collect();
        for &(id, _) in &buckets.stop {
            if let Some(a) = state.allocation(id) {
                ctx.stop(a);
            }
            plan.stops.push(id);
        }
        let kept: Vec<&Allocation> = allocs
            .iter()
            .copied()
            .filter(|a| !stopped.contains(&a.id))
            .collect();
        let spread = svc.spec.spread.as_deref().map(|key| pool.spread_slot(key));
        ctx.begin_service(state, svc, &kept, pool, spread);
        for placed in 0..buckets.place {
            match self.select(state, svc, ctx, pool, spread) {
                Some((node, ports)) => {
                    let value = spread.map(|slot| pool.spread_value(slot, state, node.id));
                    ctx.place(node, svc, &ports, value);
                    plan.placements.push(Placement {
                        service: svc.name.clone(),
                        version: svc.version,
                        node: node.id,
                        ports,
                    });
                }
                None => {
                    plan.failures
                        .push(self.explain(state, svc, ctx, buckets.place - placed));
                    break;
                }
            }
        }
    }

    /// The failover sets in order; a service without one has a single, empty set.
    fn failover_sets(svc: &Service) -> Vec<Option<&[Constraint]>> {
        if svc.spec.failover.is_empty() {
            vec![None]
        } else {
            svc.spec
                .failover
                .iter()
                .map(|s| Some(s.as_slice()))
                .collect()
        }
    }

    /// The first reason this node cannot take a replica, if any.
    fn check<'a>(
        state: &State,
        svc: &'a Service,
        ctx: &PlanContext,
        node: &Node,
        set: Option<&'a [Constraint]>,
    ) -> Option<feasible::Infeasible<'a>> {
        feasible::node_ready(node)
            .or_else(|| feasible::placement_constraints(node, svc, set))
            .or_else(|| Self::check_room(state, svc, ctx, node).err())
    }

    /// [`Self::check`] for a ready node whose labels are known to pass: what this plan
    /// and the state have put on it. Room for a replica: what is free on the node.
    fn check_room<'a>(
        state: &State,
        svc: &'a Service,
        ctx: &PlanContext,
        node: &Node,
    ) -> Result<Resources, feasible::Infeasible<'a>> {
        Self::check_room_given(
            state,
            svc,
            ctx,
            node.id,
            (node.allocatable, state.used(node.id)),
        )
    }

    /// [`Self::check_room`] with the node's allocatable and used resources given (`room`,
    /// as [`Pool::room`] keeps them).
    fn check_room_given<'a>(
        state: &State,
        svc: &'a Service,
        ctx: &PlanContext,
        node: NodeId,
        (allocatable, used): (Resources, Resources),
    ) -> Result<Resources, feasible::Infeasible<'a>> {
        if let Some(no) = feasible::distinct(ctx, node, svc) {
            return Err(no);
        }
        let free = ctx.free_given(node, allocatable, used);
        match feasible::resources(free, svc.spec.resources)
            .or_else(|| feasible::host_ports(state, ctx, node, svc))
        {
            Some(no) => Err(no),
            None => Ok(free),
        }
    }

    /// Pick a node for one replica: the first failover set with a feasible node wins;
    /// within it, the best-scored of up to `candidate_limit` feasible nodes. `spread`:
    /// the memo slot of the service's spread label.
    fn select<'s>(
        &self,
        state: &'s State,
        svc: &'s Service,
        ctx: &PlanContext,
        pool: &mut Pool<'s>,
        spread: Option<usize>,
    ) -> Option<(&'s Node, Vec<PortMapping>)> {
        for set in Self::failover_sets(svc) {
            let filter = (svc.spec.constraints.as_slice(), set);
            let (slots, cursor) = pool.candidates(filter);
            let n = pool.ready.len();
            // The best so far: its place in the pool, and its score.
            let mut best: Option<(usize, Score)> = None;
            let mut found = 0;
            let mut scanned = 0;
            while scanned < n && found < self.config.candidate_limit {
                let i = (cursor + scanned) % n;
                scanned += 1;
                if !pool.passes(slots.clone(), i) {
                    continue;
                }
                let id = pool.ready_ids[i];
                let room = pool.room[i];
                let Ok(free) = Self::check_room_given(state, svc, ctx, id, room) else {
                    continue;
                };
                found += 1;
                let allocatable = room.0;
                let used_after = allocatable
                    .saturating_sub(free)
                    .saturating_add(svc.spec.resources);
                let spread = match spread {
                    Some(slot) => match pool.spread_value(slot, state, id) {
                        pool::NO_VALUE => i64::MIN / 2,
                        v => -ctx.spread_count(v),
                    },
                    None => 0,
                };
                let score = Score {
                    spread,
                    binpack: rank::binpack(allocatable, used_after),
                };
                if best.as_ref().is_none_or(|(_, b)| score.better_than(b)) {
                    best = Some((i, score));
                }
            }
            if n > 0 {
                pool.move_cursor(filter, (cursor + scanned) % n);
            }
            if let Some((i, _)) = best {
                let node = pool.ready[i];
                if let Some(ports) = self.assign_ports(state, ctx, node, svc) {
                    return Some((node, ports));
                }
            }
        }
        None
    }

    /// Map each published port: fixed ones as asked (already checked free), the others to
    /// the lowest free port of the dynamic range.
    fn assign_ports(
        &self,
        state: &State,
        ctx: &PlanContext,
        node: &Node,
        svc: &Service,
    ) -> Option<Vec<PortMapping>> {
        let mut taken_here: HashSet<(Protocol, u16)> = HashSet::new();
        let mut out = Vec::with_capacity(svc.spec.ports.len());
        for p in &svc.spec.ports {
            let host = match p.host {
                Some(h) => h,
                None => (self.config.dynamic_ports.0..=self.config.dynamic_ports.1).find(|&h| {
                    !taken_here.contains(&(p.protocol, h))
                        && !ctx.port_taken(state, node.id, p.protocol, h)
                        && !svc
                            .spec
                            .ports
                            .iter()
                            .any(|q| q.host == Some(h) && q.protocol == p.protocol)
                })?,
            };
            taken_here.insert((p.protocol, host));
            out.push(PortMapping {
                container: p.container,
                host,
                protocol: p.protocol,
            });
        }
        Some(out)
    }

    /// Why `missing` replicas fit nowhere: every node's first failing check (against the
    /// first failover set), counted per reason.
    fn explain(
        &self,
        state: &State,
        svc: &Service,
        ctx: &PlanContext,
        missing: u32,
    ) -> PlacementFailure {
        let set = Self::failover_sets(svc)[0];
        // Counted as values, put in words once per distinct reason.
        let mut counts: HashMap<Option<feasible::Infeasible>, u32> = HashMap::new();
        let mut evaluated = 0;
        for node in state.nodes() {
            evaluated += 1;
            *counts
                .entry(Self::check(state, svc, ctx, node, set))
                .or_default() += 1;
        }
        let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
        for (r, n) in counts {
            let r = r.map_or_else(|| "no free dynamic port".to_string(), |r| r.to_string());
            *reasons.entry(r).or_default() += n;
        }
        PlacementFailure {
            service: svc.name.clone(),
            missing,
            nodes_evaluated: evaluated,
            reasons,
        }
    }
}

/// How an existing allocation's node stands for its service.
/// The index of the first failover set `node` satisfies (with the service's constraints).
fn failover_rank(svc: &Service, node: &Node) -> Option<usize> {
    if !Constraint::all_match(&svc.spec.constraints, &node.labels) {
        return None;
    }
    svc.spec
        .failover
        .iter()
        .position(|set| Constraint::all_match(set, &node.labels))
}

/// Fail-back: the nodes whose allocations move back to an earlier failover set (marked
/// [`NodeFit::Move`], so reconcile replaces them make-before-break). Allocations in later
/// sets are taken latest set first, and one moves
/// - while the service has more current allocations than replicas (a move back in
///   flight: its replacement is placed, so this one is the surplus that stops once the
///   replacement serves; without this it would count as settled and the replacement
///   would be stopped as excess), or
/// - for each ready node of an earlier set that holds no allocation of the service and
///   has room for one (a node takes one allocation, so no more move than the earlier sets
///   can hold and nothing churns).
///
/// Cost: one pass over the ready nodes, only for services with `failback` that have an
/// allocation in a later set.
fn failback_moves(state: &State, svc: &Service, allocs: &[&Allocation]) -> HashSet<NodeId> {
    use crate::state::Observed;
    let mut out = HashSet::new();
    if !svc.spec.failback || svc.spec.failover.len() < 2 {
        return out;
    }
    let live: Vec<&Allocation> = allocs
        .iter()
        .copied()
        .filter(|a| !matches!(a.observed, Observed::Lost | Observed::Failed(_)))
        .collect();
    let rank_of = |id: NodeId| {
        state
            .node(id)
            .filter(|n| n.status == NodeStatus::Ready)
            .and_then(|n| failover_rank(svc, n))
    };
    let mut later: Vec<(usize, &Allocation)> = live
        .iter()
        .filter_map(|a| rank_of(a.node).filter(|&r| r > 0).map(|r| (r, *a)))
        .collect();
    if later.is_empty() {
        return out;
    }
    later.sort_by_key(|(r, a)| (std::cmp::Reverse(*r), a.id));
    let current = live.iter().filter(|a| a.version >= svc.version).count();
    let mut surplus = current.saturating_sub(svc.spec.replicas as usize);
    let taken: HashSet<NodeId> = allocs.iter().map(|a| a.node).collect();
    let mut slots: Vec<usize> = state
        .nodes()
        .filter(|n| n.status == NodeStatus::Ready && !taken.contains(&n.id))
        .filter(|n| {
            feasible::resources(
                n.allocatable.saturating_sub(state.used(n.id)),
                svc.spec.resources,
            )
            .is_none()
        })
        .filter_map(|n| failover_rank(svc, n))
        .collect();
    slots.sort_unstable();
    for (rank, a) in later {
        if surplus > 0 && a.version >= svc.version {
            surplus -= 1;
            out.insert(a.node);
        } else if let Some(i) = slots.iter().position(|&s| s < rank) {
            slots.remove(i);
            out.insert(a.node);
        }
    }
    out
}

//! Feasibility: can this node take one more replica of this service? Each check is a small
//! function answering `None` (fits) or the reason it does not, as a short human string
//! that `gantry service ps` aggregates ("2 nodes: env!=qa; 1 node: memory 512Mi > 300Mi
//! free"). "Does not fit" is a value, not an error.

use super::PlanContext;
use crate::state::{Constraint, Node, NodeStatus, Op, Protocol, Resources, Service, State};

/// Why one node cannot take a replica.
pub type Reason = String;

/// The node must be ready (not down, not draining).
pub fn node_ready(node: &Node) -> Option<Reason> {
    match node.status {
        NodeStatus::Ready => None,
        NodeStatus::Down => Some("node down".into()),
        NodeStatus::Draining => Some("node draining".into()),
    }
}

/// What a node's labels say when a constraint fails: the negation of the constraint.
fn failed_constraint(c: &Constraint) -> Reason {
    match &c.op {
        Op::Eq(v) => format!("{}!={}", c.key, v),
        Op::Ne(v) => format!("{}=={}", c.key, v),
        Op::In(vs) => format!("{} not in ({})", c.key, vs.join(",")),
        Op::NotIn(vs) => format!("{} in ({})", c.key, vs.join(",")),
        Op::Exists => format!("no label {}", c.key),
        Op::Absent => format!("has label {}", c.key),
    }
}

/// Every constraint of the set must match the node's labels.
pub fn constraints(node: &Node, set: &[Constraint]) -> Option<Reason> {
    set.iter()
        .find(|c| !c.matches(&node.labels))
        .map(failed_constraint)
}

/// The service's constraints and, when it has a failover order, the given failover set.
pub fn placement_constraints(
    node: &Node,
    service: &Service,
    failover_set: Option<&[Constraint]>,
) -> Option<Reason> {
    constraints(node, &service.spec.constraints)
        .or_else(|| failover_set.and_then(|set| constraints(node, set)))
}

/// Formats bytes the way users write memory sizes (Ki/Mi/Gi).
pub fn human_bytes(b: u64) -> String {
    const K: u64 = 1024;
    if b >= K * K * K && b.is_multiple_of(K * K * K) {
        format!("{}Gi", b / (K * K * K))
    } else if b >= K * K {
        format!("{}Mi", b / (K * K))
    } else if b >= K {
        format!("{}Ki", b / K)
    } else {
        format!("{b}B")
    }
}

/// The request must fit in what is free on the node: allocatable minus what allocations
/// that should run hold, minus what this plan already added.
pub fn resources(free: Resources, request: Resources) -> Option<Reason> {
    if request.cpu_millis > free.cpu_millis {
        Some(format!(
            "cpu {}m > {}m free",
            request.cpu_millis, free.cpu_millis
        ))
    } else if request.memory_bytes > free.memory_bytes {
        Some(format!(
            "memory {} > {} free",
            human_bytes(request.memory_bytes),
            human_bytes(free.memory_bytes)
        ))
    } else if request.pids > free.pids {
        Some(format!("pids {} > {} free", request.pids, free.pids))
    } else {
        None
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Fixed host ports the service publishes must be free on the node.
pub fn host_ports(
    state: &State,
    ctx: &PlanContext,
    node: &Node,
    service: &Service,
) -> Option<Reason> {
    service
        .spec
        .ports
        .iter()
        .filter_map(|p| p.host.map(|h| (p.protocol, h)))
        .find(|&(proto, h)| ctx.port_taken(state, node.id, proto, h))
        .map(|(proto, h)| format!("port {}/{} in use", proto_name(proto), h))
}

/// Replicas of one service go to distinct nodes.
pub fn distinct(ctx: &PlanContext, node: &Node, service: &Service) -> Option<Reason> {
    ctx.service_on_node(node.id)
        .then(|| format!("already runs a replica of {}", service.name))
}

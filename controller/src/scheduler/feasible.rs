//! Feasibility: can this node take one more replica of this service? Each check is a small
//! function answering `None` (fits) or the reason it does not, as a short human string
//! that `gantry service ps` aggregates ("2 nodes: env!=qa; 1 node: memory 512Mi > 300Mi
//! free"). "Does not fit" is a value, not an error.

use super::PlanContext;
use crate::state::{Constraint, Node, NodeId, NodeStatus, Op, Protocol, Resources, Service, State};
use std::fmt;

/// Why one node cannot take a replica: a value that costs nothing to make (the scheduler
/// rejects thousands of nodes per evaluation) and becomes text only when shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Infeasible<'a> {
    NodeDown,
    NodeDraining,
    /// The node already runs a replica of this service.
    AlreadyRuns(&'a str),
    /// The node's labels fail this constraint.
    Constraint(&'a Constraint),
    Cpu {
        request: u64,
        free: u64,
    },
    Memory {
        request: u64,
        free: u64,
    },
    Pids {
        request: u64,
        free: u64,
    },
    PortInUse(Protocol, u16),
}

impl fmt::Display for Infeasible<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Infeasible::NodeDown => f.write_str("node down"),
            Infeasible::NodeDraining => f.write_str("node draining"),
            Infeasible::AlreadyRuns(svc) => write!(f, "already runs a replica of {svc}"),
            // What a node's labels say when a constraint fails: its negation.
            Infeasible::Constraint(c) => match &c.op {
                Op::Eq(v) => write!(f, "{}!={}", c.key, v),
                Op::Ne(v) => write!(f, "{}=={}", c.key, v),
                Op::In(vs) => write!(f, "{} not in ({})", c.key, vs.join(",")),
                Op::NotIn(vs) => write!(f, "{} in ({})", c.key, vs.join(",")),
                Op::Exists => write!(f, "no label {}", c.key),
                Op::Absent => write!(f, "has label {}", c.key),
            },
            Infeasible::Cpu { request, free } => write!(f, "cpu {request}m > {free}m free"),
            Infeasible::Memory { request, free } => write!(
                f,
                "memory {} > {} free",
                human_bytes(request),
                human_bytes(free)
            ),
            Infeasible::Pids { request, free } => write!(f, "pids {request} > {free} free"),
            Infeasible::PortInUse(proto, h) => {
                write!(f, "port {}/{} in use", proto_name(proto), h)
            }
        }
    }
}

/// The node must be ready (not down, not draining).
pub fn node_ready(node: &Node) -> Option<Infeasible<'static>> {
    match node.status {
        NodeStatus::Ready => None,
        NodeStatus::Down => Some(Infeasible::NodeDown),
        NodeStatus::Draining => Some(Infeasible::NodeDraining),
    }
}

/// Every constraint of the set must match the node's labels.
pub fn constraints<'a>(node: &Node, set: &'a [Constraint]) -> Option<Infeasible<'a>> {
    set.iter()
        .find(|c| !c.matches(&node.labels))
        .map(Infeasible::Constraint)
}

/// The service's constraints and, when it has a failover order, the given failover set.
pub fn placement_constraints<'a>(
    node: &Node,
    service: &'a Service,
    failover_set: Option<&'a [Constraint]>,
) -> Option<Infeasible<'a>> {
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
pub fn resources(free: Resources, request: Resources) -> Option<Infeasible<'static>> {
    if request.cpu_millis > free.cpu_millis {
        Some(Infeasible::Cpu {
            request: request.cpu_millis,
            free: free.cpu_millis,
        })
    } else if request.memory_bytes > free.memory_bytes {
        Some(Infeasible::Memory {
            request: request.memory_bytes,
            free: free.memory_bytes,
        })
    } else if request.pids > free.pids {
        Some(Infeasible::Pids {
            request: request.pids,
            free: free.pids,
        })
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
    node: NodeId,
    service: &Service,
) -> Option<Infeasible<'static>> {
    service
        .spec
        .ports
        .iter()
        .filter_map(|p| p.host.map(|h| (p.protocol, h)))
        .find(|&(proto, h)| ctx.port_taken(state, node, proto, h))
        .map(|(proto, h)| Infeasible::PortInUse(proto, h))
}

/// Replicas of one service go to distinct nodes.
pub fn distinct<'a>(
    ctx: &PlanContext,
    node: NodeId,
    service: &'a Service,
) -> Option<Infeasible<'a>> {
    ctx.service_on_node(node)
        .then_some(Infeasible::AlreadyRuns(&service.name))
}

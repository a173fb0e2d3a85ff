//! Plan apply (leader only): a plan was computed on a view that may be stale by the time
//! it is committed — other plans, node failures and reports landed meanwhile. Before the
//! `ApplyPlan` command goes through Raft, the leader re-verifies every placement against
//! the newest state and drops those that no longer fit (a partial commit, as in Nomad's
//! plan_apply.go), so the state machine never sees an over-committing plan. The dropped
//! placements are re-evaluated by the next evaluation.

use crate::scheduler::{feasible, Plan};
use crate::state::{Command, Desired, NodeId, NodeStatus, Placement, Protocol, Resources, State};
use std::collections::{HashMap, HashSet};

/// A placement the leader refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub placement: Placement,
    pub reason: String,
}

/// The part of a plan that still holds against the newest state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    pub placements: Vec<Placement>,
    pub stops: Vec<u64>,
    pub rejected: Vec<Rejected>,
}

impl Verified {
    /// The Raft command that commits it, or None when nothing is left to commit.
    pub fn into_command(self) -> Option<Command> {
        if self.placements.is_empty() && self.stops.is_empty() {
            return None;
        }
        Some(Command::ApplyPlan {
            placements: self.placements,
            stops: self.stops,
        })
    }
}

/// Re-verify `plan` against `state`: stops of allocations that still should run are kept;
/// each placement is kept when its service is still at the planned version, its node is
/// ready, and its resources and host ports still fit after the stops and the placements
/// kept before it.
pub fn verify(state: &State, plan: &Plan) -> Verified {
    let mut out = Verified::default();
    let mut freed: HashMap<NodeId, Resources> = HashMap::new();
    let mut freed_ports: HashSet<(NodeId, Protocol, u16)> = HashSet::new();
    let mut seen = HashSet::new();
    for &id in &plan.stops {
        let Some(a) = state.allocation(id) else {
            continue;
        };
        if a.desired != Desired::Run || !seen.insert(id) {
            continue;
        }
        let f = freed.entry(a.node).or_default();
        *f = f.saturating_add(a.resources);
        for p in &a.ports {
            freed_ports.insert((a.node, p.protocol, p.host));
        }
        out.stops.push(id);
    }
    let mut added: HashMap<NodeId, Resources> = HashMap::new();
    let mut ports: HashSet<(NodeId, Protocol, u16)> = HashSet::new();
    for p in &plan.placements {
        let reject = |reason: String| Rejected {
            placement: p.clone(),
            reason,
        };
        let Some(svc) = state.service(&p.service) else {
            out.rejected
                .push(reject(format!("service {} is gone", p.service)));
            continue;
        };
        if svc.version != p.version {
            out.rejected.push(reject(format!(
                "service {} moved to version {} (plan: {})",
                p.service, svc.version, p.version
            )));
            continue;
        }
        let Some(node) = state.node(p.node) else {
            out.rejected
                .push(reject(format!("node {} is gone", p.node)));
            continue;
        };
        if node.status != NodeStatus::Ready {
            out.rejected.push(reject(
                feasible::node_ready(node)
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
            ));
            continue;
        }
        let used = state
            .used(node.id)
            .saturating_sub(freed.get(&node.id).copied().unwrap_or_default())
            .saturating_add(added.get(&node.id).copied().unwrap_or_default());
        if let Some(r) =
            feasible::resources(node.allocatable.saturating_sub(used), svc.spec.resources)
        {
            out.rejected.push(reject(r.to_string()));
            continue;
        }
        let clash = p.ports.iter().find(|m| {
            let key = (node.id, m.protocol, m.host);
            ports.contains(&key)
                || (state.host_port_taken(node.id, m.protocol, m.host)
                    && !freed_ports.contains(&key))
        });
        if let Some(m) = clash {
            out.rejected.push(reject(format!(
                "port {:?}/{} in use on {}",
                m.protocol, m.host, node.name
            )));
            continue;
        }
        let a = added.entry(node.id).or_default();
        *a = a.saturating_add(svc.spec.resources);
        for m in &p.ports {
            ports.insert((node.id, m.protocol, m.host));
        }
        out.placements.push(p.clone());
    }
    out
}

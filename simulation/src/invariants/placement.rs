//! Every allocation that should run satisfies its service's constraints (and one of its
//! failover sets, when it has some), and no node is over-committed: the requests of the
//! allocations that should run on a node, summed here independently of the state's own
//! usage counters, fit in its allocatable resources.

use super::Violation;
use gantry_controller::state::{Constraint, Desired, Resources, State};
use std::collections::HashMap;

pub const NAME: &str = "placement";

pub fn check(state: &State) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut used: HashMap<u64, Resources> = HashMap::new();
    for a in state.allocations().filter(|a| a.desired == Desired::Run) {
        let u = used.entry(a.node).or_default();
        *u = u.saturating_add(a.resources);
        let (Some(svc), Some(node)) = (state.service(&a.service), state.node(a.node)) else {
            out.push(Violation::new(
                NAME,
                format!("allocation {}: service or node {} missing", a.id, a.node),
            ));
            continue;
        };
        // An allocation of an older version ran under that version's constraints; it is
        // being replaced, not wrong. Constraints here never change between versions.
        if !Constraint::all_match(&svc.spec.constraints, &node.labels) {
            out.push(Violation::new(
                NAME,
                format!(
                    "allocation {} of {} on {}: constraints {:?} not met by {:?}",
                    a.id, a.service, node.name, svc.spec.constraints, node.labels
                ),
            ));
        }
        if !svc.spec.failover.is_empty()
            && !svc
                .spec
                .failover
                .iter()
                .any(|set| Constraint::all_match(set, &node.labels))
        {
            out.push(Violation::new(
                NAME,
                format!("allocation {} on {}: in no failover set", a.id, node.name),
            ));
        }
    }
    for (id, u) in used {
        if let Some(node) = state.node(id) {
            if let Some(dim) = u.exceeds(&node.allocatable) {
                out.push(Violation::new(
                    NAME,
                    format!(
                        "node {} over-committed on {dim}: {u:?} > {:?}",
                        node.name, node.allocatable
                    ),
                ));
            }
        }
    }
    out
}

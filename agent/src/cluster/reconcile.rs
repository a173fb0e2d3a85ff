//! The agent's pure decisions: what to do to the local containers so they match the
//! allocations the controller wants on this node ([`reconcile`]), and what to tell the
//! controller about them ([`reports`]).
//!
//! Containers are tied to allocations by the `gantry.alloc` label; a container without
//! it is not ours and is never touched.

use gantry_controller::state::{AllocId, AllocReport, Allocation, Desired, Observed, Service};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The label carrying the allocation id on a container the agent made.
pub const ALLOC_LABEL: &str = "gantry.alloc";
/// The label carrying the service name.
pub const SERVICE_LABEL: &str = "gantry.service";

/// A container's state as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    /// Restarting under its restart policy.
    Restarting,
    Exited(i32),
}

/// One of this agent's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub alloc: AllocId,
    pub state: ContainerState,
}

/// What the agent does to converge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start a container for the allocation (the service's spec).
    Run { alloc: AllocId },
    /// Start a container that was created but never started.
    Start { container: String, alloc: AllocId },
    /// Stop (signal, then kill after the timeout) and remove.
    Remove { container: String, alloc: AllocId },
}

/// Converge the containers to the allocations that should run here. `desired` are the
/// ids of this node's allocations whose desired status is `Run` (and whose service is
/// known). Exited containers are left alone: their restart policy is the engine's, and
/// a finished allocation keeps its container until the controller stops it.
pub fn reconcile(desired: &[AllocId], observed: &[ObservedContainer]) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut by_alloc: BTreeMap<AllocId, Vec<&ObservedContainer>> = BTreeMap::new();
    for c in observed {
        by_alloc.entry(c.alloc).or_default().push(c);
    }
    for (alloc, cs) in &by_alloc {
        if !desired.contains(alloc) {
            for c in cs {
                actions.push(Action::Remove {
                    container: c.id.clone(),
                    alloc: *alloc,
                });
            }
            continue;
        }
        // One container per allocation: keep the most alive, remove the others.
        let mut cs = cs.clone();
        cs.sort_by_key(|c| (rank(&c.state), c.id.clone()));
        for extra in &cs[1..] {
            actions.push(Action::Remove {
                container: extra.id.clone(),
                alloc: *alloc,
            });
        }
        if cs[0].state == ContainerState::Created {
            actions.push(Action::Start {
                container: cs[0].id.clone(),
                alloc: *alloc,
            });
        }
    }
    for alloc in desired {
        if !by_alloc.contains_key(alloc) {
            actions.push(Action::Run { alloc: *alloc });
        }
    }
    actions
}

fn rank(s: &ContainerState) -> u8 {
    match s {
        ContainerState::Running => 0,
        ContainerState::Restarting => 1,
        ContainerState::Created => 2,
        ContainerState::Exited(_) => 3,
    }
}

/// The allocations that should run on this node: desired `Run` and their service known.
pub fn desired_here(
    allocs: &HashMap<AllocId, Allocation>,
    services: &HashMap<String, Service>,
) -> Vec<AllocId> {
    let mut v: Vec<AllocId> = allocs
        .values()
        .filter(|a| a.desired == Desired::Run && services.contains_key(&a.service))
        .map(|a| a.id)
        .collect();
    v.sort();
    v
}

/// A failure reason as reported: at most the controller's `MAX_REASON_LEN` bytes (cut at a
/// character boundary, marked with `…`), so a long error chain is not refused.
pub fn shorten(reason: &str) -> String {
    use gantry_controller::limits::MAX_REASON_LEN;
    if reason.len() <= MAX_REASON_LEN {
        return reason.to_string();
    }
    let mut end = MAX_REASON_LEN - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// What to report: for every allocation of this node whose observed status (or container
/// id) differs from what the containers show. `failures` are allocations whose container
/// could not be made (the reason); `pulling` are allocations waiting for a pull of their
/// image; an allocation told to stop whose container is gone is reported exited once, with
/// the last exit code seen (`exits`).
pub fn reports(
    allocs: &HashMap<AllocId, Allocation>,
    observed: &[ObservedContainer],
    failures: &HashMap<AllocId, String>,
    exits: &HashMap<AllocId, i32>,
    pulling: &HashSet<AllocId>,
) -> Vec<AllocReport> {
    let mut best: HashMap<AllocId, &ObservedContainer> = HashMap::new();
    for c in observed {
        let e = best.entry(c.alloc).or_insert(c);
        if rank(&c.state) < rank(&e.state) {
            *e = c;
        }
    }
    let mut out = Vec::new();
    let mut ids: Vec<&AllocId> = allocs.keys().collect();
    ids.sort();
    for id in ids {
        let a = &allocs[id];
        let (now, container) = match best.get(id) {
            Some(c) => (
                match c.state {
                    ContainerState::Created => Observed::Pending,
                    ContainerState::Running | ContainerState::Restarting => Observed::Running,
                    ContainerState::Exited(code) => Observed::Exited(code),
                },
                Some(c.id.clone()),
            ),
            None => match (a.desired, failures.get(id)) {
                (Desired::Run, _) if pulling.contains(id) => (Observed::Pulling, None),
                (Desired::Run, Some(reason)) => (Observed::Failed(shorten(reason)), None),
                (Desired::Run, None) => (Observed::Pending, None),
                (Desired::Stop, _) => {
                    if a.observed.is_terminal() {
                        continue;
                    }
                    (Observed::Exited(exits.get(id).copied().unwrap_or(0)), None)
                }
            },
        };
        let container_changed = container.is_some() && container != a.container;
        if now != a.observed || container_changed {
            out.push(AllocReport {
                id: *id,
                observed: now,
                container,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_controller::state::{Resources, ServiceSpec};

    fn c(id: &str, alloc: AllocId, state: ContainerState) -> ObservedContainer {
        ObservedContainer {
            id: id.into(),
            alloc,
            state,
        }
    }

    fn alloc(id: AllocId, desired: Desired, observed: Observed) -> Allocation {
        Allocation {
            id,
            service: "web".into(),
            version: 1,
            node: 1,
            resources: Resources::default(),
            desired,
            observed,
            container: None,
            ports: vec![],
            history: vec![],
            modify_index: 1,
            address: None,
        }
    }

    #[test]
    fn missing_containers_are_run_and_unwanted_ones_removed() {
        let observed = vec![
            c("a", 1, ContainerState::Running),
            c("b", 2, ContainerState::Running),
        ];
        let acts = reconcile(&[1, 3], &observed);
        assert_eq!(
            acts,
            vec![
                Action::Remove {
                    container: "b".into(),
                    alloc: 2
                },
                Action::Run { alloc: 3 },
            ]
        );
    }

    #[test]
    fn converged_state_yields_nothing_and_exited_containers_are_left_to_their_policy() {
        let observed = vec![
            c("a", 1, ContainerState::Running),
            c("b", 2, ContainerState::Exited(0)),
            c("r", 3, ContainerState::Restarting),
        ];
        assert!(reconcile(&[1, 2, 3], &observed).is_empty());
    }

    #[test]
    fn created_is_started_and_duplicates_keep_the_most_alive() {
        let observed = vec![
            c("x", 1, ContainerState::Exited(1)),
            c("y", 1, ContainerState::Running),
            c("z", 2, ContainerState::Created),
        ];
        let acts = reconcile(&[1, 2], &observed);
        assert_eq!(
            acts,
            vec![
                Action::Remove {
                    container: "x".into(),
                    alloc: 1
                },
                Action::Start {
                    container: "z".into(),
                    alloc: 2
                },
            ]
        );
    }

    #[test]
    fn no_desired_allocations_removes_every_container_of_ours() {
        let observed = vec![c("a", 7, ContainerState::Running)];
        assert_eq!(
            reconcile(&[], &observed),
            vec![Action::Remove {
                container: "a".into(),
                alloc: 7
            }]
        );
    }

    #[test]
    fn desired_here_needs_run_and_a_known_service() {
        let mut allocs = HashMap::new();
        allocs.insert(1, alloc(1, Desired::Run, Observed::Pending));
        allocs.insert(2, alloc(2, Desired::Stop, Observed::Running));
        let mut other = alloc(3, Desired::Run, Observed::Pending);
        other.service = "gone".into();
        allocs.insert(3, other);
        let mut services = HashMap::new();
        services.insert(
            "web".to_string(),
            Service {
                name: "web".into(),
                spec: ServiceSpec::default(),
                version: 1,
                modify_index: 1,
            },
        );
        assert_eq!(desired_here(&allocs, &services), vec![1]);
    }

    #[test]
    fn long_reasons_are_shortened_to_the_limit() {
        use gantry_controller::limits::MAX_REASON_LEN;
        let long = "é".repeat(MAX_REASON_LEN);
        let short = shorten(&long);
        assert!(short.len() <= MAX_REASON_LEN, "{}", short.len());
        assert!(short.ends_with('…'));
        assert_eq!(shorten("pull failed"), "pull failed");
    }

    #[test]
    fn reports_only_what_changed() {
        let mut allocs = HashMap::new();
        allocs.insert(1, alloc(1, Desired::Run, Observed::Pending)); // now running
        let mut same = alloc(2, Desired::Run, Observed::Running);
        same.container = Some("b".into());
        allocs.insert(2, same); // unchanged
        allocs.insert(3, alloc(3, Desired::Run, Observed::Pending)); // failed to create
        allocs.insert(4, alloc(4, Desired::Stop, Observed::Running)); // removed
        allocs.insert(5, alloc(5, Desired::Stop, Observed::Lost)); // already terminal
        allocs.insert(6, alloc(6, Desired::Run, Observed::Running)); // exited
        allocs.insert(7, alloc(7, Desired::Run, Observed::Pending)); // its image is pulled
        let mut pulled = alloc(8, Desired::Run, Observed::Pulling);
        pulled.container = None;
        allocs.insert(8, pulled); // still pulling: unchanged
        let observed = vec![
            c("a", 1, ContainerState::Running),
            c("b", 2, ContainerState::Running),
            c("f", 6, ContainerState::Exited(3)),
        ];
        let failures: HashMap<AllocId, String> = [(3, "no such image: nope".to_string())].into();
        let exits: HashMap<AllocId, i32> = [(4, 137)].into();
        let pulling: HashSet<AllocId> = [7, 8].into();
        let r = reports(&allocs, &observed, &failures, &exits, &pulling);
        let got: Vec<(AllocId, Observed, Option<String>)> = r
            .into_iter()
            .map(|r| (r.id, r.observed, r.container))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Observed::Running, Some("a".into())),
                (3, Observed::Failed("no such image: nope".into()), None),
                (4, Observed::Exited(137), None),
                (6, Observed::Exited(3), Some("f".into())),
                (7, Observed::Pulling, None),
            ]
        );
    }
}

//! Reconcile, per service: a pure function from (the service, its allocations that should
//! run, how each node stands) to buckets — how many allocations to place, which to stop
//! and why. Nomad's reconciler is the anchor; gantry's rules:
//!
//! - **ok**: on a ready node that satisfies the constraints, at the current version
//!   (an allocation that finished for good under its restart policy also keeps its slot);
//! - **lost** / **failed**: its node is down or gone, or it could not run → stop it, and
//!   place a replacement at once (nothing left to keep serving);
//! - **outdated**: on a draining node, on a node that no longer satisfies the constraints
//!   (a migration), or at an older version (an update) → make-before-break: at most
//!   `max_parallel` replacements in flight, and an outdated allocation that runs is stopped
//!   only once enough replacements *serve* ([`serving`]: run, and for a service with
//!   published endpoints, are in the routing mesh). Outdated allocations that do not run
//!   serve nothing and are stopped at once.
//!
//! Invariant (property-tested in `tests.rs`): after a plan, the allocations that should run
//! never exceed `replicas + max_parallel` (a service that shrinks in the middle of a move
//! cancels replacements still in flight), and the running ones never drop below what ran
//! before unless the service shrank.

use crate::state::{AllocId, Allocation, NodeId, Observed, RestartPolicy, Service};

/// How the node of an existing allocation stands for its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFit {
    /// Ready and satisfying the service's constraints.
    Fits,
    /// Ready but no longer satisfying the constraints, or draining: move off it.
    Move,
    /// Down or unknown: what ran there is lost.
    Gone,
}

/// Why an allocation is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// More allocations than replicas.
    Excess,
    /// Its node is down or gone.
    Lost,
    /// It failed to run; a replacement goes elsewhere.
    Failed,
    /// Replaced by an allocation of the current version or on a fitting node.
    Replaced,
}

/// What reconcile decided for one service.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Buckets {
    /// New allocations to place in this evaluation.
    pub place: u32,
    /// Allocations to stop.
    pub stop: Vec<(AllocId, StopReason)>,
    /// Outdated allocations still serving (they wait for their replacements).
    pub outdated_running: u32,
}

fn done_for_good(svc: &Service, observed: &Observed) -> bool {
    matches!(
        (svc.spec.restart, observed),
        (RestartPolicy::Never, Observed::Exited(_))
            | (RestartPolicy::OnFailure, Observed::Exited(0))
    )
}

/// Whether an allocation serves: it runs (or finished for good) and, for a service with
/// published endpoints, it is in the routing mesh — its address is recorded, which the
/// agent's readiness gate does only once its endpoint ports accept. Until a replacement
/// serves, the allocation it replaces keeps running and stays in the mesh (a migration or
/// update never leaves an endpoint with no backend).
pub fn serving(svc: &Service, a: &Allocation) -> bool {
    done_for_good(svc, &a.observed)
        || (a.observed == Observed::Running
            && (svc.spec.endpoints.is_empty() || a.address.is_some()))
}

/// Decide one service. `allocs` are the service's allocations whose desired status is
/// `Run`, in any order; `fit` says how each one's node stands.
pub fn reconcile(
    svc: &Service,
    allocs: &[&Allocation],
    mut fit: impl FnMut(NodeId) -> NodeFit,
) -> Buckets {
    let replicas = svc.spec.replicas as usize;
    let max_parallel = svc.spec.update.max_parallel.max(1) as usize;
    let mut sorted: Vec<&Allocation> = allocs.to_vec();
    sorted.sort_by_key(|a| a.id);

    let mut out = Buckets::default();
    let mut ok: Vec<&Allocation> = Vec::new();
    let mut outdated_running: Vec<&Allocation> = Vec::new();
    for a in sorted {
        let node_fit = fit(a.node);
        match &a.observed {
            Observed::Lost => out.stop.push((a.id, StopReason::Lost)),
            Observed::Failed(_) => out.stop.push((a.id, StopReason::Failed)),
            _ if node_fit == NodeFit::Gone => out.stop.push((a.id, StopReason::Lost)),
            o if done_for_good(svc, o) => ok.push(a),
            o => {
                if node_fit == NodeFit::Fits && a.version >= svc.version {
                    ok.push(a);
                } else if *o == Observed::Running {
                    outdated_running.push(a);
                } else {
                    // Outdated and not serving: nothing to keep.
                    out.stop.push((a.id, StopReason::Replaced));
                }
            }
        }
    }

    if ok.len() > replicas {
        // Shrink: stop what does not run first, then the newest.
        let mut extra: Vec<&Allocation> = ok.clone();
        extra.sort_by_key(|a| (a.observed == Observed::Running, std::cmp::Reverse(a.id)));
        for a in extra.into_iter().take(ok.len() - replicas) {
            out.stop.push((a.id, StopReason::Excess));
        }
        for a in outdated_running {
            out.stop.push((a.id, StopReason::Replaced));
        }
        return out;
    }

    let serves = |a: &Allocation| serving(svc, a);
    let running_ok = ok.iter().filter(|a| serves(a)).count();
    // Keep serving: outdated allocations are stopped only while the running ones still
    // reach the replica count without them.
    let stoppable = (running_ok + outdated_running.len()).saturating_sub(replicas);
    let stop_outdated = stoppable.min(outdated_running.len());
    for a in outdated_running.iter().take(stop_outdated) {
        out.stop.push((a.id, StopReason::Replaced));
    }
    let outdated_kept = outdated_running.len() - stop_outdated;
    out.outdated_running = outdated_kept as u32;

    // The service shrank in the middle of a move: replacements still in flight beyond
    // replicas + surge are cancelled (they serve nothing yet; the old ones still do).
    let excess = (ok.len() + outdated_kept).saturating_sub(replicas + max_parallel);
    if excess > 0 {
        let mut pending: Vec<&Allocation> = ok.iter().copied().filter(|a| !serves(a)).collect();
        pending.sort_by_key(|a| std::cmp::Reverse(a.id));
        let cancel: Vec<AllocId> = pending.iter().take(excess).map(|a| a.id).collect();
        for id in &cancel {
            out.stop.push((*id, StopReason::Excess));
        }
        ok.retain(|a| !cancel.contains(&a.id));
    }
    let in_flight = ok.len() - running_ok;

    let need = replicas - ok.len();
    let covered = need.min(outdated_kept);
    let fresh = need - covered;
    let budget = max_parallel.saturating_sub(in_flight);
    out.place = (fresh + covered.min(budget)) as u32;
    out
}

//! After the faults stop, desired and observed converge within a bound: every service has
//! exactly its replicas running at its current version, and every member has applied the
//! same state. The caller polls [`check`] until it is empty or the bound has passed, and
//! reports what is left.

use super::Violation;
use gantry_controller::state::{Desired, Observed, State, StateImage};

pub const NAME: &str = "convergence";

/// What is not converged in `state` (empty: converged).
pub fn check(state: &State) -> Vec<Violation> {
    let mut out = Vec::new();
    for svc in state.services() {
        let (mut current_running, mut other) = (0u32, 0u32);
        for a in state.allocations_of(&svc.name) {
            if a.desired != Desired::Run {
                continue;
            }
            if a.version == svc.version && a.observed == Observed::Running {
                current_running += 1;
            } else {
                other += 1;
            }
        }
        if current_running != svc.spec.replicas || other > 0 {
            out.push(Violation::new(
                NAME,
                format!(
                    "{}: {current_running}/{} running at version {}, {other} other",
                    svc.name, svc.spec.replicas, svc.version
                ),
            ));
        }
    }
    out
}

/// Do the members' applied states agree? `images`: (member, applied index, state).
pub fn check_members(images: &[(u64, u64, StateImage)]) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some((first, idx0, img0)) = images.first() {
        for (m, idx, img) in &images[1..] {
            if idx != idx0 || img != img0 {
                out.push(Violation::new(
                    NAME,
                    format!(
                        "member {m} (applied {idx}) differs from member {first} (applied {idx0})"
                    ),
                ));
            }
        }
    }
    out
}

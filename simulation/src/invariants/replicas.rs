//! Never more replicas than the spec plus the surge: for every service, the allocations
//! that should run, and those observed running, number at most `replicas + max_parallel`
//! (the rolling update's surge).

use super::Violation;
use gantry_controller::state::{Desired, Observed, State};

pub const NAME: &str = "replicas";

pub fn check(state: &State) -> Vec<Violation> {
    let mut out = Vec::new();
    for svc in state.services() {
        let limit = svc.spec.replicas as usize + svc.spec.update.max_parallel.max(1) as usize;
        let (mut desired, mut running) = (0, 0);
        for a in state.allocations_of(&svc.name) {
            if a.desired == Desired::Run {
                desired += 1;
                if a.observed == Observed::Running {
                    running += 1;
                }
            }
        }
        if desired > limit || running > limit {
            out.push(Violation::new(
                NAME,
                format!(
                    "{}: {desired} should run, {running} running > {} replicas + {} surge",
                    svc.name, svc.spec.replicas, svc.spec.update.max_parallel
                ),
            ));
        }
    }
    out
}

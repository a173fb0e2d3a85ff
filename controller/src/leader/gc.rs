//! Allocation garbage collection: which finished allocations the leader forgets.
//!
//! An allocation is **finished** when it is told to stop and nothing of it runs any more
//! (desired `Stop`, observed exited, failed or lost). Finished allocations of a removed
//! service are all purged; a live service keeps its newest [`GcConfig::keep_per_service`]
//! finished ones (what `gantry service ps` shows of its past: the failed pull, the old
//! version) and the older ones are purged. Pure: the leader commits the result as one
//! `PurgeAllocations`.

use crate::state::{AllocId, Allocation, Desired, State};
use std::collections::BTreeMap;

/// Tunables of allocation GC.
#[derive(Debug, Clone, Copy)]
pub struct GcConfig {
    /// Finished allocations kept per live service (the newest ones).
    pub keep_per_service: usize,
    /// Most allocations purged by one command (bounds the Raft entry).
    pub max_batch: usize,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            keep_per_service: 5,
            max_batch: 1000,
        }
    }
}

fn finished(a: &Allocation) -> bool {
    a.desired == Desired::Stop && a.observed.is_terminal()
}

/// The finished allocations to purge, lowest id first.
pub fn purgeable(state: &State, cfg: GcConfig) -> Vec<AllocId> {
    let mut by_service: BTreeMap<&str, Vec<AllocId>> = BTreeMap::new();
    for a in state.allocations().filter(|a| finished(a)) {
        by_service.entry(&a.service).or_default().push(a.id);
    }
    let mut out = Vec::new();
    for (svc, mut ids) in by_service {
        ids.sort_unstable();
        let keep = if state.service(svc).is_some() {
            cfg.keep_per_service
        } else {
            0
        };
        let n = ids.len().saturating_sub(keep);
        out.extend_from_slice(&ids[..n]);
    }
    out.sort_unstable();
    out.truncate(cfg.max_batch);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AllocReport, Command, Observed, Placement, Reply, Resources, ServiceSpec};

    fn state_with(allocs: usize) -> (State, u64, Vec<AllocId>) {
        let mut s = State::new();
        let mut idx = 1;
        let mut apply = |s: &mut State, cmd: Command| {
            idx += 1;
            s.apply(idx, &cmd).0.expect("command applies")
        };
        let node = match apply(
            &mut s,
            Command::RegisterNode {
                name: "n1".into(),
                address: "127.0.0.1:1".into(),
                labels: Default::default(),
                capacity: Resources {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                    pids: 1000,
                },
                allocatable: Resources {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                    pids: 1000,
                },
                api: None,
            },
        ) {
            Reply::NodeRegistered { id } => id,
            r => panic!("{r:?}"),
        };
        for name in ["web", "db"] {
            apply(
                &mut s,
                Command::UpsertService {
                    name: name.into(),
                    spec: ServiceSpec {
                        image: "busybox".into(),
                        replicas: 1,
                        ..Default::default()
                    },
                    expected_index: None,
                },
            );
        }
        let placements = (0..allocs)
            .map(|i| Placement {
                service: if i % 2 == 0 { "web" } else { "db" }.into(),
                version: 1,
                node,
                ports: vec![],
            })
            .collect();
        let ids = match apply(
            &mut s,
            Command::ApplyPlan {
                placements,
                stops: vec![],
            },
        ) {
            Reply::PlanApplied { allocations } => allocations,
            r => panic!("{r:?}"),
        };
        (s, idx, ids)
    }

    /// Node 1 reports the allocations exited.
    fn report_exited(s: &mut State, idx: u64, ids: &[AllocId]) {
        let batch = ids
            .iter()
            .map(|id| AllocReport {
                id: *id,
                observed: Observed::Exited(0),
                container: None,
            })
            .collect();
        s.apply(idx, &Command::ReportAllocStatus { node: 1, batch })
            .0
            .unwrap();
    }

    #[test]
    fn only_finished_allocations_beyond_the_kept_ones_are_purged() {
        let (mut s, mut idx, ids) = state_with(16);
        // Every allocation but the last two of each service is stopped; all but one of
        // the stopped ones have finished.
        let stop: Vec<AllocId> = ids[..12].to_vec();
        idx += 1;
        s.apply(
            idx,
            &Command::ApplyPlan {
                placements: vec![],
                stops: stop.clone(),
            },
        )
        .0
        .unwrap();
        idx += 1;
        report_exited(&mut s, idx, &stop[1..]);
        let cfg = GcConfig {
            keep_per_service: 2,
            max_batch: 100,
        };
        let purge = purgeable(&s, cfg);
        // web: stopped+finished are ids[2,4,6,8,10] (ids[0] still runs) → keep the newest
        // two; db: ids[1,3,5,7,9,11] → keep two.
        let web: Vec<AllocId> = vec![ids[2], ids[4], ids[6]];
        let db: Vec<AllocId> = vec![ids[1], ids[3], ids[5], ids[7]];
        let mut want: Vec<AllocId> = web.into_iter().chain(db).collect();
        want.sort_unstable();
        assert_eq!(purge, want);
        // The state accepts it (every id finished), and nothing running is touched.
        idx += 1;
        s.apply(idx, &Command::PurgeAllocations { ids: purge })
            .0
            .unwrap();
        assert!(
            s.allocation(ids[0]).is_some(),
            "a stopping allocation was purged"
        );
        assert!(s.allocation(ids[15]).is_some());
        assert!(purgeable(&s, cfg).is_empty(), "GC is idempotent");

        // A removed service loses every finished allocation; the batch bound holds.
        idx += 1;
        s.apply(idx, &Command::RemoveService { name: "db".into() })
            .0
            .unwrap();
        let db_left: Vec<AllocId> = s
            .allocations()
            .filter(|a| a.service == "db")
            .map(|a| a.id)
            .collect();
        idx += 1;
        report_exited(&mut s, idx, &db_left);
        let purge = purgeable(&s, cfg);
        assert_eq!(purge.len(), db_left.len());
        assert!(purge.iter().all(|id| db_left.contains(id)));
        let bounded = purgeable(
            &s,
            GcConfig {
                keep_per_service: 2,
                max_batch: 1,
            },
        );
        assert_eq!(bounded, vec![purge[0]]);
    }
}

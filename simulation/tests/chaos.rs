//! A few chaos seeds: partitions, loss, delay, crashes, leader kills and silent agents
//! against the real controller code; every invariant must hold and the cluster converge.

use gantry_sim::chaos::{self, ChaosConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_keep_the_invariants() {
    for seed in [1, 2, 3] {
        let mut cfg = ChaosConfig::new(seed);
        cfg.fault_time = Duration::from_secs(3);
        cfg.convergence_bound = Duration::from_secs(20);
        let r = chaos::run(cfg).await.expect("chaos run");
        assert!(
            r.violations.is_empty(),
            "seed {seed} (replay: gantry-sim chaos --reproduce {seed}): {:#?}\nschedule: {:?}",
            r.violations,
            r.schedule
        );
        assert!(r.converged_after_seconds.is_some(), "seed {seed}");
        assert!(
            r.writes_acknowledged > 0,
            "seed {seed}: no write acknowledged at all"
        );
        assert!(r.leader_terms >= 1);
    }
}

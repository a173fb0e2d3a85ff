//! Chaos seeds: partitions, loss, delay, crashes, leader kills and silent agents against
//! the real controller code; every invariant must hold and the cluster converge.
//! Deterministic runs (memory stores, virtual time): the same seed gives the same trace,
//! and two hundred seeds run here. One seed also runs on the real sled stores in real time.

use gantry_sim::chaos::{self, ChaosConfig, ChaosReport, TraceEvent};
use gantry_sim::cluster::Store;
use std::time::Duration;

fn run(seed: u64, store: Store) -> ChaosReport {
    let mut cfg = ChaosConfig::new(seed);
    cfg.store = store;
    chaos::run_seed(cfg).expect("chaos run")
}

fn assert_kept(r: &ChaosReport) {
    let seed = r.seed;
    assert!(
        r.violations.is_empty(),
        "seed {seed} (replay: gantry-sim chaos --reproduce {seed}): {:#?}\nschedule: {:?}",
        r.violations,
        r.schedule
    );
    assert!(
        r.converged_after_seconds.is_some(),
        "seed {seed}: not converged"
    );
    assert!(
        r.writes_acknowledged > 0,
        "seed {seed}: no write acknowledged at all"
    );
    assert!(r.leader_terms >= 1, "seed {seed}: no leader seen");
}

#[test]
fn a_seed_replays_exactly() {
    let a = run(7, Store::Memory);
    let b = run(7, Store::Memory);
    assert_kept(&a);
    // The trace is not trivial: faults, leaders, acknowledged writes, every member's state.
    let count = |f: fn(&TraceEvent) -> bool| a.trace.events.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(|e| matches!(e, TraceEvent::Fault { .. })),
        a.schedule.len()
    );
    assert!(count(|e| matches!(e, TraceEvent::Leader { .. })) >= 1);
    assert_eq!(
        count(|e| matches!(e, TraceEvent::Ack { .. })),
        a.writes_acknowledged
    );
    assert_eq!(count(|e| matches!(e, TraceEvent::Final { .. })), 3);
    // Same seed: the same events at the same virtual times, the same final states.
    if a.trace != b.trace {
        let first = a
            .trace
            .events
            .iter()
            .zip(&b.trace.events)
            .position(|(x, y)| x != y);
        panic!(
            "seed 7 ran twice with different traces ({} and {} events), first difference at \
             event {first:?}: {:?} vs {:?}",
            a.trace.events.len(),
            b.trace.events.len(),
            first.map(|i| &a.trace.events[i]),
            first.map(|i| &b.trace.events[i]),
        );
    }
    assert_eq!(a.trace_digest, b.trace_digest);
    assert_eq!(a.simulated_seconds, b.simulated_seconds);
    // Another seed: another run.
    let c = run(8, Store::Memory);
    assert_ne!(a.trace_digest, c.trace_digest);
}

fn seeds_keep_the_invariants(seeds: std::ops::RangeInclusive<u64>) {
    let mut digests = std::collections::BTreeSet::new();
    for seed in seeds.clone() {
        let r = run(seed, Store::Memory);
        assert_kept(&r);
        digests.insert(r.trace_digest);
    }
    assert_eq!(
        digests.len(),
        seeds.count(),
        "every seed its own run: {digests:?}"
    );
}

// Two hundred seeds, in two tests so that the two test threads share them.
#[test]
fn seeds_1_to_100_keep_every_invariant() {
    seeds_keep_the_invariants(1..=100);
}

#[test]
fn seeds_101_to_200_keep_every_invariant() {
    seeds_keep_the_invariants(101..=200);
}

#[test]
fn sled_stores_under_faults_keep_the_invariants() {
    // The real durable store: crashes restart from sled data dirs (real time, not
    // deterministic).
    let mut cfg = ChaosConfig::new(1);
    cfg.store = Store::Sled;
    cfg.fault_time = Duration::from_secs(3);
    let r = chaos::run_seed(cfg).expect("chaos run");
    assert_kept(&r);
}

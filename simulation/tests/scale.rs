//! A small scale run through the real scheduler, plan verification, state machine and a
//! three-member Raft on sled: everything is placed, failures are replaced, a rolling
//! update completes, and the invariants hold.

use gantry_sim::cluster::Store;
use gantry_sim::scale::{self, Phase, ScaleConfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_places_everything_and_recovers() {
    small_fleet(Store::Sled).await;
}

/// The same run on the in-memory stores (what `--store memory` measures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_on_the_in_memory_stores() {
    small_fleet(Store::Memory).await;
}

async fn small_fleet(store: Store) {
    let cfg = ScaleConfig {
        nodes: 200,
        services: 50,
        replicas: 40,
        phases: vec![Phase::NodeFail, Phase::RollingUpdate],
        csv: Some(std::env::temp_dir().join(format!("gantry-sim-test-{}.csv", std::process::id()))),
        plots: None,
        concurrency: 32,
        services_per_eval: 5,
        phase_timeout: Duration::from_secs(60),
        trace_rounds: 0,
        trace_seed: 1,
        store,
        progress: false,
    };
    let csv = cfg.csv.clone().unwrap();
    let r = scale::run(cfg).await.expect("scale run");
    let _ = std::fs::remove_file(&csv).map(|_| ());
    assert!(r.violations.is_empty(), "violations: {:?}", r.violations);
    let want = match store {
        Store::Sled => "sled",
        Store::Memory => "in memory",
    };
    assert!(r.store.starts_with(want), "{}", r.store);
    let place = &r.phases[0];
    assert_eq!(place.phase, "place");
    assert_eq!(place.placements, 2000, "{place:?}");
    assert!(place.unconverged_services.is_empty(), "{place:?}");
    assert!(place.evaluations >= 10, "50 services, 5 per evaluation");

    let fail = &r.phases[1];
    assert_eq!(fail.nodes_failed, 20, "every tenth node");
    assert!(fail.allocations_lost > 0);
    assert_eq!(
        fail.placements, fail.allocations_lost,
        "each lost one replaced once"
    );
    assert!(fail.unconverged_services.is_empty(), "{fail:?}");

    let update = &r.phases[2];
    assert_eq!(
        update.placements, 2000,
        "every replica replaced by the new version"
    );
    assert_eq!(update.stops, 2000, "every old replica stopped");
    assert!(update.unconverged_services.is_empty(), "{update:?}");

    assert_eq!(r.quality.allocations_running, 2000);
    assert!(r.quality.nodes_used >= r.quality.nodes_lower_bound);
    assert!(r.quality.cpu_utilisation_all_nodes > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_plots_record_placements_over_time() {
    let path = std::env::temp_dir().join(format!("gantry-sim-csv-{}.csv", std::process::id()));
    let plots = tempfile::tempdir().unwrap();
    let cfg = ScaleConfig {
        nodes: 60,
        services: 6,
        replicas: 10,
        phases: vec![],
        csv: Some(path.clone()),
        plots: Some(plots.path().join("out")),
        concurrency: 16,
        services_per_eval: 1,
        phase_timeout: Duration::from_secs(60),
        trace_rounds: 0,
        trace_seed: 1,
        store: Store::Sled,
        progress: false,
    };
    let r = scale::run(cfg).await.expect("scale run");
    let text = std::fs::read_to_string(&path).expect("csv written");
    let _ = std::fs::remove_file(&path);
    assert_eq!(r.phases[0].placements, 60);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("phase,t_ms,placements_in_phase,running_total")
    );
    let rows: Vec<Vec<u64>> = lines
        .map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        rows.len() as u64,
        r.phases[0].plans_committed + 1,
        "a row per plan, one at the end"
    );
    assert!(rows
        .windows(2)
        .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]));
    assert_eq!(rows.last().unwrap()[1..], [60, 60]);

    // the plots directory: the same timeline, and one utilisation row per node
    let out = plots.path().join("out");
    assert_eq!(
        std::fs::read_to_string(out.join("placements.csv")).unwrap(),
        text
    );
    let svg = std::fs::read_to_string(out.join("placements.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("place"),
        "{svg:.200}"
    );
    let util = std::fs::read_to_string(out.join("utilisation.csv")).unwrap();
    let cpu: Vec<f64> = util
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(cpu.len(), 60, "one row per ready node");
    assert!(cpu.windows(2).all(|w| w[0] >= w[1]), "sorted: {cpu:?}");
    assert!(cpu[0] > 0.0 && cpu.iter().all(|c| *c <= 1.0), "{cpu:?}");
    assert!(out.join("utilisation.svg").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_rounds_churn_services_and_converge() {
    let cfg = ScaleConfig {
        nodes: 120,
        services: 20,
        replicas: 10,
        phases: vec![Phase::Trace],
        csv: None,
        plots: None,
        concurrency: 16,
        services_per_eval: 4,
        phase_timeout: Duration::from_secs(60),
        trace_rounds: 4,
        trace_seed: 7,
        store: Store::Sled,
        progress: false,
    };
    let r = scale::run(cfg).await.expect("scale run");
    assert!(r.violations.is_empty(), "violations: {:?}", r.violations);
    let names: Vec<&str> = r.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(names, ["place", "trace-1", "trace-2", "trace-3", "trace-4"]);
    for p in &r.phases[1..] {
        assert!(p.placements > 0, "two services arrive every round: {p:?}");
        assert!(p.unconverged_services.is_empty(), "{p:?}");
    }
    // the base services are all there, plus whatever trace services are alive
    assert!(r.quality.allocations_running >= 200, "{:?}", r.quality);
}

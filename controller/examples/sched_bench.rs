//! Scheduler throughput on a large view: `cargo run --release -p gantry-controller
//! --example sched_bench -- [NODES] [SERVICES] [REPLICAS]` (defaults 10000 100 1000).
//! Builds the state through real commands, then times one evaluation of every service
//! (planning only, one thread), and the leader's re-verification of the plan. Then applies
//! that plan, takes every tenth node down, and times evaluating every service again in
//! groups of ten (as `gantry-sim scale` does after a node failure): the replacements.

use gantry_controller::plan_apply;
use gantry_controller::scheduler::Scheduler;
use gantry_controller::state::{Command, Resources, ServiceSpec, State};
use std::time::Instant;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("numeric arguments: NODES SERVICES REPLICAS")
        })
        .collect();
    let nodes = *args.first().unwrap_or(&10_000);
    let services = *args.get(1).unwrap_or(&100);
    let replicas = *args.get(2).unwrap_or(&1_000);
    let envs = ["dev", "qa", "prod"];
    let sites = ["onprem", "cloud", "edge", "dr"];
    let mut state = State::new();
    let mut index = 0;
    let mut apply = |state: &mut State, cmd: Command| {
        index += 1;
        state.apply(index, &cmd).0.expect("command accepted");
    };
    for i in 0..nodes {
        // Heterogeneous capacity: 4, 8 or 16 cores; 8, 16 or 32 GiB.
        let size = 1 << (i % 3);
        let res = Resources {
            cpu_millis: 4000 * size,
            memory_bytes: 8 * size * (1 << 30),
            pids: 100_000,
        };
        apply(
            &mut state,
            Command::RegisterNode {
                name: format!("node-{i}"),
                address: format!("10.0.{}.{}:7070", i / 250, i % 250),
                labels: [
                    ("env".to_string(), envs[(i % 3) as usize].to_string()),
                    ("site".to_string(), sites[(i % 4) as usize].to_string()),
                ]
                .into_iter()
                .collect(),
                capacity: res,
                allocatable: res,
                api: None,
            },
        );
    }
    for s in 0..services {
        apply(
            &mut state,
            Command::UpsertService {
                name: format!("svc-{s}"),
                spec: ServiceSpec {
                    image: "app:1".into(),
                    replicas: replicas as u32,
                    resources: Resources {
                        cpu_millis: 50,
                        memory_bytes: 64 << 20,
                        pids: 10,
                    },
                    constraints: vec![format!("env!={}", envs[(s % 3) as usize]).parse().unwrap()],
                    ..Default::default()
                },
                expected_index: None,
            },
        );
    }
    let sched = Scheduler::default();
    let t = Instant::now();
    let plan = sched.evaluate_all(&state);
    let plan_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let verified = plan_apply::verify(&state, &plan);
    let verify_s = t.elapsed().as_secs_f64();
    let placed = plan.placements.len();
    println!(
        "nodes={nodes} services={services} replicas={replicas} placed={placed} failed={} \
         plan_s={plan_s:.3} placements_per_s={:.0} verify_s={verify_s:.3} verified={}",
        plan.failures.len(),
        placed as f64 / plan_s,
        verified.placements.len()
    );

    // Node failure: apply the plan, take every tenth node down, evaluate again.
    let verified_count = verified.placements.len();
    if let Some(cmd) = verified.into_command() {
        apply(&mut state, cmd);
    }
    let down: Vec<u64> = state
        .nodes()
        .map(|n| n.id)
        .filter(|id| id % 10 == 0)
        .collect();
    for node in &down {
        apply(
            &mut state,
            Command::SetNodeStatus {
                node: *node,
                status: gantry_controller::state::NodeStatus::Down,
            },
        );
    }
    let names: Vec<String> = state.services().map(|s| s.name.clone()).collect();
    let t = Instant::now();
    let mut replaced = 0;
    for group in names.chunks(10) {
        let group: Vec<&str> = group.iter().map(String::as_str).collect();
        replaced += sched.evaluate(&state, &group).placements.len();
    }
    let refill_s = t.elapsed().as_secs_f64();
    println!(
        "node-fail: {} of {nodes} nodes down, {} of {verified_count} placements lost, \
         replaced={replaced} in groups of 10 services: refill_s={refill_s:.3} \
         placements_per_s={:.0}",
        down.len(),
        state
            .allocations()
            .filter(|a| a.desired != gantry_controller::state::Desired::Run)
            .count(),
        replaced as f64 / refill_s
    );
}

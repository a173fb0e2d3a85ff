//! Measures of a run: latency percentiles, the process's memory, and the binpack quality of
//! a state — *utilisation* (requested / allocatable, per dimension, over the nodes in use
//! and over all ready nodes) and *fragmentation* (nodes in use against a lower bound on
//! the nodes any packing needs: the fewest of the largest nodes whose summed allocatable
//! covers the total request in every dimension, ignoring constraints).

use gantry_controller::state::{Desired, NodeStatus, State};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// The `p` quantile (0..=1) of `samples` in milliseconds (nearest rank); NaN when empty.
pub fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

/// (current RSS, peak RSS) of this process in MiB, from /proc/self/status.
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quality {
    pub allocations_running: u64,
    pub nodes_ready: u64,
    pub nodes_used: u64,
    pub nodes_lower_bound: u64,
    /// nodes_used / nodes_lower_bound (1.0 is a perfect packing).
    pub fragmentation: f64,
    pub cpu_utilisation_used_nodes: f64,
    pub memory_utilisation_used_nodes: f64,
    pub cpu_utilisation_all_nodes: f64,
    pub memory_utilisation_all_nodes: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

pub fn quality(state: &State) -> Quality {
    let mut per_node: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut running = 0;
    let mut per_service: HashMap<&str, u64> = HashMap::new();
    for a in state.allocations().filter(|a| a.desired == Desired::Run) {
        running += 1;
        *per_service.entry(a.service.as_str()).or_default() += 1;
        let e = per_node.entry(a.node).or_default();
        e.0 += a.resources.cpu_millis;
        e.1 += a.resources.memory_bytes;
    }
    let (mut req_cpu, mut req_mem) = (0u64, 0u64);
    for (cpu, mem) in per_node.values() {
        req_cpu += cpu;
        req_mem += mem;
    }
    let ready: Vec<_> = state
        .nodes()
        .filter(|n| n.status == NodeStatus::Ready)
        .collect();
    let (mut all_cpu, mut all_mem, mut used_cpu, mut used_mem) = (0, 0, 0, 0);
    for n in &ready {
        all_cpu += n.allocatable.cpu_millis;
        all_mem += n.allocatable.memory_bytes;
        if per_node.contains_key(&n.id) {
            used_cpu += n.allocatable.cpu_millis;
            used_mem += n.allocatable.memory_bytes;
        }
    }
    // Lower bound: take nodes largest first until both dimensions are covered.
    let mut sizes: Vec<(u64, u64)> = ready
        .iter()
        .map(|n| (n.allocatable.cpu_millis, n.allocatable.memory_bytes))
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let (mut c, mut m, mut bound) = (0u64, 0u64, 0u64);
    for (nc, nm) in sizes {
        if c >= req_cpu && m >= req_mem {
            break;
        }
        c += nc;
        m += nm;
        bound += 1;
    }
    let bound = bound.max(per_service.values().copied().max().unwrap_or(0));
    let used = per_node.len() as u64;
    Quality {
        allocations_running: running,
        nodes_ready: ready.len() as u64,
        nodes_used: used,
        nodes_lower_bound: bound,
        fragmentation: ratio(used, bound),
        cpu_utilisation_used_nodes: ratio(req_cpu, used_cpu),
        memory_utilisation_used_nodes: ratio(req_mem, used_mem),
        cpu_utilisation_all_nodes: ratio(req_cpu, all_cpu),
        memory_utilisation_all_nodes: ratio(req_mem, all_mem),
    }
}

/// Requested / allocatable of every ready node, (cpu, memory), sorted by cpu then memory,
/// highest first: the curve of the utilisation plot.
pub fn node_utilisation(state: &State) -> Vec<(f64, f64)> {
    let mut per_node: HashMap<u64, (u64, u64)> = HashMap::new();
    for a in state.allocations().filter(|a| a.desired == Desired::Run) {
        let e = per_node.entry(a.node).or_default();
        e.0 += a.resources.cpu_millis;
        e.1 += a.resources.memory_bytes;
    }
    let mut v: Vec<(f64, f64)> = state
        .nodes()
        .filter(|n| n.status == NodeStatus::Ready)
        .map(|n| {
            let (c, m) = per_node.get(&n.id).copied().unwrap_or_default();
            (
                ratio(c, n.allocatable.cpu_millis),
                ratio(m, n.allocatable.memory_bytes),
            )
        })
        .collect();
    v.sort_unstable_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_controller::state::{Command, Placement, Resources, ServiceSpec};

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&mut v, 0.5), 51.0);
        assert_eq!(percentile_ms(&mut v, 0.99), 99.0);
        assert!(percentile_ms(&mut [], 0.5).is_nan());
    }

    #[test]
    fn quality_counts_used_nodes_against_the_bound() {
        let mut st = State::new();
        let res = |cpu| Resources {
            cpu_millis: cpu,
            memory_bytes: cpu << 20,
            pids: 100,
        };
        let mut idx = 0;
        let mut apply = |st: &mut State, cmd: Command| {
            idx += 1;
            st.apply(idx, &cmd).0.expect("accepted");
        };
        for i in 0..4 {
            apply(
                &mut st,
                Command::RegisterNode {
                    name: format!("n{i}"),
                    address: "a:1".into(),
                    labels: Default::default(),
                    capacity: res(1000),
                    allocatable: res(1000),
                    api: None,
                },
            );
        }
        apply(
            &mut st,
            Command::UpsertService {
                name: "s".into(),
                spec: ServiceSpec {
                    image: "i".into(),
                    replicas: 3,
                    resources: res(400),
                    ..Default::default()
                },
                expected_index: None,
            },
        );
        // Three replicas of 400 on three different nodes: 1200 requested fits in 2 nodes,
        // but one replica per node needs 3.
        let placements = (1..=3)
            .map(|node| Placement {
                service: "s".into(),
                version: 1,
                node,
                ports: vec![],
            })
            .collect();
        apply(
            &mut st,
            Command::ApplyPlan {
                placements,
                stops: vec![],
            },
        );
        let q = quality(&st);
        assert_eq!(q.allocations_running, 3);
        assert_eq!(q.nodes_used, 3);
        assert_eq!(q.nodes_lower_bound, 3);
        assert!((q.fragmentation - 1.0).abs() < 1e-9);
        assert!((q.cpu_utilisation_used_nodes - 0.4).abs() < 1e-9);
        assert!((q.cpu_utilisation_all_nodes - 0.3).abs() < 1e-9);
        let u = node_utilisation(&st);
        assert_eq!(u.len(), 4);
        assert!(
            (u[0].0 - 0.4).abs() < 1e-9 && (u[2].0 - 0.4).abs() < 1e-9,
            "{u:?}"
        );
        assert_eq!(u[3], (0.0, 0.0));
    }
}

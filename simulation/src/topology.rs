//! The simulated fleet and workload, generated from a few numbers (pure, deterministic):
//! nodes spread over three environments (`env=dev|qa|prod`) and four sites
//! (`site=onprem-a|onprem-b|cloud-east|cloud-west`) with heterogeneous capacity, and
//! services with constraints, spread and resource requests of a few sizes.

use gantry_controller::state::{Command, Constraint, Resources, ServiceSpec, UpdatePolicy};
use std::collections::BTreeMap;

pub const ENVS: [&str; 3] = ["dev", "qa", "prod"];
pub const SITES: [&str; 4] = ["onprem-a", "onprem-b", "cloud-east", "cloud-west"];

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Node shapes (cores, GiB) and how many of every ten nodes have each.
const SHAPES: [(u64, u64, u32); 4] = [(4, 8, 2), (8, 16, 4), (16, 32, 3), (32, 64, 1)];
/// Request shapes (cpu millis, MiB): services cycle through them.
const REQUESTS: [(u64, u64); 3] = [(20, 64), (50, 128), (100, 256)];

pub fn node_name(i: u64) -> String {
    format!("node-{i:05}")
}

pub fn service_name(s: u64) -> String {
    format!("svc-{s:04}")
}

/// The shape of node `i` (a fixed pattern over ten nodes, so any prefix is mixed).
pub fn node_resources(i: u64) -> Resources {
    let slot = (i * 7 % 10) as u32;
    let mut acc = 0;
    for (cores, gib, weight) in SHAPES {
        acc += weight;
        if slot < acc {
            return Resources {
                cpu_millis: cores * 1000,
                memory_bytes: gib * GIB,
                pids: 100_000,
            };
        }
    }
    unreachable!("SHAPES weights sum to 10")
}

pub fn node_labels(i: u64) -> BTreeMap<String, String> {
    [
        ("env".to_string(), ENVS[(i % 3) as usize].to_string()),
        ("site".to_string(), SITES[(i / 3 % 4) as usize].to_string()),
    ]
    .into_iter()
    .collect()
}

/// The command that registers node `i`.
pub fn register_node(i: u64) -> Command {
    let res = node_resources(i);
    Command::RegisterNode {
        name: node_name(i),
        address: format!("10.{}.{}.{}:7070", i >> 16, (i >> 8) & 255, i & 255),
        labels: node_labels(i),
        capacity: res,
        allocatable: res,
        api: None,
    }
}

fn constraint(s: &str) -> Constraint {
    s.parse()
        .unwrap_or_else(|e| panic!("built-in constraint {s:?}: {e}"))
}

/// The spec of service `s`: in one environment (`s % 3`); every fourth avoids one site, every fifth
/// spreads over sites; a rolling update replaces a tenth of the replicas at a time.
pub fn service_spec(s: u64, replicas: u32, image_version: u32) -> ServiceSpec {
    // Sizes cycle independently of the environment (s / 3), so every env gets every size.
    let (cpu, mib) = REQUESTS[(s / 3 % REQUESTS.len() as u64) as usize];
    let mut constraints = vec![constraint(&format!("env=={}", ENVS[(s % 3) as usize]))];
    if s % 4 == 1 {
        constraints.push(constraint(&format!(
            "site!={}",
            SITES[(s / 4 % 4) as usize]
        )));
    }
    ServiceSpec {
        image: format!("registry.local/app-{s}:{image_version}"),
        resources: Resources {
            cpu_millis: cpu,
            memory_bytes: mib * MIB,
            pids: 16,
        },
        replicas,
        constraints,
        spread: (s % 5 == 2).then(|| "site".to_string()),
        update: UpdatePolicy {
            max_parallel: (replicas / 10).max(1),
        },
        ..Default::default()
    }
}

pub fn upsert_service(s: u64, replicas: u32, image_version: u32) -> Command {
    Command::UpsertService {
        name: service_name(s),
        spec: service_spec(s, replicas, image_version),
        expected_index: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_controller::state::State;

    #[test]
    fn fleet_mixes_shapes_envs_and_sites() {
        let shapes: std::collections::BTreeSet<u64> =
            (0..10).map(|i| node_resources(i).cpu_millis).collect();
        assert_eq!(shapes.len(), 4, "every shape within ten nodes");
        let mut combos = std::collections::BTreeSet::new();
        for i in 0..12 {
            let l = node_labels(i);
            combos.insert((l["env"].clone(), l["site"].clone()));
        }
        assert_eq!(combos.len(), 12, "every env × site within twelve nodes");
    }

    #[test]
    fn every_env_gets_every_request_size() {
        let combos: std::collections::BTreeSet<(String, u64)> = (0..9)
            .map(|s| {
                let spec = service_spec(s, 1, 1);
                (
                    format!("{:?}", spec.constraints[0]),
                    spec.resources.cpu_millis,
                )
            })
            .collect();
        assert_eq!(combos.len(), 9, "{combos:?}");
    }

    #[test]
    fn generated_commands_apply() {
        let mut st = State::new();
        let mut idx = 0;
        for i in 0..30 {
            idx += 1;
            st.apply(idx, &register_node(i)).0.expect("node accepted");
        }
        for s in 0..10 {
            idx += 1;
            st.apply(idx, &upsert_service(s, 5, 1))
                .0
                .expect("service accepted");
        }
        assert_eq!(st.nodes().count(), 30);
        assert_eq!(st.services().count(), 10);
        let s1 = st.service(&service_name(1)).unwrap();
        assert_eq!(s1.spec.constraints.len(), 2, "svc 1 avoids a site");
        assert_eq!(
            st.service(&service_name(2)).unwrap().spec.spread.as_deref(),
            Some("site")
        );
    }
}

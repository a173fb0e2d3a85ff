//! Property tests of the controller's request decoders: a Write's `command_json` (any
//! bytes, and mutations of real commands) decodes to a Command or a clear error, and
//! `State::apply` of any structured command (valid or not, within or over the limits)
//! never panics: it answers Ok, or an error naming a field that left the state unchanged.
//! Bounded (a few hundred cases each) so CI runs them in seconds; `fuzz/` has the long
//! campaign.

use gantry_controller::state::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings from a small alphabet of legal and illegal characters, sometimes long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9.-]{0,12}",
        2 => "[ -~]{0,24}",
        1 => "\\PC{0,16}",
        1 => "[\u{0}\u{7}\n ,=/]{1,4}",
        1 => (0usize..3, 60usize..1200).prop_map(|(c, n)| ["a", "é", " "][c].repeat(n)),
    ]
}

fn resources() -> impl Strategy<Value = Resources> {
    (
        prop_oneof![Just(0u64), 0u64..8000, Just(u64::MAX)],
        prop_oneof![Just(0u64), 0u64..(8u64 << 30), Just(u64::MAX)],
        prop_oneof![Just(0u64), 0u64..1000, Just(u64::MAX)],
    )
        .prop_map(|(cpu_millis, memory_bytes, pids)| Resources {
            cpu_millis,
            memory_bytes,
            pids,
        })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop_oneof![
        4 => btree_map(text(), text(), 0..5),
        1 => (60usize..70).prop_map(|n| (0..n).map(|i| (format!("k{i}"), "v".into())).collect()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        text().prop_map(Op::Eq),
        text().prop_map(Op::Ne),
        vec(text(), 0..4).prop_map(Op::In),
        vec(text(), 0..70).prop_map(Op::NotIn),
        Just(Op::Exists),
        Just(Op::Absent),
    ]
}

fn constraints() -> impl Strategy<Value = Vec<Constraint>> {
    vec(
        (text(), op()).prop_map(|(key, op)| Constraint { key, op }),
        0..4,
    )
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), 1u16..100, Just(u16::MAX)]
}

fn spec() -> impl Strategy<Value = ServiceSpec> {
    (
        (
            text(),
            vec(text(), 0..3),
            vec(text(), 0..3),
            btree_map(text(), text(), 0..3),
            resources(),
            prop_oneof![0u32..5, Just(MAX_REPLICAS), Just(u32::MAX)],
        ),
        (
            constraints(),
            proptest::option::of(text()),
            vec(
                (port(), proptest::option::of(port()), protocol()).prop_map(
                    |(container, host, protocol)| PortSpec {
                        container,
                        host,
                        protocol,
                    },
                ),
                0..3,
            ),
            0u32..3,
            vec(constraints(), 0..3),
            vec(text(), 0..3),
            vec(
                (port(), port(), protocol()).prop_map(|(host, container, protocol)| PortMapping {
                    container,
                    host,
                    protocol,
                }),
                0..2,
            ),
        ),
    )
        .prop_map(
            |(
                (image, command, args, env, resources, replicas),
                (constraints, spread, ports, max_parallel, failover, networks, endpoints),
            )| ServiceSpec {
                image,
                command,
                args,
                env,
                resources,
                replicas,
                constraints,
                spread,
                ports,
                restart: RestartPolicy::Always,
                update: UpdatePolicy { max_parallel },
                failover,
                failback: false,
                restart_token: 0,
                networks,
                endpoints,
            },
        )
}

fn observed() -> impl Strategy<Value = Observed> {
    prop_oneof![
        Just(Observed::Pending),
        Just(Observed::Running),
        any::<i32>().prop_map(Observed::Exited),
        text().prop_map(Observed::Failed),
        Just(Observed::Lost),
    ]
}

/// One command of any verb; ids mostly hit the seeded objects (nodes 1-2, allocations 1-4).
fn command() -> impl Strategy<Value = Command> {
    let id = || prop_oneof![4 => 0u64..6, 1 => any::<u64>()];
    let service = || prop_oneof![Just("web".to_string()), text()];
    prop_oneof![
        (text(), text(), labels(), resources(), resources()).prop_map(
            |(name, address, labels, capacity, allocatable)| Command::RegisterNode {
                name,
                address,
                labels,
                capacity,
                allocatable,
                api: None,
            }
        ),
        (
            id(),
            prop_oneof![
                Just(NodeStatus::Ready),
                Just(NodeStatus::Down),
                Just(NodeStatus::Draining)
            ]
        )
            .prop_map(|(node, status)| Command::SetNodeStatus { node, status }),
        (id(), labels()).prop_map(|(node, labels)| Command::SetNodeLabels { node, labels }),
        (service(), spec(), proptest::option::of(id())).prop_map(|(name, spec, expected_index)| {
            Command::UpsertService {
                name,
                spec,
                expected_index,
            }
        }),
        service().prop_map(|name| Command::RemoveService { name }),
        (
            vec(
                (
                    service(),
                    0u64..3,
                    id(),
                    vec((port(), port(), protocol()), 0..2)
                )
                    .prop_map(|(service, version, node, ports)| Placement {
                        service,
                        version,
                        node,
                        ports: ports
                            .into_iter()
                            .map(|(container, host, protocol)| PortMapping {
                                container,
                                host,
                                protocol,
                            })
                            .collect(),
                    }),
                0..4
            ),
            vec(id(), 0..3)
        )
            .prop_map(|(placements, stops)| Command::ApplyPlan { placements, stops }),
        (
            id(),
            vec(
                (id(), observed(), proptest::option::of(text())).prop_map(
                    |(id, observed, container)| AllocReport {
                        id,
                        observed,
                        container,
                    }
                ),
                0..4
            )
        )
            .prop_map(|(node, batch)| Command::ReportAllocStatus { node, batch }),
        vec(id(), 0..3).prop_map(|ids| Command::PurgeAllocations { ids }),
        (
            id(),
            vec(
                (
                    id(),
                    proptest::option::of(any::<u32>().prop_map(std::net::Ipv4Addr::from))
                ),
                0..3
            )
        )
            .prop_map(|(node, addresses)| Command::SetAllocAddresses { node, addresses }),
    ]
}

fn any_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => command(),
        1 => vec(command(), 0..4).prop_map(|commands| Command::Batch { commands }),
    ]
}

/// Two ready nodes, a service with four running allocations.
fn seeded() -> State {
    let mut s = State::new();
    let res = Resources {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        pids: 1000,
    };
    let mut index = 0;
    let mut ok = |s: &mut State, cmd: Command| {
        index += 1;
        s.apply(index, &cmd).0.expect("seed command");
    };
    for n in ["n1", "n2"] {
        ok(
            &mut s,
            Command::RegisterNode {
                name: n.into(),
                address: format!("{n}:7000"),
                labels: [("site".to_string(), "a".to_string())].into(),
                capacity: res,
                allocatable: res,
                api: None,
            },
        );
    }
    ok(
        &mut s,
        Command::UpsertService {
            name: "web".into(),
            spec: ServiceSpec {
                image: "busybox".into(),
                replicas: 4,
                ..Default::default()
            },
            expected_index: None,
        },
    );
    let placements = (0..4)
        .map(|i| Placement {
            service: "web".into(),
            version: 1,
            node: 1 + i % 2,
            ports: vec![],
        })
        .collect();
    ok(
        &mut s,
        Command::ApplyPlan {
            placements,
            stops: vec![],
        },
    );
    s
}

/// Apply as the API would (decode from JSON first), checking the contract of `apply`.
fn check_apply(s: &mut State, index: u64, cmd: &Command) -> Result<(), TestCaseError> {
    let json = serde_json::to_vec(cmd).expect("commands serialize");
    let decoded: Command = serde_json::from_slice(&json).expect("own JSON decodes");
    prop_assert_eq!(&decoded, cmd);
    let before = s.to_image();
    let (r, changes) = s.apply(index, &decoded);
    match r {
        Ok(_) => {
            // The indexes stay consistent with the objects: the same as rebuilt from them.
            let rebuilt = State::from_image(s.to_image());
            prop_assert_eq!(rebuilt.to_image(), s.to_image());
            let ids = |it: &mut dyn Iterator<Item = &gantry_controller::state::Allocation>| {
                it.map(|a| a.id).collect::<Vec<_>>()
            };
            for n in s.nodes() {
                prop_assert_eq!(
                    ids(&mut s.allocations_on(n.id)),
                    ids(&mut rebuilt.allocations_on(n.id)),
                    "allocations on node {}",
                    n.id
                );
                prop_assert_eq!(s.used(n.id), rebuilt.used(n.id), "used on node {}", n.id);
            }
            let services: std::collections::BTreeSet<&str> =
                s.allocations().map(|a| a.service.as_str()).collect();
            for name in services {
                prop_assert_eq!(
                    ids(&mut s.allocations_of(name)),
                    ids(&mut rebuilt.allocations_of(name)),
                    "allocations of service {}",
                    name
                );
            }
        }
        Err(e) => {
            prop_assert!(changes.is_empty(), "refused but changed: {e}");
            prop_assert_eq!(&s.to_image(), &before, "refused but changed: {}", e);
            let text = e.to_string();
            prop_assert!(text.contains(": "), "error names no field: {text:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn arbitrary_bytes_decode_to_a_command_or_an_error(bytes in vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<Command>(&bytes);
    }

    #[test]
    fn mutated_commands_decode_and_apply_without_panic(
        cmd in any_command(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut json = serde_json::to_vec(&cmd).unwrap();
        for (at, byte) in edits {
            let i = at.index(json.len());
            json[i] = byte;
        }
        if let Ok(decoded) = serde_json::from_slice::<Command>(&json) {
            let mut s = seeded();
            check_apply(&mut s, 100, &decoded)?;
        }
    }

    #[test]
    fn sequences_of_arbitrary_commands_never_panic_and_refusals_change_nothing(
        cmds in vec(any_command(), 1..8),
    ) {
        let mut s = seeded();
        for (i, cmd) in cmds.iter().enumerate() {
            check_apply(&mut s, 100 + i as u64, cmd)?;
        }
    }
}

use super::*;

const GIB: u64 = 1 << 30;

fn res(cpu: u64, mem: u64) -> Resources {
    Resources {
        cpu_millis: cpu,
        memory_bytes: mem,
        pids: 100,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn register(name: &str, l: &[(&str, &str)]) -> Command {
    Command::RegisterNode {
        name: name.into(),
        address: format!("{name}:7000"),
        labels: labels(l),
        capacity: Resources {
            cpu_millis: 4000,
            memory_bytes: 8 * GIB,
            pids: 1000,
        },
        allocatable: Resources {
            cpu_millis: 2000,
            memory_bytes: 4 * GIB,
            pids: 1000,
        },
        api: None,
    }
}

fn spec(image: &str, replicas: u32) -> ServiceSpec {
    ServiceSpec {
        image: image.into(),
        replicas,
        resources: res(500, GIB),
        ..Default::default()
    }
}

fn upsert(name: &str, s: ServiceSpec) -> Command {
    Command::UpsertService {
        name: name.into(),
        spec: s,
        expected_index: None,
    }
}

fn place(service: &str, version: u64, node: NodeId) -> Placement {
    Placement {
        service: service.into(),
        version,
        node,
        ports: vec![],
    }
}

/// Applies commands at indexes 1.. and panics on a rejection.
fn build(cmds: &[Command]) -> State {
    let mut s = State::new();
    for (i, c) in cmds.iter().enumerate() {
        let (r, _) = s.apply(i as u64 + 1, c);
        r.unwrap_or_else(|e| panic!("command {i} ({}) rejected: {e}", c.verb()));
    }
    s
}

/// Asserts the command is rejected with an error naming `field`, and that nothing changed.
fn assert_rejected(s: &mut State, cmd: &Command, field: &str) -> ApplyError {
    let before = s.to_image();
    let (r, changes) = s.apply(1000, cmd);
    let e = r.expect_err("command should be rejected");
    let named = match &e {
        ApplyError::Invalid { field: f, .. }
        | ApplyError::NotFound { field: f, .. }
        | ApplyError::Conflict { field: f, .. } => f.clone(),
    };
    assert_eq!(named, field, "error {e} names the wrong field");
    assert!(changes.is_empty());
    assert_eq!(s.to_image(), before, "a rejected command changed the state");
    // Applied into a batch's vector, it leaves what the batch had collected as it was.
    let earlier = Change::AllocationRemoved { id: 7, index: 999 };
    let mut batch = vec![earlier.clone()];
    assert!(s.apply_into(1000, cmd, &mut batch).is_err());
    assert_eq!(batch, vec![earlier]);
    assert_eq!(s.to_image(), before, "a rejected command changed the state");
    e
}

#[test]
fn register_node_assigns_ids_and_reregistration_keeps_them() {
    let mut s = build(&[register("n1", &[("env", "qa")]), register("n2", &[])]);
    assert_eq!(s.node_by_name("n1").unwrap().id, 1);
    assert_eq!(s.node_by_name("n2").unwrap().id, 2);
    assert_eq!(s.node(1).unwrap().modify_index, 1);

    s.apply(
        3,
        &Command::SetNodeStatus {
            node: 1,
            status: NodeStatus::Down,
        },
    )
    .0
    .unwrap();
    let (r, changes) = s.apply(4, &register("n1", &[("env", "prod")]));
    assert_eq!(r, Ok(Reply::NodeRegistered { id: 1 }));
    let n = s.node(1).unwrap();
    assert_eq!(
        n.status,
        NodeStatus::Ready,
        "a returning node is ready again"
    );
    assert_eq!(n.labels, labels(&[("env", "prod")]));
    assert_eq!(n.modify_index, 4);
    assert_eq!(changes, vec![Change::Node(Box::new(n.clone()))]);
    assert_eq!(s.nodes().count(), 2);
}

#[test]
fn register_node_rejects_bad_input_naming_the_field() {
    let mut s = build(&[register("n1", &[])]);
    assert_rejected(&mut s, &register("Bad_Name", &[]), "name");
    let mut c = register("n2", &[]);
    if let Command::RegisterNode { address, .. } = &mut c {
        *address = "".into();
    }
    assert_rejected(&mut s, &c, "address");
    let mut c = register("n2", &[]);
    if let Command::RegisterNode { allocatable, .. } = &mut c {
        allocatable.memory_bytes = 100 * GIB;
    }
    assert_rejected(&mut s, &c, "allocatable.memory_bytes");
    assert_rejected(
        &mut s,
        &register("n2", &[("env", "a b")]),
        "labels[\"env\"]",
    );
    assert_rejected(&mut s, &register("n2", &[("", "x")]), "labels[\"\"]");
}

#[test]
fn upsert_service_versions_only_on_change_and_checks_expected_index() {
    let mut s = State::new();
    let (r, ch) = s.apply(5, &upsert("web", spec("app:1", 3)));
    assert_eq!(r, Ok(Reply::ServiceUpserted { version: 1 }));
    assert_eq!(ch.len(), 1);
    let (r, ch) = s.apply(6, &upsert("web", spec("app:1", 3)));
    assert_eq!(r, Ok(Reply::ServiceUpserted { version: 1 }));
    assert!(ch.is_empty(), "same spec: no change");
    assert_eq!(s.service("web").unwrap().modify_index, 5);
    let (r, _) = s.apply(7, &upsert("web", spec("app:2", 3)));
    assert_eq!(r, Ok(Reply::ServiceUpserted { version: 2 }));
    assert_eq!(s.service("web").unwrap().modify_index, 7);

    let stale = Command::UpsertService {
        name: "web".into(),
        spec: spec("app:3", 3),
        expected_index: Some(5),
    };
    let e = assert_rejected(&mut s, &stale, "expected_index");
    assert!(e.to_string().contains("index 7"), "{e}");
    let create_only = Command::UpsertService {
        name: "web".into(),
        spec: spec("app:3", 3),
        expected_index: Some(0),
    };
    assert_rejected(&mut s, &create_only, "expected_index");
    let ok = Command::UpsertService {
        name: "web".into(),
        spec: spec("app:3", 3),
        expected_index: Some(7),
    };
    assert_eq!(s.apply(8, &ok).0, Ok(Reply::ServiceUpserted { version: 3 }));
}

#[test]
fn upsert_service_validates_the_spec() {
    let mut s = State::new();
    assert_rejected(&mut s, &upsert("web", spec("", 1)), "spec.image");
    assert_rejected(&mut s, &upsert("Web!", spec("a", 1)), "name");
    assert_rejected(
        &mut s,
        &upsert("web", spec("a", MAX_REPLICAS + 1)),
        "spec.replicas",
    );
    let mut sp = spec("a", 1);
    sp.update.max_parallel = 0;
    assert_rejected(&mut s, &upsert("web", sp), "spec.update.max_parallel");
    let mut sp = spec("a", 1);
    sp.env.insert("A=B".into(), "x".into());
    assert_rejected(&mut s, &upsert("web", sp), "spec.env[\"A=B\"]");
    let mut sp = spec("a", 1);
    let port = PortSpec {
        container: 80,
        host: Some(8080),
        protocol: Protocol::Tcp,
    };
    sp.ports = vec![port.clone(), port];
    assert_rejected(&mut s, &upsert("web", sp), "spec.ports[1].container");
    let mut sp = spec("a", 1);
    sp.failover = vec![vec![]];
    assert_rejected(&mut s, &upsert("web", sp), "spec.failover[0]");
}

#[test]
fn apply_plan_places_and_accounts_usage() {
    let mut s = build(&[
        register("n1", &[]),
        register("n2", &[]),
        upsert("web", spec("a", 3)),
    ]);
    let (r, changes) = s.apply(
        10,
        &Command::ApplyPlan {
            placements: vec![place("web", 1, 1), place("web", 1, 1), place("web", 1, 2)],
            stops: vec![],
        },
    );
    assert_eq!(
        r,
        Ok(Reply::PlanApplied {
            allocations: vec![1, 2, 3]
        })
    );
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|c| c.index() == 10));
    let a = s.allocation(1).unwrap();
    assert_eq!(
        (a.desired, &a.observed, a.version, a.node),
        (Desired::Run, &Observed::Pending, 1, 1)
    );
    assert_eq!(
        s.used(1),
        Resources {
            cpu_millis: 1000,
            memory_bytes: 2 * GIB,
            pids: 200
        }
    );
    assert_eq!(s.allocations_on(1).count(), 2);
    assert_eq!(s.allocations_of("web").count(), 3);
}

#[test]
fn apply_plan_rejects_overcommit_stale_and_unknown_atomically() {
    // allocatable: 2000 cpu, 4 GiB; each replica 500 cpu, 1 GiB: 4 fit on a node.
    let mut s = build(&[register("n1", &[]), upsert("web", spec("a", 5))]);
    let over = Command::ApplyPlan {
        placements: (0..5).map(|_| place("web", 1, 1)).collect(),
        stops: vec![],
    };
    let e = assert_rejected(&mut s, &over, "placements[4].node");
    assert!(e.to_string().contains("cpu_millis"), "{e}");
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![place("web", 0, 1)],
            stops: vec![],
        },
        "placements[0].version",
    );
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![place("web", 1, 9)],
            stops: vec![],
        },
        "placements[0].node",
    );
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![place("db", 1, 1)],
            stops: vec![],
        },
        "placements[0].service",
    );
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![place("web", 1, 1)],
            stops: vec![42],
        },
        "stops[0]",
    );
    s.apply(
        3,
        &Command::SetNodeStatus {
            node: 1,
            status: NodeStatus::Draining,
        },
    )
    .0
    .unwrap();
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![place("web", 1, 1)],
            stops: vec![],
        },
        "placements[0].node",
    );
}

#[test]
fn stops_in_a_plan_free_room_for_its_placements() {
    let mut s = build(&[register("n1", &[]), upsert("web", spec("a", 4))]);
    s.apply(
        3,
        &Command::ApplyPlan {
            placements: (0..4).map(|_| place("web", 1, 1)).collect(),
            stops: vec![],
        },
    )
    .0
    .unwrap();
    s.apply(4, &upsert("web", spec("b", 4))).0.unwrap();
    // Full node: a new-version placement fits only together with a stop.
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![place("web", 2, 1)],
            stops: vec![],
        },
        "placements[0].node",
    );
    let (r, _) = s.apply(
        5,
        &Command::ApplyPlan {
            placements: vec![place("web", 2, 1)],
            stops: vec![1],
        },
    );
    assert_eq!(
        r,
        Ok(Reply::PlanApplied {
            allocations: vec![5]
        })
    );
    assert_eq!(s.allocation(1).unwrap().desired, Desired::Stop);
    assert_eq!(s.used(1).cpu_millis, 2000);
}

#[test]
fn host_ports_conflict_within_and_across_plans() {
    let mut sp = spec("a", 2);
    sp.resources = res(10, 1);
    sp.ports = vec![PortSpec {
        container: 80,
        host: Some(8080),
        protocol: Protocol::Tcp,
    }];
    let mut s = build(&[register("n1", &[]), register("n2", &[]), upsert("web", sp)]);
    let mapped = |node| Placement {
        ports: vec![PortMapping {
            container: 80,
            host: 8080,
            protocol: Protocol::Tcp,
        }],
        ..place("web", 1, node)
    };
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![mapped(1), mapped(1)],
            stops: vec![],
        },
        "placements[1].ports",
    );
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![place("web", 1, 1)],
            stops: vec![],
        },
        "placements[0].ports",
    );
    s.apply(
        4,
        &Command::ApplyPlan {
            placements: vec![mapped(1), mapped(2)],
            stops: vec![],
        },
    )
    .0
    .unwrap();
    assert!(s.host_port_taken(1, Protocol::Tcp, 8080));
    assert_rejected(
        &mut s,
        &Command::ApplyPlan {
            placements: vec![mapped(1)],
            stops: vec![],
        },
        "placements[0].ports",
    );
    // stopping the holder frees the port in the same plan
    s.apply(
        5,
        &Command::ApplyPlan {
            placements: vec![mapped(1)],
            stops: vec![1],
        },
    )
    .0
    .unwrap();
    assert!(s.host_port_taken(1, Protocol::Tcp, 8080));
}

#[test]
fn node_down_marks_allocations_lost_and_frees_usage() {
    let mut s = build(&[
        register("n1", &[]),
        upsert("web", spec("a", 2)),
        Command::ApplyPlan {
            placements: vec![place("web", 1, 1), place("web", 1, 1)],
            stops: vec![],
        },
        Command::ReportAllocStatus {
            node: 1,
            batch: vec![AllocReport {
                id: 2,
                observed: Observed::Exited(0),
                container: None,
            }],
        },
    ]);
    let (r, changes) = s.apply(
        9,
        &Command::SetNodeStatus {
            node: 1,
            status: NodeStatus::Down,
        },
    );
    r.unwrap();
    assert_eq!(changes.len(), 3, "node + two allocations: {changes:?}");
    let a1 = s.allocation(1).unwrap();
    assert_eq!(
        (a1.desired, &a1.observed, a1.modify_index),
        (Desired::Stop, &Observed::Lost, 9)
    );
    let a2 = s.allocation(2).unwrap();
    assert_eq!(
        (a2.desired, &a2.observed),
        (Desired::Stop, &Observed::Exited(0)),
        "finished stays finished"
    );
    assert_eq!(s.used(1), Resources::default());
    // idempotent
    let (r, changes) = s.apply(
        10,
        &Command::SetNodeStatus {
            node: 1,
            status: NodeStatus::Down,
        },
    );
    assert_eq!((r, changes.len()), (Ok(Reply::Done), 0));
    assert_rejected(
        &mut s,
        &Command::SetNodeStatus {
            node: 7,
            status: NodeStatus::Down,
        },
        "node",
    );
}

#[test]
fn reports_record_history_and_reject_foreign_allocations() {
    let mut s = build(&[
        register("n1", &[]),
        register("n2", &[]),
        upsert("web", spec("a", 2)),
        Command::ApplyPlan {
            placements: vec![place("web", 1, 1), place("web", 1, 2)],
            stops: vec![],
        },
    ]);
    let batch = |obs: Observed| {
        vec![AllocReport {
            id: 1,
            observed: obs,
            container: Some("c1".into()),
        }]
    };
    s.apply(
        5,
        &Command::ReportAllocStatus {
            node: 1,
            batch: batch(Observed::Pulling),
        },
    )
    .0
    .unwrap();
    s.apply(
        6,
        &Command::ReportAllocStatus {
            node: 1,
            batch: batch(Observed::Running),
        },
    )
    .0
    .unwrap();
    let (_, ch) = s.apply(
        7,
        &Command::ReportAllocStatus {
            node: 1,
            batch: batch(Observed::Running),
        },
    );
    assert!(ch.is_empty(), "a repeated report changes nothing");
    let a = s.allocation(1).unwrap();
    assert_eq!(a.container.as_deref(), Some("c1"));
    assert_eq!(
        a.history
            .iter()
            .map(|h| (h.index, h.observed.clone()))
            .collect::<Vec<_>>(),
        vec![
            (4, Observed::Pending),
            (5, Observed::Pulling),
            (6, Observed::Running)
        ]
    );
    for i in 0..20 {
        let obs = if i % 2 == 0 {
            Observed::Exited(i)
        } else {
            Observed::Running
        };
        s.apply(
            10 + i as u64,
            &Command::ReportAllocStatus {
                node: 1,
                batch: batch(obs),
            },
        )
        .0
        .unwrap();
    }
    assert_eq!(s.allocation(1).unwrap().history.len(), HISTORY_LEN);

    // allocation 2 is on n2: a batch from n1 naming it is rejected as a whole
    let mixed = Command::ReportAllocStatus {
        node: 1,
        batch: vec![
            AllocReport {
                id: 1,
                observed: Observed::Failed("oom".into()),
                container: None,
            },
            AllocReport {
                id: 2,
                observed: Observed::Running,
                container: None,
            },
        ],
    };
    assert_rejected(&mut s, &mixed, "batch[1].id");
    assert_rejected(
        &mut s,
        &Command::ReportAllocStatus {
            node: 1,
            batch: vec![AllocReport {
                id: 99,
                observed: Observed::Running,
                container: None,
            }],
        },
        "batch[0].id",
    );
}

#[test]
fn remove_service_stops_and_purge_forgets_only_finished() {
    let mut s = build(&[
        register("n1", &[]),
        upsert("web", spec("a", 2)),
        Command::ApplyPlan {
            placements: vec![place("web", 1, 1), place("web", 1, 1)],
            stops: vec![],
        },
    ]);
    assert_rejected(
        &mut s,
        &Command::PurgeAllocations { ids: vec![1] },
        "ids[0]",
    );
    let (r, changes) = s.apply(4, &Command::RemoveService { name: "web".into() });
    r.unwrap();
    assert_eq!(changes.len(), 3);
    assert!(s.service("web").is_none());
    assert_eq!(s.used(1), Resources::default());
    s.apply(
        5,
        &Command::ReportAllocStatus {
            node: 1,
            batch: vec![AllocReport {
                id: 1,
                observed: Observed::Exited(0),
                container: None,
            }],
        },
    )
    .0
    .unwrap();
    assert_rejected(
        &mut s,
        &Command::PurgeAllocations { ids: vec![1, 2] },
        "ids[1]",
    );
    let (r, changes) = s.apply(6, &Command::PurgeAllocations { ids: vec![1] });
    r.unwrap();
    assert_eq!(changes, vec![Change::AllocationRemoved { id: 1, index: 6 }]);
    assert!(s.allocation(1).is_none());
    assert_eq!(
        s.allocations_on(1).map(|a| a.id).collect::<Vec<_>>(),
        vec![2]
    );
    assert_rejected(
        &mut s,
        &Command::RemoveService { name: "web".into() },
        "name",
    );
}

#[test]
fn image_round_trip_rebuilds_indexes_and_apply_is_deterministic() {
    let mut sp = spec("a", 3);
    sp.ports = vec![PortSpec {
        container: 80,
        host: None,
        protocol: Protocol::Udp,
    }];
    sp.constraints = vec!["env==qa".parse().unwrap()];
    let udp = |node, host| Placement {
        ports: vec![PortMapping {
            container: 80,
            host,
            protocol: Protocol::Udp,
        }],
        ..place("web", 1, node)
    };
    let cmds = vec![
        register("n1", &[("env", "qa")]),
        register("n2", &[("env", "qa")]),
        upsert("web", sp),
        Command::ApplyPlan {
            placements: vec![udp(1, 30000), udp(2, 30000), udp(1, 30001)],
            stops: vec![],
        },
        Command::SetNodeStatus {
            node: 2,
            status: NodeStatus::Down,
        },
    ];
    let a = build(&cmds);
    let b = build(&cmds);
    assert_eq!(a.to_image(), b.to_image());
    let json = serde_json::to_vec(&a.to_image()).unwrap();
    let c = State::from_image(serde_json::from_slice(&json).unwrap());
    assert_eq!(c.to_image(), a.to_image());
    assert_eq!(c.used(1), a.used(1));
    assert_eq!(c.used(2), Resources::default());
    assert!(c.host_port_taken(1, Protocol::Udp, 30001));
    assert!(!c.host_port_taken(2, Protocol::Udp, 30000));
    // the next ids continue where the original left off
    let (mut a, mut c) = (a, c);
    let next = Command::ApplyPlan {
        placements: vec![udp(1, 30002)],
        stops: vec![],
    };
    assert_eq!(a.apply(9, &next).0, c.apply(9, &next).0);
}

#[test]
fn batch_answers_each_command_and_a_rejected_one_changes_nothing() {
    let mut s = build(&[register("n1", &[])]);
    let good = [register("n2", &[]), upsert("web", spec("img:1", 1))];
    let bad = register("Bad_Name", &[]);
    let batch = Command::Batch {
        commands: vec![
            good[0].clone(),
            bad.clone(),
            good[1].clone(),
            Command::Batch { commands: vec![] },
        ],
    };
    let (r, changes) = s.apply(7, &batch);
    let Ok(Reply::Batch { responses }) = r else {
        panic!("a batch answers Batch, got {r:?}");
    };
    assert_eq!(responses.len(), 4);
    assert_eq!(responses[0], Ok(Reply::NodeRegistered { id: 2 }));
    assert!(
        matches!(&responses[1], Err(ApplyError::Invalid { field, .. }) if field == "name"),
        "{:?}",
        responses[1]
    );
    assert_eq!(responses[2], Ok(Reply::ServiceUpserted { version: 1 }));
    assert!(
        matches!(&responses[3], Err(ApplyError::Invalid { field, .. }) if field == "commands[3]"),
        "{:?}",
        responses[3]
    );
    // The same as applying the accepted commands one by one at that index.
    let mut one_by_one = build(&[register("n1", &[])]);
    let mut expected_changes = Vec::new();
    for c in &good {
        let (r, ch) = one_by_one.apply(7, c);
        r.unwrap();
        expected_changes.extend(ch);
    }
    assert_eq!(s.to_image(), one_by_one.to_image());
    assert_eq!(changes, expected_changes);
    assert!(changes.iter().all(|c| c.index() == 7));
}

#[test]
fn nodes_get_distinct_subnets_kept_across_reregistration() {
    let mut s = build(&[register("a", &[]), register("b", &[])]);
    let a = s.node_by_name("a").unwrap().clone();
    let b = s.node_by_name("b").unwrap().clone();
    assert_eq!(a.subnet, Some("10.210.0.0/24".parse().unwrap()));
    assert_eq!(b.subnet, Some("10.210.1.0/24".parse().unwrap()));
    // An agent restarting (or returning after being down) keeps its subnet.
    s.apply(10, &register("a", &[("env", "qa")])).0.unwrap();
    assert_eq!(s.node_by_name("a").unwrap().subnet, a.subnet);
    // Subnets survive a snapshot round trip.
    let img = s.to_image();
    let back = State::from_image(img.clone());
    assert_eq!(back.to_image(), img);
}

#[test]
fn alloc_addresses_are_recorded_and_bad_ones_rejected() {
    let mut s = build(&[
        register("a", &[]),
        register("b", &[]),
        upsert("web", spec("img", 1)),
    ]);
    let (r, _) = s.apply(
        10,
        &Command::ApplyPlan {
            placements: vec![place("web", 1, 1)],
            stops: vec![],
        },
    );
    let Ok(Reply::PlanApplied { allocations }) = r else {
        panic!("{r:?}")
    };
    let id = allocations[0];
    let ip: std::net::Ipv4Addr = "10.210.0.5".parse().unwrap();
    let (r, changes) = s.apply(
        11,
        &Command::SetAllocAddresses {
            node: 1,
            addresses: vec![(id, Some(ip))],
        },
    );
    r.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(s.to_image().allocations[0].address, Some(ip));
    // The same address again changes nothing.
    let (_, changes) = s.apply(
        12,
        &Command::SetAllocAddresses {
            node: 1,
            addresses: vec![(id, Some(ip))],
        },
    );
    assert!(changes.is_empty());
    // Another node may not report it; an address outside the node's subnet is refused.
    assert_rejected(
        &mut s,
        &Command::SetAllocAddresses {
            node: 2,
            addresses: vec![(id, None)],
        },
        "addresses[0].id",
    );
    assert_rejected(
        &mut s,
        &Command::SetAllocAddresses {
            node: 1,
            addresses: vec![(id, Some("10.210.1.5".parse().unwrap()))],
        },
        "addresses[0].address",
    );
    assert_rejected(
        &mut s,
        &Command::SetAllocAddresses {
            node: 1,
            addresses: vec![(999, None)],
        },
        "addresses[0].id",
    );
}

#[test]
fn bad_network_names_are_named() {
    let mut s = build(&[]);
    let mut sp = spec("img", 1);
    sp.networks = vec!["front".into(), "Bad_Net".into()];
    assert_rejected(&mut s, &upsert("web", sp), "spec.networks[1]");
}

#[test]
fn endpoints_need_a_network_and_a_port_of_their_own() {
    let mut s = build(&[]);
    let ep = |host| PortMapping {
        container: 80,
        host,
        protocol: Protocol::Tcp,
    };
    let mut sp = spec("img", 1);
    sp.endpoints = vec![ep(8080)];
    assert_rejected(&mut s, &upsert("web", sp.clone()), "spec.endpoints[0]");
    sp.networks = vec!["front".into()];
    s.apply(1, &upsert("web", sp.clone())).0.unwrap();
    assert_rejected(&mut s, &upsert("api", sp.clone()), "spec.endpoints[0].host");
    sp.endpoints = vec![ep(9090), ep(9090)];
    assert_rejected(&mut s, &upsert("api", sp), "spec.endpoints[1].host");
}

#[test]
fn the_cluster_network_is_recorded_once_and_node_subnets_come_from_it() {
    let plan = |cidr: &str, p: u8| ClusterNetwork {
        cidr: cidr.parse().unwrap(),
        node_prefix: p,
    };
    let set = |n: ClusterNetwork| Command::SetClusterNetwork { network: n };
    let mut s = State::default();
    assert_eq!(s.cluster_network(), ClusterNetwork::default());
    // a bad plan is refused naming the field, and changes nothing
    let e = s.apply(1, &set(plan("10.50.1.0/20", 22))).0.unwrap_err();
    assert!(e.to_string().starts_with("network.cidr: "), "{e}");
    let e = s.apply(1, &set(plan("10.50.0.0/20", 28))).0.unwrap_err();
    assert!(e.to_string().starts_with("network.node_prefix: "), "{e}");
    assert_eq!(s.recorded_cluster_network(), None);
    let mine = plan("10.50.0.0/20", 22);
    assert_eq!(s.apply(2, &set(mine)).0, Ok(Reply::Done));
    assert_eq!(s.cluster_network(), mine);
    // nodes get /22s of it
    s.apply(3, &register("a", &[])).0.unwrap();
    s.apply(4, &register("b", &[])).0.unwrap();
    let subnet = |s: &State, n: &str| s.node_by_name(n).unwrap().subnet.unwrap().to_string();
    assert_eq!(subnet(&s, "a"), "10.50.0.0/22");
    assert_eq!(subnet(&s, "b"), "10.50.4.0/22");
    // the same plan again is a no-op; another is refused (nothing changes)
    assert_eq!(s.apply(5, &set(mine)).0, Ok(Reply::Done));
    let before = s.to_image();
    let e = s
        .apply(6, &set(plan("10.60.0.0/16", 24)))
        .0
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "is 10.50.0.0/20 with /22 node subnets (recorded at bootstrap) and cannot change"
        ),
        "{e}"
    );
    assert_eq!(s.to_image(), before);
    // the plan survives a snapshot image
    assert_eq!(State::from_image(before).cluster_network(), mine);
    // a cluster of an older version (nodes with default subnets, no plan) can record
    // only a plan that holds them
    let mut old = State::default();
    old.apply(1, &register("a", &[])).0.unwrap();
    let e = old.apply(2, &set(mine)).0.unwrap_err().to_string();
    assert!(e.contains("node a already has subnet 10.210.0.0/24"), "{e}");
    assert_eq!(
        old.apply(3, &set(ClusterNetwork::default())).0,
        Ok(Reply::Done)
    );
}

#[test]
fn id_lists_stay_sorted_and_unique_and_lose_a_batch_in_one_pass() {
    let mut l = IdList::default();
    for id in [3, 5, 9, 7, 5, 1, 9, 11] {
        l.insert(id);
    }
    assert_eq!(l.0, [1, 3, 5, 7, 9, 11]);
    l.remove_sorted(&[1, 7, 8, 11]);
    assert_eq!(l.0, [3, 5, 9]);
    assert!(!l.is_empty());
    l.remove_sorted(&[3, 5, 9]);
    assert!(l.is_empty());
}

#[test]
fn a_change_is_small_whatever_it_carries() {
    // A batch's change vector holds mostly allocations: it must not be sized for the
    // largest object (nodes, services and tokens are boxed; allocations shared).
    assert!(std::mem::size_of::<Change>() <= 40);
}

//! Every input limit of `State::apply` (crate::limits): one over the limit is refused
//! naming the field and the limit, and changes nothing; exactly at the limit is accepted.

use super::*;
use crate::limits::*;

fn node(labels: BTreeMap<String, String>) -> Command {
    Command::RegisterNode {
        name: "n1".into(),
        address: "10.0.0.1:7000".into(),
        labels,
        capacity: Resources::default(),
        allocatable: Resources::default(),
        api: None,
    }
}

fn upsert(spec: ServiceSpec) -> Command {
    Command::UpsertService {
        name: "web".into(),
        spec,
        expected_index: None,
    }
}

fn spec() -> ServiceSpec {
    ServiceSpec {
        image: "busybox".into(),
        replicas: 1,
        ..Default::default()
    }
}

/// Applies `cmd` to a state with one node and one service; asserts a refusal naming
/// `field` (and `reason_has`) that changed nothing.
fn refused(cmd: Command, field: &str, reason_has: &str) {
    let mut s = State::new();
    assert!(s.apply(1, &node(BTreeMap::new())).0.is_ok());
    assert!(s.apply(2, &upsert(spec())).0.is_ok());
    let before = s.to_image();
    let (r, changes) = s.apply(3, &cmd);
    let e = r.expect_err("over the limit must be refused");
    let text = e.to_string();
    assert!(text.starts_with(field), "{text:?} should name {field}");
    assert!(
        text.contains(reason_has),
        "{text:?} should say {reason_has:?}"
    );
    assert!(changes.is_empty());
    assert_eq!(s.to_image(), before, "a refused command changed the state");
}

fn accepted(cmd: Command) {
    let mut s = State::new();
    assert!(s.apply(1, &node(BTreeMap::new())).0.is_ok());
    assert!(s.apply(2, &upsert(spec())).0.is_ok());
    let (r, _) = s.apply(3, &cmd);
    r.expect("at the limit must be accepted");
}

fn labels(n: usize) -> BTreeMap<String, String> {
    (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
}

#[test]
fn node_labels_are_bounded_in_number_and_size() {
    accepted(node(labels(MAX_LABELS)));
    refused(node(labels(MAX_LABELS + 1)), "labels", "the limit is 64");
    let long_key = [("k".repeat(MAX_LABEL_KEY_LEN + 1), "v".to_string())].into();
    refused(node(long_key), "labels[", "label key must be 1-128");
    let long_value = [("k".to_string(), "v".repeat(MAX_LABEL_VALUE_LEN + 1))].into();
    refused(node(long_value), "labels[", "label value must be 1-256");
    let control = [("k".to_string(), "a\u{7}b".to_string())].into();
    refused(node(control), "labels[", "control characters");
    refused(
        Command::SetNodeLabels {
            node: 1,
            labels: labels(MAX_LABELS + 1),
        },
        "labels",
        "65 labels",
    );
}

#[test]
fn node_names_and_addresses_are_bounded() {
    let cmd = |name: String, address: String| Command::RegisterNode {
        name,
        address,
        labels: BTreeMap::new(),
        capacity: Resources::default(),
        allocatable: Resources::default(),
        api: None,
    };
    accepted(cmd("a".repeat(MAX_NAME_LEN), "h:1".into()));
    refused(
        cmd("a".repeat(MAX_NAME_LEN + 1), "h:1".into()),
        "name",
        "1-63",
    );
    refused(
        cmd("n2".into(), format!("{}:1", "h".repeat(MAX_ADDRESS_LEN))),
        "address",
        "1-255 bytes",
    );
    refused(cmd("n2".into(), "h\u{0}:1".into()), "address", "host:port");
    // the node API's address: the same grammar, optional
    let api = |api: &str| Command::RegisterNode {
        name: "n3".into(),
        address: "h:1".into(),
        labels: BTreeMap::new(),
        capacity: Resources::default(),
        allocatable: Resources::default(),
        api: Some(api.into()),
    };
    accepted(api(&format!("{}:1", "h".repeat(MAX_ADDRESS_LEN - 2))));
    refused(api(""), "api", "host:port");
    refused(api("h :1"), "api", "host:port");
    refused(
        api(&format!("{}:1", "h".repeat(MAX_ADDRESS_LEN))),
        "api",
        "1-255 bytes",
    );
}

#[test]
fn service_specs_are_bounded_field_by_field() {
    let with = |f: &dyn Fn(&mut ServiceSpec)| {
        let mut s = spec();
        f(&mut s);
        upsert(s)
    };
    refused(
        with(&|s| s.image = "i".repeat(MAX_IMAGE_LEN + 1)),
        "spec.image",
        "at most 1024 bytes",
    );
    accepted(with(&|s| s.args = vec!["a".into(); MAX_ARGS]));
    refused(
        with(&|s| {
            s.command = vec!["sh".into()];
            s.args = vec!["a".into(); MAX_ARGS];
        }),
        "spec.command",
        "1025 entries",
    );
    refused(
        with(&|s| s.args = vec!["a\0b".into()]),
        "spec.args[0]",
        "NUL",
    );
    refused(
        with(&|s| {
            s.env = (0..=MAX_ENV)
                .map(|i| (format!("V{i}"), "x".into()))
                .collect()
        }),
        "spec.env",
        "1025 variables",
    );
    refused(
        with(&|s| s.env = [("V".to_string(), "a\0".to_string())].into()),
        "spec.env[\"V\"]",
        "NUL",
    );
    refused(
        with(&|s| s.env = [("BIG".to_string(), "x".repeat(MAX_PROCESS_BYTES))].into()),
        "spec.env",
        "the limit is 262144",
    );
    let ports = |n: u16| {
        (1..=n)
            .map(|p| PortSpec {
                container: p,
                host: None,
                protocol: Protocol::Tcp,
            })
            .collect::<Vec<_>>()
    };
    accepted(with(&|s| s.ports = ports(MAX_PORTS as u16)));
    refused(
        with(&|s| s.ports = ports(MAX_PORTS as u16 + 1)),
        "spec.ports",
        "257 ports",
    );
    refused(
        with(&|s| s.networks = (0..=MAX_NETWORKS).map(|i| format!("n{i}")).collect()),
        "spec.networks",
        "17 networks",
    );
    refused(
        with(&|s| s.replicas = MAX_REPLICAS + 1),
        "spec.replicas",
        "100000",
    );
}

#[test]
fn constraints_from_json_are_checked_like_parsed_ones() {
    let c = |key: &str, op: Op| Constraint {
        key: key.into(),
        op,
    };
    let with_constraints = |set: Vec<Constraint>| {
        let mut s = spec();
        s.constraints = set;
        upsert(s)
    };
    accepted(with_constraints(vec![
        c("env", Op::Eq("qa".into()));
        MAX_CONSTRAINTS
    ]));
    refused(
        with_constraints(vec![c("env", Op::Eq("qa".into())); MAX_CONSTRAINTS + 1]),
        "spec.constraints",
        "65 constraints",
    );
    refused(
        with_constraints(vec![c("bad key", Op::Exists)]),
        "spec.constraints[0].key",
        "label key",
    );
    refused(
        with_constraints(vec![c("env", Op::In(vec![]))]),
        "spec.constraints[0]",
        "empty value list",
    );
    refused(
        with_constraints(vec![c("env", Op::Ne("a b".into()))]),
        "spec.constraints[0]",
        "without spaces",
    );
    refused(
        with_constraints(vec![c(
            "env",
            Op::NotIn(vec!["v".into(); MAX_CONSTRAINT_VALUES + 1]),
        )]),
        "spec.constraints[0]",
        "65 values",
    );
    let mut s = spec();
    s.failover = vec![vec![c("site", Op::Eq("a".into()))]; MAX_FAILOVER_SETS + 1];
    refused(upsert(s), "spec.failover", "17 constraint sets");
    let mut s = spec();
    s.failover = vec![vec![c("site", Op::Eq("".into()))]];
    refused(upsert(s), "spec.failover[0][0]", "must be 1-256");
}

#[test]
fn batches_and_reports_are_bounded() {
    let batch = |n: usize| Command::Batch {
        commands: vec![Command::RemoveService { name: "x".into() }; n],
    };
    accepted(batch(MAX_BATCH_COMMANDS));
    refused(batch(MAX_BATCH_COMMANDS + 1), "commands", "1025 commands");
    let report =
        |n: usize, observed: Observed, container: Option<String>| Command::ReportAllocStatus {
            node: 1,
            batch: (0..n as u64)
                .map(|id| AllocReport {
                    id,
                    observed: observed.clone(),
                    container: container.clone(),
                })
                .collect(),
        };
    refused(
        report(MAX_REPORTS + 1, Observed::Running, None),
        "batch",
        "4097 reports",
    );
    refused(
        report(1, Observed::Failed("x".repeat(MAX_REASON_LEN + 1)), None),
        "batch[0].observed",
        "the limit is 4096",
    );
    refused(
        report(
            1,
            Observed::Running,
            Some("c".repeat(MAX_CONTAINER_ID_LEN + 1)),
        ),
        "batch[0].container",
        "1-128 bytes",
    );
    refused(
        Command::SetAllocAddresses {
            node: 1,
            addresses: (0..=MAX_REPORTS as u64).map(|id| (id, None)).collect(),
        },
        "addresses",
        "4097 addresses",
    );
}

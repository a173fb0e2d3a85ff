//! Scheduler, reconcile and plan-apply tests: scenarios on a real [`State`] driven through
//! `State::apply`, and property tests of the invariants.

use super::*;
use crate::plan_apply;
use crate::state::{
    AllocReport, Command, NodeStatus, Observed, PortSpec, Reply, ServiceSpec, UpdatePolicy,
};
use proptest::prelude::*;

const MI: u64 = 1024 * 1024;

/// A state driven through real commands, as Raft would apply them.
struct Cluster {
    state: State,
    index: u64,
    sched: Scheduler,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            state: State::new(),
            index: 0,
            sched: Scheduler::default(),
        }
    }

    fn apply(&mut self, cmd: Command) -> Reply {
        self.index += 1;
        let (r, _) = self.state.apply(self.index, &cmd);
        r.unwrap_or_else(|e| panic!("{} rejected: {e}", cmd.verb()))
    }

    fn node(&mut self, name: &str, labels: &[(&str, &str)], cpu: u64, mem_mi: u64) -> NodeId {
        let res = Resources {
            cpu_millis: cpu,
            memory_bytes: mem_mi * MI,
            pids: 10_000,
        };
        match self.apply(Command::RegisterNode {
            name: name.into(),
            address: format!("{name}:7070"),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capacity: res,
            allocatable: res,
            api: None,
        }) {
            Reply::NodeRegistered { id } => id,
            r => panic!("unexpected {r:?}"),
        }
    }

    fn service(&mut self, name: &str, spec: ServiceSpec) {
        self.apply(Command::UpsertService {
            name: name.into(),
            spec,
            expected_index: None,
        });
    }

    /// One evaluation of every service, verified and committed.
    fn eval(&mut self) -> Plan {
        let plan = self.sched.evaluate_all(&self.state);
        let verified = plan_apply::verify(&self.state, &plan);
        assert!(
            verified.rejected.is_empty(),
            "a fresh plan is valid: {:?}",
            verified.rejected
        );
        if let Some(cmd) = verified.into_command() {
            self.apply(cmd);
        }
        plan
    }

    /// Agents report every allocation that should run as running.
    fn run_all(&mut self) {
        let mut by_node: BTreeMap<NodeId, Vec<AllocReport>> = BTreeMap::new();
        for a in self.state.allocations() {
            if a.desired == Desired::Run && a.observed != Observed::Running {
                by_node.entry(a.node).or_default().push(AllocReport {
                    id: a.id,
                    observed: Observed::Running,
                    container: Some(format!("c{}", a.id)),
                });
            }
        }
        for (node, batch) in by_node {
            if self.state.node(node).unwrap().status != NodeStatus::Down {
                self.apply(Command::ReportAllocStatus { node, batch });
            }
        }
    }

    fn running(&self, svc: &str) -> Vec<&Allocation> {
        self.state
            .allocations_of(svc)
            .filter(|a| a.desired == Desired::Run && a.observed == Observed::Running)
            .collect()
    }

    fn wanted(&self, svc: &str) -> Vec<&Allocation> {
        self.state
            .allocations_of(svc)
            .filter(|a| a.desired == Desired::Run)
            .collect()
    }

    fn label_of(&self, a: &Allocation, key: &str) -> String {
        self.state.node(a.node).unwrap().labels[key].clone()
    }

    /// The service's allocations that should run, counted per value of the nodes' label.
    fn per_label(&self, svc: &str, key: &str) -> BTreeMap<String, u32> {
        let mut per: BTreeMap<String, u32> = BTreeMap::new();
        for a in self.wanted(svc) {
            *per.entry(self.label_of(a, key)).or_default() += 1;
        }
        per
    }
}

fn spec(replicas: u32, cpu: u64, mem_mi: u64, constraints: &[&str]) -> ServiceSpec {
    ServiceSpec {
        image: "app:1".into(),
        replicas,
        resources: Resources {
            cpu_millis: cpu,
            memory_bytes: mem_mi * MI,
            pids: 10,
        },
        constraints: constraints.iter().map(|c| c.parse().unwrap()).collect(),
        ..Default::default()
    }
}

fn three_envs() -> Cluster {
    let mut c = Cluster::new();
    for (i, env) in ["dev", "qa", "prod"].iter().enumerate() {
        for j in 0..3 {
            let site = if j == 2 { "cloud" } else { "onprem" };
            c.node(
                &format!("{env}-{j}"),
                &[("env", env), ("site", site), ("n", &format!("{i}{j}"))],
                4000,
                8192,
            );
        }
    }
    c
}

#[test]
fn constrained_service_lands_only_on_matching_nodes_on_distinct_nodes() {
    let mut c = three_envs();
    c.service("web", spec(3, 500, 256, &["env==qa"]));
    let plan = c.eval();
    assert_eq!(plan.placements.len(), 3);
    assert!(plan.failures.is_empty());
    let allocs = c.wanted("web");
    assert_eq!(allocs.len(), 3);
    let nodes: HashSet<NodeId> = allocs.iter().map(|a| a.node).collect();
    assert_eq!(nodes.len(), 3, "replicas on distinct nodes");
    for a in allocs {
        assert_eq!(c.label_of(a, "env"), "qa");
    }
    // A second evaluation with nothing changed proposes nothing.
    assert_eq!(c.eval(), Plan::default());
}

#[test]
fn impossible_constraint_stays_pending_with_reasons_per_node() {
    let mut c = three_envs();
    c.service("web", spec(2, 100, 64, &["env==staging"]));
    let plan = c.eval();
    assert!(plan.placements.is_empty());
    assert_eq!(plan.failures.len(), 1);
    let f = &plan.failures[0];
    assert_eq!(f.missing, 2);
    assert_eq!(f.reasons.get("env!=staging"), Some(&9), "{f}");
    assert_eq!(
        f.to_string(),
        "2 replica(s) of web not placed: 9 nodes: env!=staging"
    );
}

#[test]
fn resource_reasons_name_the_dimension_and_the_amounts() {
    let mut c = Cluster::new();
    c.node("a", &[("env", "qa")], 1000, 300);
    c.node("b", &[("env", "dev")], 1000, 4096);
    c.service("db", spec(1, 100, 512, &["env==qa"]));
    let plan = c.eval();
    let f = &plan.failures[0];
    assert_eq!(
        f.to_string(),
        "1 replica(s) of db not placed: 1 node: env!=qa; 1 node: memory 512Mi > 300Mi free"
    );
}

#[test]
fn binpack_fills_one_node_before_the_next() {
    let mut c = Cluster::new();
    let a = c.node("a", &[], 4000, 4096);
    let _b = c.node("b", &[], 4000, 4096);
    c.service("x", spec(1, 2000, 2048, &[]));
    c.eval();
    let first = c.wanted("x")[0].node;
    // Another service, smaller: goes to the node already in use (fuller after placement).
    c.service("y", spec(1, 1000, 1024, &[]));
    c.eval();
    assert_eq!(c.wanted("y")[0].node, first);
    let _ = a;
}

#[test]
fn spread_over_site_balances_replicas() {
    let mut c = Cluster::new();
    for i in 0..4 {
        c.node(&format!("on{i}"), &[("site", "onprem")], 4000, 4096);
    }
    for i in 0..4 {
        c.node(&format!("cl{i}"), &[("site", "cloud")], 4000, 4096);
    }
    let mut s = spec(4, 100, 64, &[]);
    s.spread = Some("site".into());
    c.service("web", s);
    c.eval();
    let per_site = c.per_label("web", "site");
    assert_eq!(per_site.get("onprem"), Some(&2), "{per_site:?}");
    assert_eq!(per_site.get("cloud"), Some(&2), "{per_site:?}");
}

#[test]
fn spread_follows_relabelled_nodes_and_never_prefers_an_unlabelled_one() {
    // One scheduler for every evaluation: what it remembers of the nodes' spread values
    // must not outlive a change of labels.
    let mut c = Cluster::new();
    for i in 0..3 {
        c.node(&format!("on{i}"), &[("site", "onprem")], 4000, 4096);
        c.node(&format!("cl{i}"), &[("site", "cloud")], 4000, 4096);
    }
    // Emptier than every labelled node once they hold a replica: binpack alone would not
    // pick it first, spread must not pick it at all.
    c.node("bare", &[], 4000, 4096);
    let mut s = spec(2, 100, 64, &[]);
    s.spread = Some("site".into());
    c.service("web", s.clone());
    c.eval();
    let onprem = c
        .wanted("web")
        .into_iter()
        .find(|a| c.label_of(a, "site") == "onprem")
        .map(|a| a.node)
        .expect("one replica per site");
    c.apply(Command::SetNodeLabels {
        node: onprem,
        labels: [("site".to_string(), "cloud".to_string())].into(),
    });
    // Both current replicas are in the cloud now: the two new ones go on-prem.
    s.replicas = 4;
    c.service("web", s);
    c.eval();
    for a in c.wanted("web") {
        let node = c.state.node(a.node).unwrap();
        assert_ne!(
            node.name, "bare",
            "a node without the spread label was chosen"
        );
    }
    let per_site = c.per_label("web", "site");
    assert_eq!(per_site.get("onprem"), Some(&2), "{per_site:?}");
    assert_eq!(per_site.get("cloud"), Some(&2), "{per_site:?}");
}

#[test]
fn the_memo_holds_a_bounded_number_of_spread_labels() {
    let mut c = Cluster::new();
    for i in 0..4 {
        let zone = format!("z{}", i % 2);
        let labels: Vec<(String, String)> =
            (0..40).map(|k| (format!("k{k}"), zone.clone())).collect();
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        c.node(&format!("n{i}"), &labels, 64_000, 65_536);
    }
    for k in 0..40 {
        let mut s = spec(2, 10, 1, &[]);
        s.spread = Some(format!("k{k}"));
        let name = format!("s{k}");
        c.service(&name, s);
        // This service alone: an evaluation holds the spread labels of the services in it.
        let plan = c.sched.evaluate(&c.state, &[name.as_str()]);
        let cmd = plan_apply::verify(&c.state, &plan)
            .into_command()
            .expect("placements");
        c.apply(cmd);
        let held = c.sched.labels.lock().unwrap().spread_labels();
        assert!(
            held <= pool::MAX_SPREADS + 1,
            "{held} spread labels held after {k} services"
        );
        // Still spread: one replica per zone.
        let zones: std::collections::BTreeSet<String> = c
            .wanted(&format!("s{k}"))
            .iter()
            .map(|a| c.label_of(a, &format!("k{k}")))
            .collect();
        assert_eq!(zones.len(), 2, "service s{k}: {zones:?}");
    }
}

#[test]
fn scale_down_stops_pending_before_running() {
    let mut c = three_envs();
    c.service("web", spec(3, 100, 64, &[]));
    c.eval();
    // Two run, one is still pending.
    let ids: Vec<u64> = c.wanted("web").iter().map(|a| a.id).collect();
    let node_of = |c: &Cluster, id| c.state.allocation(id).unwrap().node;
    for &id in &ids[..2] {
        let node = node_of(&c, id);
        c.apply(Command::ReportAllocStatus {
            node,
            batch: vec![AllocReport {
                id,
                observed: Observed::Running,
                container: None,
            }],
        });
    }
    c.service("web", spec(2, 100, 64, &[]));
    let plan = c.eval();
    assert_eq!(plan.stops, vec![ids[2]]);
    assert_eq!(c.wanted("web").len(), 2);
}

/// Drive evaluations until the service converges, checking make-before-break on the way.
fn converge(c: &mut Cluster, svc: &str, replicas: usize, surge: usize) -> usize {
    for round in 0..50 {
        let before = c.running(svc).len();
        let plan = c.eval();
        let after_stops = c.running(svc).len();
        assert!(
            after_stops >= before.min(replicas),
            "round {round}: running dropped from {before} to {after_stops}"
        );
        assert!(
            c.wanted(svc).len() <= replicas + surge,
            "round {round}: {} allocations wanted, more than {replicas} + {surge}",
            c.wanted(svc).len()
        );
        c.run_all();
        assert!(c.running(svc).len() <= replicas + surge);
        if plan.placements.is_empty() && plan.stops.is_empty() {
            return round;
        }
    }
    panic!("{svc} did not converge in 50 rounds");
}

#[test]
fn rolling_update_is_make_before_break_within_max_parallel() {
    let mut c = three_envs();
    let mut s = spec(3, 100, 64, &[]);
    s.update = UpdatePolicy { max_parallel: 1 };
    c.service("web", s.clone());
    converge(&mut c, "web", 3, 1);
    let v1 = c.state.service("web").unwrap().version;
    s.image = "app:2".into();
    c.service("web", s);
    let v2 = c.state.service("web").unwrap().version;
    assert!(v2 > v1);
    let rounds = converge(&mut c, "web", 3, 1);
    assert!(rounds >= 3, "one replica at a time takes several rounds");
    assert!(c.running("web").iter().all(|a| a.version == v2));
    assert_eq!(c.running("web").len(), 3);
}

#[test]
fn scaling_and_moving_keep_the_version_an_image_change_bumps_it() {
    let mut c = three_envs();
    let mut s = spec(2, 100, 64, &["env==dev"]);
    c.service("web", s.clone());
    let v = c.state.service("web").unwrap().version;
    s.replicas = 3;
    s.constraints = vec!["env==qa".parse().unwrap()];
    c.service("web", s.clone());
    assert_eq!(c.state.service("web").unwrap().version, v);
    s.image = "app:2".into();
    c.service("web", s);
    assert_eq!(c.state.service("web").unwrap().version, v + 1);
}

#[test]
fn migrate_dev_to_qa_never_drops_below_replicas() {
    let mut c = three_envs();
    let mut s = spec(2, 100, 64, &["env==dev"]);
    s.update = UpdatePolicy { max_parallel: 2 };
    c.service("web", s.clone());
    converge(&mut c, "web", 2, 2);
    s.constraints = vec!["env==qa".parse().unwrap()];
    c.service("web", s);
    converge(&mut c, "web", 2, 2);
    let running = c.running("web");
    assert_eq!(running.len(), 2);
    for a in running {
        assert_eq!(c.label_of(a, "env"), "qa");
    }
}

#[test]
fn a_published_service_moves_only_once_its_replacement_is_in_the_mesh() {
    use crate::state::{PortMapping, Protocol};
    let mut c = three_envs();
    let mut s = spec(1, 100, 64, &["env==dev"]);
    s.networks = vec!["web".into()];
    s.endpoints = vec![PortMapping {
        container: 80,
        host: 8080,
        protocol: Protocol::Tcp,
    }];
    c.service("web", s.clone());
    c.eval();
    c.run_all();
    let old = c.running("web")[0].id;
    s.constraints = vec!["env==qa".parse().unwrap()];
    c.service("web", s);
    c.eval();
    c.run_all();
    let new = c
        .wanted("web")
        .into_iter()
        .find(|a| a.id != old)
        .expect("a replacement on qa")
        .clone();
    assert_eq!(c.label_of(&new, "env"), "qa");
    assert_eq!(new.observed, Observed::Running);
    // running, but not yet in the mesh (its address is recorded once its ports accept):
    // the old allocation keeps serving
    let plan = c.eval();
    assert!(plan.stops.is_empty(), "stopped too early: {:?}", plan.stops);
    assert_eq!(c.state.allocation(old).unwrap().desired, Desired::Run);
    let subnet = c
        .state
        .node(new.node)
        .unwrap()
        .subnet
        .expect("a node subnet");
    let ip = subnet.hosts().nth(1).unwrap();
    c.apply(Command::SetAllocAddresses {
        node: new.node,
        addresses: vec![(new.id, Some(ip))],
    });
    let plan = c.eval();
    assert_eq!(plan.stops.len(), 1, "{:?}", plan.stops);
    assert_eq!(c.state.allocation(old).unwrap().desired, Desired::Stop);
}

#[test]
fn node_down_replaces_elsewhere_and_drain_moves_off() {
    let mut c = three_envs();
    c.service("web", spec(2, 100, 64, &["env==prod"]));
    converge(&mut c, "web", 2, 1);
    let victim = c.running("web")[0].node;
    c.apply(Command::SetNodeStatus {
        node: victim,
        status: NodeStatus::Down,
    });
    converge(&mut c, "web", 2, 1);
    assert_eq!(c.running("web").len(), 2);
    assert!(c.running("web").iter().all(|a| a.node != victim));

    // The lost node comes back (empty: its allocation was stopped), then one is drained.
    c.apply(Command::SetNodeStatus {
        node: victim,
        status: NodeStatus::Ready,
    });
    let drained = c.running("web")[0].node;
    c.apply(Command::SetNodeStatus {
        node: drained,
        status: NodeStatus::Draining,
    });
    converge(&mut c, "web", 2, 1);
    assert!(c.running("web").iter().all(|a| a.node != drained));
    assert_eq!(c.running("web").len(), 2);
}

#[test]
fn failover_goes_to_the_next_site_when_the_first_is_lost() {
    let mut c = three_envs();
    let mut s = spec(1, 100, 64, &["env==prod"]);
    s.failover = vec![
        vec!["site==onprem".parse().unwrap()],
        vec!["site==cloud".parse().unwrap()],
    ];
    c.service("db", s);
    converge(&mut c, "db", 1, 1);
    assert_eq!(c.label_of(c.running("db")[0], "site"), "onprem");
    for name in ["prod-0", "prod-1"] {
        let id = c.state.node_by_name(name).unwrap().id;
        c.apply(Command::SetNodeStatus {
            node: id,
            status: NodeStatus::Down,
        });
    }
    converge(&mut c, "db", 1, 1);
    assert_eq!(c.label_of(c.running("db")[0], "site"), "cloud");
}

fn set_status(c: &mut Cluster, name: &str, status: NodeStatus) {
    let id = c.state.node_by_name(name).unwrap().id;
    c.apply(Command::SetNodeStatus { node: id, status });
}

fn sites_of(c: &Cluster, svc: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .running(svc)
        .iter()
        .map(|a| c.label_of(a, "site"))
        .collect();
    v.sort();
    v
}

#[test]
fn failback_returns_to_the_preferred_site_make_before_break_and_only_when_asked() {
    for failback in [false, true] {
        let mut c = three_envs();
        let mut s = spec(1, 100, 64, &["env==prod"]);
        s.failover = vec![
            vec!["site==onprem".parse().unwrap()],
            vec!["site==cloud".parse().unwrap()],
        ];
        s.failback = failback;
        c.service("db", s);
        converge(&mut c, "db", 1, 1);
        assert_eq!(sites_of(&c, "db"), ["onprem"]);
        set_status(&mut c, "prod-0", NodeStatus::Down);
        set_status(&mut c, "prod-1", NodeStatus::Down);
        converge(&mut c, "db", 1, 1);
        assert_eq!(sites_of(&c, "db"), ["cloud"]);
        // the preferred site is back (converge checks that a replica runs throughout and
        // that no more than replicas + max_parallel are wanted)
        set_status(&mut c, "prod-1", NodeStatus::Ready);
        converge(&mut c, "db", 1, 1);
        let want = if failback { "onprem" } else { "cloud" };
        assert_eq!(sites_of(&c, "db"), [want], "failback {failback}");
        assert_eq!(c.wanted("db").len(), 1);
    }
}

#[test]
fn failback_moves_only_as_many_as_the_preferred_site_can_take_without_churn() {
    let mut c = three_envs();
    let mut s = spec(2, 100, 64, &["env==prod"]);
    s.failover = vec![
        vec!["site==onprem".parse().unwrap()],
        vec!["site==cloud".parse().unwrap()],
    ];
    s.failback = true;
    c.service("db", s);
    converge(&mut c, "db", 2, 1);
    assert_eq!(sites_of(&c, "db"), ["onprem", "onprem"]);
    set_status(&mut c, "prod-0", NodeStatus::Down);
    converge(&mut c, "db", 2, 1);
    assert_eq!(sites_of(&c, "db"), ["cloud", "onprem"]);
    // a full preferred site (distinct nodes: prod-1 holds one already): nothing moves,
    // and the evaluation settles (converge fails after 50 rounds of changes)
    let plan = c.eval();
    assert!(
        plan.placements.is_empty() && plan.stops.is_empty(),
        "{plan:?}"
    );
    // room again: the cloud replica comes back
    set_status(&mut c, "prod-0", NodeStatus::Ready);
    converge(&mut c, "db", 2, 1);
    assert_eq!(sites_of(&c, "db"), ["onprem", "onprem"]);
}

#[test]
fn ports_fixed_conflict_and_dynamic_assignment() {
    let mut c = Cluster::new();
    c.node("a", &[], 4000, 4096);
    c.node("b", &[], 4000, 4096);
    let mut web = spec(2, 100, 64, &[]);
    web.ports = vec![
        PortSpec {
            container: 80,
            host: Some(8080),
            protocol: Protocol::Tcp,
        },
        PortSpec {
            container: 9000,
            host: None,
            protocol: Protocol::Tcp,
        },
    ];
    c.service("web", web.clone());
    c.eval();
    for a in c.wanted("web") {
        assert!(a.ports.iter().any(|p| p.host == 8080 && p.container == 80));
        assert!(a
            .ports
            .iter()
            .any(|p| p.container == 9000 && (30000..=32767).contains(&p.host)));
    }
    // Another service wanting 8080 fits nowhere now.
    let mut other = spec(1, 100, 64, &[]);
    other.ports = vec![web.ports[0].clone()];
    c.service("other", other);
    let plan = c.eval();
    assert_eq!(
        plan.failures[0].reasons.get("port tcp/8080 in use"),
        Some(&2)
    );
}

#[test]
fn evaluating_after_a_plan_in_flight_counts_it_as_applied() {
    let mut c = Cluster::new();
    c.node("a", &[], 4000, 4096);
    c.node("b", &[], 4000, 4096);
    let mut big = spec(2, 3000, 64, &[]);
    big.ports = vec![PortSpec {
        container: 80,
        host: Some(8080),
        protocol: Protocol::Tcp,
    }];
    c.service("big", big.clone());
    c.service("small", spec(2, 2000, 64, &[]));
    let mut port = spec(1, 100, 64, &[]);
    port.ports = big.ports.clone();
    c.service("port", port);

    // The plan for `big` is being committed, not applied: 1000m left on each node, and
    // 8080 taken on both.
    let first = c.sched.evaluate(&c.state, &["big"]);
    assert_eq!(first.placements.len(), 2);
    let next = c.sched.evaluate_after(&c.state, &["small", "port"], &first);
    assert!(next.placements.is_empty(), "{next:?}");
    let reasons: Vec<&String> = next
        .failures
        .iter()
        .flat_map(|f| f.reasons.keys())
        .collect();
    assert!(
        reasons.contains(&&"cpu 2000m > 1000m free".to_string()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&&"port tcp/8080 in use".to_string()),
        "{reasons:?}"
    );
    // Without the prior plan both would fit.
    assert_eq!(c.sched.evaluate(&c.state, &["small"]).placements.len(), 2);

    // Once applied, a plan that stops `big` frees what it held for the next evaluation.
    let cmd = plan_apply::verify(&c.state, &first).into_command().unwrap();
    c.apply(cmd);
    big.replicas = 0;
    c.service("big", big);
    let stops = c.sched.evaluate(&c.state, &["big"]);
    assert_eq!(stops.stops.len(), 2);
    let after = c.sched.evaluate_after(&c.state, &["small", "port"], &stops);
    assert_eq!(after.placements.len(), 3, "{after:?}");
    // ... and the leader's re-check accepts it on the state the stops produce.
    let cmd = plan_apply::verify(&c.state, &stops).into_command().unwrap();
    c.apply(cmd);
    let verified = plan_apply::verify(&c.state, &after);
    assert!(verified.rejected.is_empty(), "{:?}", verified.rejected);
}

#[test]
fn plan_apply_drops_placements_that_went_stale() {
    let mut c = Cluster::new();
    let a = c.node("a", &[], 1000, 1024);
    c.service("x", spec(1, 800, 512, &[]));
    c.service("y", spec(1, 800, 512, &[]));
    // Two plans computed on the same view: each alone fits.
    let px = c.sched.evaluate(&c.state, &["x"]);
    let py = c.sched.evaluate(&c.state, &["y"]);
    let vx = plan_apply::verify(&c.state, &px);
    assert_eq!(vx.placements.len(), 1);
    c.apply(vx.into_command().unwrap());
    let vy = plan_apply::verify(&c.state, &py);
    assert!(vy.placements.is_empty());
    assert_eq!(vy.rejected.len(), 1);
    assert!(vy.rejected[0].reason.starts_with("cpu 800m > 200m free"));
    assert!(vy.into_command().is_none());
    // A node that went down between plan and apply.
    c.service("z", spec(1, 100, 64, &[]));
    let pz = c.sched.evaluate(&c.state, &["z"]);
    c.apply(Command::SetNodeStatus {
        node: a,
        status: NodeStatus::Down,
    });
    let vz = plan_apply::verify(&c.state, &pz);
    assert_eq!(vz.rejected[0].reason, "node down");
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Event {
    Eval,
    RunAll,
    NodeDown(usize),
    NodeReady(usize),
    Drain(usize),
    Scale(usize, u32),
    Retarget(usize, usize),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => Just(Event::Eval),
        3 => Just(Event::RunAll),
        1 => (0usize..12).prop_map(Event::NodeDown),
        1 => (0usize..12).prop_map(Event::NodeReady),
        1 => (0usize..12).prop_map(Event::Drain),
        1 => (0usize..4, 0u32..6).prop_map(|(s, r)| Event::Scale(s, r)),
        1 => (0usize..4, 0usize..3).prop_map(|(s, e)| Event::Retarget(s, e)),
    ]
}

const ENVS: [&str; 3] = ["dev", "qa", "prod"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens to nodes and services: every committed plan is accepted by the
    /// state machine, no node is over-committed, every new placement satisfies its
    /// service's constraints, and no service wants more than replicas + surge.
    #[test]
    fn scheduling_invariants(
        caps in proptest::collection::vec((500u64..4000, 128u64..4096), 12),
        events in proptest::collection::vec(event(), 1..60),
        surge in 1u32..3,
    ) {
        let mut c = Cluster::new();
        let mut ids = Vec::new();
        for (i, (cpu, mem)) in caps.iter().enumerate() {
            let site = if i % 4 < 2 { "a" } else { "b" };
            ids.push(c.node(&format!("n{i}"), &[("env", ENVS[i % 3]), ("site", site)], *cpu, *mem));
        }
        let mut specs: Vec<ServiceSpec> = (0..4)
            .map(|i| {
                let mut s = spec(2 + i as u32, 300, 100, &[&format!("env=={}", ENVS[i % 3])]);
                s.update = UpdatePolicy { max_parallel: surge };
                if i == 3 {
                    // failover between sites with fail-back
                    s.failover = vec![
                        vec!["site==a".parse().unwrap()],
                        vec!["site==b".parse().unwrap()],
                    ];
                    s.failback = true;
                }
                s
            })
            .collect();
        for (i, s) in specs.iter().enumerate() {
            c.service(&format!("s{i}"), s.clone());
        }
        for ev in events {
            match ev {
                Event::Eval => {
                    let before: HashSet<u64> = c.state.allocations().map(|a| a.id).collect();
                    let plan = c.sched.evaluate_all(&c.state);
                    let v = plan_apply::verify(&c.state, &plan);
                    prop_assert!(v.rejected.is_empty(), "fresh plan rejected: {:?}", v.rejected);
                    if let Some(cmd) = v.into_command() {
                        c.index += 1;
                        let (r, _) = c.state.apply(c.index, &cmd);
                        prop_assert!(r.is_ok(), "state refused a verified plan: {r:?}");
                    }
                    for a in c.state.allocations().filter(|a| !before.contains(&a.id)) {
                        let svc = c.state.service(&a.service).unwrap();
                        let node = c.state.node(a.node).unwrap();
                        prop_assert!(Constraint::all_match(&svc.spec.constraints, &node.labels));
                        prop_assert_eq!(node.status, NodeStatus::Ready);
                    }
                    // Once the scheduler has acted on the latest specs.
                    for (i, s) in specs.iter().enumerate() {
                        let wanted = c.wanted(&format!("s{i}")).len();
                        prop_assert!(wanted <= (s.replicas + surge) as usize,
                            "s{i}: {wanted} wanted > {} + {surge}", s.replicas);
                    }
                }
                Event::RunAll => c.run_all(),
                Event::NodeDown(i) => { c.apply(Command::SetNodeStatus { node: ids[i], status: NodeStatus::Down }); }
                Event::NodeReady(i) => { c.apply(Command::SetNodeStatus { node: ids[i], status: NodeStatus::Ready }); }
                Event::Drain(i) => { c.apply(Command::SetNodeStatus { node: ids[i], status: NodeStatus::Draining }); }
                Event::Scale(s, r) => {
                    specs[s].replicas = r;
                    c.service(&format!("s{s}"), specs[s].clone());
                }
                Event::Retarget(s, e) => {
                    specs[s].constraints = vec![format!("env=={}", ENVS[e]).parse().unwrap()];
                    c.service(&format!("s{s}"), specs[s].clone());
                }
            }
            for n in c.state.nodes() {
                prop_assert!(c.state.used(n.id).exceeds(&n.allocatable).is_none(), "node {} over-committed", n.name);
            }

        }
    }
}

/// The scheduler keeps which nodes pass which constraint between evaluations; relabelling
/// nodes must be seen at once, both where replicas run and where new ones go.
#[test]
fn relabelled_nodes_are_seen_by_the_next_evaluation() {
    let mut c = Cluster::new();
    let a = c.node("a", &[("env", "prod")], 4000, 4096);
    let b = c.node("b", &[("env", "dev")], 4000, 4096);
    c.service("web", spec(1, 100, 64, &["env==prod"]));
    c.eval();
    c.run_all();
    assert_eq!(c.running("web")[0].node, a);
    let epoch = c.state.labels_epoch();
    let relabel = |node, env: &str| Command::SetNodeLabels {
        node,
        labels: [("env".to_string(), env.to_string())].into(),
    };
    c.apply(relabel(a, "dev"));
    c.apply(relabel(b, "prod"));
    assert_ne!(c.state.labels_epoch(), epoch);
    // The replica on a no longer fits: its replacement goes to b, then a's is stopped.
    let plan = c.eval();
    assert_eq!(
        plan.placements.iter().map(|p| p.node).collect::<Vec<_>>(),
        vec![b],
        "{plan:?}"
    );
    c.run_all();
    c.eval();
    let web: Vec<NodeId> = c.wanted("web").iter().map(|a| a.node).collect();
    assert_eq!(web, vec![b]);
    // A new service with the same constraint goes to b too.
    c.service("api", spec(1, 100, 64, &["env==prod"]));
    let plan = c.eval();
    assert_eq!(plan.placements[0].node, b, "{plan:?}");
    // Relabelling a node to the labels it has already changes nothing.
    let epoch = c.state.labels_epoch();
    c.apply(relabel(b, "prod"));
    assert_eq!(c.state.labels_epoch(), epoch);
}

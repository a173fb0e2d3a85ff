//! The replicated cluster state and its deterministic transition function.
//!
//! Vocabulary: the [`State`] holds [`Node`]s, [`Service`]s and [`Allocation`]s; a
//! [`Command`] (one Raft log entry) is applied by [`State::apply`] at a log index, which
//! validates it (a bad command changes nothing and answers an [`ApplyError`] naming the
//! field), mutates the state in place and lists the [`Change`]s it made. *Usage* of a node
//! is the sum of the resources of its allocations whose desired status is `Run`.
//!
//! No I/O and no Raft here: the Raft state machine (`raft/`) calls `apply` and persists the
//! changes; the scheduler reads the state through the accessors.

pub mod command;
pub mod constraint;
#[cfg(test)]
mod limits_tests;
pub mod model;
pub mod subnet;
#[cfg(test)]
mod tests;

pub use command::*;
pub use constraint::{Constraint, ConstraintError, Op};
pub use model::*;
pub use subnet::ClusterNetwork;

use crate::limits::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

pub use crate::limits::MAX_REPLICAS;

#[derive(Debug, Default, Clone)]
pub struct State {
    nodes: BTreeMap<NodeId, Node>,
    node_names: HashMap<String, NodeId>,
    /// Every node's subnet (nodes are never removed, so neither are these).
    node_subnets: BTreeSet<ipnet::Ipv4Net>,
    services: BTreeMap<String, Service>,
    /// Shared with the changes that carry them (the watch log, the persister), so that
    /// recording a change does not copy the allocation; changed through `Arc::make_mut`.
    allocs: BTreeMap<AllocId, Arc<Allocation>>,
    /// Per node, what its allocations hold: looked up per candidate node by the scheduler
    /// and per placement by apply, so one map (one lookup), hashed with foldhash (ids are
    /// the controller's own, not user input).
    on_node: foldhash::HashMap<NodeId, OnNode>,
    by_service: HashMap<String, IdList>,
    next_node_id: NodeId,
    next_alloc_id: AllocId,
    tokens: BTreeMap<String, JoinToken>,
    /// The cluster network's address plan, once recorded (at bootstrap).
    cluster_network: Option<ClusterNetwork>,
    /// Names the current labels of every node ([`State::labels_epoch`]); not replicated.
    labels_epoch: u64,
}

/// Allocation ids in increasing order. A new allocation takes the next id, so adding one is
/// a push; removals (purges) come in batches, one pass per list.
#[derive(Debug, Default, Clone)]
struct IdList(Vec<AllocId>);

impl IdList {
    fn insert(&mut self, id: AllocId) {
        match self.0.last() {
            Some(&last) if last >= id => {
                if let Err(at) = self.0.binary_search(&id) {
                    self.0.insert(at, id);
                }
            }
            _ => self.0.push(id),
        }
    }
    /// Remove every id of `gone` (sorted).
    fn remove_sorted(&mut self, gone: &[AllocId]) {
        self.0.retain(|id| gone.binary_search(id).is_err());
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a IdList {
    type Item = &'a AllocId;
    type IntoIter = std::slice::Iter<'a, AllocId>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One node's allocations and what those that should run hold.
#[derive(Debug, Default, Clone)]
struct OnNode {
    allocs: IdList,
    used: Resources,
    host_ports: HashSet<(Protocol, u16)>,
}

impl OnNode {
    fn hold(&mut self, a: &Allocation) {
        self.used = self.used.saturating_add(a.resources);
        for p in &a.ports {
            self.host_ports.insert((p.protocol, p.host));
        }
    }
}

/// Hands out labels epochs: unique in the process, so equal epochs mean equal labels.
static NEXT_LABELS_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn new_labels_epoch() -> u64 {
    NEXT_LABELS_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The serializable form of a [`State`] (snapshots); indexes are rebuilt on load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateImage {
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    pub allocations: Vec<Allocation>,
    pub next_node_id: NodeId,
    pub next_alloc_id: AllocId,
    /// Join tokens (hashes only). Absent in images of older versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<JoinToken>,
    /// The recorded cluster network. Absent in images of older versions (and of clusters
    /// that recorded none: they use the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_network: Option<ClusterNetwork>,
}

/// Does moving from spec `a` to `b` change what an allocation runs (so that running
/// allocations must be replaced by new ones of a new version)?
fn reshapes_allocations(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.image != b.image
        || a.command != b.command
        || a.args != b.args
        || a.env != b.env
        || a.resources != b.resources
        || a.ports != b.ports
        || a.restart != b.restart
        || a.restart_token != b.restart_token
        || a.networks != b.networks
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// A cluster network name: 1-63 of `[a-z0-9-]`, starting alphanumeric (a DNS label
/// without dots).
pub fn valid_network_name(s: &str) -> bool {
    valid_name(s) && !s.contains('.')
}

fn valid_label_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_KEY_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_label_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LABEL_VALUE_LEN
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

/// At most `limit` entries in `field`.
fn at_most(field: &str, len: usize, limit: usize, what: &str) -> Result<(), ApplyError> {
    if len > limit {
        return Err(ApplyError::invalid(
            field,
            format!("{len} {what}, the limit is {limit}"),
        ));
    }
    Ok(())
}

fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), ApplyError> {
    at_most(field, labels.len(), MAX_LABELS, "labels")?;
    for (k, v) in labels {
        if !valid_label_key(k) {
            return Err(ApplyError::invalid(
                format!("{field}[{k:?}]"),
                format!("label key must be 1-{MAX_LABEL_KEY_LEN} of [A-Za-z0-9-_./]"),
            ));
        }
        if !valid_label_value(v) {
            return Err(ApplyError::invalid(
                format!("{field}[{k:?}]"),
                format!(
                    "label value must be 1-{MAX_LABEL_VALUE_LEN} bytes, without spaces, \
                     commas or control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// A constraint set as it arrives in JSON (the string parser's checks did not run).
fn validate_constraints(field: &str, set: &[Constraint]) -> Result<(), ApplyError> {
    at_most(field, set.len(), MAX_CONSTRAINTS, "constraints")?;
    for (i, c) in set.iter().enumerate() {
        if !valid_label_key(&c.key) {
            return Err(ApplyError::invalid(
                format!("{field}[{i}].key"),
                format!("label key must be 1-{MAX_LABEL_KEY_LEN} of [A-Za-z0-9-_./]"),
            ));
        }
        let values: &[String] = match &c.op {
            Op::Eq(v) | Op::Ne(v) => std::slice::from_ref(v),
            Op::In(vs) | Op::NotIn(vs) => {
                if vs.is_empty() {
                    return Err(ApplyError::invalid(
                        format!("{field}[{i}]"),
                        "an empty value list",
                    ));
                }
                at_most(
                    &format!("{field}[{i}]"),
                    vs.len(),
                    MAX_CONSTRAINT_VALUES,
                    "values",
                )?;
                vs
            }
            Op::Exists | Op::Absent => &[],
        };
        if let Some(v) = values.iter().find(|v| !valid_label_value(v)) {
            return Err(ApplyError::invalid(
                format!("{field}[{i}]"),
                format!(
                    "value {:?} must be 1-{MAX_LABEL_VALUE_LEN} bytes, without spaces, \
                     commas or control characters",
                    v.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

/// Command, args and environment: counts, total size, and no NUL (execve cannot carry it).
fn validate_process(spec: &ServiceSpec) -> Result<(), ApplyError> {
    at_most(
        "spec.command",
        spec.command.len() + spec.args.len(),
        MAX_ARGS,
        "entries in command and args",
    )?;
    at_most("spec.env", spec.env.len(), MAX_ENV, "variables")?;
    for (field, list) in [("spec.command", &spec.command), ("spec.args", &spec.args)] {
        if let Some(i) = list.iter().position(|a| a.contains('\0')) {
            return Err(ApplyError::invalid(
                format!("{field}[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ApplyError::invalid(
                format!("spec.env[{k:?}]"),
                "variable name must be non-empty, without '=' or NUL",
            ));
        }
        if v.contains('\0') {
            return Err(ApplyError::invalid(
                format!("spec.env[{k:?}]"),
                "value contains a NUL byte",
            ));
        }
    }
    let bytes: usize = spec
        .command
        .iter()
        .chain(&spec.args)
        .map(String::len)
        .sum::<usize>()
        + spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    if bytes > MAX_PROCESS_BYTES {
        return Err(ApplyError::invalid(
            "spec.env",
            format!(
                "command, args and environment take {bytes} bytes, the limit is \
                 {MAX_PROCESS_BYTES}"
            ),
        ));
    }
    Ok(())
}

fn validate_spec(spec: &ServiceSpec) -> Result<(), ApplyError> {
    if spec.image.trim().is_empty() {
        return Err(ApplyError::invalid("spec.image", "must not be empty"));
    }
    if spec.image.len() > MAX_IMAGE_LEN || spec.image.chars().any(char::is_control) {
        return Err(ApplyError::invalid(
            "spec.image",
            format!("must be at most {MAX_IMAGE_LEN} bytes, without control characters"),
        ));
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(ApplyError::invalid(
            "spec.replicas",
            format!("{} exceeds the limit of {MAX_REPLICAS}", spec.replicas),
        ));
    }
    if spec.update.max_parallel == 0 {
        return Err(ApplyError::invalid(
            "spec.update.max_parallel",
            "must be at least 1",
        ));
    }
    validate_process(spec)?;
    at_most("spec.ports", spec.ports.len(), MAX_PORTS, "ports")?;
    at_most(
        "spec.endpoints",
        spec.endpoints.len(),
        MAX_ENDPOINTS,
        "endpoints",
    )?;
    at_most(
        "spec.networks",
        spec.networks.len(),
        MAX_NETWORKS,
        "networks",
    )?;
    validate_constraints("spec.constraints", &spec.constraints)?;
    at_most(
        "spec.failover",
        spec.failover.len(),
        MAX_FAILOVER_SETS,
        "constraint sets",
    )?;
    let mut endpoints = HashSet::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        if e.host == 0 || e.container == 0 {
            return Err(ApplyError::invalid(
                format!("spec.endpoints[{i}]"),
                "port 0 is not a port",
            ));
        }
        if !endpoints.insert((e.protocol, e.host)) {
            return Err(ApplyError::invalid(
                format!("spec.endpoints[{i}].host"),
                format!("{:?}/{} published twice", e.protocol, e.host),
            ));
        }
        if spec.networks.is_empty() {
            return Err(ApplyError::invalid(
                format!("spec.endpoints[{i}]"),
                "an endpoint needs the service on a cluster network (spec.networks)",
            ));
        }
    }
    for (i, n) in spec.networks.iter().enumerate() {
        if !valid_network_name(n) {
            return Err(ApplyError::invalid(
                format!("spec.networks[{i}]"),
                format!("{n:?} must be 1-63 of [a-z0-9-], starting alphanumeric"),
            ));
        }
    }
    if let Some(key) = &spec.spread {
        if !valid_label_key(key) {
            return Err(ApplyError::invalid("spec.spread", "not a valid label key"));
        }
    }
    let mut container_ports = HashSet::new();
    let mut host_ports = HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.container == 0 {
            return Err(ApplyError::invalid(
                format!("spec.ports[{i}].container"),
                "port 0 is not a port",
            ));
        }
        if !container_ports.insert((p.protocol, p.container)) {
            return Err(ApplyError::invalid(
                format!("spec.ports[{i}].container"),
                format!("{:?}/{} published twice", p.protocol, p.container),
            ));
        }
        if let Some(h) = p.host {
            if h == 0 {
                return Err(ApplyError::invalid(
                    format!("spec.ports[{i}].host"),
                    "port 0 is not a port (omit it to pick any)",
                ));
            }
            if !host_ports.insert((p.protocol, h)) {
                return Err(ApplyError::invalid(
                    format!("spec.ports[{i}].host"),
                    format!("host port {:?}/{h} used twice", p.protocol),
                ));
            }
        }
    }
    for (i, set) in spec.failover.iter().enumerate() {
        if set.is_empty() {
            return Err(ApplyError::invalid(
                format!("spec.failover[{i}]"),
                "an empty constraint set",
            ));
        }
        validate_constraints(&format!("spec.failover[{i}]"), set)?;
    }
    Ok(())
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- reads (the scheduler's view) ----

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }
    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.node_names.get(name).and_then(|id| self.nodes.get(id))
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }
    pub fn allocation(&self, id: AllocId) -> Option<&Allocation> {
        self.allocs.get(&id).map(|a| &**a)
    }
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocs.values().map(|a| &**a)
    }
    /// The next ids to assign minus one: (nodes, allocations). Persisted with the state.
    /// The cluster network's plan: the recorded one, else the default.
    pub fn cluster_network(&self) -> ClusterNetwork {
        self.cluster_network.unwrap_or_default()
    }
    /// The plan recorded in Raft, if any.
    pub fn recorded_cluster_network(&self) -> Option<ClusterNetwork> {
        self.cluster_network
    }
    /// Names the current set of nodes and their labels: it changes (to a value no other
    /// state of this process has had) whenever a node is added or its labels change, and
    /// a clone keeps its original's. So two states with the same epoch have the same nodes'
    /// labels; the scheduler keeps its label matches while the epoch stays the same.
    pub fn labels_epoch(&self) -> u64 {
        self.labels_epoch
    }
    pub fn counters(&self) -> (NodeId, AllocId) {
        (self.next_node_id, self.next_alloc_id)
    }
    pub fn allocation_count(&self) -> usize {
        self.allocs.len()
    }
    /// Allocations placed on a node, in id order.
    pub fn allocations_on(&self, node: NodeId) -> impl Iterator<Item = &Allocation> {
        self.on_node
            .get(&node)
            .into_iter()
            .flat_map(|n| &n.allocs)
            .filter_map(|id| self.allocs.get(id).map(|a| &**a))
    }
    /// Allocations of a service (including stopped ones not yet purged), in id order.
    pub fn allocations_of(&self, service: &str) -> impl Iterator<Item = &Allocation> {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|id| self.allocs.get(id).map(|a| &**a))
    }
    /// Resources held on a node by allocations that should run.
    pub fn used(&self, node: NodeId) -> Resources {
        self.on_node.get(&node).map(|n| n.used).unwrap_or_default()
    }
    /// Is this host port taken on the node by an allocation that should run?
    pub fn host_port_taken(&self, node: NodeId, protocol: Protocol, port: u16) -> bool {
        self.on_node
            .get(&node)
            .is_some_and(|n| n.host_ports.contains(&(protocol, port)))
    }

    // ---- snapshots ----

    pub fn to_image(&self) -> StateImage {
        StateImage {
            nodes: self.nodes.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            allocations: self.allocs.values().map(|a| (**a).clone()).collect(),
            next_node_id: self.next_node_id,
            next_alloc_id: self.next_alloc_id,
            tokens: self.tokens.values().cloned().collect(),
            cluster_network: self.cluster_network,
        }
    }

    pub fn from_image(image: StateImage) -> Self {
        let mut s = State {
            next_node_id: image.next_node_id,
            next_alloc_id: image.next_alloc_id,
            cluster_network: image.cluster_network,
            ..Default::default()
        };
        for n in image.nodes {
            s.node_names.insert(n.name.clone(), n.id);
            s.node_subnets.extend(n.subnet.map(|net| net.trunc()));
            s.nodes.insert(n.id, n);
        }
        for svc in image.services {
            s.services.insert(svc.name.clone(), svc);
        }
        for a in image.allocations {
            s.index_alloc(&a);
            s.allocs.insert(a.id, Arc::new(a));
        }
        for t in image.tokens {
            s.tokens.insert(t.id.clone(), t);
        }
        s.labels_epoch = new_labels_epoch();
        s
    }

    /// Add an allocation to the secondary indexes (and usage, when it should run).
    fn index_alloc(&mut self, a: &Allocation) {
        let on_node = self.on_node.entry(a.node).or_default();
        on_node.allocs.insert(a.id);
        if a.desired == Desired::Run {
            on_node.hold(a);
        }
        match self.by_service.get_mut(&a.service) {
            Some(ids) => {
                ids.insert(a.id);
            }
            None => {
                self.by_service
                    .insert(a.service.clone(), IdList(vec![a.id]));
            }
        }
    }

    fn release(&mut self, node: NodeId, resources: Resources, ports: &[PortMapping]) {
        if let Some(n) = self.on_node.get_mut(&node) {
            n.used = n.used.saturating_sub(resources);
            for p in ports {
                n.host_ports.remove(&(p.protocol, p.host));
            }
        }
    }

    /// Tell an allocation to stop (and record it lost when `lost`); returns whether it
    /// changed.
    fn stop_alloc(&mut self, id: AllocId, index: u64, lost: bool) -> Option<Arc<Allocation>> {
        let entry = self.allocs.get_mut(&id)?;
        let was_run = entry.desired == Desired::Run;
        let mark_lost = lost && !entry.observed.is_terminal();
        if !was_run && !mark_lost {
            return None;
        }
        let a = Arc::make_mut(entry);
        a.desired = Desired::Stop;
        if mark_lost {
            a.observed = Observed::Lost;
            push_history(a, index);
        }
        a.modify_index = index;
        let snapshot = Arc::clone(entry);
        if was_run {
            self.release(snapshot.node, snapshot.resources, &snapshot.ports);
        }
        Some(snapshot)
    }

    // ---- the transition function ----

    /// Apply one command at Raft log index `index`. Deterministic: the same state and
    /// command give the same result on every member. On error nothing changed.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> (Response, Vec<Change>) {
        let mut changes = Vec::new();
        let r = self.apply_into(index, cmd, &mut changes);
        (r, changes)
    }

    /// [`Self::apply`], appending the changes to `changes` (left as it was when the command
    /// is rejected): the state machine collects a whole batch of entries in one vector
    /// instead of moving every command's changes into it.
    pub fn apply_into(&mut self, index: u64, cmd: &Command, changes: &mut Vec<Change>) -> Response {
        let start = changes.len();
        let r = match cmd {
            Command::RegisterNode {
                name,
                address,
                labels,
                capacity,
                allocatable,
                api,
            } => self.register_node(
                index,
                name,
                address,
                labels,
                (*capacity, *allocatable),
                api.as_deref(),
                changes,
            ),
            Command::SetNodeStatus { node, status } => {
                self.set_node_status(index, *node, *status, changes)
            }
            Command::SetNodeLabels { node, labels } => {
                self.set_node_labels(index, *node, labels, changes)
            }
            Command::UpsertService {
                name,
                spec,
                expected_index,
            } => self.upsert_service(index, name, spec, *expected_index, changes),
            Command::RemoveService { name } => self.remove_service(index, name, changes),
            Command::ApplyPlan { placements, stops } => {
                self.apply_plan(index, placements, stops, changes)
            }
            Command::ReportAllocStatus { node, batch } => self.report(index, *node, batch, changes),
            Command::PurgeAllocations { ids } => self.purge(index, ids, changes),
            Command::SetAllocAddresses { node, addresses } => {
                self.set_addresses(index, *node, addresses, changes)
            }
            Command::CreateToken {
                id,
                role,
                secret_sha256,
                expires_at_ms,
            } => self.create_token(index, id, *role, secret_sha256, *expires_at_ms, changes),
            Command::RevokeToken { id } => self.revoke_token(index, id, changes),
            Command::SetClusterNetwork { network } => self.set_cluster_network(network),
            Command::Batch { commands } => self.apply_batch(index, commands, changes),
        };
        debug_assert!(r.is_ok() || changes.len() == start);
        if r.is_err() {
            changes.truncate(start);
        }
        r
    }

    /// Record the cluster network's plan: once (the same plan again is a no-op), valid, and
    /// holding every subnet nodes already have (a cluster of an older version, which used
    /// the default, can only record the default).
    fn set_cluster_network(&mut self, network: &ClusterNetwork) -> Response {
        if let Some((field, reason)) = network.check() {
            return Err(ApplyError::invalid(format!("network.{field}"), reason));
        }
        match self.cluster_network {
            Some(have) if have == *network => return Ok(Reply::Done),
            Some(have) => {
                return Err(ApplyError::conflict(
                    "network",
                    format!("the cluster network is {have} (recorded at bootstrap) and cannot change to {network}: node subnets and container addresses come from it"),
                ))
            }
            None => {}
        }
        if let Some(n) = self.nodes.values().find(|n| {
            n.subnet.is_some_and(|s| {
                s.prefix_len() != network.node_prefix || !network.cidr.contains(&s)
            })
        }) {
            return Err(ApplyError::conflict(
                "network",
                format!(
                    "node {} already has subnet {} outside {network}",
                    n.name,
                    n.subnet.expect("checked")
                ),
            ));
        }
        self.cluster_network = Some(*network);
        Ok(Reply::Done)
    }

    /// Apply each command of a batch in order; each answers on its own (a rejected one
    /// changed nothing, as for a single command).
    fn apply_batch(
        &mut self,
        index: u64,
        commands: &[Command],
        changes: &mut Vec<Change>,
    ) -> Response {
        at_most("commands", commands.len(), MAX_BATCH_COMMANDS, "commands")?;
        let responses = commands
            .iter()
            .enumerate()
            .map(|(i, cmd)| {
                if let Command::Batch { .. } = cmd {
                    return Err(ApplyError::invalid(
                        format!("commands[{i}]"),
                        "a batch cannot contain a batch",
                    ));
                }
                self.apply_into(index, cmd, changes)
            })
            .collect();
        Ok(Reply::Batch { responses })
    }

    fn create_token(
        &mut self,
        index: u64,
        id: &str,
        role: gantry_security::Role,
        secret_sha256: &str,
        expires_at_ms: u64,
        changes: &mut Vec<Change>,
    ) -> Response {
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApplyError::invalid("id", "1-32 letters and digits"));
        }
        if secret_sha256.len() != 64 || !secret_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApplyError::invalid("secret_sha256", "64 hex digits"));
        }
        if self.tokens.contains_key(id) {
            return Err(ApplyError::conflict("id", format!("token {id} exists")));
        }
        let t = JoinToken {
            id: id.to_string(),
            role,
            secret_sha256: secret_sha256.to_ascii_lowercase(),
            expires_at_ms,
            revoked: false,
            modify_index: index,
        };
        changes.push(Change::Token(Box::new(t.clone())));
        self.tokens.insert(t.id.clone(), t);
        Ok(Reply::Done)
    }

    fn revoke_token(&mut self, index: u64, id: &str, changes: &mut Vec<Change>) -> Response {
        let Some(t) = self.tokens.get_mut(id) else {
            return Err(ApplyError::not_found("id", format!("token {id}")));
        };
        if !t.revoked {
            t.revoked = true;
            t.modify_index = index;
            changes.push(Change::Token(Box::new(t.clone())));
        }
        Ok(Reply::Done)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &JoinToken> {
        self.tokens.values()
    }

    pub fn token(&self, id: &str) -> Option<&JoinToken> {
        self.tokens.get(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn register_node(
        &mut self,
        index: u64,
        name: &str,
        address: &str,
        labels: &BTreeMap<String, String>,
        (capacity, allocatable): (Resources, Resources),
        api: Option<&str>,
        changes: &mut Vec<Change>,
    ) -> Response {
        if !valid_name(name) {
            return Err(ApplyError::invalid(
                "name",
                format!("{name:?} must be 1-63 of [a-z0-9-.], starting alphanumeric"),
            ));
        }
        if address.is_empty()
            || address.len() > MAX_ADDRESS_LEN
            || address.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ApplyError::invalid(
                "address",
                format!("must be a host:port of 1-{MAX_ADDRESS_LEN} bytes without spaces"),
            ));
        }
        if let Some(api) = api {
            if api.is_empty()
                || api.len() > MAX_ADDRESS_LEN
                || api.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ApplyError::invalid(
                    "api",
                    format!("must be a host:port of 1-{MAX_ADDRESS_LEN} bytes without spaces"),
                ));
            }
        }
        validate_labels("labels", labels)?;
        if let Some(dim) = allocatable.exceeds(&capacity) {
            return Err(ApplyError::invalid(
                format!("allocatable.{dim}"),
                "exceeds the node's capacity",
            ));
        }
        let id = match self.node_names.get(name) {
            Some(&id) => {
                let n = self
                    .nodes
                    .get_mut(&id)
                    .expect("name index points at a node");
                n.address = address.to_string();
                if &n.labels != labels {
                    n.labels = labels.clone();
                    self.labels_epoch = new_labels_epoch();
                }
                n.capacity = capacity;
                n.allocatable = allocatable;
                n.api = api.map(str::to_string);
                if n.status == NodeStatus::Down {
                    n.status = NodeStatus::Ready;
                }
                n.modify_index = index;
                changes.push(Change::Node(Box::new(n.clone())));
                id
            }
            None => {
                let plan = self.cluster_network();
                let subnet = subnet::allocate(plan.cidr, plan.node_prefix, &self.node_subnets);
                if subnet.is_none() {
                    tracing::warn!(
                        node = name,
                        "cluster network exhausted: node gets no subnet"
                    );
                }
                self.next_node_id += 1;
                let id = self.next_node_id;
                let n = Node {
                    subnet,
                    id,
                    name: name.to_string(),
                    address: address.to_string(),
                    labels: labels.clone(),
                    capacity,
                    allocatable,
                    status: NodeStatus::Ready,
                    modify_index: index,
                    api: api.map(str::to_string),
                };
                changes.push(Change::Node(Box::new(n.clone())));
                self.node_names.insert(name.to_string(), id);
                self.node_subnets.extend(subnet);
                self.nodes.insert(id, n);
                self.labels_epoch = new_labels_epoch();
                id
            }
        };
        Ok(Reply::NodeRegistered { id })
    }

    fn set_node_status(
        &mut self,
        index: u64,
        node: NodeId,
        status: NodeStatus,
        changes: &mut Vec<Change>,
    ) -> Response {
        let n = self
            .nodes
            .get_mut(&node)
            .ok_or_else(|| ApplyError::not_found("node", format!("node {node}")))?;
        if n.status == status {
            return Ok(Reply::Done);
        }
        n.status = status;
        n.modify_index = index;
        changes.push(Change::Node(Box::new(n.clone())));
        if status == NodeStatus::Down {
            let ids: Vec<AllocId> = self
                .on_node
                .get(&node)
                .map(|n| n.allocs.0.clone())
                .unwrap_or_default();
            for id in ids {
                if let Some(a) = self.stop_alloc(id, index, true) {
                    changes.push(Change::Allocation(a));
                }
            }
        }
        Ok(Reply::Done)
    }

    fn set_node_labels(
        &mut self,
        index: u64,
        node: NodeId,
        labels: &BTreeMap<String, String>,
        changes: &mut Vec<Change>,
    ) -> Response {
        validate_labels("labels", labels)?;
        let n = self
            .nodes
            .get_mut(&node)
            .ok_or_else(|| ApplyError::not_found("node", format!("node {node}")))?;
        if &n.labels != labels {
            n.labels = labels.clone();
            self.labels_epoch = new_labels_epoch();
            n.modify_index = index;
            changes.push(Change::Node(Box::new(n.clone())));
        }
        Ok(Reply::Done)
    }

    fn upsert_service(
        &mut self,
        index: u64,
        name: &str,
        spec: &ServiceSpec,
        expected_index: Option<u64>,
        changes: &mut Vec<Change>,
    ) -> Response {
        if !valid_name(name) {
            return Err(ApplyError::invalid(
                "name",
                format!("{name:?} must be 1-63 of [a-z0-9-.], starting alphanumeric"),
            ));
        }
        validate_spec(spec)?;
        for (i, e) in spec.endpoints.iter().enumerate() {
            if let Some(other) = self.services.values().find(|o| {
                o.name != name
                    && o.spec
                        .endpoints
                        .iter()
                        .any(|x| x.protocol == e.protocol && x.host == e.host)
            }) {
                return Err(ApplyError::conflict(
                    format!("spec.endpoints[{i}].host"),
                    format!(
                        "{:?}/{} is published by service {}",
                        e.protocol, e.host, other.name
                    ),
                ));
            }
        }
        let current = self.services.get(name);
        if let Some(expected) = expected_index {
            let actual = current.map_or(0, |s| s.modify_index);
            if actual != expected {
                return Err(ApplyError::conflict(
                    "expected_index",
                    format!("service {name} is at index {actual}, not {expected}"),
                ));
            }
        }
        let version = match current {
            Some(s) if &s.spec == spec => return Ok(Reply::ServiceUpserted { version: s.version }),
            // Scaling, moving (constraints, failover, spread) or retuning updates keeps
            // the allocations that run; only a change of what runs replaces them.
            Some(s) if !reshapes_allocations(&s.spec, spec) => s.version,
            Some(s) => s.version + 1,
            None => 1,
        };
        let svc = Service {
            name: name.to_string(),
            spec: spec.clone(),
            version,
            modify_index: index,
        };
        changes.push(Change::Service(Box::new(svc.clone())));
        self.services.insert(name.to_string(), svc);
        Ok(Reply::ServiceUpserted { version })
    }

    fn remove_service(&mut self, index: u64, name: &str, changes: &mut Vec<Change>) -> Response {
        if self.services.remove(name).is_none() {
            return Err(ApplyError::not_found("name", format!("service {name}")));
        }
        changes.push(Change::ServiceRemoved {
            name: name.to_string(),
            index,
        });
        let ids: Vec<AllocId> = self
            .by_service
            .get(name)
            .map(|s| s.0.clone())
            .unwrap_or_default();
        for id in ids {
            if let Some(a) = self.stop_alloc(id, index, false) {
                changes.push(Change::Allocation(a));
            }
        }
        Ok(Reply::Done)
    }

    fn apply_plan(
        &mut self,
        index: u64,
        placements: &[Placement],
        stops: &[AllocId],
        changes: &mut Vec<Change>,
    ) -> Response {
        // Validate everything against the state as it will be after the stops, before
        // changing anything: a plan is all or nothing.
        let mut freed: foldhash::HashMap<NodeId, Resources> = Default::default();
        let mut freed_ports: HashSet<(NodeId, Protocol, u16)> = HashSet::new();
        let mut seen_stops = HashSet::new();
        for (i, id) in stops.iter().enumerate() {
            let a = self.allocs.get(id).ok_or_else(|| {
                ApplyError::not_found(format!("stops[{i}]"), format!("allocation {id}"))
            })?;
            if !seen_stops.insert(*id) {
                return Err(ApplyError::invalid(
                    format!("stops[{i}]"),
                    format!("allocation {id} listed twice"),
                ));
            }
            if a.desired == Desired::Run {
                let f = freed.entry(a.node).or_default();
                *f = f.saturating_add(a.resources);
                for p in &a.ports {
                    freed_ports.insert((a.node, p.protocol, p.host));
                }
            }
        }
        let mut added: foldhash::HashMap<NodeId, Resources> = Default::default();
        let mut new_ports: HashSet<(NodeId, Protocol, u16)> = HashSet::new();
        // A plan's placements come grouped by service: look each service up once.
        let mut last: Option<&Service> = None;
        for (i, p) in placements.iter().enumerate() {
            let svc = match last {
                Some(svc) if svc.name == p.service => svc,
                _ => self.services.get(&p.service).ok_or_else(|| {
                    ApplyError::not_found(
                        format!("placements[{i}].service"),
                        format!("service {}", p.service),
                    )
                })?,
            };
            last = Some(svc);
            if svc.version != p.version {
                return Err(ApplyError::conflict(
                    format!("placements[{i}].version"),
                    format!(
                        "service {} is at version {}, the plan placed version {}",
                        p.service, svc.version, p.version
                    ),
                ));
            }
            let node = self.nodes.get(&p.node).ok_or_else(|| {
                ApplyError::not_found(format!("placements[{i}].node"), format!("node {}", p.node))
            })?;
            if node.status != NodeStatus::Ready {
                return Err(ApplyError::conflict(
                    format!("placements[{i}].node"),
                    format!("node {} is {:?}, not Ready", node.name, node.status),
                ));
            }
            for (j, spec_port) in svc.spec.ports.iter().enumerate() {
                let placed = p.ports.iter().find(|m| {
                    m.container == spec_port.container && m.protocol == spec_port.protocol
                });
                match (placed, spec_port.host) {
                    (None, _) => {
                        return Err(ApplyError::invalid(
                            format!("placements[{i}].ports"),
                            format!(
                                "service port {j} ({:?}/{}) not mapped",
                                spec_port.protocol, spec_port.container
                            ),
                        ))
                    }
                    (Some(m), Some(h)) if m.host != h => {
                        return Err(ApplyError::invalid(
                            format!("placements[{i}].ports"),
                            format!("container port {} must map to host port {h}", m.container),
                        ))
                    }
                    _ => {}
                }
            }
            if p.ports.len() != svc.spec.ports.len() {
                return Err(ApplyError::invalid(
                    format!("placements[{i}].ports"),
                    "maps ports the service does not publish",
                ));
            }
            for m in &p.ports {
                let key = (p.node, m.protocol, m.host);
                let taken =
                    self.host_port_taken(p.node, m.protocol, m.host) && !freed_ports.contains(&key);
                if m.host == 0 || taken || !new_ports.insert(key) {
                    return Err(ApplyError::conflict(
                        format!("placements[{i}].ports"),
                        format!(
                            "host port {:?}/{} is not free on node {}",
                            m.protocol, m.host, node.name
                        ),
                    ));
                }
            }
            let a = added.entry(p.node).or_default();
            *a = a.saturating_add(svc.spec.resources);
            let total = self
                .used(p.node)
                .saturating_sub(freed.get(&p.node).copied().unwrap_or_default())
                .saturating_add(*a);
            if let Some(dim) = total.exceeds(&node.allocatable) {
                return Err(ApplyError::conflict(
                    format!("placements[{i}].node"),
                    format!("node {} has not enough {dim} free", node.name),
                ));
            }
        }
        // Valid: mutate.
        changes.reserve(stops.len() + placements.len());
        for id in stops {
            if let Some(a) = self.stop_alloc(*id, index, false) {
                changes.push(Change::Allocation(a));
            }
        }
        let mut ids = Vec::with_capacity(placements.len());
        let mut last: Option<(&str, Resources)> = None;
        for p in placements {
            let resources = match last {
                Some((name, r)) if name == p.service => r,
                _ => self.services[&p.service].spec.resources,
            };
            last = Some((&p.service, resources));
            self.next_alloc_id += 1;
            let a = Allocation {
                id: self.next_alloc_id,
                service: p.service.clone(),
                version: p.version,
                node: p.node,
                resources,
                desired: Desired::Run,
                observed: Observed::Pending,
                container: None,
                ports: p.ports.clone(),
                // Room for the agent's first report (Running) without a reallocation.
                history: {
                    let mut h = Vec::with_capacity(2);
                    h.push(HistoryEntry {
                        index,
                        observed: Observed::Pending,
                    });
                    h
                },
                modify_index: index,
                address: None,
            };
            ids.push(a.id);
            self.index_alloc(&a);
            let a = Arc::new(a);
            changes.push(Change::Allocation(Arc::clone(&a)));
            self.allocs.insert(a.id, a);
        }
        Ok(Reply::PlanApplied { allocations: ids })
    }

    fn report(
        &mut self,
        index: u64,
        node: NodeId,
        batch: &[AllocReport],
        changes: &mut Vec<Change>,
    ) -> Response {
        if !self.nodes.contains_key(&node) {
            return Err(ApplyError::not_found("node", format!("node {node}")));
        }
        at_most("batch", batch.len(), MAX_REPORTS, "reports")?;
        for (i, r) in batch.iter().enumerate() {
            if let Observed::Failed(reason) = &r.observed {
                if reason.len() > MAX_REASON_LEN {
                    return Err(ApplyError::invalid(
                        format!("batch[{i}].observed"),
                        format!(
                            "failure reason of {} bytes, the limit is {MAX_REASON_LEN}",
                            reason.len()
                        ),
                    ));
                }
            }
            if let Some(c) = &r.container {
                if c.is_empty()
                    || c.len() > MAX_CONTAINER_ID_LEN
                    || c.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ApplyError::invalid(
                        format!("batch[{i}].container"),
                        format!("must be 1-{MAX_CONTAINER_ID_LEN} bytes without spaces"),
                    ));
                }
            }
            let a = self.allocs.get(&r.id).ok_or_else(|| {
                ApplyError::not_found(format!("batch[{i}].id"), format!("allocation {}", r.id))
            })?;
            if a.node != node {
                return Err(ApplyError::invalid(
                    format!("batch[{i}].id"),
                    format!("allocation {} is on node {}, not {node}", r.id, a.node),
                ));
            }
        }
        for r in batch {
            let entry = self.allocs.get_mut(&r.id).expect("validated above");
            let new_container = r.container.is_some() && entry.container != r.container;
            if entry.observed == r.observed && !new_container {
                continue;
            }
            let a = Arc::make_mut(entry);
            if a.observed != r.observed {
                a.observed = r.observed.clone();
                push_history(a, index);
            }
            if new_container {
                a.container = r.container.clone();
            }
            a.modify_index = index;
            changes.push(Change::Allocation(Arc::clone(entry)));
        }
        Ok(Reply::Done)
    }

    fn set_addresses(
        &mut self,
        index: u64,
        node: NodeId,
        addresses: &[(AllocId, Option<std::net::Ipv4Addr>)],
        changes: &mut Vec<Change>,
    ) -> Response {
        let n = self
            .nodes
            .get(&node)
            .ok_or_else(|| ApplyError::not_found("node", format!("node {node}")))?;
        at_most("addresses", addresses.len(), MAX_REPORTS, "addresses")?;
        for (i, (id, addr)) in addresses.iter().enumerate() {
            let a = self.allocs.get(id).ok_or_else(|| {
                ApplyError::not_found(format!("addresses[{i}].id"), format!("allocation {id}"))
            })?;
            if a.node != node {
                return Err(ApplyError::invalid(
                    format!("addresses[{i}].id"),
                    format!("allocation {id} is on node {}, not {node}", a.node),
                ));
            }
            if let (Some(addr), Some(net)) = (addr, n.subnet) {
                if !net.contains(addr) {
                    return Err(ApplyError::invalid(
                        format!("addresses[{i}].address"),
                        format!("{addr} is outside node {}'s subnet {net}", n.name),
                    ));
                }
            }
        }
        for (id, addr) in addresses {
            let entry = self.allocs.get_mut(id).expect("validated above");
            if entry.address != *addr {
                let a = Arc::make_mut(entry);
                a.address = *addr;
                a.modify_index = index;
                changes.push(Change::Allocation(Arc::clone(entry)));
            }
        }
        Ok(Reply::Done)
    }

    fn purge(&mut self, index: u64, ids: &[AllocId], changes: &mut Vec<Change>) -> Response {
        for (i, id) in ids.iter().enumerate() {
            let a = self.allocs.get(id).ok_or_else(|| {
                ApplyError::not_found(format!("ids[{i}]"), format!("allocation {id}"))
            })?;
            if a.desired != Desired::Stop || !a.observed.is_terminal() {
                return Err(ApplyError::conflict(
                    format!("ids[{i}]"),
                    format!(
                        "allocation {id} is {:?}/{:?}: only stopped, finished allocations are purged",
                        a.desired, a.observed
                    ),
                ));
            }
        }
        // The indexes lose them in one pass per node and per service.
        let mut gone_on: foldhash::HashMap<NodeId, Vec<AllocId>> = Default::default();
        let mut gone_of: HashMap<String, Vec<AllocId>> = HashMap::new();
        for id in ids {
            if let Some(a) = self.allocs.remove(id) {
                gone_on.entry(a.node).or_default().push(*id);
                gone_of.entry(a.service.clone()).or_default().push(*id);
                changes.push(Change::AllocationRemoved { id: *id, index });
            }
        }
        for (node, mut gone) in gone_on {
            gone.sort_unstable();
            if let Some(n) = self.on_node.get_mut(&node) {
                n.allocs.remove_sorted(&gone);
            }
        }
        for (service, mut gone) in gone_of {
            gone.sort_unstable();
            if let Some(s) = self.by_service.get_mut(&service) {
                s.remove_sorted(&gone);
                if s.is_empty() {
                    self.by_service.remove(&service);
                }
            }
        }
        Ok(Reply::Done)
    }
}

fn push_history(a: &mut Allocation, index: u64) {
    if a.history.len() >= HISTORY_LEN {
        a.history.remove(0);
    }
    a.history.push(HistoryEntry {
        index,
        observed: a.observed.clone(),
    });
}

//! The replicated objects: [`Node`], [`Service`], [`Allocation`]. Every object carries
//! `modify_index`, the Raft log index of the command that last changed it (for watches and
//! optimistic checks).

use super::constraint::Constraint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Node ids are assigned by the state (dense, cheap to copy), keyed by the node's name.
pub type NodeId = u64;
/// Allocation ids are assigned by the state when a plan is applied.
pub type AllocId = u64;

/// How many observed-status transitions an allocation remembers.
pub const HISTORY_LEN: usize = 8;

/// CPU, memory and process counts: a node's capacity or a service's request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

impl Resources {
    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            pids: self.pids.saturating_add(o.pids),
        }
    }
    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            pids: self.pids.saturating_sub(o.pids),
        }
    }
    /// The first dimension where `self` exceeds `limit`, for "does not fit" reasons.
    pub fn exceeds(&self, limit: &Resources) -> Option<&'static str> {
        if self.cpu_millis > limit.cpu_millis {
            Some("cpu_millis")
        } else if self.memory_bytes > limit.memory_bytes {
            Some("memory_bytes")
        } else if self.pids > limit.pids {
            Some("pids")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Ready,
    Down,
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// What the scheduler may hand out (capacity minus what the host reserves).
    pub allocatable: Resources,
    pub status: NodeStatus,
    pub modify_index: u64,
    /// The node's subnet of the cluster network (its containers' addresses), allocated
    /// when it first registered ([`super::subnet`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<ipnet::Ipv4Net>,
    /// Where the node's agent serves its node API (allocation logs), `host:port`: mutual
    /// TLS with the node certificate, or plain TCP in an `--insecure` cluster. None: the
    /// agent serves none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A port a service publishes: container port, and the host port (None: any free one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub container: u16,
    pub host: Option<u16>,
    pub protocol: Protocol,
}

/// A published port as placed: both sides known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub container: u16,
    pub host: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    #[default]
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// How many allocations a rolling update replaces at once (≥ 1).
    pub max_parallel: u32,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy { max_parallel: 1 }
    }
}

/// What the user asked for. A change of spec bumps the service's `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceSpec {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub replicas: u32,
    pub constraints: Vec<Constraint>,
    /// Label key to spread replicas over (e.g. `site`), if any.
    pub spread: Option<String>,
    pub ports: Vec<PortSpec>,
    pub restart: RestartPolicy,
    pub update: UpdatePolicy,
    /// Ordered constraint sets: place in the first with feasible nodes (site failover).
    pub failover: Vec<Vec<Constraint>>,
    /// With `failover`: when a set earlier in the order has a ready node with room again,
    /// allocations in a later set move back to it (make-before-break).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failback: bool,
    /// Changed by `gantry service restart`: a new value replaces every allocation, as an
    /// update does (rolling, make-before-break).
    #[serde(default)]
    pub restart_token: u64,
    /// Cluster networks the service's containers join (the overlay: reachable across
    /// nodes, found by name in DNS, isolated from services sharing no network). Empty:
    /// the node-local networking of before (host, or the bridge for published ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// Published endpoints (the routing mesh): `host` is opened on every overlay node and
    /// balanced over the running allocations' `container` port. Needs `networks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<PortMapping>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub spec: ServiceSpec,
    pub version: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    Run,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Observed {
    Pending,
    Pulling,
    Running,
    Exited(i32),
    Failed(String),
    Lost,
}

impl Observed {
    /// Exited, failed or lost: nothing runs any more.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Observed::Exited(_) | Observed::Failed(_) | Observed::Lost
        )
    }
}

/// One observed-status transition, with the Raft index that recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub index: u64,
    pub observed: Observed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: AllocId,
    pub service: String,
    /// The service version this allocation runs.
    pub version: u64,
    pub node: NodeId,
    /// The service's resources when placed: what this allocation holds on its node.
    pub resources: Resources,
    pub desired: Desired,
    pub observed: Observed,
    /// The container id the agent reported, once it has one.
    pub container: Option<String>,
    pub ports: Vec<PortMapping>,
    /// The last [`HISTORY_LEN`] observed transitions, oldest first.
    pub history: Vec<HistoryEntry>,
    pub modify_index: u64,
    /// The container's address on the cluster network, as its agent reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
}

/// A join token (issue 10): whoever presents its secret may obtain a certificate for
/// `role`. Only a SHA-256 of the secret is kept; the secret is shown once, when created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub role: gantry_security::Role,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Milliseconds since the Unix epoch after which the token is refused.
    pub expires_at_ms: u64,
    pub revoked: bool,
    pub modify_index: u64,
}

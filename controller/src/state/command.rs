//! The Raft log's vocabulary: [`Command`] (imperative verbs, one log entry each), what
//! applying one answers ([`Response`]), and the [`Change`]s it made (fed to the sled trees
//! and to Watch streams).

use super::constraint::Constraint;
use super::model::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A new allocation proposed by the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub service: String,
    /// The service version the plan was computed for; a stale plan is rejected.
    pub version: u64,
    pub node: NodeId,
    pub ports: Vec<PortMapping>,
}

/// An agent's report on one of its allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocReport {
    pub id: AllocId,
    pub observed: Observed,
    pub container: Option<String>,
}

/// One entry of the Raft log.
// UpsertService carries a whole ServiceSpec; commands are short-lived (decoded, applied,
// dropped), so boxing it would only cost every constructor an allocation and a `Box::new`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add a node, or update it when one of that name exists (an agent restarting).
    RegisterNode {
        name: String,
        address: String,
        labels: BTreeMap<String, String>,
        capacity: Resources,
        allocatable: Resources,
        /// The agent's node API address (allocation logs), if it serves one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api: Option<String>,
    },
    /// Ready, draining or down; down marks the node's running allocations lost.
    SetNodeStatus { node: NodeId, status: NodeStatus },
    SetNodeLabels {
        node: NodeId,
        labels: BTreeMap<String, String>,
    },
    /// Create or replace a service; `expected_index` (optimistic check) must equal the
    /// service's current `modify_index` (0: must not exist) when given.
    UpsertService {
        name: String,
        spec: ServiceSpec,
        expected_index: Option<u64>,
    },
    /// Remove a service; its allocations are told to stop.
    RemoveService { name: String },
    /// Commit a verified plan: new allocations and allocations to stop, all or nothing.
    ApplyPlan {
        placements: Vec<Placement>,
        stops: Vec<AllocId>,
    },
    /// A batch of an agent's status reports, all for allocations on `node`.
    ReportAllocStatus {
        node: NodeId,
        batch: Vec<AllocReport>,
    },
    /// Forget allocations that are stopped and finished (garbage collection).
    PurgeAllocations { ids: Vec<AllocId> },
    /// An agent's report of its allocations' cluster-network addresses (None: it has
    /// none any more), all for allocations on `node`.
    SetAllocAddresses {
        node: NodeId,
        addresses: Vec<(AllocId, Option<std::net::Ipv4Addr>)>,
    },
    /// Add a join token (the secret's hash only). Refused when the id exists.
    CreateToken {
        id: String,
        role: gantry_security::Role,
        secret_sha256: String,
        expires_at_ms: u64,
    },
    /// Refuse a join token from now on (it stays listed, revoked).
    RevokeToken { id: String },
    /// Record the cluster network's address plan (written once, at bootstrap; the same
    /// plan again is a no-op, another one is refused).
    SetClusterNetwork {
        network: super::subnet::ClusterNetwork,
    },
    /// Several independent client commands proposed together in one log entry (the API's
    /// proposer batches concurrent writes). Each is applied in order at the entry's index and
    /// answered on its own: one rejected command does not affect the others. Not nestable.
    Batch { commands: Vec<Command> },
}

impl Command {
    /// The command itself is short: encoding it takes microseconds. The log store writes
    /// and the state machine applies such entries on the calling thread, big ones (plans,
    /// large batches) off the runtime. Applying a few short ones can still touch many
    /// objects (a removed service stops all its allocations, a node down marks its
    /// allocations lost): a millisecond or two at this cluster's sizes.
    pub fn is_small(&self) -> bool {
        const ITEMS: usize = 32;
        match self {
            Command::ApplyPlan { placements, stops } => placements.len() + stops.len() <= ITEMS,
            Command::ReportAllocStatus { batch, .. } => batch.len() <= ITEMS,
            Command::PurgeAllocations { ids } => ids.len() <= ITEMS,
            Command::SetAllocAddresses { addresses, .. } => addresses.len() <= ITEMS,
            Command::Batch { commands } => {
                commands.len() <= ITEMS && commands.iter().all(Command::is_small)
            }
            _ => true,
        }
    }

    /// The verb, for logs and errors.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::RegisterNode { .. } => "RegisterNode",
            Command::SetNodeStatus { .. } => "SetNodeStatus",
            Command::SetNodeLabels { .. } => "SetNodeLabels",
            Command::UpsertService { .. } => "UpsertService",
            Command::RemoveService { .. } => "RemoveService",
            Command::ApplyPlan { .. } => "ApplyPlan",
            Command::ReportAllocStatus { .. } => "ReportAllocStatus",
            Command::PurgeAllocations { .. } => "PurgeAllocations",
            Command::SetAllocAddresses { .. } => "SetAllocAddresses",
            Command::CreateToken { .. } => "CreateToken",
            Command::RevokeToken { .. } => "RevokeToken",
            Command::SetClusterNetwork { .. } => "SetClusterNetwork",
            Command::Batch { .. } => "Batch",
        }
    }
}

/// What a successfully applied command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    NodeRegistered {
        id: NodeId,
    },
    ServiceUpserted {
        version: u64,
    },
    PlanApplied {
        allocations: Vec<AllocId>,
    },
    /// The answers of a [`Command::Batch`], one per command, in order.
    Batch {
        responses: Vec<Response>,
    },
}

/// Why a command was rejected. The state is unchanged; `field` names the offending input
/// (e.g. `placements[3].node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field}: {what} not found")]
    NotFound { field: String, what: String },
    #[error("{field}: conflict: {reason}")]
    Conflict { field: String, reason: String },
}

impl ApplyError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApplyError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn not_found(field: impl Into<String>, what: impl Into<String>) -> Self {
        ApplyError::NotFound {
            field: field.into(),
            what: what.into(),
        }
    }
    pub(crate) fn conflict(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApplyError::Conflict {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The outcome of applying one command (the Raft state machine's response type).
pub type Response = Result<Reply, ApplyError>;

/// One object changed by a command: the new version, or its removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Nodes, services and tokens are boxed and allocations shared: every batch's change
    /// vector (mostly allocations) would otherwise be sized for the largest object.
    Node(Box<Node>),
    Service(Box<Service>),
    ServiceRemoved {
        name: String,
        index: u64,
    },
    /// Shared with the state (see `State`'s allocations): the allocation as of this change.
    Allocation(std::sync::Arc<Allocation>),
    AllocationRemoved {
        id: AllocId,
        index: u64,
    },
    Token(Box<JoinToken>),
}

impl Change {
    /// The Raft index that made this change.
    pub fn index(&self) -> u64 {
        match self {
            Change::Node(n) => n.modify_index,
            Change::Service(s) => s.modify_index,
            Change::Allocation(a) => a.modify_index,
            Change::Token(t) => t.modify_index,
            Change::ServiceRemoved { index, .. } | Change::AllocationRemoved { index, .. } => {
                *index
            }
        }
    }
}

/// Parse the constraint strings of a CLI/API request, naming the bad entry.
pub fn parse_constraints(field: &str, items: &[String]) -> Result<Vec<Constraint>, ApplyError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse()
                .map_err(|e| ApplyError::invalid(format!("{field}[{i}]"), format!("{e}")))
        })
        .collect()
}

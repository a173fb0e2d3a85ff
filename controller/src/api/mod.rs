//! The controller's public gRPC API (cluster.proto) for the CLI and agents.
//!
//! Vocabulary: a *write* is a [`Command`](crate::state::Command) committed through Raft on
//! the leader (a follower forwards it once; with no reachable leader the caller gets
//! `UNAVAILABLE` and the leader's address, when known, in the `gantry-leader` metadata); a
//! *linearizable read* is served by the leader after openraft's read-index round, a *stale
//! read* by whichever member answers; a *watch* streams [`Change`](crate::state::Change)s
//! after an index, starting over from a full state when the member no longer holds them.
//! [`ApiError`] is the one place errors become `tonic::Status`.

pub mod authz;
pub mod client;
pub mod error;
pub mod join;
pub mod proposer;
pub mod service;

pub use client::{ClientError, ControllerClient};
pub use error::ApiError;
pub use proposer::{ProposeError, Proposer};
pub use service::{ApiSecurity, ClusterService};

/// Metadata key carrying the leader's address on `UNAVAILABLE` answers.
pub const LEADER_METADATA: &str = "gantry-leader";

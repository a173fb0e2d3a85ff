//! gantry's controller: the source of truth of the cluster, replicated with Raft.
//!
//! Vocabulary:
//! - **node**: a machine running an agent; **service**: a desired workload (image, replicas,
//!   constraints); **allocation**: one replica of a service placed on one node;
//! - **command**: an entry of the Raft log, applied deterministically to the state;
//! - **plan**: the scheduler's proposed placements, re-verified by the leader before commit.

pub mod api;
pub mod dr;
pub mod leader;
pub mod limits;
pub mod member;
pub mod memory;
pub mod nodes;
pub mod plan_apply;
pub mod raft;
pub mod scheduler;
pub mod state;

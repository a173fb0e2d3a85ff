//! gantry-sim: runs the real controller code (state machine, scheduler, plan apply, Raft)
//! against simulated nodes, at scale and under seeded faults.
//!
//! Vocabulary:
//! - **member**: one in-process controller (openraft + the controller's sled stores, or
//!   its in-memory ones: [`cluster::Store`]) of a [`cluster::SimCluster`], reachable
//!   through the in-process [`net::Router`];
//! - **fleet**: the simulated nodes and services ([`topology`]); a simulated **agent**
//!   acknowledges its new allocations at once by committing status reports;
//! - **phase** / **evaluation** / **ack**: see [`scale`];
//! - **fault schedule**: the seeded list of partitions, losses, delays, crashes and leader
//!   kills of a chaos run ([`chaos`]); its **trace** is what the run did, a function of
//!   the seed on memory stores in virtual time;
//! - **invariant**: a property checked on what a run observed ([`invariants`]), one per
//!   file; a broken one is a [`invariants::Violation`].

pub mod chaos;
pub mod cluster;
pub mod invariants;
pub mod net;
pub mod plot;
pub mod scale;
pub mod stats;
pub mod topology;

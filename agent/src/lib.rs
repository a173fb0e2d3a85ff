//! gantry's agent: everything that runs on each machine.
//!
//! Vocabulary:
//! - **bundle**: an OCI runtime bundle, a directory with `config.json` and a root filesystem;
//! - **container**: a bundle being run: namespaces, cgroups and a process tree, with its
//!   lifecycle state (creating, created, running, stopped) under the runtime's root dir;
//! - **spec**: the OCI runtime spec (`config.json`), parsed with oci-spec.
//!
//! Modules:
//! - [`runtime`]: the OCI runtime library (`gantry runtime …`, runc-compatible).
//! - [`build`]: `gantry build`'s Dockerfile front end, context, layers and cache keys.
//! - [`image`]: the image store (content store, index, manifests, unpack, snapshots).
//! - [`distribution`]: the registry client (pull, push, auth, progress).
//! - [`network`]: container networking: bridge, veth, IPAM, NAT, published ports.
//! - [`engine`]: the local container lifecycle behind `gantry agent`.
//! - [`supervisor`]: `gantry shim`, the per-container supervisor.
//! - [`cluster`]: cluster mode (`gantry agent --join`): register, heartbeat, converge.

pub mod build;
pub mod cluster;
pub mod distribution;
pub mod engine;
pub mod image;
pub mod network;
pub mod runtime;
pub mod supervisor;

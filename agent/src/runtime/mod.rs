//! The OCI runtime: takes a bundle and runs it as a container.

pub mod capabilities;
pub mod cgroups;
pub mod defaults;
pub mod seccomp;

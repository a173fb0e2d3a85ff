//! One module per command group.
pub mod agent;
pub mod build;
pub mod cluster;
pub mod container;
pub mod controller;
pub mod deploy;
pub mod distribution;
pub mod image;
pub mod registry;
pub mod runtime;
pub mod security;
pub mod shim;

//! One module per command group.
pub mod distribution;
pub mod registry;
pub mod runtime;

//! One module per command group.
pub mod registry;
pub mod runtime;

//! One module per command group.
pub mod controller;
pub mod registry;
pub mod runtime;

//! One module per command group.
pub mod image;
pub mod registry;
pub mod runtime;

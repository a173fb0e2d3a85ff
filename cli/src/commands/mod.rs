//! One module per command group.
pub mod controller;
pub mod image;
pub mod registry;
pub mod runtime;

//! One module per command group.
pub mod controller;
pub mod distribution;
pub mod image;
pub mod registry;
pub mod runtime;

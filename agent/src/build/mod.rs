//! `gantry build`'s front end: everything between a Dockerfile plus a context directory
//! and the builder that runs steps (which lives with the runtime and the image store).
//!
//! Vocabulary:
//! - **Dockerfile** → [`parser`] (logical lines, directives, line:column) →
//!   [`instruction`] (the typed model) → [`stages`] (stage graph, `ARG` scoping,
//!   substitution via [`lex`]) → **steps** ready to run;
//! - **context**: the directory sent to the builder, minus what `.dockerignore`
//!   ([`dockerignore`]) excludes; [`context`] streams it as a tar and resolves `COPY`
//!   sources in it, with a **content hash** of what a step copies;
//! - **layer**: a reproducible tar of a filesystem change ([`layer`]): from files a
//!   `COPY` adds, or from the upper dir of an overlay (a `RUN`), with OCI whiteouts;
//! - **cache key**: a pure function of the parent's key, the expanded instruction, the
//!   build args in scope and the content hash ([`cache`]).

pub mod cache;
pub mod config;
pub mod context;
pub mod dockerignore;
pub mod executor;
pub mod instruction;
pub mod layer;
pub mod lex;
pub mod net;
pub mod parser;
pub mod record;
pub mod rootfs;
pub mod run;
pub mod service;
pub mod stages;

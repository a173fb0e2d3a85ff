//! gantry's registry: serves and stores images over the OCI distribution API (v1.1).
//!
//! Vocabulary: **repository** (a name like `team/app`), **blob** (content addressed by
//! digest: layers and configs), **manifest** (the image description, by tag or digest),
//! **upload** (a blob being written, visible only once its digest and size are verified),
//! **link** (what makes a shared blob or manifest visible in one repository).
//!
//! Modules: [`reference`] (pure: names, digests, routes, ranges, pagination), [`manifest`]
//! (pure: manifest validation and references), [`storage`] (filesystem layout, uploads,
//! atomic writes), [`server`] (axum handler), [`error`] (spec error codes → HTTP),
//! [`auth`] (roles over mTLS; basic auth, read and write users), [`tls`] (mutual TLS
//! listener, client certificates required), [`gc`] (mark and sweep), [`limits`] (every
//! input limit).

pub mod auth;
pub mod error;
pub mod gc;
pub mod limits;
pub mod manifest;
pub mod reference;
pub mod server;
pub mod storage;
pub mod tls;

pub use server::{router, serve, serve_tls, Registry};
pub use storage::{FsStorage, StorageConfig};

//! The registry client: pull images from and push images to OCI distribution registries.
//!
//! Vocabulary: a **registry** is a host (`host[:port]`) speaking the OCI distribution API;
//! **pull** fetches a manifest (negotiating OCI and Docker schema2 manifests and indexes;
//! an index resolves to the host platform), then its config and layers into the image
//! store's content store (verified while streaming; blobs already present are skipped;
//! layers in parallel), then unpacks and tags; **push** sends an image's blobs (HEAD
//! first, cross-repository mount when another local name lives on the same registry,
//! monolithic or chunked upload) and then its manifest. **Progress** is one line per layer
//! event.
//!
//! Modules: [`auth`] (pure: challenges, tokens), [`client`] (HTTP, scheme, auth retry),
//! [`tls`] (mutual TLS to cluster registries), [`pull`], [`push`], [`progress`].

pub mod auth;
pub mod client;
pub mod progress;
pub mod pull;
pub mod push;
pub mod tls;

pub use auth::Credentials;
pub use client::{ClientConfig, RegistryClient};
pub use progress::{LayerEvent, LinePrinter, Progress, Silent};
pub use pull::{pull, PullReport};
pub use push::{push, PushReport};

use crate::image::{ContentError, Digest, IndexError, ReferenceError, StoreError};

/// Media types a pull accepts, best first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest the client reads.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Errors of pulls and pushes; each names the registry URL, blob or image concerned.
#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: HTTP {status}: {detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("registry {registry}: not authorized: {detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("{what}: the registry sent content with digest {actual}, expected {expected}; nothing stored")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error(
        "image reference {reference:?} names no registry (expected host[:port]/repository[:tag])"
    )]
    NoRegistry { reference: String },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `sha256:` digest of bytes, as the image store names it.
pub(crate) fn digest_of(data: &[u8]) -> Digest {
    Digest::of(data)
}

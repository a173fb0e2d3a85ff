//! The registry's input limits, in one list (docs/architecture.md, "Input limits", has
//! the table for all of gantry). Each is checked where the input is parsed, and a refusal
//! is a distribution-spec error code naming the limit, never a panic or a 500.
//!
//! HTTP framing limits are hyper's defaults (axum 0.8 `serve`): a request head must fit in
//! hyper's HTTP/1 read buffer ([`HTTP1_MAX_HEAD_BYTES`]) with at most [`HTTP1_MAX_HEADERS`]
//! headers, else 431 and the connection closes; HTTP/2 announces a 16 KiB header list.
//! URIs are at most 65,534 bytes (the `http` crate). Bodies are never buffered whole
//! except manifests: blob data streams to disk through two 1 MiB buffers.

/// Longest repository name (the OCI distribution spec asks registries to accept 255).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag (OCI grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
pub const MAX_TAG_LEN: usize = 128;
/// Largest manifest accepted (the spec suggests registries accept at least 4 MiB); the
/// body is read up to this and refused with 413 SIZE_INVALID beyond.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Descriptors in one manifest (config + layers, or an index's manifests): each costs a
/// lookup on push. Docker caps images at 127 layers; overlayfs mounts ~100 here.
pub const MAX_MANIFEST_REFERENCES: usize = 1024;
/// Default largest blob (`StorageConfig::max_blob_size`, `--max-blob-size`): 413
/// SIZE_INVALID beyond, the upload rolled back.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 16 << 30;
/// Default most upload sessions open at once (`StorageConfig::max_uploads`): 429
/// TOO_MANY_REQUESTS beyond.
pub const DEFAULT_MAX_UPLOADS: usize = 1024;
/// hyper's HTTP/1 read buffer, which a request line + headers must fit in.
pub const HTTP1_MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// hyper's most headers in one HTTP/1 request.
pub const HTTP1_MAX_HEADERS: usize = 100;

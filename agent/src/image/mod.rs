//! The image store: content-addressed blobs, image names, manifests, layer unpacking into
//! overlay snapshots, garbage collection, and import/export.
//!
//! Vocabulary (modelled on containerd's content store / snapshotter / unpacker split):
//! - **blob** ([`content`]): immutable bytes named by sha256 [`Digest`];
//! - **reference** ([`reference`]): `[registry[:port]/]repo[:tag][@digest]`;
//! - **index** ([`index`]): name:tag → manifest digest.
//!
//! Layout of an agent root (default `/var/lib/gantry/agent`):
//! ```text
//! content/blobs/sha256/<hex>   blobs (ContentStore)
//! content/ingest/              in-progress writes
//! images/index.json            name:tag -> manifest digest (ImageIndex)
//! ```
//!
//! API for other modules (registry client, builder, engine): open a [`ContentStore`] and an
//! [`ImageIndex`] on the same root; write blobs with [`ContentStore::writer`] (verify while
//! writing, commit = fsync + rename); point a name at a manifest with [`ImageIndex::tag`].

pub mod content;
pub mod digest;
pub mod index;
pub mod reference;

pub use content::{BlobInfo, ContentError, ContentStore, ContentWriter};
pub use digest::{Digest, DigestError, DigestHasher};
pub use index::{ImageIndex, IndexEntry, IndexError};
pub use reference::{Reference, ReferenceError};

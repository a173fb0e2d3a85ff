//! The image store: content-addressed blobs, image names, manifests, layer unpacking into
//! overlay snapshots, garbage collection, and import/export.
//!
//! Vocabulary (modelled on containerd's content store / snapshotter / unpacker split):
//! - **blob** ([`content`]): immutable bytes named by sha256 [`Digest`];
//! - **reference** ([`reference`]): `[registry[:port]/]repo[:tag][@digest]`;
//! - **index** ([`index`]): name:tag → manifest digest;
//! - **image** ([`Image`]): a name resolved to one platform's manifest, its config, the
//!   layers' diff_ids and chain IDs ([`manifest`]);
//! - **snapshot** ([`snapshot`]): one unpacked layer stack, keyed by chain ID, shared
//!   between images; containers get an active snapshot on top ([`ImageStore::prepare_rootfs`]);
//! - **unpack** ([`unpack`]): applying a layer blob to a snapshot, safely, streaming;
//! - **gc** ([`gc`]), **archive** ([`archive`]): prune and load/save.
//!
//! Layout of an agent root (default `/var/lib/gantry/agent`):
//! ```text
//! content/blobs/sha256/<hex>   blobs (ContentStore)
//! content/ingest/              in-progress writes
//! images/index.json            name:tag -> manifest digest (ImageIndex)
//! snapshots/metadata.json      snapshot keys (OverlaySnapshotter)
//! snapshots/<id>/fs            one layer, or a container's upper dir
//! ```
//!
//! API for other modules (registry client, builder, engine): open an [`ImageStore`] (or a
//! bare [`ContentStore`] and [`ImageIndex`]) on the root; write blobs with
//! [`ContentStore::writer`] (verified while writing; commit = fsync + rename); point a
//! name at a manifest with [`ImageIndex::tag`]; [`ImageStore::resolve`] +
//! [`ImageStore::unpack`] give the chain ID whose snapshot is a container's parent.

pub mod archive;
pub mod content;
pub mod digest;
pub mod gc;
pub mod index;
pub mod manifest;
pub mod reference;
pub mod snapshot;
pub mod unpack;

use std::path::{Path, PathBuf};

pub use content::{BlobInfo, ContentError, ContentStore, ContentWriter};
pub use digest::{Digest, DigestError, DigestHasher};
pub use index::{ImageIndex, IndexEntry, IndexError};
pub use reference::{Reference, ReferenceError};
pub use snapshot::{Mount, OverlaySnapshotter, SnapshotError, Snapshotter};
pub use unpack::{DevicePolicy, UnpackError, UnpackOptions, UnpackStats, WhiteoutMode};

use manifest::{ManifestError, Parsed, PlatformSpec};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};

/// Errors of the image store's composite operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image {image}: {source}")]
    Manifest {
        image: String,
        #[source]
        source: ManifestError,
    },
    #[error("image {image}: layer {layer}: {source}")]
    Unpack {
        image: String,
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("no such image: {reference}")]
    NoSuchImage { reference: String },
    #[error("image {image}: blob {digest} ({what}) is missing from the content store")]
    MissingBlob {
        image: String,
        digest: Digest,
        what: &'static str,
    },
}

/// An image resolved to the host platform.
#[derive(Debug, Clone)]
pub struct Image {
    /// The name it was resolved from, as given.
    pub reference: String,
    /// What the name points to: a manifest, or an index.
    pub target: Digest,
    pub target_media_type: String,
    /// The platform manifest.
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
    pub chain_ids: Vec<Digest>,
}

impl Image {
    /// Sum of config and layer blob sizes (as stored; compressed).
    pub fn size(&self) -> u64 {
        self.manifest.config().size() + self.layers.iter().map(|l| l.size()).sum::<u64>()
    }

    /// The chain ID of the whole stack (a container's parent snapshot), if any layers.
    pub fn top_chain_id(&self) -> Option<&Digest> {
        self.chain_ids.last()
    }
}

/// The image store of one agent root; see the module doc. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    index: ImageIndex,
    snapshots: OverlaySnapshotter,
    platform: PlatformSpec,
    /// Base unpack options (device policy, size limit); digests are filled per layer.
    pub unpack_options: UnpackOptions,
}

impl ImageStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<ImageStore, StoreError> {
        let root = root.as_ref().to_path_buf();
        Ok(ImageStore {
            content: ContentStore::open(&root)?,
            index: ImageIndex::open(&root)?,
            snapshots: OverlaySnapshotter::open(&root)?,
            platform: PlatformSpec::host(),
            unpack_options: UnpackOptions::default(),
            root,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn content(&self) -> &ContentStore {
        &self.content
    }
    pub fn index(&self) -> &ImageIndex {
        &self.index
    }
    pub fn snapshotter(&self) -> &OverlaySnapshotter {
        &self.snapshots
    }
    pub fn platform(&self) -> &PlatformSpec {
        &self.platform
    }

    /// Resolves a reference: by digest if it has one, else through the index.
    pub fn resolve(&self, reference: &Reference) -> Result<Image, StoreError> {
        let name = reference.to_string();
        let (digest, media_type) = match reference.digest() {
            Some(d) => (d.clone(), None),
            None => {
                let e = self
                    .index
                    .get(reference)?
                    .ok_or_else(|| StoreError::NoSuchImage {
                        reference: name.clone(),
                    })?;
                (e.digest, Some(e.media_type))
            }
        };
        self.resolve_digest(&name, &digest, media_type.as_deref())
    }

    /// Resolves a reference given as text: a name, or a (possibly abbreviated, ≥ 12 hex)
    /// manifest digest of a named image.
    pub fn resolve_str(&self, s: &str) -> Result<Image, StoreError> {
        let hexish = s.strip_prefix("sha256:").unwrap_or(s);
        if hexish.len() >= 12 && hexish.chars().all(|c| c.is_ascii_hexdigit()) {
            for e in self.index.list()? {
                if e.digest.hex().starts_with(hexish) {
                    return self.resolve_digest(s, &e.digest, Some(&e.media_type));
                }
            }
        }
        self.resolve(&Reference::parse(s)?)
    }

    fn blob(&self, image: &str, d: &Digest, what: &'static str) -> Result<Vec<u8>, StoreError> {
        self.content.read(d).map_err(|e| match e {
            ContentError::NotFound { .. } => StoreError::MissingBlob {
                image: image.to_string(),
                digest: d.clone(),
                what,
            },
            other => other.into(),
        })
    }

    /// Resolves the manifest or index `digest` to the host platform's image.
    pub fn resolve_digest(
        &self,
        name: &str,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> Result<Image, StoreError> {
        let merr = |source| StoreError::Manifest {
            image: name.to_string(),
            source,
        };
        let bytes = self.blob(name, digest, "manifest")?;
        let parsed =
            manifest::parse(&bytes, media_type, &format!("manifest {digest}")).map_err(merr)?;
        let target_media_type = media_type
            .map(str::to_string)
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        v.get("mediaType")
                            .and_then(|m| m.as_str())
                            .map(str::to_string)
                    })
            })
            .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
        let (manifest_digest, manifest) = match parsed {
            Parsed::Manifest(m) => (digest.clone(), *m),
            Parsed::Index(idx) => {
                let d = manifest::select_platform(&idx, &self.platform).map_err(merr)?;
                let md = manifest::descriptor_digest(&d, name).map_err(merr)?;
                let b = self.blob(name, &md, "platform manifest")?;
                match manifest::parse(&b, Some(d.media_type().as_ref()), &format!("manifest {md}"))
                    .map_err(merr)?
                {
                    Parsed::Manifest(m) => (md, *m),
                    Parsed::Index(_) => {
                        return Err(merr(ManifestError::MediaType {
                            what: format!("manifest {md}"),
                            media_type: "nested index".into(),
                        }))
                    }
                }
            }
        };
        let config_digest = manifest::descriptor_digest(manifest.config(), name).map_err(merr)?;
        let cb = self.blob(name, &config_digest, "config")?;
        let config =
            manifest::parse_config(&cb, &format!("config {config_digest}")).map_err(merr)?;
        let diff_ids = manifest::diff_ids(&config, &manifest).map_err(merr)?;
        let chain_ids = manifest::chain_ids(&diff_ids);
        Ok(Image {
            reference: name.to_string(),
            target: digest.clone(),
            target_media_type,
            manifest_digest,
            layers: manifest.layers().clone(),
            manifest,
            config_digest,
            config,
            diff_ids,
            chain_ids,
        })
    }

    /// Unpacks every layer of `image` not yet unpacked (each into its own snapshot named by
    /// chain ID). Returns the top chain ID (`None` for an image without layers).
    pub fn unpack(&self, image: &Image) -> Result<Option<Digest>, StoreError> {
        self.unpack_staged(image, Vec::new())
    }

    /// [`Self::unpack`], where `staged[i]`, when `Some`, is a snapshot key returned by
    /// [`Self::stage_layer`] holding layer `i` already unpacked (a pull unpacks while
    /// downloading): it is stacked in place instead of unpacking the blob. Every staged
    /// snapshot is used or removed, also on failure.
    pub fn unpack_staged(
        &self,
        image: &Image,
        mut staged: Vec<Option<String>>,
    ) -> Result<Option<Digest>, StoreError> {
        staged.resize(image.layers.len(), None);
        let result = self.unpack_inner(image, &mut staged);
        for key in staged.into_iter().flatten() {
            let _ = self.snapshots.remove(&key);
        }
        result
    }

    fn unpack_inner(
        &self,
        image: &Image,
        staged: &mut [Option<String>],
    ) -> Result<Option<Digest>, StoreError> {
        for (i, layer) in image.layers.iter().enumerate() {
            let chain = &image.chain_ids[i];
            if self.snapshots.stat(&chain.to_string()).is_ok() {
                continue;
            }
            let parent = i.checked_sub(1).map(|p| image.chain_ids[p].to_string());
            if let Some(key) = staged[i].take() {
                match self
                    .snapshots
                    .commit_onto(&chain.to_string(), &key, parent.as_deref())
                {
                    Ok(()) => continue,
                    // Another unpacker committed this chain first: keep theirs.
                    Err(SnapshotError::AlreadyExists { .. }) => {
                        self.snapshots.remove(&key)?;
                        continue;
                    }
                    Err(e) => {
                        let _ = self.snapshots.remove(&key);
                        return Err(e.into());
                    }
                }
            }
            let layer_digest =
                manifest::descriptor_digest(layer, &image.reference).map_err(|source| {
                    StoreError::Manifest {
                        image: image.reference.clone(),
                        source,
                    }
                })?;
            let reader = self.content.reader(&layer_digest).map_err(|e| match e {
                ContentError::NotFound { .. } => StoreError::MissingBlob {
                    image: image.reference.clone(),
                    digest: layer_digest.clone(),
                    what: "layer",
                },
                other => other.into(),
            })?;
            let mut opts = self.unpack_options.clone();
            opts.expected_digest = Some(layer_digest.clone());
            opts.expected_diff_id = Some(image.diff_ids[i].clone());
            // Magic bytes decide (gzip and zstd are unambiguous against a tar header), so a
            // mislabelled layer still unpacks; the digests are verified either way.
            opts.compression = None;
            self.apply_layer(&chain.to_string(), parent.as_deref(), reader, &opts)
                .map_err(|e| match e {
                    ApplyError::Unpack(source) => StoreError::Unpack {
                        image: image.reference.clone(),
                        layer: layer_digest.clone(),
                        source,
                    },
                    ApplyError::Snapshot(s) => s.into(),
                })?;
        }
        Ok(image.top_chain_id().cloned())
    }

    /// Unpacks one layer stream into a new committed snapshot `name` on `parent`, the
    /// containerd way: prepare a temporary active snapshot inside the snapshots dir, unpack
    /// into its upper dir, commit; on any failure the temporary snapshot is removed, so a
    /// refused layer leaves nothing behind. If another unpacker committed `name` first,
    /// its snapshot is kept and this one dropped.
    pub fn apply_layer<R: std::io::Read>(
        &self,
        name: &str,
        parent: Option<&str>,
        reader: R,
        opts: &UnpackOptions,
    ) -> Result<UnpackStats, ApplyError> {
        let key = format!(
            "unpack-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let dir = self.snapshots.prepare_for_unpack(&key, parent)?;
        let result = unpack::unpack_layer(reader, &dir, opts);
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = self.snapshots.remove(&key);
                return Err(ApplyError::Unpack(e));
            }
        };
        match self.snapshots.commit(name, &key) {
            Ok(()) => Ok(stats),
            Err(SnapshotError::AlreadyExists { .. }) => {
                self.snapshots.remove(&key)?;
                Ok(stats)
            }
            Err(e) => {
                let _ = self.snapshots.remove(&key);
                Err(e.into())
            }
        }
    }

    /// Unpacks one layer stream into a new parentless snapshot and returns its key, for
    /// [`Self::unpack_staged`] to stack later. Overlay-mode layers never read their parent,
    /// so the layers of an image can be staged in parallel, straight from the network. A
    /// refused layer leaves nothing behind.
    pub fn stage_layer<R: std::io::Read>(
        &self,
        reader: R,
        opts: &UnpackOptions,
    ) -> Result<(String, UnpackStats), ApplyError> {
        if opts.whiteouts != WhiteoutMode::Overlay {
            return Err(ApplyError::Unpack(UnpackError::Refused {
                entry: String::new(),
                reason: "staged layers need overlay whiteouts (apply mode reads the parent)".into(),
            }));
        }
        let key = format!(
            "unpack-staged-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let dir = self.snapshots.prepare_for_unpack(&key, None)?;
        match unpack::unpack_layer(reader, &dir, opts) {
            Ok(stats) => Ok((key, stats)),
            Err(e) => {
                let _ = self.snapshots.remove(&key);
                Err(ApplyError::Unpack(e))
            }
        }
    }

    /// Unpacks `image` and prepares a writable snapshot `key` on top of it: the mounts
    /// for a container's rootfs.
    pub fn prepare_rootfs(&self, key: &str, image: &Image) -> Result<Vec<Mount>, StoreError> {
        let top = self.unpack(image)?;
        Ok(self
            .snapshots
            .prepare(key, top.as_ref().map(|d| d.to_string()).as_deref())?)
    }

    /// Points `dst` at what `src` points to.
    pub fn tag(&self, src: &str, dst: &Reference) -> Result<(), StoreError> {
        let image = self.resolve_str(src)?;
        let size = self.content.info(&image.target)?.size;
        self.index
            .tag(dst, &image.target, &image.target_media_type, size)?;
        Ok(())
    }

    /// Removes the name; blobs and snapshots go at the next prune.
    pub fn untag(&self, reference: &Reference) -> Result<IndexEntry, StoreError> {
        self.index
            .untag(reference)?
            .ok_or_else(|| StoreError::NoSuchImage {
                reference: reference.to_string(),
            })
    }
}

/// Why [`ImageStore::apply_layer`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

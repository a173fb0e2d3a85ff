//! Where the engine gets root filesystems from: an [`ImageSource`] turns a reference into
//! the image's run config, and prepares a container's writable snapshot on the image's
//! layers (the image store's overlay snapshotter, keyed by container id). A container can also run
//! from an exploded root filesystem directory (`--rootfs DIR`, as podman allows), used
//! read-only as the single lowerdir.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::commit::{self, CommitMeta};
use super::config::ImageRunConfig;
use super::rootfs::RootMount;
use super::EngineError;
use crate::build::layer::{diff_upper, MtimePolicy};
use crate::image::manifest::OCI_MANIFEST;
use crate::image::{gc, Digest, ImageStore, Reference};

/// An image resolved for running.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// Image id (config digest); empty for a rootfs directory.
    pub id: String,
    /// The reference as the user should see it.
    pub reference: String,
    pub config: ImageRunConfig,
    /// A root filesystem directory (`--rootfs`) rather than a stored image.
    pub dir: Option<PathBuf>,
}

pub trait ImageSource: Send + Sync {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, EngineError>;
    /// Unpacks the image if needed and prepares the writable snapshot `key` on it.
    fn prepare(&self, key: &str, reference: &str) -> Result<Vec<RootMount>, EngineError>;
    /// Removes the snapshot `key` (no error if it is gone).
    fn release(&self, key: &str) -> Result<(), EngineError>;
    /// Ids (config digests) of the images `reference` names, for `rmi`'s in-use check.
    fn image_id(&self, reference: &str) -> Result<String, EngineError>;
    /// Turns the writable layer in `upper` into a new image on `base` (whose id must still
    /// be `base_id`) named `target`; the new image's id.
    fn commit(
        &self,
        upper: &Path,
        base: &str,
        base_id: &str,
        target: &str,
        meta: &CommitMeta,
    ) -> Result<String, EngineError>;
    /// Removes the name `reference`, then every blob and snapshot that no image and no
    /// snapshot in `keep` (containers') uses; the digests of the blobs deleted.
    fn remove(&self, reference: &str, keep: &HashSet<String>) -> Result<Vec<String>, EngineError>;
}

fn image_err(reference: &str, e: impl std::fmt::Display) -> EngineError {
    let msg = e.to_string();
    if msg.starts_with("no such image") {
        EngineError::NotFound {
            what: "image",
            reference: reference.to_string(),
        }
    } else {
        EngineError::Image {
            reference: reference.to_string(),
            reason: msg,
        }
    }
}

/// The agent's image store (`agent/src/image`) as an image source.
pub struct StoreImages {
    pub store: ImageStore,
}

impl ImageSource for StoreImages {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, EngineError> {
        if reference.is_empty() {
            return Err(EngineError::InvalidArgument {
                field: "image",
                value: String::new(),
                reason: "an image (or --rootfs DIR) is required".into(),
            });
        }
        let img = self
            .store
            .resolve_str(reference)
            .map_err(|e| image_err(reference, e))?;
        let c = img.config.config().clone().unwrap_or_default();
        let config = ImageRunConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
            stop_signal: c.stop_signal().clone().unwrap_or_default(),
        };
        Ok(ResolvedImage {
            id: img.config_digest.to_string(),
            reference: reference.to_string(),
            config,
            dir: None,
        })
    }

    fn prepare(&self, key: &str, reference: &str) -> Result<Vec<RootMount>, EngineError> {
        let img = self
            .store
            .resolve_str(reference)
            .map_err(|e| image_err(reference, e))?;
        let mounts = self
            .store
            .prepare_rootfs(key, &img)
            .map_err(|e| image_err(reference, e))?;
        Ok(mounts
            .into_iter()
            .map(|m| RootMount {
                kind: m.kind,
                source: m.source,
                options: m.options,
            })
            .collect())
    }

    fn release(&self, key: &str) -> Result<(), EngineError> {
        use crate::image::Snapshotter;
        let snaps = self.store.snapshotter();
        if snaps.stat(key).is_err() {
            return Ok(());
        }
        snaps.remove(key).map_err(|e| EngineError::Image {
            reference: format!("snapshot {key}"),
            reason: e.to_string(),
        })
    }

    fn image_id(&self, reference: &str) -> Result<String, EngineError> {
        let img = self
            .store
            .resolve_str(reference)
            .map_err(|e| image_err(reference, e))?;
        Ok(img.config_digest.to_string())
    }

    fn commit(
        &self,
        upper: &Path,
        base: &str,
        base_id: &str,
        target: &str,
        meta: &CommitMeta,
    ) -> Result<String, EngineError> {
        let target_ref = parse_target(target)?;
        let img = self
            .store
            .resolve_str(base)
            .map_err(|e| image_err(base, e))?;
        if img.config_digest.to_string() != base_id {
            return Err(EngineError::Image {
                reference: base.to_string(),
                reason: format!(
                    "now names image {} but the container was made from {base_id}",
                    img.config_digest
                ),
            });
        }
        let (config, manifest, size) =
            self.commit_blobs(upper, &img, meta)
                .map_err(|reason| EngineError::Image {
                    reference: target.to_string(),
                    reason: format!("committing {}: {reason}", upper.display()),
                })?;
        self.store
            .index()
            .tag(&target_ref, &manifest, OCI_MANIFEST, size)
            .map_err(|e| image_err(target, e))?;
        Ok(config.to_string())
    }

    fn remove(&self, reference: &str, keep: &HashSet<String>) -> Result<Vec<String>, EngineError> {
        let r = Reference::parse(reference).map_err(|e| image_err(reference, e))?;
        self.store.untag(&r).map_err(|e| image_err(reference, e))?;
        let report = gc::collect(&self.store, keep, std::time::Duration::ZERO)
            .map_err(|e| image_err(reference, e))?;
        Ok(report.blobs_removed.iter().map(|d| d.to_string()).collect())
    }
}

fn parse_target(target: &str) -> Result<Reference, EngineError> {
    let r = Reference::parse(target).map_err(|e| EngineError::InvalidArgument {
        field: "IMAGE",
        value: target.to_string(),
        reason: e.to_string(),
    })?;
    if r.digest().is_some() {
        return Err(EngineError::InvalidArgument {
            field: "IMAGE",
            value: target.to_string(),
            reason: "name the new image by NAME[:TAG], not by digest".into(),
        });
    }
    Ok(r)
}

impl StoreImages {
    fn commit_blobs(
        &self,
        upper: &Path,
        img: &crate::image::Image,
        meta: &CommitMeta,
    ) -> Result<(Digest, Digest, u64), String> {
        let content = self.store.content();
        let layer = diff_upper(upper).map_err(|e| e.to_string())?;
        let mut w = content.writer(None, None).map_err(|e| e.to_string())?;
        let diff = layer
            .write(&mut w, MtimePolicy::Keep)
            .map_err(|e| e.to_string())?;
        let blob = w.commit().map_err(|e| e.to_string())?;
        let base = serde_json::to_value(&img.config).map_err(|e| e.to_string())?;
        let config = serde_json::to_vec(&commit::new_config(&base, &diff.diff_id, meta))
            .expect("config serializes");
        let config = content.put(&config, None).map_err(|e| e.to_string())?;
        let layers: Vec<serde_json::Value> = img
            .layers
            .iter()
            .map(|l| serde_json::to_value(l).expect("descriptor serializes"))
            .collect();
        let manifest = commit::new_manifest(
            &layers,
            &config.digest.to_string(),
            config.size,
            &blob.digest.to_string(),
            blob.size,
        );
        let manifest = serde_json::to_vec(&manifest).expect("manifest serializes");
        let m = content.put(&manifest, None).map_err(|e| e.to_string())?;
        Ok((config.digest, m.digest, m.size))
    }
}

/// The source of an agent with no image store yet: every reference is refused, saying so.
pub struct NoImageStore;

impl ImageSource for NoImageStore {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, EngineError> {
        self.image_id(reference).map(|_| unreachable!())
    }
    fn prepare(&self, _key: &str, reference: &str) -> Result<Vec<RootMount>, EngineError> {
        self.image_id(reference).map(|_| unreachable!())
    }
    fn release(&self, _key: &str) -> Result<(), EngineError> {
        Ok(())
    }
    fn image_id(&self, reference: &str) -> Result<String, EngineError> {
        Err(EngineError::NotFound {
            what: "image",
            reference: format!("{reference} (this agent has no image store: use --rootfs DIR)"),
        })
    }
    fn commit(
        &self,
        _upper: &Path,
        base: &str,
        _base_id: &str,
        _target: &str,
        _meta: &CommitMeta,
    ) -> Result<String, EngineError> {
        self.image_id(base)
    }
    fn remove(&self, reference: &str, _keep: &HashSet<String>) -> Result<Vec<String>, EngineError> {
        self.image_id(reference).map(|_| unreachable!())
    }
}

/// A root filesystem directory as an image with an empty config.
pub fn rootfs_dir(dir: &Path) -> Result<ResolvedImage, EngineError> {
    if !dir.is_absolute() || !dir.is_dir() {
        return Err(EngineError::InvalidArgument {
            field: "--rootfs",
            value: dir.display().to_string(),
            reason: "must be an existing directory, given as an absolute path".into(),
        });
    }
    Ok(ResolvedImage {
        id: String::new(),
        reference: format!("rootfs:{}", dir.display()),
        config: ImageRunConfig::default(),
        dir: Some(dir.to_path_buf()),
    })
}

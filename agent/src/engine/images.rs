//! Where the engine gets root filesystems from: an [`ImageSource`] turns a reference into
//! the image's run config and its layers as overlay lowerdirs. A container can also run
//! from an exploded root filesystem directory (`--rootfs DIR`, as podman allows), used
//! read-only as the single lowerdir.

use std::path::{Path, PathBuf};

use super::config::ImageRunConfig;
use super::EngineError;

/// An image resolved for running.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// Image id (config digest); empty for a rootfs directory.
    pub id: String,
    /// The reference as the user should see it.
    pub reference: String,
    pub config: ImageRunConfig,
    /// Layer directories, top first.
    pub lowerdirs: Vec<PathBuf>,
}

pub trait ImageSource: Send + Sync {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, EngineError>;
}

/// The source of an agent with no image store yet: every reference is refused, saying so.
pub struct NoImageStore;

impl ImageSource for NoImageStore {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, EngineError> {
        Err(EngineError::NotFound {
            what: "image",
            reference: format!("{reference} (this agent has no image store: use --rootfs DIR)"),
        })
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
        lowerdirs: vec![dir.to_path_buf()],
    })
}

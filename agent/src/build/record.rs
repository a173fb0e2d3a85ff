//! The build cache on disk: what the image looked like after a step, by cache key.
//!
//! Vocabulary:
//! - **stage state** ([`StageState`]): an image in the making — its config and its layer
//!   blobs (bottom first; the diff ids are in the config);
//! - **cache record**: the state after a step, stored as `<root>/build/cache/<key hex>.json`
//!   (written to a temp file and renamed: a crash leaves no torn record). A record is
//!   only used while every layer blob it names is still in the content store (a prune
//!   may have removed them).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::{ContentStore, Digest};

use super::config::ImageConfig;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("build cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A layer blob of an image being built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// An image in the making; see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageState {
    pub config: ImageConfig,
    pub layers: Vec<LayerRef>,
}

/// The records under one directory.
#[derive(Debug, Clone)]
pub struct BuildCache {
    dir: PathBuf,
}

impl BuildCache {
    pub fn open(dir: impl Into<PathBuf>) -> Result<BuildCache, RecordError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| RecordError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(BuildCache { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        self.dir.join(format!("{hex}.json"))
    }

    /// The record of `key`, if there is a usable one (unreadable or stale records are
    /// misses: the step runs again and overwrites them).
    pub fn get(&self, key: &str, content: &ContentStore) -> Option<StageState> {
        let bytes = fs::read(self.path(key)).ok()?;
        let state: StageState = serde_json::from_slice(&bytes).ok()?;
        state
            .layers
            .iter()
            .all(|l| content.exists(&l.digest))
            .then_some(state)
    }

    pub fn put(&self, key: &str, state: &StageState) -> Result<(), RecordError> {
        let path = self.path(key);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let bytes = serde_json::to_vec(state).expect("stage states serialize");
        let write = |p: &Path| fs::write(p, &bytes).and_then(|()| fs::rename(p, &path));
        write(&tmp).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            RecordError::Io {
                path: path.clone(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::stages::Platform;

    #[test]
    fn records_round_trip_and_go_stale_without_their_blobs() {
        let t = tempfile::tempdir().unwrap();
        let content = ContentStore::open(t.path()).unwrap();
        let cache = BuildCache::open(t.path().join("cache")).unwrap();
        let blob = content.put(b"layer bytes", None).unwrap();
        let state = StageState {
            config: ImageConfig::scratch(&Platform::host()),
            layers: vec![LayerRef {
                digest: blob.digest.clone(),
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                size: blob.size,
            }],
        };
        assert!(cache.get("sha256:k1", &content).is_none());
        cache.put("sha256:k1", &state).unwrap();
        assert_eq!(cache.get("sha256:k1", &content), Some(state));
        content.delete(&blob.digest).unwrap();
        assert!(cache.get("sha256:k1", &content).is_none(), "blob pruned");
        fs::write(cache.path("sha256:k2"), b"{torn").unwrap();
        assert!(cache.get("sha256:k2", &content).is_none());
    }
}

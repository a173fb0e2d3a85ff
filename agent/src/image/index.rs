//! The image index: image names (`[registry/]repo:tag`) → the manifest digest they point to.
//!
//! Vocabulary:
//! - **entry**: [`IndexEntry`], one name and its target (digest, media type, size of the
//!   manifest or index blob in the content store);
//! - **index file**: `<root>/images/index.json`, a JSON object keyed by name.
//!
//! Storage choice: a plain JSON file replaced atomically (temp + fsync + rename), not sled.
//! sled takes an exclusive lock on its directory, so the CLI could not even read the index
//! while the agent runs; with a file, readers never lock (they always see a complete old or
//! new version), and writers serialise their read-modify-write with `flock` on
//! `<root>/images/index.lock`, which works across processes. Images are few (hundreds), so
//! rewriting the whole file per change is cheap.
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::reference::Reference;

/// Errors of the image index; each names the file or image.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("image index I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image index {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("reference {reference} has no tag; the index maps name:tag to a digest")]
    NoTag { reference: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a name points to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexEntry {
    /// `[registry/]repo:tag`.
    pub name: String,
    /// Digest of the manifest (or image index) blob.
    pub digest: Digest,
    /// Its media type (OCI or Docker schema2 manifest or index).
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// When the name was (re)pointed, seconds since the Unix epoch.
    pub updated: u64,
}

/// The name → digest map; see the module doc. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageIndex {
    file: PathBuf,
    lock: PathBuf,
}

impl ImageIndex {
    /// Opens (creating the directory if needed) the index of the agent root `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<ImageIndex, IndexError> {
        let dir = root.as_ref().join("images");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(ImageIndex {
            file: dir.join("index.json"),
            lock: dir.join("index.lock"),
        })
    }

    fn key(reference: &Reference) -> Result<String, IndexError> {
        reference.name_tag().ok_or_else(|| IndexError::NoTag {
            reference: reference.to_string(),
        })
    }

    fn load(&self) -> Result<BTreeMap<String, IndexEntry>, IndexError> {
        match fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IndexError::Corrupt {
                path: self.file.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(&self.file)(e)),
        }
    }

    fn store(&self, map: &BTreeMap<String, IndexEntry>) -> Result<(), IndexError> {
        let tmp = self
            .file
            .with_extension(format!("json.tmp-{}", std::process::id()));
        let data = serde_json::to_vec_pretty(map).expect("index serialises");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.file).map_err(io_err(&self.file))?;
        if let Some(dir) = self.file.parent().and_then(|d| File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Runs a read-modify-write under the cross-process lock.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, IndexEntry>) -> T,
    ) -> Result<T, IndexError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(io_err(&self.lock))?;
        // Released when `lock` is closed at the end of this function.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&self.lock)(io::Error::last_os_error()));
        }
        let mut map = self.load()?;
        let before = map.clone();
        let out = f(&mut map);
        if map != before {
            self.store(&map)?;
        }
        Ok(out)
    }

    /// The entry for `reference` (its name:tag; a digest in the reference is ignored).
    pub fn get(&self, reference: &Reference) -> Result<Option<IndexEntry>, IndexError> {
        let key = Self::key(reference)?;
        Ok(self.load()?.remove(&key))
    }

    /// All entries, sorted by name.
    pub fn list(&self) -> Result<Vec<IndexEntry>, IndexError> {
        Ok(self.load()?.into_values().collect())
    }

    /// Points `reference`'s name:tag at a manifest. Returns the previous entry, if any.
    pub fn tag(
        &self,
        reference: &Reference,
        digest: &Digest,
        media_type: &str,
        size: u64,
    ) -> Result<Option<IndexEntry>, IndexError> {
        let key = Self::key(reference)?;
        let updated = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let entry = IndexEntry {
            name: key.clone(),
            digest: digest.clone(),
            media_type: media_type.to_string(),
            size,
            updated,
        };
        self.update(move |m| m.insert(key, entry))
    }

    /// Removes `reference`'s name:tag. Returns the removed entry, if any.
    pub fn untag(&self, reference: &Reference) -> Result<Option<IndexEntry>, IndexError> {
        let key = Self::key(reference)?;
        self.update(move |m| m.remove(&key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn index_tag_get_list_untag_persist() {
        let dir = tempfile::tempdir().unwrap();
        let idx = ImageIndex::open(dir.path()).unwrap();
        let d1 = Digest::of(b"m1");
        let d2 = Digest::of(b"m2");
        assert!(idx.tag(&r("app"), &d1, "mt", 10).unwrap().is_none());
        assert!(idx.tag(&r("reg.io/b:2"), &d2, "mt", 20).unwrap().is_none());
        let prev = idx.tag(&r("app:latest"), &d2, "mt", 20).unwrap().unwrap();
        assert_eq!(prev.digest, d1);
        // A second handle (another process, e.g. the CLI) sees the same state.
        let other = ImageIndex::open(dir.path()).unwrap();
        assert_eq!(other.get(&r("app")).unwrap().unwrap().digest, d2);
        let names: Vec<_> = other.list().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["app:latest", "reg.io/b:2"]);
        assert_eq!(idx.untag(&r("app")).unwrap().unwrap().digest, d2);
        assert!(idx.untag(&r("app")).unwrap().is_none());
        assert!(other.get(&r("app")).unwrap().is_none());
        let digest_only = r(&format!("app@{d1}"));
        assert!(matches!(
            idx.get(&digest_only),
            Err(IndexError::NoTag { .. })
        ));
    }

    #[test]
    fn index_concurrent_taggers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let idx = ImageIndex::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let idx = idx.clone();
                s.spawn(move || {
                    for i in 0..10 {
                        let d = Digest::of(format!("{t}-{i}").as_bytes());
                        idx.tag(&r(&format!("app{t}:{i}")), &d, "mt", 1).unwrap();
                    }
                });
            }
        });
        assert_eq!(idx.list().unwrap().len(), 40);
    }

    #[test]
    fn index_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let idx = ImageIndex::open(dir.path()).unwrap();
        fs::write(dir.path().join("images/index.json"), b"{nope").unwrap();
        let e = idx.list().unwrap_err();
        assert!(e.to_string().contains("index.json"), "{e}");
    }
}

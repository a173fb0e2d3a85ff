//! The content store: immutable, content-addressed blobs (layers, manifests, configs).
//!
//! Vocabulary:
//! - **blob**: bytes named by their sha256 [`Digest`], stored at
//!   `<root>/content/blobs/sha256/<hex>` (read-only, mode 0444);
//! - **ingest**: an in-progress write, a uniquely named temp file under
//!   `<root>/content/ingest/`; it becomes a blob only at [`ContentWriter::commit`], after the
//!   digest and size were verified and the data fsynced, by one `rename` — so a blob path that
//!   exists always holds complete, verified content;
//! - **writer**: [`ContentWriter`], hashes while writing. Feed it with [`std::io::Write`] or
//!   [`ContentWriter::write_chunk`] (one buffered write into the page cache, cheap enough to
//!   call from async code with each network chunk); call [`ContentWriter::commit`] (or
//!   [`ContentWriter::commit_async`] from async code: it fsyncs). Dropping an uncommitted
//!   writer deletes its temp file.
//!
//! Concurrent writers of one digest are safe: each has its own temp file, and renaming
//! identical content over an existing blob is idempotent. Modelled on containerd's
//! content store (`core/content/content.go`: Ingester/Writer/Provider split).
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use super::digest::{Digest, DigestError, DigestHasher};

/// Errors of the content store; each names the blob or path concerned.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("content store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest} not found in the content store")]
    NotFound { digest: Digest },
    #[error("digest mismatch: expected {expected}, content hashes to {actual} ({size} bytes); nothing stored")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}; nothing stored")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A blob's digest and size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// The blob store under `<root>/content`. Cheap to clone; safe to share between threads
/// and processes (all state is in the file system).
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the content store of the agent root `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<ContentStore, ContentError> {
        let content = root.as_ref().join("content");
        let blobs = content.join("blobs").join("sha256");
        let ingest = content.join("ingest");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        fs::create_dir_all(&ingest).map_err(io_err(&ingest))?;
        Ok(ContentStore { blobs, ingest })
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Starts a write. `expected` and `expected_size`, when given, are verified at commit
    /// (a write past `expected_size` fails at once).
    pub fn writer(
        &self,
        expected: Option<Digest>,
        expected_size: Option<u64>,
    ) -> Result<ContentWriter, ContentError> {
        let prefix = expected
            .as_ref()
            .map(|d| d.hex()[..12].to_string())
            .unwrap_or_else(|| "unknown".into());
        let tmp = self.ingest.join(format!(
            "{prefix}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        Ok(ContentWriter {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            blobs: self.blobs.clone(),
            hasher: DigestHasher::new(),
            expected,
            expected_size,
        })
    }

    /// Stores `data` in one call (manifests, configs). Returns its info.
    pub fn put(&self, data: &[u8], expected: Option<&Digest>) -> Result<BlobInfo, ContentError> {
        let digest = Digest::of(data);
        if let Some(e) = expected {
            if *e != digest {
                return Err(ContentError::DigestMismatch {
                    expected: e.clone(),
                    actual: digest,
                    size: data.len() as u64,
                });
            }
        }
        if let Ok(info) = self.info(&digest) {
            return Ok(info);
        }
        let mut w = self.writer(Some(digest), Some(data.len() as u64))?;
        w.write_chunk(data)?;
        w.commit()
    }

    /// Opens a blob for reading.
    pub fn reader(&self, digest: &Digest) -> Result<File, ContentError> {
        let p = self.blob_path(digest);
        File::open(&p).map_err(|e| self.not_found_or(digest, &p, e))
    }

    /// Reads a whole blob (manifests, configs; not meant for layers).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let p = self.blob_path(digest);
        let mut f = File::open(&p).map_err(|e| self.not_found_or(digest, &p, e))?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).map_err(io_err(&p))?;
        Ok(v)
    }

    /// The blob's size.
    pub fn info(&self, digest: &Digest) -> Result<BlobInfo, ContentError> {
        let p = self.blob_path(digest);
        let m = fs::metadata(&p).map_err(|e| self.not_found_or(digest, &p, e))?;
        Ok(BlobInfo {
            digest: digest.clone(),
            size: m.len(),
        })
    }

    pub fn exists(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Deletes a blob. Returns whether it existed.
    pub fn delete(&self, digest: &Digest) -> Result<bool, ContentError> {
        let p = self.blob_path(digest);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// All blobs, sorted by digest. Files whose names are not digests are ignored.
    pub fn list(&self) -> Result<Vec<BlobInfo>, ContentError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_err(&self.blobs))? {
            let entry = entry.map_err(io_err(&self.blobs))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(digest) = Digest::from_hex(&name) else {
                continue;
            };
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            out.push(BlobInfo {
                digest,
                size: meta.len(),
            });
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Removes ingest temp files older than `age` (left by a crashed writer).
    pub fn clean_ingest(&self, age: std::time::Duration) -> Result<usize, ContentError> {
        let mut n = 0;
        for entry in fs::read_dir(&self.ingest).map_err(io_err(&self.ingest))? {
            let entry = entry.map_err(io_err(&self.ingest))?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e >= age);
            if old && fs::remove_file(entry.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn not_found_or(&self, digest: &Digest, p: &Path, e: io::Error) -> ContentError {
        if e.kind() == io::ErrorKind::NotFound {
            ContentError::NotFound {
                digest: digest.clone(),
            }
        } else {
            io_err(p)(e)
        }
    }
}

/// An in-progress blob write; see the module doc.
pub struct ContentWriter {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    blobs: PathBuf,
    hasher: DigestHasher,
    expected: Option<Digest>,
    expected_size: Option<u64>,
}

impl ContentWriter {
    /// Appends a chunk. Fails if it goes past the expected size.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), ContentError> {
        let new_len = self.hasher.len() + chunk.len() as u64;
        if let Some(limit) = self.expected_size {
            if new_len > limit {
                return Err(ContentError::SizeMismatch {
                    digest: self.name(),
                    expected: limit,
                    actual: new_len,
                });
            }
        }
        let file = self.file.as_mut().expect("writer used after commit");
        file.write_all(chunk).map_err(io_err(&self.tmp))?;
        self.hasher.update(chunk);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    fn name(&self) -> String {
        self.expected
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_else(|| "unnamed blob".into())
    }

    /// Whether what was written so far is the complete expected blob (size and digest),
    /// without storing it: tells a corrupt download from a bad layer.
    pub fn check(&self) -> Result<(), ContentError> {
        self.verify(&self.hasher.clone().finish(), self.hasher.len())
    }

    fn verify(&self, actual: &Digest, size: u64) -> Result<(), ContentError> {
        if let Some(expected) = self.expected_size {
            if expected != size {
                return Err(ContentError::SizeMismatch {
                    digest: self.name(),
                    expected,
                    actual: size,
                });
            }
        }
        if let Some(expected) = &self.expected {
            if expected != actual {
                return Err(ContentError::DigestMismatch {
                    expected: expected.clone(),
                    actual: actual.clone(),
                    size,
                });
            }
        }
        Ok(())
    }

    /// Verifies size and digest, fsyncs, and renames the temp file into place. On a
    /// mismatch nothing is stored (the temp file is removed).
    pub fn commit(mut self) -> Result<BlobInfo, ContentError> {
        let size = self.hasher.len();
        let actual = std::mem::take(&mut self.hasher).finish();
        self.verify(&actual, size)?;
        let file = self
            .file
            .take()
            .expect("commit once")
            .into_inner()
            .map_err(|e| io_err(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err(&self.tmp))?;
        drop(file);
        let target = self.blobs.join(actual.hex());
        fs::rename(&self.tmp, &target).map_err(io_err(&target))?;
        if let Ok(dir) = File::open(&self.blobs) {
            let _ = dir.sync_all();
        }
        Ok(BlobInfo {
            digest: actual,
            size,
        })
    }

    /// [`commit`](Self::commit) on tokio's blocking pool (it fsyncs).
    pub async fn commit_async(self) -> Result<BlobInfo, ContentError> {
        let tmp = self.tmp.clone();
        tokio::task::spawn_blocking(move || self.commit())
            .await
            .map_err(|e| ContentError::Io {
                path: tmp,
                source: io::Error::other(e),
            })?
    }
}

impl Write for ContentWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_chunk(buf).map_err(|e| match e {
            ContentError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for ContentWriter {
    fn drop(&mut self) {
        // Committed writers have renamed the temp file away; this only removes abandoned
        // or refused writes.
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest_count(root: &Path) -> usize {
        fs::read_dir(root.join("content/ingest")).unwrap().count()
    }

    #[test]
    fn blob_write_verifies_and_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data = b"layer bytes".repeat(1000);
        let d = Digest::of(&data);
        let mut w = store
            .writer(Some(d.clone()), Some(data.len() as u64))
            .unwrap();
        w.write_all(&data[..100]).unwrap();
        w.write_chunk(&data[100..]).unwrap();
        let info = w.commit().unwrap();
        assert_eq!(info.digest, d);
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(store.read(&d).unwrap(), data);
        assert_eq!(store.info(&d).unwrap().size, data.len() as u64);
        assert!(store.exists(&d));
        assert_eq!(store.list().unwrap(), vec![info]);
        let mode = fs::metadata(store.blob_path(&d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(ingest_count(dir.path()), 0);
        assert!(store.delete(&d).unwrap());
        assert!(!store.delete(&d).unwrap());
        assert!(matches!(store.read(&d), Err(ContentError::NotFound { .. })));
    }

    #[test]
    fn blob_digest_mismatch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let wrong = Digest::of(b"something else");
        let mut w = store.writer(Some(wrong.clone()), None).unwrap();
        w.write_chunk(b"corrupted").unwrap();
        let e = w.commit().unwrap_err();
        assert!(
            matches!(&e, ContentError::DigestMismatch { expected, .. } if *expected == wrong),
            "{e}"
        );
        assert!(e.to_string().contains(&wrong.to_string()));
        assert!(store.list().unwrap().is_empty());
        assert!(!store.exists(&Digest::of(b"corrupted")));
        assert_eq!(ingest_count(dir.path()), 0);
    }

    #[test]
    fn blob_size_mismatch_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        // Too long: refused at the write that crosses the limit.
        let mut w = store.writer(None, Some(4)).unwrap();
        w.write_chunk(b"abc").unwrap();
        assert!(matches!(
            w.write_chunk(b"de"),
            Err(ContentError::SizeMismatch {
                expected: 4,
                actual: 5,
                ..
            })
        ));
        drop(w);
        // Too short: refused at commit.
        let mut w = store.writer(None, Some(10)).unwrap();
        w.write_chunk(b"abc").unwrap();
        assert!(matches!(
            w.commit(),
            Err(ContentError::SizeMismatch {
                expected: 10,
                actual: 3,
                ..
            })
        ));
        assert!(store.list().unwrap().is_empty());
        assert_eq!(ingest_count(dir.path()), 0);
    }

    #[test]
    fn concurrent_writers_of_one_digest_are_safe() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut w = store
                            .writer(Some(d.clone()), Some(data.len() as u64))
                            .unwrap();
                        for c in data.chunks(64 * 1024) {
                            w.write_chunk(c).unwrap();
                        }
                        w.commit().unwrap()
                    })
                })
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap().digest, d);
            }
        });
        assert_eq!(store.read(&d).unwrap(), data);
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(ingest_count(dir.path()), 0);
    }

    #[test]
    fn put_is_idempotent_and_checks_expected() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let a = store.put(b"{}", None).unwrap();
        let b = store.put(b"{}", Some(&a.digest)).unwrap();
        assert_eq!(a, b);
        assert!(store.put(b"[]", Some(&a.digest)).is_err());
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn async_commit_works() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let mut w = store.writer(None, None).unwrap();
        w.write_chunk(b"async").unwrap();
        let info = w.commit_async().await.unwrap();
        assert_eq!(info.digest, Digest::of(b"async"));
    }
}

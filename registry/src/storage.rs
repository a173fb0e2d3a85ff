//! Filesystem storage of the registry.
//!
//! Layout under the root directory (close to the reference registry's, so operators find
//! their way):
//! ```text
//! blobs/sha256/<2 hex>/<64 hex>                          content, shared by all repositories
//! repositories/<name>/_layers/sha256/<hex>               link: the blob is in this repository
//! repositories/<name>/_manifests/revisions/sha256/<hex>  link: manifest, content = media type
//! repositories/<name>/_manifests/tags/<tag>              content = manifest digest
//! _uploads/<session>                                     data of an upload in progress
//! _tmp/                                                  temp files, renamed into place
//! ```
//! Vocabulary: a **link** makes a blob or manifest visible in one repository; a **session**
//! is an upload in progress (kept in memory: its file, running sha256 and size; sessions do
//! not survive a restart, and `_uploads` is emptied at start).
//!
//! Nothing becomes visible before it is verified: upload data is hashed while it streams to
//! its session file, and only a matching digest is renamed into `blobs/`; every link, tag and
//! manifest is written to `_tmp/` and renamed. A failed chunk rolls the session back to its
//! previous size and hash state, so a refused request changes nothing.

use crate::manifest::{self, ManifestError, Parsed};
use crate::reference::{Digest, Reference};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Size of the buffers upload data is gathered in before one write + hash (two alternate,
/// so the network and the disk work at the same time).
const WRITE_CHUNK: usize = 1 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything the storage can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content digest is {actual}, the request said {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("chunk declared {declared} bytes but carried {actual}")]
    SizeMismatch { declared: u64, actual: u64 },
    #[error("blob exceeds the upload size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {source}")]
    Body {
        #[source]
        source: BoxError,
    },
    #[error("upload {session} is unknown in repository {repo}")]
    UploadUnknown { repo: String, session: String },
    #[error("chunk starts at {got}, the upload has {expected} bytes")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("too many uploads in progress (limit {limit})")]
    TooManyUploads { limit: usize },
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(#[source] ManifestError),
    #[error("{field} references {digest}, which is not in repository {repo}")]
    ManifestBlobUnknown {
        repo: String,
        field: String,
        digest: String,
    },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Tunables of the storage.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Largest blob accepted, in bytes.
    pub max_blob_size: u64,
    /// Most upload sessions open at once (beyond it: TOO_MANY_REQUESTS).
    pub max_uploads: usize,
    /// fsync blob data before it is renamed into place.
    pub fsync: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            max_blob_size: crate::limits::DEFAULT_MAX_BLOB_SIZE,
            max_uploads: crate::limits::DEFAULT_MAX_UPLOADS,
            fsync: false,
        }
    }
}

/// Paths of the layout (pure; shared with garbage collection).
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(&d.hex()[..2]).join(d.hex())
    }
    pub fn repos_dir(&self) -> PathBuf {
        self.root.join("repositories")
    }
    pub fn repo(&self, name: &str) -> PathBuf {
        self.repos_dir().join(name)
    }
    pub fn layer_links(&self, name: &str) -> PathBuf {
        self.repo(name).join("_layers/sha256")
    }
    pub fn layer_link(&self, name: &str, d: &Digest) -> PathBuf {
        self.layer_links(name).join(d.hex())
    }
    pub fn revisions(&self, name: &str) -> PathBuf {
        self.repo(name).join("_manifests/revisions/sha256")
    }
    pub fn revision(&self, name: &str, d: &Digest) -> PathBuf {
        self.revisions(name).join(d.hex())
    }
    pub fn tags(&self, name: &str) -> PathBuf {
        self.repo(name).join("_manifests/tags")
    }
    pub fn uploads(&self) -> PathBuf {
        self.root.join("_uploads")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("_tmp")
    }
}

/// An upload in progress.
struct Session {
    repo: String,
    path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    size: u64,
}

/// The registry's filesystem storage. Cheap to clone.
#[derive(Clone)]
pub struct FsStorage {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    config: StorageConfig,
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Session>>>>,
    counter: AtomicU64,
}

/// A blob opened for reading.
pub struct OpenBlob {
    pub file: File,
    pub size: u64,
}

/// A stored manifest.
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl FsStorage {
    /// Opens (creating) the storage at `root`; leftovers of earlier runs' uploads and temp
    /// files are removed, since sessions live in memory.
    pub fn open(
        root: impl Into<PathBuf>,
        config: StorageConfig,
    ) -> Result<FsStorage, StorageError> {
        let layout = Layout::new(root);
        for dir in [layout.uploads(), layout.tmp()] {
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io_err("clean", &dir))?;
            }
        }
        for dir in [
            layout.blobs_dir(),
            layout.repos_dir(),
            layout.uploads(),
            layout.tmp(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(FsStorage {
            inner: Arc::new(Inner {
                layout,
                config,
                sessions: Mutex::new(HashMap::new()),
                counter: AtomicU64::new(0),
            }),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// Whether `name` exists (has any blob or manifest).
    pub async fn repo_exists(&self, name: &str) -> bool {
        let p = self.layout().repo(name);
        tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_dir())
    }

    /// Size of a blob if it is linked into `name` and present.
    pub async fn blob_size(&self, name: &str, d: &Digest) -> Result<Option<u64>, StorageError> {
        let (link, blob) = (self.layout().layer_link(name, d), self.layout().blob(d));
        blocking(move || {
            if !link.exists() {
                return Ok(None);
            }
            match fs::metadata(&blob) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err("stat", &blob)(e)),
            }
        })
        .await
    }

    /// Opens a blob linked into `name`.
    pub async fn open_blob(
        &self,
        name: &str,
        d: &Digest,
    ) -> Result<Option<OpenBlob>, StorageError> {
        let (link, blob) = (self.layout().layer_link(name, d), self.layout().blob(d));
        blocking(move || {
            if !link.exists() {
                return Ok(None);
            }
            let file = match File::open(&blob) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("open", &blob)(e)),
            };
            let size = file.metadata().map_err(io_err("stat", &blob))?.len();
            Ok(Some(OpenBlob { file, size }))
        })
        .await
    }

    /// Removes a blob's link from `name` (the content goes at the next GC if unreferenced).
    pub async fn delete_blob(&self, name: &str, d: &Digest) -> Result<bool, StorageError> {
        let link = self.layout().layer_link(name, d);
        blocking(move || match fs::remove_file(&link) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &link)(e)),
        })
        .await
    }

    /// Links a blob of repository `from` into `name`; false if `from` does not have it.
    pub async fn mount_blob(
        &self,
        name: &str,
        from: &str,
        d: &Digest,
    ) -> Result<bool, StorageError> {
        if self.blob_size(from, d).await?.is_none() {
            return Ok(false);
        }
        let this = self.clone();
        let (name, d) = (name.to_string(), d.clone());
        blocking(move || this.link_blob(&name, &d).map(|()| true)).await
    }

    fn link_blob(&self, name: &str, d: &Digest) -> Result<(), StorageError> {
        let link = self.layout().layer_link(name, d);
        if link.exists() {
            return Ok(());
        }
        self.write_atomic(&link, b"")
    }

    /// Writes `data` to `dest` through a temp file and a rename.
    fn write_atomic(&self, dest: &Path, data: &[u8]) -> Result<(), StorageError> {
        let tmp = self.temp_path();
        let parent = dest.parent().expect("storage paths have parents");
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("rename", dest)(e)
        })
    }

    fn unique(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let r: u64 = rand::random();
        format!("{r:016x}{n:08x}")
    }

    fn temp_path(&self) -> PathBuf {
        self.layout().tmp().join(self.unique())
    }

    // ---------------------------------------------------------------- uploads

    /// Opens an upload session for repository `name`.
    pub async fn start_upload(&self, name: &str) -> Result<String, StorageError> {
        let id = self.unique();
        let path = self.layout().uploads().join(&id);
        {
            let sessions = self.inner.sessions.lock().unwrap();
            if sessions.len() >= self.inner.config.max_uploads {
                return Err(StorageError::TooManyUploads {
                    limit: self.inner.config.max_uploads,
                });
            }
        }
        let p = path.clone();
        let file = blocking(move || File::create_new(&p).map_err(io_err("create", &p))).await?;
        let session = Session {
            repo: name.to_string(),
            path,
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
        };
        self.inner
            .sessions
            .lock()
            .unwrap()
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(session)));
        Ok(id)
    }

    fn session(
        &self,
        name: &str,
        id: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Session>>, StorageError> {
        let unknown = || StorageError::UploadUnknown {
            repo: name.to_string(),
            session: id.to_string(),
        };
        self.inner
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(unknown)
    }

    /// Bytes received so far by a session.
    pub async fn upload_size(&self, name: &str, id: &str) -> Result<u64, StorageError> {
        let s = self.session(name, id)?;
        let s = s.lock().await;
        if s.repo != name {
            return Err(StorageError::UploadUnknown {
                repo: name.to_string(),
                session: id.to_string(),
            });
        }
        Ok(s.size)
    }

    /// Appends a chunk. `range` is the request's Content-Range (inclusive), checked against
    /// the session's size; `declared` its Content-Length. On any failure the session is
    /// rolled back to where it was. Returns the new size.
    pub async fn append<S, E>(
        &self,
        name: &str,
        id: &str,
        range: Option<(u64, u64)>,
        declared: Option<u64>,
        body: S,
    ) -> Result<u64, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Into<BoxError>,
    {
        let s = self.session(name, id)?;
        let mut s = s.lock().await;
        if s.repo != name {
            return Err(StorageError::UploadUnknown {
                repo: name.to_string(),
                session: id.to_string(),
            });
        }
        if let Some((start, _)) = range {
            if start != s.size {
                return Err(StorageError::OutOfOrder {
                    expected: s.size,
                    got: start,
                });
            }
        }
        let expect_len = range.map(|(a, b)| b - a + 1).or(declared);
        self.append_locked(&mut s, expect_len, body).await?;
        Ok(s.size)
    }

    async fn append_locked<S, E>(
        &self,
        s: &mut Session,
        expect_len: Option<u64>,
        body: S,
    ) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Into<BoxError>,
    {
        let before = (s.size, s.hasher.clone());
        let file = s
            .file
            .take()
            .expect("session file present between requests");
        let limit = self.inner.config.max_blob_size;
        let path = s.path.clone();
        let (file, hasher, result) =
            write_stream(file, s.hasher.clone(), s.size, limit, path.clone(), body).await;
        let mut file = file;
        let outcome = match result {
            Ok(new_size) => match expect_len {
                Some(n) if new_size - before.0 != n => Err(StorageError::SizeMismatch {
                    declared: n,
                    actual: new_size - before.0,
                }),
                _ => Ok((new_size, hasher)),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok((size, hasher)) => {
                s.size = size;
                s.hasher = hasher;
                s.file = Some(file);
                Ok(())
            }
            Err(e) => {
                // Roll back: the data of a refused chunk must not count.
                let (size, hasher) = before;
                let f2 = blocking(move || {
                    file.set_len(size).map_err(io_err("truncate", &path))?;
                    use std::io::Seek;
                    file.seek(io::SeekFrom::End(0))
                        .map_err(io_err("seek", &path))?;
                    Ok(file)
                })
                .await;
                file = match f2 {
                    Ok(f) => f,
                    Err(io) => return Err(io),
                };
                s.size = size;
                s.hasher = hasher;
                s.file = Some(file);
                Err(e)
            }
        }
    }

    /// Finishes a session: appends the last chunk, verifies the digest and makes the blob
    /// visible in `name`. On a digest mismatch the session is removed and nothing is stored.
    pub async fn finish_upload<S, E>(
        &self,
        name: &str,
        id: &str,
        expected: &Digest,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<u64, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Into<BoxError>,
    {
        let arc = self.session(name, id)?;
        let mut s = arc.lock().await;
        if s.repo != name {
            return Err(StorageError::UploadUnknown {
                repo: name.to_string(),
                session: id.to_string(),
            });
        }
        if let Some((start, _)) = range {
            if start != s.size {
                return Err(StorageError::OutOfOrder {
                    expected: s.size,
                    got: start,
                });
            }
        }
        let expect_len = range.map(|(a, b)| b - a + 1);
        self.append_locked(&mut s, expect_len, body).await?;
        // From here the session ends, whatever happens.
        self.inner.sessions.lock().unwrap().remove(id);
        let actual = Digest::from_sha256(&s.hasher.clone().finalize());
        let file = s.file.take().expect("session file present");
        let (path, size) = (s.path.clone(), s.size);
        drop(s);
        if actual != *expected {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(StorageError::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        let this = self.clone();
        let (name, d, fsync) = (name.to_string(), actual, self.inner.config.fsync);
        blocking(move || {
            let result = (|| {
                if fsync {
                    file.sync_all().map_err(io_err("fsync", &path))?;
                }
                drop(file);
                let dest = this.layout().blob(&d);
                let parent = dest.parent().unwrap();
                fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                fs::rename(&path, &dest).map_err(io_err("rename", &dest))?;
                this.link_blob(&name, &d)
            })();
            if result.is_err() {
                let _ = fs::remove_file(&path);
            }
            result.map(|()| size)
        })
        .await
    }

    /// Drops a session and its data.
    pub async fn cancel_upload(&self, name: &str, id: &str) -> Result<(), StorageError> {
        let arc = self.session(name, id)?;
        let s = arc.lock().await;
        if s.repo != name {
            return Err(StorageError::UploadUnknown {
                repo: name.to_string(),
                session: id.to_string(),
            });
        }
        self.inner.sessions.lock().unwrap().remove(id);
        let _ = tokio::fs::remove_file(&s.path).await;
        Ok(())
    }

    /// Stores a whole blob from one body (monolithic upload).
    pub async fn put_blob<S, E>(
        &self,
        name: &str,
        expected: &Digest,
        body: S,
    ) -> Result<u64, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: Into<BoxError>,
    {
        let id = self.start_upload(name).await?;
        let r = self.finish_upload(name, &id, expected, None, body).await;
        if r.is_err() {
            // finish_upload removes the session unless it failed before verification.
            let _ = self.cancel_upload(name, &id).await;
        }
        r
    }

    /// Number of upload sessions open (for tests and metrics).
    pub fn open_uploads(&self) -> usize {
        self.inner.sessions.lock().unwrap().len()
    }

    // ---------------------------------------------------------------- manifests

    /// Validates and stores a manifest under `reference`; returns its digest.
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &Reference,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Digest, StorageError> {
        let parsed: Parsed =
            manifest::parse(&body, content_type).map_err(StorageError::ManifestInvalid)?;
        let digest = Digest::from_sha256(&Sha256::digest(&body));
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(StorageError::DigestMismatch {
                    expected: d.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let this = self.clone();
        let (name, reference) = (name.to_string(), reference.clone());
        blocking(move || {
            let l = this.layout();
            for r in &parsed.blobs {
                let ok = l.layer_link(&name, &r.digest).exists() && l.blob(&r.digest).exists();
                if !ok {
                    return Err(StorageError::ManifestBlobUnknown {
                        repo: name.clone(),
                        field: r.field.clone(),
                        digest: r.digest.to_string(),
                    });
                }
            }
            for r in &parsed.manifests {
                let ok = l.revision(&name, &r.digest).exists() && l.blob(&r.digest).exists();
                if !ok {
                    return Err(StorageError::ManifestBlobUnknown {
                        repo: name.clone(),
                        field: r.field.clone(),
                        digest: r.digest.to_string(),
                    });
                }
            }
            let blob = l.blob(&digest);
            if !blob.exists() {
                this.write_atomic(&blob, &body)?;
            }
            this.write_atomic(&l.revision(&name, &digest), parsed.media_type.as_bytes())?;
            if let Reference::Tag(t) = &reference {
                this.write_atomic(&l.tags(&name).join(t), digest.to_string().as_bytes())?;
            }
            Ok(digest)
        })
        .await
    }

    /// Resolves a tag or digest to the stored manifest.
    pub async fn get_manifest(
        &self,
        name: &str,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, StorageError> {
        let this = self.clone();
        let (name, reference) = (name.to_string(), reference.clone());
        blocking(move || {
            let l = this.layout();
            let digest = match &reference {
                Reference::Digest(d) => d.clone(),
                Reference::Tag(t) => {
                    let p = l.tags(&name).join(t);
                    match fs::read_to_string(&p) {
                        Ok(s) => Digest::parse(s.trim()).map_err(|e| StorageError::Corrupt {
                            path: p.clone(),
                            why: e.to_string(),
                        })?,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(io_err("read", &p)(e)),
                    }
                }
            };
            let rev = l.revision(&name, &digest);
            let media_type = match fs::read_to_string(&rev) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("read", &rev)(e)),
            };
            let blob = l.blob(&digest);
            let body = match fs::read(&blob) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("read", &blob)(e)),
            };
            Ok(Some(StoredManifest {
                digest,
                media_type,
                body: Bytes::from(body),
            }))
        })
        .await
    }

    /// Deletes a tag, or a manifest revision and every tag pointing at it.
    pub async fn delete_manifest(
        &self,
        name: &str,
        reference: &Reference,
    ) -> Result<bool, StorageError> {
        let this = self.clone();
        let (name, reference) = (name.to_string(), reference.clone());
        blocking(move || {
            let l = this.layout();
            match &reference {
                Reference::Tag(t) => {
                    let p = l.tags(&name).join(t);
                    match fs::remove_file(&p) {
                        Ok(()) => Ok(true),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                        Err(e) => Err(io_err("remove", &p)(e)),
                    }
                }
                Reference::Digest(d) => {
                    let rev = l.revision(&name, d);
                    match fs::remove_file(&rev) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                        Err(e) => return Err(io_err("remove", &rev)(e)),
                    }
                    let want = d.to_string();
                    for (tag, path) in list_files(&l.tags(&name))? {
                        let _ = tag;
                        if fs::read_to_string(&path).is_ok_and(|s| s.trim() == want) {
                            let _ = fs::remove_file(&path);
                        }
                    }
                    Ok(true)
                }
            }
        })
        .await
    }

    /// Sorted tags of `name`, or None if the repository does not exist.
    pub async fn tags(&self, name: &str) -> Result<Option<Vec<String>>, StorageError> {
        let l = self.layout().clone();
        let name = name.to_string();
        blocking(move || {
            if !l.repo(&name).is_dir() {
                return Ok(None);
            }
            let mut tags: Vec<String> = list_files(&l.tags(&name))?
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            tags.sort();
            Ok(Some(tags))
        })
        .await
    }

    /// Sorted names of all repositories.
    pub async fn catalog(&self) -> Result<Vec<String>, StorageError> {
        let l = self.layout().clone();
        blocking(move || list_repositories(&l)).await
    }
}

/// Files directly in `dir` as (name, path); a missing directory is empty.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, StorageError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err("list", dir))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            if let Some(n) = entry.file_name().to_str() {
                out.push((n.to_string(), entry.path()));
            }
        }
    }
    Ok(out)
}

/// All repositories: directories under `repositories/` holding `_layers` or `_manifests`.
pub(crate) fn list_repositories(l: &Layout) -> Result<Vec<String>, StorageError> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), StorageError> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("list", dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(io_err("list", dir))?;
            let Some(n) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if n.starts_with('_') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = if prefix.is_empty() {
                n.clone()
            } else {
                format!("{prefix}/{n}")
            };
            let p = entry.path();
            if p.join("_layers").is_dir() || p.join("_manifests").is_dir() {
                out.push(name.clone());
            }
            walk(&p, &name, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&l.repos_dir(), "", &mut out)?;
    out.sort();
    Ok(out)
}

/// Streams `body` into `file` (appending), hashing as it goes; returns the file and hasher
/// back whatever happens, with the new total size or the error. Two 1 MiB buffers
/// alternate: one is written and hashed on a blocking thread while the other fills.
async fn write_stream<S, E>(
    file: File,
    hasher: Sha256,
    start: u64,
    limit: u64,
    path: PathBuf,
    mut body: S,
) -> (File, Sha256, Result<u64, StorageError>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
    E: Into<BoxError>,
{
    type Job = tokio::task::JoinHandle<(File, Sha256, Vec<u8>, io::Result<()>)>;
    let mut idle: Option<(File, Sha256)> = Some((file, hasher));
    let mut spare: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
    let mut pending: Option<Job> = None;
    let mut size = start;
    let mut failure: Option<StorageError> = None;

    // Waits for the running write (if any) and gets the file back.
    async fn settle(
        pending: &mut Option<Job>,
        idle: &mut Option<(File, Sha256)>,
        spare: &mut Vec<u8>,
        path: &Path,
    ) -> Result<(), StorageError> {
        if let Some(job) = pending.take() {
            let (f, h, mut b, r) = job.await.expect("write task panicked");
            b.clear();
            *spare = b;
            *idle = Some((f, h));
            r.map_err(io_err("write", path))?;
        }
        Ok(())
    }
    fn launch(idle: &mut Option<(File, Sha256)>, data: Vec<u8>) -> Job {
        let (mut f, mut h) = idle.take().expect("file idle");
        tokio::task::spawn_blocking(move || {
            h.update(&data);
            let r = f.write_all(&data);
            (f, h, data, r)
        })
    }

    loop {
        let next = body.next().await;
        let chunk = match next {
            None => break,
            Some(Err(e)) => {
                failure = Some(StorageError::Body { source: e.into() });
                break;
            }
            Some(Ok(c)) => c,
        };
        size += chunk.len() as u64;
        if size > limit {
            failure = Some(StorageError::TooLarge { limit });
            break;
        }
        buf.extend_from_slice(&chunk);
        if buf.len() >= WRITE_CHUNK {
            if let Err(e) = settle(&mut pending, &mut idle, &mut spare, &path).await {
                failure = Some(e);
                break;
            }
            let full = std::mem::replace(&mut buf, std::mem::take(&mut spare));
            pending = Some(launch(&mut idle, full));
        }
    }
    if let Err(e) = settle(&mut pending, &mut idle, &mut spare, &path).await {
        failure.get_or_insert(e);
    }
    if failure.is_none() && !buf.is_empty() {
        pending = Some(launch(&mut idle, buf));
        if let Err(e) = settle(&mut pending, &mut idle, &mut spare, &path).await {
            failure = Some(e);
        }
    }
    let (file, hasher) = idle.expect("file back");
    match failure {
        Some(e) => (file, hasher, Err(e)),
        None => (file, hasher, Ok(size)),
    }
}

/// Reads a whole small file (manifests during GC).
pub(crate) fn read_small(path: &Path) -> Result<Vec<u8>, StorageError> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).map_err(io_err("read", path))?;
    Ok(v)
}

/// Digests of every blob file present.
pub(crate) fn all_blobs(l: &Layout) -> Result<Vec<(Digest, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    let dir = l.blobs_dir();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    for prefix in rd {
        let prefix = prefix.map_err(io_err("list", &dir))?;
        for (n, p) in list_files(&prefix.path())? {
            if let Ok(d) = Digest::parse(&format!("sha256:{n}")) {
                out.push((d, p));
            }
        }
    }
    Ok(out)
}

/// Digests named by the link files in `dir` (`_layers/sha256` or `revisions/sha256`).
pub(crate) fn linked(dir: &Path) -> Result<HashSet<Digest>, StorageError> {
    Ok(list_files(dir)?
        .into_iter()
        .filter_map(|(n, _)| Digest::parse(&format!("sha256:{n}")).ok())
        .collect())
}

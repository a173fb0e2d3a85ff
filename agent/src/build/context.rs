//! The build context: what the CLI sends, and what `COPY`/`ADD` take from it.
//!
//! Vocabulary:
//! - **context**: a directory; its `.dockerignore` ([`super::dockerignore`]) says what is
//!   not sent. The Dockerfile and `.dockerignore` themselves are always sent;
//! - **context stream**: the context as a tar, entries in a fixed order (depth first,
//!   siblings by name), written to any [`Write`] while walking — no temp copy. The CLI
//!   hands a [`ChannelWriter`] to a blocking task and forwards the chunks to the agent;
//! - **selection**: what one `COPY` source picks in the (received) context: a path or a
//!   glob, resolved without leaving the context (a `..` above the root or a symlink that
//!   points outside it is an error naming the source and the Dockerfile line);
//! - **content hash**: a digest of what the selections contain — paths, types,
//!   permission bits, file bytes, link targets; not mtimes or owners (Docker's choice:
//!   a fresh `git clone` must hit the cache) — for the cache key.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::dockerignore::{clean, glob_match, Ignore, IgnoreError};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    #[error("build context {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("build context {path}: {source}")]
    Walk {
        path: PathBuf,
        #[source]
        source: walkdir::Error,
    },
    #[error("writing the build context stream: {0}")]
    Stream(#[source] io::Error),
    #[error(
        "Dockerfile:{line}: {instruction} source {src:?} is outside the build context{detail}"
    )]
    Escape {
        line: usize,
        instruction: String,
        src: String,
        detail: String,
    },
    #[error("Dockerfile:{line}: {instruction} source {src:?}: not found in the build context")]
    NotFound {
        line: usize,
        instruction: String,
        src: String,
    },
    #[error("Dockerfile:{line}: {instruction} source {src:?} is a URL: {hint}")]
    Url {
        line: usize,
        instruction: String,
        src: String,
        hint: &'static str,
    },
    #[error(
        "Dockerfile:{line}: {instruction} source {src:?}: no file in the build context matches"
    )]
    NoMatch {
        line: usize,
        instruction: String,
        src: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

/// One path of the context that is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// Relative to the context root, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
    pub kind: EntryKind,
}

/// Counts of what a context stream carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSummary {
    pub entries: usize,
    pub bytes: u64,
}

/// Walks a context directory, honouring its `.dockerignore`.
#[derive(Debug, Clone)]
pub struct ContextWalker {
    root: PathBuf,
    ignore: Ignore,
    /// Paths always sent, and their parent directories.
    always: BTreeSet<String>,
}

fn rel_of(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

fn kind_of(meta: &std::fs::Metadata) -> Option<EntryKind> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        Some(EntryKind::Symlink)
    } else if ft.is_dir() {
        Some(EntryKind::Dir)
    } else if ft.is_file() {
        Some(EntryKind::File)
    } else {
        None
    }
}

impl ContextWalker {
    /// `dockerfile`: the Dockerfile's path relative to the root, if it is inside the
    /// context (it is then always sent).
    pub fn new(root: impl Into<PathBuf>, dockerfile: Option<&str>) -> Result<Self, ContextError> {
        let root = root.into();
        let ignore_path = root.join(".dockerignore");
        let ignore = match std::fs::read_to_string(&ignore_path) {
            Ok(text) => Ignore::parse(&text, &ignore_path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
            Err(e) => return Err(io_err(&ignore_path)(e)),
        };
        let mut always = BTreeSet::new();
        for path in [Some(".dockerignore"), dockerfile].into_iter().flatten() {
            let mut p = clean(path);
            loop {
                always.insert(p.clone());
                match p.rfind('/') {
                    Some(i) => p.truncate(i),
                    None => break,
                }
            }
        }
        Ok(ContextWalker {
            root,
            ignore,
            always,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sent(&self, rel: &str) -> bool {
        self.always.contains(rel) || !self.ignore.excluded(rel)
    }

    /// The entries sent, in stream order; calls `f` for each while walking.
    fn walk(
        &self,
        mut f: impl FnMut(ContextEntry, &std::fs::Metadata) -> Result<(), ContextError>,
    ) -> Result<(), ContextError> {
        let descend_excluded = self.ignore.has_exceptions();
        let mut pending: Vec<(ContextEntry, std::fs::Metadata)> = Vec::new();
        let walker = walkdir::WalkDir::new(&self.root)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                let rel = rel_of(&self.root, e.path());
                !e.file_type().is_dir() || descend_excluded || self.sent(&rel)
            });
        for entry in walker {
            let entry = entry.map_err(|source| ContextError::Walk {
                path: self.root.clone(),
                source,
            })?;
            let rel = rel_of(&self.root, entry.path());
            // Excluded directories walked for their exceptions wait here: they are sent
            // (before their first sent child) only if something below them is.
            pending.retain(|(p, _): &(ContextEntry, std::fs::Metadata)| {
                rel.starts_with(p.rel.as_str()) && rel[p.rel.len()..].starts_with('/')
            });
            let sent = self.sent(&rel);
            if !sent && !entry.file_type().is_dir() {
                continue;
            }
            let meta = entry.metadata().map_err(|source| ContextError::Walk {
                path: entry.path().to_path_buf(),
                source,
            })?;
            // Sockets, fifos and devices are not sent (Docker skips them too).
            let Some(kind) = kind_of(&meta) else { continue };
            let this = ContextEntry {
                rel,
                path: entry.path().to_path_buf(),
                kind,
            };
            if !sent {
                pending.push((this, meta));
                continue;
            }
            for (p, m) in pending.drain(..) {
                f(p, &m)?;
            }
            f(this, &meta)?;
        }
        Ok(())
    }

    /// The entries that are sent, in stream order.
    pub fn entries(&self) -> Result<Vec<ContextEntry>, ContextError> {
        let mut out = Vec::new();
        self.walk(|e, _| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes the context as a tar stream to `out` while walking it.
    pub fn write_tar<W: Write>(&self, out: W) -> Result<StreamSummary, ContextError> {
        let mut counter = CountingWriter {
            inner: out,
            bytes: 0,
        };
        let mut entries = 0;
        {
            let mut builder = tar::Builder::new(&mut counter);
            builder.follow_symlinks(false);
            builder.mode(tar::HeaderMode::Complete);
            self.walk(|e, _| {
                entries += 1;
                builder
                    .append_path_with_name(&e.path, &e.rel)
                    .map_err(|err| {
                        if err.kind() == io::ErrorKind::BrokenPipe {
                            ContextError::Stream(err)
                        } else {
                            io_err(&e.path)(err)
                        }
                    })
            })?;
            builder.finish().map_err(ContextError::Stream)?;
        }
        counter.flush().map_err(ContextError::Stream)?;
        Ok(StreamSummary {
            entries,
            bytes: counter.bytes,
        })
    }
}

struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`Write`] that sends fixed-size chunks into a tokio channel, for a blocking writer
/// (the tar streamer) feeding an async sender (the gRPC stream). Use it from
/// `spawn_blocking`, never from an async task (it blocks when the channel is full).
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChannelWriter {
    pub fn new(tx: tokio::sync::mpsc::Sender<Vec<u8>>, chunk: usize) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk: chunk.max(1),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .blocking_send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "context receiver closed"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// What one `COPY`/`ADD` source selects in the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The source as written (after substitution).
    pub src: String,
    /// The selected path relative to the context root ("." for the root).
    pub rel: String,
    /// The path on disk, symlinks in it resolved (inside the context).
    pub path: PathBuf,
    /// The selected path with symlinks resolved, relative to the context root.
    pub resolved: String,
    pub is_dir: bool,
}

fn has_glob(pattern: &str) -> bool {
    let mut escaped = false;
    for c in pattern.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if matches!(c, '*' | '?' | '[') {
            return true;
        }
    }
    false
}

/// Where a source is (for errors).
#[derive(Debug, Clone, Copy)]
pub struct SourceAt<'a> {
    pub line: usize,
    pub instruction: &'a str,
}

/// One entry of a tree, as the content hash sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative to the tree's root ("" for the root itself).
    pub rel: String,
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
    /// sha256 of a file's bytes.
    pub digest: [u8; 32],
    /// A symlink's target.
    pub target: String,
}

/// A build context as `COPY` sees it: a directory ([`DirView`]) or the index of a
/// received context stream ([`ContextIndex`], which needs no unpacking). Both give the
/// same selections and the same content hashes for the same content.
pub trait ContextView {
    /// The kind of the entry at `rel` (no symlink following); None if absent.
    fn kind(&self, rel: &str) -> Result<Option<EntryKind>, ContextError>;
    fn link_target(&self, rel: &str) -> Result<String, ContextError>;
    /// Every path below the root, depth first, siblings by name.
    fn all_paths(&self) -> Result<Vec<String>, ContextError>;
    /// The tree at `rel` (resolved, not a symlink): itself, then what is below it, in
    /// walk order.
    fn tree(&self, rel: &str) -> Result<Vec<TreeEntry>, ContextError>;
    /// Where a resolved path is on disk, for the layer writer (a view that has no files
    /// returns the relative path).
    fn disk_path(&self, rel: &str) -> PathBuf;
}

/// A context directory.
#[derive(Debug, Clone)]
pub struct DirView {
    pub root: PathBuf,
}

impl DirView {
    fn abs(&self, rel: &str) -> PathBuf {
        if rel == "." || rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
}

fn file_digest(path: &Path) -> Result<[u8; 32], ContextError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

impl ContextView for DirView {
    fn kind(&self, rel: &str) -> Result<Option<EntryKind>, ContextError> {
        let path = self.abs(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) => Ok(kind_of(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn link_target(&self, rel: &str) -> Result<String, ContextError> {
        let path = self.abs(rel);
        let t = std::fs::read_link(&path).map_err(io_err(&path))?;
        Ok(t.to_string_lossy().into_owned())
    }

    fn all_paths(&self) -> Result<Vec<String>, ContextError> {
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&self.root)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|source| ContextError::Walk {
                path: self.root.clone(),
                source,
            })?;
            out.push(rel_of(&self.root, entry.path()));
        }
        Ok(out)
    }

    fn tree(&self, rel: &str) -> Result<Vec<TreeEntry>, ContextError> {
        let top = self.abs(rel);
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&top)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|source| ContextError::Walk {
                path: top.clone(),
                source,
            })?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
            let Some(kind) = kind_of(&meta) else { continue };
            out.push(TreeEntry {
                rel: rel_of(&top, path),
                kind,
                mode: meta.permissions().mode() & 0o7777,
                size: if kind == EntryKind::File {
                    meta.size()
                } else {
                    0
                },
                digest: if kind == EntryKind::File {
                    file_digest(path)?
                } else {
                    [0; 32]
                },
                target: if kind == EntryKind::Symlink {
                    std::fs::read_link(path)
                        .map_err(io_err(path))?
                        .to_string_lossy()
                        .into_owned()
                } else {
                    String::new()
                },
            });
        }
        Ok(out)
    }

    fn disk_path(&self, rel: &str) -> PathBuf {
        self.abs(rel)
    }
}

/// The index of a context tar stream: paths, kinds, modes, file digests — built in one
/// pass while the stream arrives, so a fully cached build needs no unpacking.
#[derive(Debug, Clone, Default)]
pub struct ContextIndex {
    entries: std::collections::BTreeMap<Vec<String>, TreeEntry>,
}

fn components(rel: &str) -> Vec<String> {
    rel.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_string)
        .collect()
}

impl ContextIndex {
    /// Reads a context tar (as [`ContextWalker::write_tar`] writes it). To keep the
    /// stream as well, hand in a reader that also writes what it reads.
    pub fn from_tar(reader: impl Read) -> Result<ContextIndex, ContextError> {
        let stream_err = |e: io::Error| ContextError::Stream(e);
        let mut index = ContextIndex::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(stream_err)? {
            let mut entry = entry.map_err(stream_err)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let parts = components(&raw);
            if parts.is_empty() || parts.iter().any(|p| p == "..") {
                continue;
            }
            let h = entry.header();
            let mode = h.mode().map_err(stream_err)? & 0o7777;
            let kind = match h.entry_type() {
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Symlink => EntryKind::Symlink,
                _ => continue,
            };
            let target = match kind {
                EntryKind::Symlink => entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let (size, digest) = if kind == EntryKind::File {
                let mut hw = HashSink(Sha256::new(), 0);
                io::copy(&mut entry, &mut hw).map_err(stream_err)?;
                (hw.1, hw.0.finalize().into())
            } else {
                (0, [0; 32])
            };
            // Parents the stream left out are directories.
            for i in 1..parts.len() {
                index
                    .entries
                    .entry(parts[..i].to_vec())
                    .or_insert_with(|| TreeEntry {
                        rel: String::new(),
                        kind: EntryKind::Dir,
                        mode: 0o755,
                        size: 0,
                        digest: [0; 32],
                        target: String::new(),
                    });
            }
            index.entries.insert(
                parts,
                TreeEntry {
                    rel: String::new(),
                    kind,
                    mode,
                    size,
                    digest,
                    target,
                },
            );
        }
        Ok(index)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

struct HashSink(Sha256, u64);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ContextView for ContextIndex {
    fn kind(&self, rel: &str) -> Result<Option<EntryKind>, ContextError> {
        let parts = components(rel);
        if parts.is_empty() {
            return Ok(Some(EntryKind::Dir));
        }
        Ok(self.entries.get(&parts).map(|e| e.kind))
    }

    fn link_target(&self, rel: &str) -> Result<String, ContextError> {
        Ok(self
            .entries
            .get(&components(rel))
            .map(|e| e.target.clone())
            .unwrap_or_default())
    }

    fn all_paths(&self) -> Result<Vec<String>, ContextError> {
        // Component-wise order is the walk order: depth first, siblings by name.
        Ok(self.entries.keys().map(|k| k.join("/")).collect())
    }

    fn tree(&self, rel: &str) -> Result<Vec<TreeEntry>, ContextError> {
        let parts = components(rel);
        let root = TreeEntry {
            rel: String::new(),
            kind: EntryKind::Dir,
            mode: 0o755,
            size: 0,
            digest: [0; 32],
            target: String::new(),
        };
        let mut out = Vec::new();
        let top = if parts.is_empty() {
            root
        } else {
            match self.entries.get(&parts) {
                Some(e) => e.clone(),
                None => return Ok(out),
            }
        };
        let is_dir = top.kind == EntryKind::Dir;
        out.push(top);
        if is_dir {
            for (k, e) in self.entries.range(parts.clone()..) {
                if k.len() <= parts.len() && !parts.is_empty() {
                    if *k == parts {
                        continue;
                    }
                    break;
                }
                if !k.starts_with(&parts) {
                    break;
                }
                if k.len() == parts.len() {
                    continue;
                }
                out.push(TreeEntry {
                    rel: k[parts.len()..].join("/"),
                    ..e.clone()
                });
            }
        }
        Ok(out)
    }

    fn disk_path(&self, rel: &str) -> PathBuf {
        PathBuf::from(rel)
    }
}

/// Resolves `rel` in the view following symlinks as if its root were `/`, refusing to
/// leave it. Returns the resolved relative path.
fn resolve_in_root(
    view: &dyn ContextView,
    rel: &str,
    src: &str,
    at: SourceAt,
) -> Result<String, ContextError> {
    let escape = |detail: String| ContextError::Escape {
        line: at.line,
        instruction: at.instruction.to_string(),
        src: src.to_string(),
        detail,
    };
    let mut todo: Vec<String> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .rev()
        .map(str::to_string)
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == "." || part.is_empty() {
            continue;
        }
        if part == ".." {
            if done.pop().is_none() {
                return Err(escape(String::new()));
            }
            continue;
        }
        done.push(part);
        let here = done.join("/");
        match view.kind(&here)? {
            None => {
                return Err(ContextError::NotFound {
                    line: at.line,
                    instruction: at.instruction.to_string(),
                    src: src.to_string(),
                })
            }
            Some(EntryKind::Symlink) => {
                links += 1;
                if links > 40 {
                    return Err(io_err(&view.disk_path(&here))(io::Error::other(
                        "too many levels of symbolic links",
                    )));
                }
                let target = view.link_target(&here)?;
                if target.starts_with('/') {
                    return Err(escape(format!(" (symlink {here} points to {target})")));
                }
                done.pop();
                let mut depth = done.len() as isize;
                for p in target.split('/') {
                    match p {
                        "" | "." => {}
                        ".." => depth -= 1,
                        _ => depth += 1,
                    }
                    if depth < 0 {
                        return Err(escape(format!(" (symlink {here} points to {target})")));
                    }
                }
                todo.extend(target.split('/').rev().map(str::to_string));
            }
            Some(_) => {}
        }
    }
    Ok(if done.is_empty() {
        ".".to_string()
    } else {
        done.join("/")
    })
}

/// Whether an `ADD` source is remote (`http://`, `https://`): it is downloaded, not
/// taken from the context.
pub fn is_url(src: &str) -> bool {
    let lower = src.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Resolves the sources of one `COPY`/`ADD` against a context directory. URLs are
/// refused: `COPY` never takes them, and `ADD`'s are fetched by the builder (filter them
/// out with [`is_url`] first).
pub fn resolve_sources(
    root: &Path,
    sources: &[String],
    at: SourceAt,
) -> Result<Vec<Selection>, ContextError> {
    resolve_sources_in(
        &DirView {
            root: root.to_path_buf(),
        },
        sources,
        at,
    )
}

/// [`resolve_sources`] against any [`ContextView`].
pub fn resolve_sources_in(
    view: &dyn ContextView,
    sources: &[String],
    at: SourceAt,
) -> Result<Vec<Selection>, ContextError> {
    let mut out = Vec::new();
    for src in sources {
        if is_url(src) {
            return Err(ContextError::Url {
                line: at.line,
                instruction: at.instruction.to_string(),
                src: src.clone(),
                hint: if at.instruction == "COPY" {
                    "COPY only copies from the build context; ADD downloads URLs"
                } else {
                    "remote sources are downloaded, not looked up in the build context"
                },
            });
        }
        let cleaned = clean(src.trim_start_matches('/'));
        if cleaned == ".." || cleaned.starts_with("../") {
            return Err(ContextError::Escape {
                line: at.line,
                instruction: at.instruction.to_string(),
                src: src.clone(),
                detail: String::new(),
            });
        }
        let rels: Vec<String> = if has_glob(&cleaned) {
            let mut matched: Vec<String> = Vec::new();
            for rel in view.all_paths()? {
                let under_match = matched
                    .iter()
                    .any(|m| rel.starts_with(m.as_str()) && rel[m.len()..].starts_with('/'));
                if !under_match && glob_match(&cleaned, &rel) {
                    matched.push(rel);
                }
            }
            if matched.is_empty() {
                return Err(ContextError::NoMatch {
                    line: at.line,
                    instruction: at.instruction.to_string(),
                    src: src.clone(),
                });
            }
            matched
        } else {
            vec![cleaned]
        };
        for rel in rels {
            let resolved = resolve_in_root(view, &rel, src, at)?;
            let is_dir = view.kind(&resolved)? == Some(EntryKind::Dir);
            out.push(Selection {
                src: src.clone(),
                rel,
                path: view.disk_path(&resolved),
                resolved,
                is_dir,
            });
        }
    }
    Ok(out)
}

/// `sha256:<hex>` of what the selections contain in a context directory (see the
/// module doc).
pub fn content_hash(selections: &[Selection]) -> Result<String, ContextError> {
    let mut h = Sha256::new();
    for sel in selections {
        let view = DirView {
            root: sel.path.clone(),
        };
        hash_tree(&mut h, sel, &view.tree(".")?);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// [`content_hash`] against any [`ContextView`] (the selections must come from it).
pub fn content_hash_in(
    view: &dyn ContextView,
    selections: &[Selection],
) -> Result<String, ContextError> {
    let mut h = Sha256::new();
    for sel in selections {
        hash_tree(&mut h, sel, &view.tree(&sel.resolved)?);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn hash_tree(h: &mut Sha256, sel: &Selection, tree: &[TreeEntry]) {
    h.update(b"S");
    h.update((sel.rel.len() as u64).to_le_bytes());
    h.update(sel.rel.as_bytes());
    for e in tree {
        h.update([match e.kind {
            EntryKind::Dir => b'd',
            EntryKind::File => b'f',
            EntryKind::Symlink => b'l',
        }]);
        h.update((e.rel.len() as u64).to_le_bytes());
        h.update(e.rel.as_bytes());
        // A selected directory's own mode is not copied (only its contents are).
        if !(e.rel.is_empty() && e.kind == EntryKind::Dir) {
            h.update(e.mode.to_le_bytes());
        }
        match e.kind {
            EntryKind::Dir => {}
            EntryKind::Symlink => {
                h.update((e.target.len() as u64).to_le_bytes());
                h.update(e.target.as_bytes());
            }
            EntryKind::File => {
                h.update(e.size.to_le_bytes());
                h.update(e.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "Dockerfile", "FROM scratch\n");
        write(r, "src/main.rs", "fn main() {}");
        write(r, "src/lib.rs", "");
        write(r, "target/debug/big", "xxxx");
        write(r, "target/keep.txt", "k");
        write(r, "notes.md", "n");
        write(r, "README.md", "r");
        write(r, "a/b/c.tmp", "t");
        d
    }

    const AT: SourceAt<'static> = SourceAt {
        line: 7,
        instruction: "COPY",
    };

    #[test]
    fn walker_honours_dockerignore_and_always_sends_its_own_files() {
        let d = tree();
        write(
            d.path(),
            ".dockerignore",
            "target\n!target/keep.txt\n*.md\n!README.md\n**/*.tmp\nDockerfile\n.dockerignore\n",
        );
        let w = ContextWalker::new(d.path(), Some("Dockerfile")).unwrap();
        let rels: Vec<String> = w.entries().unwrap().into_iter().map(|e| e.rel).collect();
        assert_eq!(
            rels,
            vec![
                ".dockerignore",
                "Dockerfile",
                "README.md",
                "a",
                "a/b",
                "src",
                "src/lib.rs",
                "src/main.rs",
                "target",
                "target/keep.txt",
            ]
        );
    }

    #[test]
    fn excluded_directories_are_pruned_without_exceptions() {
        let d = tree();
        write(d.path(), ".dockerignore", "target\n");
        std::fs::create_dir(d.path().join("target/sub")).unwrap();
        let w = ContextWalker::new(d.path(), None).unwrap();
        let rels: Vec<String> = w.entries().unwrap().into_iter().map(|e| e.rel).collect();
        assert!(!rels.iter().any(|r| r.starts_with("target")), "{rels:?}");
        assert!(rels.contains(&".dockerignore".to_string()));
    }

    #[test]
    fn bad_dockerignore_names_file_and_line() {
        let d = tree();
        write(d.path(), ".dockerignore", "ok\n[bad\n");
        let e = ContextWalker::new(d.path(), None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(".dockerignore:2: bad pattern"), "{msg}");
    }

    #[test]
    fn tar_stream_is_sorted_and_complete() {
        let d = tree();
        write(d.path(), ".dockerignore", "target\n");
        symlink("src/main.rs", d.path().join("link")).unwrap();
        let w = ContextWalker::new(d.path(), Some("Dockerfile")).unwrap();
        let mut bytes = Vec::new();
        let summary = w.write_tar(&mut bytes).unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            if path == "src/main.rs" {
                let mut s = String::new();
                entry.read_to_string(&mut s).unwrap();
                assert_eq!(s, "fn main() {}");
            }
            if path == "link" {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
                assert_eq!(
                    entry.link_name().unwrap().unwrap().to_str(),
                    Some("src/main.rs")
                );
            }
            seen.push(path);
        }
        assert_eq!(summary.entries, seen.len());
        let expected: Vec<String> = w.entries().unwrap().into_iter().map(|e| e.rel).collect();
        assert_eq!(seen, expected);
        assert!(!seen.iter().any(|p| p.starts_with("target")));
    }

    #[test]
    fn channel_writer_streams_chunks_to_an_async_receiver() {
        let d = tree();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let root = d.path().to_path_buf();
        let (received, summary) = rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
            let writer = tokio::task::spawn_blocking(move || {
                let w = ContextWalker::new(&root, None).unwrap();
                w.write_tar(ChannelWriter::new(tx, 1000)).unwrap()
            });
            let mut all = Vec::new();
            let mut chunks = 0;
            while let Some(chunk) = rx.recv().await {
                assert!(chunk.len() <= 1000);
                chunks += 1;
                all.extend(chunk);
            }
            assert!(chunks > 3, "streamed in {chunks} chunks");
            (all, writer.await.unwrap())
        });
        assert_eq!(received.len() as u64, summary.bytes);
        let mut direct = Vec::new();
        ContextWalker::new(d.path(), None)
            .unwrap()
            .write_tar(&mut direct)
            .unwrap();
        assert_eq!(received, direct);
    }

    #[test]
    fn channel_writer_reports_a_closed_receiver() {
        let d = tree();
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        drop(rx);
        let e = ContextWalker::new(d.path(), None)
            .unwrap()
            .write_tar(ChannelWriter::new(tx, 512))
            .unwrap_err();
        assert!(matches!(e, ContextError::Stream(_)), "{e:?}");
    }

    #[test]
    fn copy_sources_resolve_paths_and_globs() {
        let d = tree();
        let sel = resolve_sources(
            d.path(),
            &["src/*.rs".into(), "./notes.md".into(), "/a".into()],
            AT,
        )
        .unwrap();
        let rels: Vec<(&str, bool)> = sel.iter().map(|s| (s.rel.as_str(), s.is_dir)).collect();
        assert_eq!(
            rels,
            vec![
                ("src/lib.rs", false),
                ("src/main.rs", false),
                ("notes.md", false),
                ("a", true)
            ]
        );
        let sel = resolve_sources(d.path(), &["**/*.tmp".into(), ".".into()], AT).unwrap();
        assert_eq!(sel[0].rel, "a/b/c.tmp");
        assert_eq!(sel[1].rel, ".");
        assert_eq!(sel[1].path, d.path());
        let sel = resolve_sources(d.path(), &["src/../target".into()], AT).unwrap();
        assert_eq!(sel[0].rel, "target");
    }

    #[test]
    fn copy_source_errors_name_source_and_line() {
        let d = tree();
        let e = resolve_sources(d.path(), &["../etc/passwd".into()], AT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:7: COPY source \"../etc/passwd\" is outside the build context"
        );
        let e = resolve_sources(d.path(), &["src/../../x".into()], AT).unwrap_err();
        assert!(matches!(e, ContextError::Escape { .. }), "{e}");
        let e = resolve_sources(d.path(), &["missing.txt".into()], AT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:7: COPY source \"missing.txt\": not found in the build context"
        );
        let e = resolve_sources(d.path(), &["*.nothing".into()], AT).unwrap_err();
        assert!(matches!(e, ContextError::NoMatch { line: 7, .. }), "{e}");

        symlink("/etc/passwd", d.path().join("abs")).unwrap();
        let e = resolve_sources(d.path(), &["abs".into()], AT).unwrap_err();
        assert!(
            e.to_string()
                .contains("outside the build context (symlink abs points to /etc/passwd)"),
            "{e}"
        );
        symlink("../../..", d.path().join("src/up")).unwrap();
        let e = resolve_sources(d.path(), &["src/up/x".into()], AT).unwrap_err();
        assert!(matches!(e, ContextError::Escape { .. }), "{e}");
        symlink("../notes.md", d.path().join("src/inside")).unwrap();
        let sel = resolve_sources(d.path(), &["src/inside".into()], AT).unwrap();
        assert_eq!(sel[0].path, d.path().join("notes.md"));
    }

    #[test]
    fn stream_index_resolves_and_hashes_like_the_directory() {
        let d = tree();
        write(d.path(), ".dockerignore", "target\n");
        symlink("src/main.rs", d.path().join("link")).unwrap();
        symlink("/etc/passwd", d.path().join("abs")).unwrap();
        std::fs::set_permissions(
            d.path().join("notes.md"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut stream = Vec::new();
        ContextWalker::new(d.path(), None)
            .unwrap()
            .write_tar(&mut stream)
            .unwrap();
        let index = ContextIndex::from_tar(stream.as_slice()).unwrap();
        // What the agent would have after unpacking the same stream (into a root whose
        // own mode differs: it must not matter).
        let unpacked = tempfile::tempdir().unwrap();
        std::fs::set_permissions(unpacked.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        tar::Archive::new(stream.as_slice())
            .unpack(unpacked.path())
            .unwrap();
        let dir = DirView {
            root: unpacked.path().to_path_buf(),
        };
        let sets: &[&[&str]] = &[
            &["src"],
            &["src/*.rs", "notes.md"],
            &["link"],
            &["."],
            &["**/*.tmp", "a"],
            &["/README.md"],
        ];
        for set in sets {
            let srcs: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            let from_dir = resolve_sources_in(&dir, &srcs, AT).unwrap();
            let from_index = resolve_sources_in(&index, &srcs, AT).unwrap();
            let strip = |v: &[Selection]| {
                v.iter()
                    .map(|s| (s.rel.clone(), s.resolved.clone(), s.is_dir))
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&from_dir), strip(&from_index), "{set:?}");
            assert_eq!(
                content_hash_in(&dir, &from_dir).unwrap(),
                content_hash_in(&index, &from_index).unwrap(),
                "{set:?}"
            );
            assert_eq!(
                content_hash(&from_dir).unwrap(),
                content_hash_in(&index, &from_index).unwrap()
            );
        }
        assert_eq!(
            resolve_sources_in(&index, &["link".into()], AT).unwrap()[0].resolved,
            "src/main.rs"
        );
        for (src, want) in [
            ("abs", "outside the build context"),
            ("target/keep.txt", "not found"),
            ("../x", "outside"),
            ("*.zip", "no file"),
        ] {
            let e = resolve_sources_in(&index, &[src.to_string()], AT).unwrap_err();
            assert!(e.to_string().contains(want), "{src}: {e}");
        }
        // A changed file changes the index's hash.
        let sel = resolve_sources_in(&index, &["src".into()], AT).unwrap();
        let before = content_hash_in(&index, &sel).unwrap();
        write(d.path(), "src/lib.rs", "changed");
        let mut stream2 = Vec::new();
        ContextWalker::new(d.path(), None)
            .unwrap()
            .write_tar(&mut stream2)
            .unwrap();
        let index2 = ContextIndex::from_tar(stream2.as_slice()).unwrap();
        let sel2 = resolve_sources_in(&index2, &["src".into()], AT).unwrap();
        assert_ne!(before, content_hash_in(&index2, &sel2).unwrap());
    }

    #[test]
    fn urls_are_not_context_paths() {
        let d = tree();
        assert!(is_url("HTTPS://example.com/x.tar.gz") && !is_url("http.txt"));
        let e = resolve_sources(d.path(), &["https://example.com/a".into()], AT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:7: COPY source \"https://example.com/a\" is a URL: COPY only copies from the build context; ADD downloads URLs"
        );
    }

    #[test]
    fn content_hash_tracks_content_mode_and_names_not_mtime() {
        let d = tree();
        let hash = |d: &Path| {
            let sel = resolve_sources(d, &["src".into(), "notes.md".into()], AT).unwrap();
            content_hash(&sel).unwrap()
        };
        let h1 = hash(d.path());
        assert!(h1.starts_with("sha256:") && h1.len() == 71);
        assert_eq!(h1, hash(d.path()));
        let f = File::options()
            .write(true)
            .open(d.path().join("src/lib.rs"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        drop(f);
        assert_eq!(h1, hash(d.path()), "mtime is not content");
        write(d.path(), "src/lib.rs", "changed");
        let h2 = hash(d.path());
        assert_ne!(h1, h2);
        std::fs::set_permissions(
            d.path().join("src/lib.rs"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let h3 = hash(d.path());
        assert_ne!(h2, h3);
        std::fs::rename(d.path().join("src/lib.rs"), d.path().join("src/lib2.rs")).unwrap();
        assert_ne!(h3, hash(d.path()));
        // An identical copy elsewhere hashes the same.
        let other = tree();
        assert_eq!(h1, hash(other.path()));
    }
}

//! Layers: reproducible tars of filesystem changes.
//!
//! Vocabulary:
//! - **layer**: a set of [`LayerEntry`]s keyed by path; written as a tar with entries
//!   sorted by path (parents before children), GNU headers, no user/group names, no
//!   atime/ctime — equal inputs give equal bytes, hence an equal **diff id** (the sha256
//!   of the uncompressed tar, what an OCI image config lists);
//! - **mtime policy**: Docker keeps file mtimes, which makes a layer's digest depend on
//!   when files were checked out or written. We clamp them instead ([`MtimePolicy::Clamp`],
//!   default 0, BuildKit's `SOURCE_DATE_EPOCH` rewrite), so a rebuild of the same inputs —
//!   also a `RUN` — yields the same digest; [`MtimePolicy::Keep`] is Docker's behaviour;
//! - **whiteout**: an OCI layer deletes a path `d/f` of lower layers with an empty file
//!   `d/.wh.f`, and hides all of a directory's lower content with `d/.wh..wh..opq`;
//!   overlayfs marks the same things in its upper dir with a 0:0 character device and the
//!   `trusted.overlay.opaque=y` xattr. [`diff_upper`] translates one into the other;
//! - **xattrs**: extended attributes found in an upper dir travel as PAX
//!   `SCHILY.xattr.*` records (overlayfs' own are dropped);
//! - **copy layer**: what a `COPY`/`ADD` adds ([`copy_layer`]): sources mapped under the
//!   destination with Docker's directory rules, owners from `--chown` (default 0:0),
//!   modes from `--chmod`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::context::{Selection, SourceAt};
use super::dockerignore::clean;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing layer entry {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("Dockerfile:{line}: --chown={value}: {reason}")]
    Chown {
        line: usize,
        value: String,
        reason: String,
    },
    #[error("Dockerfile:{line}: --chmod={value}: expected an octal mode from 0 to 7777")]
    Chmod { line: usize, value: String },
    #[error("Dockerfile:{line}: {instruction} with more than one source: the destination {dest:?} must be a directory and end with a /")]
    DestNotDir {
        line: usize,
        instruction: String,
        dest: String,
    },
    #[error("Dockerfile:{line}: ADD {src:?}: {reason}")]
    Archive {
        line: usize,
        src: String,
        reason: String,
    },
    #[error("overlay upper dir {path}: {reason}")]
    Overlay { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How entry mtimes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtimePolicy {
    /// Keep each file's mtime (Docker).
    Keep,
    /// `min(mtime, epoch)`: reproducible layers.
    Clamp(u64),
}

impl Default for MtimePolicy {
    fn default() -> Self {
        MtimePolicy::Clamp(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryData {
    Dir,
    /// Content read from this file when the layer is written.
    File(PathBuf),
    /// Literal content (whiteouts are empty).
    Bytes(Vec<u8>),
    Symlink(String),
    /// A hard link to another entry of the same layer (path without leading `/`).
    Hardlink(String),
    Fifo,
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub data: EntryData,
    /// Permission bits, with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// Extended attributes (e.g. `security.capability`), sorted by name; written as PAX
    /// `SCHILY.xattr.*` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// A layer being assembled; paths are relative (`usr/bin/x`), entries sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub entries: BTreeMap<String, LayerEntry>,
}

/// The identity of a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigest {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    pub size: u64,
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

impl Layer {
    pub fn new() -> Self {
        Layer::default()
    }

    /// Adds (or replaces) the entry at `path` (cleaned, leading `/` dropped).
    pub fn insert(&mut self, path: &str, entry: LayerEntry) {
        let p = clean(path.trim_start_matches('/'));
        self.entries.insert(p, entry);
    }

    /// Writes the layer as a tar to `out` and returns its diff id.
    pub fn write<W: Write>(&self, out: W, policy: MtimePolicy) -> Result<LayerDigest, LayerError> {
        let mut hashing = HashingWriter {
            inner: out,
            hash: Sha256::new(),
            size: 0,
        };
        {
            let mut builder = tar::Builder::new(&mut hashing);
            for (path, entry) in &self.entries {
                let werr = |source| LayerError::Write {
                    path: path.clone(),
                    source,
                };
                let mut h = tar::Header::new_gnu();
                h.set_mode(entry.mode & 0o7777);
                h.set_uid(entry.uid.into());
                h.set_gid(entry.gid.into());
                h.set_mtime(match policy {
                    MtimePolicy::Keep => entry.mtime,
                    MtimePolicy::Clamp(epoch) => entry.mtime.min(epoch),
                });
                h.set_size(0);
                if !entry.xattrs.is_empty() {
                    let records: Vec<(String, &[u8])> = entry
                        .xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                        .collect();
                    builder
                        .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                        .map_err(werr)?;
                }
                match &entry.data {
                    EntryData::Dir => {
                        h.set_entry_type(tar::EntryType::Directory);
                        builder
                            .append_data(&mut h, format!("{path}/"), io::empty())
                            .map_err(werr)?;
                    }
                    EntryData::File(src) => {
                        let f = File::open(src).map_err(io_err(src))?;
                        let len = f.metadata().map_err(io_err(src))?.len();
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_size(len);
                        // A file that changes size while being written would corrupt
                        // the tar: read exactly `len` bytes, fail if fewer.
                        let mut reader = io::Read::take(f, len);
                        let mut counted = ExactReader {
                            inner: &mut reader,
                            left: len,
                            path: src,
                        };
                        builder
                            .append_data(&mut h, path, &mut counted)
                            .map_err(werr)?;
                    }
                    EntryData::Bytes(bytes) => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_size(bytes.len() as u64);
                        builder
                            .append_data(&mut h, path, bytes.as_slice())
                            .map_err(werr)?;
                    }
                    EntryData::Symlink(target) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        builder.append_link(&mut h, path, target).map_err(werr)?;
                    }
                    EntryData::Hardlink(target) => {
                        h.set_entry_type(tar::EntryType::Link);
                        builder.append_link(&mut h, path, target).map_err(werr)?;
                    }
                    EntryData::Fifo => {
                        h.set_entry_type(tar::EntryType::Fifo);
                        builder
                            .append_data(&mut h, path, io::empty())
                            .map_err(werr)?;
                    }
                    EntryData::CharDevice { major, minor }
                    | EntryData::BlockDevice { major, minor } => {
                        h.set_entry_type(if matches!(entry.data, EntryData::CharDevice { .. }) {
                            tar::EntryType::Char
                        } else {
                            tar::EntryType::Block
                        });
                        h.set_device_major(*major).map_err(werr)?;
                        h.set_device_minor(*minor).map_err(werr)?;
                        builder
                            .append_data(&mut h, path, io::empty())
                            .map_err(werr)?;
                    }
                }
            }
            builder.finish().map_err(|source| LayerError::Write {
                path: String::new(),
                source,
            })?;
        }
        Ok(LayerDigest {
            diff_id: format!("sha256:{}", hex::encode(hashing.hash.finalize())),
            size: hashing.size,
        })
    }
}

struct ExactReader<'a, R> {
    inner: R,
    left: u64,
    path: &'a Path,
}

impl<R: io::Read> io::Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being written", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn entry_from_meta(path: &Path, meta: &std::fs::Metadata) -> Result<Option<EntryData>, LayerError> {
    let ft = meta.file_type();
    let dev = |rdev: u64| (libc::major(rdev), libc::minor(rdev));
    Ok(Some(if ft.is_dir() {
        EntryData::Dir
    } else if ft.is_file() {
        EntryData::File(path.to_path_buf())
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(io_err(path))?;
        EntryData::Symlink(target.to_string_lossy().into_owned())
    } else if ft.is_fifo() {
        EntryData::Fifo
    } else if ft.is_char_device() {
        let (major, minor) = dev(meta.rdev());
        EntryData::CharDevice { major, minor }
    } else if ft.is_block_device() {
        let (major, minor) = dev(meta.rdev());
        EntryData::BlockDevice { major, minor }
    } else {
        return Ok(None);
    }))
}

fn xattr_value(path: &Path, names: &[&str]) -> Result<Option<Vec<u8>>, LayerError> {
    for name in names {
        if let Some(v) = xattr::get(path, name).map_err(io_err(path))? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// A file's extended attributes, minus overlayfs' own bookkeeping.
fn kept_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, LayerError> {
    let mut out = Vec::new();
    for name in xattr::list(path).map_err(io_err(path))? {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        if let Some(value) = xattr::get(path, &name).map_err(io_err(path))? {
            out.push((name, value));
        }
    }
    out.sort();
    Ok(out)
}

/// The OCI layer for the changes recorded in an overlayfs upper dir (the mount must be
/// gone or quiescent). Mount overlays for builds with `redirect_dir=off,metacopy=off`:
/// renamed-directory redirects and metadata-only copy-ups are refused, since their data
/// lives in the lower layers.
pub fn diff_upper(upper: &Path) -> Result<Layer, LayerError> {
    let mut layer = Layer::new();
    // (dev, inode) → first path seen, for hard links inside the layer.
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    for entry in walkdir::WalkDir::new(upper)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| LayerError::Overlay {
            path: upper.to_path_buf(),
            reason: e.to_string(),
        })?;
        let path = entry.path();
        let rel = path
            .strip_prefix(upper)
            .expect("walkdir stays below its root")
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(path).map_err(io_err(path))?;
        let ft = meta.file_type();
        let base = LayerEntry {
            data: EntryData::Dir,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime().max(0) as u64,
            xattrs: Vec::new(),
        };
        if ft.is_char_device() && meta.rdev() == 0 {
            let (dir, name) = match rel.rsplit_once('/') {
                Some((d, n)) => (format!("{d}/"), n),
                None => (String::new(), rel.as_str()),
            };
            layer.insert(
                &format!("{dir}{WHITEOUT_PREFIX}{name}"),
                LayerEntry {
                    data: EntryData::Bytes(Vec::new()),
                    mode: 0,
                    ..base
                },
            );
            continue;
        }
        if !ft.is_symlink() {
            if xattr_value(path, &["trusted.overlay.redirect", "user.overlay.redirect"])?.is_some()
            {
                return Err(LayerError::Overlay {
                    path: path.to_path_buf(),
                    reason: "renamed directory (overlay redirect_dir): mount the build overlay with redirect_dir=off".into(),
                });
            }
            if xattr_value(path, &["trusted.overlay.metacopy", "user.overlay.metacopy"])?.is_some()
            {
                return Err(LayerError::Overlay {
                    path: path.to_path_buf(),
                    reason: "metadata-only copy-up (overlay metacopy): mount the build overlay with metacopy=off".into(),
                });
            }
        }
        if ft.is_dir() {
            let opaque = xattr_value(path, &["trusted.overlay.opaque", "user.overlay.opaque"])?;
            if opaque.as_deref() == Some(b"y") {
                layer.insert(
                    &format!("{rel}/{OPAQUE_WHITEOUT}"),
                    LayerEntry {
                        data: EntryData::Bytes(Vec::new()),
                        mode: 0,
                        ..base.clone()
                    },
                );
            }
        }
        let Some(mut data) = entry_from_meta(path, &meta)? else {
            continue; // sockets: not representable in a tar
        };
        let xattrs = if ft.is_symlink() {
            Vec::new()
        } else {
            kept_xattrs(path)?
        };
        if ft.is_file() && meta.nlink() > 1 {
            match inodes.get(&(meta.dev(), meta.ino())) {
                Some(first) => data = EntryData::Hardlink(first.clone()),
                None => {
                    inodes.insert((meta.dev(), meta.ino()), rel.clone());
                }
            }
        }
        layer.insert(
            &rel,
            LayerEntry {
                data,
                xattrs,
                ..base
            },
        );
    }
    fix_hardlink_order(&mut layer);
    Ok(layer)
}

/// The walk visits siblings by name, but the tar is sorted by full path: make the
/// first path in tar order the one that carries the data.
fn fix_hardlink_order(layer: &mut Layer) {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, e) in &layer.entries {
        if let EntryData::Hardlink(target) = &e.data {
            groups.entry(target.clone()).or_default().push(path.clone());
        }
    }
    for (primary, links) in groups {
        let first = links
            .iter()
            .chain(std::iter::once(&primary))
            .min()
            .expect("non-empty")
            .clone();
        if first == primary {
            continue;
        }
        let data = layer.entries[&primary].data.clone();
        for p in links.iter().chain(std::iter::once(&primary)) {
            let e = layer.entries.get_mut(p).expect("exists");
            e.data = if *p == first {
                data.clone()
            } else {
                EntryData::Hardlink(first.clone())
            };
        }
    }
}

/// An owner from `--chown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn lookup_id(db: &str, name: &str) -> Option<(u32, Option<u32>)> {
    db.lines().find_map(|l| {
        let mut f = l.split(':');
        if f.next()? != name {
            return None;
        }
        let _pw = f.next();
        let id = f.next()?.parse().ok()?;
        let gid = f.next().and_then(|g| g.parse().ok());
        Some((id, gid))
    })
}

/// `--chown=user[:group]`: numbers, or names looked up in the image's `/etc/passwd` and
/// `/etc/group` contents (empty if the image has none). A user alone means its primary
/// group (numeric: the same number, as Docker does).
pub fn parse_chown(
    value: &str,
    passwd: &str,
    group: &str,
    line: usize,
) -> Result<Owner, LayerError> {
    let err = |reason: String| LayerError::Chown {
        line,
        value: value.to_string(),
        reason,
    };
    let (user, grp) = match value.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (value, None),
    };
    if user.is_empty() || grp == Some("") {
        return Err(err("expected user[:group]".into()));
    }
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => {
            let (uid, gid) = lookup_id(passwd, user)
                .ok_or_else(|| err(format!("no user {user:?} in the image's /etc/passwd")))?;
            (uid, gid.unwrap_or(uid))
        }
    };
    let gid = match grp {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup_id(group, g)
                .map(|(id, _)| id)
                .ok_or_else(|| err(format!("no group {g:?} in the image's /etc/group")))?,
        },
    };
    Ok(Owner { uid, gid })
}

/// `--chmod=0755`.
pub fn parse_chmod(value: &str, line: usize) -> Result<u32, LayerError> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !value.is_empty())
        .ok_or_else(|| LayerError::Chmod {
            line,
            value: value.to_string(),
        })
}

/// Metadata of a directory that exists in the image below the new layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What a `COPY`/`ADD` writes, given its resolved sources.
pub struct CopySpec<'a> {
    /// The destination after substitution; relative to `workdir` unless absolute.
    pub dest: &'a str,
    pub workdir: &'a str,
    /// `--chown`; without it copied files belong to 0:0 and extracted archive entries
    /// keep the archive's owners.
    pub owner: Option<Owner>,
    pub chmod: Option<u32>,
    /// Directories that already exist in the image (path without leading `/`): their
    /// entries in the layer keep that metadata. The builder must also end `dest` with
    /// `/` when it names an existing directory.
    pub existing_dir: &'a dyn Fn(&str) -> Option<DirMeta>,
    pub at: SourceAt<'a>,
}

/// Docker's rules: a directory source copies its contents into `dest`; a file goes to
/// `dest` itself, or into it when `dest` ends with `/`; several sources need a `dest/`.
pub fn copy_layer(selections: &[Selection], spec: &CopySpec) -> Result<Layer, LayerError> {
    build_copy(selections, spec, false)
}

/// `ADD` of local sources: like [`copy_layer`], except that a file that is a tar
/// archive (plain, gzip or zstd) is extracted into `dest`. Extracted content is held in
/// memory until the layer is written.
pub fn add_layer(selections: &[Selection], spec: &CopySpec) -> Result<Layer, LayerError> {
    build_copy(selections, spec, true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archive {
    Tar,
    Gzip,
    Zstd,
}

const TAR_MAGIC_AT: usize = 257;

fn is_tar_block(block: &[u8]) -> bool {
    block.len() > TAR_MAGIC_AT + 5 && &block[TAR_MAGIC_AT..TAR_MAGIC_AT + 5] == b"ustar"
}

/// Reads up to `n` bytes (fewer at the end).
fn read_prefix(mut r: impl io::Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    (&mut r).take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Whether `path` is an archive `ADD` extracts. Compressed data that is not a tar is
/// copied as a file (Docker's rule); bzip2 and xz are refused rather than copied, since
/// Docker would extract them.
fn archive_kind(path: &Path, line: usize, src: &str) -> Result<Option<Archive>, LayerError> {
    let head = read_prefix(File::open(path).map_err(io_err(path))?, 512).map_err(io_err(path))?;
    let inner_is_tar = |kind: Archive| -> Result<bool, LayerError> {
        let f = File::open(path).map_err(io_err(path))?;
        let block = match kind {
            Archive::Gzip => read_prefix(flate2::read::GzDecoder::new(f), 512),
            Archive::Zstd => read_prefix(
                zstd::stream::read::Decoder::new(f).map_err(io_err(path))?,
                512,
            ),
            Archive::Tar => unreachable!("plain tars are checked directly"),
        };
        // A corrupt stream is "not an archive": copied as is, like Docker.
        Ok(block.map(|b| is_tar_block(&b)).unwrap_or(false))
    };
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(inner_is_tar(Archive::Gzip)?.then_some(Archive::Gzip));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(inner_is_tar(Archive::Zstd)?.then_some(Archive::Zstd));
    }
    if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(LayerError::Archive {
            line,
            src: src.to_string(),
            reason: "bzip2 and xz archives are not supported (use gzip or zstd)".into(),
        });
    }
    Ok(is_tar_block(&head).then_some(Archive::Tar))
}

/// Extracts archive `path` into `dest` (a layer path) of `layer`.
fn extract_into(
    layer: &mut Layer,
    path: &Path,
    kind: Archive,
    dest: &str,
    spec: &CopySpec,
    src: &str,
) -> Result<(), LayerError> {
    let line = spec.at.line;
    let bad = |reason: String| LayerError::Archive {
        line,
        src: src.to_string(),
        reason,
    };
    let f = File::open(path).map_err(io_err(path))?;
    let reader: Box<dyn io::Read> = match kind {
        Archive::Tar => Box::new(f),
        Archive::Gzip => Box::new(flate2::read::GzDecoder::new(f)),
        Archive::Zstd => Box::new(zstd::stream::read::Decoder::new(f).map_err(io_err(path))?),
    };
    let join = |rel: &str| -> Result<String, LayerError> {
        let cleaned = clean(rel.trim_start_matches('/'));
        if cleaned == ".." || cleaned.starts_with("../") {
            return Err(bad(format!(
                "archive entry {rel:?} points outside the destination"
            )));
        }
        Ok(match (dest.is_empty(), cleaned.as_str()) {
            (_, ".") => dest.to_string(),
            (true, c) => c.to_string(),
            (false, c) => format!("{dest}/{c}"),
        })
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let target = join(&raw)?;
        if target.is_empty() {
            continue;
        }
        let h = entry.header();
        let mode = h.mode().map_err(|e| bad(format!("{raw}: {e}")))? & 0o7777;
        let (uid, gid) = match spec.owner {
            Some(o) => (o.uid, o.gid),
            None => (
                h.uid().map_err(|e| bad(format!("{raw}: {e}")))? as u32,
                h.gid().map_err(|e| bad(format!("{raw}: {e}")))? as u32,
            ),
        };
        let mtime = h.mtime().unwrap_or(0);
        let link = || -> Result<String, LayerError> {
            let name = entry
                .link_name_bytes()
                .ok_or_else(|| bad(format!("{raw}: link without a target")))?;
            Ok(String::from_utf8_lossy(&name).into_owned())
        };
        let data = match h.entry_type() {
            tar::EntryType::Directory => EntryData::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut entry, &mut bytes)
                    .map_err(|e| bad(format!("{raw}: {e}")))?;
                EntryData::Bytes(bytes)
            }
            tar::EntryType::Symlink => EntryData::Symlink(link()?),
            tar::EntryType::Link => EntryData::Hardlink(join(&link()?)?),
            tar::EntryType::Fifo => EntryData::Fifo,
            t @ (tar::EntryType::Char | tar::EntryType::Block) => {
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if t == tar::EntryType::Char {
                    EntryData::CharDevice { major, minor }
                } else {
                    EntryData::BlockDevice { major, minor }
                }
            }
            _ => continue,
        };
        if let Some((parent, _)) = target.rsplit_once('/') {
            ensure_parents(layer, parent, spec);
        }
        layer.insert(
            &target,
            LayerEntry {
                data,
                mode,
                uid,
                gid,
                mtime,
                xattrs: Vec::new(),
            },
        );
    }
    Ok(())
}

/// Adds directory entries for `path` and its parents that the layer lacks.
fn ensure_parents(layer: &mut Layer, path: &str, spec: &CopySpec) {
    let owner = spec.owner.unwrap_or_default();
    let mut acc = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        if layer.entries.contains_key(&acc) {
            continue;
        }
        let meta = (spec.existing_dir)(&acc).unwrap_or(DirMeta {
            mode: 0o755,
            uid: owner.uid,
            gid: owner.gid,
        });
        layer.insert(
            &acc,
            LayerEntry {
                data: EntryData::Dir,
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                mtime: 0,
                xattrs: Vec::new(),
            },
        );
    }
}

fn build_copy(
    selections: &[Selection],
    spec: &CopySpec,
    extract: bool,
) -> Result<Layer, LayerError> {
    let dest_is_dir = spec.dest.ends_with('/') || spec.dest.ends_with("/.") || spec.dest == ".";
    if selections.len() > 1 && !dest_is_dir {
        return Err(LayerError::DestNotDir {
            line: spec.at.line,
            instruction: spec.at.instruction.to_string(),
            dest: spec.dest.to_string(),
        });
    }
    let absolute = if spec.dest.starts_with('/') {
        spec.dest.to_string()
    } else {
        format!("{}/{}", spec.workdir, spec.dest)
    };
    let dest = clean(&absolute).trim_start_matches('/').to_string();
    let mut layer = Layer::new();
    let parents = |layer: &mut Layer, path: &str| ensure_parents(layer, path, spec);
    for sel in selections {
        if sel.is_dir {
            parents(&mut layer, &dest);
            for entry in walkdir::WalkDir::new(&sel.path)
                .min_depth(1)
                .follow_links(false)
                .sort_by_file_name()
            {
                let entry = entry.map_err(|e| LayerError::Io {
                    path: sel.path.clone(),
                    source: e.into(),
                })?;
                let rel = entry
                    .path()
                    .strip_prefix(&sel.path)
                    .expect("below its root")
                    .to_string_lossy()
                    .into_owned();
                let meta = std::fs::symlink_metadata(entry.path()).map_err(io_err(entry.path()))?;
                let Some(data) = entry_from_meta(entry.path(), &meta)? else {
                    continue;
                };
                let target = if dest.is_empty() {
                    rel
                } else {
                    format!("{dest}/{rel}")
                };
                layer.insert(&target, copied(data, &meta, spec));
            }
        } else if let Some(kind) = if extract {
            archive_kind(&sel.path, spec.at.line, &sel.src)?
        } else {
            None
        } {
            parents(&mut layer, &dest);
            extract_into(&mut layer, &sel.path, kind, &dest, spec, &sel.src)?;
        } else {
            let name = sel.rel.rsplit('/').next().unwrap_or(&sel.rel);
            let target = if dest_is_dir {
                parents(&mut layer, &dest);
                if dest.is_empty() {
                    name.to_string()
                } else {
                    format!("{dest}/{name}")
                }
            } else {
                if let Some((parent, _)) = dest.rsplit_once('/') {
                    parents(&mut layer, parent);
                }
                dest.clone()
            };
            let meta = std::fs::metadata(&sel.path).map_err(io_err(&sel.path))?;
            let data = EntryData::File(sel.path.clone());
            layer.insert(&target, copied(data, &meta, spec));
        }
    }
    Ok(layer)
}

fn copied(data: EntryData, meta: &std::fs::Metadata, spec: &CopySpec) -> LayerEntry {
    let mode = match (&data, spec.chmod) {
        (EntryData::Symlink(_), _) => 0o777,
        (_, Some(m)) => m,
        (_, None) => meta.mode() & 0o7777,
    };
    let owner = spec.owner.unwrap_or_default();
    LayerEntry {
        data,
        mode,
        uid: owner.uid,
        gid: owner.gid,
        mtime: meta.mtime().max(0) as u64,
        xattrs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::context::resolve_sources;
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const AT: SourceAt<'static> = SourceAt {
        line: 4,
        instruction: "COPY",
    };

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn no_dirs(_: &str) -> Option<DirMeta> {
        None
    }

    fn spec<'a>(dest: &'a str, owner: Owner, chmod: Option<u32>) -> CopySpec<'a> {
        CopySpec {
            dest,
            workdir: "/app",
            owner: Some(owner),
            chmod,
            existing_dir: &no_dirs,
            at: AT,
        }
    }

    /// (path, type, mode, uid, gid, mtime, content or link target) of each tar entry.
    fn read_tar(bytes: &[u8]) -> Vec<(String, char, u32, u64, u64, u64, String)> {
        let mut out = Vec::new();
        let mut a = tar::Archive::new(bytes);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let kind = match h.entry_type() {
                tar::EntryType::Directory => 'd',
                tar::EntryType::Regular => 'f',
                tar::EntryType::Symlink => 'l',
                tar::EntryType::Link => 'h',
                tar::EntryType::Char => 'c',
                tar::EntryType::Fifo => 'p',
                _ => '?',
            };
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut content = String::new();
            if kind == 'l' || kind == 'h' {
                content = e
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
            } else {
                e.read_to_string(&mut content).unwrap();
            }
            out.push((
                path,
                kind,
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mtime().unwrap(),
                content,
            ));
        }
        out
    }

    fn context() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "app/main.sh", "#!/bin/sh\necho hi\n");
        write(d.path(), "app/lib/util.sh", "util");
        write(d.path(), "conf.txt", "conf");
        std::fs::set_permissions(
            d.path().join("app/main.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("main.sh", d.path().join("app/run")).unwrap();
        d
    }

    fn build(ctx: &Path, sources: &[&str], dest: &str) -> (LayerDigest, Vec<u8>) {
        let srcs: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let sel = resolve_sources(ctx, &srcs, AT).unwrap();
        let layer = copy_layer(&sel, &spec(dest, Owner::default(), None)).unwrap();
        let mut bytes = Vec::new();
        let d = layer.write(&mut bytes, MtimePolicy::default()).unwrap();
        (d, bytes)
    }

    #[test]
    fn same_input_same_digest_changed_file_different_digest() {
        let ctx = context();
        let (d1, bytes1) = build(ctx.path(), &["app", "conf.txt"], "/srv/");
        assert_eq!(d1.size, bytes1.len() as u64);
        assert_eq!(
            d1.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes1)))
        );
        // Same content in another directory, written at another time: same digest.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let ctx2 = context();
        let (d2, bytes2) = build(ctx2.path(), &["app", "conf.txt"], "/srv/");
        assert_eq!(d1, d2);
        assert_eq!(bytes1, bytes2);
        write(ctx2.path(), "app/lib/util.sh", "util2");
        let (d3, _) = build(ctx2.path(), &["app", "conf.txt"], "/srv/");
        assert_ne!(d1.diff_id, d3.diff_id);
    }

    #[test]
    fn tar_is_sorted_with_parents_and_normalised_headers() {
        let ctx = context();
        let (_, bytes) = build(ctx.path(), &["app", "conf.txt"], "/srv/");
        let entries = read_tar(&bytes);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "srv/",
                "srv/conf.txt",
                "srv/lib/",
                "srv/lib/util.sh",
                "srv/main.sh",
                "srv/run"
            ]
        );
        let main = entries.iter().find(|e| e.0 == "srv/main.sh").unwrap();
        assert_eq!(
            (main.1, main.2, main.3, main.4, main.5),
            ('f', 0o755, 0, 0, 0)
        );
        assert_eq!(main.6, "#!/bin/sh\necho hi\n");
        let run = entries.iter().find(|e| e.0 == "srv/run").unwrap();
        assert_eq!((run.1, run.6.as_str()), ('l', "main.sh"));
        let mut a = tar::Archive::new(bytes.as_slice());
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().username().unwrap(), Some(""));
        }
    }

    #[test]
    fn mtime_policy_keep_and_clamp() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "f", "x");
        let f = File::options()
            .write(true)
            .open(d.path().join("f"))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        drop(f);
        let sel = resolve_sources(d.path(), &["f".into()], AT).unwrap();
        let layer = copy_layer(&sel, &spec("/f", Owner::default(), None)).unwrap();
        let mtimes = |p: MtimePolicy| {
            let mut b = Vec::new();
            layer.write(&mut b, p).unwrap();
            read_tar(&b).into_iter().map(|e| e.5).collect::<Vec<_>>()
        };
        assert_eq!(mtimes(MtimePolicy::Keep), vec![1_000_000]);
        assert_eq!(mtimes(MtimePolicy::Clamp(500)), vec![500]);
        assert_eq!(mtimes(MtimePolicy::Clamp(2_000_000)), vec![1_000_000]);
        assert_eq!(mtimes(MtimePolicy::default()), vec![0]);
    }

    #[test]
    fn copy_rules_chown_chmod() {
        let ctx = context();
        // File to a file path, relative to WORKDIR /app.
        let sel = resolve_sources(ctx.path(), &["conf.txt".into()], AT).unwrap();
        let layer = copy_layer(
            &sel,
            &spec(
                "etc/app.conf",
                Owner {
                    uid: 1000,
                    gid: 100,
                },
                Some(0o600),
            ),
        )
        .unwrap();
        let keys: Vec<&String> = layer.entries.keys().collect();
        assert_eq!(keys, vec!["app", "app/etc", "app/etc/app.conf"]);
        let f = &layer.entries["app/etc/app.conf"];
        assert_eq!((f.mode, f.uid, f.gid), (0o600, 1000, 100));
        // Existing directories keep their metadata.
        let existing = |p: &str| {
            (p == "app").then_some(DirMeta {
                mode: 0o700,
                uid: 5,
                gid: 6,
            })
        };
        let layer = copy_layer(
            &sel,
            &CopySpec {
                existing_dir: &existing,
                ..spec("x/", Owner { uid: 1, gid: 2 }, None)
            },
        )
        .unwrap();
        assert_eq!(layer.entries["app"].mode, 0o700);
        assert_eq!((layer.entries["app"].uid, layer.entries["app"].gid), (5, 6));
        assert_eq!(layer.entries["app/x"].mode, 0o755);
        assert_eq!(
            (layer.entries["app/x"].uid, layer.entries["app/x"].gid),
            (1, 2)
        );
        assert!(layer.entries.contains_key("app/x/conf.txt"));
        // Several sources need a directory destination.
        let sel =
            resolve_sources(ctx.path(), &["conf.txt".into(), "app/main.sh".into()], AT).unwrap();
        let e = copy_layer(&sel, &spec("/dst", Owner::default(), None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:4: COPY with more than one source: the destination \"/dst\" must be a directory and end with a /"
        );
        // A directory source copies its contents; symlinks stay links with mode 0777.
        let sel = resolve_sources(ctx.path(), &["app".into()], AT).unwrap();
        let layer = copy_layer(&sel, &spec("/", Owner::default(), Some(0o640))).unwrap();
        let keys: Vec<&String> = layer.entries.keys().collect();
        assert_eq!(keys, vec!["lib", "lib/util.sh", "main.sh", "run"]);
        assert_eq!(layer.entries["main.sh"].mode, 0o640);
        assert_eq!(layer.entries["lib"].mode, 0o640);
        assert_eq!(layer.entries["run"].mode, 0o777);
    }

    #[test]
    fn chown_and_chmod_parsing() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:app\n";
        let p = |v: &str| parse_chown(v, passwd, group, 3);
        assert_eq!(p("10").unwrap(), Owner { uid: 10, gid: 10 });
        assert_eq!(p("10:20").unwrap(), Owner { uid: 10, gid: 20 });
        assert_eq!(
            p("app").unwrap(),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(p("app:staff").unwrap(), Owner { uid: 1000, gid: 50 });
        assert_eq!(p("0:staff").unwrap(), Owner { uid: 0, gid: 50 });
        assert_eq!(
            p("nobody").unwrap_err().to_string(),
            "Dockerfile:3: --chown=nobody: no user \"nobody\" in the image's /etc/passwd"
        );
        assert!(p("app:nogroup")
            .unwrap_err()
            .to_string()
            .contains("no group \"nogroup\""));
        assert!(p(":1").is_err());
        assert!(p("1:").is_err());
        assert_eq!(parse_chmod("0755", 1).unwrap(), 0o755);
        assert_eq!(parse_chmod("4755", 1).unwrap(), 0o4755);
        assert_eq!(
            parse_chmod("u+x", 9).unwrap_err().to_string(),
            "Dockerfile:9: --chmod=u+x: expected an octal mode from 0 to 7777"
        );
        assert!(parse_chmod("17777", 1).is_err());
        assert!(parse_chmod("", 1).is_err());
    }

    #[test]
    fn long_paths_and_hardlinks_in_a_plain_tree() {
        let d = tempfile::tempdir().unwrap();
        let long = "d".repeat(60) + "/" + &"e".repeat(60) + "/file";
        write(d.path(), &long, "deep");
        // The walk meets x/f before x.txt, but the tar has x.txt first ('.' < '/'):
        // the data must go with x.txt and x/f must link to it.
        write(d.path(), "x/f", "same");
        std::fs::hard_link(d.path().join("x/f"), d.path().join("x.txt")).unwrap();
        std::fs::hard_link(d.path().join("x/f"), d.path().join("z")).unwrap();
        let layer = diff_upper(d.path()).unwrap();
        assert!(matches!(layer.entries["x.txt"].data, EntryData::File(_)));
        assert_eq!(
            layer.entries["x/f"].data,
            EntryData::Hardlink("x.txt".into())
        );
        assert_eq!(layer.entries["z"].data, EntryData::Hardlink("x.txt".into()));
        let mut b = Vec::new();
        layer.write(&mut b, MtimePolicy::default()).unwrap();
        let entries = read_tar(&b);
        assert!(entries.iter().any(|e| e.0 == long && e.6 == "deep"));
        let kinds: Vec<(&str, char, &str)> = entries
            .iter()
            .filter(|e| !e.0.starts_with('d'))
            .map(|e| (e.0.as_str(), e.1, e.6.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("x/", 'd', ""),
                ("x.txt", 'f', "same"),
                ("x/f", 'h', "x.txt"),
                ("z", 'h', "x.txt")
            ]
        );
        // Extracting it works: links come after their target.
        let out = tempfile::tempdir().unwrap();
        tar::Archive::new(b.as_slice()).unpack(out.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("z")).unwrap(),
            "same"
        );
    }

    /// A tar with a dir, a file (uid 7), a symlink, a hard link, and no entry for `deep/`.
    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o750
            } else {
                0o640
            });
            h.set_uid(7);
            h.set_gid(8);
            h.set_mtime(123);
            h.set_size(data.len() as u64);
            match link {
                Some(l) => b.append_link(&mut h, path, l).unwrap(),
                None => b.append_data(&mut h, path, data).unwrap(),
            }
        };
        add("pkg/", tar::EntryType::Directory, b"", None);
        add("pkg/bin", tar::EntryType::Regular, b"binary", None);
        add("pkg/link", tar::EntryType::Symlink, b"", Some("bin"));
        add("pkg/hard", tar::EntryType::Link, b"", Some("pkg/bin"));
        add("deep/er/file", tar::EntryType::Regular, b"deep", None);
        b.into_inner().unwrap()
    }

    fn add(ctx: &Path, src: &str, dest: &str, owner: Option<Owner>) -> Result<Layer, LayerError> {
        let sel = resolve_sources(
            ctx,
            &[src.to_string()],
            SourceAt {
                line: 6,
                instruction: "ADD",
            },
        )
        .unwrap();
        add_layer(
            &sel,
            &CopySpec {
                owner,
                at: SourceAt {
                    line: 6,
                    instruction: "ADD",
                },
                ..spec(dest, Owner::default(), None)
            },
        )
    }

    #[test]
    fn add_extracts_local_tar_gzip_and_zstd_archives() {
        let d = tempfile::tempdir().unwrap();
        let tar = sample_tar();
        std::fs::write(d.path().join("p.tar"), &tar).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        std::fs::write(d.path().join("p.tgz"), gz.finish().unwrap()).unwrap();
        std::fs::write(
            d.path().join("p.tar.zst"),
            zstd::encode_all(tar.as_slice(), 3).unwrap(),
        )
        .unwrap();
        let mut expected = None;
        for src in ["p.tar", "p.tgz", "p.tar.zst"] {
            let layer = add(d.path(), src, "/opt/", None).unwrap();
            let keys: Vec<&String> = layer.entries.keys().collect();
            assert_eq!(
                keys,
                vec![
                    "opt",
                    "opt/deep",
                    "opt/deep/er",
                    "opt/deep/er/file",
                    "opt/pkg",
                    "opt/pkg/bin",
                    "opt/pkg/hard",
                    "opt/pkg/link"
                ],
                "{src}"
            );
            let bin = &layer.entries["opt/pkg/bin"];
            assert_eq!(
                (&bin.data, bin.mode, bin.uid, bin.gid, bin.mtime),
                (&EntryData::Bytes(b"binary".to_vec()), 0o640, 7, 8, 123)
            );
            assert_eq!(layer.entries["opt/pkg"].mode, 0o750);
            assert_eq!(
                layer.entries["opt/pkg/link"].data,
                EntryData::Symlink("bin".into())
            );
            assert_eq!(
                layer.entries["opt/pkg/hard"].data,
                EntryData::Hardlink("opt/pkg/bin".into())
            );
            // Same archive, however compressed: the same layer.
            let digest = layer.write(Vec::new(), MtimePolicy::Keep).unwrap();
            assert_eq!(expected.get_or_insert(digest.clone()), &digest);
        }
        // --chown overrides the archive's owners.
        let layer = add(d.path(), "p.tgz", "/", Some(Owner { uid: 1, gid: 2 })).unwrap();
        assert_eq!(
            (layer.entries["pkg/bin"].uid, layer.entries["pkg/bin"].gid),
            (1, 2)
        );
        // COPY never extracts.
        let sel = resolve_sources(d.path(), &["p.tgz".into()], AT).unwrap();
        let layer = copy_layer(&sel, &spec("/opt/", Owner::default(), None)).unwrap();
        assert!(matches!(
            layer.entries["opt/p.tgz"].data,
            EntryData::File(_)
        ));
    }

    #[test]
    fn add_copies_non_archives_and_refuses_unsafe_or_unsupported_ones() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "notes.txt", "plain text");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"not a tar").unwrap();
        std::fs::write(d.path().join("data.gz"), gz.finish().unwrap()).unwrap();
        let layer = add(d.path(), "notes.txt", "/n.txt", None).unwrap();
        assert!(matches!(layer.entries["n.txt"].data, EntryData::File(_)));
        let layer = add(d.path(), "data.gz", "/x/", None).unwrap();
        assert!(
            matches!(layer.entries["x/data.gz"].data, EntryData::File(_)),
            "gzip of a non-tar is copied"
        );

        // An entry named ../evil (written raw: the tar crate refuses to create it).
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..7].copy_from_slice(b"../evil");
        h.set_mode(0o644);
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        let mut b = tar::Builder::new(Vec::new());
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let mut evil = b.into_inner().unwrap();
        // Mark it ustar so it is recognised as an archive.
        evil[257..263].copy_from_slice(b"ustar\0");
        evil[263..265].copy_from_slice(b"00");
        let mut hdr = tar::Header::from_byte_slice(&evil[..512]).clone();
        hdr.set_cksum();
        evil[..512].copy_from_slice(hdr.as_bytes());
        std::fs::write(d.path().join("evil.tar"), &evil).unwrap();
        let e = add(d.path(), "evil.tar", "/", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:6: ADD \"evil.tar\": archive entry \"../evil\" points outside the destination"
        );

        std::fs::write(d.path().join("x.tar.bz2"), b"BZh91AY&SY").unwrap();
        let e = add(d.path(), "x.tar.bz2", "/", None).unwrap_err();
        assert!(
            e.to_string()
                .contains("bzip2 and xz archives are not supported"),
            "{e}"
        );
    }

    /// Unmounts on drop, so a failing test leaves no mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts overlayfs: run it as root (CI does)"
        );
    }

    #[test]
    fn overlay_upper_dir_becomes_an_oci_layer_with_whiteouts() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (lower, upper, work, merged) = (
            t.path().join("lower"),
            t.path().join("upper"),
            t.path().join("work"),
            t.path().join("merged"),
        );
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        write(&lower, "etc/keep", "keep");
        write(&lower, "etc/gone", "gone");
        write(&lower, "var/cache/a", "a");
        write(&lower, "var/cache/b", "b");
        write(&lower, "old", "old");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .expect("mount overlay");
        let guard = Mounted(merged.clone());
        std::fs::remove_file(merged.join("etc/gone")).unwrap();
        std::fs::remove_dir_all(merged.join("var/cache")).unwrap();
        std::fs::create_dir(merged.join("var/cache")).unwrap();
        write(&merged, "var/cache/new", "new");
        write(&merged, "old", "changed");
        write(&merged, "added/file", "added");
        xattr::set(merged.join("added/file"), "user.gantry.test", b"kept").unwrap();
        drop(guard);
        assert!(!merged.join("old").exists(), "unmounted");

        let layer = diff_upper(&upper).unwrap();
        let mut bytes = Vec::new();
        let digest = layer.write(&mut bytes, MtimePolicy::default()).unwrap();
        let entries = read_tar(&bytes);
        let summary: Vec<(String, char, String)> = entries
            .iter()
            .map(|e| (e.0.clone(), e.1, e.6.clone()))
            .collect();
        let s = |p: &str, k: char, c: &str| (p.to_string(), k, c.to_string());
        assert_eq!(
            summary,
            vec![
                s("added/", 'd', ""),
                s("added/file", 'f', "added"),
                s("etc/", 'd', ""),
                s("etc/.wh.gone", 'f', ""),
                s("old", 'f', "changed"),
                s("var/", 'd', ""),
                s("var/cache/", 'd', ""),
                s("var/cache/.wh..wh..opq", 'f', ""),
                s("var/cache/new", 'f', "new"),
            ]
        );
        // Extended attributes travel as PAX records; overlay's own do not.
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if let Some(pax) = e.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    seen.push((
                        path.clone(),
                        ext.key().unwrap().to_string(),
                        ext.value_bytes().to_vec(),
                    ));
                }
            }
        }
        assert_eq!(
            seen,
            vec![(
                "added/file".to_string(),
                "SCHILY.xattr.user.gantry.test".to_string(),
                b"kept".to_vec()
            )]
        );
        // The same upper dir gives the same digest again.
        let mut again = Vec::new();
        assert_eq!(
            diff_upper(&upper)
                .unwrap()
                .write(&mut again, MtimePolicy::default())
                .unwrap(),
            digest
        );
    }

    #[test]
    fn overlay_redirects_are_refused_with_the_path() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("moved")).unwrap();
        xattr::set(t.path().join("moved"), "trusted.overlay.redirect", b"/orig").unwrap();
        let e = diff_upper(t.path()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("moved") && msg.contains("redirect_dir=off"),
            "{msg}"
        );
    }
}

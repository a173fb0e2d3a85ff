//! Layer unpacking: a tar stream (gzip, zstd or plain) applied to a directory, safely.
//!
//! Vocabulary:
//! - **layer**: a tar changeset; **digest** = sha256 of the blob as stored (compressed),
//!   **diff_id** = sha256 of the uncompressed tar. Both are computed in the same streaming
//!   pass ([`UnpackStats`]); no temp tar is ever written;
//! - **whiteout**: `.wh.NAME` deletes NAME from lower layers; **opaque dir**: `.wh..wh..opq`
//!   hides all lower content of its directory. [`WhiteoutMode::Overlay`] writes them the way
//!   overlayfs reads lowerdirs (a 0/0 character device; `trusted.overlay.opaque=y`);
//!   [`WhiteoutMode::Apply`] deletes instead (unpacking onto a flattened tree; for opaque
//!   dirs it relies on the tar order every writer uses: the marker comes before the
//!   directory's new contents);
//! - **target**: the directory being written. Every write is done relative to file
//!   descriptors: each entry's parent is resolved with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_MAGICLINKS)` from the target's fd, so no path — `..`, or through a symlink or
//!   hardlink the layer planted — can reach outside it (a leading `/` is dropped: an
//!   absolute name is relative to the target, as in GNU tar and containerd); the last component is
//!   never followed. Refusals name the entry.
//!
//! Owners, modes (setuid included), xattrs (PAX `SCHILY.xattr.*`, except `trusted.overlay.*`
//! which would let a layer forge overlay metadata) and mtimes are applied; directory
//! metadata is applied after all entries, so their mtimes survive. No per-file fsync: one
//! `syncfs` at the end.
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::digest::{Digest, DigestHasher};
use super::manifest::{sniff_compression, Compression};

/// What to do with character/block device entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Create them (mknod).
    Allow,
    /// Leave them out silently.
    Skip,
    /// Refuse the layer.
    Deny,
}

/// How whiteouts are written; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    Overlay,
    Apply,
}

/// Unpack settings.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub devices: DevicePolicy,
    pub whiteouts: WhiteoutMode,
    /// Limit on the uncompressed tar stream, and on any entry's declared size.
    pub max_uncompressed: u64,
    /// When known, the blob's digest and the config's diff_id: verified at the end.
    pub expected_digest: Option<Digest>,
    pub expected_diff_id: Option<Digest>,
    /// Compression; `None` = detect by magic bytes.
    pub compression: Option<Compression>,
    /// Apply tar owners (needs root).
    pub same_owner: bool,
    /// One `syncfs` of the target's file system at the end.
    pub sync: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            devices: DevicePolicy::Allow,
            whiteouts: WhiteoutMode::Overlay,
            max_uncompressed: 64 << 30,
            expected_digest: None,
            expected_diff_id: None,
            compression: None,
            same_owner: true,
            sync: true,
        }
    }
}

/// What an unpack read and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub digest: Digest,
    pub diff_id: Digest,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub entries: u64,
}

/// Why a layer was refused or failed; names the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?} refused: {reason}")]
    Refused { entry: String, reason: String },
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer is not a valid tar stream (after entry {after:?}): {source}")]
    Tar {
        after: String,
        #[source]
        source: io::Error,
    },
    #[error("layer exceeds the uncompressed size limit of {limit} bytes (at entry {entry:?})")]
    TooLarge { entry: String, limit: u64 },
    #[error("layer {what} mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("unpack target {path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A reader that hashes what passes through it.
struct HashReader<R> {
    inner: R,
    hasher: DigestHasher,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Marker error: the uncompressed stream passed the limit.
#[derive(Debug)]
struct LimitExceeded;
impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed size limit exceeded")
    }
}
impl std::error::Error for LimitExceeded {}

/// Hashes the uncompressed stream and stops it at the limit.
struct LimitHashReader<R> {
    inner: R,
    hasher: DigestHasher,
    limit: u64,
}

impl<R: Read> Read for LimitHashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.hasher.len() + n as u64 > self.limit {
            return Err(io::Error::other(LimitExceeded));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn is_limit(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<LimitExceeded>())
}

/// Splits an entry path into clean components, refusing `..`. A leading `/` is dropped:
/// member names are relative to the layer root, as GNU tar, containerd and umoci read
/// them (umoci writes `/` and `/bin/sh` entries), so an absolute name lands inside the
/// target. `.` and empty components are dropped; an empty result is the target itself.
pub fn clean_path(p: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains a '..' component"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn cstr(b: &[u8]) -> CString {
    // Tar names cannot contain NUL: the header fields are NUL-terminated.
    CString::new(b.to_vec()).unwrap_or_else(|_| CString::new("invalid").unwrap())
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `openat2(dir, path, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
fn open_beneath(dir: RawFd, path: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstr(if path.is_empty() { b"." } else { path });
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

fn fstatat_nofollow(dir: RawFd, name: &CString) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// Removes `name` in `dir` whatever it is (a directory recursively); absent is fine.
fn remove_at(dir: RawFd, name: &CString) -> io::Result<()> {
    if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = errno();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        Some(libc::EISDIR) => {
            // Through the fd's /proc path; `remove_dir_all` never follows symlinks inside.
            let p = PathBuf::from(format!("/proc/self/fd/{dir}"))
                .join(std::ffi::OsStr::from_bytes(name.as_bytes()));
            std::fs::remove_dir_all(p)
        }
        _ => Err(e),
    }
}

struct DirMeta {
    path: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, i64),
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct Unpacker<'o> {
    root: OwnedFd,
    opts: &'o UnpackOptions,
    /// Last resolved parent directory (entries come grouped by directory).
    parent_cache: Option<(Vec<u8>, OwnedFd)>,
    dirs: Vec<DirMeta>,
    buf: Vec<u8>,
}

fn display(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl Unpacker<'_> {
    fn refuse(entry: &str, reason: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    /// Resolves (creating missing directories, mode 0755) the directory `comps` inside the
    /// target; refuses anything that resolves outside it.
    fn parent(&mut self, comps: &[Vec<u8>], entry: &str) -> Result<RawFd, UnpackError> {
        let joined = comps.join(&b'/');
        if let Some((p, fd)) = &self.parent_cache {
            if *p == joined {
                return Ok(fd.as_raw_fd());
            }
        }
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let map = |e: io::Error, what: &str| -> UnpackError {
            match e.raw_os_error() {
                Some(libc::EXDEV) | Some(libc::ELOOP) => Self::refuse(
                    entry,
                    format!("parent {what:?} resolves outside the layer root (symlink escape)"),
                ),
                Some(libc::ENOTDIR) => {
                    Self::refuse(entry, format!("parent {what:?} is not a directory"))
                }
                _ => UnpackError::Io {
                    entry: entry.to_string(),
                    op: "resolve parent",
                    source: e,
                },
            }
        };
        let fd = match open_beneath(self.root.as_raw_fd(), &joined, flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // Create the missing components one by one.
                let mut cur =
                    open_beneath(self.root.as_raw_fd(), b"", flags).map_err(|e| map(e, "."))?;
                for i in 0..comps.len() {
                    let prefix = comps[..=i].join(&b'/');
                    cur = match open_beneath(self.root.as_raw_fd(), &prefix, flags) {
                        Ok(fd) => fd,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                            let name = cstr(&comps[i]);
                            let r = unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) };
                            if r != 0 && errno().raw_os_error() != Some(libc::EEXIST) {
                                return Err(UnpackError::Io {
                                    entry: entry.to_string(),
                                    op: "create parent directory",
                                    source: errno(),
                                });
                            }
                            open_beneath(self.root.as_raw_fd(), &prefix, flags)
                                .map_err(|e| map(e, &display(&prefix)))?
                        }
                        Err(e) => return Err(map(e, &display(&prefix))),
                    };
                }
                cur
            }
            Err(e) => return Err(map(e, &display(&joined))),
        };
        let raw = fd.as_raw_fd();
        self.parent_cache = Some((joined, fd));
        Ok(raw)
    }

    fn io<'a>(entry: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> UnpackError + 'a {
        move |source| UnpackError::Io {
            entry: entry.to_string(),
            op,
            source,
        }
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = e.path_bytes().into_owned();
        let name = display(&raw_path);
        let header = e.header().clone();
        let kind = header.entry_type();
        let comps = clean_path(&raw_path).map_err(|r| Self::refuse(&name, r))?;
        let size = header
            .entry_size()
            .map_err(Self::io(&name, "read header size"))?;
        if size > self.opts.max_uncompressed {
            return Err(UnpackError::TooLarge {
                entry: name,
                limit: self.opts.max_uncompressed,
            });
        }
        // This entry may replace (or white out) the cached parent directory or one of its
        // ancestors: resolve afresh then.
        if let Some((cached, _)) = &self.parent_cache {
            let own = comps.join(&b'/');
            let under =
                |p: &[u8]| p == own.as_slice() || p.starts_with(&[own.as_slice(), b"/"].concat());
            let target_of_whiteout = comps.last().and_then(|l| l.strip_prefix(b".wh.")).map(|t| {
                let mut v = comps[..comps.len() - 1].to_vec();
                v.push(t.to_vec());
                v.join(&b'/')
            });
            if under(cached)
                || target_of_whiteout.is_some_and(|t| {
                    cached == &t || cached.starts_with(&[t.as_slice(), b"/"].concat())
                })
                || own.is_empty()
            {
                self.parent_cache = None;
            }
        }
        let Some((last, parents)) = comps.split_last() else {
            // The layer root itself ("./"): the snapshot's root is ours; nothing to do.
            return Ok(());
        };
        // Whiteouts.
        if let Some(target) = last.strip_prefix(b".wh.") {
            if kind.is_dir() {
                return Err(Self::refuse(&name, "whiteout name used for a directory"));
            }
            let dir = self.parent(parents, &name)?;
            if target == b".wh..opq" {
                match self.opts.whiteouts {
                    WhiteoutMode::Overlay => {
                        let d = open_beneath(dir, b"", libc::O_RDONLY | libc::O_DIRECTORY)
                            .map_err(Self::io(&name, "open opaque directory"))?;
                        let key = cstr(b"trusted.overlay.opaque");
                        check(unsafe {
                            libc::fsetxattr(d.as_raw_fd(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0)
                        })
                        .map_err(Self::io(&name, "set trusted.overlay.opaque"))?;
                    }
                    WhiteoutMode::Apply => {
                        let p = format!("/proc/self/fd/{dir}");
                        let list = std::fs::read_dir(&p)
                            .map_err(Self::io(&name, "list opaque directory"))?;
                        for child in list {
                            let child = child.map_err(Self::io(&name, "list opaque directory"))?;
                            remove_at(dir, &cstr(child.file_name().as_bytes()))
                                .map_err(Self::io(&name, "clear opaque directory"))?;
                        }
                    }
                }
                return Ok(());
            }
            if target.is_empty() || target == b"." || target == b".." || target.starts_with(b".wh.")
            {
                return Err(Self::refuse(&name, "whiteout of an invalid name"));
            }
            let t = cstr(target);
            remove_at(dir, &t).map_err(Self::io(&name, "remove whited-out path"))?;
            if self.opts.whiteouts == WhiteoutMode::Overlay {
                check(unsafe {
                    libc::mknodat(dir, t.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0))
                })
                .map_err(Self::io(&name, "create overlay whiteout"))?;
            }
            return Ok(());
        }

        let mode = header.mode().map_err(Self::io(&name, "read mode"))? & 0o7777;
        // A blank numeric field means 0 (as Go's archive/tar reads it).
        let blank = |f: &[u8]| f.iter().all(|b| *b == 0 || *b == b' ');
        let uid = match header.uid() {
            Ok(u) => u,
            Err(_) if blank(&header.as_old().uid) => 0,
            Err(e) => return Err(Self::io(&name, "read uid")(e)),
        };
        let gid = match header.gid() {
            Ok(g) => g,
            Err(_) if blank(&header.as_old().gid) => 0,
            Err(e) => return Err(Self::io(&name, "read gid")(e)),
        };
        let mut mtime = (header.mtime().unwrap_or(0) as i64, 0i64);
        let mut xattrs = Vec::new();
        if let Some(pax) = e
            .pax_extensions()
            .map_err(Self::io(&name, "read PAX headers"))?
        {
            for ext in pax {
                let ext = ext.map_err(Self::io(&name, "read PAX headers"))?;
                let key = ext.key_bytes();
                if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    if !x.starts_with(b"trusted.overlay.") {
                        xattrs.push((cstr(x), ext.value_bytes().to_vec()));
                    }
                } else if key == b"mtime" {
                    if let Ok(v) = std::str::from_utf8(ext.value_bytes()) {
                        let (s, frac) = v.split_once('.').unwrap_or((v, ""));
                        if let Ok(s) = s.parse::<i64>() {
                            let digits: String = frac.chars().take(9).collect();
                            let ns = format!("{digits:0<9}").parse::<i64>().unwrap_or(0);
                            mtime = (s, ns);
                        }
                    }
                }
            }
        }
        let dir = self.parent(parents, &name)?;
        let leaf = cstr(last);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                let r = unsafe { libc::mkdirat(dir, leaf.as_ptr(), 0o700) };
                if r != 0 {
                    let err = errno();
                    if err.raw_os_error() != Some(libc::EEXIST) {
                        return Err(Self::io(&name, "mkdir")(err));
                    }
                    let st = fstatat_nofollow(dir, &leaf).map_err(Self::io(&name, "stat"))?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                        remove_at(dir, &leaf).map_err(Self::io(&name, "replace with directory"))?;
                        check(unsafe { libc::mkdirat(dir, leaf.as_ptr(), 0o700) })
                            .map_err(Self::io(&name, "mkdir"))?;
                    }
                }
                self.dirs.push(DirMeta {
                    path: comps.join(&b'/'),
                    mode,
                    uid,
                    gid,
                    mtime,
                    xattrs,
                });
                // The directory at this path may have been replaced.
                self.parent_cache = None;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                if kind == T::GNUSparse {
                    return Err(Self::refuse(&name, "GNU sparse files are not supported"));
                }
                remove_at(dir, &leaf).map_err(Self::io(&name, "replace"))?;
                let fd = check(unsafe {
                    libc::openat(
                        dir,
                        leaf.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                })
                .map_err(Self::io(&name, "create file"))?;
                let mut f = unsafe { File::from_raw_fd(fd) };
                loop {
                    let n = match e.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(err) if is_limit(&err) => {
                            return Err(UnpackError::TooLarge {
                                entry: name,
                                limit: self.opts.max_uncompressed,
                            })
                        }
                        Err(err) => return Err(Self::io(&name, "read file data")(err)),
                    };
                    f.write_all(&self.buf[..n])
                        .map_err(Self::io(&name, "write file"))?;
                }
                self.apply_fd(f.as_raw_fd(), &name, mode, uid, gid, &xattrs, mtime)?;
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| Self::refuse(&name, "symlink without target"))?;
                let t = cstr(&target);
                remove_at(dir, &leaf).map_err(Self::io(&name, "replace"))?;
                check(unsafe { libc::symlinkat(t.as_ptr(), dir, leaf.as_ptr()) })
                    .map_err(Self::io(&name, "symlink"))?;
                if self.opts.same_owner {
                    check(unsafe {
                        libc::fchownat(
                            dir,
                            leaf.as_ptr(),
                            uid as u32,
                            gid as u32,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    })
                    .map_err(Self::io(&name, "lchown"))?;
                }
                let ts = [timespec(mtime), timespec(mtime)];
                check(unsafe {
                    libc::utimensat(dir, leaf.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                })
                .map_err(Self::io(&name, "set symlink mtime"))?;
                self.parent_cache = None;
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| Self::refuse(&name, "hardlink without target"))?;
                let tcomps = clean_path(&target).map_err(|r| {
                    Self::refuse(
                        &name,
                        format!("hardlink target {:?}: {r}", display(&target)),
                    )
                })?;
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return Err(Self::refuse(&name, "hardlink to the layer root"));
                };
                let tparent = open_beneath(
                    self.root.as_raw_fd(),
                    &tparents.join(&b'/'),
                    libc::O_PATH | libc::O_DIRECTORY,
                )
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EXDEV) | Some(libc::ELOOP) => Self::refuse(
                        &name,
                        format!(
                            "hardlink target {:?} resolves outside the layer root",
                            display(&target)
                        ),
                    ),
                    _ => Self::io(&name, "resolve hardlink target")(e),
                })?;
                let tl = cstr(tlast);
                let st = fstatat_nofollow(tparent.as_raw_fd(), &tl)
                    .map_err(Self::io(&name, "stat hardlink target"))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(Self::refuse(&name, "hardlink to a directory"));
                }
                let dir = self.parent(parents, &name)?;
                remove_at(dir, &leaf).map_err(Self::io(&name, "replace"))?;
                // Flags 0: a symlink target is linked itself, never followed.
                check(unsafe {
                    libc::linkat(tparent.as_raw_fd(), tl.as_ptr(), dir, leaf.as_ptr(), 0)
                })
                .map_err(Self::io(&name, "hardlink"))?;
            }
            T::Char | T::Block | T::Fifo => {
                let (fmt, is_dev) = match kind {
                    T::Char => (libc::S_IFCHR, true),
                    T::Block => (libc::S_IFBLK, true),
                    _ => (libc::S_IFIFO, false),
                };
                if is_dev {
                    match self.opts.devices {
                        DevicePolicy::Deny => {
                            return Err(Self::refuse(&name, "device node (device policy is deny)"))
                        }
                        DevicePolicy::Skip => return Ok(()),
                        DevicePolicy::Allow => {}
                    }
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_at(dir, &leaf).map_err(Self::io(&name, "replace"))?;
                check(unsafe {
                    libc::mknodat(dir, leaf.as_ptr(), fmt | 0o600, libc::makedev(major, minor))
                })
                .map_err(Self::io(&name, "mknod"))?;
                if self.opts.same_owner {
                    check(unsafe {
                        libc::fchownat(
                            dir,
                            leaf.as_ptr(),
                            uid as u32,
                            gid as u32,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    })
                    .map_err(Self::io(&name, "chown"))?;
                }
                check(unsafe { libc::fchmodat(dir, leaf.as_ptr(), mode, 0) })
                    .map_err(Self::io(&name, "chmod"))?;
                let ts = [timespec(mtime), timespec(mtime)];
                check(unsafe {
                    libc::utimensat(dir, leaf.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                })
                .map_err(Self::io(&name, "set mtime"))?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                return Err(Self::refuse(
                    &name,
                    format!("unsupported entry type {other:?}"),
                ));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_fd(
        &self,
        fd: RawFd,
        name: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        xattrs: &[(CString, Vec<u8>)],
        mtime: (i64, i64),
    ) -> Result<(), UnpackError> {
        if self.opts.same_owner {
            check(unsafe { libc::fchown(fd, uid as u32, gid as u32) })
                .map_err(Self::io(name, "chown"))?;
        }
        // After chown, which clears setuid/setgid.
        check(unsafe { libc::fchmod(fd, mode) }).map_err(Self::io(name, "chmod"))?;
        for (k, v) in xattrs {
            check(unsafe { libc::fsetxattr(fd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0) })
                .map_err(Self::io(name, "set xattr"))?;
        }
        let ts = [timespec(mtime), timespec(mtime)];
        check(unsafe { libc::futimens(fd, ts.as_ptr()) }).map_err(Self::io(name, "set mtime"))?;
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        // Deepest first; all creation is over, so every mtime set here stays.
        for d in dirs.iter().rev() {
            let name = display(&d.path);
            let fd = match open_beneath(
                self.root.as_raw_fd(),
                &d.path,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Replaced or whited out by a later entry of the same layer.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(Self::io(&name, "reopen directory")(e)),
            };
            self.apply_fd(
                fd.as_raw_fd(),
                &name,
                d.mode,
                d.uid,
                d.gid,
                &d.xattrs,
                d.mtime,
            )?;
        }
        Ok(())
    }
}

fn timespec((s, ns): (i64, i64)) -> libc::timespec {
    libc::timespec {
        tv_sec: s,
        tv_nsec: ns,
    }
}

/// Unpacks one layer from `reader` into the existing directory `target`.
///
/// On error the target may hold part of the layer: callers unpack into a fresh directory
/// and delete it on failure (the snapshotter does), so a refused layer leaves nothing.
pub fn unpack_layer<R: Read>(
    reader: R,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let root: OwnedFd = File::open(target)
        .map_err(|source| UnpackError::Target {
            path: target.to_path_buf(),
            source,
        })?
        .into();
    let mut compressed = BufReader::with_capacity(
        1 << 20,
        HashReader {
            inner: reader,
            hasher: DigestHasher::new(),
        },
    );
    let compression = match opts.compression {
        Some(c) => c,
        None => {
            let head = compressed.fill_buf().map_err(|source| UnpackError::Tar {
                after: String::new(),
                source,
            })?;
            sniff_compression(head)
        }
    };
    let mut last_entry = String::new();
    let mut entries = 0u64;
    let (diff_id, uncompressed_size) = {
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut compressed),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut compressed)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut compressed).map_err(|source| {
                    UnpackError::Tar {
                        after: String::new(),
                        source,
                    }
                })?,
            ),
        };
        let mut plain = LimitHashReader {
            inner: decoder,
            hasher: DigestHasher::new(),
            limit: opts.max_uncompressed,
        };
        let mut unpacker = Unpacker {
            root,
            opts,
            parent_cache: None,
            dirs: Vec::new(),
            buf: vec![0u8; 1 << 20],
        };
        let tar_err = |after: &str, source: io::Error| {
            if is_limit(&source) {
                UnpackError::TooLarge {
                    entry: after.to_string(),
                    limit: opts.max_uncompressed,
                }
            } else {
                UnpackError::Tar {
                    after: after.to_string(),
                    source,
                }
            }
        };
        {
            let mut archive = tar::Archive::new(&mut plain);
            for e in archive.entries().map_err(|e| tar_err("", e))? {
                let e = e.map_err(|err| tar_err(&last_entry, err))?;
                last_entry = display(&e.path_bytes());
                entries += 1;
                unpacker.entry(e)?;
            }
        }
        unpacker.finish_dirs()?;
        // The tar end marker may be followed by padding: hash it too.
        io::copy(&mut plain, &mut io::sink()).map_err(|e| tar_err(&last_entry, e))?;
        if opts.sync {
            check(unsafe { libc::syncfs(unpacker.root.as_raw_fd()) }).map_err(|source| {
                UnpackError::Target {
                    path: target.to_path_buf(),
                    source,
                }
            })?;
        }
        let n = plain.hasher.len();
        (plain.hasher.finish(), n)
    };
    io::copy(&mut compressed, &mut io::sink()).map_err(|e| UnpackError::Tar {
        after: last_entry.clone(),
        source: e,
    })?;
    let inner = compressed.into_inner();
    let compressed_size = inner.hasher.len();
    let digest = inner.hasher.finish();
    if let Some(expected) = &opts.expected_digest {
        if *expected != digest {
            return Err(UnpackError::DigestMismatch {
                what: "digest",
                expected: expected.clone(),
                actual: digest,
            });
        }
    }
    if let Some(expected) = &opts.expected_diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DigestMismatch {
                what: "diff_id",
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(UnpackStats {
        digest,
        diff_id,
        compressed_size,
        uncompressed_size,
        entries,
    })
}

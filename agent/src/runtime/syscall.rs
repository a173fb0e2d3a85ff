//! The OS boundary of the runtime: every syscall that changes the container's view of the
//! system goes through the [`Syscall`] trait, so the code that decides *which* mounts,
//! devices and links to make is tested with [`FakeSyscall`] (which records calls) without
//! root. [`LinuxSyscall`] is the real implementation. The trait object is passed in through
//! constructors; nothing picks an implementation by `cfg!(test)`.
//!
//! Vocabulary: a **call** is one recorded syscall with its arguments ([`Call`]); a
//! **file kind** is what a path is on disk (directory, file, missing), needed to pick the
//! right mount target.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// A syscall that failed, with the operation and the path it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct SyscallError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: nix::Error,
}

pub type Result<T> = std::result::Result<T, SyscallError>;

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> SyscallError + 'a {
    move |source| SyscallError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a path is, as far as mount-target creation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    /// Anything that is not a directory (regular file, device, socket, symlink target file).
    File,
    Missing,
}

/// The syscalls the container set-up makes (all run in the container's init process).
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()>;
    fn chdir(&self, path: &Path) -> Result<()>;
    fn sethostname(&self, name: &str) -> Result<()>;
    fn symlink(&self, original: &Path, link: &Path) -> Result<()>;
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<()>;
    fn chown(&self, path: &Path, uid: Option<Uid>, gid: Option<Gid>) -> Result<()>;
    /// `mkdir -p`.
    fn mkdir_all(&self, path: &Path) -> Result<()>;
    /// Creates an empty file (and its parents) if nothing is there: a bind-mount target.
    fn create_file(&self, path: &Path) -> Result<()>;
    /// Follows symlinks, like `stat`.
    fn file_kind(&self, path: &Path) -> FileKind;
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()>;
    /// Marks every descriptor from `first` up close-on-exec, so the container's process
    /// inherits none of the runtime's (or its caller's) files beyond the ones passed on.
    fn cloexec_from(&self, first: u32) -> Result<()>;
}

/// The real syscalls.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn io_to_nix(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(err("mount", target))
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()> {
        nix::mount::umount2(target, flags).map_err(err("umount2", target))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(err("pivot_root", new_root))
    }
    fn chdir(&self, path: &Path) -> Result<()> {
        nix::unistd::chdir(path).map_err(err("chdir", path))
    }
    fn sethostname(&self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name).map_err(err("sethostname", Path::new(name)))
    }
    fn symlink(&self, original: &Path, link: &Path) -> Result<()> {
        std::os::unix::fs::symlink(original, link)
            .map_err(io_to_nix)
            .map_err(err("symlink", link))
    }
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev).map_err(err("mknod", path))
    }
    fn chown(&self, path: &Path, uid: Option<Uid>, gid: Option<Gid>) -> Result<()> {
        nix::unistd::chown(path, uid, gid).map_err(err("chown", path))
    }
    fn mkdir_all(&self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path)
            .map_err(io_to_nix)
            .map_err(err("mkdir", path))
    }
    fn create_file(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            self.mkdir_all(parent)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) => Err(err("create", path)(io_to_nix(e))),
        }
    }
    fn file_kind(&self, path: &Path) -> FileKind {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => FileKind::Dir,
            Ok(_) => FileKind::File,
            Err(_) => FileKind::Missing,
        }
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()> {
        std::fs::write(path, data)
            .map_err(io_to_nix)
            .map_err(err("write", path))
    }
    fn cloexec_from(&self, first: u32) -> Result<()> {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: close_range takes integers only; CLOEXEC closes nothing now.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            )
        };
        if r == 0 {
            return Ok(());
        }
        // Kernels before 5.11: walk the descriptor table instead.
        let dir = Path::new("/proc/self/fd");
        let fds: Vec<i32> = std::fs::read_dir(dir)
            .map_err(io_to_nix)
            .map_err(err("close_range/readdir", dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= first as i32)
            .collect();
        for fd in fds {
            // SAFETY: fcntl on a descriptor number; a stale one (the readdir's) gives EBADF.
            unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFD);
                if fl >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
                }
            }
        }
        Ok(())
    }
}

/// One recorded call of [`FakeSyscall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount2(PathBuf, MntFlags),
    PivotRoot(PathBuf, PathBuf),
    Chdir(PathBuf),
    Sethostname(String),
    Symlink(PathBuf, PathBuf),
    Mknod(PathBuf, SFlag, u32, u64),
    Chown(PathBuf, Option<u32>, Option<u32>),
    MkdirAll(PathBuf),
    CreateFile(PathBuf),
    WriteFile(PathBuf, Vec<u8>),
    CloexecFrom(u32),
}

/// A fake that records every call and succeeds, except where told to fail. `file_kind`
/// answers from a table (default: missing).
#[derive(Debug, Default)]
pub struct FakeSyscall {
    calls: RefCell<Vec<Call>>,
    kinds: RefCell<HashMap<PathBuf, FileKind>>,
    fail_mount_at: RefCell<Option<PathBuf>>,
}

impl FakeSyscall {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_kind(&self, path: impl Into<PathBuf>, kind: FileKind) {
        self.kinds.borrow_mut().insert(path.into(), kind);
    }
    /// Makes `mount` onto `target` fail with EPERM.
    pub fn fail_mount_at(&self, target: impl Into<PathBuf>) {
        *self.fail_mount_at.borrow_mut() = Some(target.into());
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
    fn record(&self, c: Call) {
        self.calls.borrow_mut().push(c);
    }
}

impl Syscall for FakeSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        if self.fail_mount_at.borrow().as_deref() == Some(target) {
            return Err(err("mount", target)(nix::Error::EPERM));
        }
        self.record(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()> {
        self.record(Call::Umount2(target.to_path_buf(), flags));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        self.record(Call::PivotRoot(new_root.into(), put_old.into()));
        Ok(())
    }
    fn chdir(&self, path: &Path) -> Result<()> {
        self.record(Call::Chdir(path.into()));
        Ok(())
    }
    fn sethostname(&self, name: &str) -> Result<()> {
        self.record(Call::Sethostname(name.into()));
        Ok(())
    }
    fn symlink(&self, original: &Path, link: &Path) -> Result<()> {
        self.record(Call::Symlink(original.into(), link.into()));
        Ok(())
    }
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<()> {
        self.record(Call::Mknod(path.into(), kind, perm.bits(), dev));
        Ok(())
    }
    fn chown(&self, path: &Path, uid: Option<Uid>, gid: Option<Gid>) -> Result<()> {
        self.record(Call::Chown(
            path.into(),
            uid.map(|u| u.as_raw()),
            gid.map(|g| g.as_raw()),
        ));
        Ok(())
    }
    fn mkdir_all(&self, path: &Path) -> Result<()> {
        self.record(Call::MkdirAll(path.into()));
        Ok(())
    }
    fn create_file(&self, path: &Path) -> Result<()> {
        self.record(Call::CreateFile(path.into()));
        Ok(())
    }
    fn file_kind(&self, path: &Path) -> FileKind {
        self.kinds
            .borrow()
            .get(path)
            .copied()
            .unwrap_or(FileKind::Missing)
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()> {
        self.record(Call::WriteFile(path.into(), data.to_vec()));
        Ok(())
    }
    fn cloexec_from(&self, first: u32) -> Result<()> {
        self.record(Call::CloexecFrom(first));
        Ok(())
    }
}

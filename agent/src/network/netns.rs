//! Persistent network namespaces: a new, empty netns kept alive by a bind mount of its
//! nsfs file onto a regular file (what `ip netns add` and CNI runtimes do), so the engine
//! can wire a container's network before the container exists and keep it across stop and
//! start. The runtime then joins it by path (`linux.namespaces[].path`).
//!
//! `unshare(CLONE_NEWNET)` changes only the calling thread, so it runs on a short-lived
//! thread of its own; the agent's threads never change namespace.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::error::{NetworkError, Result};

fn io(path: &Path, e: impl Into<std::io::Error>) -> NetworkError {
    NetworkError::Netns {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Creates a new network namespace pinned at `path` (the file is created; its parent must
/// exist). On failure nothing is left at `path`.
pub fn create(path: &Path) -> Result<()> {
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    let target = path.to_path_buf();
    let pinned = std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .expect("netns thread panicked");
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(path);
        return Err(io(path, e));
    }
    Ok(())
}

/// Whether `path` is a pinned network namespace (an nsfs mount).
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unpins and deletes the namespace file; the namespace itself goes away with its last
/// user. A missing file is not an error.
pub fn remove(path: &Path) -> Result<()> {
    if is_pinned(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(|e| io(path, e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, e)),
    }
}

//! Root filesystems of a build in progress: mounting snapshots, and reading them safely.
//!
//! Vocabulary:
//! - **mount guard** ([`MountGuard`]): one snapshot [`Mount`] mounted at a directory,
//!   unmounted when dropped — every path out of a step, error or panic, unmounts;
//! - **view** ([`RootfsView`]): a read-only mount of a stage's layers (for `COPY --from`,
//!   `--chown` names, "does this directory exist"), made from a temporary snapshot view
//!   that is removed with it;
//! - **in-root lookups** ([`dir_meta`], [`read_in_root`]): paths are resolved component by
//!   component without following symlinks, so a hostile image cannot make the builder read
//!   or describe host files.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::image::{Mount, OverlaySnapshotter, SnapshotError, Snapshotter};

use super::layer::DirMeta;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mounting {kind} at {target}: {source}")]
    Mount {
        kind: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {key} gave {count} mounts, expected one")]
    MountCount { key: String, count: usize },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A mounted snapshot; unmounted on drop.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
}

impl MountGuard {
    /// Mounts the single mount of a snapshot at `target` (which must exist).
    pub fn mount(key: &str, mounts: &[Mount], target: &Path) -> Result<MountGuard, RootfsError> {
        use nix::mount::MsFlags;
        let [m] = mounts else {
            return Err(RootfsError::MountCount {
                key: key.to_string(),
                count: mounts.len(),
            });
        };
        let err = |e: nix::Error| RootfsError::Mount {
            kind: m.kind.clone(),
            target: target.to_path_buf(),
            source: io::Error::from(e),
        };
        let ro = m.options.iter().any(|o| o == "ro");
        if m.kind == "bind" {
            nix::mount::mount(
                Some(m.source.as_str()),
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(err)?;
            let guard = MountGuard {
                target: target.to_path_buf(),
                mounted: true,
            };
            if ro {
                nix::mount::mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(err)?;
            }
            return Ok(guard);
        }
        // Builds diff the upper dir: no redirects or metadata-only copy-ups in it.
        let mut options: Vec<&str> = m.options.iter().map(String::as_str).collect();
        if options.iter().any(|o| o.starts_with("upperdir=")) {
            options.push("redirect_dir=off");
            options.push("metacopy=off");
        }
        let data = options.join(",");
        let flags = if ro {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        nix::mount::mount(
            Some(m.source.as_str()),
            target,
            Some(m.kind.as_str()),
            flags,
            Some(data.as_str()),
        )
        .map_err(err)?;
        Ok(MountGuard {
            target: target.to_path_buf(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting a failure (drop only tries, detaching).
    pub fn unmount(mut self) -> Result<(), RootfsError> {
        self.mounted = false;
        nix::mount::umount2(&self.target, nix::mount::MntFlags::empty()).map_err(|e| {
            // Busy: detach, so nothing stays visible, and report.
            let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
            RootfsError::Mount {
                kind: "unmount".into(),
                target: self.target.clone(),
                source: io::Error::from(e),
            }
        })
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A read-only mount of the committed snapshot `parent` (or an empty directory for no
/// layers), with its temporary snapshot view; all removed on drop.
pub struct RootfsView {
    mount: Option<MountGuard>,
    dir: PathBuf,
    key: String,
    snapshots: OverlaySnapshotter,
}

impl RootfsView {
    pub fn open(
        snapshots: &OverlaySnapshotter,
        parent: Option<&str>,
        scratch: &Path,
    ) -> Result<RootfsView, RootfsError> {
        let key = format!(
            "build-view-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let dir = scratch.join(&key);
        fs::create_dir_all(&dir).map_err(|source| RootfsError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut view = RootfsView {
            mount: None,
            dir,
            key,
            snapshots: snapshots.clone(),
        };
        if parent.is_some() {
            let mounts = snapshots.view(&view.key, parent)?;
            view.mount = Some(MountGuard::mount(&view.key, &mounts, &view.dir)?);
        }
        Ok(view)
    }

    pub fn root(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RootfsView {
    fn drop(&mut self) {
        drop(self.mount.take());
        let _ = self.snapshots.remove(&self.key);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Metadata of `rel` under `root` if it is a directory reached without symlinks.
pub fn dir_meta(root: &Path, rel: &str) -> Option<DirMeta> {
    let path = no_symlink_path(root, rel)?;
    let m = fs::symlink_metadata(&path).ok()?;
    m.is_dir().then(|| DirMeta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    })
}

/// Whether anything exists at `rel` under `root`, symlinks in the path counting as "yes"
/// (a directory behind a symlink is not created again).
pub fn exists(root: &Path, rel: &str) -> bool {
    let mut cur = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

/// The contents of the regular file `rel` under `root` (empty if absent or reached
/// through a symlink).
pub fn read_in_root(root: &Path, rel: &str) -> String {
    no_symlink_path(root, rel)
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default()
}

fn no_symlink_path(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut cur = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return None;
        }
        cur.push(part);
        if fs::symlink_metadata(&cur).ok()?.file_type().is_symlink() {
            return None;
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_never_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("etc/sub")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("hostetc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/link")).unwrap();
        assert!(read_in_root(root, "etc/passwd").starts_with("root:"));
        assert_eq!(read_in_root(root, "hostetc/passwd"), "");
        assert_eq!(read_in_root(root, "etc/link"), "");
        assert_eq!(read_in_root(root, "../etc/passwd"), "");
        assert!(dir_meta(root, "etc/sub").is_some());
        assert!(dir_meta(root, "hostetc").is_none());
        assert!(dir_meta(root, "etc/passwd").is_none());
        assert!(exists(root, "/etc/sub"));
        assert!(exists(root, "hostetc/whatever"));
        assert!(!exists(root, "etc/nope"));
    }
}

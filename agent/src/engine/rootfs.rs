//! The container's root filesystem: an overlay of the image's layers (lowerdirs, read-only)
//! under a per-container upper dir, mounted at the bundle's `rootfs/` before the shim starts
//! and unmounted by the shim when the container exits (or by `rm`). Kept on disk: the
//! upper dir, so a restarted container keeps its files and `commit` can diff it.

use std::path::{Path, PathBuf};

use super::EngineError;

/// One mount of a container's root filesystem (the snapshotter's shape: `mount -t KIND -o
/// OPTIONS SOURCE TARGET`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl RootMount {
    /// The writable upper dir of an overlay mount.
    pub fn upperdir(&self) -> Option<PathBuf> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from)
    }
}

/// A container's directories under the agent root: `upper/`, `work/`, `bundle/`.
#[derive(Debug, Clone)]
pub struct ContainerDirs(pub PathBuf);

impl ContainerDirs {
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
    pub fn bundle(&self) -> PathBuf {
        self.0.join("bundle")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("bundle/rootfs")
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("container.log")
    }

    pub fn create(&self) -> Result<(), EngineError> {
        for d in [self.upper(), self.work(), self.rootfs()] {
            std::fs::create_dir_all(&d).map_err(|source| EngineError::Io {
                what: "create directory",
                path: d.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Overlay mount options: lowerdirs top first, then the writable upper and its work dir.
pub fn overlay_options(lower: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    )
}

/// Whether `target` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(target: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let t = target.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| unescape(m) == t))
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The overlay of a root filesystem directory (`--rootfs`) under the container's own
/// upper and work dirs.
pub fn dir_overlay(dirs: &ContainerDirs, lower: &Path) -> RootMount {
    RootMount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: overlay_options(&[lower.to_path_buf()], &dirs.upper(), &dirs.work())
            .split(',')
            .map(str::to_string)
            .collect(),
    }
}

/// Mounts the root filesystem at the bundle's `rootfs/` (nothing if already mounted).
pub fn mount_root(dirs: &ContainerDirs, mounts: &[RootMount]) -> Result<(), EngineError> {
    use nix::mount::MsFlags;
    let target = dirs.rootfs();
    if is_mounted(&target) {
        return Ok(());
    }
    let [m] = mounts else {
        return Err(EngineError::Mount {
            target,
            reason: format!(
                "expected one root mount, the snapshot gave {}",
                mounts.len()
            ),
            source: None,
        });
    };
    let opts: Vec<&str> = m.options.iter().map(String::as_str).collect();
    let (flags, data) = match m.kind.as_str() {
        "bind" => {
            let mut f = MsFlags::MS_BIND | MsFlags::MS_REC;
            if opts.contains(&"ro") {
                f |= MsFlags::MS_RDONLY;
            }
            (f, String::new())
        }
        _ => (MsFlags::empty(), opts.join(",")),
    };
    nix::mount::mount(
        Some(m.source.as_str()),
        &target,
        (m.kind != "bind").then_some(m.kind.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| EngineError::Mount {
        target: target.clone(),
        reason: format!("{} {}", m.kind, data),
        source: Some(std::io::Error::from(e)),
    })
}

pub fn unmount(target: &Path) -> Result<(), EngineError> {
    if !is_mounted(target) {
        return Ok(());
    }
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|e| EngineError::Mount {
        target: target.to_path_buf(),
        reason: "unmount".into(),
        source: Some(std::io::Error::from(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_lowerdirs_top_first() {
        let o = overlay_options(
            &[PathBuf::from("/l/2"), PathBuf::from("/l/1")],
            Path::new("/c/upper"),
            Path::new("/c/work"),
        );
        assert_eq!(o, "lowerdir=/l/2:/l/1,upperdir=/c/upper,workdir=/c/work");
    }

    #[test]
    fn mountinfo_unescapes_spaces() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/definitely/not/mounted")));
    }
}

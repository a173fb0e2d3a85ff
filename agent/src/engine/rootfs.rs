//! The container's root filesystem: an overlay of the image's layers (lowerdirs, read-only)
//! under a per-container upper dir, mounted at the bundle's `rootfs/` before the shim starts
//! and unmounted by the shim when the container exits (or by `rm`). Kept on disk: the
//! upper dir, so a restarted container keeps its files and `commit` can diff it.

use std::path::{Path, PathBuf};

use super::EngineError;

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

pub fn mount_overlay(dirs: &ContainerDirs, lower: &[PathBuf]) -> Result<(), EngineError> {
    let target = dirs.rootfs();
    if is_mounted(&target) {
        return Ok(());
    }
    if lower.is_empty() {
        return Err(EngineError::Mount {
            target,
            reason: "the image has no layers".into(),
            source: None,
        });
    }
    let opts = overlay_options(lower, &dirs.upper(), &dirs.work());
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| EngineError::Mount {
        target: target.clone(),
        reason: format!("overlay {opts}"),
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

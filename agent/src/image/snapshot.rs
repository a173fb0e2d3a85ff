//! Snapshots: directories stacked with overlayfs, keyed like containerd's snapshotter.
//!
//! Vocabulary:
//! - **committed** snapshot: a read-only layer, named by its chain ID (see
//!   [`super::manifest::chain_ids`]), with an optional parent; shared by every image that
//!   has the same layer stack, so each layer is unpacked once;
//! - **active** snapshot: a writable upper directory on top of a parent (a container's
//!   rootfs, or a layer being unpacked); [`Snapshotter::commit`] turns it into a committed one;
//! - **view**: a read-only active snapshot (no upper dir);
//! - **mount**: what a caller must mount to see a snapshot ([`Mount`]); the snapshotter never
//!   mounts anything itself — the runtime and the engine do.
//!
//! Layout: `<root>/snapshots/metadata.json` (key → id, kind, parent; replaced atomically,
//! writers serialised by `flock` on `metadata.lock`, like the image index) and one
//! directory per snapshot, `<root>/snapshots/<id>/fs` (+ `work` for active ones). Ids are
//! small integers so that lowerdir strings stay short.
//!
//! Deep images: overlayfs takes all lowerdirs in one mount option string, which the kernel
//! limits to one page (4096 bytes) with the legacy mount(2) API. With paths of about 40
//! bytes, about 100 layers fit; beyond, [`Snapshotter::mounts`] fails with
//! [`SnapshotError::TooDeep`] naming the count and length, rather than returning a mount that
//! the kernel would refuse. (Docker caps images at 125 layers for the same reason.) Unpacking
//! is not limited: layers are unpacked into unmounted snapshots
//! ([`OverlaySnapshotter::prepare_for_unpack`]), so a deep image is stored fine and only its
//! mount fails, clearly. (Flattening, or the new mount API's per-layer `lowerdir+`, would lift
//! the limit; not done yet.)
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors of the snapshotter; each names the key or path.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot metadata {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("snapshot {key:?} not found")]
    NotFound { key: String },
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },
    #[error("parent snapshot {parent:?} of {key:?} is not committed")]
    ParentNotCommitted { key: String, parent: String },
    #[error("snapshot {key:?} is {kind:?}, expected {expected}")]
    WrongKind {
        key: String,
        kind: Kind,
        expected: &'static str,
    },
    #[error("snapshot {key:?} has children ({children}); remove them first")]
    HasChildren { key: String, children: String },
    #[error("snapshot {key:?}: {layers} lower layers need a {len}-byte lowerdir option, over the kernel's {limit}-byte mount option limit")]
    TooDeep {
        key: String,
        layers: usize,
        len: usize,
        limit: usize,
    },
}

/// What kind of snapshot a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Committed,
    Active,
    View,
}

/// A snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Info {
    pub key: String,
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// A mount to perform, in containerd's shape: `mount -t <kind> -o <options> <source> <target>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mount {
    /// `overlay` or `bind`.
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Disk usage of one snapshot's own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// The snapshotter interface (containerd's `snapshots.Snapshotter`, trimmed).
pub trait Snapshotter {
    /// Creates an active (writable) snapshot `key` on top of the committed `parent`.
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError>;
    /// Creates a read-only view `key` of the committed `parent`.
    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError>;
    /// Turns the active snapshot `key` into the committed snapshot `name`.
    fn commit(&self, name: &str, key: &str) -> Result<(), SnapshotError>;
    /// Removes a snapshot (refused while it has children).
    fn remove(&self, key: &str) -> Result<(), SnapshotError>;
    /// The mounts of an active snapshot or view.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError>;
    fn stat(&self, key: &str) -> Result<Info, SnapshotError>;
    fn list(&self) -> Result<Vec<Info>, SnapshotError>;
    fn usage(&self, key: &str) -> Result<Usage, SnapshotError>;
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Meta {
    next_id: u64,
    snapshots: BTreeMap<String, Info>,
}

/// The overlayfs snapshotter; see the module doc.
#[derive(Debug, Clone)]
pub struct OverlaySnapshotter {
    dir: PathBuf,
}

/// The legacy mount(2) option size limit (one page).
pub const MOUNT_OPTIONS_LIMIT: usize = 4096;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl OverlaySnapshotter {
    /// Opens (creating) the snapshotter of agent root `root` (`<root>/snapshots`).
    pub fn open(root: impl AsRef<Path>) -> Result<OverlaySnapshotter, SnapshotError> {
        let dir = root.as_ref().join("snapshots");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(OverlaySnapshotter { dir })
    }

    /// The snapshots directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Commits the active snapshot `key` (made by [`Self::prepare_for_unpack`] without a
    /// parent, never mounted) as `name` on top of the committed `parent`. Layers unpacked
    /// with overlay whiteouts never read their parent, so a pull unpacks all layers at once,
    /// each into a parentless snapshot, and stacks them with this afterwards, bottom first.
    pub fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: Option<&str>,
    ) -> Result<(), SnapshotError> {
        self.commit_inner(name, key, Some(parent))
    }

    /// The directory holding a snapshot's files: the layer of a committed snapshot, the
    /// upper dir of an active one. Layers are unpacked straight into it.
    pub fn fs_dir(&self, info: &Info) -> PathBuf {
        self.dir.join(info.id.to_string()).join("fs")
    }

    /// Creates an active snapshot that will never be mounted (a layer being unpacked into
    /// its upper dir, then committed) and returns that dir. Unlike
    /// [`Snapshotter::prepare`] it works at any depth: images deeper than the mount option
    /// limit can still be unpacked; only mounting them fails.
    pub fn prepare_for_unpack(
        &self,
        key: &str,
        parent: Option<&str>,
    ) -> Result<PathBuf, SnapshotError> {
        self.create(key, parent, Kind::Active, false)?;
        Ok(self.fs_dir(&self.stat(key)?))
    }

    fn work_dir(&self, info: &Info) -> PathBuf {
        self.dir.join(info.id.to_string()).join("work")
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("metadata.json")
    }

    fn load(&self) -> Result<Meta, SnapshotError> {
        let p = self.meta_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| SnapshotError::Corrupt {
                path: p.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Meta::default()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    fn store(&self, meta: &Meta) -> Result<(), SnapshotError> {
        let p = self.meta_path();
        let tmp = self
            .dir
            .join(format!("metadata.json.tmp-{}", std::process::id()));
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&serde_json::to_vec_pretty(meta).expect("metadata serialises"))
            .map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_err(&p))?;
        Ok(())
    }

    fn update<T>(
        &self,
        f: impl FnOnce(&mut Meta) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let lp = self.dir.join("metadata.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(io_err(&lp))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&lp)(io::Error::last_os_error()));
        }
        let mut meta = self.load()?;
        let before = meta.clone();
        let out = f(&mut meta)?;
        if meta != before {
            self.store(&meta)?;
        }
        Ok(out)
    }

    fn get(meta: &Meta, key: &str) -> Result<Info, SnapshotError> {
        meta.snapshots
            .get(key)
            .cloned()
            .ok_or_else(|| SnapshotError::NotFound {
                key: key.to_string(),
            })
    }

    /// The fs dirs of `parent` and its ancestors, topmost first.
    fn lowers(&self, meta: &Meta, parent: Option<&str>) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::new();
        let mut cur = parent.map(str::to_string);
        while let Some(k) = cur {
            let info = Self::get(meta, &k)?;
            out.push(self.fs_dir(&info));
            cur = info.parent;
        }
        Ok(out)
    }

    fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        with_mounts: bool,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.update(|meta| {
            if meta.snapshots.contains_key(key) {
                return Err(SnapshotError::AlreadyExists {
                    key: key.to_string(),
                });
            }
            if let Some(p) = parent {
                let pi = Self::get(meta, p)?;
                if pi.kind != Kind::Committed {
                    return Err(SnapshotError::ParentNotCommitted {
                        key: key.to_string(),
                        parent: p.to_string(),
                    });
                }
            }
            let info = Info {
                key: key.to_string(),
                id: meta.next_id + 1,
                kind,
                parent: parent.map(str::to_string),
                created: now(),
            };
            // Checked before anything is created: a refused prepare leaves nothing.
            let mounts = if with_mounts {
                self.mounts_of(meta, &info)?
            } else {
                Vec::new()
            };
            meta.next_id += 1;
            let base = self.dir.join(info.id.to_string());
            // A stale directory with this id (crash before metadata was saved) is garbage.
            let _ = fs::remove_dir_all(&base);
            fs::create_dir_all(self.fs_dir(&info)).map_err(io_err(&base))?;
            if kind == Kind::Active {
                fs::create_dir_all(self.work_dir(&info)).map_err(io_err(&base))?;
            }
            meta.snapshots.insert(key.to_string(), info);
            Ok(mounts)
        })
    }

    fn mounts_of(&self, meta: &Meta, info: &Info) -> Result<Vec<Mount>, SnapshotError> {
        let lowers = self.lowers(meta, info.parent.as_deref())?;
        let s = |p: &Path| p.display().to_string();
        let mount = match (info.kind, lowers.len()) {
            (Kind::Committed, _) => {
                return Err(SnapshotError::WrongKind {
                    key: info.key.clone(),
                    kind: info.kind,
                    expected: "active or view",
                })
            }
            (Kind::Active, 0) => Mount {
                kind: "bind".into(),
                source: s(&self.fs_dir(info)),
                options: vec!["rw".into(), "rbind".into()],
            },
            (Kind::View, 0) => Mount {
                kind: "bind".into(),
                source: s(&self.fs_dir(info)),
                options: vec!["ro".into(), "rbind".into()],
            },
            (Kind::View, 1) => Mount {
                kind: "bind".into(),
                source: s(&lowers[0]),
                options: vec!["ro".into(), "rbind".into()],
            },
            (kind, _) => {
                let lowerdir = format!(
                    "lowerdir={}",
                    lowers.iter().map(|p| s(p)).collect::<Vec<_>>().join(":")
                );
                let mut options = Vec::new();
                if kind == Kind::Active {
                    options.push(format!("workdir={}", s(&self.work_dir(info))));
                    options.push(format!("upperdir={}", s(&self.fs_dir(info))));
                }
                options.push(lowerdir);
                let len: usize = options.iter().map(|o| o.len() + 1).sum();
                if len > MOUNT_OPTIONS_LIMIT {
                    return Err(SnapshotError::TooDeep {
                        key: info.key.clone(),
                        layers: lowers.len(),
                        len,
                        limit: MOUNT_OPTIONS_LIMIT,
                    });
                }
                Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }
            }
        };
        Ok(vec![mount])
    }

    /// Commits `key` as `name`; with `reparent`, first sets its parent (checked committed).
    fn commit_inner(
        &self,
        name: &str,
        key: &str,
        reparent: Option<Option<&str>>,
    ) -> Result<(), SnapshotError> {
        let info = self.update(|meta| {
            let mut info = Self::get(meta, key)?;
            if info.kind != Kind::Active {
                return Err(SnapshotError::WrongKind {
                    key: key.to_string(),
                    kind: info.kind,
                    expected: "active",
                });
            }
            if meta.snapshots.contains_key(name) {
                return Err(SnapshotError::AlreadyExists {
                    key: name.to_string(),
                });
            }
            if let Some(parent) = reparent {
                if let Some(p) = parent {
                    if Self::get(meta, p)?.kind != Kind::Committed {
                        return Err(SnapshotError::ParentNotCommitted {
                            key: name.to_string(),
                            parent: p.to_string(),
                        });
                    }
                }
                info.parent = parent.map(str::to_string);
            }
            meta.snapshots.remove(key);
            info.key = name.to_string();
            info.kind = Kind::Committed;
            meta.snapshots.insert(name.to_string(), info.clone());
            Ok(info)
        })?;
        let work = self.work_dir(&info);
        let _ = fs::remove_dir_all(work);
        Ok(())
    }

    /// Removes a snapshot's directory (its metadata already gone).
    fn remove_dir(&self, info: &Info) -> Result<(), SnapshotError> {
        let base = self.dir.join(info.id.to_string());
        match fs::remove_dir_all(&base) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&base)(e)),
        }
    }
}

impl Snapshotter for OverlaySnapshotter {
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError> {
        self.create(key, parent, Kind::Active, true)
    }

    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>, SnapshotError> {
        self.create(key, parent, Kind::View, true)
    }

    fn commit(&self, name: &str, key: &str) -> Result<(), SnapshotError> {
        self.commit_inner(name, key, None)
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let info = self.update(|meta| {
            let info = Self::get(meta, key)?;
            let children: Vec<_> = meta
                .snapshots
                .values()
                .filter(|i| i.parent.as_deref() == Some(key))
                .map(|i| i.key.clone())
                .collect();
            if !children.is_empty() {
                return Err(SnapshotError::HasChildren {
                    key: key.to_string(),
                    children: children.join(", "),
                });
            }
            meta.snapshots.remove(key);
            Ok(info)
        })?;
        self.remove_dir(&info)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let meta = self.load()?;
        let info = Self::get(&meta, key)?;
        self.mounts_of(&meta, &info)
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        Self::get(&self.load()?, key)
    }

    fn list(&self) -> Result<Vec<Info>, SnapshotError> {
        Ok(self.load()?.snapshots.into_values().collect())
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let info = self.stat(key)?;
        let mut usage = Usage::default();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![self.fs_dir(&info)];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).map_err(io_err(&d))? {
                let e = e.map_err(io_err(&d))?;
                let m = fs::symlink_metadata(e.path()).map_err(io_err(&e.path()))?;
                if !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                usage.inodes += 1;
                usage.bytes += m.blocks() * 512;
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_commit_chain_gives_overlay_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let s = OverlaySnapshotter::open(dir.path()).unwrap();
        let m = s.prepare("tmp1", None).unwrap();
        assert_eq!(m[0].kind, "bind");
        s.commit("L1", "tmp1").unwrap();
        s.prepare("tmp2", Some("L1")).unwrap();
        s.commit("L2", "tmp2").unwrap();
        let m = s.prepare("ctr", Some("L2")).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind, "overlay");
        let l1 = s.fs_dir(&s.stat("L1").unwrap());
        let l2 = s.fs_dir(&s.stat("L2").unwrap());
        let c = s.stat("ctr").unwrap();
        assert_eq!(
            m[0].options,
            vec![
                format!("workdir={}", s.work_dir(&c).display()),
                format!("upperdir={}", s.fs_dir(&c).display()),
                format!("lowerdir={}:{}", l2.display(), l1.display()),
            ]
        );
        assert_eq!(s.mounts("ctr").unwrap(), m);
        // A view of a single layer is a read-only bind; of two, a lower-only overlay.
        let v = s.view("v1", Some("L1")).unwrap();
        assert_eq!(v[0].kind, "bind");
        assert!(v[0].options.contains(&"ro".to_string()));
        let v = s.view("v2", Some("L2")).unwrap();
        assert_eq!(
            v[0].options,
            vec![format!("lowerdir={}:{}", l2.display(), l1.display())]
        );
        // Committed snapshots have no mounts; parents with children can't go.
        assert!(matches!(
            s.mounts("L1"),
            Err(SnapshotError::WrongKind { .. })
        ));
        assert!(matches!(
            s.remove("L1"),
            Err(SnapshotError::HasChildren { .. })
        ));
        assert!(matches!(
            s.prepare("ctr", None),
            Err(SnapshotError::AlreadyExists { .. })
        ));
        assert!(matches!(
            s.prepare("x", Some("ctr")),
            Err(SnapshotError::ParentNotCommitted { .. })
        ));
        for k in ["ctr", "v1", "v2", "L2", "L1"] {
            s.remove(k).unwrap();
        }
        assert!(s.list().unwrap().is_empty());
        let left: Vec<_> = fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with("metadata"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn deep_chains_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let s = OverlaySnapshotter::open(dir.path()).unwrap();
        let mut parent: Option<String> = None;
        for i in 0..150 {
            s.prepare_for_unpack("tmp", parent.as_deref()).unwrap();
            let name = format!("layer-{i}");
            s.commit(&name, "tmp").unwrap();
            parent = Some(name);
        }
        let e = s.prepare("ctr", parent.as_deref()).unwrap_err();
        assert!(
            matches!(e, SnapshotError::TooDeep { layers: 150, .. }),
            "{e}"
        );
        // A refused prepare leaves nothing behind.
        assert!(matches!(s.stat("ctr"), Err(SnapshotError::NotFound { .. })));
        assert_eq!(s.list().unwrap().len(), 150);
    }

    #[test]
    fn usage_counts_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = OverlaySnapshotter::open(dir.path()).unwrap();
        s.prepare("a", None).unwrap();
        let fsd = s.fs_dir(&s.stat("a").unwrap());
        fs::write(fsd.join("f"), vec![1u8; 10000]).unwrap();
        fs::hard_link(fsd.join("f"), fsd.join("g")).unwrap();
        fs::create_dir(fsd.join("d")).unwrap();
        let u = s.usage("a").unwrap();
        assert_eq!(u.inodes, 2);
        assert!(u.bytes >= 10000, "{u:?}");
    }
}

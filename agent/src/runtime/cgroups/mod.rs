//! cgroups of a container: create, limit, join, measure, destroy — on cgroup v1 and v2.
//!
//! Vocabulary:
//! - **cgroups path**: the spec's `linux.cgroupsPath` (e.g. `gantry/<id>` or `/gantry/<id>`),
//!   always relative to the root of each v1 hierarchy / of the v2 unified hierarchy (never
//!   to the caller's own cgroup); `..`, `.` and empty components are refused;
//! - **hierarchy** (v1): one mounted cgroup filesystem with its controllers (`memory`,
//!   `cpu,cpuacct`, …); the container gets one directory in each hierarchy gantry uses
//!   (cpu, cpuacct, cpuset, memory, devices, freezer, blkio, pids, hugetlb);
//! - **unified** (v2): the single cgroup2 hierarchy; controllers are enabled for the
//!   container through `cgroup.subtree_control` of every ancestor;
//! - **plan** ([`plan`]): the pure translation of `linux.resources` into cgroupfs writes,
//!   validated first so bad values fail before any directory exists.
//!
//! The host is detected once per process with cgroups-rs (`is_cgroup2_unified_mode`, and its
//! `/proc/self/mountinfo` parser for the v1 mount points). The directories and limit files
//! are written directly, not through cgroups-rs's `Cgroup`/controllers, because there it
//! (a) re-reads mountinfo on every `auto()` and builds all 14 controllers per group,
//! (b) sleeps 10–80 ms between `delete` retries even when nothing is busy,
//! (c) hard-codes the v2 root to `/sys/fs/cgroup` (no tests on a hybrid host's
//! `/sys/fs/cgroup/unified`), (d) reads `cpu.max` before writing it, and (e) reports errors
//! without the spec field. Here a create is a handful of `mkdir`+`write` syscalls.
//!
//! Directories this manager created are removed by [`CgroupManager::destroy`]; a manager
//! built in another process (e.g. `gantry runtime delete`) removes the container's leaf
//! directories and leaves shared parents such as `gantry/` in place.
//!
//! v2 device rules are **not** enforced by the cgroup: v2 needs an eBPF device program,
//! which gantry does not load. The runtime only creates the allowed device nodes; without
//! CAP_MKNOD-free isolation this is weaker than v1's devices controller.

pub mod plan;
mod v1;
mod v2;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

/// Errors of the cgroup manager; each names the path, spec field or controller involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{field}: {reason}")]
    InvalidResource { field: String, reason: String },
    #[error("{field}: the {controller} controller is not available on this host ({detail})")]
    MissingController {
        field: String,
        controller: String,
        detail: String,
    },
    #[error("no cgroup filesystem found in /proc/self/mountinfo")]
    NoCgroupFs,
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{field}: writing {value:?} to {path} failed")]
    Write {
        field: String,
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path} still has processes {pids:?}")]
    InUse { path: PathBuf, pids: Vec<i32> },
}

/// The cgroup version the manager drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Usage and limits of a container's cgroup. `None`: the controller is absent or the value is
/// unlimited (limits) / not reported by this kernel (e.g. `memory.peak` before 5.19).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupStats {
    pub memory_usage_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub memory_max_usage_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub cpu_usage_ns: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_limit: Option<u64>,
}

/// The host's cgroup layout, detected once per process.
#[derive(Debug, Clone)]
enum Host {
    /// (mount point, controllers) of each v1 hierarchy.
    V1(Vec<(PathBuf, Vec<String>)>),
    /// Root of the unified hierarchy.
    V2(PathBuf),
}

/// Controllers gantry creates directories for on v1.
const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb",
];

fn host() -> Result<&'static Host, CgroupError> {
    static HOST: OnceLock<Option<Host>> = OnceLock::new();
    HOST.get_or_init(|| {
        use cgroups_rs::fs::hierarchies;
        if hierarchies::is_cgroup2_unified_mode() {
            return Some(Host::V2(PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT)));
        }
        let mut mounts: Vec<(PathBuf, Vec<String>)> = Vec::new();
        for m in hierarchies::mountinfo_self() {
            let controllers: Vec<String> = m
                .super_opts
                .iter()
                .filter(|o| V1_CONTROLLERS.contains(&o.as_str()))
                .cloned()
                .collect();
            if !controllers.is_empty() && !mounts.iter().any(|(p, _)| *p == m.mount_point) {
                mounts.push((m.mount_point, controllers));
            }
        }
        (!mounts.is_empty()).then_some(Host::V1(mounts))
    })
    .as_ref()
    .ok_or(CgroupError::NoCgroupFs)
}

/// Checks a cgroups path and returns it relative (no leading `/`).
pub fn relative_cgroups_path(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let bad = |reason| CgroupError::InvalidPath {
        path: cgroups_path.to_string(),
        reason,
    };
    let trimmed = cgroups_path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(bad("empty: a container cannot use the root cgroup"));
    }
    if trimmed.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if trimmed.split('/').any(|c| c.is_empty()) {
        return Err(bad("has an empty component (//)"));
    }
    // Split by hand: Path::components silently drops "." components.
    let mut rel = PathBuf::new();
    for c in trimmed.split('/') {
        match c {
            ".." => return Err(bad("contains '..'")),
            "." => return Err(bad("contains '.'")),
            c => rel.push(c),
        }
    }
    Ok(rel)
}

#[derive(Debug)]
enum Backend {
    V1(v1::V1Cgroup),
    V2(v2::V2Cgroup),
}

/// One container's cgroup, on v1 (a directory per hierarchy) or v2 (one directory).
#[derive(Debug)]
pub struct CgroupManager {
    backend: Backend,
    /// Directories this manager created (parents first), removed again by `destroy`.
    created: Mutex<Vec<PathBuf>>,
}

impl CgroupManager {
    /// A manager for `cgroups_path` on this host's cgroup version. Touches nothing yet.
    pub fn new(cgroups_path: &str) -> Result<Self, CgroupError> {
        let rel = relative_cgroups_path(cgroups_path)?;
        let backend = match host()? {
            Host::V1(mounts) => Backend::V1(v1::V1Cgroup::new(mounts, &rel)),
            Host::V2(root) => Backend::V2(v2::V2Cgroup::new(root.clone(), &rel)),
        };
        Ok(Self::with(backend))
    }

    /// A v2 manager on the unified hierarchy mounted at `root` (hybrid hosts mount it at
    /// `/sys/fs/cgroup/unified`; tests mount their own).
    pub fn new_v2_at(root: &Path, cgroups_path: &str) -> Result<Self, CgroupError> {
        let rel = relative_cgroups_path(cgroups_path)?;
        Ok(Self::with(Backend::V2(v2::V2Cgroup::new(
            root.to_path_buf(),
            &rel,
        ))))
    }

    fn with(backend: Backend) -> Self {
        CgroupManager {
            backend,
            created: Mutex::new(Vec::new()),
        }
    }

    pub fn version(&self) -> CgroupVersion {
        match self.backend {
            Backend::V1(_) => CgroupVersion::V1,
            Backend::V2(_) => CgroupVersion::V2,
        }
    }

    /// The container's directories (one per v1 hierarchy, or the one v2 directory).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::V1(c) => c.dirs(),
            Backend::V2(c) => vec![c.dir().to_path_buf()],
        }
    }

    /// Creates the directories and writes the limits. Values are validated before anything
    /// is created; if a write fails, every directory created here is removed again.
    pub fn create(&self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let mut created = Vec::new();
        let result = match &self.backend {
            Backend::V1(c) => c.create(resources, &mut created),
            Backend::V2(c) => c.create(resources, &mut created),
        };
        if let Err(e) = result {
            remove_created(&created);
            return Err(e);
        }
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(created);
        Ok(())
    }

    /// Moves process `pid` (all its threads) into the container's cgroup(s).
    pub fn add_task(&self, pid: Pid) -> Result<(), CgroupError> {
        let value = pid.as_raw().to_string();
        for dir in self.dirs() {
            write_file(&dir.join("cgroup.procs"), &value, "cgroup.procs")?;
        }
        Ok(())
    }

    /// The processes in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        let dir = match &self.backend {
            Backend::V1(c) => c.procs_dir(),
            Backend::V2(c) => c.dir().to_path_buf(),
        };
        read_procs(&dir)
    }

    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        match &self.backend {
            Backend::V1(c) => c.stats(),
            Backend::V2(c) => c.stats(),
        }
    }

    /// Removes the first `levels` parents of the container's directories where they are
    /// empty (best effort: a parent in use by another container stays). For the runtime's
    /// own shared parent, whose creator's in-memory record is gone by `delete`; a concurrent
    /// create that loses its parent this way retries (see `make_dirs`).
    pub fn remove_empty_parents(&self, levels: usize) {
        for dir in self.dirs() {
            for parent in dir.ancestors().skip(1).take(levels) {
                if std::fs::remove_dir(parent).is_err() {
                    break;
                }
            }
        }
    }

    /// Removes the container's directories (retrying briefly while the kernel still counts
    /// exiting tasks) and every parent this manager created. Idempotent.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            remove_cgroup_dir(&dir)?;
        }
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        remove_created(&created);
        created.clear();
        Ok(())
    }
}

/// Writes `value` with one `write(2)` (cgroupfs parses each write as one command).
fn write_file(path: &Path, value: &str, field: &str) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            field: field.to_string(),
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

/// A single number file (`memory.current`); `max` and v1's "unlimited" are `None`.
fn read_limit(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        return None;
    }
    // v1 reports "no limit" as PAGE_COUNTER_MAX pages (≈ 2^63 rounded to a page).
    s.parse().ok().filter(|v: &u64| *v < (1u64 << 62))
}

/// The value of `key` in a flat-keyed file (`oom_kill 3`).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_procs(dir: &Path) -> Result<Vec<Pid>, CgroupError> {
    let text = read_file(&dir.join("cgroup.procs"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(Pid::from_raw)
        .collect())
}

/// mkdir of every missing component of `rel` under `base`; records the ones it made.
/// A leftover leaf from a container that died without cleanup is removed and made anew
/// (if it is empty): its old limits must not leak into the new container.
///
/// A shared parent (`gantry/`) removed by another container's destroy between two mkdirs
/// shows up as ENOENT: start over, a few times.
fn make_dirs(base: &Path, rel: &Path, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let mut attempts = 0;
    loop {
        match make_dirs_once(base, rel, created) {
            Err(CgroupError::Io {
                op: "creating",
                source,
                ..
            }) if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {
                attempts += 1;
            }
            other => return other,
        }
    }
}

fn make_dirs_once(base: &Path, rel: &Path, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let mut dir = base.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        dir.push(c);
        match std::fs::create_dir(&dir) {
            Ok(()) => created.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if i + 1 == n {
                    let pids = read_procs(&dir)?;
                    if !pids.is_empty() {
                        return Err(CgroupError::InUse {
                            path: dir,
                            pids: pids.iter().map(|p| p.as_raw()).collect(),
                        });
                    }
                    remove_cgroup_dir(&dir)?;
                    std::fs::create_dir(&dir).map_err(|source| CgroupError::Io {
                        op: "creating",
                        path: dir.clone(),
                        source,
                    })?;
                    created.push(dir.clone());
                }
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    op: "creating",
                    path: dir,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// rmdir, retrying on EBUSY for up to ~100 ms (tasks that were just killed leave the group
/// asynchronously). Removes child groups (e.g. made by a nested runtime) first.
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut delay_us = 200;
    let mut waited_us = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && waited_us < 100_000 => {
                // A child group keeps its parent busy: remove the children first.
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            remove_cgroup_dir(&entry.path())?;
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_micros(delay_us));
                waited_us += delay_us;
                delay_us = (delay_us * 2).min(10_000);
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let pids = read_procs(dir).unwrap_or_default();
                return Err(CgroupError::InUse {
                    path: dir.to_path_buf(),
                    pids: pids.iter().map(|p| p.as_raw()).collect(),
                });
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    op: "removing",
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Best effort, deepest first: parents shared with other containers stay (ENOTEMPTY/EBUSY).
fn remove_created(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests;

//! cgroup v1: one directory per hierarchy (cpu, cpuacct, cpuset, memory, devices, freezer,
//! blkio, pids, hugetlb — whichever the host mounts), limits written into the hierarchy that
//! owns each file.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::{plan, read_file, read_key, read_limit, write_file, CgroupError, CgroupStats};

#[derive(Debug)]
struct Hierarchy {
    controllers: Vec<String>,
    mount: PathBuf,
    dir: PathBuf,
}

#[derive(Debug)]
pub(super) struct V1Cgroup {
    rel: PathBuf,
    hierarchies: Vec<Hierarchy>,
}

impl V1Cgroup {
    pub(super) fn new(mounts: &[(PathBuf, Vec<String>)], rel: &Path) -> Self {
        V1Cgroup {
            rel: rel.to_path_buf(),
            hierarchies: mounts
                .iter()
                .map(|(mount, controllers)| Hierarchy {
                    controllers: controllers.clone(),
                    mount: mount.clone(),
                    dir: mount.join(rel),
                })
                .collect(),
        }
    }

    pub(super) fn dirs(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.dir.clone()).collect()
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .map(|h| h.dir.as_path())
    }

    /// Where `cgroup.procs` is read for [`super::CgroupManager::pids`]: the pids hierarchy
    /// (or any, every hierarchy holds the same processes).
    pub(super) fn procs_dir(&self) -> PathBuf {
        self.dir_of("pids")
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.hierarchies[0].dir.clone())
    }

    pub(super) fn create(
        &self,
        resources: Option<&LinuxResources>,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), CgroupError> {
        let writes = match resources {
            Some(r) => plan::v1_writes(r)?,
            None => Vec::new(),
        };
        // Every controller the plan needs must be mounted: checked before any mkdir.
        for w in &writes {
            if self.dir_of(w.controller).is_none() {
                return Err(CgroupError::MissingController {
                    field: w.field.clone(),
                    controller: w.controller.to_string(),
                    detail: "no cgroup v1 hierarchy has it mounted".to_string(),
                });
            }
        }
        for h in &self.hierarchies {
            super::make_dirs(&h.mount, &self.rel, created)?;
            if h.controllers.iter().any(|c| c == "cpuset") {
                // A new cpuset group starts with no CPUs and no memory nodes, and refuses
                // tasks until it has some: fill every level top-down from its parent —
                // also the levels this call did not create, since a concurrent creator may
                // not have filled a shared parent yet.
                let mut dir = h.mount.clone();
                for part in self.rel.components() {
                    dir.push(part);
                    inherit_cpuset(&dir)?;
                }
            }
        }
        for w in &writes {
            let dir = self.dir_of(w.controller).expect("checked above");
            let path = dir.join(&w.file);
            match write_file(&path, &w.value, &w.field) {
                Ok(()) => {}
                // Swap accounting off (swapaccount=0): an unlimited swap needs no file.
                Err(CgroupError::Write { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && w.file == "memory.memsw.limit_in_bytes"
                        && w.value == "-1" => {}
                // BFQ kernels name the weight blkio.bfq.weight (CFQ is gone since 5.0).
                Err(CgroupError::Write { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && w.file == "blkio.weight" =>
                {
                    let bfq = dir.join("blkio.bfq.weight");
                    if !bfq.exists() {
                        return Err(CgroupError::MissingController {
                            field: w.field.clone(),
                            controller: "blkio".into(),
                            detail: "neither blkio.weight nor blkio.bfq.weight exists (no proportional I/O scheduler)".into(),
                        });
                    }
                    write_file(&bfq, &w.value, &w.field)?;
                }
                Err(CgroupError::Write { source, path, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(CgroupError::MissingController {
                        field: w.field.clone(),
                        controller: w.controller.to_string(),
                        detail: format!("{} does not exist on this kernel", path.display()),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(super) fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let mut s = CgroupStats::default();
        if let Some(d) = self.dir_of("memory") {
            // usage is mandatory: it tells the group exists at all.
            s.memory_usage_bytes = Some(parse_u64(&d.join("memory.usage_in_bytes"))?);
            s.memory_limit_bytes = read_limit(&d.join("memory.limit_in_bytes"));
            s.memory_max_usage_bytes = read_limit(&d.join("memory.max_usage_in_bytes"));
            s.oom_kills = read_key(&d.join("memory.oom_control"), "oom_kill");
        }
        if let Some(d) = self.dir_of("cpuacct") {
            s.cpu_usage_ns = Some(parse_u64(&d.join("cpuacct.usage"))?);
        }
        if let Some(d) = self.dir_of("pids") {
            s.pids_current = Some(parse_u64(&d.join("pids.current"))?);
            s.pids_limit = read_limit(&d.join("pids.max"));
        }
        Ok(s)
    }
}

fn parse_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read_file(path)?;
    text.trim().parse().map_err(|_| CgroupError::Io {
        op: "parsing",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.trim().to_string()),
    })
}

/// Give `dir` its parent's CPUs and memory nodes when it has none (idempotent, so
/// concurrent creators of a shared parent agree).
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().expect("a created cgroup dir has a parent");
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if !read_file(&dir.join(file))?.trim().is_empty() {
            continue;
        }
        let value = read_file(&parent.join(file))?;
        let value = value.trim();
        if !value.is_empty() {
            write_file(&dir.join(file), value, file)?;
        }
    }
    Ok(())
}

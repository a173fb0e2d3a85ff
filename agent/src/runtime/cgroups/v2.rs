//! cgroup v2: one directory in the unified hierarchy; the controllers it needs are enabled in
//! `cgroup.subtree_control` of the root and of every ancestor.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::{plan, read_file, read_key, read_limit, write_file, CgroupError, CgroupStats};

/// Controllers enabled for every container when the host offers them (limits and stats).
const WANTED: &[&str] = &["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

#[derive(Debug)]
pub(super) struct V2Cgroup {
    root: PathBuf,
    rel: PathBuf,
    dir: PathBuf,
}

impl V2Cgroup {
    pub(super) fn new(root: PathBuf, rel: &Path) -> Self {
        V2Cgroup {
            dir: root.join(rel),
            rel: rel.to_path_buf(),
            root,
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn create(
        &self,
        resources: Option<&LinuxResources>,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), CgroupError> {
        let writes = match resources {
            Some(r) => plan::v2_writes(r)?,
            None => Vec::new(),
        };
        let available = read_file(&self.root.join("cgroup.controllers"))?;
        let available: Vec<&str> = available.split_whitespace().collect();
        for w in &writes {
            if !w.controller.is_empty() && !available.contains(&w.controller) {
                return Err(CgroupError::MissingController {
                    field: w.field.clone(),
                    controller: w.controller.to_string(),
                    detail: format!(
                        "not in {}/cgroup.controllers (bound to a v1 hierarchy?)",
                        self.root.display()
                    ),
                });
            }
        }
        let enable: Vec<&str> = WANTED
            .iter()
            .copied()
            .filter(|c| available.contains(c))
            .collect();
        let enable_line = enable
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");

        // Enable down the path: root, then each ancestor as it is created (before its child).
        let mut ancestor = self.root.clone();
        let components: Vec<_> = self.rel.components().collect();
        for (i, c) in components.iter().enumerate() {
            if !enable_line.is_empty() {
                write_file(
                    &ancestor.join("cgroup.subtree_control"),
                    &enable_line,
                    "cgroup.subtree_control",
                )?;
            }
            if i + 1 < components.len() {
                ancestor.push(c);
                match std::fs::create_dir(&ancestor) {
                    Ok(()) => created.push(ancestor.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(CgroupError::Io {
                            op: "creating",
                            path: ancestor,
                            source,
                        })
                    }
                }
            }
        }
        let parent = self.dir.parent().expect("cgroup dir has a parent");
        let leaf = self.dir.strip_prefix(parent).expect("leaf of its parent");
        super::make_dirs(parent, leaf, created)?;

        for w in &writes {
            write_file(&self.dir.join(&w.file), &w.value, &w.field)?;
        }
        Ok(())
    }

    pub(super) fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let d = &self.dir;
        // cgroup.procs always exists: it tells the group exists at all.
        read_file(&d.join("cgroup.procs"))?;
        Ok(CgroupStats {
            memory_usage_bytes: read_limit(&d.join("memory.current")),
            memory_limit_bytes: read_limit(&d.join("memory.max")),
            memory_max_usage_bytes: read_limit(&d.join("memory.peak")),
            oom_kills: read_key(&d.join("memory.events"), "oom_kill"),
            cpu_usage_ns: read_key(&d.join("cpu.stat"), "usage_usec").map(|us| us * 1000),
            pids_current: read_limit(&d.join("pids.current")),
            pids_limit: read_limit(&d.join("pids.max")),
        })
    }
}

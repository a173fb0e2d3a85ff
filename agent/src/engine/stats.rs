//! Resource usage of a running container, read from its cgroup (v1: the memory, cpuacct and
//! pids hierarchies; v2: the unified one), and its processes for `top`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub cpu_nanos: u64,
    pub pids: u64,
}

/// cgroup v2 when the unified hierarchy is mounted at /sys/fs/cgroup itself.
pub fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

fn read_u64(p: PathBuf) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Reads the usage of the container whose cgroup is `cgroup` (its record's
/// `cgroup_path()`) under the cgroup mount `root` (/sys/fs/cgroup).
pub fn usage(root: &Path, cgroup: &str) -> Usage {
    let rel = cgroup.trim_start_matches('/');
    // Very large limits mean "none" (v1 reports PAGE_COUNTER_MAX pages).
    let limit = |v: Option<u64>| v.filter(|&l| l < (1 << 62)).unwrap_or(0);
    if is_v2(root) {
        let d = root.join(rel);
        let cpu = std::fs::read_to_string(d.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        Usage {
            memory_bytes: read_u64(d.join("memory.current")).unwrap_or(0),
            memory_limit_bytes: limit(read_u64(d.join("memory.max"))),
            cpu_nanos: cpu * 1000,
            pids: read_u64(d.join("pids.current")).unwrap_or(0),
        }
    } else {
        Usage {
            memory_bytes: read_u64(root.join("memory").join(rel).join("memory.usage_in_bytes"))
                .unwrap_or(0),
            memory_limit_bytes: limit(read_u64(
                root.join("memory").join(rel).join("memory.limit_in_bytes"),
            )),
            cpu_nanos: read_u64(root.join("cpuacct").join(rel).join("cpuacct.usage")).unwrap_or(0),
            pids: read_u64(root.join("pids").join(rel).join("pids.current")).unwrap_or(0),
        }
    }
}

/// Pids in the container's cgroup `cgroup` (its record's `cgroup_path()`).
pub fn pids(root: &Path, cgroup: &str) -> Vec<i32> {
    let rel = cgroup.trim_start_matches('/');
    let file = if is_v2(root) {
        root.join(rel).join("cgroup.procs")
    } else {
        root.join("pids").join(rel).join("cgroup.procs")
    };
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// One `top` row: UID, PID, PPID, CMD (docker's default columns).
pub fn process_row(pid: i32) -> Option<Vec<String>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut cmd: String = cmd
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if cmd.is_empty() {
        cmd = format!("[{}]", field("Name:"));
    }
    Some(vec![field("Uid:"), pid.to_string(), field("PPid:"), cmd])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_layouts() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for (ctrl, file, val) in [
            ("memory", "memory.usage_in_bytes", "4096"),
            ("memory", "memory.limit_in_bytes", "9223372036854771712"),
            ("cpuacct", "cpuacct.usage", "77"),
            ("pids", "pids.current", "3"),
            ("pids", "cgroup.procs", "10\n11\n"),
        ] {
            let p = root.join(ctrl).join("gantry/c1");
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join(file), val).unwrap();
        }
        assert_eq!(
            usage(root, "/gantry/c1"),
            Usage {
                memory_bytes: 4096,
                memory_limit_bytes: 0,
                cpu_nanos: 77,
                pids: 3
            }
        );
        assert_eq!(pids(root, "/gantry/c1"), vec![10, 11]);

        let d2 = tempfile::tempdir().unwrap();
        let root = d2.path();
        std::fs::write(root.join("cgroup.controllers"), "memory pids").unwrap();
        let p = root.join("gantry/c1");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("memory.current"), "100").unwrap();
        std::fs::write(p.join("memory.max"), "1048576").unwrap();
        std::fs::write(p.join("cpu.stat"), "usage_usec 5\nuser_usec 3\n").unwrap();
        std::fs::write(p.join("pids.current"), "1").unwrap();
        assert_eq!(
            usage(root, "/gantry/c1"),
            Usage {
                memory_bytes: 100,
                memory_limit_bytes: 1 << 20,
                cpu_nanos: 5000,
                pids: 1
            }
        );
    }

    #[test]
    fn top_row_of_self() {
        let row = process_row(std::process::id() as i32).unwrap();
        assert_eq!(row[1], std::process::id().to_string());
        assert_eq!(row.len(), 4);
    }
}

//! Real cgroup tests (root; CI runs as root). Every test uses its own uniquely named group
//! and removes it, and the processes it started, even when it fails (Drop guards).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResources, LinuxResourcesBuilder,
};

use super::*;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates cgroups and must run as root (CI runs the tests as root)"
    );
}

/// `gantry-test-<pid>-<random>`: unique across parallel tests and developers.
fn unique(tag: &str) -> String {
    format!(
        "gantry-test-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Destroys the group and kills the children when the test ends, however it ends.
struct Guard {
    cg: CgroupManager,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.destroy();
    }
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawning `sleep 30` (coreutils) for the test")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn v1_mount(controller: &str) -> PathBuf {
    match host().unwrap() {
        Host::V1(mounts) => mounts
            .iter()
            .find(|(_, cs)| cs.iter().any(|c| c == controller))
            .unwrap_or_else(|| panic!("no v1 hierarchy with {controller}"))
            .0
            .clone(),
        Host::V2(_) => panic!("these tests expect the cgroup v1 hosts gantry's CI runs on"),
    }
}

fn limits() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .swap(128i64 << 20)
                .reservation(32i64 << 20)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(16).build().unwrap())
        .build()
        .unwrap()
}

#[test]
fn relative_paths_are_checked() {
    assert_eq!(
        relative_cgroups_path("/gantry/abc").unwrap(),
        PathBuf::from("gantry/abc")
    );
    assert_eq!(
        relative_cgroups_path("gantry/abc").unwrap(),
        PathBuf::from("gantry/abc")
    );
    for bad in ["", "/", "../x", "gantry/../../etc", "a/./b", "a//b", "a/\0"] {
        let e = relative_cgroups_path(bad).unwrap_err().to_string();
        assert!(e.contains("linux.cgroupsPath"), "{bad:?}: {e}");
    }
}

#[test]
fn v1_limits_are_written_then_destroy_leaves_no_dir() {
    require_root();
    let top = unique("limits");
    let path = format!("/{top}/ctr");
    let g = Guard {
        cg: CgroupManager::new(&path).unwrap(),
        children: vec![],
    };
    assert_eq!(g.cg.version(), CgroupVersion::V1);
    g.cg.create(Some(&limits())).unwrap();

    let mem = v1_mount("memory").join(&top).join("ctr");
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), "134217728");
    assert_eq!(read(&mem.join("memory.soft_limit_in_bytes")), "33554432");
    let cpu = v1_mount("cpu").join(&top).join("ctr");
    assert_eq!(read(&cpu.join("cpu.shares")), "512");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    let cpuset = v1_mount("cpuset").join(&top).join("ctr");
    assert_eq!(read(&cpuset.join("cpuset.cpus")), "0");
    assert!(
        !read(&cpuset.join("cpuset.mems")).is_empty(),
        "mems inherited"
    );
    let pids = v1_mount("pids").join(&top).join("ctr");
    assert_eq!(read(&pids.join("pids.max")), "16");

    let dirs = g.cg.dirs();
    assert!(dirs.len() >= 5, "one dir per hierarchy: {dirs:?}");
    assert!(dirs.iter().all(|d| d.is_dir()));
    g.cg.destroy().unwrap();
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
        assert!(
            !d.parent().unwrap().exists(),
            "parent {} made by the manager left behind",
            d.parent().unwrap().display()
        );
    }
    // Idempotent.
    g.cg.destroy().unwrap();
}

#[test]
fn add_task_moves_a_real_process_and_stats_are_readable() {
    require_root();
    let path = unique("task");
    let mut g = Guard {
        cg: CgroupManager::new(&path).unwrap(),
        children: vec![],
    };
    g.cg.create(Some(&limits())).unwrap();
    g.children.push(sleeper());
    let pid = Pid::from_raw(g.children[0].id() as i32);
    g.cg.add_task(pid).unwrap();

    assert_eq!(g.cg.pids().unwrap(), vec![pid]);
    let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
    for controller in ["memory", "pids", "cpu", "cpuset"] {
        assert!(
            own.lines()
                .any(|l| l.contains(controller) && l.ends_with(&format!("/{path}"))),
            "{controller} not joined: {own}"
        );
    }
    let s = g.cg.stats().unwrap();
    assert_eq!(s.pids_current, Some(1));
    assert_eq!(s.pids_limit, Some(16));
    assert_eq!(s.memory_limit_bytes, Some(64 << 20));
    assert_eq!(s.oom_kills, Some(0));
    assert!(s.memory_usage_bytes.is_some());
    assert!(s.cpu_usage_ns.is_some());

    // A live process keeps the group: destroy reports it by pid instead of hiding it.
    match g.cg.destroy() {
        Err(CgroupError::InUse { pids, .. }) => assert_eq!(pids, vec![pid.as_raw()]),
        other => panic!("destroy with a live task: {other:?}"),
    }
    let mut child = g.children.pop().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    g.cg.destroy().unwrap();
    assert!(g.cg.dirs().iter().all(|d| !d.exists()));
}

#[test]
fn unlimited_group_has_no_limits_and_no_resources_is_fine() {
    require_root();
    let path = unique("nolimits");
    let g = Guard {
        cg: CgroupManager::new(&path).unwrap(),
        children: vec![],
    };
    g.cg.create(None).unwrap();
    let s = g.cg.stats().unwrap();
    assert_eq!(s.memory_limit_bytes, None);
    assert_eq!(s.pids_limit, None);
    assert_eq!(s.pids_current, Some(0));
}

#[test]
fn invalid_value_names_the_field_and_creates_nothing() {
    require_root();
    let top = unique("invalid");
    let cg = CgroupManager::new(&format!("{top}/ctr")).unwrap();
    let bad = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(-5).build().unwrap())
        .build()
        .unwrap();
    let e = cg.create(Some(&bad)).unwrap_err().to_string();
    assert!(e.contains("linux.resources.memory.limit"), "{e}");
    assert!(!v1_mount("memory").join(&top).exists());
    assert!(cg.dirs().iter().all(|d| !d.parent().unwrap().exists()));
}

#[test]
fn kernel_rejected_value_cleans_up_every_dir() {
    require_root();
    let top = unique("rejected");
    let cg = CgroupManager::new(&format!("{top}/ctr")).unwrap();
    // Well-formed, but no such CPU: the kernel refuses it after the dirs exist.
    let bad = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().cpus("4000").build().unwrap())
        .build()
        .unwrap();
    let e = cg.create(Some(&bad)).unwrap_err();
    assert!(e.to_string().contains("linux.resources.cpu.cpus"), "{e}");
    for d in cg.dirs() {
        assert!(!d.parent().unwrap().exists(), "{} left behind", d.display());
    }
}

#[test]
fn stale_empty_leaf_is_replaced_with_fresh_limits() {
    require_root();
    let path = unique("stale");
    let mem = v1_mount("memory").join(&path);
    std::fs::create_dir(&mem).unwrap();
    std::fs::write(mem.join("memory.limit_in_bytes"), "8388608").unwrap();
    let g = Guard {
        cg: CgroupManager::new(&path).unwrap(),
        children: vec![],
    };
    g.cg.create(None).unwrap();
    assert_eq!(g.cg.stats().unwrap().memory_limit_bytes, None);
}

/// The empty cgroup2 hierarchy of a hybrid host: no limits controllers (they are bound to
/// v1) but hugetlb, and real groups, tasks and removal.
fn unified_root() -> PathBuf {
    let root = PathBuf::from("/sys/fs/cgroup/unified");
    assert!(
        root.join("cgroup.controllers").exists(),
        "this test needs the cgroup2 hierarchy at {} (hybrid cgroup host)",
        root.display()
    );
    root
}

#[test]
fn v2_group_on_unified_hierarchy_takes_tasks_and_hugetlb_limits() {
    require_root();
    let root = unified_root();
    let top = unique("v2");
    let mut g = Guard {
        cg: CgroupManager::new_v2_at(&root, &format!("{top}/ctr")).unwrap(),
        children: vec![],
    };
    assert_eq!(g.cg.version(), CgroupVersion::V2);
    let available = read(&root.join("cgroup.controllers"));
    let resources = if available.split_whitespace().any(|c| c == "hugetlb") {
        Some(
            LinuxResourcesBuilder::default()
                .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                    .page_size("2MB")
                    .limit(4i64 << 21)
                    .build()
                    .unwrap()])
                .build()
                .unwrap(),
        )
    } else {
        None
    };
    g.cg.create(resources.as_ref()).unwrap();
    let dir = root.join(&top).join("ctr");
    if resources.is_some() {
        assert_eq!(read(&dir.join("hugetlb.2MB.max")), (4u64 << 21).to_string());
        assert!(read(&root.join(&top).join("cgroup.subtree_control")).contains("hugetlb"));
    }
    g.children.push(sleeper());
    let pid = Pid::from_raw(g.children[0].id() as i32);
    g.cg.add_task(pid).unwrap();
    assert_eq!(g.cg.pids().unwrap(), vec![pid]);
    let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
    assert!(own.lines().any(|l| l == format!("0::/{top}/ctr")), "{own}");
    let mut child = g.children.pop().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    g.cg.destroy().unwrap();
    assert!(!dir.exists());
    assert!(
        !root.join(&top).exists(),
        "parent made by the manager left behind"
    );
}

#[test]
fn v2_missing_controller_names_the_field_and_creates_nothing() {
    require_root();
    let root = unified_root();
    let available = read(&root.join("cgroup.controllers"));
    assert!(
        !available.split_whitespace().any(|c| c == "memory"),
        "expected memory to be bound to v1 on this hybrid host: {available}"
    );
    let top = unique("v2missing");
    let cg = CgroupManager::new_v2_at(&root, &format!("{top}/ctr")).unwrap();
    let e = cg.create(Some(&limits())).unwrap_err().to_string();
    assert!(
        e.contains("linux.resources.memory.limit") && e.contains("memory"),
        "{e}"
    );
    assert!(!root.join(&top).exists());
}

/// create + add_task + destroy cost, printed (a measurement, not an assertion):
/// `cargo test -p gantry-agent --release --lib cgroup_lifecycle_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn cgroup_lifecycle_cost() {
    require_root();
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(64).build().unwrap())
        .build()
        .unwrap();
    let mut child = sleeper();
    let pid = Pid::from_raw(child.id() as i32);
    let parent = unique("bench");
    let mut samples = Vec::new();
    for i in 0..300 {
        let path = format!("{parent}/c{i}");
        let t = std::time::Instant::now();
        let cg = CgroupManager::new(&path).unwrap();
        cg.create(Some(&r)).unwrap();
        cg.add_task(pid).unwrap();
        // Move the task out again, as its exit would, so destroy can remove the group.
        for d in cg.dirs() {
            let root_procs = d.parent().unwrap().parent().unwrap().join("cgroup.procs");
            std::fs::write(root_procs, pid.to_string()).unwrap();
        }
        cg.destroy().unwrap();
        samples.push(t.elapsed());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for (mount, _) in match host().unwrap() {
        Host::V1(m) => m.clone(),
        Host::V2(_) => vec![],
    } {
        let _ = std::fs::remove_dir(mount.join(&parent));
    }
    samples.sort();
    println!(
        "cgroup create(memory+pids limits)+add_task+destroy over {} runs: median {:?}, p90 {:?}",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() * 9 / 10]
    );
}

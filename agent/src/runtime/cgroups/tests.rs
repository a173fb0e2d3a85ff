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
        // Anything else a failed test left in the group (grandchildren) is killed too.
        for _ in 0..200 {
            match self.cg.pids() {
                Ok(pids) if !pids.is_empty() => {
                    for p in pids {
                        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => break,
            }
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
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..300 {
        let path = format!("{parent}/c{i}");
        let t = std::time::Instant::now();
        let cg = CgroupManager::new(&path).unwrap();
        cg.create(Some(&r)).unwrap();
        let t1 = t.elapsed();
        cg.add_task(pid).unwrap();
        let t2 = t.elapsed();
        // Move the task out again, as its exit would, so destroy can remove the group
        // (not timed).
        for d in cg.dirs() {
            let root_procs = d.parent().unwrap().parent().unwrap().join("cgroup.procs");
            std::fs::write(root_procs, pid.to_string()).unwrap();
        }
        let t3 = t.elapsed();
        cg.destroy().unwrap();
        let total = t.elapsed() - (t3 - t2);
        phases[0].push(t1);
        phases[1].push(t2 - t1);
        phases[2].push(total - t2);
        samples.push(total);
    }
    for (name, mut v) in ["create", "add_task", "destroy"].into_iter().zip(phases) {
        v.sort();
        println!(
            "  {name}: median {:?}, p90 {:?}",
            v[v.len() / 2],
            v[v.len() * 9 / 10]
        );
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

/// A fresh cgroup2 mount in a private mount namespace of a forked child (never the test
/// harness's namespace): the v2 manager works on any mount point, and the mount dies with
/// the child.
#[test]
fn v2_on_a_fresh_cgroup2_mount_in_a_private_namespace() {
    use crate::runtime::seccomp::tests::in_child;
    require_root();
    let mnt = tempfile::tempdir().unwrap();
    let path = unique("v2mnt");
    let r = in_child(|| {
        use nix::mount::{mount, MsFlags};
        if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
            return 2;
        }
        if mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .is_err()
        {
            return 3;
        }
        if let Err(e) = mount(
            Some("none"),
            mnt.path(),
            Some("cgroup2"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            crate::runtime::seccomp::tests::say(&format!("mount cgroup2: {e}\n"));
            return 4;
        }
        let cg = match CgroupManager::new_v2_at(mnt.path(), &format!("{path}/ctr")) {
            Ok(cg) => cg,
            Err(_) => return 5,
        };
        if let Err(e) = cg.create(None) {
            crate::runtime::seccomp::tests::say(&format!("create: {e}\n"));
            return 6;
        }
        let me = nix::unistd::getpid();
        if cg.add_task(me).is_err() || cg.pids().ok() != Some(vec![me]) {
            return 7;
        }
        // Leave again (as an exiting task would), then remove.
        if std::fs::write(mnt.path().join("cgroup.procs"), me.to_string()).is_err() {
            return 8;
        }
        if let Err(e) = cg.destroy() {
            crate::runtime::seccomp::tests::say(&format!("destroy: {e}\n"));
            return 9;
        }
        if mnt.path().join(&path).exists() {
            return 10;
        }
        0
    });
    assert_eq!(r.code, Some(0), "{r:?}");
    // The mount lived only in the child's namespace; the group is gone from the hierarchy.
    assert!(std::fs::read_dir(mnt.path()).unwrap().next().is_none());
    assert!(!Path::new("/sys/fs/cgroup/unified").join(&path).exists());
}

/// Spawns `busybox sh -c script` held on `read` until it has joined the group, then lets it
/// run; returns its exit status (bounded wait: killed after 20 s).
fn run_in_group(g: &mut Guard, script: &str) -> std::process::ExitStatus {
    use std::io::Write;
    assert!(
        Path::new("/bin/busybox").exists(),
        "this test runs /bin/busybox (busybox-static, installed by scripts/setup.sh)"
    );
    let mut child = Command::new("/bin/busybox")
        .args(["sh", "-c", &format!("read go; {script}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    g.cg.add_task(Pid::from_raw(child.id() as i32)).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            g.children.push(child);
            panic!("the process in the cgroup did not finish within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    require_root();
    let mut g = Guard {
        cg: CgroupManager::new(&unique("oom")).unwrap(),
        children: vec![],
    };
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(16i64 << 20)
                .swap(16i64 << 20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    g.cg.create(Some(&r)).unwrap();
    // The shell keeps 64 MiB in a variable: past the 16 MiB limit, with no swap allowed.
    let status = run_in_group(
        &mut g,
        "x=$(/bin/busybox head -c 67108864 /dev/zero | /bin/busybox tr '\\0' a); echo ${#x}",
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let s = g.cg.stats().unwrap();
    assert!(s.oom_kills.unwrap() >= 1, "{s:?}");
    assert_eq!(s.memory_limit_bytes, Some(16 << 20));
    assert!(s.memory_max_usage_bytes.unwrap() > 8 << 20, "{s:?}");
}

#[test]
fn pids_limit_contains_a_fork_bomb() {
    require_root();
    let mut g = Guard {
        cg: CgroupManager::new(&unique("pids")).unwrap(),
        children: vec![],
    };
    let r = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(8).build().unwrap())
        .build()
        .unwrap();
    g.cg.create(Some(&r)).unwrap();
    // 30 background sleepers; only 8 tasks fit (the shell is one): the other forks fail.
    let status = run_in_group(
        &mut g,
        "i=0; while [ $i -lt 30 ]; do /bin/busybox sleep 5 & i=$((i+1)); done",
    );
    // The shell may itself die of a refused fork: its status says nothing here.
    let _ = status;
    let s = g.cg.stats().unwrap();
    assert_eq!(s.pids_limit, Some(8));
    assert!(s.pids_current.unwrap() <= 8, "{s:?}");
    let pids_dir =
        g.cg.dirs()
            .into_iter()
            .find(|d| d.starts_with(v1_mount("pids")))
            .unwrap();
    let events = read(&pids_dir.join("pids.events"));
    let refused: u64 = events
        .strip_prefix("max ")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("pids.events: {events}"));
    assert!(refused >= 1, "no fork was refused: {events}");
    // The orphaned sleepers are still in the group: kill them, then the group can go.
    for p in g.cg.pids().unwrap() {
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !g.cg.pids().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "killed sleepers did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    g.cg.destroy().unwrap();
    assert!(!pids_dir.exists());
}

#[test]
fn default_spec_device_rules_deny_all_but_the_default_nodes() {
    require_root();
    let g = Guard {
        cg: CgroupManager::new(&unique("devices")).unwrap(),
        children: vec![],
    };
    let spec = crate::runtime::defaults::default_spec(vec!["sh".into()]);
    let resources = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
    g.cg.create(Some(resources)).unwrap();
    let dir =
        g.cg.dirs()
            .into_iter()
            .find(|d| d.starts_with(v1_mount("devices")))
            .unwrap();
    let list = read(&dir.join("devices.list"));
    assert!(!list.contains("a *:* rwm"), "{list}");
    for rule in [
        "c 1:3 rwm",
        "c 1:9 rwm",
        "c 136:* rwm",
        "c *:* m",
        "b *:* m",
    ] {
        assert!(list.lines().any(|l| l == rule), "{rule} missing: {list}");
    }
}

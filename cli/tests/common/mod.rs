//! Helpers for the runtime integration tests: busybox bundles in temp dirs, running the
//! `gantry` binary with a time bound, and checks that nothing is left behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn gantry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gantry")
}

/// A busybox root filesystem: /bin/busybox and one link per applet, /etc/passwd, /etc/group.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    root
}

/// A free port on a loopback address (bound then released), below the kernel's ephemeral
/// range: a port picked there with bind(0) could become the source port of some test's
/// outgoing connection before the daemon it is meant for binds it ("Address already in
/// use"). Never the same port twice in one test binary.
pub fn free_addr(ip: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let first_ephemeral: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    const LOWEST: u32 = 10_000;
    assert!(
        first_ephemeral > LOWEST + 1_000,
        "ip_local_port_range starts at {first_ephemeral}: no room below it for test ports"
    );
    let span = first_ephemeral - LOWEST;
    // Test binaries run side by side: each starts at its own offset (its pid).
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() * 97 % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(l) = std::net::TcpListener::bind(format!("{ip}:{port}")) {
            return l.local_addr().unwrap().to_string();
        }
    }
    panic!("no free port on {ip} between {LOWEST} and {first_ephemeral}");
}

pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap();
    assert_eq!(
        uid, "0",
        "these tests create namespaces, mounts and cgroups: run them as root"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox (busybox-static) is needed: run scripts/setup.sh"
    );
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A test's runtime root, bundles and container ids; deletes its containers on drop.
pub struct Rt {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    prefix: String,
    seq: std::sync::atomic::AtomicU32,
}

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn proc_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z' && state != 'X'
        }
        Err(_) => false,
    }
}

/// Rewrites a bundle's config.json.
pub fn edit(bundle: &Path, f: impl FnOnce(&mut Value)) {
    let p = bundle.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Waits (bounded) for a gantry process whose stdout/stderr go to files: a created
/// container inherits them, so pipes would never reach EOF.
pub fn wait_child(mut child: Child, out: &Path, err: &Path) -> Out {
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gantry did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    }
}

pub struct Running(Child, PathBuf, PathBuf);
impl Running {
    pub fn wait(self) -> Out {
        wait_child(self.0, &self.1, &self.2)
    }
}

impl Rt {
    pub fn new(name: &str) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix(&format!("gantry-rt-{name}-"))
            .tempdir()
            .unwrap();
        let root = dir.path().join("state");
        Self {
            dir,
            root,
            prefix: format!("{name}-{}", std::process::id()),
            seq: Default::default(),
        }
    }

    /// A unique container id for this test.
    pub fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A busybox bundle (rootfs with one symlink per applet) with a minimal config.json,
    /// changed by `f`.
    pub fn bundle(&self, name: &str, args: &[&str], f: impl FnOnce(&mut Value)) -> PathBuf {
        let b = self.dir.path().join(format!("bundle-{name}"));
        let rootfs = b.join("rootfs");
        for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                "cwd": "/",
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "gtest-host",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}
                ]
            }
        });
        f(&mut spec);
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        b
    }

    fn cmd(&self, args: &[&str]) -> (Command, PathBuf, PathBuf) {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.dir.path().join(format!("out-{n}"));
        let err = self.dir.path().join(format!("err-{n}"));
        let mut c = Command::new(gantry_bin());
        c.arg("runtime").arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        (c, out, err)
    }

    /// Runs `gantry runtime --root <root> ARGS…` with a time bound.
    pub fn gantry(&self, args: &[&str]) -> Out {
        let (mut c, out, err) = self.cmd(args);
        wait_child(c.spawn().unwrap(), &out, &err)
    }

    pub fn spawn(&self, args: &[&str]) -> Running {
        let (mut c, out, err) = self.cmd(args);
        Running(c.spawn().unwrap(), out, err)
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.gantry(&["state", id]);
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str(&out.stdout).unwrap()
    }

    pub fn wait_status(&self, id: &str, status: &str) {
        wait_until(
            || {
                let out = self.gantry(&["state", id]);
                out.code == 0
                    && serde_json::from_str::<Value>(&out.stdout).unwrap()["status"] == status
            },
            &format!("{id} to be {status}"),
        );
    }

    /// No state dir, no cgroup dir, no mount under this test's dir, and no process whose
    /// root directory is one of this test's bundles.
    pub fn assert_no_container(&self, name: &str) {
        let id = self.id(name);
        assert!(
            !self.root.join(&id).exists(),
            "state dir of {id} left behind"
        );
        for hier in [
            "memory",
            "pids",
            "cpu,cpuacct",
            "devices",
            "freezer",
            "blkio",
            "cpuset",
            "unified",
            "",
        ] {
            let p = Path::new("/sys/fs/cgroup")
                .join(hier)
                .join("gantry")
                .join(&id);
            assert!(!p.exists(), "cgroup {} left behind", p.display());
        }
        let dir = self.dir.path().to_str().unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(dir),
            "mount under {dir} left behind: {mounts}"
        );
        let procs = processes_rooted_under(self.dir.path());
        assert!(
            procs.is_empty(),
            "processes rooted under {dir} left behind: {procs:?}"
        );
    }
}

/// Pids whose root directory (`/proc/PID/root`) lies under `dir`: container processes.
pub fn processes_rooted_under(dir: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r.starts_with(dir))
                && proc_alive(*pid)
        })
        .collect()
}

/// Where a cgroup `parent` (an agent's `--cgroup-parent`) would be: under each v1
/// hierarchy and the v2 tree (the unified root itself on a v2 host).
pub fn cgroup_parent_dirs(parent: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(parent)];
    }
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) // not the cpu -> cpu,cpuacct links
        .map(|e| e.path().join(parent))
        .collect()
}

/// The cgroups (directories) under `parent` in every hierarchy: a test agent's containers
/// and build steps.
pub fn cgroup_children(parent: &str) -> Vec<PathBuf> {
    cgroup_parent_dirs(parent)
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Best effort, for clean-up: removes the (empty) cgroups under `parent`, then `parent`,
/// in every hierarchy.
pub fn remove_cgroup_parent(parent: &str) {
    for d in cgroup_children(parent) {
        let _ = std::fs::remove_dir(d);
    }
    for d in cgroup_parent_dirs(parent) {
        let _ = std::fs::remove_dir(d);
    }
}

/// Fails if any container cgroup is left under `parent` (waiting up to 10 s for removals
/// in flight), then removes the parent itself everywhere. Leftovers are cleaned before
/// failing (their processes SIGKILLed, their directories removed), so a failed run does
/// not leak either. (A container's processes are found by cgroup: `/proc/PID/root` of a
/// process in another mount namespace reads as `/`.)
pub fn assert_cgroups_gone(parent: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = cgroup_children(parent);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = cgroup_children(parent);
    }
    let mut procs: Vec<i32> = Vec::new();
    for d in &left {
        let list = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        procs.extend(list.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    procs.sort_unstable();
    procs.dedup();
    for p in &procs {
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let removed = Instant::now() + Duration::from_secs(5);
    for d in &left {
        while std::fs::remove_dir(d).is_err() && d.exists() && Instant::now() < removed {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    remove_cgroup_parent(parent);
    assert!(
        left.is_empty(),
        "container cgroups left behind: {left:#?}, with processes {procs:?}"
    );
    let parents: Vec<PathBuf> = cgroup_parent_dirs(parent)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(
        parents.is_empty(),
        "cgroup parent not removable: {parents:#?}"
    );
}

/// Pids (not this process) whose command line names `needle`: the shims of a test's
/// agents name the test's dir.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Fails if a process (a shim, a daemon) still names `dir` on its command line, after
/// SIGKILLing them so that a failure leaks nothing.
pub fn assert_no_processes_mentioning(dir: &Path) {
    let needle = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = processes_mentioning(&needle);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_mentioning(&needle);
    }
    let cmds: Vec<String> = left
        .iter()
        .map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&c).replace('\0', " "))
        })
        .collect();
    for p in &left {
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "processes left: {cmds:#?}");
}

impl Drop for Rt {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self.cmd(&["delete", "--force", &id]).0.status();
        }
    }
}

pub mod cluster;

/// Writes a one-layer OCI layout in `dir` naming its image by tag `1` only (as skopeo
/// does): the layer tar and the image config's `config` object (run settings) given; the
/// manifest's and the layer's digests.
pub fn oci_layout(
    dir: &Path,
    layer: &[u8],
    run_config: Value,
) -> (gantry_agent::image::Digest, gantry_agent::image::Digest) {
    use gantry_agent::image::Digest;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        (d, data.len())
    };
    let (ld, ls) = put(layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2026-11-28T00:00:00Z",
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": [ld.to_string()]},
    }))
    .unwrap();
    let (cd, cs) = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}],
    }))
    .unwrap();
    let (md, ms) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                "annotations": {"org.opencontainers.image.ref.name": "1"}}],
        }))
        .unwrap(),
    )
    .unwrap();
    (md, ld)
}

/// Writes an OCI layout of a root filesystem directory as one layer (Cmd `sh`, Env PATH
/// and FROM_IMAGE=yes, WorkingDir /root), naming its image by tag `1` only; its path.
pub fn rootfs_layout(rootfs: &Path, dir: &Path) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", rootfs).unwrap();
    let layer = b.into_inner().unwrap();
    oci_layout(
        dir,
        &layer,
        json!({"Cmd": ["sh"], "Env": ["PATH=/bin", "FROM_IMAGE=yes"], "WorkingDir": "/root"}),
    );
    dir.to_path_buf()
}

//! The engine end to end, as root: a real `gantry agent` on a temp root and socket, real
//! shims, containers of gantry's own runtime from a busybox root filesystem the test writes itself. Every
//! test's agent is killed by PID in a Drop guard that also removes its containers, mounts,
//! cgroups and processes, and the leak checks look for exactly those.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gantry_agent::network::{host_veth_name, BridgeConfig, BridgeNetwork};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_gantry");

fn require_root() {
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the engine tests create containers (namespaces, cgroups, mounts): run them as root"
        );
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "the engine tests need /bin/busybox (scripts/setup.sh installs busybox-static)"
    );
}

/// The common busybox root filesystem plus a file the lifecycle test deletes.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = common::busybox_rootfs(dir);
    std::fs::write(root.join("etc/deleted-later"), "base file\n").unwrap();
    root
}

static AGENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

struct Agent {
    /// This agent's own bridge, subnet and chain prefix, so tests run in parallel.
    net: BridgeConfig,
    dir: tempfile::TempDir,
    child: Option<Child>,
    rootfs: PathBuf,
    /// Ids of containers the test made, for the leak checks and the cleanup.
    seen: std::cell::RefCell<Vec<String>>,
    /// This agent's own `--cgroup-parent`: its containers are at PARENT/ID.
    cgroup_parent: String,
}

impl Agent {
    fn start() -> Agent {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("gantry-engine-test")
            .tempdir()
            .unwrap();
        let rootfs = busybox_rootfs(dir.path());
        let n = AGENTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let net = BridgeConfig::custom(
            dir.path().join("root/network"),
            &format!("gte{}x{n}", pid % 100_000),
            &format!("10.{}.{}.0/24", 180 + n % 40, pid % 256),
            &format!("GTE{pid}X{n}"),
        )
        .unwrap();
        let cgroup_parent = common::cluster::cgroup_parent(dir.path(), "engine");
        let mut a = Agent {
            net,
            dir,
            child: None,
            rootfs,
            seen: Default::default(),
            cgroup_parent,
        };
        a.spawn();
        a
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("agent.sock").display())
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let _ = std::fs::remove_file(d.join("agent.sock"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("agent.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["agent", "--root"])
            .arg(d.join("root"))
            .arg("--run-root")
            .arg(d.join("run"))
            .args(["--host", &self.host()])
            .args(["--bridge", &self.net.bridge])
            .args(["--subnet", &self.net.subnet.to_string()])
            .args(["--chain-prefix", &self.net.chain_prefix])
            .args(["--cgroup-parent", &self.cgroup_parent])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning gantry agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if d.join("agent.sock").exists() && self.gantry(&["ps"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not come up: {}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// SIGKILL the agent (containers keep running under their shims).
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn gantry(&self, args: &[&str]) -> Output {
        self.gantry_in(args, None)
    }

    fn gantry_in(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("GANTRY_HOST", self.host())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = c.spawn().unwrap();
        if let Some(data) = stdin {
            use std::io::Write;
            let mut w = child.stdin.take().unwrap();
            w.write_all(data).unwrap();
        }
        wait_bounded(child, Duration::from_secs(60), args)
    }

    /// `gantry ARGS` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.gantry(args);
        assert!(
            o.status.success(),
            "gantry {args:?} failed ({}): {}\nagent log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.agent_log()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `gantry ARGS` that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.gantry(args);
        assert!(
            !o.status.success(),
            "gantry {args:?} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).unwrap()
    }

    fn rootfs(&self) -> &str {
        self.rootfs.to_str().unwrap()
    }

    /// `run` with the test's rootfs and no network, plus `extra` flags, then the command.
    fn run_args<'a>(&'a self, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run", "--network", "none", "--rootfs", self.rootfs()];
        v.extend_from_slice(extra);
        v.extend_from_slice(cmd);
        v
    }

    fn inspect(&self, c: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", c])).unwrap();
        v[0].clone()
    }

    fn state(&self, c: &str) -> String {
        self.inspect(c)["state"]["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn wait_state(&self, c: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.state(c) != want {
            assert!(
                Instant::now() < deadline,
                "{c} never became {want}: {}",
                self.inspect(c)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ids(&self) -> Vec<String> {
        self.ok(&["ps", "-a", "--format", "json"])
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["ID"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Nothing of this agent's is left: no mounts under its dir, no cgroups or processes
    /// of containers not in `keep`.
    fn assert_no_leaks(&self, keep: &[String]) {
        let d = self.dir.path().to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let stray: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&d) && !keep.iter().any(|k| l.contains(k.as_str())))
            .collect();
        assert!(stray.is_empty(), "mounts left behind: {stray:#?}");
        // Any cgroup under this agent's parent, known to the test or not.
        for cg in common::cgroup_children(&self.cgroup_parent) {
            let id = cg.file_name().unwrap().to_string_lossy().into_owned();
            assert!(keep.contains(&id), "cgroup {} left behind", cg.display());
        }
        self.assert_no_network_leaks(keep);
        for p in common::processes_mentioning(&d) {
            let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
            assert!(
                keep.iter().any(|k| cmd.contains(k.as_str()))
                    || self.child.as_ref().map(|c| c.id() as i32) == Some(p),
                "process {p} left behind: {cmd:?}"
            );
        }
    }

    /// The bridge holds nothing of containers not in `keep`: no veth, no DNAT rule, no
    /// lease, no netns file (checked with the system's tools, not the agent's code).
    fn assert_no_network_leaks(&self, keep: &[String]) {
        let ports = sh("ip", &["-o", "link", "show", "master", &self.net.bridge]);
        let wanted: Vec<String> = keep
            .iter()
            .map(|k| host_veth_name(&self.net.bridge, k))
            .collect();
        for line in ports.lines() {
            assert!(
                wanted.iter().any(|w| line.contains(&format!(" {w}@"))),
                "veth left on {}: {line}",
                self.net.bridge
            );
        }
        let dnat = self.dnat_rules();
        for rule in &dnat {
            assert!(
                keep.iter().any(|k| rule.contains(k.as_str())),
                "DNAT rule left behind: {rule}"
            );
        }
        let leases = std::fs::read_to_string(self.net.lease_path()).unwrap_or_default();
        let leases: serde_json::Value =
            serde_json::from_str(if leases.is_empty() { "{}" } else { &leases }).unwrap();
        if let Some(m) = leases["leases"].as_object() {
            for id in m.keys() {
                assert!(keep.contains(id), "lease of {id} left behind");
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("run/netns")) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                assert!(keep.contains(&id), "netns file of {id} left behind");
            }
        }
    }

    /// This agent's DNAT rules (`iptables-save -t nat`, its chain only).
    fn dnat_rules(&self) -> Vec<String> {
        let chain = format!("-A {} ", self.net.dnat_chain());
        sh("iptables-save", &["-t", "nat"])
            .lines()
            .filter(|l| l.starts_with(&chain))
            .map(str::to_string)
            .collect()
    }

    fn remember(&self, id: &str) {
        self.seen.borrow_mut().push(id.to_string());
    }

    /// Every container id this agent ever had a directory for.
    fn known_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for sub in ["root/containers", "run/containers"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.path().join(sub)) {
                ids.extend(
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        ids.extend(self.seen.borrow().iter().cloned());
        ids
    }
}

fn wait_bounded(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "gantry {what:?} did not finish within {limit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Remove containers through the agent if it is up, then make sure by hand.
        if self.child.is_some() {
            for id in self.ids() {
                let _ = self.gantry(&["rm", "-f", &id]);
            }
        }
        self.kill9();
        let d = self.dir.path().to_string_lossy().to_string();
        for p in common::processes_mentioning(&d) {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let runtime_root = self.dir.path().join("run/runtime");
        for id in self.known_ids() {
            let _ = Command::new(BIN)
                .arg("runtime")
                .arg("--root")
                .arg(&runtime_root)
                .args(["delete", "--force", &id])
                .output();
        }
        // Whatever is left under this agent's cgroup parent, then the parent.
        common::remove_cgroup_parent(&self.cgroup_parent);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in mounts.lines() {
            if let Some(m) = l.split(' ').nth(4) {
                if m.contains(&d) {
                    let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        // The bridge, its veths, the chains and the jumps to them.
        let cfg = self.net.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            match BridgeNetwork::open(cfg).await {
                Ok(net) => {
                    if let Err(e) = net.teardown_all().await {
                        eprintln!("tearing the test bridge down: {e}");
                    }
                }
                Err(e) => eprintln!("opening the test bridge for teardown: {e}"),
            }
        });
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// `gantry agent` runs as the agent-only `gantry-agent` (same PID, same arguments) when
/// that binary sits beside `gantry`, as it does in target/; `GANTRY_AGENT_IN_PROCESS=1`
/// keeps it in `gantry`. Either way it serves the engine API.
#[test]
fn gantry_agent_executes_the_agent_only_binary_beside_it() {
    require_root();
    for (in_process, exe_name) in [(false, "gantry-agent"), (true, "gantry")] {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("a.sock");
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--no-bridge", "--root"])
            .arg(tmp.path().join("root"))
            .arg("--run-root")
            .arg(tmp.path().join("run"))
            .arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .args([
                "--cgroup-parent",
                &format!("gantry-test-slim-{}", std::process::id()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if in_process {
            cmd.env("GANTRY_AGENT_IN_PROCESS", "1");
        } else {
            cmd.env_remove("GANTRY_AGENT_IN_PROCESS");
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let ps = || {
            Command::new(BIN)
                .args(["ps", "-a", "--host"])
                .arg(format!("unix://{}", sock.display()))
                .output()
                .unwrap()
        };
        while !(sock.exists() && ps().status.success()) {
            assert!(
                Instant::now() < deadline,
                "agent ({exe_name}) did not serve"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            exe.file_name().unwrap().to_str().unwrap(),
            exe_name,
            "in_process={in_process}: {}",
            exe.display()
        );
    }
}

#[test]
fn a_bad_cgroup_parent_is_refused_naming_the_flag_and_makes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for (bad, why) in [("../escape", "`..`"), ("a b", "' '"), ("", "is empty")] {
        let root = tmp.path().join("root");
        let out = Command::new(BIN)
            .args(["agent", "--cgroup-parent", bad, "--root"])
            .arg(&root)
            .arg("--run-root")
            .arg(tmp.path().join("run"))
            .arg("--host")
            .arg(format!("unix://{}", tmp.path().join("s.sock").display()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            err.contains("--cgroup-parent") && err.contains(why),
            "{bad:?}: {err}"
        );
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }
}

#[test]
fn foreground_run_streams_output_and_exits_with_the_container_code() {
    let a = Agent::start();
    let o = a.gantry(&a.run_args(&["--rm"], &["sh", "-c", "echo out; echo err >&2; exit 7"]));
    assert_eq!(
        o.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    // --rm removed it.
    assert!(a.ids().is_empty());
    // A command that does not exist: the runtime's error, the engine's exit code.
    let o = a.gantry(&a.run_args(&[], &["/no/such/binary"]));
    assert!(!o.status.success());
    let o = a.gantry(&a.run_args(
        &["-e", "A=1", "-w", "/tmp", "-u", "nobody"],
        &["sh", "-c", "echo $A $(pwd) $(id -u)"],
    ));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1 /tmp 65534\n");
    // -i forwards stdin and closes it at its end.
    let o = a.gantry_in(
        &a.run_args(&["-i", "--rm"], &["sh", "-c", "wc -l"]),
        Some(b"a\nb\nc\n"),
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "3",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for id in a.ids() {
        a.ok(&["rm", &id]);
    }
    a.assert_no_leaks(&[]);
}

#[test]
fn logs_tail_follow_exec_top_stats_and_stop_escalation() {
    let a = Agent::start();
    let script = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done";
    let id = a
        .ok(&a.run_args(&["-d", "--name", "ticker"], &["sh", "-c", script]))
        .trim()
        .to_string();
    a.remember(&id);
    assert_eq!(id.len(), 64);
    std::thread::sleep(Duration::from_millis(700));
    let tail = a.ok(&["logs", "--tail", "2", "ticker"]);
    assert_eq!(lines(&tail).len(), 2, "{tail}");
    let all = a.ok(&["logs", "ticker"]);
    assert!(all.starts_with("line 0\nline 1\n"), "{all}");
    let ts = a.ok(&["logs", "--timestamps", "--tail", "1", "ticker"]);
    assert!(ts.starts_with("20") && ts.contains("Z line "), "{ts}");

    // logs -f follows until the container stops.
    let follow = Command::new(BIN)
        .args(["logs", "-f", "ticker"])
        .env("GANTRY_HOST", a.host())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let o = a.gantry(&[
        "exec",
        "-e",
        "X=42",
        "-w",
        "/etc",
        "ticker",
        "sh",
        "-c",
        "echo $X $(pwd); exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "42 /etc\n");
    let o = a.gantry(&["exec", "-u", "nobody", "ticker", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "65534\n");

    let top = a.ok(&["top", "ticker"]);
    assert!(top.contains("while true"), "{top}");
    let stats = a.ok(&["stats", "--no-stream", "--format", "json", "ticker"]);
    let s: serde_json::Value = serde_json::from_str(stats.lines().next().unwrap()).unwrap();
    assert!(
        s["MemUsage"].as_u64().unwrap() > 0 && s["PIDs"].as_u64().unwrap() >= 1,
        "{s}"
    );

    // sh as pid 1 ignores SIGTERM: stop must escalate to SIGKILL after -t.
    let t0 = Instant::now();
    a.ok(&["stop", "-t", "1", "ticker"]);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "stop returned before its timeout: {took:?}"
    );
    assert_eq!(a.inspect("ticker")["state"]["exit_code"], 137);
    let out = wait_bounded(follow, Duration::from_secs(10), &["logs", "-f"]);
    let followed = String::from_utf8_lossy(&out.stdout);
    assert!(
        followed.starts_with("line 0\n") && lines(&followed).len() >= 7,
        "{followed}"
    );
    a.ok(&["rm", "ticker"]);
    a.assert_no_leaks(&[]);
}

#[test]
fn kill_then_start_keeps_the_container_files() {
    let a = Agent::start();
    let id = a
        .ok(&a.run_args(&["-d", "--name", "keeper"], &["sleep", "1000"]))
        .trim()
        .to_string();
    a.remember(&id);
    a.ok(&[
        "exec",
        "keeper",
        "sh",
        "-c",
        "echo kept > /root/file && rm /etc/deleted-later",
    ]);
    a.ok(&["kill", "keeper"]);
    a.wait_state("keeper", "exited");
    assert_eq!(a.inspect("keeper")["state"]["exit_code"], 137);
    // Stopped: not mounted any more, upper dir kept.
    a.assert_no_leaks(&[]);
    a.ok(&["start", "keeper"]);
    assert_eq!(a.state("keeper"), "running");
    assert_eq!(a.ok(&["exec", "keeper", "cat", "/root/file"]), "kept\n");
    let o = a.gantry(&["exec", "keeper", "cat", "/etc/deleted-later"]);
    assert!(!o.status.success(), "a deleted file came back");
    a.ok(&["restart", "-t", "0", "keeper"]);
    assert_eq!(a.ok(&["exec", "keeper", "cat", "/root/file"]), "kept\n");
    a.ok(&["rm", "-f", "keeper"]);
    assert!(a.ids().is_empty());
    a.assert_no_leaks(&[]);
    // The base rootfs (the lowerdir) was never written.
    assert!(a.rootfs.join("etc/deleted-later").exists());
    assert!(!a.rootfs.join("root/file").exists());
}

#[test]
fn containers_outlive_a_killed_agent_and_a_new_agent_reattaches() {
    let mut a = Agent::start();
    let script = "i=0; while true; do echo beat $i; i=$((i+1)); sleep 0.1; done";
    let live = a
        .ok(&a.run_args(&["-d", "--name", "live"], &["sh", "-c", script]))
        .trim()
        .to_string();
    let short = a
        .ok(&a.run_args(&["-d", "--name", "short"], &["sh", "-c", "sleep 1; exit 5"]))
        .trim()
        .to_string();
    a.remember(&live);
    a.remember(&short);
    let init_pid = a.inspect("live")["state"]["init"]["pid"].as_i64().unwrap() as i32;
    a.kill9();
    // While no agent runs: the container keeps running, the short one exits.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        Path::new(&format!("/proc/{init_pid}")).exists(),
        "container died with its agent"
    );
    a.spawn();
    let ps = a.ok(&["ps", "--format", "json"]);
    assert_eq!(lines(&ps).len(), 1, "{ps}");
    assert!(ps.contains("\"live\""));
    assert_eq!(a.inspect("short")["state"]["status"], "exited");
    assert_eq!(a.inspect("short")["state"]["exit_code"], 5);
    // Logs continue: newer lines than before the restart keep arriving.
    let n1 = lines(&a.ok(&["logs", "live"])).len();
    std::thread::sleep(Duration::from_millis(500));
    let n2 = lines(&a.ok(&["logs", "live"])).len();
    assert!(n2 > n1 && n1 >= 15, "{n1} then {n2}");
    // The reattached monitor still sees the exit.
    a.ok(&["kill", "live"]);
    a.wait_state("live", "exited");
    a.ok(&["rm", "live", "short"]);
    a.assert_no_leaks(&[]);
}

#[test]
fn memory_limit_is_enforced_and_reported() {
    let a = Agent::start();
    let id = a
        .ok(&a.run_args(
            &["-d", "--memory", "32m", "--pids-limit", "50"],
            &["sleep", "1000"],
        ))
        .trim()
        .to_string();
    a.remember(&id);
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/{id}/memory.limit_in_bytes",
        a.cgroup_parent
    ))
    .unwrap();
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    let stats = a.ok(&["stats", "--no-stream", "--format", "json", &id]);
    assert!(
        stats.contains(&format!("\"MemLimit\":{}", 32u64 << 20)),
        "{stats}"
    );
    a.ok(&["rm", "-f", &id]);
    // Allocating past the limit gets the process killed by the OOM killer.
    let o = a.gantry(&a.run_args(
        &["--memory", "16m"],
        &[
            "sh",
            "-c",
            "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    ));
    assert_eq!(
        o.status.code(),
        Some(137),
        "stdout {:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    for id in a.ids() {
        a.remember(&id);
        a.ok(&["rm", &id]);
    }
    a.assert_no_leaks(&[]);
}

#[test]
fn restart_policies_and_auto_remove() {
    let a = Agent::start();
    let id = a
        .ok(&a.run_args(
            &["-d", "--restart", "on-failure:2"],
            &["sh", "-c", "exit 9"],
        ))
        .trim()
        .to_string();
    a.remember(&id);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = a.inspect(&id);
        if v["state"]["status"] == "exited" && v["state"]["restart_count"] == 2 {
            assert_eq!(v["state"]["exit_code"], 9);
            break;
        }
        assert!(Instant::now() < deadline, "restarts did not settle: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // always: a stop is respected (manually stopped) even though the policy says always.
    let al = a
        .ok(&a.run_args(
            &["-d", "--restart", "always"],
            &["sh", "-c", "sleep 0.2; exit 0"],
        ))
        .trim()
        .to_string();
    a.remember(&al);
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.inspect(&al)["state"]["restart_count"].as_u64().unwrap() < 1 {
        assert!(Instant::now() < deadline, "always did not restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.ok(&["stop", "-t", "1", &al]);
    let rc = a.inspect(&al)["state"]["restart_count"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(a.state(&al), "exited");
    assert_eq!(
        a.inspect(&al)["state"]["restart_count"].as_u64().unwrap(),
        rc
    );
    // -d --rm: gone after it exits.
    let gone = a
        .ok(&a.run_args(&["-d", "--rm"], &["true"]))
        .trim()
        .to_string();
    a.remember(&gone);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.ids().contains(&gone) {
        assert!(Instant::now() < deadline, "--rm container not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.ok(&["rm", &id, &al]);
    a.assert_no_leaks(&[]);
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let a = Agent::start();
    let id = a
        .ok(&a.run_args(&["-d", "--name", "taken"], &["sleep", "1000"]))
        .trim()
        .to_string();
    a.remember(&id);
    let stopped = a
        .ok(&a.run_args(&["-d", "--name", "stopped"], &["true"]))
        .trim()
        .to_string();
    a.remember(&stopped);
    a.wait_state("stopped", "exited");
    let before = a.ids();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--network", "none", "no-such-image:1", "true"],
            "no such image",
        ),
        (
            a.run_args(&["--name", "taken"], &["true"]),
            "already in use",
        ),
        (a.run_args(&["-v", "relative:/data"], &["true"]), "--volume"),
        (a.run_args(&["-v", "/tmp:/data:rx"], &["true"]), "--volume"),
        (a.run_args(&["--memory", "lots"], &["true"]), "--memory"),
        (
            a.run_args(&["--restart", "sometimes"], &["true"]),
            "--restart",
        ),
        (a.run_args(&["-p", "80:80"], &["true"]), "--publish"),
        (a.run_args(&["--name", "bad name"], &["true"]), "--name"),
        (
            vec!["run", "--network", "nope", "--rootfs", a.rootfs(), "true"],
            "--network",
        ),
        (vec!["rm", "taken"], "stop it first"),
        (vec!["exec", "stopped", "true"], "not running"),
        (vec!["kill", "stopped"], "not running"),
        (vec!["logs", "nobody-here"], "no such container"),
        (vec!["rm", "nobody-here"], "no such container"),
    ];
    for (args, expect) in cases {
        let err = a.fails(&args);
        assert!(
            err.contains(expect),
            "gantry {args:?}: expected {expect:?} in {err:?}"
        );
        assert_eq!(
            a.ids(),
            before,
            "gantry {args:?} changed the container list"
        );
        a.assert_no_leaks(std::slice::from_ref(&id));
    }
    assert_eq!(a.state("taken"), "running");
    // The engine's exit code for a refused run is 125 (docker's).
    assert_eq!(
        a.gantry(&a.run_args(&["--memory", "x"], &["true"]))
            .status
            .code(),
        Some(125)
    );
    a.ok(&["rm", "-f", "taken", "stopped"]);
    a.assert_no_leaks(&[]);
}

/// Writes an OCI layout of the busybox root filesystem (one layer, Cmd `sh`), named by tag
/// `1` only, and loads it into the agent's image store as `bb:1`.
fn load_busybox_image(a: &Agent) -> String {
    let dir = common::rootfs_layout(&a.rootfs, &a.dir.path().join("layout"));
    let store = a.dir.path().join("root");
    a.ok(&[
        "image",
        "load",
        "--store",
        store.to_str().unwrap(),
        "--input",
        dir.to_str().unwrap(),
        "--name",
        "bb",
    ]);
    "bb:1".to_string()
}

#[test]
fn image_lifecycle_run_kill_start_rm() {
    let a = Agent::start();
    let img = load_busybox_image(&a);
    // The image's config applies: Cmd, Env, WorkingDir.
    let o = a.gantry(&[
        "run",
        "--rm",
        "--network",
        "none",
        &img,
        "sh",
        "-c",
        "echo $FROM_IMAGE $(pwd)",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "yes /root\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = a
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "seed",
            &img,
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();
    a.remember(&id);
    a.ok(&[
        "exec",
        "seed",
        "sh",
        "-c",
        "echo written > /root/file && rm /etc/deleted-later",
    ]);
    a.ok(&["kill", "seed"]);
    a.wait_state("seed", "exited");
    a.ok(&["start", "seed"]);
    assert_eq!(a.ok(&["exec", "seed", "cat", "/root/file"]), "written\n");
    assert!(!a
        .gantry(&["exec", "seed", "cat", "/etc/deleted-later"])
        .status
        .success());
    // A second container of the same image does not see the first one's changes.
    let o = a.gantry(&[
        "run",
        "--rm",
        "--network",
        "none",
        &img,
        "cat",
        "/etc/deleted-later",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "base file\n");
    a.ok(&["rm", "-f", "seed"]);
    // Its snapshot went with it: only the image's committed layer remains.
    let snaps = std::fs::read_to_string(a.dir.path().join("root/snapshots/metadata.json")).unwrap();
    assert!(
        !snaps.contains(&id),
        "snapshot of {id} left behind: {snaps}"
    );
    let err = a.fails(&["run", "--network", "none", "bb:missing", "true"]);
    assert!(err.contains("no such image"), "{err}");
    assert!(a.ids().is_empty());
    a.assert_no_leaks(&[]);
}

/// A free TCP port on 127.0.0.1, outside the ephemeral range, distinct per process.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let base = 21_000 + (std::process::id() % 400) * 16 + (n % 16);
    (0..30)
        .map(|i| (base + i * 400) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

/// `GET /` over plain TCP, retried until it answers (the server may still be starting).
fn http_get(addr: &str) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(
                &addr.parse().unwrap(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match got {
            Ok(body) if body.contains("200 OK") => return body,
            other => assert!(
                Instant::now() < deadline,
                "no answer from {addr}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const WEB: &str =
    "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www";

#[test]
fn bridge_network_publishes_ports_links_containers_and_releases_everything() {
    let a = Agent::start();
    let port = free_port();
    let publish = format!("{port}:8080");
    let id = a
        .ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &publish,
            "--rootfs",
            a.rootfs(),
            "sh",
            "-c",
            WEB,
        ])
        .trim()
        .to_string();
    a.remember(&id);
    let net = &a.inspect("web")["network"];
    let ip: std::net::Ipv4Addr = net["ip"].as_str().unwrap().parse().unwrap();
    assert!(a.net.subnet.contains(&ip), "{net}");
    assert_eq!(net["gateway"].as_str().unwrap(), a.net.gateway.to_string());
    // Published on the host's loopback, and reachable at the container's own address.
    assert!(http_get(&format!("127.0.0.1:{port}")).contains("hello-from-web"));
    assert!(http_get(&format!("{ip}:8080")).contains("hello-from-web"));
    let ps = a.ok(&["ps"]);
    assert!(ps.contains(&format!("0.0.0.0:{port}->8080/tcp")), "{ps}");
    // A second container reaches the first over the bridge.
    let o = a.gantry(&[
        "run",
        "--rm",
        "--rootfs",
        a.rootfs(),
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{ip}:8080/"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello-from-web\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The container sees eth0 (bridge), the host's links (host), only lo (none).
    let devs = |mode: &str| {
        a.ok(&[
            "run",
            "--rm",
            "--network",
            mode,
            "--rootfs",
            a.rootfs(),
            "cat",
            "/proc/net/dev",
        ])
    };
    assert!(devs("bridge").contains("eth0:"));
    assert!(devs("host").contains(&format!("{}:", a.net.bridge)));
    let none = devs("none");
    assert!(none.contains("lo:") && !none.contains("eth0:"), "{none}");
    // The same host port twice: refused, nothing of the second container is left.
    let before = a.ids();
    let err = a.fails(&[
        "run",
        "-d",
        "-p",
        &publish,
        "--rootfs",
        a.rootfs(),
        "sleep",
        "100",
    ]);
    assert!(
        err.contains(&format!("host port {port}")) && err.contains(&id),
        "{err}"
    );
    assert_eq!(a.ids(), before);
    let err = a.fails(&["run", "-p", "80:abc", "--rootfs", a.rootfs(), "true"]);
    assert!(err.contains("--publish") && err.contains("80:abc"), "{err}");
    assert_eq!(a.ids(), before);
    a.assert_no_leaks(std::slice::from_ref(&id));
    assert_eq!(a.dnat_rules().len(), 1, "{:?}", a.dnat_rules());
    // Stop and start: same address, port still published.
    a.ok(&["stop", "-t", "1", "web"]);
    a.ok(&["start", "web"]);
    assert_eq!(a.inspect("web")["network"]["ip"], ip.to_string());
    assert!(http_get(&format!("127.0.0.1:{port}")).contains("hello-from-web"));
    a.ok(&["rm", "-f", "web"]);
    assert!(a.ids().is_empty());
    a.assert_no_leaks(&[]);
}

#[test]
fn network_survives_agent_restart_and_stale_attachments_are_reconciled() {
    let mut a = Agent::start();
    let port = free_port();
    let id = a
        .ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &format!("{port}:8080"),
            "--rootfs",
            a.rootfs(),
            "sh",
            "-c",
            WEB,
        ])
        .trim()
        .to_string();
    a.remember(&id);
    assert!(http_get(&format!("127.0.0.1:{port}")).contains("hello-from-web"));
    a.kill9();
    // With no agent: still served. Then a ghost attachment appears, as if an agent had died
    // half way through creating a container it never recorded.
    assert!(http_get(&format!("127.0.0.1:{port}")).contains("hello-from-web"));
    let ghost = "ghost0123456789";
    let ghost_ns = a.dir.path().join("run/netns").join(ghost);
    let ghost_port = free_port();
    let cfg = a.net.clone();
    let ns2 = ghost_ns.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            gantry_agent::network::netns::create(&ns2).unwrap();
            let net = BridgeNetwork::open(cfg).await.unwrap();
            let ports =
                gantry_agent::network::parse_port_spec(&format!("{ghost_port}:80")).unwrap();
            net.attach(ghost, &ns2, &ports).await.unwrap();
        });
    assert_eq!(a.dnat_rules().len(), 2);
    a.spawn();
    // The ghost is gone; the live container keeps its veth, rule, lease and port.
    assert!(!ghost_ns.exists(), "ghost netns kept");
    a.assert_no_leaks(std::slice::from_ref(&id));
    assert_eq!(a.dnat_rules().len(), 1, "{:?}", a.dnat_rules());
    assert!(http_get(&format!("127.0.0.1:{port}")).contains("hello-from-web"));
    a.ok(&["rm", "-f", "web"]);
    a.assert_no_leaks(&[]);
}

#[test]
fn seed_lifecycle_run_commit_run_kill_start_rm_rmi() {
    let a = Agent::start();
    let img = load_busybox_image(&a);
    // RUN (default network: bridge), then change files: add, delete, add a directory.
    let seed = a
        .ok(&["run", "-d", "--name", "seed", &img, "sleep", "1000"])
        .trim()
        .to_string();
    a.remember(&seed);
    a.ok(&[
        "exec", "seed", "sh", "-c",
        "echo committed > /root/file && rm /etc/deleted-later && mkdir -p /data/sub && echo y > /data/sub/y",
    ]);
    // COMMIT (the running container is frozen meanwhile, then thawed).
    let image_id = a
        .ok(&[
            "commit",
            "-m",
            "add a file",
            "--change",
            r#"CMD ["cat", "/root/file"]"#,
            "seed",
            "bb:2",
        ])
        .trim()
        .to_string();
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    assert_eq!(a.ok(&["exec", "seed", "echo", "thawed"]), "thawed\n");
    let store = a.dir.path().join("root");
    let store = store.to_str().unwrap();
    let inspect: serde_json::Value =
        serde_json::from_str(&a.ok(&["image", "inspect", "--store", store, "bb:2"])).unwrap();
    assert_eq!(inspect[0]["configDigest"], image_id);
    assert_eq!(inspect[0]["diffIds"].as_array().unwrap().len(), 2);
    let history = inspect[0]["config"]["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["comment"], "add a file");
    // RUN the new image: its CMD (from --change) sees the file; the deletion holds.
    assert_eq!(a.ok(&["run", "--rm", "bb:2"]), "committed\n");
    assert_eq!(a.ok(&["run", "--rm", "bb:2", "cat", "/data/sub/y"]), "y\n");
    let o = a.gantry(&["run", "--rm", "bb:2", "cat", "/etc/deleted-later"]);
    assert!(
        !o.status.success(),
        "a deleted file came back in the commit"
    );
    // KILL, START: the file is still there.
    let child = a
        .ok(&["run", "-d", "--name", "child", "bb:2", "sleep", "1000"])
        .trim()
        .to_string();
    a.remember(&child);
    a.ok(&["kill", "child"]);
    a.wait_state("child", "exited");
    a.ok(&["start", "child"]);
    assert_eq!(a.ok(&["exec", "child", "cat", "/root/file"]), "committed\n");
    // RMI of an image in use: refused, nothing changes.
    let err = a.fails(&["rmi", "bb:2"]);
    assert!(err.contains("in use by container child"), "{err}");
    assert_eq!(a.ok(&["run", "--rm", "bb:2"]), "committed\n");
    // RM, then RMI: the base's own blobs go, the shared layer stays for bb:2.
    a.ok(&["rm", "-f", "child", "seed"]);
    let out = a.ok(&["rmi", "bb:1"]);
    assert_eq!(out.matches("Deleted: ").count(), 2, "{out}");
    assert_eq!(a.ok(&["run", "--rm", "bb:2"]), "committed\n");
    let out = a.ok(&["rmi", "bb:2"]);
    assert_eq!(out.matches("Deleted: ").count(), 4, "{out}");
    let blobs = std::fs::read_dir(a.dir.path().join("root/content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "blobs left after the last rmi");
    let snaps: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.dir.path().join("root/snapshots/metadata.json")).unwrap(),
    )
    .unwrap();
    assert!(
        snaps["snapshots"].as_object().is_none_or(|m| m.is_empty()),
        "snapshots left after the last rmi: {snaps}"
    );
    let err = a.fails(&["rmi", "bb:2"]);
    assert!(err.contains("no such image"), "{err}");
    // rmi -f: the image goes, its container keeps running.
    let img = load_busybox_image(&a);
    let user = a
        .ok(&["run", "-d", "--name", "user", &img, "sleep", "1000"])
        .trim()
        .to_string();
    a.remember(&user);
    a.fails(&["rmi", &img]);
    a.ok(&["rmi", "-f", &img]);
    assert_eq!(a.ok(&["exec", "user", "echo", "alive"]), "alive\n");
    a.ok(&["rm", "-f", "user"]);
    assert!(a.ids().is_empty());
    a.assert_no_leaks(&[]);
}

#[test]
fn restart_policy_applies_to_exits_seen_by_a_new_agent() {
    let mut a = Agent::start();
    let always = a
        .ok(&a.run_args(
            &["-d", "--name", "always", "--restart", "always"],
            &["sh", "-c", "sleep 1; exit 3"],
        ))
        .trim()
        .to_string();
    let never = a
        .ok(&a.run_args(&["-d", "--name", "never"], &["sh", "-c", "sleep 1; exit 3"]))
        .trim()
        .to_string();
    a.remember(&always);
    a.remember(&never);
    a.kill9();
    // Both exit while no agent runs; the new agent records the exits and restarts only
    // the one whose policy says so.
    std::thread::sleep(Duration::from_millis(1500));
    a.spawn();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = a.inspect("always");
        if v["state"]["restart_count"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "always was not restarted: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = a.inspect("never");
    assert_eq!(v["state"]["status"], "exited", "{v}");
    assert_eq!(v["state"]["exit_code"], 3, "{v}");
    assert_eq!(v["state"]["restart_count"], 0, "{v}");
    a.ok(&["rm", "-f", "always", "never"]);
    a.assert_no_leaks(&[]);
}

/// Inodes of the sockets process `pid` holds (from /proc/PID/fd).
fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect()
}

/// The engine socket is root-only (0600, owned by root), the shims' sockets sit in a
/// root-only directory, and the agent holds no TCP or UDP socket at all: no network port
/// (cluster mode without --overlay; with it, only the DNS server on the bridge gateway).
#[test]
fn engine_socket_is_root_only_and_the_agent_has_no_network_port() {
    use std::os::unix::fs::MetadataExt;
    let a = Agent::start();
    let id = a
        .ok(&a.run_args(&["-d", "--name", "sockets"], &["sleep", "1000"]))
        .trim()
        .to_string();
    a.remember(&id);

    let sock = std::fs::metadata(a.dir.path().join("agent.sock")).unwrap();
    assert_eq!(sock.mode() & 0o7777, 0o600, "engine socket mode");
    assert_eq!(sock.uid(), 0, "engine socket owner");
    let shims = a.dir.path().join("run/containers");
    let m = std::fs::metadata(&shims).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o700, "{}", shims.display());
    assert!(
        shims.join(&id).join("shim.sock").exists(),
        "the container's shim socket is under {}",
        shims.display()
    );
    // no staging directory left beside the socket
    let stray: Vec<_> = std::fs::read_dir(a.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".agent.sock"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    let pid = a.child.as_ref().unwrap().id();
    let inodes = socket_inodes(pid);
    assert!(
        !inodes.is_empty(),
        "the agent holds its engine socket at least"
    );
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(
                !inodes.iter().any(|i| f.get(9) == Some(&i.as_str())),
                "the agent holds a {table} socket: {line}"
            );
        }
    }
    a.ok(&["rm", "-f", &id]);
}

/// A raw engine API client on the agent's socket, with no limits of its own (what a broken
/// or hostile local client sends).
async fn raw_engine(
    sock: PathBuf,
) -> gantry_proto::engine::engine_client::EngineClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::try_from("http://agent.local")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let p = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .unwrap();
    gantry_proto::engine::engine_client::EngineClient::new(ch)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX)
}

#[test]
fn oversized_and_malformed_engine_requests_are_refused_and_the_agent_keeps_serving() {
    use gantry_proto::engine as pb;
    use gantry_proto::limits::ENGINE_REQUEST_MAX;
    use tonic::Code;
    let a = Agent::start();
    let before = a.ids();
    let sock = a.dir.path().join("agent.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = raw_engine(sock.clone()).await;
        // Over the message limit: refused while decoding, RESOURCE_EXHAUSTED.
        let e = c
            .create(pb::CreateRequest {
                rootfs: a.rootfs().to_string(),
                env: vec!["A".repeat(ENGINE_REQUEST_MAX)],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains(&ENGINE_REQUEST_MAX.to_string()),
            "{e:?}"
        );
        // An oversized chunk inside a client stream ends that stream with an error.
        let chunks = tokio_stream::iter(vec![pb::StdinChunk {
            container: "nobody".into(),
            data: vec![0; ENGINE_REQUEST_MAX + 1],
            eof: false,
        }]);
        assert!(c.stdin(chunks).await.is_err());
        // Malformed fields: clear refusals.
        let e = c
            .create(pb::CreateRequest {
                rootfs: a.rootfs().to_string(),
                name: "n".repeat(100_000),
                cmd: vec!["true".into()],
                network: "none".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().len() < 1000, "the error echoes the whole name");
        let e = c
            .inspect(pb::ContainerRef {
                container: "x".repeat(1 << 20),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        // Not HTTP/2 at all on the socket: that connection is dropped, nothing else.
        let mut raw = tokio::net::UnixStream::connect(&sock).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = raw.write_all(&[0xff; 8192]).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut sink)).await;
        // The agent still answers.
        let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
        assert!(!v.version.is_empty());
    });
    assert_eq!(a.ids(), before, "a refused request changed the containers");
    // A name at the limit is fine.
    let name = "n".repeat(gantry_agent::engine::MAX_CONTAINER_NAME_LEN);
    let id = a
        .ok(&a.run_args(&["-d", "--name", &name], &["true"]))
        .trim()
        .to_string();
    a.remember(&id);
    a.wait_state(&name, "exited");
    a.ok(&["rm", &name]);
    a.ok(&["ps"]);
    a.assert_no_leaks(&[]);
}

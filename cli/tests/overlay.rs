//! The cluster network end to end, as root: three hosts are network namespaces the test
//! creates (`gto<tag>a|b|c`, each with a veth to a bridge in a fourth namespace, the
//! underlay, 192.168.77.0/24 — addresses that exist only inside these namespaces); the
//! controller runs in the underlay namespace, each agent (`gantry agent --overlay`) in its
//! host's namespace with its own state dirs. Services run from a busybox root filesystem.
//!
//! A client on host a reaches a server on host b by service name over the VXLAN overlay;
//! after the server migrates to host c the same name reaches it; its published endpoint on
//! host a's address reaches it from outside the cluster network wherever it runs; a
//! replica that exits leaves DNS and the balancer; a service on another network neither
//! finds the server in DNS nor reaches it by address (cross-node and same-node); after the
//! services are removed nothing of theirs is left (containers, veths, leases, DNS names),
//! and a restarted agent replaces its stale vxlan device. A second test deploys a compose
//! file whose `networks:` keep a front and a db apart while a service on both reaches
//! each. Every process is killed by PID and every namespace deleted in Drop guards.

mod common;

use gantry_controller::api::ControllerClient;
use gantry_controller::state::{Allocation, Desired, Node, Observed};
use gantry_proto::cluster::ReadKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gantry");
const CONTROLLER: &str = "192.168.77.1:7700";
/// An HTTP GET of srv:8080 by name (busybox nc; its static wget crashes on these hosts).
const HTTP_GET_SRV: &str = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 srv 8080";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// The test's namespaces, deleted on drop (their veths, bridges and vxlan devices go too).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// `gantry ARGS` inside network namespace `ns` (entered with setns between fork and exec;
/// not `ip netns exec`, whose fresh /sys hides the cgroup mounts).
fn in_ns(ns: &str) -> Command {
    program_in_ns(BIN, ns)
}

/// The `-A` rules of iptables chain `chain` in `table` inside namespace `ns`.
fn chain_rules(ns: &str, table: &str, chain: &str) -> Vec<String> {
    let out = program_in_ns("iptables", ns)
        .args(["-t", table, "-S", chain])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

/// The addresses host `h`'s cluster DNS (at `gw`, asked from the host, which sees every
/// service) gives for `name`.
fn host_lookup(ns: &str, gw: &str, name: &str) -> Vec<String> {
    let out = program_in_ns("/bin/busybox", ns)
        .args(["nslookup", name, gw])
        .output()
        .unwrap();
    resolved(&String::from_utf8_lossy(&out.stdout))
}

/// `program` inside network namespace `ns` (setns between fork and exec).
fn program_in_ns(program: &str, ns: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    let mut cmd = Command::new(program);
    cmd.env("GANTRY_INSECURE", "1");
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A gantry daemon in a namespace, killed by PID on drop.
struct Daemon(Option<Child>);

impl Daemon {
    fn spawn(ns: &str, args: &[String], log: &Path) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let child = in_ns(ns)
            .args(args)
            .env("RUST_LOG", "info,gantry_agent::network=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gantry in its namespace");
        Daemon(Some(child))
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// After a failed run: kills the shims started for the test's agents (their command lines
/// name the test dir) and their containers, removes those containers' cgroups, and
/// detaches the mounts left under the dir (rootfs overlays, pinned netns files).
struct Leftovers(PathBuf);

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let dir = self.0.display().to_string();
        let pids: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        let shims: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir))
            })
            .collect();
        for p in &pids {
            if ppid(*p).is_some_and(|pp| shims.contains(&pp)) {
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
        }
        for p in &shims {
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
        for host in ["a", "b", "c"] {
            common::remove_cgroup_parent(&common::cluster::cgroup_parent(&self.0, host));
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.0))
            .collect();
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in points {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

struct Host {
    name: String,
    ns: String,
    addr: String,
    dir: PathBuf,
    daemon: Daemon,
}

impl Host {
    fn args(&self) -> Vec<String> {
        let s = |p: &str| {
            self.dir
                .join(format!("{}-{p}", self.name))
                .display()
                .to_string()
        };
        [
            "agent",
            "--cgroup-parent",
            &common::cluster::cgroup_parent(&self.dir, &self.name),
            "--root",
            &s("root"),
            "--run-root",
            &s("run"),
            "--host",
            &format!("unix://{}", s("sock")),
            "--join",
            CONTROLLER,
            "--name",
            &self.name,
            "--label",
            &format!("host={}", self.name),
            "--advertise",
            &self.addr,
            "--overlay",
            "--heartbeat-ms",
            "300",
            "--stop-timeout",
            "1",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    }
    fn start(&mut self, log: &str) {
        self.daemon = Daemon::spawn(&self.ns, &self.args(), &self.dir.join(log));
    }
    fn sock(&self) -> String {
        format!(
            "unix://{}",
            self.dir.join(format!("{}-sock", self.name)).display()
        )
    }
    /// Ids of this agent's containers.
    fn containers(&self) -> Vec<String> {
        let out = Command::new(BIN)
            .env("GANTRY_INSECURE", "1")
            .args(["ps", "-a", "-q", "--host", &self.sock()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
    /// Runs `cmd` in container `id`; (exit ok, stdout + stderr).
    fn exec(&self, id: &str, cmd: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .env("GANTRY_INSECURE", "1")
            .args(["exec", "--host", &self.sock(), id])
            .args(cmd)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
    /// `ip …` inside this host's namespace; its stdout (empty when it fails, e.g. a device
    /// that does not exist yet).
    fn ip_out(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Runs `f` on a thread inside network namespace `ns` with its own tokio runtime, so the
/// controller client's sockets live there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    std::thread::scope(|s| {
        s.spawn(|| {
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

struct View {
    nodes: Vec<Node>,
    allocs: Vec<Allocation>,
}

impl View {
    fn running(&self, svc: &str) -> Vec<&Allocation> {
        self.allocs
            .iter()
            .filter(|a| {
                a.service == svc && a.desired == Desired::Run && a.observed == Observed::Running
            })
            .collect()
    }
    fn node_name(&self, id: u64) -> &str {
        &self.nodes.iter().find(|n| n.id == id).unwrap().name
    }
}

/// Polls the controller (from inside the underlay namespace) until `pred` holds (60 s).
fn wait_for(underlay: &str, what: &str, pred: impl Fn(&View) -> bool + Send + Sync) -> View {
    in_netns(underlay, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = ControllerClient::new(vec![CONTROLLER.into()]);
            c.retry_for = Duration::from_secs(20);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, nodes) = c.read(ReadKind::Nodes, false).await.unwrap();
                let (_, allocs) = c.read(ReadKind::Allocations, false).await.unwrap();
                let v = View { nodes, allocs };
                if pred(&v) {
                    return v;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what} within 60 s; allocations: {:#?}",
                    v.allocs
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    })
}

/// `gantry …` against the controller, from the underlay namespace.
fn gantry(underlay: &str, args: &[&str]) -> String {
    run(in_ns(underlay)
        .args(args)
        .env("GANTRY_CONTROLLER", CONTROLLER))
}

/// Retries `f` every 100 ms until it returns Some (at most `limit`).
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The addresses busybox nslookup printed for a name (after the server's own lines).
fn resolved(nslookup: &str) -> Vec<String> {
    nslookup
        .split("Name:")
        .skip(1)
        .flat_map(|b| b.lines())
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().split(' ').next().unwrap_or("").to_string())
        .collect()
}

/// The two tests run one after the other: each is a three-host cluster, too much for
/// two cores at once.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running test cluster: the underlay and three hosts (a, b, c) with their agents, the
/// controller. Fields drop in order: daemons first, then namespaces, leftovers, the dir.
struct Cluster {
    controller: Daemon,
    hosts: Vec<Host>,
    _nss: Namespaces,
    _leftovers: Leftovers,
    _tmp: Option<tempfile::TempDir>,
    underlay: String,
    dir: PathBuf,
    nodes: Vec<Node>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Namespaces (tagged by pid and `t`, one letter per test), the controller (with
/// `controller_args` more), three agents; returns once every node has its subnet, bridge
/// and two vxlan peers.
fn cluster(t: &str, controller_args: &[&str]) -> Cluster {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::require_root();
    let tmp = tempfile::Builder::new()
        .prefix("gantry-overlay-test")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    // GANTRY_TEST_KEEP=1 keeps the logs for a post-mortem.
    let tmp = if std::env::var_os("GANTRY_TEST_KEEP").is_some() {
        eprintln!("keeping {}", dir.display());
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    let leftovers = Leftovers(dir.clone());
    let tag = format!("{:x}{t}", std::process::id() & 0xfffff);
    let underlay = format!("gto{tag}u");
    let names = ["a", "b", "c"];
    let nss = Namespaces(vec![underlay.clone()]);
    ip(&["netns", "add", &underlay]);
    ip(&["-n", &underlay, "link", "set", "lo", "up"]);
    ip(&["-n", &underlay, "link", "add", "br0", "type", "bridge"]);
    ip(&[
        "-n",
        &underlay,
        "addr",
        "add",
        "192.168.77.1/24",
        "dev",
        "br0",
    ]);
    ip(&["-n", &underlay, "link", "set", "br0", "up"]);
    let mut c = Cluster {
        controller: Daemon(None),
        hosts: Vec::new(),
        _nss: nss,
        _leftovers: leftovers,
        _tmp: tmp,
        underlay: underlay.clone(),
        dir: dir.clone(),
        nodes: Vec::new(),
        _serial: serial,
    };
    for (i, n) in names.iter().enumerate() {
        let ns = format!("gto{tag}{n}");
        c._nss.0.push(ns.clone());
        ip(&["netns", "add", &ns]);
        let port = format!("h{n}");
        ip(&[
            "-n", &underlay, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip(&["-n", &underlay, "link", "set", &port, "master", "br0", "up"]);
        let addr = format!("192.168.77.{}", 10 + i);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        c.hosts.push(Host {
            name: n.to_string(),
            ns,
            addr,
            dir: dir.clone(),
            daemon: Daemon(None),
        });
    }
    c.controller = Daemon::spawn(
        &underlay,
        &[
            "controller",
            "run",
            "--id",
            "1",
            "--listen",
            CONTROLLER,
            "--data-dir",
            &dir.join("ctl").display().to_string(),
            "--bootstrap",
            "--node-ttl-ms",
            "1500",
            "--node-grace-ms",
            "1000",
        ]
        .iter()
        .chain(controller_args)
        .map(|x| x.to_string())
        .collect::<Vec<_>>(),
        &dir.join("controller.log"),
    );
    for h in &mut c.hosts {
        h.start(&format!("{}.log", h.name));
    }
    let v = wait_for(&underlay, "three nodes with subnets", |v| {
        v.nodes.len() == 3 && v.nodes.iter().all(|n| n.subnet.is_some())
    });
    let subnets: std::collections::BTreeSet<_> = v.nodes.iter().map(|n| n.subnet).collect();
    assert_eq!(subnets.len(), 3, "distinct node subnets: {:?}", v.nodes);
    // Each agent's bridge serves its node subnet; its vxlan device has the other two.
    for h in &c.hosts {
        let node = v.nodes.iter().find(|n| n.name == h.name).unwrap();
        let subnet = node.subnet.unwrap();
        let gw = format!("{}/{}", subnet.hosts().next().unwrap(), subnet.prefix_len());
        eventually(Duration::from_secs(20), "bridge and peers", || {
            let br = h.ip_out(&["-4", "addr", "show", "gantry0"]);
            let routes = h.ip_out(&["route", "show", "dev", "gantry.vx"]);
            (br.contains(&gw) && routes.lines().count() == 2).then_some(())
        });
    }
    c.nodes = v.nodes;
    c
}

#[test]
fn services_reach_each_other_by_name_across_hosts_over_the_overlay() {
    let mut cl = cluster("n", &[]);
    let (dir, underlay) = (cl.dir.clone(), cl.underlay.clone());

    let rootfs = common::busybox_rootfs(&dir);
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/index.html"), "overlay-ok\n").unwrap();
    let image = format!("rootfs:{}", rootfs.display());
    let create = |name: &str, net: &str, constraint: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec![
            "service",
            "create",
            name,
            "--image",
            &image,
            "--network",
            net,
            "--constraint",
            constraint,
            "--restart",
            "never",
            "--entrypoint",
            cmd[0],
        ];
        args.extend(extra);
        args.push("--");
        args.extend(&cmd[1..]);
        gantry(&underlay, &args);
    };
    let httpd = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"];
    create(
        "srv",
        "app",
        "host==b",
        &["--endpoint", "30080:8080"],
        &httpd,
    );
    create("cli", "app", "host==a", &[], &["/bin/sleep", "1000"]);
    create(
        "other",
        "elsewhere",
        "host==a",
        &[],
        &["/bin/sleep", "1000"],
    );
    let v = wait_for(
        &underlay,
        "srv, cli and other running with addresses",
        |v| {
            ["srv", "cli", "other"]
                .iter()
                .all(|s| v.running(s).len() == 1 && v.running(s)[0].address.is_some())
        },
    );
    let srv_ip = v.running("srv")[0].address.unwrap().to_string();
    assert_eq!(v.node_name(v.running("srv")[0].node), "b");
    let (a, b, c) = (&cl.hosts[0], &cl.hosts[1], &cl.hosts[2]);
    let on_a = a.containers();
    assert_eq!(on_a.len(), 2, "{on_a:?}");
    // Tell cli from other by their addresses.
    let cli_ip = v.running("cli")[0].address.unwrap().to_string();
    let ip_of = |id: &str| a.exec(id, &["ip", "-4", "-o", "addr", "show", "eth0"]).1;
    let cli = on_a
        .iter()
        .find(|id| ip_of(id).contains(&format!("{cli_ip}/")))
        .unwrap()
        .clone();
    let other = on_a.iter().find(|id| **id != cli).unwrap().clone();

    // By name, across hosts, over the overlay (the source address is kept: no NAT).
    let got = eventually(Duration::from_secs(10), "cli reaches srv by name", || {
        let (ok, out) = a.exec(&cli, &["sh", "-c", HTTP_GET_SRV]);
        (ok && out.contains("overlay-ok")).then_some(out)
    });
    assert!(got.contains("overlay-ok"));
    let (ok, out) = a.exec(&cli, &["nslookup", "srv.gantry"]);
    assert!(ok, "{out}");
    assert_eq!(resolved(&out), vec![srv_ip.clone()], "{out}");
    // Another network's container does not find it.
    let (_, out) = a.exec(&other, &["nslookup", "srv"]);
    assert!(
        resolved(&out).is_empty(),
        "other network resolved srv: {out}"
    );

    // Nor can it reach it by address (the isolation chain drops it), while cli can.
    let by_ip = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {srv_ip} 8080");
    let (_, out) = a.exec(&cli, &["sh", "-c", &by_ip]);
    assert!(out.contains("overlay-ok"), "cli by address: {out}");
    let (_, out) = a.exec(&other, &["sh", "-c", &by_ip]);
    assert!(
        !out.contains("overlay-ok"),
        "another network reached srv: {out}"
    );
    // On the same node too (bridged traffic): cli and other share no network.
    let other_ip = v.running("other")[0].address.unwrap().to_string();
    let (ok, out) = a.exec(&cli, &["ping", "-c", "1", "-W", "1", &srv_ip]);
    assert!(ok, "cli cannot ping srv: {out}");
    let (ok, out) = a.exec(&cli, &["ping", "-c", "1", "-W", "1", &other_ip]);
    assert!(!ok, "cli pinged other across networks: {out}");

    // The published endpoint: any node's address, from outside the cluster network (host
    // c's namespace, not a container), reaches srv wherever it runs.
    let from_c = || {
        let out = program_in_ns("/bin/busybox", &cl.hosts[2].ns)
            .args([
                "sh",
                "-c",
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 \"$0\" 30080",
            ])
            .arg(&cl.hosts[0].addr)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("overlay-ok")
    };
    eventually(
        Duration::from_secs(10),
        "srv through host a's endpoint",
        || from_c().then_some(()),
    );

    // Migrate srv to host c: the same name reaches it there.
    gantry(&underlay, &["migrate", "srv", "--to", "host==c"]);
    let v = wait_for(&underlay, "srv running on c only", |v| {
        let r = v.running("srv");
        r.len() == 1 && v.node_name(r[0].node) == "c" && r[0].address.is_some()
    });
    let new_ip = v.running("srv")[0].address.unwrap().to_string();
    let seen = Instant::now();
    eventually(Duration::from_secs(10), "srv's new address in DNS", || {
        let (_, out) = a.exec(&cli, &["nslookup", "srv"]);
        (resolved(&out) == vec![new_ip.clone()]).then_some(())
    });
    eprintln!(
        "moved allocation in DNS {:?} after the controller showed it running",
        seen.elapsed()
    );
    eventually(Duration::from_secs(10), "cli reaches srv on c", || {
        let (ok, out) = a.exec(&cli, &["sh", "-c", HTTP_GET_SRV]);
        (ok && out.contains("overlay-ok")).then_some(())
    });
    eventually(
        Duration::from_secs(10),
        "srv's old container gone from b",
        || b.containers().is_empty().then_some(()),
    );

    eventually(
        Duration::from_secs(10),
        "srv on c through host a's endpoint",
        || from_c().then_some(()),
    );

    // A replica that exits leaves DNS.
    gantry(&underlay, &["service", "scale", "srv", "2"]);
    gantry(&underlay, &["migrate", "srv", "--to", "host!=a"]);
    let v = wait_for(&underlay, "srv running twice", |v| {
        v.running("srv").len() == 2 && v.running("srv").iter().all(|a| a.address.is_some())
    });
    eventually(Duration::from_secs(10), "both srv replicas in DNS", || {
        (resolved(&a.exec(&cli, &["nslookup", "srv"]).1).len() == 2).then_some(())
    });
    let on_c = c.containers();
    assert_eq!(on_c.len(), 1, "{on_c:?}");
    let victim_ip = v
        .running("srv")
        .iter()
        .find(|al| v.node_name(al.node) == "c")
        .unwrap()
        .address
        .unwrap()
        .to_string();
    run(Command::new(BIN).env("GANTRY_INSECURE", "1").args([
        "kill",
        "--host",
        &c.sock(),
        &on_c[0],
    ]));
    eventually(
        Duration::from_secs(10),
        "the exited replica out of DNS",
        || {
            let r = resolved(&a.exec(&cli, &["nslookup", "srv"]).1);
            (!r.is_empty() && !r.contains(&victim_ip)).then_some(())
        },
    );

    // ... and the balancer (rewritten before the DNS table): every try through the
    // endpoint lands on the live replica, none on the dead one.
    for i in 0..8 {
        assert!(
            from_c(),
            "try {i} through the endpoint failed after a replica exited"
        );
    }

    // What the network added for the services, on host a: isolation drops (cli and
    // other share no network), the endpoint's DNAT, DNS names.
    let gw_a = cl
        .nodes
        .iter()
        .find(|n| n.name == "a")
        .unwrap()
        .subnet
        .unwrap()
        .hosts()
        .next()
        .unwrap()
        .to_string();
    assert!(!chain_rules(&a.ns, "filter", "GANTRY-ISO").is_empty());
    assert!(!chain_rules(&a.ns, "nat", "GANTRY-MESH").is_empty());
    assert!(!host_lookup(&a.ns, &gw_a, "cli").is_empty());

    // Remove everything: containers, veths and leases go, DNS forgets the names, the
    // isolation and mesh chains empty.
    for s in ["srv", "cli", "other"] {
        gantry(&underlay, &["service", "rm", s]);
    }
    eventually(Duration::from_secs(10), "DNS forgets the services", || {
        ["srv", "cli", "other"]
            .iter()
            .all(|s| host_lookup(&cl.hosts[0].ns, &gw_a, s).is_empty())
            .then_some(())
    });
    for h in &cl.hosts {
        eventually(
            Duration::from_secs(10),
            "isolation and mesh rules gone",
            || {
                (chain_rules(&h.ns, "filter", "GANTRY-ISO").is_empty()
                    && chain_rules(&h.ns, "nat", "GANTRY-MESH").is_empty())
                .then_some(())
            },
        );
    }
    for h in &cl.hosts {
        eventually(Duration::from_secs(20), "containers removed", || {
            h.containers().is_empty().then_some(())
        });
        let links = h.ip_out(&["-o", "link", "show"]);
        assert!(!links.contains(": gt"), "veth left on {}: {links}", h.name);
        let leases = std::fs::read_to_string(
            dir.join(format!("{}-root/network/gantry0.leases.json", h.name)),
        )
        .unwrap_or_default();
        assert!(
            !leases.contains("\"ip\""),
            "lease left on {}: {leases}",
            h.name
        );
    }
    // A restarted agent replaces its vxlan device (stale entries go with the old one) and
    // rewrites its isolation and mesh chains: rules left from before (here written while
    // it was down) go.
    cl.hosts[1].daemon.kill();
    let before = cl.hosts[1].ip_out(&["-d", "-o", "link", "show", "gantry.vx"]);
    let b_ns = cl.hosts[1].ns.clone();
    for (table, chain, rule) in [
        (
            "filter",
            "GANTRY-ISO",
            "-s 10.210.9.9/32 -d 10.210.9.8/32 -j DROP",
        ),
        (
            "nat",
            "GANTRY-MESH",
            "-p tcp --dport 39999 -j DNAT --to-destination 10.210.9.9:1",
        ),
    ] {
        let mut cmd = program_in_ns("iptables", &b_ns);
        cmd.args(["-t", table, "-A", chain]).args(rule.split(' '));
        run(&mut cmd);
        assert_eq!(chain_rules(&b_ns, table, chain).len(), 1, "{chain}");
    }
    cl.hosts[1].start("b-again.log");
    eventually(
        Duration::from_secs(20),
        "b's vxlan recreated with its peers",
        || {
            let now = cl.hosts[1].ip_out(&["-o", "link", "show"]);
            let routes = cl.hosts[1].ip_out(&["route", "show", "dev", "gantry.vx"]);
            let idx = |s: &str| s.split(':').next().map(str::to_string);
            let again = now.lines().find(|l| l.contains("gantry.vx")).and_then(idx);
            (again.is_some() && again != idx(&before) && routes.lines().count() == 2).then_some(())
        },
    );
    eventually(Duration::from_secs(10), "b's stale rules gone", || {
        (chain_rules(&b_ns, "filter", "GANTRY-ISO").is_empty()
            && chain_rules(&b_ns, "nat", "GANTRY-MESH").is_empty())
        .then_some(())
    });
    for h in &mut cl.hosts {
        h.daemon.kill();
        common::assert_cgroups_gone(&common::cluster::cgroup_parent(&h.dir, &h.name));
    }
    cl.controller.kill();
    let shims: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| c.contains(&dir.display().to_string()))
        .collect();
    assert!(shims.is_empty(), "processes left: {shims:?}");
}

/// `gantry deploy` of a compose file with two networks, each service on its own host:
/// `front` (frontend) and `db` (backend) share no network, `api` is on both. api finds and
/// reaches each by name; front finds api but neither finds db in DNS nor reaches it by
/// address, and db does not reach front (compose's isolation, across hosts). A second
/// deployment's default network is apart from the first's. The cluster runs a network
/// plan other than the default (`--cluster-cidr`, `--node-subnet-prefix`). At the end a
/// node goes down and its overlay entries leave the other nodes.
#[test]
fn compose_networks_isolate_services_that_share_none() {
    // A cluster network other than the default: /22 node subnets of 10.77.0.0/20.
    let mut cl = cluster(
        "k",
        &[
            "--cluster-cidr",
            "10.77.0.0/20",
            "--node-subnet-prefix",
            "22",
        ],
    );
    let cidr: ipnet::Ipv4Net = "10.77.0.0/20".parse().unwrap();
    for n in &cl.nodes {
        let s = n.subnet.unwrap();
        assert!(cidr.contains(&s) && s.prefix_len() == 22, "{}: {s}", n.name);
    }
    let (dir, underlay) = (cl.dir.clone(), cl.underlay.clone());
    let rootfs = common::busybox_rootfs(&dir);
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/index.html"), "overlay-ok\n").unwrap();
    let service = |name: &str, host: &str, networks: &str| {
        format!(
            "  {name}:\n    image: \"rootfs:{}\"\n    entrypoint: [/bin/httpd, -f, -p, \"8080\", -h, /www]\n{networks}    deploy:\n      placement:\n        constraints: [node.labels.host == {host}]\n",
            rootfs.display()
        )
    };
    let shop = dir.join("shop");
    std::fs::create_dir_all(&shop).unwrap();
    let compose = shop.join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            "services:\n{}{}{}networks:\n  frontend:\n    driver: overlay\n  backend: {{}}\n",
            service("front", "a", "    networks: [frontend]\n"),
            service(
                "api",
                "c",
                "    networks:\n      frontend:\n      backend:\n"
            ),
            service("db", "b", "    networks: [backend]\n"),
        ),
    )
    .unwrap();
    // The project is the directory's name: networks shop-frontend and shop-backend.
    let out = gantry(&underlay, &["deploy", "-f", compose.to_str().unwrap()]);
    assert!(out.contains("deployment shop: 3 services"), "{out}");
    assert!(
        out.contains("api: created (version 1; networks shop-frontend, shop-backend)"),
        "{out}"
    );
    // A second deployment (another project, no networks: its default network) on host a.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other_compose = other.join("compose.yaml");
    std::fs::write(
        &other_compose,
        format!("services:\n{}", service("stray", "a", "")),
    )
    .unwrap();
    let out = gantry(
        &underlay,
        &["deploy", "-f", other_compose.to_str().unwrap()],
    );
    assert!(
        out.contains("stray: created (version 1; networks other-default)"),
        "{out}"
    );
    let v = wait_for(
        &underlay,
        "front, api, db, stray running with addresses",
        |v| {
            ["front", "api", "db", "stray"]
                .iter()
                .all(|s| v.running(s).len() == 1 && v.running(s)[0].address.is_some())
        },
    );
    let addr = |s: &str| v.running(s)[0].address.unwrap().to_string();
    for s in ["front", "api", "db", "stray"] {
        assert!(cidr.contains(&v.running(s)[0].address.unwrap()), "{s}");
    }
    for (s, h) in [("front", "a"), ("api", "c"), ("db", "b"), ("stray", "a")] {
        assert_eq!(v.node_name(v.running(s)[0].node), h, "{s}");
    }
    let (a, b, c) = (&cl.hosts[0], &cl.hosts[1], &cl.hosts[2]);
    // Each host's container of a service, told apart by address on host a.
    let container_of = |h: &Host, svc: &str| {
        let want = format!("{}/", addr(svc));
        h.containers()
            .into_iter()
            .find(|id| {
                h.exec(id, &["ip", "-4", "-o", "addr", "show", "eth0"])
                    .1
                    .contains(&want)
            })
            .unwrap_or_else(|| panic!("no container of {svc} on {}", h.name))
    };
    let (front, api, db, stray) = (
        container_of(a, "front"),
        container_of(c, "api"),
        container_of(b, "db"),
        container_of(a, "stray"),
    );
    let get = |h: &Host, id: &str, target: &str| {
        let cmd = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {target} 8080");
        let (ok, out) = h.exec(id, &["sh", "-c", &cmd]);
        ok && out.contains("overlay-ok")
    };
    // api, on both networks, reaches each by name across hosts; front reaches api.
    for (target, from, id) in [("db", c, &api), ("front", c, &api), ("api", a, &front)] {
        eventually(
            Duration::from_secs(10),
            &format!("{target} by name from {}", from.name),
            || get(from, id, target).then_some(()),
        );
    }
    // Host a's DNS (asked from the host, which sees every service) knows db and stray:
    // its table, and so its isolation chain, has their addresses.
    let gw_a = cl
        .nodes
        .iter()
        .find(|n| n.name == "a")
        .unwrap()
        .subnet
        .unwrap()
        .hosts()
        .next()
        .unwrap()
        .to_string();
    for s in ["db", "stray"] {
        eventually(Duration::from_secs(10), &format!("{s} in a's DNS"), || {
            (host_lookup(&a.ns, &gw_a, s) == vec![addr(s)]).then_some(())
        });
    }
    // front and db share no network: no name, no traffic, either way.
    let (_, out) = a.exec(&front, &["nslookup", "db"]);
    assert!(resolved(&out).is_empty(), "front resolved db: {out}");
    assert!(!get(a, &front, &addr("db")), "front reached db by address");
    assert!(!get(b, &db, &addr("front")), "db reached front by address");
    let (ok, out) = b.exec(&db, &["ping", "-c", "1", "-W", "1", &addr("front")]);
    assert!(!ok, "db pinged front: {out}");
    // ... while api still reaches both by address (the chain drops only unshared pairs).
    assert!(get(c, &api, &addr("db")) && get(c, &api, &addr("front")));
    // The other deployment's default network shares nothing with this one, same node
    // included (front and stray both run on a).
    let (_, out) = a.exec(&stray, &["nslookup", "api"]);
    assert!(resolved(&out).is_empty(), "stray resolved api: {out}");
    assert!(!get(a, &stray, &addr("front")), "stray reached front");
    assert!(!get(a, &front, &addr("stray")), "front reached stray");

    // Removing the services leaves no container, veth or lease on any host.
    for s in ["front", "api", "db", "stray"] {
        gantry(&underlay, &["service", "rm", s]);
    }
    for h in &cl.hosts {
        eventually(Duration::from_secs(20), "containers removed", || {
            h.containers().is_empty().then_some(())
        });
        let links = h.ip_out(&["-o", "link", "show"]);
        assert!(!links.contains(": gt"), "veth left on {}: {links}", h.name);
    }
    // A node that goes (its agent killed, marked down) leaves the other nodes' overlay:
    // its route, neighbour and FDB entry are removed there.
    let c_addr = cl.hosts[2].addr.clone();
    cl.hosts[2].daemon.kill();
    wait_for(&underlay, "node c down", |v| {
        v.nodes
            .iter()
            .any(|n| n.name == "c" && n.status == gantry_controller::state::NodeStatus::Down)
    });
    for h in &cl.hosts[..2] {
        eventually(
            Duration::from_secs(10),
            "c's overlay entries removed",
            || {
                let routes = h.ip_out(&["route", "show", "dev", "gantry.vx"]);
                let neigh = h.ip_out(&["neigh", "show", "dev", "gantry.vx"]);
                let fdb = Command::new("bridge")
                    .args(["-n", &h.ns, "fdb", "show", "dev", "gantry.vx"])
                    .output()
                    .unwrap();
                let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
                (routes.lines().count() == 1
                    && neigh.lines().count() == 1
                    && fdb.contains("dst 192.168.77.")
                    && !fdb.contains(&format!("dst {c_addr} ")))
                .then_some(())
            },
        );
    }
    // The node leaves for good: `gantry agent --teardown-network` removes its bridge,
    // vxlan device and chains (refused while it still records a container).
    let c_host = &cl.hosts[2];
    let teardown = |root: &str| {
        in_ns(&c_host.ns)
            .args(["agent", "--root", root, "--teardown-network"])
            .output()
            .unwrap()
    };
    let busy = dir.join("busy-root");
    std::fs::create_dir_all(busy.join("containers/x")).unwrap();
    let out = teardown(busy.to_str().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("1 containers are recorded"),
        "{err}"
    );
    assert!(c_host.ip_out(&["-o", "link", "show"]).contains("gantry.vx"));
    let out = teardown(dir.join("c-root").to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links = c_host.ip_out(&["-o", "link", "show"]);
    assert!(
        !links.contains("gantry0") && !links.contains("gantry.vx"),
        "{links}"
    );
    for table in ["filter", "nat"] {
        let out = program_in_ns("iptables", &c_host.ns)
            .args(["-t", table, "-S"])
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!rules.contains("GANTRY"), "{table}: {rules}");
    }
    for h in &mut cl.hosts {
        h.daemon.kill();
        common::assert_cgroups_gone(&common::cluster::cgroup_parent(&h.dir, &h.name));
    }
    cl.controller.kill();
}

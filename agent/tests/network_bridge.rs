//! Real bridge networking, as root: network namespaces made here stand in for containers.
//! Each test has its own bridge, subnet, chain prefix and lease dir, so tests run in
//! parallel; guards remove namespaces, links and chains even when a test fails. Traffic only
//! goes to 127.0.0.0/8 and to the namespaces and bridges made here.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gantry_agent::network::{
    host_veth_name, parse_port_spec, rules, setup_loopback_only, BridgeConfig, BridgeNetwork,
    FakeFirewall, NetlinkLinks, NetworkError,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static NETS: AtomicU32 = AtomicU32::new(0);
const TIMEOUT: Duration = Duration::from_secs(5);

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("network tests create namespaces, links and iptables rules: run them as root");
    }
    for tool in ["ip", "iptables-save", "iptables-restore"] {
        let ok = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "network tests need `{tool}` (iproute2 / iptables) installed"
        );
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unique network for one test, torn down with the command-line tools on drop (so a bug
/// in `teardown_all` cannot leak from a failed test).
struct TestNet {
    cfg: BridgeConfig,
    _dir: tempfile::TempDir,
}

impl TestNet {
    fn new() -> Self {
        require_root();
        let n = NETS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let subnet = format!("10.{}.{}.0/24", 230 + n, pid % 256);
        let cfg = BridgeConfig::custom(
            dir.path(),
            &format!("gtb{}x{n}", pid % 100_000),
            &subnet,
            &format!("GT{pid}X{n}"),
        )
        .unwrap();
        TestNet { cfg, _dir: dir }
    }

    async fn open(&self) -> BridgeNetwork {
        BridgeNetwork::open(self.cfg.clone()).await.unwrap()
    }

    fn port(&self) -> u16 {
        // Outside the ephemeral range, distinct per process and test, and free right now.
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = 20_000 + (std::process::id() % 500) * 16 + (n % 16);
        (0..40)
            .map(|i| (base + i * 500) as u16)
            .find(|p| {
                TcpListener::bind(("127.0.0.1", *p)).is_ok()
                    && UdpSocket::bind(("127.0.0.1", *p)).is_ok()
            })
            .expect("a free port")
    }

    fn nat(&self) -> String {
        sh("iptables-save", &["-t", "nat"])
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for port in sh("ip", &["-o", "link", "show", "master", &self.cfg.bridge]).lines() {
            if let Some(name) = port.split(": ").nth(1) {
                let name = name.split('@').next().unwrap_or(name);
                let _ = Command::new("ip").args(["link", "del", name]).output();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.cfg.bridge])
            .output();
        for table in [rules::Table::Nat, rules::Table::Filter] {
            let save = sh("iptables-save", &["-t", table.as_str()]);
            let script = rules::teardown(&self.cfg, table, &save);
            if !script.is_empty() {
                let mut child = Command::new("iptables-restore")
                    .args(["-w", "--noflush"])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(script.as_bytes())
                    .unwrap();
                let _ = child.wait();
            }
        }
    }
}

/// A network namespace standing in for a container.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("gantry-t-{}-{n}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a thread inside this netns.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("netns thread panicked")
    }

    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let ns = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }

    /// A TCP server in this netns answering `reply` to each connection, for at most 20 s.
    fn tcp_server(&self, port: u16, reply: &'static str, conns: usize) -> JoinHandle<()> {
        let (tx, rx) = mpsc::channel();
        let h = self.spawn(move || {
            let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut served = 0;
            while served < conns && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(reply.as_bytes());
                        served += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(TIMEOUT).expect("server bound");
        h
    }

    fn links(&self) -> String {
        sh("ip", &["-n", &self.name, "-o", "link", "show"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A netns standing in for another machine: linked to the host by a veth pair in a /30 of
/// its own (host .1, outside .2), default route via the host.
struct External {
    ns: Netns,
    host_if: String,
    host_ip: Ipv4Addr,
}

impl External {
    fn new() -> Self {
        let ns = Netns::new();
        let n = NETS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let host_if = format!("gtx{}x{n}", pid % 100_000);
        let base = [10, 229, (pid % 256) as u8, ((n % 64) * 4) as u8];
        let host_ip = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1);
        let ext_ip = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2);
        let steps: [Vec<String>; 6] = [
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                "eth0".into(),
                "netns".into(),
                ns.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_ip}/30"),
                "dev".into(),
                host_if.clone(),
            ],
            vec!["link".into(), "set".into(), host_if.clone(), "up".into()],
            vec![
                "-n".into(),
                ns.name.clone(),
                "addr".into(),
                "add".into(),
                format!("{ext_ip}/30"),
                "dev".into(),
                "eth0".into(),
            ],
            vec![
                "-n".into(),
                ns.name.clone(),
                "link".into(),
                "set".into(),
                "eth0".into(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                ns.name.clone(),
                "route".into(),
                "add".into(),
                "default".into(),
                "via".into(),
                host_ip.to_string(),
            ],
        ];
        let ext = External {
            ns,
            host_if,
            host_ip,
        };
        for args in steps {
            let st = Command::new("ip").args(&args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        }
        ext
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

fn tcp_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn host_links() -> String {
    sh("ip", &["-o", "link", "show"])
}

#[tokio::test]
async fn two_containers_reach_each_other_and_the_host() {
    let t = TestNet::new();
    let net = t.open().await;
    let (a, b) = (Netns::new(), Netns::new());
    let id = |s: &str| format!("{}-{s}", a.name);
    let att_a = net.attach(&id("a"), &a.path(), &[]).await.unwrap();
    let att_b = net.attach(&id("b"), &b.path(), &[]).await.unwrap();
    assert_ne!(att_a.ip, att_b.ip);
    assert!(t.cfg.subnet.contains(&att_a.ip));

    // eth0 and lo are up in the container, with the address and the default route.
    let addrs = sh("ip", &["-n", &a.name, "-o", "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("{}/24", att_a.ip)), "{addrs}");
    let routes = sh("ip", &["-n", &a.name, "route", "show", "default"]);
    assert!(
        routes.contains(&format!("via {}", t.cfg.gateway)),
        "{routes}"
    );
    assert!(a.links().contains("lo: <LOOPBACK,UP"), "{}", a.links());

    // a → b over the bridge.
    let server = b.tcp_server(7000, "hello from b", 1);
    let target = SocketAddr::from((att_b.ip, 7000));
    let got = a.run(move || tcp_get(target)).unwrap();
    assert_eq!(got, "hello from b");
    server.join().unwrap();

    // a → the host's bridge address (the egress path, without leaving the machine).
    let host = TcpListener::bind((t.cfg.gateway, 0)).unwrap();
    let host_addr = host.local_addr().unwrap();
    let client = a.spawn(move || tcp_get(host_addr));
    let (mut conn, peer) = host.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(att_a.ip));
    conn.write_all(b"hi container").unwrap();
    drop(conn);
    assert_eq!(client.join().unwrap().unwrap(), "hi container");

    // The egress NAT rule is in place for the subnet.
    let nat = t.nat();
    let masq = format!(
        "-A {} -s {} ! -o {} -j MASQUERADE",
        t.cfg.post_chain(),
        t.cfg.subnet,
        t.cfg.bridge
    );
    assert!(nat.contains(&masq), "{nat}");
    assert!(nat.contains(&format!("-A POSTROUTING -j {}", t.cfg.post_chain())));
}

#[tokio::test]
async fn published_tcp_port_reaches_the_container_from_the_host() {
    let t = TestNet::new();
    let net = t.open().await;
    let (srv, other) = (Netns::new(), Netns::new());
    let hp = t.port();
    let ports = parse_port_spec(&format!("{hp}:8080")).unwrap();
    let att = net.attach(&srv.name, &srv.path(), &ports).await.unwrap();
    net.attach(&other.name, &other.path(), &[]).await.unwrap();
    let server = srv.tcp_server(8080, "published", 4);

    // From the host itself: loopback and the bridge-side address (OUTPUT chain).
    assert_eq!(
        tcp_get(SocketAddr::from(([127, 0, 0, 1], hp))).unwrap(),
        "published"
    );
    assert_eq!(
        tcp_get(SocketAddr::from((t.cfg.gateway, hp))).unwrap(),
        "published"
    );
    // From another container through the host address (PREROUTING + hairpin NAT).
    let gw = SocketAddr::from((t.cfg.gateway, hp));
    assert_eq!(other.run(move || tcp_get(gw)).unwrap(), "published");
    // From "outside": a netns wired to the host by its own veth, not on the bridge, reaching
    // the host's address on that link (PREROUTING, forwarded into the bridge and back).
    let ext = External::new();
    let to = SocketAddr::from((ext.host_ip, hp));
    assert_eq!(ext.ns.run(move || tcp_get(to)).unwrap(), "published");
    server.join().unwrap();

    let nat = t.nat();
    assert!(
        nat.contains(&format!("--to-destination {}:8080", att.ip)),
        "{nat}"
    );
}

#[tokio::test]
async fn published_udp_port_reaches_the_container() {
    let t = TestNet::new();
    let net = t.open().await;
    let ns = Netns::new();
    let hp = t.port();
    let ports = parse_port_spec(&format!("127.0.0.1:{hp}:5353/udp")).unwrap();
    net.attach(&ns.name, &ns.path(), &ports).await.unwrap();
    let (tx, rx) = mpsc::channel();
    let echo = ns.spawn(move || {
        let s = UdpSocket::bind(("0.0.0.0", 5353)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            s.send_to(&reply, from).unwrap();
        }
    });
    rx.recv_timeout(TIMEOUT).unwrap();
    let c = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.send_to(b"ping", ("127.0.0.1", hp)).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = c
        .recv_from(&mut buf)
        .expect("udp reply through the published port");
    assert_eq!(&buf[..n], b"echo:ping");
    echo.join().unwrap();
}

#[tokio::test]
async fn none_mode_has_only_loopback() {
    require_root();
    let ns = Netns::new();
    setup_loopback_only(&ns.path()).await.unwrap();
    let links = ns.links();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo: <LOOPBACK,UP"), "{links}");
    // lo works: a server and a client on 127.0.0.1 inside the netns.
    let server = ns.tcp_server(9000, "lo works", 1);
    let got = ns.run(|| tcp_get(SocketAddr::from(([127, 0, 0, 1], 9000))));
    assert_eq!(got.unwrap(), "lo works");
    server.join().unwrap();
}

#[tokio::test]
async fn ipam_never_hands_out_an_address_twice_and_survives_a_reload() {
    let t = TestNet::new();
    let nss: Vec<Netns> = (0..6).map(|_| Netns::new()).collect();
    let net = t.open().await;
    // Concurrent attaches on one network object and a second one over the same files
    // (as a restarted agent would have).
    let net2 = t.open().await;
    let paths: Vec<PathBuf> = nss.iter().map(Netns::path).collect();
    let attaches = nss.iter().zip(&paths).enumerate().map(|(i, (ns, path))| {
        let n = if i % 2 == 0 { &net } else { &net2 };
        n.attach(&ns.name, path, &[])
    });
    let results = futures::future::join_all(attaches).await;
    let mut ips: Vec<Ipv4Addr> = results.into_iter().map(|r| r.unwrap().ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "an address was handed out twice: {ips:?}");

    // Reload: the leases are still there, the next address is a new one.
    drop(net);
    drop(net2);
    let net = t.open().await;
    let leases = net.leases().unwrap();
    assert_eq!(leases.leases.len(), 6);
    for ns in &nss {
        assert!(ips.contains(&leases.leases[&ns.name].ip));
    }
    let extra = Netns::new();
    let att = net.attach(&extra.name, &extra.path(), &[]).await.unwrap();
    assert!(!ips.contains(&att.ip), "{} reused", att.ip);

    // A released address is not handed out again at once.
    net.detach(&nss[0].name).await.unwrap();
    let extra2 = Netns::new();
    let att2 = net.attach(&extra2.name, &extra2.path(), &[]).await.unwrap();
    assert_ne!(att2.ip, leases.leases[&nss[0].name].ip);
}

#[tokio::test]
async fn detach_and_teardown_leave_nothing() {
    let t = TestNet::new();
    let net = t.open().await;
    let ns = Netns::new();
    let hp = t.port();
    let ports = parse_port_spec(&format!("{hp}:80")).unwrap();
    let att = net.attach(&ns.name, &ns.path(), &ports).await.unwrap();
    assert!(host_links().contains(&att.host_veth));
    assert!(t.nat().contains(&format!("gantry:{}", ns.name)));

    assert!(net.detach(&ns.name).await.unwrap());
    assert!(!host_links().contains(&att.host_veth), "host veth left");
    assert!(!ns.links().contains("eth0"), "eth0 left: {}", ns.links());
    assert!(
        !t.nat().contains(&format!("gantry:{}", ns.name)),
        "DNAT rule left"
    );
    assert!(net.leases().unwrap().leases.is_empty(), "lease left");
    // Removing the last container keeps the bridge.
    assert!(host_links().contains(&format!(": {}:", t.cfg.bridge)));

    let ns2 = Netns::new();
    let att2 = net.attach(&ns2.name, &ns2.path(), &ports).await.unwrap();
    net.teardown_all().await.unwrap();
    let links = host_links();
    assert!(
        !links.contains(&format!(": {}:", t.cfg.bridge)),
        "bridge left"
    );
    assert!(!links.contains(&att2.host_veth), "veth left");
    let prefix = format!("{}-", t.cfg.chain_prefix);
    assert!(!t.nat().contains(&prefix), "nat chain or jump left");
    assert!(
        !sh("iptables-save", &["-t", "filter"]).contains(&prefix),
        "filter chain or jump left"
    );
    assert!(!t.cfg.lease_path().exists(), "lease file left");
}

#[tokio::test]
async fn setup_failures_leave_nothing_behind() {
    let t = TestNet::new();
    let net = t.open().await;
    let (a, b) = (Netns::new(), Netns::new());
    let hp = t.port();
    let ports = parse_port_spec(&format!("{hp}:80")).unwrap();
    net.attach(&a.name, &a.path(), &ports).await.unwrap();
    let bridge_ports = || sh("ip", &["-o", "link", "show", "master", &t.cfg.bridge]);
    let dnat_rules = || {
        let chain = format!("-A {} ", t.cfg.dnat_chain());
        t.nat()
            .lines()
            .filter(|l| l.starts_with(&chain))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (ports_before, dnat_before) = (bridge_ports(), dnat_rules());
    assert_eq!(dnat_before.len(), 1);

    // 1. The host port is published by a.
    let e = net.attach(&b.name, &b.path(), &ports).await.unwrap_err();
    assert!(
        matches!(&e, NetworkError::PortInUse { owner, .. } if *owner == a.name),
        "{e}"
    );

    // 2. The netns does not exist: the lease taken first is given back.
    let e = net
        .attach(&b.name, Path::new("/run/netns/gantry-t-missing"), &[])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("gantry-t-missing"), "{e}");

    // 3. The container already has an eth0: the veth cannot be created.
    let st = Command::new("ip")
        .args([
            "-n", &b.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let e = net.attach(&b.name, &b.path(), &[]).await.unwrap_err();
    assert!(e.to_string().contains("create veth"), "{e}");
    let _ = Command::new("ip")
        .args(["-n", &b.name, "link", "del", "eth0"])
        .status();

    // Other tests run in parallel: compare only this network's links and rules.
    assert_eq!(
        bridge_ports(),
        ports_before,
        "bridge ports changed after failed attaches"
    );
    assert!(!host_links().contains(&host_veth_name(&t.cfg.bridge, &b.name)));
    assert_eq!(
        dnat_rules(),
        dnat_before,
        "DNAT rules changed after failed attaches"
    );
    let leases = net.leases().unwrap();
    assert_eq!(leases.leases.keys().collect::<Vec<_>>(), [&a.name]);

    // 4. Failure after the veth exists (the port rules are refused): veth, eth0 and lease go.
    let failing = BridgeNetwork::with_backends(
        t.cfg.clone(),
        NetlinkLinks::new().unwrap(),
        FakeFirewall {
            fail_on: Some("--dport 1234".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = failing
        .attach(&b.name, &b.path(), &parse_port_spec("1234:80").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1234"), "{e}");
    assert!(!host_links().contains(&host_veth_name(&t.cfg.bridge, &b.name)));
    assert!(!b.links().contains("eth0"), "{}", b.links());
    assert!(!net.leases().unwrap().leases.contains_key(&b.name));
}

#[tokio::test]
async fn cleanup_stale_removes_what_dead_containers_left() {
    let t = TestNet::new();
    let (live, dead) = (Netns::new(), Netns::new());
    let (hp1, hp2) = (t.port(), t.port());
    {
        let net = t.open().await;
        net.attach(
            &live.name,
            &live.path(),
            &parse_port_spec(&format!("{hp1}:80")).unwrap(),
        )
        .await
        .unwrap();
        net.attach(
            &dead.name,
            &dead.path(),
            &parse_port_spec(&format!("{hp2}:80")).unwrap(),
        )
        .await
        .unwrap();
    }
    // A veth on the bridge that no lease accounts for (a crash between create and record).
    let orphan = format!("gto{}", std::process::id() % 100_000);
    let ok = Command::new("ip")
        .args([
            "link",
            "add",
            &orphan,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{orphan}p"),
        ])
        .status()
        .unwrap()
        .success()
        && Command::new("ip")
            .args(["link", "set", &orphan, "master", &t.cfg.bridge])
            .status()
            .unwrap()
            .success();
    assert!(ok, "make orphan veth");

    // The agent restarts; only `live` still exists.
    let net = t.open().await;
    let live_name = live.name.clone();
    let removed = net.cleanup_stale(|id| id == live_name).await.unwrap();
    assert_eq!(removed, std::slice::from_ref(&dead.name));
    let links = host_links();
    assert!(!links.contains(&orphan), "orphan veth left");
    assert!(!links.contains(&host_veth_name(&t.cfg.bridge, &dead.name)));
    assert!(links.contains(&host_veth_name(&t.cfg.bridge, &live.name)));
    let nat = t.nat();
    assert!(!nat.contains(&format!("gantry:{}", dead.name)), "{nat}");
    assert!(nat.contains(&format!("gantry:{}", live.name)), "{nat}");
    let leases = net.leases().unwrap();
    assert!(leases.leases.contains_key(&live.name) && !leases.leases.contains_key(&dead.name));
}

#[tokio::test]
async fn concurrent_attaches_cannot_both_publish_a_port() {
    let t = TestNet::new();
    let net = t.open().await;
    let (a, b) = (Netns::new(), Netns::new());
    let hp = t.port();
    let ports = parse_port_spec(&format!("{hp}:80")).unwrap();
    let (pa, pb) = (a.path(), b.path());
    let (ra, rb) = tokio::join!(
        net.attach(&a.name, &pa, &ports),
        net.attach(&b.name, &pb, &ports)
    );
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one may win: {ra:?} / {rb:?}"
    );
    let (loser, e) = match (ra, rb) {
        (Ok(_), Err(e)) => (&b, e),
        (Err(e), _) => (&a, e),
        (Ok(_), Ok(_)) => unreachable!("checked above"),
    };
    assert!(matches!(e, NetworkError::PortInUse { .. }), "{e}");
    assert!(!loser.links().contains("eth0"));
    let rules = t.nat();
    assert_eq!(
        rules.matches(&format!("--dport {hp} ")).count(),
        1,
        "{rules}"
    );
}

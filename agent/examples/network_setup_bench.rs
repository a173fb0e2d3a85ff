//! Benchmark: bridge-network setup + teardown per container, gantry (rtnetlink in-process,
//! iptables-restore for published ports) against the same wiring done with the standard
//! tools (`ip` and `iptables` forked per step, as shell-based setups do), interleaved in one
//! run. Root only; uses its own bridge, subnet, chains and namespaces and removes them.
//!
//! `cargo run --release -p gantry-agent --example network_setup_bench -- [ITERATIONS]`
//! (see bench/network-setup.sh).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use gantry_agent::network::{parse_port_spec, BridgeConfig, BridgeNetwork};

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn p90(v: &mut [Duration]) -> f64 {
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)].as_secs_f64() * 1000.0
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

struct Netns(String);
impl Netns {
    fn new(name: String) -> Self {
        run("ip", &["netns", "add", &name]);
        Netns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The same steps with forked tools: veth with its peer in the netns, enslave + up, address,
/// eth0 up, lo up, default route; a DNAT rule when a port is published; teardown.
fn tools_setup(cfg: &BridgeConfig, ns: &str, veth: &str, ip: &str, port: Option<u16>) {
    run(
        "ip",
        &[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    );
    run("ip", &["link", "set", veth, "master", &cfg.bridge, "up"]);
    let addr = format!("{ip}/{}", cfg.subnet.prefix_len());
    run("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
    run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
    run("ip", &["-n", ns, "link", "set", "lo", "up"]);
    let gw = cfg.gateway.to_string();
    run("ip", &["-n", ns, "route", "add", "default", "via", &gw]);
    if let Some(p) = port {
        let (dport, to) = (p.to_string(), format!("{ip}:80"));
        let chain = cfg.dnat_chain();
        run(
            "iptables",
            &[
                "-w",
                "-t",
                "nat",
                "-A",
                &chain,
                "-p",
                "tcp",
                "--dport",
                &dport,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        );
    }
}

fn tools_teardown(cfg: &BridgeConfig, veth: &str, ip: &str, port: Option<u16>) {
    run("ip", &["link", "del", veth]);
    if let Some(p) = port {
        let (dport, to) = (p.to_string(), format!("{ip}:80"));
        let chain = cfg.dnat_chain();
        run(
            "iptables",
            &[
                "-w",
                "-t",
                "nat",
                "-D",
                &chain,
                "-p",
                "tcp",
                "--dport",
                &dport,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network benchmark creates links and rules: run it as root"
    );
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ITERATIONS is a number"))
        .unwrap_or(50);
    let pid = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let cfg = BridgeConfig::custom(
        dir.path(),
        &format!("gtbench{}", pid % 10_000),
        &format!("10.252.{}.0/24", pid % 256),
        &format!("GTB{pid}"),
    )
    .unwrap();
    let t = Instant::now();
    let net = BridgeNetwork::open(cfg.clone()).await.unwrap();
    let open_ms = t.elapsed().as_secs_f64() * 1000.0;

    let mut results: Vec<(&str, Vec<Duration>, Vec<Duration>)> = vec![
        ("gantry, no ports", vec![], vec![]),
        ("gantry, 1 published port", vec![], vec![]),
        ("ip/iptables tools, no ports", vec![], vec![]),
        ("ip/iptables tools, 1 published port", vec![], vec![]),
    ];
    let fds_before = open_fds();
    for i in 0..n {
        for (k, entry) in results.iter_mut().enumerate() {
            let ns = Netns::new(format!("gtbench-{pid}-{i}-{k}"));
            let port = (k % 2 == 1).then_some(30_000 + (i as u16));
            let id = format!("bench-{i}-{k}");
            if k < 2 {
                let ports = port
                    .map(|p| parse_port_spec(&format!("{p}:80")).unwrap())
                    .unwrap_or_default();
                let t = Instant::now();
                net.attach(&id, &ns.path(), &ports).await.unwrap();
                entry.1.push(t.elapsed());
                let t = Instant::now();
                assert!(net.detach(&id).await.unwrap());
                entry.2.push(t.elapsed());
            } else {
                let veth = format!("gtbv{}x{i}", pid % 10_000);
                let ip = format!("{}", {
                    let o = cfg.subnet.network().octets();
                    std::net::Ipv4Addr::new(o[0], o[1], o[2], 200)
                });
                let t = Instant::now();
                tools_setup(&cfg, &ns.0, &veth, &ip, port);
                entry.1.push(t.elapsed());
                let t = Instant::now();
                tools_teardown(&cfg, &veth, &ip, port);
                entry.2.push(t.elapsed());
            }
        }
    }
    // Let the netlink connections of the last attaches wind down, then count descriptors.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fds_after = open_fds();
    net.teardown_all().await.unwrap();

    println!("bridge open (bridge + chains, first time): {open_ms:.1} ms");
    println!("iterations: {n}, interleaved; open fds before/after: {fds_before}/{fds_after}");
    println!("| wiring | setup median | setup p90 | teardown median | setup+teardown median |");
    println!("|---|---:|---:|---:|---:|");
    for (name, setup, teardown) in &mut results {
        let total: Vec<Duration> = setup
            .iter()
            .zip(teardown.iter())
            .map(|(a, b)| *a + *b)
            .collect();
        let mut total = total;
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            median(setup),
            p90(setup),
            median(teardown),
            median(&mut total)
        );
    }
}

//! Raft benchmark driver (see bench/raft.sh): starts 3 `gantry controller run` processes on
//! loopback (durable sled data dirs in a temp dir), then measures
//! - commits/s and latency with 1, 16, 256 concurrent clients writing small commands;
//! - failover: leader SIGKILL → first write accepted again, over N trials;
//! - with `--rss-nodes N --rss-services S --rss-replicas R`: the members' RSS after N nodes
//!   and S×R allocations (S services of R replicas, placed by the leader's scheduler) are
//!   committed.
//!
//! - with `--compare-mtls`: only commits, on two clusters side by side — one run with
//!   `--insecure` (plain TCP), one with mutual TLS (bootstrap CA, members joining with a
//!   controller token, clients with the admin credential) — in interleaved rounds
//!   (`--rounds R`, default 3), medians per mode and the mTLS/insecure ratio, the ratios of
//!   each round's pair, the ratio of all calls made (every run on stderr), and the CPU each
//!   side spent per call.
//! - with `--ceiling`: after each commit row, the same clients on the same kind of
//!   connections call `Status` (answered from the leader's metrics: no Raft, no disk) for
//!   as long, to show what the gRPC stack alone allows on this machine (also with
//!   `--compare-mtls`: what TLS costs an RPC that does nothing else).
//!
//! Usage: raft_bench GANTRY_BIN [--seconds S] [--trials N] [--clients 1,16,256] [--conns C]
//!        [--ceiling]
//!        [--rss-nodes N --rss-services S --rss-replicas R] [--compare-mtls [--rounds R]]
//!        [--heartbeat-ms MS --election-timeout-ms MS] (defaults 25 and 75; not for
//!        --compare-mtls)

use gantry_controller::api::ControllerClient;
use gantry_controller::raft::network::Transport;
use gantry_controller::state::{Command, NodeStatus, Reply, Resources, ServiceSpec};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Proc {
    id: u64,
    addr: String,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// A member of a cluster run with `--insecure`.
    fn spawn(bin: &str, id: u64, addr: &str, dir: &std::path::Path, extra: &[&str]) -> Proc {
        Self::spawn_with(bin, id, addr, dir, extra, true)
    }

    fn spawn_with(
        bin: &str,
        id: u64,
        addr: &str,
        dir: &std::path::Path,
        extra: &[&str],
        insecure: bool,
    ) -> Proc {
        let mut cmd = std::process::Command::new(bin);
        if insecure {
            cmd.env("GANTRY_INSECURE", "1");
        } else {
            cmd.env_remove("GANTRY_INSECURE");
        }
        let child = cmd
            .args([
                "controller",
                "run",
                "--id",
                &id.to_string(),
                "--listen",
                addr,
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            // RAFT_BENCH_LOG_DIR=DIR keeps each member's log (appended) in DIR/mID.log
            .stderr(match std::env::var_os("RAFT_BENCH_LOG_DIR") {
                Some(d) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(std::path::Path::new(&d).join(format!("m{id}.log")))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
                None => Stdio::null(),
            })
            .spawn()
            .expect("spawn gantry");
        Proc {
            id,
            addr: addr.into(),
            dir: dir.into(),
            child: Some(child),
        }
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc_kill(c.id() as i32) };
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

unsafe fn libc_kill(pid: i32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    kill(pid, 9);
}

fn free_addr(ip: &str) -> String {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap().to_string()
}

async fn leader(addrs: &[String], voters: usize) -> (u64, String) {
    leader_over(addrs, voters, &Transport::Plain).await
}

async fn leader_over(addrs: &[String], voters: usize, t: &Transport) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for a in addrs {
            let mut c = ControllerClient::with_transport(vec![a.clone()], t.clone());
            c.retry_for = Duration::from_millis(100);
            if let Ok(st) = c.status().await {
                if let (Some(l), Some(addr)) = (st.leader, st.leader_address.clone()) {
                    if st.members.iter().filter(|m| m.voter).count() == voters {
                        return (l, addr);
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A small command: a node status flip (the node exists, so it applies and persists).
fn small(i: u64) -> Command {
    Command::SetNodeStatus {
        node: 1,
        status: if i.is_multiple_of(2) {
            NodeStatus::Ready
        } else {
            NodeStatus::Draining
        },
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .expect("usage: raft_bench GANTRY_BIN [--seconds S] [--trials N] [--clients 1,16,256]")
        .clone();
    let opt = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let seconds: u64 = opt("--seconds", "5").parse().unwrap();
    let trials: usize = opt("--trials", "20").parse().unwrap();
    let clients: Vec<usize> = opt("--clients", "1,16,256")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    // `--conns C`: clients share C connections (etcd's `benchmark --conns`); by default
    // each client has its own.
    let conns: Option<usize> = args
        .iter()
        .any(|a| a == "--conns")
        .then(|| opt("--conns", "1").parse().unwrap());
    let rss_nodes: u64 = opt("--rss-nodes", "0").parse().unwrap();
    let rss_services: u64 = opt("--rss-services", "0").parse().unwrap();
    let rss_replicas: u64 = opt("--rss-replicas", "0").parse().unwrap();
    // `--ceiling`: each write row is followed by a `Status` row (see the module doc).
    let calls: &[Call] = if args.iter().any(|a| a == "--ceiling") {
        &[Call::Write, Call::Status]
    } else {
        &[Call::Write]
    };
    let root = tempfile::tempdir().unwrap();
    if args.iter().any(|a| a == "--compare-mtls") {
        let rounds: usize = opt("--rounds", "3").parse().unwrap();
        compare_mtls(&bin, root.path(), seconds, rounds, &clients, conns, calls).await;
        return;
    }
    // Loopback-class timings by default (`--heartbeat-ms`, `--election-timeout-ms`):
    // heartbeat 25 ms, election timeout 75-150 ms. openraft 0.9 elects after leader lease
    // (= election max) + election timeout, so 225-300 ms after the last heartbeat. The
    // simulated nodes never heartbeat: keep the leader loop from marking them down.
    let heartbeat = opt("--heartbeat-ms", TIMING[1]);
    let election = opt("--election-timeout-ms", TIMING[3]);
    let mut timing = TIMING;
    timing[1] = &heartbeat;
    timing[3] = &election;
    let mut procs: Vec<Proc> = Vec::new();
    for id in 1..=3u64 {
        let addr = free_addr(&format!("127.0.0.{}", id + 1));
        let dir = root.path().join(format!("m{id}"));
        let mut extra: Vec<&str> = timing.to_vec();
        let seed = procs.first().map(|p| p.addr.clone());
        if let Some(seed) = &seed {
            extra.extend(["--join", seed.as_str()]);
        } else {
            extra.push("--bootstrap");
        }
        procs.push(Proc::spawn(&bin, id, &addr, &dir, &extra));
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        leader(&addrs, id as usize).await;
    }
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let (_, leader_addr) = leader(&addrs, 3).await;
    let mut c = ControllerClient::new(vec![leader_addr.clone()]);
    let r = Command::RegisterNode {
        name: "bench".into(),
        address: "bench:1".into(),
        labels: Default::default(),
        capacity: Default::default(),
        allocatable: Default::default(),
        api: None,
    };
    c.write(&r).await.unwrap().1.unwrap();

    println!(
        "# commits: 3 members on loopback (127.0.0.2-4), sled durable (flush before ack), {seconds} s per row, {}",
        conns.map_or("one connection per client".to_string(), |c| format!("clients sharing {c} connection(s)"))
    );
    println!("| clients | call | calls/s | p50 ms | p99 ms | max ms |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &n in &clients {
        for &call in calls {
            let (rate, all, _) = load(
                &leader_addr,
                &Transport::Plain,
                n,
                seconds,
                conns,
                call,
                &[],
            )
            .await;
            println!(
                "| {n} | {} | {rate:.0} | {:.2} | {:.2} | {:.2} |",
                call.name(),
                pct(&all, 0.5),
                pct(&all, 0.99),
                pct(&all, 1.0)
            );
        }
    }

    println!();
    println!("# failover: leader SIGKILL → first write accepted (a client retrying every member), {trials} trials");
    let mut times = Vec::new();
    for t in 0..trials {
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        let (lid, _) = leader(&addrs, 3).await;
        // settle: every member applied the latest write
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idx = procs.iter().position(|p| p.id == lid).unwrap();
        let others: Vec<String> = procs
            .iter()
            .filter(|p| p.id != lid)
            .map(|p| p.addr.clone())
            .collect();
        let mut c = ControllerClient::new(others);
        c.retry_for = Duration::from_secs(10);
        let killed = Instant::now();
        procs[idx].kill();
        let r = c.write(&small(t as u64)).await;
        let took = killed.elapsed();
        assert!(matches!(r, Ok((_, Ok(_)))), "write after failover: {r:?}");
        times.push(took);
        // bring the killed member back (resume from its data dir) before the next trial
        let (id, addr, dir) = (
            procs[idx].id,
            procs[idx].addr.clone(),
            procs[idx].dir.clone(),
        );
        procs[idx] = Proc::spawn(&bin, id, &addr, &dir, &timing);
    }
    times.sort();
    println!(
        "| trials | p50 ms | max ms | min ms |\n|---:|---:|---:|---:|\n| {trials} | {:.0} | {:.0} | {:.0} |",
        pct(&times, 0.5),
        pct(&times, 1.0),
        pct(&times, 0.0)
    );

    if rss_nodes > 0 {
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        let (_, leader_addr) = leader(&addrs, 3).await;
        rss_phase(&procs, &leader_addr, rss_nodes, rss_services, rss_replicas).await;
    }
}

/// VmRSS, VmHWM, RssAnon and RssFile of a process, in MiB.
fn rss_parts(pid: u32) -> (f64, f64, f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"), kb("RssAnon:"), kb("RssFile:"))
}

async fn rss_phase(procs: &[Proc], leader_addr: &str, nodes: u64, services: u64, replicas: u64) {
    let start = Instant::now();
    // nodes, 32 writers at a time
    let mut ids = Vec::with_capacity(nodes as usize);
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let addr = leader_addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = ControllerClient::new(vec![addr]);
            let mut out = Vec::new();
            for i in (w..nodes).step_by(32) {
                let big = Resources {
                    cpu_millis: 64_000,
                    memory_bytes: 256 << 30,
                    pids: 1 << 20,
                };
                let cmd = Command::RegisterNode {
                    name: format!("node-{i:05}"),
                    address: format!("10.{}.{}.{}:7070", i >> 16, (i >> 8) & 255, i & 255),
                    labels: [
                        (
                            "env".to_string(),
                            ["dev", "qa", "prod"][i as usize % 3].to_string(),
                        ),
                        ("site".to_string(), format!("site-{}", i % 4)),
                    ]
                    .into(),
                    capacity: big,
                    allocatable: big,
                    api: None,
                };
                match c.write(&cmd).await.unwrap().1.unwrap() {
                    Reply::NodeRegistered { id } => out.push(id),
                    r => panic!("register: {r:?}"),
                }
            }
            out
        }));
    }
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert_eq!(ids.len() as u64, nodes, "every node registered");
    // services of `replicas` replicas each, 8 writers at a time; the leader's scheduler
    // places them (through plan_apply and Raft, as in production), exactly `replicas` each.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let addr = leader_addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = ControllerClient::new(vec![addr]);
            for s in (w..services).step_by(8) {
                let name = format!("svc-{s:04}");
                let spec = ServiceSpec {
                    image: format!("registry.local/app-{s}:1"),
                    command: vec!["/bin/app".into()],
                    env: [("SERVICE".to_string(), name.clone())].into(),
                    resources: Resources {
                        cpu_millis: 10,
                        memory_bytes: 16 << 20,
                        pids: 16,
                    },
                    replicas: replicas as u32,
                    ..Default::default()
                };
                let upsert = Command::UpsertService {
                    name: name.clone(),
                    spec,
                    expected_index: None,
                };
                // While the leader commits plans of thousands of placements (each a sled
                // transaction on every member), an upsert can miss the members' 5 s write
                // timeout; it may still land later, and upserting the same spec again
                // changes nothing, so retry (a few times: this is the setup, not a measure).
                let mut attempt = 0;
                let reply = loop {
                    attempt += 1;
                    match c.write(&upsert).await {
                        Ok((_, r)) => break r.unwrap(),
                        Err(e) if attempt < 10 => {
                            eprintln!("upsert {name}: attempt {attempt}: {e}; retrying");
                        }
                        Err(e) => panic!("upsert {name}: {attempt} attempts: {e}"),
                    }
                };
                match reply {
                    Reply::ServiceUpserted { .. } => {}
                    r => panic!("upsert: {r:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Placed: the leader reports no unplaced replica and its log has been still for 3 s.
    let mut c = ControllerClient::new(vec![leader_addr.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut last, mut still_since) = (0, Instant::now());
    loop {
        assert!(
            Instant::now() < deadline,
            "replicas not placed within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let applied = c.status().await.unwrap().last_applied.unwrap_or(0);
        if applied != last {
            (last, still_since) = (applied, Instant::now());
            continue;
        }
        if still_since.elapsed() >= Duration::from_secs(3) && c.unplaced().await.unwrap().is_empty()
        {
            break;
        }
    }
    let took = start.elapsed();
    // let snapshots and compaction settle
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!();
    println!(
        "# memory: {nodes} nodes, {} allocations ({services} services × {replicas} replicas, placed by the leader's scheduler), committed in {:.1} s (incl. 3 s of quiet)",
        services * replicas,
        took.as_secs_f64()
    );
    // Sampled every second for 20 s: the members trim their heaps every 10 s, so one
    // sample could land just after a trim; the table keeps each member's highest sample.
    let pids: Vec<(u64, u32)> = procs
        .iter()
        .filter_map(|p| p.child.as_ref().map(|c| (p.id, c.id())))
        .collect();
    let mut high = vec![(0f64, 0f64, 0f64); pids.len()];
    for _ in 0..20 {
        for (i, (_, pid)) in pids.iter().enumerate() {
            let (rss, _, anon, file) = rss_parts(*pid);
            if rss > high[i].0 {
                high[i] = (rss, anon, file);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "| member | RSS MiB (highest of 20 samples, 1/s) | its anonymous part | file-backed | peak RSS ever (VmHWM) MiB |\n|---:|---:|---:|---:|---:|"
    );
    for (i, (id, pid)) in pids.iter().enumerate() {
        let (_, hwm, _, _) = rss_parts(*pid);
        let (rss, anon, file) = high[i];
        println!("| {id} | {rss:.0} | {anon:.0} | {file:.0} | {hwm:.0} |");
    }
    // To look inside the members (smaps, heap profiles) before they are stopped.
    if let Ok(s) = std::env::var("RAFT_BENCH_HOLD_SECONDS") {
        let pids: Vec<u32> = procs
            .iter()
            .filter_map(|p| p.child.as_ref().map(|c| c.id()))
            .collect();
        println!("# holding the members for {s} s: pids {pids:?}");
        tokio::time::sleep(Duration::from_secs(s.parse().unwrap_or(0))).await;
    }
}

const TIMING: [&str; 8] = [
    "--heartbeat-ms",
    "25",
    "--election-timeout-ms",
    "75",
    "--node-ttl-ms",
    "86400000",
    "--node-grace-ms",
    "86400000",
];

/// Three members under `root`, plain or mutual TLS; their processes, the transport
/// clients use (TLS: the admin credential of the bootstrap) and the leader's address.
async fn cluster(bin: &str, root: &std::path::Path, tls: bool) -> (Vec<Proc>, Transport, String) {
    let mut procs: Vec<Proc> = Vec::new();
    let mut transport = Transport::Plain;
    let mut token = String::new();
    for id in 1..=3u64 {
        let addr = free_addr(&format!("127.0.0.{}", id + 1));
        let dir = root.join(format!("m{id}"));
        let mut extra: Vec<&str> = TIMING.to_vec();
        let seed = procs.first().map(|p| p.addr.clone());
        if let Some(seed) = &seed {
            extra.extend(["--join", seed.as_str()]);
            if tls {
                extra.extend(["--token", token.as_str()]);
            }
        } else {
            extra.push("--bootstrap");
        }
        procs.push(Proc::spawn_with(bin, id, &addr, &dir, &extra, !tls));
        if tls && id == 1 {
            let ctx_path = dir.join("pki").join("admin.context");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !ctx_path.exists() {
                assert!(Instant::now() < deadline, "no admin context");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let ctx = gantry_security::context::Context::load(&ctx_path).unwrap();
            let certs = gantry_security::tls::CertStore::new(&ctx.credential()).unwrap();
            transport = Transport::tls(&ctx.ca_pem, Some(certs)).unwrap();
            let (_, l) = leader_over(std::slice::from_ref(&addr), 1, &transport).await;
            let t = gantry_security::token::JoinToken::generate(&ctx.ca_pem).unwrap();
            let mut c = ControllerClient::with_transport(vec![l], transport.clone());
            let cmd = Command::CreateToken {
                id: t.id.clone(),
                role: gantry_security::Role::Controller,
                secret_sha256: t.secret_sha256(),
                expires_at_ms: u64::MAX,
            };
            c.write(&cmd).await.unwrap().1.unwrap();
            token = t.to_string();
        }
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        leader_over(&addrs, id as usize, &transport).await;
    }
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let (_, leader_addr) = leader_over(&addrs, 3, &transport).await;
    let mut c = ControllerClient::with_transport(vec![leader_addr.clone()], transport.clone());
    let r = Command::RegisterNode {
        name: "bench".into(),
        address: "bench:1".into(),
        labels: Default::default(),
        capacity: Default::default(),
        allocatable: Default::default(),
        api: None,
    };
    c.write(&r).await.unwrap().1.unwrap();
    (procs, transport, leader_addr)
}

/// What the benchmark's clients call in a loop.
#[derive(Clone, Copy)]
enum Call {
    /// Commit a small command.
    Write,
    /// `Status`: answered from the member's Raft metrics, no log entry, no disk.
    Status,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Write => "write (commit)",
            Call::Status => "Status (no Raft)",
        }
    }
}

/// CPU time (user + system, all threads) a process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command (which may hold spaces), from the 3rd: utime is the
    // 14th field, stime the 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// `n` clients making `call` for `seconds`: calls/s and each successful call's latency
/// (sorted). Every client connects (TCP, and the TLS handshake with --compare-mtls) and
/// calls once before the clock starts: this measures calls on established connections, as
/// long-lived agents and members make them, not `n` handshakes squeezed into the window.
/// With `conns`, the clients share that many connections, round-robin.
/// With `pids`, also the CPU ticks each of them used while the clients ran (from when all
/// were connected to when the last one ended).
async fn load(
    leader: &str,
    t: &Transport,
    n: usize,
    seconds: u64,
    conns: Option<usize>,
    call: Call,
    pids: &[u32],
) -> (f64, Vec<Duration>, Vec<u64>) {
    let shared: Vec<tonic::transport::Channel> = (0..conns.unwrap_or(0))
        .map(|_| gantry_controller::raft::network::channel(leader, t).unwrap())
        .collect();
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for k in 0..n {
        let addr = leader.to_string();
        let t = t.clone();
        let ready = ready.clone();
        let ch = (!shared.is_empty()).then(|| shared[k % shared.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut c = ControllerClient::with_transport(vec![addr.clone()], t);
            if let Some(ch) = ch {
                c = c.with_channel(&addr, ch);
            }
            let mut i = k as u64;
            let _ = c.write(&small(i)).await;
            i += n as u64;
            ready.wait().await;
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let s = Instant::now();
                let ok = match call {
                    Call::Write => matches!(c.write(&small(i)).await, Ok((_, Ok(_)))),
                    Call::Status => c.status().await.is_ok(),
                };
                if ok {
                    lat.push(s.elapsed());
                }
                i += 1;
            }
            lat
        }));
    }
    ready.wait().await;
    let start = Instant::now();
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    let used = pids
        .iter()
        .zip(before)
        .map(|(&p, b)| cpu_ticks(p) - b)
        .collect();
    all.sort();
    (all.len() as f64 / secs, all, used)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn compare_mtls(
    bin: &str,
    root: &std::path::Path,
    seconds: u64,
    rounds: usize,
    clients: &[usize],
    conns: Option<usize>,
    calls: &[Call],
) {
    let (plain_procs, plain_t, plain_leader) = cluster(bin, &root.join("plain"), false).await;
    let (tls_procs, tls_t, tls_leader) = cluster(bin, &root.join("tls"), true).await;
    // Whose CPU a run is charged with: this process (the clients), the leader, the
    // followers.
    let accounted = |procs: &[Proc], leader: &str| -> Vec<u32> {
        let pid = |p: &Proc| p.child.as_ref().unwrap().id();
        let mut pids = vec![std::process::id()];
        pids.extend(procs.iter().filter(|p| p.addr == leader).map(pid));
        pids.extend(procs.iter().filter(|p| p.addr != leader).map(pid));
        pids
    };
    let (plain_pids, tls_pids) = (
        accounted(&plain_procs, &plain_leader),
        accounted(&tls_procs, &tls_leader),
    );
    // CPU µs per call, by mode (insecure, mTLS) and by clients, leader, followers.
    let mut cpu_rows = Vec::new();
    println!(
        "# commits, --insecure vs mutual TLS: two 3-member clusters on loopback side by side \
         (only one under load at a time), {rounds} interleaved rounds of {seconds} s (which goes first alternates), medians; \
         per round: the ratio of the round's two runs, back to back (median, lowest, highest); \
         all calls: the ratio of the calls made over all rounds (each run on stderr)"
    );
    println!("| clients | call | insecure calls/s | mTLS calls/s | mTLS/insecure | insecure p50 ms | mTLS p50 ms | mTLS/insecure p50 | per round: median | lowest | highest | all calls, mTLS/insecure |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in clients {
        for &call in calls {
            let (mut pr, mut tr, mut pp, mut tp) = (vec![], vec![], vec![], vec![]);
            // [mode][clients, leader, followers]: ticks, and calls
            let mut ticks = [[0u64; 3]; 2];
            let mut done = [0usize; 2];
            for round in 0..rounds {
                // alternate which cluster goes first (a shared machine's load drifts)
                for tls in [round % 2 == 1, round % 2 == 0] {
                    let (leader, t, rates, p50s, pids) = if tls {
                        (&tls_leader, &tls_t, &mut tr, &mut tp, &tls_pids)
                    } else {
                        (&plain_leader, &plain_t, &mut pr, &mut pp, &plain_pids)
                    };
                    let (r, l, used) = load(leader, t, n, seconds, conns, call, pids).await;
                    // Let this run's connections close before the other cluster's run starts,
                    // so their teardown does not land in its window.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let p50 = pct(&l, 0.5);
                    // each run on stderr: the spread behind the medians
                    eprintln!(
                        "# round {round}, {}: {r:.0} calls/s, p50 {p50:.2} ms, CPU ticks (clients, leader, followers) {used:?}",
                        if tls { "mTLS" } else { "insecure" },
                    );
                    rates.push(r);
                    p50s.push(p50);
                    let m = tls as usize;
                    ticks[m][0] += used[0];
                    ticks[m][1] += used[1];
                    ticks[m][2] += used[2..].iter().sum::<u64>();
                    done[m] += l.len();
                }
            }
            cpu_rows.push((n, call, ticks, done));
            // Each round's two runs ran back to back: their ratio leaves out the drift of
            // the machine's speed between rounds.
            let mut paired: Vec<f64> = tr.iter().zip(&pr).map(|(t, p)| t / p).collect();
            paired.sort_by(|a, b| a.total_cmp(b));
            let (lowest, highest) = (paired[0], paired[paired.len() - 1]);
            let paired = median(paired);
            // Every run lasts as long, so the ratio of the means is that of all the calls
            // made: it uses every round, where a median of a few noisy ones jumps.
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let all_rounds = mean(&tr) / mean(&pr);
            let (pr, tr, pp, tp) = (median(pr), median(tr), median(pp), median(tp));
            println!(
                "| {n} | {} | {pr:.0} | {tr:.0} | {:.3} | {pp:.2} | {tp:.2} | {:.3} | {paired:.3} | {lowest:.3} | {highest:.3} | {all_rounds:.3} |",
                call.name(),
                tr / pr,
                tp / pp
            );
        }
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    println!(
        "# CPU per call (user + system, all threads, µs; {hz} ticks/s), over all rounds: \
         the benchmark's clients (one process), the leader, the two followers together"
    );
    println!("| clients | call | clients insecure | clients mTLS | leader insecure | leader mTLS | followers insecure | followers mTLS | all insecure | all mTLS | all mTLS/insecure |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, call, ticks, done) in cpu_rows {
        let us = |m: usize, k: usize| ticks[m][k] as f64 * 1e6 / hz / done[m].max(1) as f64;
        let all = |m: usize| (0..3).map(|k| us(m, k)).sum::<f64>();
        println!(
            "| {n} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} |",
            call.name(),
            us(0, 0),
            us(1, 0),
            us(0, 1),
            us(1, 1),
            us(0, 2),
            us(1, 2),
            all(0),
            all(1),
            all(1) / all(0)
        );
    }
}

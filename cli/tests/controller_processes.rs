//! Real `gantry controller run` processes on 127.0.0.x loopback addresses: leader SIGKILL
//! with a client that records acknowledged writes, the CLI's status/members, snapshot
//! save → restore into a new cluster, and recover from one survivor.

use gantry_controller::api::ControllerClient;
use gantry_controller::state::{Command, Node, Resources, ServiceSpec, StateImage};
use gantry_proto::cluster::ReadKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_gantry");

/// One controller process; SIGKILLed (by pid) when dropped.
struct Proc {
    id: u64,
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(id: u64, addr: &str, dir: &Path, extra: &[&str]) -> Proc {
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = std::process::Command::new(BIN)
            .env("GANTRY_INSECURE", "1")
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
            .args([
                "--heartbeat-ms",
                "50",
                "--election-timeout-ms",
                "150",
                "--write-timeout-ms",
                "2000",
                // The fake nodes never heartbeat: the leader loop must not mark them
                // down while states are compared.
                "--node-grace-ms",
                "3600000",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gantry controller run");
        Proc {
            id,
            addr: addr.into(),
            dir: dir.into(),
            child: Some(child),
        }
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn register(name: &str) -> Command {
    let r = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        pids: 100,
    };
    Command::RegisterNode {
        name: name.into(),
        address: format!("{name}:7000"),
        labels: BTreeMap::new(),
        capacity: r,
        allocatable: r,
        api: None,
    }
}

async fn wait_ready(addrs: &[String], voters: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = ControllerClient::new(addrs.to_vec());
        c.retry_for = Duration::from_millis(500);
        if let Ok(st) = c.status().await {
            if let Some(l) = st.leader {
                if st.members.iter().filter(|m| m.voter).count() == voters {
                    return l;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "cluster of {voters} not ready within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Start members 1..=n on 127.0.0.(1+i): 1 bootstraps, the others join it.
async fn start_cluster(root: &Path, n: u64) -> Vec<Proc> {
    let mut procs = Vec::new();
    for id in 1..=n {
        let addr = common::free_addr(&format!("127.0.0.{}", id + 1));
        let dir = root.join(format!("m{id}"));
        let p = if id == 1 {
            Proc::spawn(id, &addr, &dir, &["--bootstrap"])
        } else {
            let seed = procs.first().map(|p: &Proc| p.addr.clone()).unwrap();
            Proc::spawn(id, &addr, &dir, &["--join", &seed])
        };
        procs.push(p);
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        wait_ready(&addrs, id as usize).await;
    }
    procs
}

fn gantry(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .env("GANTRY_INSECURE", "1")
        .args(args)
        .output()
        .expect("run gantry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_elects_new_leader_and_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let mut procs = start_cluster(root.path(), 3).await;
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let leader = wait_ready(&addrs, 3).await;

    let writer = tokio::spawn({
        let addrs = addrs.clone();
        async move {
            let mut c = ControllerClient::new(addrs);
            c.retry_for = Duration::from_secs(5);
            let mut acked = Vec::new();
            let start = Instant::now();
            let mut i = 0;
            while start.elapsed() < Duration::from_secs(3) {
                let name = format!("w{i}");
                i += 1;
                // Errors are allowed (in flight during the kill); only acks are promises.
                if let Ok((idx, Ok(_))) = c.write(&register(&name)).await {
                    acked.push((name, idx, start.elapsed()));
                }
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed_at = Instant::now();
    procs[(leader - 1) as usize].kill();
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 10,
        "writes were acknowledged: {}",
        acked.len()
    );

    let survivors: Vec<String> = procs
        .iter()
        .filter(|p| p.child.is_some())
        .map(|p| p.addr.clone())
        .collect();
    let mut c = ControllerClient::new(survivors.clone());
    let st = c.status().await.unwrap();
    assert!(
        st.leader.is_some_and(|l| l != leader),
        "a new leader: {st:?}"
    );
    let (_, nodes): (u64, Vec<Node>) = c.read(ReadKind::Nodes, false).await.unwrap();
    for (name, idx, _) in &acked {
        assert!(
            nodes.iter().any(|n| &n.name == name),
            "acknowledged write {name} (index {idx}) lost"
        );
    }
    let after_kill = acked
        .iter()
        .filter(|a| a.2 > Duration::from_millis(800))
        .count();
    assert!(
        after_kill > 0,
        "writes were acknowledged after the leader died"
    );
    eprintln!(
        "{} acked writes, {} after the kill ({:?} ago)",
        acked.len(),
        after_kill,
        killed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_snapshot_restore_and_recover_with_real_processes() {
    let root = tempfile::tempdir().unwrap();
    let mut procs = start_cluster(root.path(), 3).await;
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let list = addrs.join(",");
    let mut c = ControllerClient::new(addrs.clone());
    for i in 0..25 {
        let (_, r) = c.write(&register(&format!("n{i}"))).await.unwrap();
        r.unwrap();
    }

    let (ok, out, err) = gantry(&["controller", "status", "--controller", &list]);
    assert!(ok, "status failed: {err}");
    assert!(
        out.contains("term") && out.matches("voter").count() == 3,
        "{out}"
    );
    let (ok, out, err) = gantry(&[
        "controller",
        "members",
        "--controller",
        &addrs[1],
        "--format",
        "json",
    ]);
    assert!(ok, "members failed: {err}");
    let members: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|m| m["leader"] == true).count(), 1);

    // removing a member that does not exist: a clear error and exit 1
    let (ok, _, err) = gantry(&["controller", "remove", "--id", "42", "--controller", &list]);
    assert!(!ok && err.contains("member 42 not found"), "{err}");

    // snapshot save → restore into a new cluster → identical state
    let snap = root.path().join("snap.json");
    let (ok, out, err) = gantry(&[
        "controller",
        "snapshot",
        "save",
        snap.to_str().unwrap(),
        "--controller",
        &list,
    ]);
    assert!(ok, "snapshot save failed: {err}");
    assert!(out.contains("25 nodes"), "{out}");
    let (_, live): (u64, StateImage) = c.read(ReadKind::State, false).await.unwrap();
    let new_addr = common::free_addr("127.0.0.9");
    let new_dir = root.path().join("restored");
    let (ok, _, err) = gantry(&[
        "controller",
        "snapshot",
        "restore",
        snap.to_str().unwrap(),
        "--data-dir",
        new_dir.to_str().unwrap(),
        "--id",
        "1",
        "--listen",
        &new_addr,
    ]);
    assert!(ok, "restore failed: {err}");
    let restored = Proc::spawn(1, &new_addr, &new_dir, &[]);
    wait_ready(std::slice::from_ref(&restored.addr), 1).await;
    let mut rc = ControllerClient::new(vec![new_addr.clone()]);
    let (_, image): (u64, StateImage) = rc.read(ReadKind::State, false).await.unwrap();
    assert_eq!(image, live, "restored state is identical");
    drop(restored);

    // quorum lost for good: kill all, recover the survivor, it serves the data and writes
    for p in procs.iter_mut() {
        p.kill();
    }
    let survivor = &procs[2];
    let (ok, _, err) = gantry(&[
        "controller",
        "recover",
        "--data-dir",
        survivor.dir.to_str().unwrap(),
        "--id",
        &survivor.id.to_string(),
        "--listen",
        &survivor.addr,
    ]);
    assert!(ok, "recover failed: {err}");
    assert!(err.contains("WARNING"), "recover warns loudly: {err}");
    let back = Proc::spawn(survivor.id, &survivor.addr, &survivor.dir, &[]);
    wait_ready(std::slice::from_ref(&back.addr), 1).await;
    let mut sc = ControllerClient::new(vec![back.addr.clone()]);
    let (_, image): (u64, StateImage) = sc.read(ReadKind::State, false).await.unwrap();
    assert_eq!(image.nodes.len(), 25);
    let (_, r) = sc.write(&register("after-recover")).await.unwrap();
    r.unwrap();
}

/// A member whose storage fails under it exits with an error naming its data dir, instead
/// of hanging: sled 0.34, unable to create a blob file, would leave a write it never
/// finishes, and the member would hold its address without serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_dir_is_removed_exits_with_an_error_instead_of_hanging() {
    let root = tempfile::tempdir().unwrap();
    let addr = common::free_addr("127.0.0.5");
    let dir = root.path().join("m1");
    let mut p = Proc::spawn(
        1,
        &addr,
        &dir,
        &["--bootstrap", "--storage-stall-ms", "3000"],
    );
    wait_ready(std::slice::from_ref(&addr), 1).await;
    let mut c = ControllerClient::new(vec![addr.clone()]);
    c.write(&register("n1")).await.unwrap().1.unwrap();

    std::fs::remove_dir_all(&dir).unwrap();
    // A command over sled's blob threshold (128 KiB): its log entry needs a blob file.
    let env: BTreeMap<String, String> = (0..100)
        .map(|i| (format!("K{i}"), "x".repeat(2000)))
        .collect();
    let big = Command::UpsertService {
        name: "big".into(),
        spec: ServiceSpec {
            image: "registry.local/big:1".into(),
            env,
            ..Default::default()
        },
        expected_index: None,
    };
    c.retry_for = Duration::from_secs(1);
    let acked = tokio::time::timeout(Duration::from_secs(10), c.write(&big)).await;
    assert!(
        !matches!(acked, Ok(Ok((_, Ok(_))))),
        "a write into a removed data dir was acknowledged"
    );

    let child = p.child.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the member still runs 30 s after its data dir was removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "exited with {status}");
    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap();
    assert!(
        log.contains("Raft stopped on a storage error")
            && log.contains("exiting")
            && log.contains(&dir.display().to_string()),
        "the error names neither the failure nor the data dir:\n{log}"
    );
}

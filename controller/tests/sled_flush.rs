//! The contract the Raft log builds on (`raft/log_store.rs`: durable before acknowledged):
//! once sled's `flush` returns, what was inserted before it is in the data dir's files,
//! even if the process dies the next instant. gantry runs a patched sled (`vendor/sled`:
//! a flush writes the log buffer on the flushing thread instead of sled's pool), so this
//! is checked here for real: a child process inserts and flushes, reporting each key
//! after its flush returned, until this test SIGKILLs it; the reopened database must hold
//! every reported key. Most values are small (the inline write); of every 16, one is 200
//! KiB (over sled's 128 KiB message limit: a blob file) and one 60 KiB (full log buffers,
//! which sled's pool writes); two writer threads make flushes overlap each other's writes.
//!
//! (A SIGKILL keeps the kernel's page cache, so this checks that flush returns only after
//! sled wrote the data, not the disk's own durability, which `sync_file_range` covers.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_DIR: &str = "GANTRY_TEST_SLED_FLUSH_CHILD_DIR";
const THREADS: u64 = 2;

fn value(thread: u64, i: u64) -> Vec<u8> {
    let len = match i % 16 {
        15 => 200 << 10,
        7 => 60 << 10,
        _ => 100,
    };
    let mut v = vec![(thread * 31 + i) as u8; len];
    v[..8].copy_from_slice(&i.to_be_bytes());
    v
}

fn key(thread: u64, i: u64) -> Vec<u8> {
    [thread.to_be_bytes(), i.to_be_bytes()].concat()
}

/// The child: insert + flush forever from two threads, printing `flushed THREAD I` after
/// each flush returns.
fn child(dir: &str) -> ! {
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .expect("child: open sled");
    let tree = db.open_tree("log").expect("child: open tree");
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (db, tree) = (db.clone(), tree.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    tree.insert(key(t, i), value(t, i)).expect("child: insert");
                    db.flush().expect("child: flush");
                    println!("flushed {t} {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("child: writer thread");
    }
    unreachable!("the writers never stop")
}

/// The writer process, SIGKILLed and reaped when dropped: a failing assertion in this test
/// never leaves it writing.
struct Writer(std::process::Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_key_reported_flushed_is_there_after_the_writer_is_sigkilled() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&dir);
    }
    for round in 0..3 {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("db");
        let mut proc = Writer(
            Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "every_key_reported_flushed_is_there_after_the_writer_is_sigkilled",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, &dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn the writer"),
        );
        // Kill while it writes, at a different point each round.
        let stop_after = 300 + round * 250;
        let mut last = vec![None::<u64>; THREADS as usize];
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lines = BufReader::new(proc.0.stdout.take().expect("stdout")).lines();
        while seen < stop_after {
            assert!(
                Instant::now() < deadline,
                "round {round}: the writer reported only {seen} flushes in 120 s"
            );
            let line = match lines.next() {
                Some(Ok(l)) => l,
                other => panic!("round {round}: the writer's output ended: {other:?}"),
            };
            // The harness's own lines; its "test NAME ... " has no newline, so the first
            // report can follow it on the same line.
            let Some(at) = line.rfind("flushed ") else {
                continue;
            };
            let rest = &line[at + "flushed ".len()..];
            let (t, i) = rest.split_once(' ').expect("flushed THREAD I");
            let (t, i): (usize, u64) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(
                last[t].map_or(0, |l| l + 1),
                i,
                "thread {t} reports in order"
            );
            last[t] = Some(i);
            seen += 1;
        }
        // `Child::kill` sends SIGKILL.
        proc.0.kill().expect("SIGKILL the writer");
        let status = proc.0.wait().expect("reap the writer");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "round {round}: the writer was killed, not finished: {status}"
        );

        let db = sled::Config::new()
            .path(&dir)
            .open()
            .expect("reopen the killed writer's database");
        let tree = db.open_tree("log").expect("open tree");
        for (t, last) in last.iter().enumerate() {
            let t = t as u64;
            let last = last.unwrap_or_else(|| panic!("round {round}: thread {t} reported nothing"));
            for i in 0..=last {
                let got = tree.get(key(t, i)).expect("read");
                assert_eq!(
                    got.as_deref(),
                    Some(&value(t, i)[..]),
                    "round {round}: thread {t}'s key {i} was reported flushed (up to {last}) but is {} after the kill",
                    if got.is_some() { "different" } else { "missing" }
                );
            }
        }
    }
}

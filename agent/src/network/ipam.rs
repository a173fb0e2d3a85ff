//! IP address management: which container holds which address of the subnet (a **lease**),
//! persisted in one JSON file per network so an agent restart keeps every assignment.
//!
//! The allocation rule is pure ([`next_free`]); [`LeaseStore`] wraps each read-modify-write
//! of the file in an exclusive `flock` on a sibling lock file and replaces the file
//! atomically (temp + rename), so concurrent attaches, in one process or several,
//! never hand out an address twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::error::{NetworkError, Result};
use super::ports::PortMapping;

/// What one container holds on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Host end of the container's veth pair.
    pub host_veth: String,
    /// Published ports (their DNAT rules carry the container id as a comment).
    pub ports: Vec<PortMapping>,
}

/// The whole lease file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    /// The subnet the leases were made in (a changed config is refused, not silently mixed).
    pub subnet: Option<Ipv4Net>,
    /// Last address handed out: allocation continues after it, so a just-released address
    /// is not reused at once (stale ARP entries and conntrack flows of the old owner).
    pub last: Option<Ipv4Addr>,
    /// Container id → lease.
    pub leases: BTreeMap<String, Lease>,
}

impl Leases {
    pub fn used(&self) -> BTreeSet<Ipv4Addr> {
        self.leases.values().map(|l| l.ip).collect()
    }
}

/// The next free host address of `subnet` after `last` (wrapping), skipping the network and
/// broadcast addresses, the gateway and `used`. `None` when the subnet is full.
pub fn next_free(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let end = u32::from(subnet.broadcast()); // exclusive
    if end <= first {
        return None;
    }
    let count = end - first;
    let start = match last {
        Some(l) if subnet.contains(&l) && u32::from(l) >= first && u32::from(l) < end => {
            u32::from(l) - first + 1
        }
        _ => 0,
    };
    (0..count)
        .map(|i| Ipv4Addr::from(first + (start + i) % count))
        .find(|ip| *ip != gateway && !used.contains(ip))
}

/// The lease file of one network, guarded by a lock file.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    path: PathBuf,
    lock_path: PathBuf,
}

impl LeaseStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let lock_path = path.with_extension("lock");
        LeaseStore { path, lock_path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the leases under the lock.
    pub fn load(&self) -> Result<Leases> {
        let _lock = self.lock()?;
        self.read()
    }

    /// Runs `f` on the leases under the exclusive lock; writes them back if `f` succeeds
    /// and changed them. A failing `f` changes nothing.
    pub fn update<T>(&self, f: impl FnOnce(&mut Leases) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let before = self.read()?;
        let mut leases = before.clone();
        let out = f(&mut leases)?;
        if leases != before {
            self.write(&leases)?;
        }
        Ok(out)
    }

    /// Removes the lease file and its lock file.
    pub fn remove_files(&self) -> Result<()> {
        for p in [&self.path, &self.lock_path] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(NetworkError::io(p, e)),
            }
        }
        Ok(())
    }

    fn lock(&self) -> Result<Flock<File>> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| NetworkError::io(dir, e))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| NetworkError::io(&self.lock_path, e))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, errno)| NetworkError::io(&self.lock_path, errno.into()))
    }

    fn read(&self) -> Result<Leases> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NetworkError::LeaseFile {
                path: self.path.clone(),
                source: e,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Leases::default()),
            Err(e) => Err(NetworkError::io(&self.path, e)),
        }
    }

    fn write(&self, leases: &Leases) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(leases).expect("leases serialize");
        // No fsync: leases describe veths and rules that a reboot wipes anyway (after one,
        // `cleanup_stale` drops them), and temp + rename already survives an agent crash.
        // An fsync here cost 3-25 ms per attach on these shared disks.
        let mut f = File::create(&tmp).map_err(|e| NetworkError::io(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| NetworkError::io(&tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| NetworkError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_gateway_broadcast_and_used() {
        let n = net("10.0.0.0/29"); // hosts .1-.6
        let gw = ip("10.0.0.1");
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        let mut last = None;
        while let Some(a) = next_free(n, gw, &used, last) {
            used.insert(a);
            last = Some(a);
            got.push(a.to_string());
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
    }

    #[test]
    fn continues_after_last_and_wraps() {
        let n = net("10.0.0.0/29");
        let gw = ip("10.0.0.1");
        let used: BTreeSet<_> = [ip("10.0.0.3")].into();
        // After .4 comes .5, even though .2 is free.
        assert_eq!(
            next_free(n, gw, &used, Some(ip("10.0.0.4"))),
            Some(ip("10.0.0.5"))
        );
        // After the last host it wraps to the first free one.
        assert_eq!(
            next_free(n, gw, &used, Some(ip("10.0.0.6"))),
            Some(ip("10.0.0.2"))
        );
        // A `last` outside the subnet (config changed) starts from the beginning.
        assert_eq!(
            next_free(n, gw, &used, Some(ip("192.168.0.9"))),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn full_subnet_gives_none() {
        let n = net("10.0.0.0/30"); // hosts .1 (gateway) and .2
        let used: BTreeSet<_> = [ip("10.0.0.2")].into();
        assert_eq!(next_free(n, ip("10.0.0.1"), &used, None), None);
    }

    #[test]
    fn store_persists_and_failed_update_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path().join("br.leases.json"));
        store
            .update(|l| {
                l.leases.insert(
                    "c1".into(),
                    Lease {
                        ip: ip("10.0.0.2"),
                        host_veth: "v1".into(),
                        ports: vec![],
                    },
                );
                Ok(())
            })
            .unwrap();
        let err = store.update(|l| -> Result<()> {
            l.leases.clear();
            Err(NetworkError::AlreadyAttached("x".into()))
        });
        assert!(err.is_err());
        let reopened = LeaseStore::new(dir.path().join("br.leases.json"));
        assert_eq!(reopened.load().unwrap().leases["c1"].ip, ip("10.0.0.2"));
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.leases.json");
        fs::write(&p, b"{not json").unwrap();
        let e = LeaseStore::new(&p).load().unwrap_err().to_string();
        assert!(e.contains("x.leases.json") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("br.leases.json");
        let n = net("10.0.0.0/24");
        let gw = ip("10.0.0.1");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // A store per thread: the lock must work across open file descriptions.
                    let store = LeaseStore::new(path);
                    for i in 0..10 {
                        store
                            .update(|l| {
                                let a = next_free(n, gw, &l.used(), l.last).unwrap();
                                l.last = Some(a);
                                l.leases.insert(
                                    format!("c{t}-{i}"),
                                    Lease {
                                        ip: a,
                                        host_veth: String::new(),
                                        ports: vec![],
                                    },
                                );
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let leases = LeaseStore::new(&path).load().unwrap();
        assert_eq!(leases.leases.len(), 80);
        assert_eq!(leases.used().len(), 80, "an address was handed out twice");
    }
}

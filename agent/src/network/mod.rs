//! Container networking on one node: `--network bridge|host|none`.
//!
//! Vocabulary:
//! - **bridge network**: one Linux bridge per node (`gantry0`, 10.209.0.0/16 by default,
//!   see [`BridgeConfig`]) with the gateway address on it; containers hang off it;
//! - **attachment**: what [`BridgeNetwork::attach`] gives a container: a veth pair (host end
//!   on the bridge, `eth0` in the container's netns), an address, a default route via the
//!   gateway, and its published ports;
//! - **lease**: a container's address, host veth and published ports, persisted in the
//!   network's lease file ([`ipam`]), the record of everything the container added;
//! - **publication**: a host port forwarded to a container port ([`PortMapping`], `-p`);
//! - **chains**: gantry's iptables chains `PREFIX-DNAT`, `PREFIX-POST` (nat) and
//!   `PREFIX-FWD` (filter), jumped to from the built-ins ([`rules`]).
//!
//! Everything an attachment adds is removed by [`BridgeNetwork::detach`]; a failure half
//! way through `attach` undoes what was done; [`BridgeNetwork::cleanup_stale`] removes what
//! belongs to containers that no longer exist; [`BridgeNetwork::teardown_all`] removes the
//! bridge, the chains and the leases. The OS is reached through two traits, [`Links`]
//! (rtnetlink) and [`Firewall`] (iptables-restore), each with a fake.

pub mod config;
pub mod dns;
pub mod error;
pub mod firewall;
pub mod follower;
pub mod ipam;
pub mod links;
pub mod mesh;
pub mod netns;
pub mod overlay;
pub mod ports;
pub mod rules;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use config::{BridgeConfig, NetworkMode};
pub use error::{NetworkError, Result};
pub use firewall::{FakeFirewall, Firewall, IptablesFirewall};
pub use ipam::{Lease, LeaseStore, Leases};
pub use links::{FakeLinks, Links, NetlinkLinks};
pub use ports::{parse_port_spec, parse_port_specs, PortMapping, Protocol};
use rules::Table;

/// What a container got from the bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub host_veth: String,
    pub ports: Vec<PortMapping>,
}

/// The network namespace of a running process.
pub fn netns_of_pid(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The `none` mode: only `lo`, up, in the container's netns.
pub async fn setup_loopback_only(netns: &Path) -> Result<()> {
    NetlinkLinks::new()?.loopback_up(netns).await
}

/// Host veth name of a container: ≤ 15 bytes, stable across agent restarts, distinct per
/// bridge so two networks never pick the same name.
pub fn host_veth_name(bridge: &str, container: &str) -> String {
    let digest = Sha256::digest(format!("{bridge}/{container}").as_bytes());
    format!("{VETH_PREFIX}{}", &hex::encode(digest)[..11])
}

/// Every host veth gantry makes starts with this; cleanup only ever deletes bridge ports
/// named so, leaving devices others enslave to the bridge (e.g. an overlay's) alone.
pub const VETH_PREFIX: &str = "gt";

/// One node's bridge network (see the module doc).
pub struct BridgeNetwork<L: Links = NetlinkLinks, F: Firewall = IptablesFirewall> {
    cfg: BridgeConfig,
    links: L,
    fw: F,
    leases: LeaseStore,
}

impl BridgeNetwork {
    /// Opens the network with the real backends, creating the bridge and chains if missing.
    /// Must run inside a tokio runtime.
    pub async fn open(cfg: BridgeConfig) -> Result<Self> {
        Self::with_backends(cfg, NetlinkLinks::new()?, IptablesFirewall::default()).await
    }
}

impl<L: Links, F: Firewall> BridgeNetwork<L, F> {
    /// Opens the network over the given backends and makes the bridge and chains right.
    pub async fn with_backends(cfg: BridgeConfig, links: L, fw: F) -> Result<Self> {
        cfg.validate()?;
        let leases = LeaseStore::new(cfg.lease_path());
        let net = BridgeNetwork {
            cfg,
            links,
            fw,
            leases,
        };
        net.check_lease_subnet()?;
        net.ensure().await?;
        Ok(net)
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    pub fn links(&self) -> &L {
        &self.links
    }

    pub fn firewall(&self) -> &F {
        &self.fw
    }

    /// The current leases.
    pub fn leases(&self) -> Result<Leases> {
        self.leases.load()
    }

    fn check_lease_subnet(&self) -> Result<()> {
        let cfg = &self.cfg;
        self.leases.update(|l| {
            match l.subnet {
                Some(s) if s != cfg.subnet && !l.leases.is_empty() => {
                    return Err(NetworkError::Config {
                        field: "subnet",
                        reason: format!(
                            "{} holds leases in {s}, the config says {}: remove those containers first",
                            self.leases.path().display(),
                            cfg.subnet
                        ),
                    })
                }
                Some(s) if s == cfg.subnet => {}
                _ => {
                    l.subnet = Some(cfg.subnet);
                    l.last = None;
                }
            }
            Ok(())
        })
    }

    /// Creates the bridge (with its gateway address) and gantry's chains if missing.
    pub async fn ensure(&self) -> Result<()> {
        let cfg = &self.cfg;
        self.links
            .ensure_bridge(&cfg.bridge, cfg.gateway, cfg.subnet.prefix_len())
            .await?;
        let nat = self.fw.save(Table::Nat).await?;
        self.fw
            .restore(Table::Nat, &rules::base_nat(cfg, &nat))
            .await?;
        let filter = self.fw.save(Table::Filter).await?;
        self.fw
            .restore(Table::Filter, &rules::base_filter(cfg, &filter))
            .await
    }

    /// Attaches the container whose network namespace is at `netns`: lease an address,
    /// create the veth pair, configure the container side, publish `ports`. On failure
    /// everything done so far is undone and the first error returned.
    pub async fn attach(
        &self,
        container: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<Attachment> {
        let cfg = &self.cfg;
        let host_veth = host_veth_name(&cfg.bridge, container);
        let lease = self.leases.update(|l| {
            if l.leases.contains_key(container) {
                return Err(NetworkError::AlreadyAttached(container.to_string()));
            }
            for (owner, other) in &l.leases {
                for p in ports {
                    if other.ports.iter().any(|q| q.conflicts_with(p)) {
                        return Err(NetworkError::PortInUse {
                            port: p.to_string(),
                            owner: owner.clone(),
                        });
                    }
                }
            }
            let ip =
                ipam::next_free(cfg.subnet, cfg.gateway, &l.used(), l.last).ok_or_else(|| {
                    NetworkError::SubnetExhausted {
                        subnet: cfg.subnet.to_string(),
                        bridge: cfg.bridge.clone(),
                    }
                })?;
            let lease = Lease {
                ip,
                host_veth: host_veth.clone(),
                ports: ports.to_vec(),
            };
            l.last = Some(ip);
            l.leases.insert(container.to_string(), lease.clone());
            Ok(lease)
        })?;

        let mut veth_created = false;
        let wired = async {
            self.links
                .create_veth(&host_veth, &cfg.bridge, netns)
                .await?;
            veth_created = true;
            self.links
                .configure_container(netns, lease.ip, cfg.subnet.prefix_len(), cfg.gateway)
                .await?;
            self.fw
                .restore(Table::Nat, &rules::publish(cfg, container, lease.ip, ports))
                .await
        }
        .await;
        if let Err(e) = wired {
            self.undo_attach(container, &lease, veth_created).await;
            return Err(e);
        }
        Ok(Attachment {
            container: container.to_string(),
            ip: lease.ip,
            prefix_len: cfg.subnet.prefix_len(),
            gateway: cfg.gateway,
            host_veth,
            ports: ports.to_vec(),
        })
    }

    async fn undo_attach(&self, container: &str, lease: &Lease, veth_created: bool) {
        if veth_created {
            if let Err(e) = self.links.delete_link(&lease.host_veth).await {
                tracing::warn!(container, veth = %lease.host_veth, error = %e, "undo attach: delete veth");
            }
        }
        if !lease.ports.is_empty() {
            if let Err(e) = self.unpublish(|id| id == container).await {
                tracing::warn!(container, error = %e, "undo attach: remove port rules");
            }
        }
        if let Err(e) = self.leases.update(|l| {
            l.leases.remove(container);
            Ok(())
        }) {
            tracing::warn!(container, error = %e, "undo attach: release lease");
        }
    }

    async fn unpublish(&self, remove: impl Fn(&str) -> bool) -> Result<()> {
        let nat = self.fw.save(Table::Nat).await?;
        self.fw
            .restore(Table::Nat, &rules::unpublish(&self.cfg, &nat, remove))
            .await
    }

    /// Removes everything the container's attachment added: veth, port rules, lease (last,
    /// so a failure leaves the record for a retry). `false` if it was not attached.
    pub async fn detach(&self, container: &str) -> Result<bool> {
        let Some(lease) = self.leases.load()?.leases.get(container).cloned() else {
            return Ok(false);
        };
        self.links.delete_link(&lease.host_veth).await?;
        if !lease.ports.is_empty() {
            self.unpublish(|id| id == container).await?;
        }
        self.leases.update(|l| {
            l.leases.remove(container);
            Ok(())
        })?;
        Ok(true)
    }

    /// At agent start: detaches every leased container for which `is_live` is false, and
    /// removes bridge ports and port rules that no lease accounts for. Returns the ids of
    /// the containers cleaned up.
    pub async fn cleanup_stale(&self, is_live: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let leases = self.leases.load()?;
        for id in leases.leases.keys().filter(|id| !is_live(id)) {
            self.detach(id).await?;
            removed.push(id.clone());
        }
        let leases = self.leases.load()?;
        let known_veths: Vec<&str> = leases
            .leases
            .values()
            .map(|l| l.host_veth.as_str())
            .collect();
        for port in self.links.bridge_ports(&self.cfg.bridge).await? {
            if port.starts_with(VETH_PREFIX) && !known_veths.contains(&port.as_str()) {
                self.links.delete_link(&port).await?;
            }
        }
        let nat = self.fw.save(Table::Nat).await?;
        let orphans: Vec<String> = rules::owners(&self.cfg, &nat)
            .into_iter()
            .filter(|id| !leases.leases.contains_key(id))
            .collect();
        if !orphans.is_empty() {
            self.fw
                .restore(
                    Table::Nat,
                    &rules::unpublish(&self.cfg, &nat, |id| orphans.iter().any(|o| o == id)),
                )
                .await?;
            for o in orphans {
                if !removed.contains(&o) {
                    removed.push(o);
                }
            }
        }
        Ok(removed)
    }

    /// Removes the whole network: every container's veth, the bridge, gantry's chains and
    /// the jumps to them, and the lease file.
    pub async fn teardown_all(&self) -> Result<()> {
        for lease in self.leases.load()?.leases.values() {
            self.links.delete_link(&lease.host_veth).await?;
        }
        for port in self.links.bridge_ports(&self.cfg.bridge).await? {
            if port.starts_with(VETH_PREFIX) {
                self.links.delete_link(&port).await?;
            }
        }
        for table in [Table::Nat, Table::Filter] {
            let save = self.fw.save(table).await?;
            self.fw
                .restore(table, &rules::teardown(&self.cfg, table, &save))
                .await?;
        }
        self.links.delete_link(&self.cfg.bridge).await?;
        self.leases.remove_files()
    }
}

/// Removes a node's networking for good (a node leaving the cluster; `gantry agent
/// --teardown-network`): gantry's chains of `cfg` and the jumps to them, the cluster
/// overlay's vxlan device `vxlan` (its routes, neighbours and FDB entries go with it),
/// container veths left on the bridge, the bridge and its lease file. Only names are read
/// from `cfg`; what does not exist is skipped, so it can run again.
pub async fn teardown_node<L: Links, F: Firewall>(
    cfg: &BridgeConfig,
    links: &L,
    fw: &F,
    vxlan: &str,
) -> Result<()> {
    for table in [Table::Nat, Table::Filter] {
        let save = fw.save(table).await?;
        fw.restore(table, &rules::teardown(cfg, table, &save))
            .await?;
    }
    links.delete_link(vxlan).await?;
    for port in links.bridge_ports(&cfg.bridge).await? {
        if port.starts_with(VETH_PREFIX) {
            links.delete_link(&port).await?;
        }
    }
    links.delete_link(&cfg.bridge).await?;
    LeaseStore::new(cfg.lease_path()).remove_files()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fake_net(
        dir: &Path,
        links: FakeLinks,
        fw: FakeFirewall,
    ) -> BridgeNetwork<FakeLinks, FakeFirewall> {
        let cfg = BridgeConfig::custom(dir, "fk0", "10.77.0.0/29", "FK").unwrap();
        BridgeNetwork::with_backends(cfg, links, fw).await.unwrap()
    }

    #[test]
    fn veth_names_fit_and_differ() {
        let a = host_veth_name("gantry0", "c1");
        assert!(a.len() <= 15 && a.starts_with("gt"), "{a}");
        assert_eq!(a, host_veth_name("gantry0", "c1"));
        assert_ne!(a, host_veth_name("gantry1", "c1"));
        assert_ne!(a, host_veth_name("gantry0", "c2"));
    }

    #[tokio::test]
    async fn attach_plans_veth_config_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let net = fake_net(dir.path(), FakeLinks::default(), FakeFirewall::default()).await;
        let ports = parse_port_spec("8080:80").unwrap();
        let a = net
            .attach("c1", Path::new("/run/netns/x"), &ports)
            .await
            .unwrap();
        assert_eq!(a.ip, "10.77.0.2".parse::<Ipv4Addr>().unwrap());
        let calls = net.links().calls.lock().unwrap().clone();
        assert_eq!(calls[0], "bridge fk0 10.77.0.1/29");
        assert_eq!(calls[1], format!("veth {} fk0 /run/netns/x", a.host_veth));
        assert_eq!(
            calls[2],
            "configure /run/netns/x 10.77.0.2/29 via 10.77.0.1"
        );
        let applied = net.firewall().applied.lock().unwrap().clone();
        assert!(applied
            .last()
            .unwrap()
            .contains("--to-destination 10.77.0.2:80"));
        // A second container may not take the same host port, and gets nothing.
        let e = net
            .attach(
                "c2",
                Path::new("/run/netns/y"),
                &parse_port_spec("8080:81").unwrap(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, NetworkError::PortInUse { owner, .. } if owner == "c1"),
            "{e}"
        );
        assert!(!net.leases().unwrap().leases.contains_key("c2"));
        assert_eq!(net.links().calls.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn failure_after_the_veth_undoes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let fw = FakeFirewall {
            fail_on: Some("--dport 9090".into()),
            ..Default::default()
        };
        let net = fake_net(dir.path(), FakeLinks::default(), fw).await;
        let e = net
            .attach(
                "c1",
                Path::new("/run/netns/x"),
                &parse_port_spec("9090:90").unwrap(),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("9090"), "{e}");
        let veth = host_veth_name("fk0", "c1");
        assert!(net
            .links()
            .calls
            .lock()
            .unwrap()
            .contains(&format!("delete {veth}")));
        assert!(!net.links().links.lock().unwrap().contains(&veth));
        assert!(net.leases().unwrap().leases.is_empty());
        // The address is free again for the next container.
        let a = net
            .attach("c2", Path::new("/run/netns/y"), &[])
            .await
            .unwrap();
        assert_eq!(a.ip, "10.77.0.3".parse::<Ipv4Addr>().unwrap());
    }

    #[tokio::test]
    async fn failure_before_the_veth_releases_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let links = FakeLinks {
            fail_on: Some("veth".into()),
            ..Default::default()
        };
        let net = fake_net(dir.path(), links, FakeFirewall::default()).await;
        net.attach("c1", Path::new("/x"), &[]).await.unwrap_err();
        assert!(net.leases().unwrap().leases.is_empty());
        assert!(!net
            .links()
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("delete")));
    }

    #[tokio::test]
    async fn subnet_exhaustion_and_double_attach_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let net = fake_net(dir.path(), FakeLinks::default(), FakeFirewall::default()).await;
        for i in 0..5 {
            net.attach(&format!("c{i}"), Path::new("/x"), &[])
                .await
                .unwrap();
        }
        let e = net.attach("c9", Path::new("/x"), &[]).await.unwrap_err();
        assert!(matches!(e, NetworkError::SubnetExhausted { .. }), "{e}");
        let e = net.attach("c1", Path::new("/x"), &[]).await.unwrap_err();
        assert!(matches!(e, NetworkError::AlreadyAttached(_)), "{e}");
        assert!(net.detach("c1").await.unwrap());
        assert!(!net.detach("c1").await.unwrap());
        net.attach("c9", Path::new("/x"), &[]).await.unwrap();
    }

    #[tokio::test]
    async fn changed_subnet_with_leases_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let net = fake_net(dir.path(), FakeLinks::default(), FakeFirewall::default()).await;
        net.attach("c1", Path::new("/x"), &[]).await.unwrap();
        let cfg = BridgeConfig::custom(dir.path(), "fk0", "10.78.0.0/24", "FK").unwrap();
        let e = BridgeNetwork::with_backends(cfg, FakeLinks::default(), FakeFirewall::default())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("subnet") && e.contains("10.77.0.0/29"), "{e}");
    }

    #[tokio::test]
    async fn cleanup_stale_detaches_dead_containers_only() {
        let dir = tempfile::tempdir().unwrap();
        let net = fake_net(dir.path(), FakeLinks::default(), FakeFirewall::default()).await;
        net.attach("live", Path::new("/x"), &[]).await.unwrap();
        net.attach("dead", Path::new("/y"), &[]).await.unwrap();
        let removed = net.cleanup_stale(|id| id == "live").await.unwrap();
        assert_eq!(removed, ["dead"]);
        let leases = net.leases().unwrap();
        assert!(leases.leases.contains_key("live") && !leases.leases.contains_key("dead"));
    }
}

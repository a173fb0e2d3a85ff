//! The cluster overlay: containers on different nodes reach each other over VXLAN.
//!
//! Vocabulary:
//! - **node subnet**: the /24 of the cluster CIDR the controller gave a node; the node's
//!   bridge serves it (gateway `.1`), so a container's address says which node it is on;
//! - **VTEP**: a node's vxlan device ([`OverlayConfig::vxlan`], VNI fixed per cluster
//!   network, UDP 4789, `local` = the node's underlay address, learning off). Its MAC is
//!   derived from the node subnet ([`vtep_mac`]) and its address is the subnet's network
//!   address (/32, [`vtep_addr`]), so every node can compute every other node's VTEP from
//!   the replicated node list alone — nothing else to replicate;
//! - **peer**: a remote node as this node's VTEP sees it ([`Peer`]); one peer is three
//!   kernel entries on the vxlan device: a route `SUBNET via VTEP_ADDR onlink`, a permanent
//!   neighbour `VTEP_ADDR → VTEP_MAC`, and an FDB entry `VTEP_MAC → underlay address`.
//!
//! [`desired_peers`] (nodes → peers) and [`diff`] (applied vs desired) are pure; [`Overlay`]
//! applies the difference through [`Links`]. At agent start the vxlan device is deleted and
//! made anew (which drops every route, neighbour and FDB entry a previous run left), and
//! [`Overlay::teardown`] deletes it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnet::Ipv4Net;

use super::error::Result;
use super::links::Links;

/// The VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// The VNI of the cluster network.
pub const DEFAULT_VNI: u32 = 4210;
/// Default name of the vxlan device.
pub const DEFAULT_VXLAN: &str = "gantry.vx";
/// VXLAN over IPv4 adds 50 bytes (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8).
pub const VXLAN_OVERHEAD: u32 = 50;

/// This node's VTEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    pub vxlan: String,
    pub vni: u32,
    pub port: u16,
    /// The node's underlay address (VXLAN packets leave from it).
    pub local: Ipv4Addr,
    /// This node's subnet.
    pub subnet: Ipv4Net,
    /// The vxlan device's MTU (underlay MTU − [`VXLAN_OVERHEAD`]).
    pub mtu: u32,
}

impl OverlayConfig {
    /// Defaults for a node at `local` serving `subnet` over a 1500-byte underlay.
    pub fn new(local: Ipv4Addr, subnet: Ipv4Net) -> Self {
        OverlayConfig {
            vxlan: DEFAULT_VXLAN.into(),
            vni: DEFAULT_VNI,
            port: VXLAN_PORT,
            local,
            subnet,
            mtu: 1500 - VXLAN_OVERHEAD,
        }
    }
}

/// A remote node as the vxlan device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub subnet: Ipv4Net,
    /// Where its VXLAN packets go.
    pub underlay: Ipv4Addr,
}

impl Peer {
    pub fn vtep_addr(&self) -> Ipv4Addr {
        vtep_addr(self.subnet)
    }
    pub fn vtep_mac(&self) -> [u8; 6] {
        vtep_mac(self.subnet)
    }
}

/// The VTEP address of a node subnet: its network address (never a container's).
pub fn vtep_addr(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.network()
}

/// The VTEP MAC of a node subnet: locally administered, unicast, the subnet's first three
/// octets in the low bytes (distinct for distinct /24s).
pub fn vtep_mac(subnet: Ipv4Net) -> [u8; 6] {
    let o = subnet.network().octets();
    [0x02, 0x47, 0x54, o[0], o[1], o[2]]
}

/// A node of the replicated list, as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// The node's advertised address (`IP` or `IP:PORT`).
    pub address: String,
    pub subnet: Option<Ipv4Net>,
    /// Down nodes are not peers (their allocations are lost and replaced elsewhere).
    pub up: bool,
}

/// The underlay IPv4 address of an advertised `IP` or `IP:PORT`.
pub fn underlay_addr(address: &str) -> Option<Ipv4Addr> {
    address.parse().ok().or_else(|| {
        address
            .parse::<std::net::SocketAddrV4>()
            .ok()
            .map(|s| *s.ip())
    })
}

/// The peers of node `me`: every other up node with a subnet and an IPv4 address.
pub fn desired_peers(nodes: &[NodeView], me: &str) -> BTreeSet<Peer> {
    nodes
        .iter()
        .filter(|n| n.name != me && n.up)
        .filter_map(|n| {
            Some(Peer {
                subnet: n.subnet?,
                underlay: underlay_addr(&n.address)?,
            })
        })
        .collect()
}

/// What to remove and what to add to go from `applied` to `desired`. A peer whose
/// underlay address changed is removed and added again.
pub fn diff(applied: &BTreeSet<Peer>, desired: &BTreeSet<Peer>) -> (Vec<Peer>, Vec<Peer>) {
    let remove = applied.difference(desired).copied().collect();
    let add = desired.difference(applied).copied().collect();
    (remove, add)
}

/// This node's VTEP and the peers applied to it.
pub struct Overlay<L: Links> {
    cfg: OverlayConfig,
    links: L,
    applied: Mutex<BTreeSet<Peer>>,
}

impl<L: Links> Overlay<L> {
    /// Deletes a vxlan device left by a previous run (with all its entries) and creates it
    /// anew, with no peers.
    pub async fn open(cfg: OverlayConfig, links: L) -> Result<Self> {
        links.delete_link(&cfg.vxlan).await?;
        links.create_vxlan(&cfg).await?;
        Ok(Overlay {
            cfg,
            links,
            applied: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn config(&self) -> &OverlayConfig {
        &self.cfg
    }

    pub fn links(&self) -> &L {
        &self.links
    }

    /// The peers currently applied.
    pub fn peers(&self) -> BTreeSet<Peer> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Brings the kernel entries to `desired`. A failed entry is left out of the applied
    /// set, so the next sync retries it.
    pub async fn sync(&self, desired: &BTreeSet<Peer>) -> Result<()> {
        let (remove, add) = diff(&self.peers(), desired);
        let mut first_err = None;
        for p in remove {
            match self.links.remove_peer(&self.cfg.vxlan, &p).await {
                Ok(()) => {
                    self.applied
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&p);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for p in add {
            match self.links.add_peer(&self.cfg.vxlan, &p).await {
                Ok(()) => {
                    self.applied
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(p);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Deletes the vxlan device (its routes, neighbours and FDB entries go with it).
    pub async fn teardown(&self) -> Result<()> {
        self.links.delete_link(&self.cfg.vxlan).await?;
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::FakeLinks;

    fn node(name: &str, addr: &str, subnet: Option<&str>, up: bool) -> NodeView {
        NodeView {
            name: name.into(),
            address: addr.into(),
            subnet: subnet.map(|s| s.parse().unwrap()),
            up,
        }
    }

    #[test]
    fn vtep_mac_and_addr_follow_the_subnet() {
        let a: Ipv4Net = "10.210.3.0/24".parse().unwrap();
        let b: Ipv4Net = "10.210.4.0/24".parse().unwrap();
        assert_eq!(vtep_mac(a), [0x02, 0x47, 0x54, 10, 210, 3]);
        assert_ne!(vtep_mac(a), vtep_mac(b));
        assert_eq!(vtep_mac(a)[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(vtep_addr(a), Ipv4Addr::new(10, 210, 3, 0));
    }

    #[test]
    fn peers_are_the_other_up_nodes_with_subnet_and_ipv4() {
        let nodes = [
            node("a", "10.0.0.1", Some("10.210.0.0/24"), true),
            node("b", "10.0.0.2:7000", Some("10.210.1.0/24"), true),
            node("c", "10.0.0.3", Some("10.210.2.0/24"), false),
            node("d", "10.0.0.4", None, true),
            node("e", "host-e", Some("10.210.4.0/24"), true),
        ];
        let peers = desired_peers(&nodes, "a");
        assert_eq!(
            peers.into_iter().collect::<Vec<_>>(),
            [Peer {
                subnet: "10.210.1.0/24".parse().unwrap(),
                underlay: Ipv4Addr::new(10, 0, 0, 2)
            }]
        );
    }

    #[test]
    fn diff_adds_joins_removes_leaves_and_readds_moves() {
        let p = |s: &str, u: [u8; 4]| Peer {
            subnet: s.parse().unwrap(),
            underlay: u.into(),
        };
        let applied: BTreeSet<_> = [
            p("10.210.1.0/24", [1, 1, 1, 1]),
            p("10.210.2.0/24", [2, 2, 2, 2]),
        ]
        .into();
        let desired: BTreeSet<_> = [
            p("10.210.2.0/24", [2, 2, 2, 9]),
            p("10.210.3.0/24", [3, 3, 3, 3]),
        ]
        .into();
        let (remove, add) = diff(&applied, &desired);
        assert_eq!(
            remove,
            [
                p("10.210.1.0/24", [1, 1, 1, 1]),
                p("10.210.2.0/24", [2, 2, 2, 2])
            ]
        );
        assert_eq!(
            add,
            [
                p("10.210.2.0/24", [2, 2, 2, 9]),
                p("10.210.3.0/24", [3, 3, 3, 3])
            ]
        );
        assert_eq!(diff(&desired, &desired), (vec![], vec![]));
    }

    #[tokio::test]
    async fn open_replaces_the_device_and_sync_applies_only_the_difference() {
        let cfg = OverlayConfig::new(Ipv4Addr::new(10, 0, 0, 1), "10.210.0.0/24".parse().unwrap());
        let ov = Overlay::open(cfg, FakeLinks::default()).await.unwrap();
        let nodes = vec![
            node("a", "10.0.0.1", Some("10.210.0.0/24"), true),
            node("b", "10.0.0.2", Some("10.210.1.0/24"), true),
        ];
        ov.sync(&desired_peers(&nodes, "a")).await.unwrap();
        ov.sync(&desired_peers(&nodes, "a")).await.unwrap();
        let mut nodes2 = nodes.clone();
        nodes2[1].up = false;
        ov.sync(&desired_peers(&nodes2, "a")).await.unwrap();
        ov.teardown().await.unwrap();
        let calls = ov.links().calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "delete gantry.vx",
                "vxlan gantry.vx vni 4210 local 10.0.0.1 port 4789 addr 10.210.0.0 mtu 1450",
                "peer+ gantry.vx 10.210.1.0/24 via 10.210.1.0 at 10.0.0.2",
                "peer- gantry.vx 10.210.1.0/24 via 10.210.1.0 at 10.0.0.2",
                "delete gantry.vx",
            ]
        );
        assert!(ov.peers().is_empty());
    }

    #[tokio::test]
    async fn a_failed_peer_is_retried_on_the_next_sync() {
        let cfg = OverlayConfig::new(Ipv4Addr::new(10, 0, 0, 1), "10.210.0.0/24".parse().unwrap());
        let links = FakeLinks {
            fail_on: Some("peer+".into()),
            ..Default::default()
        };
        let ov = Overlay::open(cfg, links).await.unwrap();
        let nodes = vec![node("b", "10.0.0.2", Some("10.210.1.0/24"), true)];
        assert!(ov.sync(&desired_peers(&nodes, "a")).await.is_err());
        assert!(ov.peers().is_empty());
        assert!(ov.sync(&desired_peers(&nodes, "a")).await.is_err());
        let tries = ov
            .links()
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("peer+"))
            .count();
        assert_eq!(tries, 2);
    }
}

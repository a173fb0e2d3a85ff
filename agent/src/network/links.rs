//! The link boundary: the bridge, veth pairs, addresses and routes, on the host and inside
//! a container's network namespace. [`NetlinkLinks`] talks rtnetlink in-process (a veth
//! with its peer created directly in the container's netns is one request; configuring the
//! container side is four more, ≈ tens of µs each, where forking `ip` costs milliseconds);
//! [`FakeLinks`] records what was asked.
//!
//! Inside a netns: a netlink socket belongs to the namespace it was created in, so a
//! short-lived thread enters the netns (`setns` affects only that thread), opens the socket
//! and hands it back; the requests then run on the caller's tokio runtime.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use futures::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourMessage};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};

use super::error::{NetworkError, Result};
use super::overlay::{OverlayConfig, Peer};

/// Name of the container end of the veth pair, inside the container's netns.
pub const CONTAINER_IFNAME: &str = "eth0";

const ENODEV: i32 = libc::ENODEV;
const ENOENT: i32 = libc::ENOENT;
const ESRCH: i32 = libc::ESRCH;
const EEXIST: i32 = libc::EEXIST;

/// Creates, configures and deletes network links.
pub trait Links: Send + Sync {
    /// Creates bridge `name` if missing, gives it `gateway/prefix` and sets it up.
    fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Creates veth `host` (up, a hairpin port of `bridge`) with its peer `eth0` created
    /// directly inside the netns at `netns`.
    fn create_veth(
        &self,
        host: &str,
        bridge: &str,
        netns: &Path,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Inside the netns: `addr/prefix` on eth0, eth0 and lo up, default route via `gateway`.
    fn configure_container(
        &self,
        netns: &Path,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Inside the netns: lo up (the `none` mode).
    fn loopback_up(&self, netns: &Path) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a host link (a veth takes its peer with it); `false` if it did not exist.
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Names of the links enslaved to `bridge` (empty if the bridge does not exist).
    fn bridge_ports(&self, bridge: &str) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Creates the overlay's vxlan device (see [`super::overlay`]): VNI, local address,
    /// port, the VTEP MAC and address of `cfg.subnet`, learning off, MTU, up.
    fn create_vxlan(&self, cfg: &OverlayConfig) -> impl Future<Output = Result<()>> + Send;

    /// Adds (or replaces) a peer's route, neighbour and FDB entry on `vxlan`.
    fn add_peer(&self, vxlan: &str, peer: &Peer) -> impl Future<Output = Result<()>> + Send;

    /// Removes a peer's entries from `vxlan` (entries already gone are fine).
    fn remove_peer(&self, vxlan: &str, peer: &Peer) -> impl Future<Output = Result<()>> + Send;
}

/// rtnetlink, in-process.
#[derive(Clone)]
pub struct NetlinkLinks {
    host: Handle,
}

impl NetlinkLinks {
    /// Opens a netlink socket in the caller's netns; must run inside a tokio runtime, which
    /// then drives the connection.
    pub fn new() -> Result<Self> {
        let (conn, host, _) = rtnetlink::new_connection().map_err(|e| NetworkError::Netns {
            path: "/proc/self/ns/net".into(),
            source: e,
        })?;
        tokio::spawn(conn);
        Ok(NetlinkLinks { host })
    }

    async fn index_of(handle: &Handle, name: &str, ns: &str) -> Result<Option<u32>> {
        let mut links = handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == ENODEV => Ok(None),
            Err(e) => Err(NetworkError::netlink(format!("look up link {name}{ns}"), e)),
        }
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno)
}

fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| NetworkError::Netns {
        path: path.to_path_buf(),
        source: e,
    })
}

/// A netlink connection inside the netns at `path`.
fn netns_handle(path: &Path) -> Result<Handle> {
    let ns = open_netns(path)?;
    let socket = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<OwnedFd> {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
            let sock = Socket::new(NETLINK_ROUTE)?;
            // SAFETY: into_raw_fd hands over sole ownership of a valid descriptor.
            Ok(unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) })
        })
        .join()
        .expect("netns socket thread panicked")
    })
    .map_err(|e| NetworkError::Netns {
        path: path.to_path_buf(),
        source: e,
    })?;
    // SAFETY: the descriptor is an owned netlink socket; TokioSocket takes it over.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

impl Links for NetlinkLinks {
    async fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .host
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if is_errno(&e, EEXIST) => {}
            Err(e) => return Err(NetworkError::netlink(format!("create bridge {name}"), e)),
        }
        let index =
            Self::index_of(&self.host, name, "")
                .await?
                .ok_or_else(|| NetworkError::Config {
                    field: "bridge",
                    reason: format!("{name} vanished right after it was created"),
                })?;
        match self
            .host
            .address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if is_errno(&e, EEXIST) => {}
            Err(e) => {
                return Err(NetworkError::netlink(
                    format!("add address {gateway}/{prefix} to bridge {name}"),
                    e,
                ))
            }
        }
        self.host
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("set bridge {name} up"), e))?;
        // Forwarding for egress and published ports; route_localnet so that traffic DNATed
        // from 127.0.0.1:HOSTPORT may leave through the bridge (then masqueraded).
        set_sysctl("/proc/sys/net/ipv4/ip_forward")?;
        set_sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"))
    }

    async fn create_veth(&self, host: &str, bridge: &str, netns: &Path) -> Result<()> {
        let br = Self::index_of(&self.host, bridge, "")
            .await?
            .ok_or_else(|| NetworkError::Config {
                field: "bridge",
                reason: format!("bridge {bridge} does not exist"),
            })?;
        let ns = open_netns(netns)?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(CONTAINER_IFNAME)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, CONTAINER_IFNAME)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(br)
            .up()
            .build();
        self.host.link().add(msg).execute().await.map_err(|e| {
            NetworkError::netlink(
                format!(
                    "create veth {host} on bridge {bridge} with peer {CONTAINER_IFNAME} in {}",
                    netns.display()
                ),
                e,
            )
        })?;
        drop(ns);
        let index = Self::index_of(&self.host, host, "").await?.unwrap_or(0);
        self.host
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("set hairpin on bridge port {host}"), e))
    }

    async fn configure_container(
        &self,
        netns: &Path,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        let h = netns_handle(netns)?;
        let at = format!(" in {}", netns.display());
        let eth0 = Self::index_of(&h, CONTAINER_IFNAME, &at)
            .await?
            .ok_or_else(|| NetworkError::Netns {
                path: netns.to_path_buf(),
                source: std::io::Error::other(format!("{CONTAINER_IFNAME} is missing")),
            })?;
        h.address()
            .add(eth0, IpAddr::V4(addr), prefix)
            .execute()
            .await
            .map_err(|e| {
                NetworkError::netlink(format!("add address {addr}/{prefix} to eth0{at}"), e)
            })?;
        h.link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("set eth0 up{at}"), e))?;
        set_lo_up(&h, &at).await?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .output_interface(eth0)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("add default route via {gateway}{at}"), e))
    }

    async fn loopback_up(&self, netns: &Path) -> Result<()> {
        let h = netns_handle(netns)?;
        set_lo_up(&h, &format!(" in {}", netns.display())).await
    }

    async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(index) = Self::index_of(&self.host, name, "").await? else {
            return Ok(false);
        };
        match self.host.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, ENODEV) => Ok(false),
            Err(e) => Err(NetworkError::netlink(format!("delete link {name}"), e)),
        }
    }

    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<String>> {
        let Some(br) = Self::index_of(&self.host, bridge, "").await? else {
            return Ok(Vec::new());
        };
        let mut links = self.host.link().get().execute();
        let mut names = Vec::new();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(|e| NetworkError::netlink(format!("list ports of bridge {bridge}"), e))?
        {
            let on_bridge = msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == br));
            if on_bridge {
                if let Some(name) = msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }) {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    async fn create_vxlan(&self, cfg: &OverlayConfig) -> Result<()> {
        let name = &cfg.vxlan;
        let msg = LinkVxlan::new(name, cfg.vni)
            .port(cfg.port)
            .local(cfg.local)
            .learning(false)
            .address(super::overlay::vtep_mac(cfg.subnet).to_vec())
            .mtu(cfg.mtu)
            .up()
            .build();
        self.host.link().add(msg).execute().await.map_err(|e| {
            NetworkError::netlink(
                format!("create vxlan {name} (vni {}, local {})", cfg.vni, cfg.local),
                e,
            )
        })?;
        let index = self.vxlan_index(name).await?;
        let vtep = super::overlay::vtep_addr(cfg.subnet);
        match self
            .host
            .address()
            .add(index, IpAddr::V4(vtep), 32)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, EEXIST) => Ok(()),
            Err(e) => Err(NetworkError::netlink(
                format!("add address {vtep}/32 to {name}"),
                e,
            )),
        }
    }

    async fn add_peer(&self, vxlan: &str, peer: &Peer) -> Result<()> {
        let index = self.vxlan_index(vxlan).await?;
        let (mac, vtep) = (peer.vtep_mac(), peer.vtep_addr());
        let what = |w: &str| {
            format!(
                "{w} for peer {} at {} on {vxlan}",
                peer.subnet, peer.underlay
            )
        };
        self.host
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .destination(IpAddr::V4(peer.underlay))
            .replace()
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(what("add fdb entry"), e))?;
        self.host
            .neighbours()
            .add(index, IpAddr::V4(vtep))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(what("add neighbour"), e))?;
        self.host
            .route()
            .add(peer_route(index, peer))
            .replace()
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(what("add route"), e))
    }

    async fn remove_peer(&self, vxlan: &str, peer: &Peer) -> Result<()> {
        let Some(index) = Self::index_of(&self.host, vxlan, "").await? else {
            return Ok(());
        };
        let gone =
            |e: &rtnetlink::Error| is_errno(e, ENOENT) || is_errno(e, ESRCH) || is_errno(e, ENODEV);
        let what = |w: &str| format!("{w} for peer {} on {vxlan}", peer.subnet);
        match self
            .host
            .route()
            .del(peer_route(index, peer))
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(NetworkError::netlink(what("delete route"), e)),
        }
        let (mac, vtep) = (peer.vtep_mac(), peer.vtep_addr());
        let mut neigh = self
            .host
            .neighbours()
            .add(index, IpAddr::V4(vtep))
            .link_layer_address(&mac);
        let neigh: NeighbourMessage = neigh.message_mut().clone();
        let mut fdb = self
            .host
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .destination(IpAddr::V4(peer.underlay));
        let fdb: NeighbourMessage = fdb.message_mut().clone();
        for (msg, w) in [(neigh, "delete neighbour"), (fdb, "delete fdb entry")] {
            match self.host.neighbours().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(NetworkError::netlink(what(w), e)),
            }
        }
        Ok(())
    }
}

impl NetlinkLinks {
    async fn vxlan_index(&self, name: &str) -> Result<u32> {
        Self::index_of(&self.host, name, "")
            .await?
            .ok_or_else(|| NetworkError::Config {
                field: "vxlan",
                reason: format!("vxlan device {name} does not exist"),
            })
    }
}

/// `SUBNET via VTEP dev VXLAN onlink`.
fn peer_route(index: u32, peer: &Peer) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(peer.subnet.network(), peer.subnet.prefix_len())
        .gateway(peer.vtep_addr())
        .output_interface(index)
        .onlink()
        .build()
}

/// Writes "1" to a sysctl file unless it already holds it.
fn set_sysctl(path: &str) -> Result<()> {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        _ => std::fs::write(path, b"1").map_err(|e| NetworkError::io(path, e)),
    }
}

async fn set_lo_up(h: &Handle, at: &str) -> Result<()> {
    let lo = NetlinkLinks::index_of(h, "lo", at)
        .await?
        .ok_or_else(|| NetworkError::Config {
            field: "netns",
            reason: format!("no lo{at}"),
        })?;
    h.link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("set lo up{at}"), e))
}

/// Records every call; links "exist" between create and delete. `fail_on` makes the call
/// whose record starts with it fail.
#[derive(Debug, Default)]
pub struct FakeLinks {
    pub calls: Mutex<Vec<String>>,
    pub links: Mutex<BTreeSet<String>>,
    pub fail_on: Option<String>,
}

impl FakeLinks {
    fn record(&self, call: String) -> Result<()> {
        let fail = self.fail_on.as_deref().is_some_and(|p| call.starts_with(p));
        self.calls.lock().unwrap().push(call.clone());
        if fail {
            return Err(NetworkError::Config {
                field: "fake",
                reason: format!("told to fail: {call}"),
            });
        }
        Ok(())
    }
}

impl Links for FakeLinks {
    async fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<()> {
        self.record(format!("bridge {name} {gateway}/{prefix}"))?;
        self.links.lock().unwrap().insert(name.to_string());
        Ok(())
    }

    async fn create_veth(&self, host: &str, bridge: &str, netns: &Path) -> Result<()> {
        self.record(format!("veth {host} {bridge} {}", netns.display()))?;
        self.links.lock().unwrap().insert(host.to_string());
        Ok(())
    }

    async fn configure_container(
        &self,
        netns: &Path,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        self.record(format!(
            "configure {} {addr}/{prefix} via {gateway}",
            netns.display()
        ))
    }

    async fn loopback_up(&self, netns: &Path) -> Result<()> {
        self.record(format!("lo {}", netns.display()))
    }

    async fn delete_link(&self, name: &str) -> Result<bool> {
        self.record(format!("delete {name}"))?;
        Ok(self.links.lock().unwrap().remove(name))
    }

    async fn bridge_ports(&self, _bridge: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn create_vxlan(&self, cfg: &OverlayConfig) -> Result<()> {
        self.record(format!(
            "vxlan {} vni {} local {} port {} addr {} mtu {}",
            cfg.vxlan,
            cfg.vni,
            cfg.local,
            cfg.port,
            super::overlay::vtep_addr(cfg.subnet),
            cfg.mtu
        ))?;
        self.links.lock().unwrap().insert(cfg.vxlan.clone());
        Ok(())
    }

    async fn add_peer(&self, vxlan: &str, peer: &Peer) -> Result<()> {
        self.record(format!(
            "peer+ {vxlan} {} via {} at {}",
            peer.subnet,
            peer.vtep_addr(),
            peer.underlay
        ))
    }

    async fn remove_peer(&self, vxlan: &str, peer: &Peer) -> Result<()> {
        self.record(format!(
            "peer- {vxlan} {} via {} at {}",
            peer.subnet,
            peer.vtep_addr(),
            peer.underlay
        ))
    }
}

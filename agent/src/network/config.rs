//! Network mode (`--network bridge|host|none`) and the per-node bridge configuration.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::Ipv4Net;

use super::error::{NetworkError, Result};

/// How a container is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Its own netns, a veth on the node's bridge, an address, NAT and published ports.
    #[default]
    Bridge,
    /// The host's network namespace: nothing to set up.
    Host,
    /// Its own netns with only `lo`.
    None,
}

impl FromStr for NetworkMode {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bridge" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            other => Err(NetworkError::UnknownMode(other.to_string())),
        }
    }
}

/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "gantry0";
/// Default subnet: away from docker (172.17/16), podman (10.88/16) and common LANs.
pub const DEFAULT_SUBNET: &str = "10.209.0.0/16";
/// Default prefix of gantry's iptables chains (`GANTRY-DNAT`, `GANTRY-POST`, `GANTRY-FWD`).
pub const DEFAULT_CHAIN_PREFIX: &str = "GANTRY";

/// One node's bridge network. Per node so the cluster overlay can hand each node its own
/// subnet of the cluster CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge link name (≤ 15 bytes).
    pub bridge: String,
    /// Subnet containers get their addresses from.
    pub subnet: Ipv4Net,
    /// The bridge's own address in `subnet`, containers' default route.
    pub gateway: Ipv4Addr,
    /// Prefix of the iptables chains, so two networks (or parallel tests) never share one.
    pub chain_prefix: String,
    /// Directory for this network's lease file (created if missing).
    pub state_dir: PathBuf,
    /// Cluster mode with the overlay: the cluster CIDR (traffic to it is routed over the
    /// vxlan device, not masqueraded; traffic from it may enter the bridge).
    pub overlay_cidr: Option<Ipv4Net>,
    /// The nameserver containers get in their resolv.conf (the agent's service-discovery
    /// DNS on the gateway); `None`: the host's nameservers.
    pub dns: Option<Ipv4Addr>,
}

impl BridgeConfig {
    /// The defaults (`gantry0`, 10.209.0.0/16, gateway .1, chains `GANTRY-*`) with leases
    /// under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let subnet: Ipv4Net = DEFAULT_SUBNET.parse().expect("default subnet parses");
        BridgeConfig {
            bridge: DEFAULT_BRIDGE.to_string(),
            gateway: first_host(subnet),
            subnet,
            chain_prefix: DEFAULT_CHAIN_PREFIX.to_string(),
            state_dir: state_dir.into(),
            overlay_cidr: None,
            dns: None,
        }
    }

    /// Same as `new`, with another bridge, subnet (CIDR) and chain prefix; the gateway is the
    /// subnet's first host address.
    pub fn custom(
        state_dir: impl Into<PathBuf>,
        bridge: &str,
        subnet: &str,
        chain_prefix: &str,
    ) -> Result<Self> {
        let subnet: Ipv4Net = subnet.parse().map_err(|e| NetworkError::Config {
            field: "subnet",
            reason: format!("'{subnet}' is not an IPv4 CIDR: {e}"),
        })?;
        let cfg = BridgeConfig {
            bridge: bridge.to_string(),
            gateway: first_host(subnet.trunc()),
            subnet: subnet.trunc(),
            chain_prefix: chain_prefix.to_string(),
            state_dir: state_dir.into(),
            overlay_cidr: None,
            dns: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the fields the kernel and iptables would reject later, with the field named.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(NetworkError::Config { field, reason });
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return bad("bridge", format!("'{}' must be 1-15 bytes", self.bridge));
        }
        if self
            .bridge
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return bad(
                "bridge",
                format!("'{}' contains '/', ':' or a space", self.bridge),
            );
        }
        if self.subnet.prefix_len() > 30 {
            return bad(
                "subnet",
                format!("{} is too small (at most /30)", self.subnet),
            );
        }
        if !self.subnet.contains(&self.gateway)
            || self.gateway == self.subnet.network()
            || self.gateway == self.subnet.broadcast()
        {
            return bad(
                "gateway",
                format!("{} is not a host address of {}", self.gateway, self.subnet),
            );
        }
        if let Some(c) = self.overlay_cidr {
            if !c.contains(&self.subnet) {
                return bad(
                    "overlay_cidr",
                    format!("{c} does not contain the node subnet {}", self.subnet),
                );
            }
        }
        // The longest chain name is PREFIX-DNAT; iptables allows 28 characters.
        if self.chain_prefix.is_empty()
            || self.chain_prefix.len() > 23
            || !self
                .chain_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad(
                "chain_prefix",
                format!(
                    "'{}' must be 1-23 characters of [A-Za-z0-9_-]",
                    self.chain_prefix
                ),
            );
        }
        Ok(())
    }

    /// The lease file of this network.
    pub fn lease_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.leases.json", self.bridge))
    }

    /// The chain DNAT rules for published ports live in (nat table).
    pub fn dnat_chain(&self) -> String {
        format!("{}-DNAT", self.chain_prefix)
    }

    /// The chain for masquerading (nat table, from POSTROUTING).
    pub fn post_chain(&self) -> String {
        format!("{}-POST", self.chain_prefix)
    }

    /// The chain dropping traffic between containers sharing no cluster network (filter
    /// table, from the forward chain; rewritten whole by the overlay).
    pub fn iso_chain(&self) -> String {
        format!("{}-ISO", self.chain_prefix)
    }

    /// The routing mesh's DNAT chain (nat table; rewritten whole by the overlay).
    pub fn mesh_chain(&self) -> String {
        format!("{}-MESH", self.chain_prefix)
    }

    /// The chain accepting forwarded bridge traffic (filter table, from FORWARD).
    pub fn fwd_chain(&self) -> String {
        format!("{}-FWD", self.chain_prefix)
    }
}

fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(
            "bridge".parse::<NetworkMode>().unwrap(),
            NetworkMode::Bridge
        );
        assert_eq!("host".parse::<NetworkMode>().unwrap(), NetworkMode::Host);
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        let e = "overlay".parse::<NetworkMode>().unwrap_err().to_string();
        assert!(e.contains("'overlay'"), "{e}");
    }

    #[test]
    fn defaults_are_valid() {
        let c = BridgeConfig::new("/tmp/x");
        c.validate().unwrap();
        assert_eq!(c.gateway, Ipv4Addr::new(10, 209, 0, 1));
        assert_eq!(c.dnat_chain(), "GANTRY-DNAT");
        assert_eq!(c.lease_path(), PathBuf::from("/tmp/x/gantry0.leases.json"));
    }

    #[test]
    fn custom_validates_fields() {
        let c = BridgeConfig::custom("/tmp", "br1", "10.5.6.7/24", "T1").unwrap();
        assert_eq!(c.subnet.to_string(), "10.5.6.0/24");
        assert_eq!(c.gateway, Ipv4Addr::new(10, 5, 6, 1));
        let e = |b: &str, s: &str, p: &str| {
            BridgeConfig::custom("/tmp", b, s, p)
                .unwrap_err()
                .to_string()
        };
        assert!(e("br1", "10.0.0.0/33", "T").contains("subnet"));
        assert!(e("br1", "10.0.0.0/31", "T").contains("subnet"));
        assert!(e("a-bridge-name-too-long", "10.0.0.0/24", "T").contains("bridge"));
        assert!(e("br1", "10.0.0.0/24", "bad prefix").contains("chain_prefix"));
        let mut c = BridgeConfig::new("/tmp");
        c.gateway = Ipv4Addr::new(10, 1, 0, 1);
        assert!(c.validate().unwrap_err().to_string().contains("gateway"));
    }
}

//! Node subnets of the cluster network: each node gets one subnet (/24 by default,
//! [`NODE_PREFIX`]) of the cluster CIDR when it first registers, kept for as long as the
//! node exists (also while it is down, so its containers keep their addresses when it
//! returns). The CIDR and the node subnet size are chosen at bootstrap
//! ([`ClusterNetwork`], recorded in Raft) and never change. Pure.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The cluster network's default CIDR: away from the single-node bridge (10.209/16),
/// docker (172.17/16) and podman (10.88/16).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.210.0.0/16";
/// A node's subnet has this prefix length unless the cluster chose another (253
/// containers per node).
pub const NODE_PREFIX: u8 = 24;
/// Node subnets may be at most this long: the overlay derives a node's VTEP MAC from the
/// first three octets of its subnet, which must differ between nodes.
pub const MAX_NODE_PREFIX: u8 = 24;
/// ... and at least this long (a node subnet is one bridge; 65,534 containers is plenty).
pub const MIN_NODE_PREFIX: u8 = 16;

/// The cluster network's address plan: recorded once at bootstrap
/// (`Command::SetClusterNetwork`); a cluster that recorded none (older versions) uses
/// [`ClusterNetwork::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    /// Where node subnets come from.
    pub cidr: Ipv4Net,
    /// Every node's subnet has this prefix length.
    pub node_prefix: u8,
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        ClusterNetwork {
            cidr: default_cluster_cidr(),
            node_prefix: NODE_PREFIX,
        }
    }
}

impl std::fmt::Display for ClusterNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} with /{} node subnets", self.cidr, self.node_prefix)
    }
}

impl ClusterNetwork {
    /// Why this plan cannot be used, as (field, reason); `None` when it can.
    pub fn check(&self) -> Option<(&'static str, String)> {
        let (cidr, p) = (self.cidr, self.node_prefix);
        if cidr.trunc() != cidr {
            return Some((
                "cidr",
                format!("{cidr} has host bits set (the network is {})", cidr.trunc()),
            ));
        }
        if !(MIN_NODE_PREFIX..=MAX_NODE_PREFIX).contains(&p) {
            return Some((
                "node_prefix",
                format!("/{p}: node subnets are /{MIN_NODE_PREFIX} to /{MAX_NODE_PREFIX}"),
            ));
        }
        if cidr.prefix_len() >= p {
            return Some((
                "cidr",
                format!(
                    "{cidr} holds fewer than two /{p} node subnets (use a shorter prefix than /{p})"
                ),
            ));
        }
        let reserved: [Ipv4Net; 4] = [
            Ipv4Net::new(Ipv4Addr::new(0, 0, 0, 0), 8).expect("valid"),
            Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid"),
            Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16).expect("valid"),
            Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 3).expect("valid"),
        ];
        if let Some(r) = reserved
            .iter()
            .find(|r| r.contains(&cidr) || cidr.contains(*r))
        {
            return Some((
                "cidr",
                format!("{cidr} overlaps {r} (this-host, loopback, link-local or multicast)"),
            ));
        }
        None
    }
}

/// The default cluster CIDR, parsed.
pub fn default_cluster_cidr() -> Ipv4Net {
    DEFAULT_CLUSTER_CIDR
        .parse()
        .expect("default cluster CIDR parses")
}

/// The lowest /`prefix` of `cidr` that is not in `taken`; `None` when all are taken
/// (or `cidr` is narrower than a node subnet). Subnets of removed nodes are free again.
///
/// One ordered walk over the entries of `taken` inside `cidr` up to the first gap: a
/// fleet of 10,000 nodes registers without rescanning every node subnet per candidate.
pub fn allocate(cidr: Ipv4Net, prefix: u8, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    if prefix > 32 || prefix < cidr.prefix_len() {
        return None;
    }
    let cidr = cidr.trunc();
    // CIDR blocks nest or are disjoint: an entry that starts before `cidr` and overlaps it
    // holds all of it.
    if (0..cidr.prefix_len())
        .any(|p| Ipv4Net::new(cidr.network(), p).is_ok_and(|sup| taken.contains(&sup.trunc())))
    {
        return None;
    }
    let step = 1u64 << (32 - prefix);
    let end = u64::from(u32::from(cidr.broadcast()));
    let mut next = u64::from(u32::from(cidr.network()));
    let from = Ipv4Net::new(cidr.network(), 0).expect("prefix 0 is valid");
    for t in taken.range(from..) {
        let (start, last) = (
            u64::from(u32::from(t.network())),
            u64::from(u32::from(t.broadcast())),
        );
        if start > end || start >= next + step {
            // Past `cidr`, or a gap before this entry: `next` is free.
            break;
        }
        if last >= next {
            // Overlaps the candidate: the next one starts at the first aligned address
            // after this entry.
            next = (last + 1).div_ceil(step) * step;
        }
    }
    if next + step - 1 > end {
        return None;
    }
    Ipv4Net::new(Ipv4Addr::from(next as u32), prefix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// The definition: the first candidate that no taken entry overlaps.
    fn allocate_by_definition(
        cidr: Ipv4Net,
        prefix: u8,
        taken: &BTreeSet<Ipv4Net>,
    ) -> Option<Ipv4Net> {
        cidr.subnets(prefix)
            .ok()?
            .find(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)))
    }

    proptest::proptest! {
        /// The ordered walk picks what the definition picks, whatever is taken: node
        /// subnets, wider or narrower foreign entries, entries outside the CIDR.
        #[test]
        fn the_walk_agrees_with_the_definition(
            cidr_prefix in 16u8..=24,
            prefix in 16u8..=26,
            entries in proptest::collection::vec((0u32..4096, 14u8..=28), 0..40),
        ) {
            let cidr = Ipv4Net::new(Ipv4Addr::new(10, 50, 0, 0), cidr_prefix).unwrap().trunc();
            let taken: BTreeSet<Ipv4Net> = entries
                .iter()
                .map(|&(off, p)| {
                    // Around the CIDR: 10.49.x.x to 10.50.x.x and beyond.
                    let addr = u32::from(Ipv4Addr::new(10, 49, 240, 0)) + off * 64;
                    Ipv4Net::new(Ipv4Addr::from(addr), p).unwrap().trunc()
                })
                .collect();
            proptest::prop_assert_eq!(
                allocate(cidr, prefix, &taken),
                allocate_by_definition(cidr, prefix, &taken),
                "cidr {} prefix /{} taken {:?}", cidr, prefix, taken
            );
        }
    }

    #[test]
    fn allocates_distinct_subnets_in_order() {
        let cidr = net("10.210.0.0/16");
        let mut taken = BTreeSet::new();
        for i in 0..5u8 {
            let s = allocate(cidr, NODE_PREFIX, &taken).unwrap();
            assert_eq!(s, net(&format!("10.210.{i}.0/24")));
            assert!(taken.insert(s), "{s} handed out twice");
        }
    }

    #[test]
    fn a_removed_nodes_subnet_is_reused_and_overlaps_are_avoided() {
        let cidr = net("10.210.0.0/16");
        let mut taken: BTreeSet<_> = [net("10.210.0.0/24"), net("10.210.1.0/24")].into();
        taken.remove(&net("10.210.0.0/24"));
        assert_eq!(
            allocate(cidr, NODE_PREFIX, &taken),
            Some(net("10.210.0.0/24"))
        );
        // A wider foreign entry (e.g. set by hand) blocks every /24 inside it.
        let taken: BTreeSet<_> = [net("10.210.0.0/23")].into();
        assert_eq!(
            allocate(cidr, NODE_PREFIX, &taken),
            Some(net("10.210.2.0/24"))
        );
    }

    #[test]
    fn exhaustion_and_too_narrow_cidrs_give_none() {
        let cidr = net("10.210.0.0/23");
        let taken: BTreeSet<_> = [net("10.210.0.0/24"), net("10.210.1.0/24")].into();
        assert_eq!(allocate(cidr, NODE_PREFIX, &taken), None);
        assert_eq!(
            allocate(net("10.210.0.0/25"), NODE_PREFIX, &BTreeSet::new()),
            None
        );
    }

    #[test]
    fn other_plans_allocate_their_own_sizes_and_bad_plans_are_named() {
        let plan = |c: &str, p: u8| ClusterNetwork {
            cidr: net(c),
            node_prefix: p,
        };
        assert_eq!(plan("10.210.0.0/16", 24), ClusterNetwork::default());
        assert_eq!(ClusterNetwork::default().check(), None);
        let mut taken = BTreeSet::new();
        for want in [
            "10.50.0.0/22",
            "10.50.4.0/22",
            "10.50.8.0/22",
            "10.50.12.0/22",
        ] {
            let s = allocate(net("10.50.0.0/20"), 22, &taken).unwrap();
            assert_eq!(s, net(want));
            taken.insert(s);
        }
        assert_eq!(allocate(net("10.50.0.0/20"), 22, &taken), None);
        assert_eq!(plan("10.50.0.0/20", 22).check(), None);
        let bad = |c: &str, p: u8| plan(c, p).check().map(|(f, r)| format!("{f}: {r}"));
        assert!(bad("10.50.1.0/16", 24).unwrap().contains("host bits"));
        assert!(bad("10.50.0.0/16", 26)
            .unwrap()
            .starts_with("node_prefix: /26"));
        assert!(bad("10.50.0.0/16", 12)
            .unwrap()
            .starts_with("node_prefix: /12"));
        assert!(bad("10.50.0.0/24", 24)
            .unwrap()
            .contains("fewer than two /24"));
        assert!(bad("127.0.0.0/16", 24)
            .unwrap()
            .contains("overlaps 127.0.0.0/8"));
        assert!(bad("0.0.0.0/0", 24).is_some());
    }
}

//! Node subnets of the cluster network: each node gets one /24 ([`NODE_PREFIX`]) of the
//! cluster CIDR when it first registers, kept for as long as the node exists (also while it
//! is down, so its containers keep their addresses when it returns). Pure.

use ipnet::Ipv4Net;
use std::collections::BTreeSet;

/// The cluster network's default CIDR: away from the single-node bridge (10.209/16),
/// docker (172.17/16) and podman (10.88/16).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.210.0.0/16";
/// Every node's subnet has this prefix length (253 containers per node).
pub const NODE_PREFIX: u8 = 24;

/// The default cluster CIDR, parsed.
pub fn default_cluster_cidr() -> Ipv4Net {
    DEFAULT_CLUSTER_CIDR
        .parse()
        .expect("default cluster CIDR parses")
}

/// The lowest /[`NODE_PREFIX`] of `cidr` that is not in `taken`; `None` when all are taken
/// (or `cidr` is narrower than a node subnet). Subnets of removed nodes are free again.
pub fn allocate(cidr: Ipv4Net, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    cidr.subnets(NODE_PREFIX)
        .ok()?
        .find(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_distinct_subnets_in_order() {
        let cidr = net("10.210.0.0/16");
        let mut taken = BTreeSet::new();
        for i in 0..5u8 {
            let s = allocate(cidr, &taken).unwrap();
            assert_eq!(s, net(&format!("10.210.{i}.0/24")));
            assert!(taken.insert(s), "{s} handed out twice");
        }
    }

    #[test]
    fn a_removed_nodes_subnet_is_reused_and_overlaps_are_avoided() {
        let cidr = net("10.210.0.0/16");
        let mut taken: BTreeSet<_> = [net("10.210.0.0/24"), net("10.210.1.0/24")].into();
        taken.remove(&net("10.210.0.0/24"));
        assert_eq!(allocate(cidr, &taken), Some(net("10.210.0.0/24")));
        // A wider foreign entry (e.g. set by hand) blocks every /24 inside it.
        let taken: BTreeSet<_> = [net("10.210.0.0/23")].into();
        assert_eq!(allocate(cidr, &taken), Some(net("10.210.2.0/24")));
    }

    #[test]
    fn exhaustion_and_too_narrow_cidrs_give_none() {
        let cidr = net("10.210.0.0/23");
        let taken: BTreeSet<_> = [net("10.210.0.0/24"), net("10.210.1.0/24")].into();
        assert_eq!(allocate(cidr, &taken), None);
        assert_eq!(allocate(net("10.210.0.0/25"), &BTreeSet::new()), None);
    }
}

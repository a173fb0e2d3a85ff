//! Published endpoints (the routing mesh): a service's endpoint port is open on every
//! overlay node and balanced over the service's running allocations, wherever they run.
//!
//! Vocabulary: an **endpoint** is `ServiceSpec.endpoints[i]` (node port → container port);
//! the **mesh chain** (`PREFIX-MESH`, nat, jumped to from PREROUTING and OUTPUT for local
//! destinations) holds, per endpoint, one DNAT rule per running allocation, chosen with
//! `statistic --mode random` (rule i of n matches with probability 1/(n−i), so each
//! allocation gets 1/n). Traffic DNATed onto the overlay is masqueraded (`rules.rs`), so
//! the reply comes back through the node the client connected to.
//!
//! Why iptables DNAT and not IPVS or nftables: gantry already drives iptables-restore (one
//! atomic transaction per rewrite, legacy and nft hosts alike); IPVS needs its kernel
//! module and a netlink client more; the rule count is endpoints × replicas, small.
//! Health-aware through the service table: only allocations desired and observed running
//! with an address are in it, so a stopped or failed one leaves the rotation on the Watch
//! event that records it.

use std::fmt::Write;

use gantry_controller::state::{Protocol, Service};

use super::dns::ServiceTable;

/// The nat script rewriting `chain` (flushed and refilled in one transaction). Pure.
pub fn mesh_script<'a>(
    chain: &str,
    services: impl IntoIterator<Item = &'a Service>,
    table: &ServiceTable,
) -> String {
    let mut s = format!("*nat\n:{chain} - [0:0]\n");
    for svc in services {
        let Some(addrs) = table.addresses.get(&svc.name) else {
            continue;
        };
        for e in &svc.spec.endpoints {
            let proto = match e.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let n = addrs.len();
            for (i, ip) in addrs.iter().enumerate() {
                let pick = if i + 1 < n {
                    format!(
                        " -m statistic --mode random --probability {:.8}",
                        1.0 / (n - i) as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "-A {chain} -p {proto} -m {proto} --dport {port}{pick} -m comment --comment \"gantry-mesh:{name}\" -j DNAT --to-destination {ip}:{to}",
                    port = e.host,
                    name = svc.name,
                    to = e.container,
                );
            }
        }
    }
    s.push_str("COMMIT\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_controller::state::{PortMapping, ServiceSpec};
    use std::net::Ipv4Addr;

    fn svc(name: &str, port: u16) -> Service {
        Service {
            name: name.into(),
            spec: ServiceSpec {
                networks: vec!["app".into()],
                endpoints: vec![PortMapping {
                    container: 80,
                    host: port,
                    protocol: Protocol::Tcp,
                }],
                ..Default::default()
            },
            version: 1,
            modify_index: 1,
        }
    }

    #[test]
    fn each_running_allocation_gets_an_equal_share() {
        let mut t = ServiceTable::default();
        t.addresses.insert(
            "web".into(),
            vec![
                Ipv4Addr::new(10, 210, 0, 2),
                Ipv4Addr::new(10, 210, 1, 2),
                Ipv4Addr::new(10, 210, 2, 2),
            ],
        );
        t.addresses.insert("idle".into(), vec![]);
        let s = mesh_script("GT-MESH", &[svc("web", 8080), svc("idle", 9090)], &t);
        let rules: Vec<&str> = s.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(rules.len(), 3, "{s}");
        assert!(
            rules[0].contains("--probability 0.33333333") && rules[0].ends_with("10.210.0.2:80"),
            "{s}"
        );
        assert!(
            rules[1].contains("--probability 0.50000000") && rules[1].ends_with("10.210.1.2:80"),
            "{s}"
        );
        assert!(
            !rules[2].contains("statistic") && rules[2].ends_with("10.210.2.2:80"),
            "{s}"
        );
        assert!(rules.iter().all(|r| r.contains("--dport 8080")));
        assert!(s.starts_with("*nat\n:GT-MESH - [0:0]\n") && s.ends_with("COMMIT\n"));
        // Nothing running: the chain is only flushed.
        let empty = mesh_script("GT-MESH", &[svc("idle", 9090)], &t);
        assert_eq!(empty, "*nat\n:GT-MESH - [0:0]\nCOMMIT\n");
    }
}

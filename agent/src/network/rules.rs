//! The iptables rules of a bridge network, planned as `iptables-restore --noflush` scripts
//! from what `iptables-save` shows. Pure: text in, text out.
//!
//! Chains (PREFIX is [`BridgeConfig::chain_prefix`], `GANTRY` by default):
//! - nat `PREFIX-DNAT`, jumped to from PREROUTING and OUTPUT for local destinations: one
//!   DNAT rule per published port, commented `gantry:<container id>`;
//! - nat `PREFIX-POST`, jumped to from POSTROUTING: egress MASQUERADE for the subnet,
//!   MASQUERADE of loopback-sourced traffic DNATed onto the bridge (`127.0.0.1:HOSTPORT`,
//!   with `route_localnet` on the bridge), and hairpin MASQUERADE (a container reaching a
//!   port published by itself or a neighbour through a host address);
//! - filter `PREFIX-FWD`, jumped to from FORWARD: accepts what leaves the bridge, replies
//!   coming back, and DNATed traffic into the bridge, so a host whose FORWARD policy is
//!   DROP (docker's) still forwards gantry's traffic.
//!
//! Base chains are rewritten as a whole on every [`base_nat`]/[`base_filter`]; the DNAT
//! chain is only created when missing (it holds running containers' rules).

use std::fmt::Write;
use std::net::Ipv4Addr;

use super::config::BridgeConfig;
use super::ports::PortMapping;

/// An iptables table gantry writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

/// The comment that marks a container's rules.
pub fn comment_for(container: &str) -> String {
    format!("gantry:{container}")
}

fn chain_exists(save: &str, chain: &str) -> bool {
    save.lines()
        .any(|l| l.strip_prefix(':').and_then(|r| r.split(' ').next()) == Some(chain))
}

/// The `-A CHAIN …` lines of `chain`, in order.
fn rules_of<'a>(save: &'a str, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let prefix = format!("-A {chain} ");
    save.lines().filter(move |l| l.starts_with(&prefix))
}

fn has_jump(save: &str, from: &str, to: &str) -> bool {
    let tail = format!("-j {to}");
    rules_of(save, from).any(|l| l.ends_with(&tail))
}

/// The container id of a rule's `gantry:` comment.
pub fn rule_owner(rule: &str) -> Option<&str> {
    let rest = rule.split("--comment ").nth(1)?;
    let rest = rest.trim_start_matches('"');
    let end = rest.find(['"', ' ']).unwrap_or(rest.len());
    rest[..end].strip_prefix("gantry:")
}

fn wrap(table: Table, body: &str) -> String {
    if body.is_empty() {
        return String::new();
    }
    format!("*{}\n{body}COMMIT\n", table.as_str())
}

/// The nat script that makes the base chains and jumps right, given `iptables-save -t nat`.
pub fn base_nat(cfg: &BridgeConfig, save: &str) -> String {
    let dnat = cfg.dnat_chain();
    let post = cfg.post_chain();
    let (br, net) = (&cfg.bridge, cfg.subnet);
    let mut s = String::new();
    if !chain_exists(save, &dnat) {
        // Declaring a chain in a --noflush restore creates it, or flushes an existing one.
        let _ = writeln!(s, ":{dnat} - [0:0]");
    }
    let _ = writeln!(s, ":{post} - [0:0]");
    if let Some(cidr) = cfg.overlay_cidr {
        // Container to container across nodes keeps its source address (over the vxlan).
        let _ = writeln!(s, "-A {post} -s {net} -d {cidr} -j RETURN");
    }
    let _ = writeln!(s, "-A {post} -s {net} ! -o {br} -j MASQUERADE");
    let _ = writeln!(s, "-A {post} -s 127.0.0.0/8 -o {br} -j MASQUERADE");
    let _ = writeln!(
        s,
        "-A {post} -s {net} -o {br} -m conntrack --ctstate DNAT -j MASQUERADE"
    );
    for builtin in ["PREROUTING", "OUTPUT"] {
        if !has_jump(save, builtin, &dnat) {
            let _ = writeln!(s, "-A {builtin} -m addrtype --dst-type LOCAL -j {dnat}");
        }
    }
    if let Some(cidr) = cfg.overlay_cidr {
        let mesh = cfg.mesh_chain();
        if !chain_exists(save, &mesh) {
            let _ = writeln!(s, ":{mesh} - [0:0]");
        }
        for builtin in ["PREROUTING", "OUTPUT"] {
            if !has_jump(save, builtin, &mesh) {
                let _ = writeln!(s, "-A {builtin} -m addrtype --dst-type LOCAL -j {mesh}");
            }
        }
        // The routing mesh: DNATed onto another node, the reply must come back this way.
        let _ = writeln!(
            s,
            "-A {post} -d {cidr} ! -o {br} -m conntrack --ctstate DNAT -j MASQUERADE"
        );
    }
    if !has_jump(save, "POSTROUTING", &post) {
        let _ = writeln!(s, "-A POSTROUTING -j {post}");
    }
    wrap(Table::Nat, &s)
}

/// The filter script that makes the forward chain and its jump right.
pub fn base_filter(cfg: &BridgeConfig, save: &str) -> String {
    let fwd = cfg.fwd_chain();
    let br = &cfg.bridge;
    let mut s = String::new();
    let iso = cfg.iso_chain();
    if cfg.overlay_cidr.is_some() && !chain_exists(save, &iso) {
        let _ = writeln!(s, ":{iso} - [0:0]");
    }
    let _ = writeln!(s, ":{fwd} - [0:0]");
    if let Some(cidr) = cfg.overlay_cidr {
        // Isolation first: container to container traffic of networks that share nothing.
        let _ = writeln!(s, "-A {fwd} -s {cidr} -d {cidr} -j {iso}");
    }
    let _ = writeln!(
        s,
        "-A {fwd} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    let _ = writeln!(s, "-A {fwd} -o {br} -m conntrack --ctstate DNAT -j ACCEPT");
    let _ = writeln!(s, "-A {fwd} -i {br} -j ACCEPT");
    if let Some(cidr) = cfg.overlay_cidr {
        let _ = writeln!(s, "-A {fwd} -s {cidr} -o {br} -j ACCEPT");
        let _ = writeln!(
            s,
            "-A {fwd} -d {cidr} -m conntrack --ctstate DNAT -j ACCEPT"
        );
        let _ = writeln!(
            s,
            "-A {fwd} -s {cidr} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
    }
    if !has_jump(save, "FORWARD", &fwd) {
        // First in FORWARD, ahead of a DROP policy's rules of other tools.
        let _ = writeln!(s, "-I FORWARD 1 -j {fwd}");
    }
    wrap(Table::Filter, &s)
}

/// The nat script adding a container's published ports.
pub fn publish(cfg: &BridgeConfig, container: &str, ip: Ipv4Addr, ports: &[PortMapping]) -> String {
    let dnat = cfg.dnat_chain();
    let comment = comment_for(container);
    let mut s = String::new();
    for p in ports {
        let dst = p.host_ip.map(|a| format!(" -d {a}/32")).unwrap_or_default();
        let _ = writeln!(
            s,
            "-A {dnat}{dst} -p {proto} -m {proto} --dport {hp} -m comment --comment \"{comment}\" -j DNAT --to-destination {ip}:{cp}",
            proto = p.protocol,
            hp = p.host_port,
            cp = p.container_port,
        );
    }
    wrap(Table::Nat, &s)
}

/// The nat script deleting every DNAT rule whose owner satisfies `remove`.
pub fn unpublish(cfg: &BridgeConfig, save: &str, remove: impl Fn(&str) -> bool) -> String {
    let dnat = cfg.dnat_chain();
    let mut s = String::new();
    for rule in rules_of(save, &dnat) {
        if rule_owner(rule).is_some_and(&remove) {
            let _ = writeln!(s, "-D{}", &rule[2..]);
        }
    }
    wrap(Table::Nat, &s)
}

/// The script removing gantry's chains of this network and every jump to them from `table`.
pub fn teardown(cfg: &BridgeConfig, table: Table, save: &str) -> String {
    let ours: Vec<String> = match table {
        Table::Nat => vec![cfg.dnat_chain(), cfg.post_chain(), cfg.mesh_chain()],
        Table::Filter => vec![cfg.fwd_chain(), cfg.iso_chain()],
    };
    let mut s = String::new();
    for line in save.lines().filter(|l| l.starts_with("-A ")) {
        let chain = line[3..].split(' ').next().unwrap_or("");
        let jumps_to_ours = ours.iter().any(|c| line.ends_with(&format!("-j {c}")));
        if jumps_to_ours && !ours.iter().any(|c| c == chain) {
            let _ = writeln!(s, "-D{}", &line[2..]);
        }
    }
    for c in ours.iter().filter(|c| chain_exists(save, c)) {
        let _ = writeln!(s, "-F {c}");
        let _ = writeln!(s, "-X {c}");
    }
    wrap(table, &s)
}

/// Every container id that owns a rule in the DNAT chain.
pub fn owners(cfg: &BridgeConfig, save: &str) -> Vec<String> {
    let dnat = cfg.dnat_chain();
    let mut v: Vec<String> = rules_of(save, &dnat)
        .filter_map(rule_owner)
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ports::parse_port_spec;

    fn cfg() -> BridgeConfig {
        BridgeConfig::custom("/tmp", "gt0", "10.9.0.0/24", "GT").unwrap()
    }

    const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn base_nat_on_empty_table_creates_chains_and_jumps() {
        let s = base_nat(&cfg(), EMPTY_NAT);
        assert!(
            s.starts_with("*nat\n:GT-DNAT - [0:0]\n:GT-POST - [0:0]\n"),
            "{s}"
        );
        assert!(s.contains("-A GT-POST -s 10.9.0.0/24 ! -o gt0 -j MASQUERADE\n"));
        assert!(s.contains("-A PREROUTING -m addrtype --dst-type LOCAL -j GT-DNAT\n"));
        assert!(s.contains("-A OUTPUT -m addrtype --dst-type LOCAL -j GT-DNAT\n"));
        assert!(s.contains("-A POSTROUTING -j GT-POST\n"));
        assert!(s.ends_with("COMMIT\n"));
    }

    #[test]
    fn base_nat_is_idempotent_and_keeps_dnat_rules() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:GT-DNAT - [0:0]\n:GT-POST - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j GT-DNAT\n-A OUTPUT -m addrtype --dst-type LOCAL -j GT-DNAT\n-A POSTROUTING -j GT-POST\n-A GT-DNAT -p tcp -m tcp --dport 80 -m comment --comment \"gantry:c1\" -j DNAT --to-destination 10.9.0.2:80\nCOMMIT\n";
        let s = base_nat(&cfg(), save);
        assert!(
            !s.contains(":GT-DNAT"),
            "must not flush the DNAT chain: {s}"
        );
        assert!(!s.contains("-A PREROUTING") && !s.contains("-A OUTPUT"));
        assert!(!s.contains("-A POSTROUTING"));
    }

    #[test]
    fn overlay_traffic_is_routed_unmasqueraded_and_forwarded_in() {
        let mut c = cfg();
        c.overlay_cidr = Some("10.9.0.0/16".parse().unwrap());
        let s = base_nat(&c, EMPTY_NAT);
        let ret = s
            .find("-A GT-POST -s 10.9.0.0/24 -d 10.9.0.0/16 -j RETURN\n")
            .expect(&s);
        let masq = s
            .find("-A GT-POST -s 10.9.0.0/24 ! -o gt0 -j MASQUERADE")
            .expect(&s);
        assert!(ret < masq, "{s}");
        let f = base_filter(&c, "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
        assert!(f.contains(":GT-ISO - [0:0]\n"), "{f}");
        assert!(
            f.contains("-A GT-FWD -s 10.9.0.0/16 -d 10.9.0.0/16 -j GT-ISO\n"),
            "{f}"
        );
        // An existing isolation chain keeps its rules.
        let f2 = base_filter(
            &c,
            "*filter\n:FORWARD ACCEPT [0:0]\n:GT-ISO - [0:0]\nCOMMIT\n",
        );
        assert!(!f2.contains(":GT-ISO"), "{f2}");
        assert!(
            f.contains("-A GT-FWD -s 10.9.0.0/16 -o gt0 -j ACCEPT\n"),
            "{f}"
        );
        assert!(!base_nat(&cfg(), EMPTY_NAT).contains("RETURN"));
    }

    #[test]
    fn base_filter_inserts_jump_once() {
        let s = base_filter(&cfg(), "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n");
        assert!(s.contains("-I FORWARD 1 -j GT-FWD\n"));
        assert!(s.contains("-A GT-FWD -i gt0 -j ACCEPT\n"));
        let s = base_filter(
            &cfg(),
            "*filter\n:FORWARD DROP [0:0]\n:GT-FWD - [0:0]\n-A FORWARD -j GT-FWD\nCOMMIT\n",
        );
        assert!(!s.contains("FORWARD 1"));
    }

    #[test]
    fn publish_writes_one_dnat_per_port() {
        let mut ports = parse_port_spec("8080:80").unwrap();
        ports.extend(parse_port_spec("127.0.0.1:5353:53/udp").unwrap());
        let s = publish(&cfg(), "c1", "10.9.0.2".parse().unwrap(), &ports);
        assert_eq!(
            s,
            "*nat\n\
             -A GT-DNAT -p tcp -m tcp --dport 8080 -m comment --comment \"gantry:c1\" -j DNAT --to-destination 10.9.0.2:80\n\
             -A GT-DNAT -d 127.0.0.1/32 -p udp -m udp --dport 5353 -m comment --comment \"gantry:c1\" -j DNAT --to-destination 10.9.0.2:53\n\
             COMMIT\n"
        );
        assert_eq!(publish(&cfg(), "c1", "10.9.0.2".parse().unwrap(), &[]), "");
    }

    #[test]
    fn unpublish_deletes_only_the_owners_rules() {
        let save = "*nat\n:GT-DNAT - [0:0]\n-A GT-DNAT -p tcp -m tcp --dport 80 -m comment --comment \"gantry:c1\" -j DNAT --to-destination 10.9.0.2:80\n-A GT-DNAT -p tcp -m tcp --dport 81 -m comment --comment gantry:c2 -j DNAT --to-destination 10.9.0.3:80\n-A OTHER -m comment --comment \"gantry:c1\" -j ACCEPT\nCOMMIT\n";
        let s = unpublish(&cfg(), save, |id| id == "c1");
        assert_eq!(s, "*nat\n-D GT-DNAT -p tcp -m tcp --dport 80 -m comment --comment \"gantry:c1\" -j DNAT --to-destination 10.9.0.2:80\nCOMMIT\n");
        assert_eq!(owners(&cfg(), save), ["c1", "c2"]);
        assert_eq!(unpublish(&cfg(), save, |_| false), "");
    }

    #[test]
    fn teardown_removes_jumps_and_chains() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:GT-DNAT - [0:0]\n:GT-POST - [0:0]\n:GTX-DNAT - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j GT-DNAT\n-A PREROUTING -m addrtype --dst-type LOCAL -j GTX-DNAT\n-A POSTROUTING -j GT-POST\n-A GT-DNAT -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.9.0.2:80\nCOMMIT\n";
        let s = teardown(&cfg(), Table::Nat, save);
        assert_eq!(
            s,
            "*nat\n-D PREROUTING -m addrtype --dst-type LOCAL -j GT-DNAT\n-D POSTROUTING -j GT-POST\n-F GT-DNAT\n-X GT-DNAT\n-F GT-POST\n-X GT-POST\nCOMMIT\n"
        );
        assert_eq!(teardown(&cfg(), Table::Filter, "*filter\nCOMMIT\n"), "");
    }
}

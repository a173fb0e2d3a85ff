//! Service discovery: a small DNS server per agent, on its bridge's gateway address, that
//! containers get as their only nameserver.
//!
//! Vocabulary:
//! - **service table** ([`ServiceTable`]): service name → the cluster-network addresses of
//!   its *running* allocations (desired run, observed running, address reported), plus the
//!   networks each service and each container address belongs to. Rebuilt from the
//!   replicated state on every change ([`ServiceTable::build`]), so answers follow
//!   allocations as they start, stop, fail and move;
//! - **visible**: a container sees the services that share one of its networks (isolation);
//!   a client that is not a known container (the host) sees every service;
//! - names: `SERVICE` and `SERVICE.gantry` ([`DOMAIN`]), case-insensitive; answers carry
//!   TTL 0 so that no resolver caches an allocation that moves away.
//!
//! [`answer`] is pure (query bytes' message in, reply out); [`DnsServer`] is the UDP loop.
//! Other names are forwarded to the host's upstream nameservers when there are any, else
//! refused (REFUSED, not a silent timeout). Wire format: `hickory-proto`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

use gantry_controller::state::{Allocation, Desired, Observed, Service};

use super::error::{NetworkError, Result};

/// The cluster's DNS domain: `web` and `web.gantry` are the same service.
pub const DOMAIN: &str = "gantry";
/// How long a forwarded query may wait for its upstream.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// What the DNS server answers from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// Service → its networks.
    pub networks: BTreeMap<String, BTreeSet<String>>,
    /// Service → addresses of its running allocations (sorted).
    pub addresses: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Container address → its service.
    pub owners: HashMap<Ipv4Addr, String>,
}

impl ServiceTable {
    /// The table of the services that join a cluster network, from the replicated state.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        allocs: impl IntoIterator<Item = &'a Allocation>,
    ) -> Self {
        let mut t = ServiceTable::default();
        for s in services {
            if !s.spec.networks.is_empty() {
                t.networks
                    .insert(s.name.clone(), s.spec.networks.iter().cloned().collect());
                t.addresses.entry(s.name.clone()).or_default();
            }
        }
        for a in allocs {
            let Some(ip) = a.address else { continue };
            if !t.networks.contains_key(&a.service) {
                continue;
            }
            t.owners.insert(ip, a.service.clone());
            if a.desired == Desired::Run && a.observed == Observed::Running {
                t.addresses.entry(a.service.clone()).or_default().push(ip);
            }
        }
        for v in t.addresses.values_mut() {
            v.sort();
            v.dedup();
        }
        t
    }

    /// Whether `client` may see `service` (see the module doc).
    pub fn visible(&self, client: Ipv4Addr, service: &str) -> bool {
        let Some(own) = self.owners.get(&client) else {
            return true;
        };
        match (self.networks.get(own), self.networks.get(service)) {
            (Some(a), Some(b)) => !a.is_disjoint(b),
            _ => false,
        }
    }

    /// Whether two container addresses may talk: both known and their services share a
    /// network. Unknown addresses (hosts, VTEPs) are not isolated.
    pub fn may_talk(&self, a: Ipv4Addr, b: Ipv4Addr) -> bool {
        match (self.owners.get(&a), self.owners.get(&b)) {
            (Some(sa), Some(sb)) => match (self.networks.get(sa), self.networks.get(sb)) {
                (Some(na), Some(nb)) => !na.is_disjoint(nb),
                _ => false,
            },
            _ => true,
        }
    }

    /// The filter-table script that makes `chain` drop traffic between every pair of known
    /// container addresses that may not talk (the chain is flushed and rewritten in one
    /// `iptables-restore` transaction). Pure.
    pub fn isolation_script(&self, chain: &str) -> String {
        let mut ips: Vec<&Ipv4Addr> = self.owners.keys().collect();
        ips.sort();
        let mut s = format!("*filter\n:{chain} - [0:0]\n");
        for a in &ips {
            for b in &ips {
                if a != b && !self.may_talk(**a, **b) {
                    s.push_str(&format!("-A {chain} -s {a}/32 -d {b}/32 -j DROP\n"));
                }
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    /// The service a query name asks for: `svc`, `svc.` or `svc.gantry.`; `None` for a name
    /// outside the cluster domain.
    pub fn service_of(name: &str) -> Option<String> {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        let svc = match n.strip_suffix(DOMAIN) {
            Some("") => return None,
            Some(rest) => rest.strip_suffix('.')?.to_string(),
            None if !n.contains('.') => n,
            None => return None,
        };
        (!svc.is_empty() && !svc.contains('.')).then_some(svc)
    }
}

/// How a query is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A reply built here.
    Reply(Message),
    /// Not a cluster name: forward it upstream (the reply is relayed as it comes).
    Forward,
}

fn reply_to(q: &Message, code: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    m.add_queries(q.queries().iter().cloned());
    m
}

/// The answer to query `q` from `client`. Pure.
pub fn answer(table: &ServiceTable, client: Ipv4Addr, q: &Message) -> Answer {
    if q.message_type() != MessageType::Query || q.op_code() != OpCode::Query {
        return Answer::Reply(reply_to(q, ResponseCode::NotImp));
    }
    let [query] = q.queries() else {
        return Answer::Reply(reply_to(q, ResponseCode::FormErr));
    };
    let name = query.name().to_ascii();
    let Some(svc) = ServiceTable::service_of(&name) else {
        return Answer::Forward;
    };
    if !table.addresses.contains_key(&svc) || !table.visible(client, &svc) {
        return Answer::Reply(reply_to(q, ResponseCode::NXDomain));
    }
    let mut m = reply_to(q, ResponseCode::NoError);
    m.set_authoritative(true);
    if matches!(query.query_type(), RecordType::A | RecordType::ANY) {
        let owner: Name = query.name().clone();
        for ip in &table.addresses[&svc] {
            m.add_answer(Record::from_rdata(owner.clone(), 0, RData::A(A(*ip))));
        }
    }
    Answer::Reply(m)
}

/// The non-loopback nameservers of a resolv.conf (where other names are forwarded).
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// The resolv.conf of a container on the cluster network.
pub fn container_resolv_conf(nameserver: Ipv4Addr) -> String {
    format!("nameserver {nameserver}\nsearch {DOMAIN}\noptions ndots:1\n")
}

/// The UDP server: answers from the shared table, forwards other names.
pub struct DnsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Binds `addr` (port 53 of the bridge gateway) and serves until dropped.
    pub async fn bind(
        addr: SocketAddr,
        table: Arc<RwLock<ServiceTable>>,
        upstreams: Vec<SocketAddr>,
    ) -> Result<Self> {
        let sock = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| NetworkError::Dns { addr, source })?;
        let addr = sock
            .local_addr()
            .map_err(|source| NetworkError::Dns { addr, source })?;
        let sock = Arc::new(sock);
        let task = tokio::spawn(serve(sock, table, upstreams));
        Ok(DnsServer { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    sock: Arc<tokio::net::UdpSocket>,
    table: Arc<RwLock<ServiceTable>>,
    upstreams: Vec<SocketAddr>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "dns: receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(q) = Message::from_bytes(&buf[..n]) else {
            tracing::debug!(%from, "dns: undecodable query dropped");
            continue;
        };
        let client = match from.ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        let a = {
            let t = table.read().unwrap_or_else(|p| p.into_inner());
            answer(&t, client, &q)
        };
        match a {
            Answer::Reply(m) => {
                if let Ok(bytes) = m.to_bytes() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
            Answer::Forward if upstreams.is_empty() => {
                if let Ok(bytes) = reply_to(&q, ResponseCode::Refused).to_bytes() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
            Answer::Forward => {
                let query = buf[..n].to_vec();
                let (sock, ups) = (sock.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let reply = match forward(&query, &ups).await {
                        Some(r) => r,
                        None => match reply_to(&q, ResponseCode::ServFail).to_bytes() {
                            Ok(b) => b,
                            Err(_) => return,
                        },
                    };
                    let _ = sock.send_to(&reply, from).await;
                });
            }
        }
    }
}

/// Relays a query to the first upstream that answers in time.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let Ok(s) = tokio::net::UdpSocket::bind(bind).await else {
            continue;
        };
        if s.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(FORWARD_TIMEOUT, s.recv_from(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_controller::state::ServiceSpec;
    use hickory_proto::op::Query;

    fn svc(name: &str, nets: &[&str]) -> Service {
        Service {
            name: name.into(),
            spec: ServiceSpec {
                networks: nets.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            version: 1,
            modify_index: 1,
        }
    }

    fn alloc(
        id: u64,
        service: &str,
        ip: [u8; 4],
        desired: Desired,
        observed: Observed,
    ) -> Allocation {
        Allocation {
            id,
            service: service.into(),
            version: 1,
            node: 1,
            resources: Default::default(),
            desired,
            observed,
            container: None,
            ports: vec![],
            history: vec![],
            modify_index: 1,
            address: Some(ip.into()),
        }
    }

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    fn a_records(a: &Answer) -> (ResponseCode, Vec<Ipv4Addr>) {
        let Answer::Reply(m) = a else {
            panic!("expected a reply, got {a:?}")
        };
        let ips = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(A(ip)) => Some(*ip),
                _ => None,
            })
            .collect();
        (m.response_code(), ips)
    }

    fn table() -> ServiceTable {
        let services = [
            svc("web", &["front"]),
            svc("api", &["front", "back"]),
            svc("db", &["back"]),
            svc("local", &[]),
        ];
        let allocs = [
            alloc(1, "web", [10, 210, 0, 2], Desired::Run, Observed::Running),
            alloc(2, "api", [10, 210, 1, 2], Desired::Run, Observed::Running),
            alloc(
                3,
                "api",
                [10, 210, 2, 2],
                Desired::Run,
                Observed::Failed("oom".into()),
            ),
            alloc(4, "api", [10, 210, 2, 3], Desired::Stop, Observed::Running),
            alloc(5, "db", [10, 210, 2, 4], Desired::Run, Observed::Running),
            alloc(6, "api", [10, 210, 0, 9], Desired::Run, Observed::Running),
        ];
        ServiceTable::build(&services, &allocs)
    }

    #[test]
    fn isolation_drops_only_pairs_sharing_no_network() {
        let t = table();
        let (web, api, db) = (
            Ipv4Addr::new(10, 210, 0, 2),
            Ipv4Addr::new(10, 210, 1, 2),
            Ipv4Addr::new(10, 210, 2, 4),
        );
        assert!(t.may_talk(web, api) && t.may_talk(api, db));
        assert!(!t.may_talk(web, db) && !t.may_talk(db, web));
        assert!(
            t.may_talk(web, Ipv4Addr::new(10, 210, 3, 0)),
            "a VTEP is not isolated"
        );
        let s = t.isolation_script("GT-ISO");
        assert!(
            s.starts_with("*filter\n:GT-ISO - [0:0]\n") && s.ends_with("COMMIT\n"),
            "{s}"
        );
        assert!(
            s.contains("-A GT-ISO -s 10.210.0.2/32 -d 10.210.2.4/32 -j DROP\n"),
            "{s}"
        );
        assert!(
            s.contains("-A GT-ISO -s 10.210.2.4/32 -d 10.210.0.2/32 -j DROP\n"),
            "{s}"
        );
        assert!(!s.contains("-s 10.210.0.2/32 -d 10.210.1.2/32"), "{s}");
    }

    #[test]
    fn names_map_to_services() {
        assert_eq!(ServiceTable::service_of("web."), Some("web".into()));
        assert_eq!(ServiceTable::service_of("Web.Gantry."), Some("web".into()));
        assert_eq!(ServiceTable::service_of("web.gantry"), Some("web".into()));
        assert_eq!(ServiceTable::service_of("gantry."), None);
        assert_eq!(ServiceTable::service_of("example.com."), None);
        assert_eq!(ServiceTable::service_of("a.b.gantry."), None);
    }

    #[test]
    fn only_running_allocations_are_answered_sorted_with_ttl_0() {
        let t = table();
        let host = Ipv4Addr::new(192, 0, 2, 1);
        let a = answer(&t, host, &query("api.gantry.", RecordType::A));
        assert_eq!(
            a_records(&a),
            (
                ResponseCode::NoError,
                vec![Ipv4Addr::new(10, 210, 0, 9), Ipv4Addr::new(10, 210, 1, 2)]
            )
        );
        let Answer::Reply(m) = a else { unreachable!() };
        assert!(m.answers().iter().all(|r| r.ttl() == 0));
        assert_eq!(m.id(), 7);
        assert_eq!(m.message_type(), MessageType::Response);
        // AAAA: the name exists, no records.
        let a = answer(&t, host, &query("api.", RecordType::AAAA));
        assert_eq!(a_records(&a), (ResponseCode::NoError, vec![]));
        // A service with no running allocation exists but has no address.
        let t2 = ServiceTable::build(&[svc("idle", &["front"])], &[]);
        assert_eq!(
            a_records(&answer(&t2, host, &query("idle.", RecordType::A))),
            (ResponseCode::NoError, vec![])
        );
    }

    #[test]
    fn unknown_and_off_network_services_are_nxdomain_and_others_forwarded() {
        let t = table();
        let web = Ipv4Addr::new(10, 210, 0, 2);
        let db = Ipv4Addr::new(10, 210, 2, 4);
        assert_eq!(
            a_records(&answer(&t, web, &query("nope.", RecordType::A))).0,
            ResponseCode::NXDomain
        );
        // Not on the cluster network: not in DNS.
        assert_eq!(
            a_records(&answer(&t, web, &query("local.", RecordType::A))).0,
            ResponseCode::NXDomain
        );
        // web (front) sees api (front, back) but not db (back); db sees api, not web.
        assert_eq!(
            a_records(&answer(&t, web, &query("api.", RecordType::A))).0,
            ResponseCode::NoError
        );
        assert_eq!(
            a_records(&answer(&t, web, &query("db.", RecordType::A))).0,
            ResponseCode::NXDomain
        );
        assert_eq!(
            a_records(&answer(&t, db, &query("web.", RecordType::A))).0,
            ResponseCode::NXDomain
        );
        assert_eq!(
            a_records(&answer(&t, db, &query("api.", RecordType::A))).0,
            ResponseCode::NoError
        );
        assert_eq!(
            answer(&t, web, &query("example.com.", RecordType::A)),
            Answer::Forward
        );
    }

    #[test]
    fn upstreams_skip_loopback_and_resolv_conf_points_at_the_gateway() {
        let u = upstreams(
            "# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\nnameserver ::1\n",
        );
        assert_eq!(u, vec!["10.0.0.2:53".parse().unwrap()]);
        let r = container_resolv_conf(Ipv4Addr::new(10, 210, 1, 1));
        assert!(
            r.starts_with("nameserver 10.210.1.1\n") && r.contains("search gantry"),
            "{r}"
        );
    }

    #[tokio::test]
    async fn the_server_answers_over_udp_and_refuses_without_upstreams() {
        let table = Arc::new(RwLock::new(table()));
        let srv = DnsServer::bind("127.0.0.1:0".parse().unwrap(), table.clone(), vec![])
            .await
            .unwrap();
        let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |name: &'static str| {
            let c = &c;
            let to = srv.addr();
            async move {
                c.send_to(&query(name, RecordType::A).to_bytes().unwrap(), to)
                    .await
                    .unwrap();
                let mut buf = [0u8; 1500];
                let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
                    .await
                    .expect("dns reply within 5 s")
                    .unwrap();
                Message::from_bytes(&buf[..n]).unwrap()
            }
        };
        let m = ask("web.").await;
        assert_eq!(
            a_records(&Answer::Reply(m)).1,
            vec![Ipv4Addr::new(10, 210, 0, 2)]
        );
        // The table changes: the next answer follows.
        *table.write().unwrap() = ServiceTable::default();
        assert_eq!(ask("web.").await.response_code(), ResponseCode::NXDomain);
        assert_eq!(
            ask("example.com.").await.response_code(),
            ResponseCode::Refused
        );
    }
}

//! The overlay's follower of the replicated state: one task per agent (cluster mode with
//! `--overlay`) that watches the controller's whole state — every node, service and
//! allocation, where the cluster executor only watches its own — and keeps this node's
//! network in step with it:
//! - **peers**: the node list → [`overlay::desired_peers`] → [`Overlay::sync`];
//! - **service table**: services and allocations → [`ServiceTable::build`] → the DNS
//!   server's table (swapped whole), and the isolation chain
//!   ([`ServiceTable::isolation_script`], rewritten when it changes);
//! - **address reports**: this node's allocations whose container address (from the local
//!   engine) differs from the replicated one → one `SetAllocAddresses` command
//!   ([`address_updates`], pure). Checked on every change and every [`REPORT_EVERY`].
//!
//! Without a controller nothing changes: the kernel entries and the table stay as they
//! were, so running containers keep reaching each other.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gantry_controller::api::ControllerClient;
use gantry_controller::state::{
    AllocId, Allocation, Change, Command, Node, NodeId, NodeStatus, Service, StateImage,
};
use gantry_proto::cluster::watch_event;

use super::dns::ServiceTable;
use super::firewall::Firewall;
use super::links::Links;
use super::overlay::{self, NodeView, Overlay};
use super::rules::Table;

/// How often local addresses are compared with the replicated ones without a change.
pub const REPORT_EVERY: Duration = Duration::from_millis(200);

/// The whole replicated state, as far as the network needs it.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    pub index: u64,
    pub nodes: BTreeMap<NodeId, Node>,
    pub services: BTreeMap<String, Service>,
    pub allocs: BTreeMap<AllocId, Allocation>,
}

impl ClusterView {
    pub fn full(&mut self, index: u64, img: StateImage) {
        self.nodes = img.nodes.into_iter().map(|n| (n.id, n)).collect();
        self.services = img
            .services
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        self.allocs = img.allocations.into_iter().map(|a| (a.id, a)).collect();
        self.index = index;
    }

    pub fn apply(&mut self, index: u64, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Node(n) => {
                    self.nodes.insert(n.id, *n);
                }
                Change::Service(s) => {
                    self.services.insert(s.name.clone(), *s);
                }
                Change::ServiceRemoved { name, .. } => {
                    self.services.remove(&name);
                }
                Change::Allocation(a) => {
                    self.allocs.insert(a.id, std::sync::Arc::unwrap_or_clone(a));
                }
                Change::AllocationRemoved { id, .. } => {
                    self.allocs.remove(&id);
                }
                Change::Token(_) => {}
            }
        }
        self.index = index;
    }

    pub fn node_views(&self) -> Vec<NodeView> {
        self.nodes
            .values()
            .map(|n| NodeView {
                name: n.name.clone(),
                address: n.address.clone(),
                subnet: n.subnet,
                up: n.status != NodeStatus::Down,
            })
            .collect()
    }

    pub fn node_named(&self, name: &str) -> Option<&Node> {
        self.nodes.values().find(|n| n.name == name)
    }

    pub fn table(&self) -> ServiceTable {
        ServiceTable::build(self.services.values(), self.allocs.values())
    }
}

/// The address changes to report for node `me`: each of its allocations whose replicated
/// address differs from the local one (`None` once its container is gone). Pure.
pub fn address_updates(
    view: &ClusterView,
    me: NodeId,
    local: &HashMap<AllocId, Ipv4Addr>,
) -> Vec<(AllocId, Option<Ipv4Addr>)> {
    view.allocs
        .values()
        .filter(|a| a.node == me)
        .filter_map(|a| {
            let want = local.get(&a.id).copied();
            (a.address != want).then_some((a.id, want))
        })
        .collect()
}

/// The local allocation → container address map (from the engine's records).
pub type LocalAddresses = Arc<dyn Fn() -> HashMap<AllocId, Ipv4Addr> + Send + Sync>;

/// The local engine's allocation containers and their bridge addresses.
pub fn engine_addresses(engine: &crate::engine::Engine) -> HashMap<AllocId, Ipv4Addr> {
    engine
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let alloc = r
                .config
                .labels
                .get(crate::cluster::reconcile::ALLOC_LABEL)?
                .parse()
                .ok()?;
            Some((alloc, r.network?.ip))
        })
        .collect()
}

/// Everything the follower drives.
pub struct Follower<L: Links, F: Firewall> {
    pub join: Vec<String>,
    pub transport: gantry_controller::raft::network::Transport,
    /// This node's name in the cluster.
    pub name: String,
    pub overlay: Arc<Overlay<L>>,
    pub table: Arc<RwLock<ServiceTable>>,
    pub local: LocalAddresses,
    pub firewall: F,
    /// The bridge network's isolation chain ([`super::BridgeConfig::iso_chain`]).
    pub iso_chain: String,
    /// The bridge network's routing-mesh chain ([`super::BridgeConfig::mesh_chain`]).
    pub mesh_chain: String,
    /// Set to the view's index after each successful mesh rewrite (or when the mesh did
    /// not change): the heartbeat reports it ([`crate::cluster::MeshSync::applied`]).
    pub mesh_applied: Arc<std::sync::atomic::AtomicU64>,
}

impl<L: Links + 'static, F: Firewall + 'static> Follower<L, F> {
    /// Follows the controller until the task is dropped.
    pub async fn run(self) {
        let mut c = ControllerClient::with_transport(self.join.clone(), self.transport.clone());
        c.retry_for = Duration::from_secs(2);
        let mut view = ClusterView::default();
        // What was last sent per allocation, so a lagging view does not resend it.
        let mut sent: HashMap<AllocId, Option<Ipv4Addr>> = HashMap::new();
        let mut iso = String::new();
        let mut mesh = String::new();
        loop {
            let mut stream = match c.watch(view.index).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "overlay watch");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut tick = tokio::time::interval(REPORT_EVERY);
            loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(ev)) => {
                            match ev.event {
                                Some(watch_event::Event::FullStateJson(b)) => {
                                    match serde_json::from_slice::<StateImage>(&b) {
                                        Ok(img) => view.full(ev.index, img),
                                        Err(e) => tracing::warn!(error = %e, "overlay: undecodable full state"),
                                    }
                                }
                                Some(watch_event::Event::ChangesJson(b)) => {
                                    match serde_json::from_slice::<Vec<Change>>(&b) {
                                        Ok(ch) => view.apply(ev.index, ch),
                                        Err(e) => tracing::warn!(error = %e, "overlay: undecodable changes"),
                                    }
                                }
                                None => {}
                            }
                            self.refresh(&view, &mut iso, &mut mesh).await;
                            self.report(&view, &mut c, &mut sent).await;
                        }
                        Ok(None) | Err(_) => break,
                    },
                    _ = tick.tick() => {
                        self.report(&view, &mut c, &mut sent).await;
                        // Retries peers whose entries failed before.
                        if let Err(e) = self.overlay.sync(&overlay::desired_peers(&view.node_views(), &self.name)).await {
                            tracing::warn!(error = %e, "overlay peers");
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Peers, DNS table, isolation and mesh rules from the view; `iso` and `mesh` are the
    /// scripts last applied (rewritten only when they change; cleared when applying failed).
    async fn refresh(&self, view: &ClusterView, iso: &mut String, mesh: &mut String) {
        let peers = overlay::desired_peers(&view.node_views(), &self.name);
        if let Err(e) = self.overlay.sync(&peers).await {
            tracing::warn!(error = %e, "overlay peers");
        }
        let table = view.table();
        let script = table.isolation_script(&self.iso_chain);
        // Isolation before the name becomes resolvable.
        if script != *iso {
            match self.firewall.restore(Table::Filter, &script).await {
                Ok(()) => *iso = script,
                Err(e) => {
                    tracing::warn!(error = %e, "isolation rules");
                    iso.clear();
                }
            }
        }
        let script = super::mesh::mesh_script(&self.mesh_chain, view.services.values(), &table);
        let applied = script == *mesh
            || match self.firewall.restore(Table::Nat, &script).await {
                Ok(()) => {
                    *mesh = script;
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "routing mesh rules");
                    mesh.clear();
                    false
                }
            };
        if applied {
            self.mesh_applied
                .fetch_max(view.index, std::sync::atomic::Ordering::SeqCst);
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    async fn report(
        &self,
        view: &ClusterView,
        c: &mut ControllerClient,
        sent: &mut HashMap<AllocId, Option<Ipv4Addr>>,
    ) {
        let Some(me) = view.node_named(&self.name).map(|n| n.id) else {
            return;
        };
        let local = (self.local)();
        let all = address_updates(view, me, &local);
        let mut todo: Vec<_> = all
            .iter()
            .filter(|(id, want)| sent.get(id) != Some(want))
            .copied()
            .collect();
        // Forget what the view has caught up with (or what is gone).
        sent.retain(|id, _| all.iter().any(|(i, _)| i == id));
        // Readiness: an allocation with TCP endpoints gets its address (and so its place
        // in DNS and the mesh) only once its container accepts connections on them.
        let mut ready = Vec::with_capacity(todo.len());
        for (id, want) in todo.drain(..) {
            if let Some(ip) = want {
                let ports = tcp_endpoint_ports(view, id);
                if !ports.is_empty() && !accepts(ip, &ports).await {
                    continue;
                }
            }
            ready.push((id, want));
        }
        // At most the controller's batch limit per command; the rest goes next time.
        let mut todo = ready;
        todo.truncate(gantry_controller::limits::MAX_REPORTS);
        if todo.is_empty() {
            return;
        }
        let cmd = Command::SetAllocAddresses {
            node: me,
            addresses: todo.clone(),
        };
        match c.write(&cmd).await {
            Ok((_, Ok(_))) => {
                tracing::debug!(n = todo.len(), "allocation addresses reported");
                sent.extend(todo);
            }
            Ok((_, Err(e))) => tracing::warn!(error = %e, "address report refused"),
            Err(e) => tracing::debug!(error = %e, "address report not delivered"),
        }
    }
}

/// The container ports of the TCP endpoints of the service of allocation `id`.
fn tcp_endpoint_ports(view: &ClusterView, id: AllocId) -> Vec<u16> {
    view.allocs
        .get(&id)
        .and_then(|a| view.services.get(&a.service))
        .map(|s| {
            s.spec
                .endpoints
                .iter()
                .filter(|e| e.protocol == gantry_controller::state::Protocol::Tcp)
                .map(|e| e.container)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `ip` accepts a TCP connection on every one of `ports` (100 ms each).
async fn accepts(ip: Ipv4Addr, ports: &[u16]) -> bool {
    for p in ports {
        let c = tokio::net::TcpStream::connect((ip, *p));
        match tokio::time::timeout(Duration::from_millis(100), c).await {
            Ok(Ok(_)) => {}
            _ => return false,
        }
    }
    true
}

/// Registers this node (so that it has a subnet) and returns its subnet and the cluster
/// network's CIDR; retries for up to `patience` while no controller answers.
pub async fn node_subnet(
    cfg: &crate::cluster::ClusterConfig,
    patience: Duration,
) -> Result<(ipnet::Ipv4Net, ipnet::Ipv4Net), String> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut c = ControllerClient::with_transport(cfg.join.clone(), cfg.transport.clone());
    c.retry_for = Duration::from_secs(2);
    loop {
        let last = match crate::cluster::register(cfg, &mut c).await {
            Ok(_) => match c
                .read::<Vec<Node>>(gantry_proto::cluster::ReadKind::Nodes, false)
                .await
            {
                Ok((_, nodes)) => match nodes.into_iter().find(|n| n.name == cfg.name) {
                    Some(n) => {
                        let subnet = n.subnet.ok_or_else(|| {
                            format!(
                                "node {} has no subnet: the cluster network is full",
                                cfg.name
                            )
                        })?;
                        match c
                            .read::<gantry_controller::state::ClusterNetwork>(
                                gantry_proto::cluster::ReadKind::ClusterNetwork,
                                false,
                            )
                            .await
                        {
                            Ok((_, net)) => return Ok((subnet, net.cidr)),
                            Err(e) => format!("reading the cluster network: {e}"),
                        }
                    }
                    None => format!("node {} missing from the node list", cfg.name),
                },
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no node subnet from {:?}: {last}", cfg.join));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_controller::state::{Desired, Observed, Resources};

    fn alloc(id: AllocId, node: NodeId, address: Option<[u8; 4]>) -> Allocation {
        Allocation {
            id,
            service: "web".into(),
            version: 1,
            node,
            resources: Resources::default(),
            desired: Desired::Run,
            observed: Observed::Running,
            container: None,
            ports: vec![],
            history: vec![],
            modify_index: 1,
            address: address.map(Ipv4Addr::from),
        }
    }

    #[test]
    fn only_this_nodes_changed_addresses_are_reported() {
        let mut view = ClusterView::default();
        view.apply(
            5,
            vec![
                Change::Allocation(alloc(1, 1, None).into()),
                Change::Allocation(alloc(2, 1, Some([10, 210, 0, 3])).into()),
                Change::Allocation(alloc(3, 1, Some([10, 210, 0, 4])).into()),
                Change::Allocation(alloc(4, 2, None).into()),
            ],
        );
        assert_eq!(view.index, 5);
        let local: HashMap<_, _> = [
            (1, Ipv4Addr::new(10, 210, 0, 2)),
            (2, Ipv4Addr::new(10, 210, 0, 3)),
            (4, Ipv4Addr::new(10, 210, 1, 2)),
        ]
        .into();
        let mut u = address_updates(&view, 1, &local);
        u.sort();
        // 1 got an address, 2 is unchanged, 3's container is gone, 4 is another node's.
        assert_eq!(u, vec![(1, Some(Ipv4Addr::new(10, 210, 0, 2))), (3, None)]);
        view.apply(6, vec![Change::AllocationRemoved { id: 3, index: 6 }]);
        assert_eq!(address_updates(&view, 1, &local).len(), 1);
    }
}

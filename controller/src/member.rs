//! One controller member: its data dir, its Raft, and one gRPC listener serving both the
//! peer Raft RPCs and the cluster API. Start modes: bootstrap a new cluster, join an
//! existing one (learner, caught up, then voter), or resume from the data dir.

use crate::api::{ApiSecurity, ClusterService, ControllerClient};
use crate::leader::{LeaderConfig, LeaderShared};
use crate::raft::db::{new_cluster_id, ControllerDb, DbClosed, DbError};
use crate::raft::failover::{FailoverTiming, LeaderWatch, Tracked};
use crate::raft::log_store::FlushWatch;
use crate::raft::network::Transport;
use crate::raft::{
    BasicNode, GantryRaft, NetworkFactory, NodeId, RaftService, RaftTimings, SledLogStore,
    SledStateMachine, StateHandle,
};
use crate::state::{ClusterNetwork, Command};
use gantry_security::tls::CertStore;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// The address peers and clients use (default: the bound listen address).
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub timings: RaftTimings,
    /// How long a write or linearizable read waits for a quorum before failing.
    pub write_timeout: Duration,
    /// Node liveness, evaluation batching (the leader loop).
    pub leader: LeaderConfig,
    /// Mutual TLS on the API and the Raft peer network; None = plain TCP (`--insecure`).
    pub tls: Option<MemberTls>,
    /// The cluster network's plan asked for (`--cluster-cidr`, `--node-subnet-prefix`):
    /// recorded when this member bootstraps a new cluster (None: the default); on a data
    /// dir whose cluster recorded another, the start is refused.
    pub cluster_network: Option<ClusterNetwork>,
}

/// A member's TLS material: the cluster CA, its own certificate (swappable), and the CA
/// key when it holds one (every member does: it is handed to controllers when they join,
/// so that whichever member leads can issue certificates).
#[derive(Clone)]
pub struct MemberTls {
    pub ca_pem: String,
    pub certs: Arc<CertStore>,
    pub ca_key_pem: Option<String>,
    /// Lifetime of the certificates this member issues.
    pub cert_ttl: Duration,
}

impl std::fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTls")
            .field("identity", &self.certs.identity())
            .field("holds_ca_key", &self.ca_key_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl MemberTls {
    /// How this member dials other members.
    pub fn transport(&self) -> Result<Transport, MemberError> {
        Transport::tls(&self.ca_pem, Some(self.certs.clone()))
            .map_err(|e| MemberError::Tls(e.to_string()))
    }
}

impl MemberConfig {
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> Self {
        MemberConfig {
            id,
            listen,
            advertise: None,
            data_dir,
            timings: RaftTimings::default(),
            write_timeout: Duration::from_secs(5),
            leader: LeaderConfig::default(),
            tls: None,
            cluster_network: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum StartMode {
    /// Initialize a new one-member cluster (a no-op on a data dir that has one).
    Bootstrap,
    /// Join the cluster a member of which listens at this address.
    Join(String),
    /// Continue from the data dir (after a restart, a restore or a recover).
    Resume,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("data dir {0} holds no cluster: start with --bootstrap or --join ADDR")]
    Uninitialized(PathBuf),
    #[error("starting raft: {0}")]
    Raft(String),
    #[error("joining through {addr}: {reason}")]
    Join { addr: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cluster network: {0}")]
    ClusterNetwork(String),
}

pub struct Member {
    pub id: NodeId,
    /// The address this member advertises (host:port).
    pub addr: String,
    pub cluster_id: String,
    pub raft: GantryRaft,
    pub handle: Arc<StateHandle>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    leader_loop: JoinHandle<()>,
    /// Campaigns when the leader hung up ([`crate::raft::failover`]).
    failover: JoinHandle<()>,
    /// Closed once every task and thread has let go of the database.
    db_closed: DbClosed,
    /// The Raft log's flushes, for [`Member::failure_watch`].
    flush_watch: FlushWatch,
    data_dir: PathBuf,
}

/// How long a stop waits for the database to close after Raft has shut down: its tasks and
/// threads let go within milliseconds; this bounds a stuck one.
const DB_CLOSE_WAIT: Duration = Duration::from_secs(10);

impl Member {
    pub async fn start(cfg: MemberConfig, mode: StartMode) -> Result<Member, MemberError> {
        if let Some(want) = cfg.cluster_network {
            if let Some((field, reason)) = want.check() {
                return Err(MemberError::ClusterNetwork(format!("{field}: {reason}")));
            }
            if let StartMode::Join(_) = mode {
                return Err(MemberError::ClusterNetwork(
                    "a joining member takes the network of the cluster it joins: give it only with --bootstrap".into(),
                ));
            }
        }
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| MemberError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let local = listener
            .local_addr()
            .map_err(|source| MemberError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let addr = cfg.advertise.clone().unwrap_or_else(|| local.to_string());
        let transport = match &cfg.tls {
            Some(t) => t.transport()?,
            None => Transport::Plain,
        };
        let server_tls = match &cfg.tls {
            Some(t) => Some(
                gantry_security::tls::server_config(&t.ca_pem, t.certs.clone())
                    .map_err(|e| MemberError::Tls(e.to_string()))?,
            ),
            None => None,
        };
        let security = match &cfg.tls {
            Some(t) => Some(Arc::new(ApiSecurity {
                ca_pem: t.ca_pem.clone(),
                ca: match &t.ca_key_pem {
                    Some(k) => Some(
                        gantry_security::Ca::from_pem(&t.ca_pem, k)
                            .map_err(|e| MemberError::Tls(format!("the CA key: {e}")))?,
                    ),
                    None => None,
                },
                cert_ttl: t.cert_ttl,
            })),
            None => None,
        };
        let db = ControllerDb::open(&cfg.data_dir)?;
        let db_closed = db.closed();
        let cluster_id = match (&mode, db.cluster_id()?) {
            (StartMode::Join(target), ours) => {
                let theirs =
                    ControllerClient::with_transport(vec![target.clone()], transport.clone())
                        .status()
                        .await
                        .map_err(|e| MemberError::Join {
                            addr: target.clone(),
                            reason: e.to_string(),
                        })?
                        .cluster_id;
                if ours.is_none() && db.has_raft_state() {
                    return Err(MemberError::Join {
                        addr: target.clone(),
                        reason: format!(
                            "data dir {} holds state of an unknown cluster",
                            cfg.data_dir.display()
                        ),
                    });
                }
                db.claim_cluster(&theirs)?;
                theirs
            }
            (_, Some(id)) => id,
            (StartMode::Bootstrap, None) => {
                let id = new_cluster_id();
                db.claim_cluster(&id)?;
                id
            }
            (StartMode::Resume, None) => {
                return Err(MemberError::Uninitialized(cfg.data_dir.clone()))
            }
        };
        let sm = SledStateMachine::open(db.clone())?;
        let handle = sm.handle();
        let recorded = handle.read().state.recorded_cluster_network();
        if let Some(want) = cfg.cluster_network {
            let have = match (recorded, handle.last_applied_index()) {
                (Some(have), _) => Some(have),
                // a cluster that has applied entries but recorded no plan uses the default
                (None, i) if i > 0 => Some(ClusterNetwork::default()),
                (None, _) => None,
            };
            if let Some(have) = have.filter(|h| *h != want) {
                return Err(MemberError::ClusterNetwork(format!(
                    "this cluster's network is {have} (recorded at bootstrap); it cannot change to {want}: node subnets and container addresses come from it"
                )));
            }
        }
        let log = SledLogStore::new(db);
        let committed = log.committed_index();
        let flush_watch = log.flush_watch();
        let config = cfg
            .timings
            .config(&cluster_id)
            .validate()
            .map_err(|e| MemberError::Raft(e.to_string()))?;
        let raft = GantryRaft::new(
            cfg.id,
            Arc::new(config),
            NetworkFactory::new(cluster_id.clone(), transport.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| MemberError::Raft(e.to_string()))?;

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (closing_tx, closing) = tokio::sync::watch::channel(false);
        let leader_shared = Arc::new(LeaderShared::default());
        let leader_watch = LeaderWatch::new();
        let raft_svc = RaftService::new(raft.clone(), cluster_id.clone())
            .secure(security.is_some())
            .with_leader_watch(leader_watch.clone())
            .with_closing(closing)
            .into_server();
        let mut api = ClusterService::new(
            raft.clone(),
            handle.clone(),
            cluster_id.clone(),
            cfg.write_timeout,
        )
        .with_leader_lease(Duration::from_millis(cfg.timings.election_max_ms))
        .with_committed_index(committed)
        .with_leader(leader_shared.clone())
        .with_leader_watch(leader_watch.clone());
        if let Some(sec) = security {
            api = api.with_security(sec, transport.clone());
        }
        let api = api.into_server();
        let leader_loop = tokio::spawn(crate::leader::run(
            raft.clone(),
            handle.clone(),
            leader_shared,
            cfg.leader.clone(),
        ));
        let failover = tokio::spawn(crate::raft::failover::run(
            raft.clone(),
            leader_watch.clone(),
            FailoverTiming::from_timings(&cfg.timings),
        ));
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(Duration::from_secs(2)))
            .tcp_nodelay(true)
            .layer(tower::util::MapResponseLayer::new(
                gantry_proto::limits::resource_exhausted,
            ))
            .add_service(raft_svc)
            .add_service(api);
        if let StartMode::Bootstrap = mode {
            // Before the API serves: a new cluster records its network plan as its first
            // command, ahead of any node's registration (a restart with --bootstrap on an
            // existing cluster is a no-op). One member needs no peers to lead.
            let r = async {
                let initialized = raft
                    .is_initialized()
                    .await
                    .map_err(|e| MemberError::Raft(e.to_string()))?;
                if !initialized {
                    let nodes: BTreeMap<NodeId, BasicNode> =
                        [(cfg.id, BasicNode::new(addr.clone()))].into();
                    raft.initialize(nodes)
                        .await
                        .map_err(|e| MemberError::Raft(e.to_string()))?;
                    record_cluster_network(&raft, cfg.id, cfg.cluster_network.unwrap_or_default())
                        .await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                leader_loop.abort();
                failover.abort();
                let _ = raft.shutdown().await;
                return Err(e);
            }
        }
        let stop = async move {
            let _ = rx.await;
            // peers' append streams end with it (graceful shutdown waits for them)
            let _ = closing_tx.send(true);
        };
        let conn_watch = leader_watch.clone();
        let server = match server_tls {
            // Every connection is Tracked: the failover watchdog learns when its
            // leader's closes.
            Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(
                    gantry_security::tls::incoming(listener, tls),
                    move |conn| {
                        conn.map(|c| {
                            let remote = c.peer().remote;
                            Tracked::new(c, remote, conn_watch.clone())
                        })
                    },
                ),
                stop,
            )),
            // `Server::tcp_nodelay` applies only to the listener tonic makes itself:
            // without it here, --insecure replies waited on Nagle + delayed ACKs
            // (~40 ms stalls; the TLS incoming sets it on every connection)
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    move |conn| {
                        conn.map(|tcp| {
                            let _ = tcp.set_nodelay(true);
                            let remote = tcp.peer_addr().ok();
                            Tracked::new(tcp, remote, conn_watch.clone())
                        })
                    },
                ),
                stop,
            )),
        };
        let member = Member {
            id: cfg.id,
            addr: addr.clone(),
            cluster_id,
            raft,
            handle,
            shutdown: Some(tx),
            server: Some(server),
            leader_loop,
            failover,
            db_closed,
            flush_watch,
            data_dir: cfg.data_dir.clone(),
        };
        match mode {
            // initialized before the API served (above)
            StartMode::Bootstrap => {}
            StartMode::Join(target) => {
                let known = member
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&cfg.id)
                    .is_some_and(|n| n.addr == member.addr);
                if !known {
                    // other members may be joining at once: their changes go first (each
                    // a learner catch-up and a promotion), so wait for a while
                    let mut c = ControllerClient::with_transport(vec![target.clone()], transport);
                    c.retry_for = std::time::Duration::from_secs(60);
                    let mut r = c.add_member(cfg.id, &member.addr).await.map(|_| ());
                    if r.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::AlreadyExists) {
                        // a retried join whose first attempt went through (its answer was
                        // lost to a timeout): fine when the cluster lists us, here
                        // (the member asked may lag the leader by a moment)
                        for _ in 0..10 {
                            let listed = c.status().await.is_ok_and(|st| {
                                st.members
                                    .iter()
                                    .any(|m| m.id == cfg.id && m.voter && m.address == member.addr)
                            });
                            if listed {
                                r = Ok(());
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    if let Err(e) = r {
                        member.stop().await;
                        return Err(MemberError::Join {
                            addr: target,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            StartMode::Resume => {}
        }
        Ok(member)
    }

    /// Stop Raft and the listener; the data dir can be reopened afterwards.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    /// Closed once every handle of this member's database is gone: after [`Member::stop`]
    /// (which waits for it, within a bound) the data dir may be reopened or removed.
    pub fn db_closed(&self) -> DbClosed {
        self.db_closed.clone()
    }

    /// Watches whether this member can go on: [`FailureWatch::check`] says what went
    /// wrong once Raft stopped on a fatal error (a failed write of its log or state, a
    /// panic), or a flush of the Raft log has not returned within `stall`. sled 0.34 hangs
    /// rather than fails when writing a blob file fails (a full disk, a data dir removed
    /// under it): the flush never returns, and neither would a stop. The daemon checks it
    /// from a thread of its own (small appends flush on the runtime's threads, so a hung
    /// flush can hold one of them) and exits without a stop: a member that is gone lets
    /// the others elect a leader and a supervisor restart it; a hung one holds its address
    /// and does neither.
    pub fn failure_watch(&self) -> FailureWatch {
        FailureWatch {
            metrics: self.raft.metrics(),
            flush_watch: self.flush_watch.clone(),
            data_dir: self.data_dir.clone(),
        }
    }

    async fn stop_inner(&mut self) {
        self.leader_loop.abort();
        self.failover.abort();
        let _ = self.raft.shutdown().await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        self.wait_db_closed().await;
    }

    /// Raft's tasks end soon after its shutdown; wait until they have dropped the database
    /// (sled flushes and closes it on the last drop).
    async fn wait_db_closed(&self) {
        if !self.db_closed.wait(DB_CLOSE_WAIT).await {
            tracing::warn!(
                member = self.id,
                "the database is still open {DB_CLOSE_WAIT:?} after the member stopped"
            );
        }
    }

    /// Run until the listener fails (daemon mode).
    pub async fn wait(mut self) -> Result<(), String> {
        let server = self.server.take().expect("server running");
        let r = server.await;
        self.leader_loop.abort();
        self.failover.abort();
        let _ = self.raft.shutdown().await;
        self.wait_db_closed().await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Records the network plan of a cluster member `id` just bootstrapped (it is the only
/// member, so it becomes leader).
async fn record_cluster_network(
    raft: &GantryRaft,
    id: NodeId,
    network: ClusterNetwork,
) -> Result<(), MemberError> {
    raft.wait(Some(Duration::from_secs(30)))
        .current_leader(id, "the bootstrapped member leads")
        .await
        .map_err(|e| MemberError::Raft(format!("waiting to lead: {e}")))?;
    match raft
        .client_write(Command::SetClusterNetwork { network })
        .await
    {
        Ok(r) => r
            .data
            .map(|_| tracing::info!(%network, "cluster network recorded"))
            .map_err(|e| MemberError::ClusterNetwork(e.to_string())),
        Err(e) => Err(MemberError::Raft(format!(
            "recording the cluster network: {e}"
        ))),
    }
}

/// See [`Member::failure_watch`]. Needs no runtime: every check is a plain read.
pub struct FailureWatch {
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    flush_watch: FlushWatch,
    data_dir: PathBuf,
}

impl FailureWatch {
    /// What went wrong, if this member cannot go on (see [`Member::failure_watch`]).
    pub fn check(&self, stall: Duration) -> Option<String> {
        let dir = self.data_dir.display();
        match &self.metrics.borrow().running_state {
            Ok(()) | Err(openraft::error::Fatal::Stopped) => {}
            Err(openraft::error::Fatal::StorageError(e)) => {
                return Some(format!(
                    "Raft stopped on a storage error: {e} (data dir {dir})"
                ))
            }
            Err(fatal) => return Some(format!("Raft stopped: {fatal} (data dir {dir})")),
        }
        self.flush_watch
            .busy_for()
            .filter(|b| *b >= stall)
            .map(|busy| {
                format!(
                    "a flush of the Raft log in {dir} has not returned for {} s: \
                     a full or failing disk, or the data dir removed while running",
                    busy.as_secs()
                )
            })
    }
}

//! [`ClusterService`]: the tonic implementation of cluster.proto on one member.

use super::authz::{check_command, check_heartbeat, check_rpc, Caller, Rpc as Call};
use super::error::ApiError;
use super::proposer::{ProposeError, Proposer};
use crate::leader::LeaderShared;
use crate::limits::{MAX_ADDRESS_LEN, MAX_COMMAND_JSON, MAX_ELECTION_PAUSE_MS};
use crate::raft::network::{channel, Transport};
use crate::raft::state_machine::capture;
use crate::raft::{BasicNode, GantryRaft, NodeId, StateHandle};
use crate::state::{Change, Command, NodeStatus, StateImage};
use gantry_proto::cluster::cluster_client::ClusterClient;
use gantry_proto::cluster::cluster_server::{Cluster, ClusterServer};
use gantry_proto::cluster::*;
use gantry_proto::limits;
use gantry_security::pki::{Ca, LeafOptions};
use gantry_security::{Identity, Role};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Bytes per SnapshotSave chunk.
const CHUNK: usize = 1 << 20;

/// A member running mutual TLS: the CA it trusts, and the CA key when it holds it (to
/// issue certificates on Join and Renew).
pub struct ApiSecurity {
    pub ca_pem: String,
    pub ca: Option<Ca>,
    /// Lifetime of the certificates this member issues.
    pub cert_ttl: Duration,
}

#[derive(Clone)]
pub struct ClusterService {
    raft: GantryRaft,
    handle: Arc<StateHandle>,
    cluster_id: String,
    write_timeout: Duration,
    /// Channels to other members by address (the leader, or voters during a transfer).
    members: Arc<Mutex<HashMap<String, Channel>>>,
    /// How long a follower refuses votes after hearing from its leader (openraft's leader
    /// lease = election_timeout_max).
    leader_lease: Duration,
    /// Paused with openraft's election timer (leader transfer).
    leader_watch: Arc<crate::raft::LeaderWatch>,
    committed: Arc<AtomicU64>,
    leader: Arc<LeaderShared>,
    /// Batches concurrent writes into one Raft entry (started on the first write, inside
    /// the runtime).
    proposer: Arc<OnceLock<Proposer>>,
    /// How this member dials other members (forwarding, leadership transfer).
    transport: Transport,
    /// None: `--insecure`, nobody is checked.
    security: Option<Arc<ApiSecurity>>,
}

type Rpc<T> = Result<Response<T>, Status>;

impl ClusterService {
    pub fn new(
        raft: GantryRaft,
        handle: Arc<StateHandle>,
        cluster_id: String,
        write_timeout: Duration,
    ) -> Self {
        ClusterService {
            raft,
            handle,
            cluster_id,
            write_timeout,
            members: Default::default(),
            leader_lease: Duration::from_millis(300),
            leader_watch: crate::raft::LeaderWatch::new(),
            committed: Arc::default(),
            leader: Default::default(),
            proposer: Default::default(),
            transport: Transport::Plain,
            security: None,
        }
    }

    /// Mutual TLS: check every caller's identity, dial members with `transport`.
    pub fn with_security(mut self, security: Arc<ApiSecurity>, transport: Transport) -> Self {
        self.security = Some(security);
        self.transport = transport;
        self
    }

    fn caller<T>(&self, req: &Request<T>) -> Caller {
        Caller::of(req, self.security.is_some())
    }

    /// The CA that issues certificates here, or why there is none.
    fn issuer(&self) -> Result<(&ApiSecurity, &Ca), Status> {
        let sec = self.security.as_deref().ok_or_else(|| {
            Status::failed_precondition("this cluster runs without TLS (--insecure)")
        })?;
        let ca = sec
            .ca
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this member does not hold the CA key"))?;
        Ok((sec, ca))
    }

    /// Share the leader loop's heartbeat table and placement reasons with this API.
    pub fn with_leader(mut self, leader: Arc<LeaderShared>) -> Self {
        self.leader = leader;
        self
    }

    pub fn with_leader_lease(mut self, lease: Duration) -> Self {
        self.leader_lease = lease;
        self
    }

    /// The failover watchdog's view of the leader, paused with the election timer.
    pub fn with_leader_watch(mut self, watch: Arc<crate::raft::LeaderWatch>) -> Self {
        self.leader_watch = watch;
        self
    }

    /// Where `status` reads the committed index (the log store's view).
    pub fn with_committed_index(mut self, committed: Arc<AtomicU64>) -> Self {
        self.committed = committed;
        self
    }

    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
            .max_decoding_message_size(limits::CLUSTER_REQUEST_MAX)
            .max_encoding_message_size(limits::CLUSTER_REPLY_MAX)
    }

    fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// A client to the leader, or NotLeader when the call was already forwarded once or no
    /// leader is known.
    fn leader_client(
        &self,
        forwarded: bool,
        hint: Option<&BasicNode>,
    ) -> Result<(String, ClusterClient<Channel>), ApiError> {
        let addr = hint.map(|n| n.addr.clone()).or_else(|| self.leader_addr());
        let addr = match addr {
            Some(a) if !forwarded => a,
            other => return Err(ApiError::NotLeader { leader: other }),
        };
        let client = self.client_at(&addr).map_err(|_| ApiError::NotLeader {
            leader: Some(addr.clone()),
        })?;
        Ok((addr, client))
    }

    /// A client to the member at `addr` over a reused channel.
    fn client_at(&self, addr: &str) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
        let mut map = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let ch = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = channel(addr, &self.transport)?;
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(ClusterClient::new(ch)
            .max_decoding_message_size(limits::CLUSTER_REPLY_MAX)
            .max_encoding_message_size(limits::CLUSTER_REQUEST_MAX))
    }

    /// Pause the election timer of the member at `addr` for `pause`, or make it campaign.
    async fn control_election(
        &self,
        id: NodeId,
        addr: &str,
        pause: Duration,
        elect_now: bool,
    ) -> Result<(), ApiError> {
        let req = ElectionControlRequest {
            pause_ms: pause.as_millis().min(u32::MAX as u128) as u32,
            elect_now,
        };
        if id == self.raft.metrics().borrow().id {
            return self.local_election_control(req).await;
        }
        let mut client = self.client_at(addr).map_err(|e| ApiError::Transfer {
            target: id,
            reason: format!("address {addr}: {e}"),
        })?;
        tokio::time::timeout(self.write_timeout, client.election_control(req))
            .await
            .map_err(|_| ApiError::Timeout {
                what: "election control",
                after: self.write_timeout,
            })?
            .map_err(|status| ApiError::Forward {
                addr: addr.to_string(),
                status,
            })?;
        Ok(())
    }

    async fn local_election_control(&self, req: ElectionControlRequest) -> Result<(), ApiError> {
        if req.pause_ms > 0 {
            let rc = self.raft.runtime_config();
            rc.elect(false);
            let raft = self.raft.clone();
            let pause = Duration::from_millis(req.pause_ms.into());
            self.leader_watch.pause(std::time::Instant::now() + pause);
            // Resume on our own, so a leader lost mid-transfer cannot leave us unable to
            // campaign.
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                raft.runtime_config().elect(true);
            });
        }
        if req.elect_now {
            self.raft.runtime_config().elect(true);
            self.raft
                .trigger()
                .elect()
                .await
                .map_err(|e| ApiError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// On the leader: hand leadership to voter `target` (see cluster.proto).
    async fn transfer_as_leader(&self, target: NodeId) -> Result<TransferLeaderReply, ApiError> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeMap<NodeId, String> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
            .collect();
        let target_addr = match voters.get(&target) {
            Some(a) => a.clone(),
            None if membership.get_node(&target).is_some() => {
                return Err(ApiError::Transfer {
                    target,
                    reason: "it is a learner, not a voter".into(),
                })
            }
            None => return Err(ApiError::UnknownMember(target)),
        };
        if target == m.id {
            return Ok(TransferLeaderReply {
                leader: m.id,
                term: m.current_term,
            });
        }
        let term = m.current_term;
        // Everyone but the target holds off long enough for the leases to lapse and the
        // target to win; they resume on their own after `pause` whatever happens.
        let pause = self.leader_lease * 4 + Duration::from_secs(1);
        for (id, addr) in voters.iter().filter(|(id, _)| **id != target) {
            self.control_election(*id, addr, pause, false).await?;
        }
        // No heartbeats: the followers' leases run out (writes still replicate).
        self.raft.runtime_config().heartbeat(false);
        let result = async {
            tokio::time::sleep(self.leader_lease + Duration::from_millis(50)).await;
            self.control_election(target, &target_addr, Duration::ZERO, true)
                .await?;
            let after = self
                .raft
                .wait(Some(pause))
                .metrics(
                    |x| x.current_term > term && x.current_leader.is_some(),
                    "a leader in a later term",
                )
                .await
                .map_err(|e| ApiError::Transfer {
                    target,
                    reason: format!("no new leader: {e}"),
                })?;
            Ok::<_, ApiError>(after)
        }
        .await;
        self.raft.runtime_config().heartbeat(true);
        let after = result?;
        match after.current_leader {
            Some(l) if l == target => Ok(TransferLeaderReply {
                leader: l,
                term: after.current_term,
            }),
            other => Err(ApiError::Transfer {
                target,
                reason: format!(
                    "member {} won the election of term {} instead",
                    other.map_or("none".to_string(), |l| l.to_string()),
                    after.current_term
                ),
            }),
        }
    }

    async fn timed<T, F: std::future::Future<Output = T>>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.write_timeout, f)
            .await
            .map_err(|_| ApiError::Timeout {
                what,
                after: self.write_timeout,
            })
    }

    /// Wait until this member, as leader, may serve a linearizable read.
    async fn read_barrier(&self) -> Result<(), Result<BasicNode, ApiError>> {
        match self
            .timed("read index", self.raft.ensure_linearizable())
            .await
        {
            Err(e) => Err(Err(e)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => Err(f.leader_node.ok_or(ApiError::NotLeader { leader: None })),
            Ok(Err(e)) => Err(Err(ApiError::Raft(e.to_string()))),
        }
    }

    /// `tokens`: may the caller see join tokens?
    fn read_data(&self, kind: ReadKind, tokens: bool) -> (u64, Vec<u8>) {
        let a = self.handle.read();
        let idx = a.last_applied.map_or(0, |l| l.index);
        let s = &a.state;
        let data = match kind {
            ReadKind::State => serde_json::to_vec(&strip_tokens(s.to_image(), tokens)),
            ReadKind::Tokens => serde_json::to_vec(&s.tokens().collect::<Vec<_>>()),
            ReadKind::Nodes => serde_json::to_vec(&s.nodes().collect::<Vec<_>>()),
            ReadKind::Services => serde_json::to_vec(&s.services().collect::<Vec<_>>()),
            ReadKind::Allocations => serde_json::to_vec(&s.allocations().collect::<Vec<_>>()),
            ReadKind::ClusterNetwork => serde_json::to_vec(&s.cluster_network()),
        }
        .expect("state types serialize");
        (idx, data)
    }

    fn membership_reply(&self) -> MembershipReply {
        let m = self.raft.metrics().borrow().membership_config.clone();
        MembershipReply {
            voters: m.membership().voter_ids().collect(),
            learners: m.membership().learner_ids().collect(),
        }
    }

    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<(), Result<BasicNode, ApiError>> {
        match self
            .timed(
                "membership change",
                self.raft.change_membership(change, false),
            )
            .await
        {
            Err(e) => Err(Err(e)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(f.leader_node.ok_or(ApiError::NotLeader { leader: None }))
            }
            Ok(Err(e)) => Err(Err(membership_error(e))),
        }
    }
}

/// A membership change refused: busy (another change in progress, retryable) or not.
fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => ApiError::MembershipBusy(p.to_string()),
        e => ApiError::Membership(e.to_string()),
    }
}

/// A member's address: `host:port`, at most [`MAX_ADDRESS_LEN`] bytes.
fn check_member_address(addr: &str) -> Result<(), ApiError> {
    let bad = |reason: String| ApiError::BadRequest {
        field: "address",
        reason,
    };
    if addr.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if addr.len() > MAX_ADDRESS_LEN {
        return Err(bad(format!(
            "{} bytes, the limit is {MAX_ADDRESS_LEN}",
            addr.len()
        )));
    }
    let authority: tonic::codegen::http::uri::Authority = addr
        .parse()
        .map_err(|e| bad(format!("{addr:?} is not host:port: {e}")))?;
    if authority.port_u16().is_none() || authority.as_str().contains('@') {
        return Err(bad(format!("{addr:?} is not host:port")));
    }
    Ok(())
}

fn forward_err(addr: String) -> impl FnOnce(Status) -> Status {
    move |status| ApiError::Forward { addr, status }.into()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, req: Request<StatusRequest>) -> Rpc<StatusReply> {
        check_rpc(&self.caller(&req), Call::Status)?;
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .map(|r| r.get(id).copied().flatten().map_or(0, |l| l.index));
                let matched = if *id == m.id && m.replication.is_some() {
                    Some(last)
                } else {
                    matched
                };
                MemberStatus {
                    id: *id,
                    address: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.map(|x| last.saturating_sub(x)),
                }
            })
            .collect();
        let leader_address = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone());
        Ok(Response::new(StatusReply {
            id: m.id,
            state: format!("{:?}", m.state),
            current_term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            cluster_id: self.cluster_id.clone(),
            leader_address,
            committed: Some(self.committed.load(Ordering::Relaxed)),
            members,
        }))
    }

    async fn write(&self, req: Request<WriteRequest>) -> Rpc<WriteReply> {
        let caller = self.caller(&req);
        check_rpc(&caller, Call::Write)?;
        let req = req.into_inner();
        if req.command_json.len() > MAX_COMMAND_JSON {
            return Err(ApiError::TooLarge {
                field: "command_json",
                size: req.command_json.len(),
                limit: MAX_COMMAND_JSON,
            }
            .into());
        }
        let cmd: Command =
            serde_json::from_slice(&req.command_json).map_err(|e| ApiError::BadRequest {
                field: "command_json",
                reason: e.to_string(),
            })?;
        // only an agent's commands are checked against the state (its node's name): no
        // state lock on the write path of anyone else
        if caller.is_agent() {
            check_command(&caller, &cmd, &self.handle.read().state)?;
        } else {
            check_command(&caller, &cmd, &crate::state::State::default())?;
        }
        let proposer = self
            .proposer
            .get_or_init(|| Proposer::start(self.raft.clone()));
        let bytes = req.command_json.len();
        let hint = match self.timed("write", proposer.write(cmd, bytes)).await? {
            Ok((index, r)) => {
                let response_json = serde_json::to_vec(&r).expect("responses serialize");
                return Ok(Response::new(WriteReply {
                    index,
                    response_json,
                }));
            }
            Err(ProposeError::NotLeader { leader }) => leader,
            Err(e) => return Err(ApiError::Raft(e.to_string()).into()),
        };
        let (addr, mut client) = self.leader_client(req.forwarded, hint.as_ref())?;
        let fwd = WriteRequest {
            command_json: req.command_json,
            forwarded: true,
        };
        client.write(fwd).await.map_err(forward_err(addr))
    }

    async fn read(&self, req: Request<ReadRequest>) -> Rpc<ReadReply> {
        let caller = self.caller(&req);
        let req = req.into_inner();
        let kind = ReadKind::try_from(req.kind).map_err(|_| ApiError::BadRequest {
            field: "kind",
            reason: format!("unknown read kind {}", req.kind),
        })?;
        check_rpc(
            &caller,
            if kind == ReadKind::Tokens {
                Call::ReadTokens
            } else {
                Call::Read
            },
        )?;
        if !req.stale {
            if let Err(hint) = self.read_barrier().await {
                let hint = hint?;
                let (addr, mut client) = self.leader_client(req.forwarded, Some(&hint))?;
                let fwd = ReadRequest {
                    forwarded: true,
                    ..req
                };
                return client.read(fwd).await.map_err(forward_err(addr));
            }
        }
        let (index, data_json) = self.read_data(kind, caller.sees_everything());
        Ok(Response::new(ReadReply { index, data_json }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

    async fn watch(&self, req: Request<WatchRequest>) -> Rpc<Self::WatchStream> {
        let caller = self.caller(&req);
        check_rpc(&caller, Call::Watch)?;
        let tokens = caller.sees_everything();
        let mut from = req.into_inner().from_index;
        let handle = self.handle.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent, Status>>(16);
        tokio::spawn(async move {
            let mut notified = handle.subscribe();
            loop {
                let pending = if from == 0 {
                    None
                } else {
                    handle.changes_since(from)
                };
                let event = match pending {
                    None => {
                        let a = handle.read();
                        let idx = a.last_applied.map_or(0, |l| l.index);
                        let image = strip_tokens(a.state.to_image(), tokens);
                        drop(a);
                        from = idx.max(1);
                        Some(WatchEvent {
                            index: idx,
                            event: Some(watch_event::Event::FullStateJson(
                                serde_json::to_vec(&image).expect("state serializes"),
                            )),
                        })
                    }
                    Some(changes) if changes.is_empty() => None,
                    Some(mut changes) => {
                        let idx = changes.last().map_or(from, Change::index);
                        from = idx;
                        if !tokens {
                            changes.retain(|c| !matches!(c, Change::Token(_)));
                        }
                        Some(WatchEvent {
                            index: idx,
                            event: Some(watch_event::Event::ChangesJson(
                                serde_json::to_vec(&changes).expect("changes serialize"),
                            )),
                        })
                    }
                };
                if let Some(ev) = event {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                    continue;
                }
                tokio::select! {
                    r = notified.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn add_member(&self, req: Request<AddMemberRequest>) -> Rpc<MembershipReply> {
        check_rpc(&self.caller(&req), Call::AddMember)?;
        let req = req.into_inner();
        check_member_address(&req.address)?;
        let m = self.raft.metrics().borrow().membership_config.clone();
        if let Some(n) = m.membership().get_node(&req.id) {
            if m.membership().voter_ids().any(|v| v == req.id) {
                return Err(ApiError::AlreadyMember(req.id).into());
            }
            if n.addr != req.address {
                return Err(ApiError::Membership(format!(
                    "member {} is a learner at {}, not at {}",
                    req.id, n.addr, req.address
                ))
                .into());
            }
        }
        let node = BasicNode::new(req.address.clone());
        // A learner first, caught up (blocking), then a voter.
        let learner = tokio::time::timeout(
            self.write_timeout * 6,
            self.raft.add_learner(req.id, node, true),
        )
        .await;
        let hint = match learner {
            Err(_) => {
                return Err(ApiError::Timeout {
                    what: "adding a learner",
                    after: self.write_timeout * 6,
                }
                .into())
            }
            Ok(Ok(_)) => match self
                .change_membership(ChangeMembers::AddVoterIds([req.id].into()))
                .await
            {
                Ok(()) => return Ok(Response::new(self.membership_reply())),
                Err(h) => h?,
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                f.leader_node.ok_or(ApiError::NotLeader { leader: None })?
            }
            Ok(Err(e)) => return Err(membership_error(e).into()),
        };
        let (addr, mut client) = self.leader_client(req.forwarded, Some(&hint))?;
        let fwd = AddMemberRequest {
            forwarded: true,
            ..req
        };
        client.add_member(fwd).await.map_err(forward_err(addr))
    }

    async fn remove_member(&self, req: Request<RemoveMemberRequest>) -> Rpc<MembershipReply> {
        check_rpc(&self.caller(&req), Call::RemoveMember)?;
        let req = req.into_inner();
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        if m.membership().get_node(&req.id).is_none() {
            return Err(ApiError::UnknownMember(req.id).into());
        }
        if voters.len() == 1 && voters.contains(&req.id) {
            return Err(ApiError::Membership(format!(
                "member {} is the last voter: removing it would leave no cluster",
                req.id
            ))
            .into());
        }
        let change = if voters.contains(&req.id) {
            ChangeMembers::RemoveVoters([req.id].into())
        } else {
            ChangeMembers::RemoveNodes([req.id].into())
        };
        match self.change_membership(change).await {
            Ok(()) => Ok(Response::new(self.membership_reply())),
            Err(hint) => {
                let hint = hint?;
                let (addr, mut client) = self.leader_client(req.forwarded, Some(&hint))?;
                let fwd = RemoveMemberRequest {
                    forwarded: true,
                    ..req
                };
                client.remove_member(fwd).await.map_err(forward_err(addr))
            }
        }
    }

    type SnapshotSaveStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    async fn snapshot_save(
        &self,
        req: Request<SnapshotSaveRequest>,
    ) -> Rpc<Self::SnapshotSaveStream> {
        check_rpc(&self.caller(&req), Call::SnapshotSave)?;
        // Consistent: taken on the leader after a read-index round, so it holds every
        // write acknowledged before the call.
        if let Err(hint) = self.read_barrier().await {
            let leader = hint.ok().map(|n| n.addr);
            return Err(ApiError::NotLeader { leader }.into());
        }
        let (meta, data) = capture(&self.handle);
        let file = crate::dr::SnapshotFile::new(&self.cluster_id, meta, &data)
            .map_err(|e| ApiError::Raft(e.to_string()))?;
        let bytes = file.to_bytes();
        let chunks: Vec<Result<SnapshotChunk, Status>> = bytes
            .chunks(CHUNK)
            .map(|c| Ok(SnapshotChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Rpc<TransferLeaderReply> {
        check_rpc(&self.caller(&req), Call::TransferLeader)?;
        let req = req.into_inner();
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(m.id) {
            return Ok(Response::new(self.transfer_as_leader(req.target).await?));
        }
        let (addr, mut client) = self.leader_client(req.forwarded, None)?;
        let fwd = TransferLeaderRequest {
            forwarded: true,
            ..req
        };
        client.transfer_leader(fwd).await.map_err(forward_err(addr))
    }

    async fn election_control(
        &self,
        req: Request<ElectionControlRequest>,
    ) -> Rpc<ElectionControlReply> {
        check_rpc(&self.caller(&req), Call::ElectionControl)?;
        let req = req.into_inner();
        if req.pause_ms > MAX_ELECTION_PAUSE_MS {
            return Err(ApiError::BadRequest {
                field: "pause_ms",
                reason: format!(
                    "{} exceeds the limit of {MAX_ELECTION_PAUSE_MS}",
                    req.pause_ms
                ),
            }
            .into());
        }
        self.local_election_control(req).await?;
        Ok(Response::new(ElectionControlReply {}))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Rpc<HeartbeatReply> {
        let caller = self.caller(&req);
        let req = req.into_inner();
        if caller.is_agent() {
            check_heartbeat(&caller, req.node, &self.handle.read().state)?;
        } else {
            check_rpc(&caller, Call::Heartbeat)?;
        }
        if self.leader.heartbeat(req.node) {
            let (status, mesh_synced) = {
                let h = self.handle.read();
                let synced = self.leader.mesh(req.node, req.mesh_index, &h.state);
                (h.state.node(req.node).map(|n| n.status), synced)
            };
            return match status {
                None => Err(Status::not_found(format!(
                    "node {} is not registered",
                    req.node
                ))),
                Some(s) => Ok(Response::new(HeartbeatReply {
                    status: node_status_name(s).to_string(),
                    mesh_synced: mesh_synced.unwrap_or(0),
                })),
            };
        }
        let (addr, mut client) = self.leader_client(req.forwarded, None)?;
        let fwd = HeartbeatRequest {
            forwarded: true,
            ..req
        };
        client.heartbeat(fwd).await.map_err(forward_err(addr))
    }

    async fn unplaced(&self, req: Request<UnplacedRequest>) -> Rpc<UnplacedReply> {
        check_rpc(&self.caller(&req), Call::Unplaced)?;
        let req = req.into_inner();
        if let Some(reasons) = self.leader.unplaced() {
            return Ok(Response::new(UnplacedReply {
                reasons: reasons.into_iter().collect(),
            }));
        }
        let (addr, mut client) = self.leader_client(req.forwarded, None)?;
        client
            .unplaced(UnplacedRequest { forwarded: true })
            .await
            .map_err(forward_err(addr))
    }

    async fn ca_certificate(&self, _req: Request<CaCertificateRequest>) -> Rpc<CaCertificateReply> {
        let sec = self.security.as_deref().ok_or_else(|| {
            Status::failed_precondition("this cluster runs without TLS (--insecure)")
        })?;
        Ok(Response::new(CaCertificateReply {
            ca_pem: sec.ca_pem.clone(),
        }))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Rpc<JoinReply> {
        let req = req.into_inner();
        let (sec, ca) = self.issuer()?;
        // The token is checked on the leader after a read-index round: a token revoked
        // (or created) before this call is seen as such.
        if let Err(hint) = self.read_barrier().await {
            let hint = hint?;
            let (addr, mut client) = self.leader_client(req.forwarded, Some(&hint))?;
            let fwd = JoinRequest {
                forwarded: true,
                ..req
            };
            return client.join(fwd).await.map_err(forward_err(addr));
        }
        let token = gantry_security::token::JoinToken::parse(&req.token)
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        let role = {
            let a = self.handle.read();
            let t = a.state.token(&token.id).ok_or_else(|| {
                Status::unauthenticated(format!("join token {}: unknown", token.id))
            })?;
            if t.secret_sha256 != token.secret_sha256() {
                return Err(Status::unauthenticated(format!(
                    "join token {}: wrong secret",
                    token.id
                )));
            }
            if t.revoked {
                return Err(Status::permission_denied(format!(
                    "join token {} was revoked",
                    token.id
                )));
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            if now >= t.expires_at_ms {
                return Err(Status::permission_denied(format!(
                    "join token {} expired {} s ago",
                    token.id,
                    (now - t.expires_at_ms) / 1000
                )));
            }
            t.role
        };
        let identity = Identity::new(role, req.name.as_str())
            .map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        let cert_pem = ca
            .issue_for_csr(
                &req.csr_pem,
                &identity,
                sec.cert_ttl,
                &LeafOptions::default(),
            )
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        tracing::info!(%identity, token = %token.id, "certificate issued for a join token");
        Ok(Response::new(JoinReply {
            cert_pem,
            ca_pem: sec.ca_pem.clone(),
            ca_key_pem: if role == Role::Controller {
                ca.key_pem()
            } else {
                String::new()
            },
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Rpc<RenewReply> {
        let caller = self.caller(&req);
        check_rpc(&caller, Call::Renew)?;
        let (sec, ca) = self.issuer()?;
        let Caller::Verified(identity) = caller else {
            return Err(Status::unauthenticated(
                "renewal needs a client certificate",
            ));
        };
        let cert_pem = ca
            .issue_for_csr(
                &req.into_inner().csr_pem,
                &identity,
                sec.cert_ttl,
                &LeafOptions::default(),
            )
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        Ok(Response::new(RenewReply {
            cert_pem,
            ca_pem: sec.ca_pem.clone(),
        }))
    }
}

/// Join tokens are for admins' eyes (and members'): others get the image without them.
fn strip_tokens(mut image: StateImage, keep: bool) -> StateImage {
    if !keep {
        image.tokens.clear();
    }
    image
}

/// The wire name of a node status (HeartbeatReply.status).
pub fn node_status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "Ready",
        NodeStatus::Draining => "Draining",
        NodeStatus::Down => "Down",
    }
}

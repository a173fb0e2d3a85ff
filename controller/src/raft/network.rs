//! Raft peer RPCs over tonic: [`NetworkFactory`] hands openraft one [`PeerNetwork`] per
//! target, sharing one lazily-connected HTTP/2 channel per peer address (reused across
//! replication streams, reconnected by tonic, kept alive with HTTP/2 pings). An unreachable
//! peer answers `Unreachable`, and openraft then waits out [`PeerNetwork::backoff`].
//!
//! AppendEntries go over one long-lived `AppendStream` per [`PeerNetwork`] (openraft keeps
//! one per replication stream and waits for each reply before the next request): each
//! request is then one DATA frame on an open HTTP/2 stream, where a unary call costs a new
//! stream, a server task, and trailers. Measured on this project's VM (before the
//! `vendor/hyper` patch, when a unary call also took two writes): single-client commit p50
//! −0.16 to −0.39 ms, 16 clients +22–28% commits/s (docs/benchmarks.md). A call that fails
//! or is dropped takes its stream with it; a peer without the RPC (an older member) is sent
//! unary AppendEntries from then on.
//!
//! AppendEntries is capped in bytes by an [`AppendBudget`] per peer: openraft 0.9 gives
//! each AppendEntries RPC one heartbeat interval to finish (a timeout resends the same
//! range) and sends heartbeats on the same stream, behind it. Hundreds of plan entries in
//! one RPC never finished in time, the leader resent them forever, and followers, hearing
//! nothing, elected a new leader. A request over the budget answers `PayloadTooLarge` with an
//! entry-count hint, and openraft retries at once with fewer entries; the budget halves when
//! an RPC times out and grows back when RPCs finish well within the interval (AIMD, as TCP
//! does with its window), so it follows what the link and the follower manage right now.
//! Encoding big requests runs off the runtime's threads.

use super::{BasicNode, NodeId, TypeConfig};
use gantry_proto::raft::raft_client::RaftClient;
use gantry_proto::raft::{RaftReply, RaftRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Most bytes of serialized entries in one AppendEntries RPC (a single bigger entry is
/// still sent alone). At the ~100-200 MB/s JSON decoding runs at here, one RPC then costs
/// the follower a few milliseconds, well within a heartbeat interval.
pub const MAX_APPEND_BYTES: usize = 512 << 10;
/// The budget never shrinks below this.
pub const MIN_APPEND_BYTES: usize = 16 << 10;

/// How many bytes of entries one AppendEntries RPC to a peer may carry now.
#[derive(Debug, Clone)]
pub struct AppendBudget {
    bytes: usize,
}

impl Default for AppendBudget {
    fn default() -> Self {
        AppendBudget {
            bytes: MAX_APPEND_BYTES,
        }
    }
}

impl AppendBudget {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// None when `entries` entries of `bytes` bytes may go, else how many should.
    pub fn hint(&self, entries: usize, bytes: usize) -> Option<u64> {
        entries_hint(entries, bytes, self.bytes)
    }
    /// An RPC of `bytes` did not finish within its time: send at most half of it next.
    pub fn timed_out(&mut self, bytes: usize) {
        self.bytes = (bytes.min(self.bytes) / 2).max(MIN_APPEND_BYTES);
    }
    /// An RPC finished after `took` of its `ttl`: grow when it used under a quarter.
    pub fn finished(&mut self, took: Duration, ttl: Duration) {
        if took < ttl / 4 {
            self.bytes = (self.bytes * 2).min(MAX_APPEND_BYTES);
        }
    }
}

/// Tells the budget an AppendEntries RPC was dropped unfinished (openraft's timeout).
struct InFlight {
    budget: Arc<Mutex<AppendBudget>>,
    bytes: usize,
    started: std::time::Instant,
    ttl: Duration,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if self.done {
            b.finished(self.started.elapsed(), self.ttl);
        } else {
            b.timed_out(self.bytes);
            tracing::debug!(
                bytes = self.bytes,
                budget = b.bytes(),
                "append entries timed out: smaller requests from now on"
            );
        }
    }
}

/// How many of `entries` entries to send when they serialize to `bytes`: None when all
/// fit, else a count (≥ 1) that should fit, assuming entries of similar size.
pub fn entries_hint(entries: usize, bytes: usize, max_bytes: usize) -> Option<u64> {
    if bytes <= max_bytes || entries <= 1 {
        return None;
    }
    let fit = (entries as u128 * max_bytes as u128 / bytes as u128) as u64;
    Some(fit.clamp(1, entries as u64 - 1))
}

/// How channels to members are dialled: plain TCP (`--insecure`) or mutual TLS
/// (verifying the member as `controller.gantry` against the cluster CA).
#[derive(Debug, Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(gantry_security::tls::TlsConnector),
}

impl Transport {
    /// A TLS transport presenting `certs` (when given) and trusting only `ca_pem`.
    pub fn tls(
        ca_pem: &str,
        certs: Option<Arc<gantry_security::tls::CertStore>>,
    ) -> Result<Transport, gantry_security::tls::TlsError> {
        let cfg = gantry_security::tls::client_config(ca_pem, certs)?;
        Ok(Transport::Tls(gantry_security::tls::TlsConnector::new(
            cfg,
            gantry_security::identity::CONTROLLER_SERVER_NAME,
        )?))
    }
}

/// A lazily connected channel to a peer or member address, with keep-alive set (without
/// it a channel can stay dead after a partition heals).
pub fn channel(addr: &str, transport: &Transport) -> Result<Channel, tonic::transport::Error> {
    let bare = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let endpoint = Endpoint::from_shared(format!("http://{bare}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    Ok(match transport {
        Transport::Plain => endpoint.connect_lazy(),
        Transport::Tls(c) => endpoint.connect_with_connector_lazy(c.clone()),
    })
}

#[derive(Clone)]
pub struct NetworkFactory {
    cluster_id: String,
    transport: Transport,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NetworkFactory {
    pub fn new(cluster_id: String, transport: Transport) -> Self {
        NetworkFactory {
            cluster_id,
            transport,
            channels: Default::default(),
        }
    }
    fn channel_for(&self, addr: &str) -> Option<Channel> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Some(c.clone());
        }
        let c = channel(addr, &self.transport).ok()?;
        map.insert(addr.to_string(), c.clone());
        Some(c)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            target,
            node: node.clone(),
            cluster_id: self.cluster_id.clone(),
            client: self.channel_for(&node.addr).map(|ch| {
                RaftClient::new(ch)
                    .max_decoding_message_size(gantry_proto::limits::RAFT_MESSAGE_MAX)
                    .max_encoding_message_size(gantry_proto::limits::RAFT_MESSAGE_MAX)
            }),
            budget: Default::default(),
            stream: None,
            unary: false,
        }
    }
}

/// An open `AppendStream` to a peer: requests go in on `requests`, replies come back in
/// order on `replies`.
struct AppendStream {
    requests: tokio::sync::mpsc::Sender<RaftRequest>,
    replies: tonic::Streaming<RaftReply>,
}

/// Sends `req` on the open stream in `slot`, or on a new one, and waits for its reply. The
/// stream is put back only once the reply arrived, so a call that fails or is dropped
/// (openraft's timeout) takes its stream with it and the next call opens a fresh one: a
/// late reply can never be read as the answer to a later request.
async fn over_stream(
    client: &mut RaftClient<Channel>,
    slot: &mut Option<AppendStream>,
    req: RaftRequest,
) -> Result<RaftReply, tonic::Status> {
    let closed = || tonic::Status::unavailable("the peer closed the append stream");
    let req = match slot.take() {
        Some(mut open) => match open.requests.send(req).await {
            // The stream ended before this request went in (its connection closed while
            // idle: the peer restarted): the request goes on a new one.
            Err(unsent) => unsent.0,
            Ok(()) => {
                let reply = open.replies.message().await?.ok_or_else(closed)?;
                *slot = Some(open);
                return Ok(reply);
            }
        },
        None => req,
    };
    let (requests, queue) = tokio::sync::mpsc::channel(1);
    requests
        .try_send(req)
        .map_err(|_| tonic::Status::internal("a new append stream's queue is full"))?;
    let mut replies = client
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(queue))
        .await?
        .into_inner();
    let reply = replies.message().await?.ok_or_else(closed)?;
    *slot = Some(AppendStream { requests, replies });
    Ok(reply)
}

pub struct PeerNetwork {
    target: NodeId,
    node: BasicNode,
    cluster_id: String,
    /// None when the address does not parse: every RPC is then unreachable.
    client: Option<RaftClient<Channel>>,
    budget: Arc<Mutex<AppendBudget>>,
    /// AppendEntries go on this stream while it lasts.
    stream: Option<AppendStream>,
    /// The peer has no `AppendStream` (an older member): AppendEntries go unary.
    unary: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {addr}: {reason}")]
struct PeerError {
    addr: String,
    reason: String,
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerNetwork {
    /// `entries`: how many log entries `req` carries (AppendEntries), for the byte budget;
    /// `big`: whether they take long to encode (`raft::all_small` says no).
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: Req,
        entries: usize,
        big: bool,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let addr = self.node.addr.clone();
        let err = |reason: String| PeerError {
            addr: addr.clone(),
            reason,
        };
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&err(
                "bad address".into()
            ))));
        };
        // Encoding big entries (plans) takes milliseconds: off the runtime's threads. A
        // small one is encoded here: the hand-off and back would cost more, on every commit.
        let data = if big {
            tokio::task::spawn_blocking(move || serde_json::to_vec(&req))
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
        } else {
            serde_json::to_vec(&req)
        }
        .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let budget = self
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hint) = budget.hint(entries, data.len()) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        let mut in_flight = (entries > 0).then(|| InFlight {
            budget: self.budget.clone(),
            bytes: data.len(),
            started: std::time::Instant::now(),
            ttl: option.hard_ttl(),
            done: false,
        });
        let request = RaftRequest {
            data,
            cluster_id: self.cluster_id.clone(),
        };
        let with_deadline = |request| {
            let mut request = tonic::Request::new(request);
            request.set_timeout(option.hard_ttl());
            request
        };
        let reply = match rpc {
            Rpc::Append if !self.unary => {
                let r = over_stream(client, &mut self.stream, request).await;
                if r.as_ref()
                    .is_err_and(|s| s.code() == tonic::Code::Unimplemented)
                {
                    tracing::info!(peer = %addr, "the peer has no append stream: unary AppendEntries");
                    self.unary = true;
                }
                r
            }
            Rpc::Append => client
                .append_entries(with_deadline(request))
                .await
                .map(|r| r.into_inner()),
            Rpc::Vote => client
                .vote(with_deadline(request))
                .await
                .map(|r| r.into_inner()),
            Rpc::Snapshot => client
                .install_snapshot(with_deadline(request))
                .await
                .map(|r| r.into_inner()),
        };
        if let Some(f) = in_flight.as_mut() {
            f.done = true;
        }
        let reply = reply.map_err(|s| {
            let e = err(format!("{:?}: {}", s.code(), s.message()));
            match s.code() {
                tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let (n, big) = (rpc.entries.len(), !super::all_small(&rpc.entries));
        self.call(Rpc::Append, rpc, n, big, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, rpc, 0, false, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, rpc, 0, false, &option).await
    }

    fn backoff(&self) -> Backoff {
        // 50 ms doubling to 500 ms: a restarted peer is found again quickly, a dead one
        // costs little.
        Backoff::new((0..).map(|i: u32| Duration::from_millis((50u64 << i.min(4)).min(500))))
    }
}

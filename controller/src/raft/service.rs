//! [`RaftService`]: the tonic server side of the peer RPCs; decodes openraft's request,
//! hands it to the local Raft, encodes the result. RPCs from another cluster are refused.

use super::failover::LeaderWatch;
use super::{GantryRaft, NodeId, TypeConfig, Vote};
use gantry_proto::limits::status_message;
use gantry_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use gantry_proto::raft::{RaftReply, RaftRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Requests above this many bytes are decoded on a blocking thread.
const BIG_REQUEST: usize = 64 << 10;

#[derive(Clone)]
pub struct RaftService {
    raft: GantryRaft,
    cluster_id: String,
    /// Mutual TLS: only controller identities may call.
    secure: bool,
    /// Contact from the leader, for the failover watchdog.
    watch: Arc<LeaderWatch>,
    /// Turns true when the member stops: open append streams then end. The server's
    /// graceful shutdown waits for open streams, and a peer's stream would never end.
    closing: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The leader and term of a request's vote, when it is a leader's (committed) vote.
fn leader_of(vote: &Vote) -> Option<(NodeId, u64)> {
    if !vote.is_committed() {
        return None;
    }
    let id = vote.leader_id();
    id.voted_for().map(|l| (l, id.get_term()))
}

impl RaftService {
    pub fn new(raft: GantryRaft, cluster_id: String) -> Self {
        RaftService {
            raft,
            cluster_id,
            secure: false,
            watch: LeaderWatch::new(),
            closing: None,
        }
    }
    /// End open append streams once `closing` turns true (or its sender is gone).
    pub fn with_closing(mut self, closing: tokio::sync::watch::Receiver<bool>) -> Self {
        self.closing = Some(closing);
        self
    }
    /// Record contact from leaders in `watch`.
    pub fn with_leader_watch(mut self, watch: Arc<LeaderWatch>) -> Self {
        self.watch = watch;
        self
    }
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(gantry_proto::limits::RAFT_MESSAGE_MAX)
            .max_encoding_message_size(gantry_proto::limits::RAFT_MESSAGE_MAX)
    }

    /// The connection a request came on (its remote address), plain or TLS.
    fn conn_of<T>(req: &Request<T>) -> Option<std::net::SocketAddr> {
        req.remote_addr().or_else(|| {
            req.extensions()
                .get::<gantry_security::tls::PeerInfo>()
                .and_then(|p| p.remote)
        })
    }

    /// Refuses a caller that is not a controller (mutual TLS).
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let caller = crate::api::authz::Caller::of(req, self.secure);
        crate::api::authz::check_rpc(&caller, crate::api::authz::Rpc::Raft)
    }

    async fn decode<T: DeserializeOwned + Send + 'static>(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<T, Status> {
        self.authorize(&req)?;
        self.decode_data(req.into_inner()).await
    }

    /// openraft's request from `req`, when it comes from this cluster.
    async fn decode_data<T: DeserializeOwned + Send + 'static>(
        &self,
        req: RaftRequest,
    ) -> Result<T, Status> {
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(status_message(format!(
                "this member belongs to cluster {}, the request comes from cluster {}",
                self.cluster_id, req.cluster_id
            ))));
        }
        let big = req.data.len() > BIG_REQUEST;
        let decode = move || {
            serde_json::from_slice(&req.data)
                .map_err(|e| Status::invalid_argument(status_message(format!("raft request: {e}"))))
        };
        // Big requests (entries of plans) take milliseconds to decode: off the runtime's
        // threads, so heartbeats and elections are not queued behind them.
        if big {
            tokio::task::spawn_blocking(decode)
                .await
                .map_err(|e| Status::internal(format!("decoding raft request: {e}")))?
        } else {
            decode()
        }
    }

    /// One AppendEntries, arrived on connection `conn` (unary or on a stream).
    async fn append(
        &self,
        req: RaftRequest,
        conn: Option<std::net::SocketAddr>,
    ) -> Result<RaftReply, Status> {
        let _in_flight = self.watch.begin();
        let req: openraft::raft::AppendEntriesRequest<TypeConfig> = self.decode_data(req).await?;
        let leader = leader_of(&req.vote);
        // Arrived: its sender is alive, whether or not this request completes (a leader
        // under load times out and re-sends big entries).
        if let Some((l, term)) = leader {
            self.watch.heard(l, term, conn);
        }
        let r = self.raft.append_entries(req).await;
        if let (Some((l, term)), Ok(resp)) = (leader, &r) {
            if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                self.watch.heard(l, term, conn);
            }
        }
        encode(&r)
    }
}

fn encode<T: Serialize>(v: &T) -> Result<RaftReply, Status> {
    let data =
        serde_json::to_vec(v).map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
    Ok(RaftReply { data })
}

/// The replies of one [`RaftRpc::append_stream`].
type AppendReplies =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.authorize(&req)?;
        let conn = Self::conn_of(&req);
        self.append(req.into_inner(), conn).await.map(Response::new)
    }

    type AppendStreamStream = AppendReplies;

    /// Each request is answered in order, on the stream's own task (no task or channel
    /// in between); the first error ends the stream with that status.
    async fn append_stream(
        &self,
        req: Request<tonic::Streaming<RaftRequest>>,
    ) -> Result<Response<AppendReplies>, Status> {
        self.authorize(&req)?;
        let conn = Self::conn_of(&req);
        let requests = req.into_inner();
        let closing = self.closing.clone();
        let replies = futures::stream::unfold(
            Some((self.clone(), requests, closing)),
            move |state| async move {
                let (this, mut requests, mut closing) = state?;
                let closed = async {
                    match closing.as_mut() {
                        Some(c) => {
                            let _ = c.wait_for(|closing| *closing).await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let reply = tokio::select! {
                    biased;
                    message = requests.message() => match message {
                        Ok(Some(req)) => this.append(req, conn).await,
                        Ok(None) => return None,
                        Err(s) => Err(s),
                    },
                    () = closed => return None,
                };
                let next = reply.is_ok().then_some((this, requests, closing));
                Some((reply, next))
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }
    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let r = self.raft.vote(self.decode(req).await?).await;
        encode(&r).map(Response::new)
    }
    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let _in_flight = self.watch.begin();
        let conn = Self::conn_of(&req);
        let req: openraft::raft::InstallSnapshotRequest<TypeConfig> = self.decode(req).await?;
        let vote = req.vote;
        let leader = leader_of(&vote);
        if let Some((l, term)) = leader {
            self.watch.heard(l, term, conn);
        }
        let r = self.raft.install_snapshot(req).await;
        if let (Some((l, term)), Ok(resp)) = (leader, &r) {
            // accepted: this member now holds the sender's vote
            if resp.vote == vote {
                self.watch.heard(l, term, conn);
            }
        }
        encode(&r).map(Response::new)
    }
}

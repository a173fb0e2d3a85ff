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
        }
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
    fn conn_of(req: &Request<RaftRequest>) -> Option<std::net::SocketAddr> {
        req.remote_addr().or_else(|| {
            req.extensions()
                .get::<gantry_security::tls::PeerInfo>()
                .and_then(|p| p.remote)
        })
    }

    async fn decode<T: DeserializeOwned + Send + 'static>(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<T, Status> {
        let caller = crate::api::authz::Caller::of(&req, self.secure);
        crate::api::authz::check_rpc(&caller, crate::api::authz::Rpc::Raft)?;
        let req = req.into_inner();
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
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftReply>, Status> {
    let data =
        serde_json::to_vec(v).map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
    Ok(Response::new(RaftReply { data }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let _in_flight = self.watch.begin();
        let conn = Self::conn_of(&req);
        let req: openraft::raft::AppendEntriesRequest<TypeConfig> = self.decode(req).await?;
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
    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let r = self.raft.vote(self.decode(req).await?).await;
        encode(&r)
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
        encode(&r)
    }
}

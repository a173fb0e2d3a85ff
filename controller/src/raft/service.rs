//! [`RaftService`]: the tonic server side of the peer RPCs; decodes openraft's request,
//! hands it to the local Raft, encodes the result. RPCs from another cluster are refused.

use super::GantryRaft;
use gantry_proto::limits::status_message;
use gantry_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use gantry_proto::raft::{RaftReply, RaftRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

/// Requests above this many bytes are decoded on a blocking thread.
const BIG_REQUEST: usize = 64 << 10;

#[derive(Clone)]
pub struct RaftService {
    raft: GantryRaft,
    cluster_id: String,
    /// Mutual TLS: only controller identities may call.
    secure: bool,
}

impl RaftService {
    pub fn new(raft: GantryRaft, cluster_id: String) -> Self {
        RaftService {
            raft,
            cluster_id,
            secure: false,
        }
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
        let r = self.raft.append_entries(self.decode(req).await?).await;
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
        let r = self.raft.install_snapshot(self.decode(req).await?).await;
        encode(&r)
    }
}

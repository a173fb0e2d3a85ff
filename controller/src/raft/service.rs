//! [`RaftService`]: the tonic server side of the peer RPCs; decodes openraft's request,
//! hands it to the local Raft, encodes the result. RPCs from another cluster are refused.

use super::GantryRaft;
use gantry_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use gantry_proto::raft::{RaftReply, RaftRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct RaftService {
    raft: GantryRaft,
    cluster_id: String,
}

impl RaftService {
    pub fn new(raft: GantryRaft, cluster_id: String) -> Self {
        RaftService { raft, cluster_id }
    }
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    fn decode<T: DeserializeOwned>(&self, req: Request<RaftRequest>) -> Result<T, Status> {
        let req = req.into_inner();
        if req.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "this member belongs to cluster {}, the request comes from cluster {}",
                self.cluster_id, req.cluster_id
            )));
        }
        serde_json::from_slice(&req.data)
            .map_err(|e| Status::invalid_argument(format!("raft request: {e}")))
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
        let r = self.raft.append_entries(self.decode(req)?).await;
        encode(&r)
    }
    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let r = self.raft.vote(self.decode(req)?).await;
        encode(&r)
    }
    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let r = self.raft.install_snapshot(self.decode(req)?).await;
        encode(&r)
    }
}

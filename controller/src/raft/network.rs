//! Raft peer RPCs over tonic: [`NetworkFactory`] hands openraft one [`PeerNetwork`] per
//! target, sharing one lazily-connected HTTP/2 channel per peer address (reused across
//! replication streams, reconnected by tonic, kept alive with HTTP/2 pings). An unreachable
//! peer answers `Unreachable`, and openraft then waits out [`PeerNetwork::backoff`].

use super::{BasicNode, NodeId, TypeConfig};
use gantry_proto::raft::raft_client::RaftClient;
use gantry_proto::raft::RaftRequest;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
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

/// A lazily connected channel to a peer or member address, with keep-alive set (without
/// it a channel can stay dead after a partition heals).
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

#[derive(Clone)]
pub struct NetworkFactory {
    cluster_id: String,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NetworkFactory {
    pub fn new(cluster_id: String) -> Self {
        NetworkFactory {
            cluster_id,
            channels: Default::default(),
        }
    }
    fn channel_for(&self, addr: &str) -> Option<Channel> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Some(c.clone());
        }
        let c = channel(addr).ok()?;
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
            client: self.channel_for(&node.addr).map(RaftClient::new),
        }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    node: BasicNode,
    cluster_id: String,
    /// None when the address does not parse: every RPC is then unreachable.
    client: Option<RaftClient<Channel>>,
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
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
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
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftRequest {
            data,
            cluster_id: self.cluster_id.clone(),
        });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| {
            let e = err(format!("{:?}: {}", s.code(), s.message()));
            match s.code() {
                tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().data)
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
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        // 50 ms doubling to 500 ms: a restarted peer is found again quickly, a dead one
        // costs little.
        Backoff::new((0..).map(|i: u32| Duration::from_millis((50u64 << i.min(4)).min(500))))
    }
}

//! [`ControllerClient`]: a client of the cluster API that knows several member addresses,
//! follows the leader hints members give, and moves on to another member when one is
//! unreachable. Used by the CLI, by joining members and by tests.
//!
//! Retries happen only on `UNAVAILABLE` (member down, or not the leader and unable to
//! forward) and `CANCELLED` (the connection to a stopping member closed under the call);
//! a write retried after a connection broke mid-call may apply twice, so
//! commands are written to be safe to repeat where it matters (re-registration, upserts).

use super::LEADER_METADATA;
use crate::raft::network::{channel, Transport};
use crate::state::{Command, Response};
use gantry_proto::cluster::cluster_client::ClusterClient;
use gantry_proto::cluster::*;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no controller answered (tried {addrs}): {last}")]
    Unreachable { addrs: String, last: String },
    #[error("controller {addr}: {}: {}", status.code(), status.message())]
    Status {
        addr: String,
        #[source]
        status: Status,
    },
    #[error("controller {addr}: undecodable answer: {reason}")]
    Decode { addr: String, reason: String },
    #[error("bad controller address {addr:?}")]
    BadAddress { addr: String },
}

impl ClientError {
    /// The gRPC code, when a member answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

pub struct ControllerClient {
    addrs: Vec<String>,
    current: usize,
    /// One channel per member address, reused across calls.
    channels: std::collections::HashMap<String, tonic::transport::Channel>,
    /// How long one call keeps trying other members / following leaders.
    pub retry_for: Duration,
    transport: Transport,
}

impl ControllerClient {
    /// A client over plain TCP (a cluster run with `--insecure`).
    pub fn new(addrs: Vec<String>) -> Self {
        Self::with_transport(addrs, Transport::Plain)
    }

    pub fn with_transport(addrs: Vec<String>, transport: Transport) -> Self {
        ControllerClient {
            addrs,
            current: 0,
            channels: Default::default(),
            retry_for: Duration::from_secs(10),
            transport,
        }
    }

    /// Use `ch` for calls to `addr` (several clients may share one connection: HTTP/2
    /// multiplexes their calls).
    pub fn with_channel(mut self, addr: &str, ch: tonic::transport::Channel) -> Self {
        self.channels.insert(addr.to_string(), ch);
        self
    }

    /// The member address calls currently go to.
    pub fn current(&self) -> &str {
        &self.addrs[self.current]
    }

    fn client(
        &mut self,
        addr: &str,
    ) -> Result<ClusterClient<tonic::transport::Channel>, ClientError> {
        let ch = match self.channels.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ch = channel(addr, &self.transport)
                    .map_err(|_| ClientError::BadAddress { addr: addr.into() })?;
                self.channels.insert(addr.to_string(), ch.clone());
                ch
            }
        };
        Ok(ClusterClient::new(ch)
            .max_decoding_message_size(gantry_proto::limits::CLUSTER_REPLY_MAX)
            .max_encoding_message_size(gantry_proto::limits::CLUSTER_REQUEST_MAX))
    }

    /// Run `call` against members until one answers something other than UNAVAILABLE.
    async fn with_retry<T, F, Fut>(&mut self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(ClusterClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        if self.addrs.is_empty() {
            return Err(ClientError::Unreachable {
                addrs: String::new(),
                last: "no controller address given".into(),
            });
        }
        let deadline = Instant::now() + self.retry_for;
        let mut last;
        // Short pauses: after a leader loss the next attempt should land soon after the
        // election (a new leader is usually elected within the election timeout).
        let mut pause = Duration::from_millis(5);
        loop {
            let addr = self.addrs[self.current].clone();
            match call(self.client(&addr)?).await {
                Ok(v) => return Ok(v),
                // CANCELLED comes from our side of the connection: it closed (the member
                // stopping) with the call queued on it. A connection failure like
                // UNAVAILABLE, and retried the same way.
                Err(s) if matches!(s.code(), Code::Unavailable | Code::Cancelled) => {
                    last = format!("{addr}: {}", s.message());
                    let hint = s
                        .metadata()
                        .get(LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match hint {
                        Some(leader) if leader != addr => {
                            if let Some(i) = self.addrs.iter().position(|a| *a == leader) {
                                self.current = i;
                            } else {
                                self.addrs.push(leader);
                                self.current = self.addrs.len() - 1;
                            }
                            continue;
                        }
                        _ => self.current = (self.current + 1) % self.addrs.len(),
                    }
                }
                Err(status) => return Err(ClientError::Status { addr, status }),
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unreachable {
                    addrs: self.addrs.join(","),
                    last,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }

    pub async fn status(&mut self) -> Result<StatusReply, ClientError> {
        self.with_retry(
            |mut c| async move { c.status(StatusRequest {}).await.map(|r| r.into_inner()) },
        )
        .await
    }

    /// Status of the member at a given address (no retry elsewhere).
    pub async fn status_of(&mut self, addr: &str) -> Result<StatusReply, ClientError> {
        self.client(addr)?
            .status(StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|status| ClientError::Status {
                addr: addr.into(),
                status,
            })
    }

    /// Commit a command; returns the log index and the command's response.
    pub async fn write(&mut self, cmd: &Command) -> Result<(u64, Response), ClientError> {
        let command_json = serde_json::to_vec(cmd).expect("commands serialize");
        let reply = self
            .with_retry(|mut c| {
                let req = WriteRequest {
                    command_json: command_json.clone(),
                    forwarded: false,
                };
                async move { c.write(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        let resp =
            serde_json::from_slice(&reply.response_json).map_err(|e| ClientError::Decode {
                addr: self.current().into(),
                reason: e.to_string(),
            })?;
        Ok((reply.index, resp))
    }

    /// Read and decode; `stale` reads are served by the member asked, without a quorum.
    pub async fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        kind: ReadKind,
        stale: bool,
    ) -> Result<(u64, T), ClientError> {
        let reply = self
            .with_retry(|mut c| {
                let req = ReadRequest {
                    kind: kind as i32,
                    stale,
                    forwarded: false,
                };
                async move { c.read(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        let v = serde_json::from_slice(&reply.data_json).map_err(|e| ClientError::Decode {
            addr: self.current().into(),
            reason: e.to_string(),
        })?;
        Ok((reply.index, v))
    }

    pub async fn add_member(
        &mut self,
        id: u64,
        address: &str,
    ) -> Result<MembershipReply, ClientError> {
        let address = address.to_string();
        self.with_retry(|mut c| {
            let req = AddMemberRequest {
                id,
                address: address.clone(),
                forwarded: false,
            };
            async move { c.add_member(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn remove_member(&mut self, id: u64) -> Result<MembershipReply, ClientError> {
        self.with_retry(|mut c| async move {
            c.remove_member(RemoveMemberRequest {
                id,
                forwarded: false,
            })
            .await
            .map(|r| r.into_inner())
        })
        .await
    }

    /// Hand leadership to voter `target`; the new leader and term.
    pub async fn transfer_leader(
        &mut self,
        target: u64,
    ) -> Result<TransferLeaderReply, ClientError> {
        self.with_retry(|mut c| async move {
            c.transfer_leader(TransferLeaderRequest {
                target,
                forwarded: false,
            })
            .await
            .map(|r| r.into_inner())
        })
        .await
    }

    /// The stream of changes after `from_index` from the current member.
    pub async fn watch(
        &mut self,
        from_index: u64,
    ) -> Result<tonic::Streaming<WatchEvent>, ClientError> {
        self.with_retry(|mut c| async move {
            c.watch(WatchRequest { from_index })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// The bytes of a consistent snapshot file, taken on the leader.
    pub async fn snapshot_save(&mut self) -> Result<Vec<u8>, ClientError> {
        self.with_retry(|mut c| async move {
            let mut stream = c.snapshot_save(SnapshotSaveRequest {}).await?.into_inner();
            let mut out = Vec::new();
            while let Some(chunk) = stream.message().await? {
                out.extend_from_slice(&chunk.data);
            }
            Ok(out)
        })
        .await
    }

    /// Report that `node` is alive; answers the node's status in the state.
    pub async fn heartbeat(&mut self, node: u64) -> Result<String, ClientError> {
        self.heartbeat_mesh(node, 0).await.map(|(status, _)| status)
    }

    /// Report that `node` is alive and that its routing mesh reflects the state up to
    /// `mesh_index` (0: it runs no mesh); answers the node's status and the index every
    /// live node's mesh has reached (0: not known yet).
    pub async fn heartbeat_mesh(
        &mut self,
        node: u64,
        mesh_index: u64,
    ) -> Result<(String, u64), ClientError> {
        self.with_retry(|mut c| async move {
            c.heartbeat(HeartbeatRequest {
                node,
                forwarded: false,
                mesh_index,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.status, r.mesh_synced)
            })
        })
        .await
    }

    /// The cluster CA certificate (PEM).
    pub async fn ca_certificate(&mut self) -> Result<String, ClientError> {
        self.with_retry(|mut c| async move {
            c.ca_certificate(CaCertificateRequest {})
                .await
                .map(|r| r.into_inner().ca_pem)
        })
        .await
    }

    /// A certificate for `name` in exchange for a join token and a CSR.
    pub async fn join(
        &mut self,
        token: &str,
        csr_pem: &str,
        name: &str,
    ) -> Result<JoinReply, ClientError> {
        let req = JoinRequest {
            token: token.to_string(),
            csr_pem: csr_pem.to_string(),
            name: name.to_string(),
            forwarded: false,
        };
        self.with_retry(|mut c| {
            let req = req.clone();
            async move { c.join(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// A renewed certificate (PEM) for the caller's identity, on the CSR's key.
    pub async fn renew(&mut self, csr_pem: &str) -> Result<String, ClientError> {
        let csr_pem = csr_pem.to_string();
        self.with_retry(|mut c| {
            let req = RenewRequest {
                csr_pem: csr_pem.clone(),
            };
            async move { c.renew(req).await.map(|r| r.into_inner().cert_pem) }
        })
        .await
    }

    /// Why replicas are not placed, per service (the leader's last evaluation).
    pub async fn unplaced(
        &mut self,
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        self.with_retry(|mut c| async move {
            c.unplaced(UnplacedRequest { forwarded: false })
                .await
                .map(|r| r.into_inner().reasons.into_iter().collect())
        })
        .await
    }
}

//! The node API (`gantry.engine.v1.Node`): what a cluster-mode agent serves on the network
//! for clients that are not on its host — today the logs of its allocations' containers
//! (`gantry service logs`).
//!
//! Issue 10: the agent exposes no unauthenticated network port. In a secure cluster this
//! listener is mutual TLS with the node certificate (DNS SAN `NAME.node.gantry`, so a
//! client reaches the node it meant and no other), client certificates verified against
//! the cluster CA, and each call authorized by role ([`authorize`]): viewer, operator,
//! admin and controller may read logs; agents (another node) and registries may not, nor
//! may a client without a certificate. Plain TCP only in an `--insecure` cluster, like the
//! controllers' API.

use super::reconcile::{ALLOC_LABEL, SERVICE_LABEL};
use crate::engine::service::EngineService;
use crate::engine::Engine;
use gantry_proto::engine as pb;
use gantry_proto::engine::engine_server::Engine as _;
use gantry_security::tls::PeerInfo;
use gantry_security::{Identity, Role};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// May a caller presenting `identity` (None: no certificate) use the node API?
pub fn authorize(identity: Option<&Identity>) -> Result<(), Status> {
    match identity {
        None => Err(Status::unauthenticated(
            "the node API needs a client certificate of the cluster (a context file)",
        )),
        Some(id) => match id.role {
            Role::Viewer | Role::Operator | Role::Admin | Role::Controller => Ok(()),
            Role::Agent | Role::Registry => Err(Status::permission_denied(format!(
                "{id} may not read this node's logs: viewer, operator, admin or controller \
                 credentials may"
            ))),
        },
    }
}

/// The node API over the agent's engine.
pub struct NodeApi {
    engine: Arc<Engine>,
    /// Mutual TLS: every call is authorized. False: an `--insecure` cluster.
    secure: bool,
}

impl NodeApi {
    pub fn new(engine: Arc<Engine>, secure: bool) -> NodeApi {
        NodeApi { engine, secure }
    }
}

type LogStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogRecord, Status>> + Send>>;

#[tonic::async_trait]
impl pb::node_server::Node for NodeApi {
    type AllocationLogsStream = LogStream;

    async fn allocation_logs(
        &self,
        req: Request<pb::AllocationLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        if self.secure {
            authorize(
                req.extensions()
                    .get::<PeerInfo>()
                    .and_then(|p| p.identity.as_ref()),
            )?;
        }
        let r = req.into_inner();
        let name = format!("{}-{}", r.service, r.allocation);
        let not_here = || {
            Status::not_found(format!(
                "allocation {} of service {:?}: no container on this node",
                r.allocation, r.service
            ))
        };
        // only the container the agent made for that allocation (its labels say so), not
        // any container a user happened to give that name
        let rec = self.engine.resolve(&name).map_err(|_| not_here())?;
        let labels = &rec.config.labels;
        if labels.get(ALLOC_LABEL) != Some(&r.allocation.to_string())
            || labels.get(SERVICE_LABEL) != Some(&r.service)
        {
            return Err(not_here());
        }
        EngineService::new(self.engine.clone())
            .logs(Request::new(pb::LogsRequest {
                container: rec.id,
                follow: r.follow,
                tail: r.tail,
                timestamps: false,
                since_unix_nanos: 0,
            }))
            .await
    }
}

/// Serve the node API on `listener` until the task is dropped: over `tls` (mutual TLS,
/// every call authorized) or, without it, plain TCP (an `--insecure` cluster).
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), tonic::transport::Error> {
    use gantry_proto::limits::{resource_exhausted, ENGINE_REPLY_MAX, ENGINE_REQUEST_MAX};
    let svc = pb::node_server::NodeServer::new(NodeApi::new(engine, tls.is_some()))
        .max_decoding_message_size(ENGINE_REQUEST_MAX)
        .max_encoding_message_size(ENGINE_REPLY_MAX);
    let server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(resource_exhausted))
        .add_service(svc);
    match tls {
        Some(cfg) => {
            server
                .serve_with_incoming(gantry_security::tls::incoming(listener, cfg))
                .await
        }
        None => {
            server
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_and_up_read_logs_agents_registries_and_strangers_do_not() {
        let id = |role, name: &str| Identity::new(role, name).unwrap();
        for role in [Role::Viewer, Role::Operator, Role::Admin, Role::Controller] {
            assert!(authorize(Some(&id(role, "x"))).is_ok(), "{role:?}");
        }
        for role in [Role::Agent, Role::Registry] {
            let e = authorize(Some(&id(role, "n2"))).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{role:?}");
            assert!(e.message().contains("may not read"), "{}", e.message());
        }
        assert_eq!(
            authorize(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}

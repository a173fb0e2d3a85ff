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

/// What a node API call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Logs: viewer and up.
    Read,
    /// Commit and push a container (`migrate --with-state`): operator and up.
    Write,
}

/// May a caller presenting `identity` (None: no certificate) make a call of `access`?
pub fn authorize(identity: Option<&Identity>, access: Access) -> Result<(), Status> {
    let Some(id) = identity else {
        return Err(Status::unauthenticated(
            "the node API needs a client certificate of the cluster (a context file)",
        ));
    };
    match (id.role, access) {
        (Role::Operator | Role::Admin | Role::Controller, _) => Ok(()),
        (Role::Viewer, Access::Read) => Ok(()),
        (_, Access::Read) => Err(Status::permission_denied(format!(
            "{id} may not read this node's logs: viewer, operator, admin or controller \
             credentials may"
        ))),
        (_, Access::Write) => Err(Status::permission_denied(format!(
            "{id} may not commit this node's containers: operator, admin or controller \
             credentials may"
        ))),
    }
}

/// Where committed containers are pushed from: the engine's image store and the agent's
/// registry client settings (its pulls' ones).
#[derive(Clone)]
pub struct Registry {
    pub store: crate::image::ImageStore,
    pub config: crate::distribution::ClientConfig,
}

/// The node API over the agent's engine.
pub struct NodeApi {
    engine: Arc<Engine>,
    /// Mutual TLS: every call is authorized. False: an `--insecure` cluster.
    secure: bool,
    registry: Option<Registry>,
}

impl NodeApi {
    pub fn new(engine: Arc<Engine>, secure: bool, registry: Option<Registry>) -> NodeApi {
        NodeApi {
            engine,
            secure,
            registry,
        }
    }

    fn check<T>(&self, req: &Request<T>, access: Access) -> Result<(), Status> {
        if !self.secure {
            return Ok(());
        }
        authorize(
            req.extensions()
                .get::<PeerInfo>()
                .and_then(|p| p.identity.as_ref()),
            access,
        )
    }

    /// The container the agent made for allocation `alloc` of `service` (its name *and*
    /// labels say so, not any container a user happened to give that name).
    fn container_of(
        &self,
        service: &str,
        alloc: u64,
    ) -> Result<crate::engine::record::ContainerRecord, Status> {
        let not_here = || {
            Status::not_found(format!(
                "allocation {alloc} of service {service:?}: no container on this node"
            ))
        };
        let rec = self
            .engine
            .resolve(&format!("{service}-{alloc}"))
            .map_err(|_| not_here())?;
        let labels = &rec.config.labels;
        if labels.get(ALLOC_LABEL) != Some(&alloc.to_string())
            || labels.get(SERVICE_LABEL).map(String::as_str) != Some(service)
        {
            return Err(not_here());
        }
        Ok(rec)
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
        self.check(&req, Access::Read)?;
        let r = req.into_inner();
        let rec = self.container_of(&r.service, r.allocation)?;
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

    async fn commit_allocation(
        &self,
        req: Request<pb::CommitAllocationRequest>,
    ) -> Result<Response<pb::CommitAllocationReply>, Status> {
        self.check(&req, Access::Write)?;
        let r = req.into_inner();
        let Some(reg) = &self.registry else {
            return Err(Status::failed_precondition(
                "this agent has no registry client to push with",
            ));
        };
        let rec = self.container_of(&r.service, r.allocation)?;
        // the writable layer as an image (a running container is frozen meanwhile)
        let meta = crate::engine::commit::CommitMeta {
            message: format!(
                "gantry migrate --with-state: allocation {} of {}",
                r.allocation, r.service
            ),
            ..Default::default()
        };
        let image_id = self
            .engine
            .commit(&rec.id, &r.image, meta, true)
            .await
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "committing {}: {}",
                    rec.name,
                    Status::from(e).message()
                ))
            })?;
        let report = crate::distribution::push(
            &reg.store,
            &r.image,
            &reg.config,
            Arc::new(crate::distribution::Silent),
        )
        .await
        .map_err(|e| Status::unavailable(format!("pushing {}: {e}", r.image)))?;
        Ok(Response::new(pb::CommitAllocationReply {
            image_id,
            digest: report.digest.map(|d| d.to_string()).unwrap_or_default(),
        }))
    }
}

/// Serve the node API on `listener` until the task is dropped: over `tls` (mutual TLS,
/// every call authorized) or, without it, plain TCP (an `--insecure` cluster).
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    registry: Option<Registry>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), tonic::transport::Error> {
    use gantry_proto::limits::{resource_exhausted, ENGINE_REPLY_MAX, ENGINE_REQUEST_MAX};
    let svc = pb::node_server::NodeServer::new(NodeApi::new(engine, tls.is_some(), registry))
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
    fn viewers_and_up_read_operators_and_up_commit_agents_and_strangers_neither() {
        let id = |role, name: &str| Identity::new(role, name).unwrap();
        for role in [Role::Viewer, Role::Operator, Role::Admin, Role::Controller] {
            assert!(
                authorize(Some(&id(role, "x")), Access::Read).is_ok(),
                "{role:?}"
            );
        }
        for role in [Role::Operator, Role::Admin, Role::Controller] {
            assert!(
                authorize(Some(&id(role, "x")), Access::Write).is_ok(),
                "{role:?}"
            );
        }
        for role in [Role::Agent, Role::Registry] {
            let e = authorize(Some(&id(role, "n2")), Access::Read).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{role:?}");
            assert!(e.message().contains("may not read"), "{}", e.message());
        }
        for role in [Role::Viewer, Role::Agent, Role::Registry] {
            let e = authorize(Some(&id(role, "n2")), Access::Write).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{role:?}");
            assert!(e.message().contains("may not commit"), "{}", e.message());
        }
        for access in [Access::Read, Access::Write] {
            assert_eq!(
                authorize(None, access).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
    }
}

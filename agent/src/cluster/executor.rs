//! The executor: carries out [`Action`](super::reconcile::Action)s on the local engine.
//! [`Containers`] is the boundary (the engine's API, as `gantry container` uses it);
//! [`EngineContainers`] drives the real engine in-process through its gRPC service
//! implementation, so cluster mode and `gantry container …` see the same containers.
//! [`Images`] is the other boundary: whether the node's image store holds an image, and
//! pulling it from its registry ([`RegistryImages`]: the agent's own registry client into
//! the engine's store, so allocations of one image share its unpacked layers).

use super::reconcile::{ContainerState, ObservedContainer, ALLOC_LABEL, SERVICE_LABEL};
use gantry_controller::state::{Allocation, RestartPolicy, Service};
use gantry_proto::engine as pb;
use gantry_proto::engine::engine_server::Engine as _;
use std::collections::HashMap;
use tonic::Request;

/// Image references of this form run from an exploded root filesystem directory on the
/// node (the engine's `--rootfs`) instead of an image from the store.
pub const ROOTFS_PREFIX: &str = "rootfs:";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("engine: {verb} {what}: {}", status.message())]
    Engine {
        verb: &'static str,
        what: String,
        #[source]
        status: tonic::Status,
    },
    #[error("pulling {image}: {source}")]
    Pull {
        image: String,
        #[source]
        source: crate::distribution::DistributionError,
    },
}

/// The node's images, as cluster mode needs them.
#[tonic::async_trait]
pub trait Images: Send + Sync {
    /// Whether `reference` can run without a pull (in the store, or a `rootfs:` image).
    fn present(&self, reference: &str) -> bool;
    /// Pull `reference` from its registry into the store.
    async fn pull(&self, reference: &str) -> Result<(), ExecError>;
}

/// The engine's image store, filled from registries by the agent's registry client.
pub struct RegistryImages {
    pub store: crate::image::ImageStore,
    pub config: crate::distribution::ClientConfig,
}

#[tonic::async_trait]
impl Images for RegistryImages {
    fn present(&self, reference: &str) -> bool {
        reference.starts_with(ROOTFS_PREFIX) || self.store.resolve_str(reference).is_ok()
    }

    async fn pull(&self, reference: &str) -> Result<(), ExecError> {
        crate::distribution::pull(
            &self.store,
            reference,
            &self.config,
            &crate::distribution::Silent,
        )
        .await
        .map(|_| ())
        .map_err(|source| ExecError::Pull {
            image: reference.to_string(),
            source,
        })
    }
}

/// The engine operations the executor needs.
#[tonic::async_trait]
pub trait Containers: Send + Sync {
    /// This agent's containers (those with the allocation label), in any state.
    async fn list(&self) -> Result<Vec<ObservedContainer>, ExecError>;
    /// Create and start a container for `alloc` of `svc`; its id.
    async fn run(&self, alloc: &Allocation, svc: &Service) -> Result<String, ExecError>;
    async fn start(&self, container: &str) -> Result<(), ExecError>;
    /// Stop (signal, kill after `timeout_s`) and remove; the last exit code.
    async fn remove(&self, container: &str, timeout_s: i32) -> Result<i32, ExecError>;
}

/// The container name of an allocation.
pub fn container_name(alloc: &Allocation) -> String {
    format!("{}-{}", alloc.service, alloc.id)
}

/// The engine's create request for an allocation: the service's command is the
/// entrypoint and its args the cmd (as in Kubernetes); with published ports the
/// container gets the bridge network, otherwise the host's.
pub fn create_request(alloc: &Allocation, svc: &Service) -> pb::CreateRequest {
    let spec = &svc.spec;
    let (image, rootfs) = match spec.image.strip_prefix(ROOTFS_PREFIX) {
        Some(dir) => (String::new(), dir.to_string()),
        None => (spec.image.clone(), String::new()),
    };
    let mut labels = HashMap::new();
    labels.insert(ALLOC_LABEL.to_string(), alloc.id.to_string());
    labels.insert(SERVICE_LABEL.to_string(), alloc.service.clone());
    labels.insert("gantry.version".to_string(), alloc.version.to_string());
    pb::CreateRequest {
        image,
        rootfs,
        name: container_name(alloc),
        entrypoint: spec.command.clone(),
        entrypoint_set: !spec.command.is_empty(),
        cmd: spec.args.clone(),
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        publish: alloc
            .ports
            .iter()
            .map(|p| {
                let proto = match p.protocol {
                    gantry_controller::state::Protocol::Tcp => "tcp",
                    gantry_controller::state::Protocol::Udp => "udp",
                };
                format!("{}:{}/{proto}", p.host, p.container)
            })
            .collect(),
        network: if alloc.ports.is_empty() && spec.networks.is_empty() {
            "host".into()
        } else {
            "bridge".into()
        },
        memory_bytes: alloc.resources.memory_bytes as i64,
        cpus: alloc.resources.cpu_millis as f64 / 1000.0,
        pids_limit: alloc.resources.pids as i64,
        restart: match spec.restart {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "no",
        }
        .into(),
        labels,
        ..Default::default()
    }
}

fn state_of(c: &pb::ContainerSummary) -> ContainerState {
    match c.state.as_str() {
        "running" => ContainerState::Running,
        "restarting" => ContainerState::Restarting,
        "created" => ContainerState::Created,
        _ => ContainerState::Exited(c.exit_code),
    }
}

/// The real engine, called in-process through its gRPC service.
pub struct EngineContainers {
    svc: crate::engine::service::EngineService,
}

impl EngineContainers {
    pub fn new(engine: std::sync::Arc<crate::engine::Engine>) -> Self {
        EngineContainers {
            svc: crate::engine::service::EngineService::new(engine),
        }
    }
}

fn err(verb: &'static str, what: impl Into<String>) -> impl FnOnce(tonic::Status) -> ExecError {
    let what = what.into();
    move |status| ExecError::Engine { verb, what, status }
}

#[tonic::async_trait]
impl Containers for EngineContainers {
    async fn list(&self) -> Result<Vec<ObservedContainer>, ExecError> {
        let reply = self
            .svc
            .list(Request::new(pb::ListRequest {
                all: true,
                filters: vec![format!("label={ALLOC_LABEL}")],
            }))
            .await
            .map_err(err("list", "containers"))?
            .into_inner();
        Ok(reply
            .containers
            .iter()
            .filter_map(|c| {
                let alloc = c.labels.get(ALLOC_LABEL)?.parse().ok()?;
                Some(ObservedContainer {
                    id: c.id.clone(),
                    alloc,
                    state: state_of(c),
                })
            })
            .collect())
    }

    async fn run(&self, alloc: &Allocation, svc: &Service) -> Result<String, ExecError> {
        let req = create_request(alloc, svc);
        let name = req.name.clone();
        let id = self
            .svc
            .create(Request::new(req))
            .await
            .map_err(err("create", name.clone()))?
            .into_inner()
            .id;
        self.start(&id).await?;
        Ok(id)
    }

    async fn start(&self, container: &str) -> Result<(), ExecError> {
        self.svc
            .start(Request::new(pb::ContainerRef {
                container: container.into(),
            }))
            .await
            .map_err(err("start", container))?;
        Ok(())
    }

    async fn remove(&self, container: &str, timeout_s: i32) -> Result<i32, ExecError> {
        self.svc
            .stop(Request::new(pb::StopRequest {
                container: container.into(),
                timeout_seconds: timeout_s,
            }))
            .await
            .map_err(err("stop", container))?;
        let code = self
            .svc
            .inspect(Request::new(pb::ContainerRef {
                container: container.into(),
            }))
            .await
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.into_inner().json).ok())
            .and_then(|v| v["state"]["exit_code"].as_i64())
            .unwrap_or(0) as i32;
        self.svc
            .remove(Request::new(pb::RemoveRequest {
                container: container.into(),
                force: true,
                volumes: false,
            }))
            .await
            .map_err(err("remove", container))?;
        Ok(code)
    }
}

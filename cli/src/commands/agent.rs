//! `gantry agent`: the engine daemon. Serves the engine API on a unix socket (root, 0600)
//! from a single-threaded tokio runtime (blocking work goes to a small pool), after
//! reattaching to the shims of containers that kept running while it was down. With
//! `--join`, it is also a cluster node (agent/src/cluster).
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use gantry_agent::cluster::{
    self,
    executor::{EngineContainers, RegistryImages},
    ClusterConfig,
};
use gantry_agent::engine::{images::StoreImages, service::EngineService, Engine, EngineConfig};
use gantry_agent::network::{dns, follower, overlay, BridgeConfig, BridgeNetwork, NetlinkLinks};
use gantry_controller::state::Resources;
use gantry_proto::engine::engine_server::EngineServer;

#[derive(Args)]
pub struct AgentArgs {
    /// Persistent state (metadata, container layers and logs).
    #[arg(long, default_value = "/var/lib/gantry/agent")]
    pub root: PathBuf,
    /// Volatile state (shim run dirs, the OCI runtime's state).
    #[arg(long, default_value = "/run/gantry")]
    pub run_root: PathBuf,
    /// Where to serve the engine API.
    #[arg(
        long,
        env = "GANTRY_HOST",
        default_value = "unix:///run/gantry/agent.sock"
    )]
    pub host: String,
    /// A runc-compatible OCI runtime for the shims to drive (e.g. `runc`); by default
    /// gantry's own (`gantry runtime`).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Rotate a container's log when it reaches this many bytes.
    #[arg(long, default_value_t = 10 << 20)]
    pub log_max_size: u64,
    /// Log files kept per container, the live one included.
    #[arg(long, default_value_t = 3)]
    pub log_max_files: u32,
    /// The cgroup containers are made under (as dockerd's `--cgroup-parent`): a relative
    /// path such as `gantry` or `workloads/gantry`; containers are at PARENT/ID in every
    /// hierarchy (v1) or under the unified root (v2).
    #[arg(long, default_value = gantry_agent::engine::DEFAULT_CGROUP_PARENT,
          value_parser = parse_cgroup_parent)]
    pub cgroup_parent: String,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// The node's bridge for `--network bridge` containers.
    #[arg(long, default_value = gantry_agent::network::config::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// The bridge's subnet (CIDR); the gateway is its first address.
    #[arg(long, default_value = gantry_agent::network::config::DEFAULT_SUBNET)]
    pub subnet: String,
    /// Prefix of gantry's iptables chains (PREFIX-DNAT, PREFIX-POST, PREFIX-FWD).
    #[arg(long, default_value = gantry_agent::network::config::DEFAULT_CHAIN_PREFIX)]
    pub chain_prefix: String,
    /// Remove this node's networking for good and exit, for a node leaving the cluster:
    /// gantry's iptables chains (of --chain-prefix), the cluster overlay's vxlan device,
    /// the bridge (--bridge) and its leases. Refused while containers are recorded in
    /// --root (remove them first; the agent must not be running).
    #[arg(long)]
    pub teardown_network: bool,
    /// Run without a bridge network (only `--network host|none` containers).
    #[arg(long, conflicts_with_all = ["bridge", "subnet", "chain_prefix"])]
    pub no_bridge: bool,
    /// Cluster mode: join the controllers at ADDR[,ADDR…] and run what they place here.
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Cluster mode: a join token of role agent, needed on first start only (the node
    /// certificate is then kept in ROOT/pki).
    #[arg(long, env = "GANTRY_TOKEN", requires = "join")]
    pub token: Option<String>,
    /// Cluster mode: plain TCP to controllers run with --insecure (no credentials).
    #[arg(long, env = "GANTRY_INSECURE",
          value_parser = clap::builder::BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    pub insecure: bool,
    /// Cluster mode: a label of this node (repeatable), e.g. --label env=qa.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Cluster mode: this node's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Cluster mode: the address this node is reached at (default: the node's name).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Cluster mode: where to serve the node API (the logs of this node's allocations, for
    /// `gantry service logs`): mutual TLS with the node certificate, callers of role viewer
    /// and up; plain TCP only with --insecure. Port 0 takes a free port; `none` serves no
    /// node API.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub api_listen: String,
    /// Cluster mode: the node API's address as clients dial it (default: the host of
    /// --advertise, or of --api-listen when it names one, with the port bound).
    #[arg(long)]
    pub api_advertise: Option<String>,
    /// Cluster mode: CPU (millicores) kept for the host.
    #[arg(long, default_value_t = 0)]
    pub reserve_cpu_millis: u64,
    /// Cluster mode: memory (bytes) kept for the host.
    #[arg(long, default_value_t = 0)]
    pub reserve_memory_bytes: u64,
    /// Cluster mode: heartbeat interval.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Cluster mode: seconds a stopped allocation gets between its stop signal and SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: i32,
    /// Cluster mode: join the cluster network (VXLAN overlay, service-discovery DNS). The
    /// bridge then serves the node subnet the controller allocates (--subnet is ignored)
    /// and --advertise must be this node's IPv4 address on the underlay.
    #[arg(long, requires = "join", conflicts_with = "no_bridge")]
    pub overlay: bool,
    /// Cluster mode: a registry (host[:port]) pulled from over plain HTTP (repeatable;
    /// loopback registries always are).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// A credential (--tls-cert/--tls-key; in cluster mode the node's own,
    /// ROOT/pki/node.crt and node.key, renewals included) and the cluster CA (--tls-ca),
    /// for mutual TLS with the cluster's registries (pulls and builds).
    #[command(flatten)]
    pub registry_tls: super::distribution::RegistryTlsArgs,
    /// Cluster mode: how long an allocation with published endpoints keeps running after
    /// it left the rotation, before it is stopped (so no request reaches a stopped one);
    /// it also waits until every live node's mesh has dropped it, at most 5× this.
    #[arg(long, default_value_t = 2000)]
    pub drain_delay_ms: u64,
    /// Cluster mode: wait after a failed pull before pulling that image again (doubled
    /// per further failure, up to 60 s).
    #[arg(long, default_value_t = 1000)]
    pub pull_backoff_ms: u64,
}

/// A `unix://` address (or a bare path) as a path.
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(p) => Ok(PathBuf::from(p)),
        None if host.starts_with('/') => Ok(PathBuf::from(host)),
        None => anyhow::bail!("--host {host:?}: only unix:///path sockets are supported"),
    }
}

pub fn main(args: AgentArgs) -> i32 {
    // Before any thread exists: see gantry_controller::memory.
    gantry_controller::memory::limit_arenas(2);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .build()
        .expect("tokio runtime");
    match rt.block_on(serve(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gantry agent: {e:#}");
            1
        }
    }
}

async fn serve(args: AgentArgs) -> anyhow::Result<()> {
    if args.teardown_network {
        return teardown_network(&args).await;
    }
    let sock = socket_path(&args.host)?;
    // read before anything is set up: a bad credential file changes nothing
    let mut registry_mtls = args.registry_tls.client_config()?;
    // the node API's server credential: the node certificate (set below in a secure cluster)
    let mut node_api_tls = None;
    let (cluster_cfg, _renew) = match cluster_config(&args)? {
        Some(mut c) if !args.insecure => {
            let pki = args.root.join("pki");
            let tls = gantry_agent::cluster::credentials::load_or_join(
                &pki,
                &c.name,
                &c.join,
                args.token.as_deref(),
            )
            .await?;
            c.transport = tls.transport.clone();
            let ca_pem = std::fs::read_to_string(pki.join("ca.crt"))
                .with_context(|| format!("reading {}", pki.join("ca.crt").display()))?;
            node_api_tls = Some(gantry_security::tls::server_config(
                &ca_pem,
                tls.certs.clone(),
            )?);
            if registry_mtls.is_none() {
                // the node certificate is the registry credential too (its files are
                // re-read when renewal replaces them)
                registry_mtls = Some(gantry_agent::distribution::tls::client_config(
                    &gantry_agent::distribution::tls::TlsFiles {
                        cert: pki.join("node.crt"),
                        key: pki.join("node.key"),
                        ca: pki.join("ca.crt"),
                    },
                )?);
            }
            let renew = tokio::spawn(gantry_agent::cluster::credentials::renew_forever(
                tls,
                c.join.clone(),
            ));
            (Some(c), Some(AbortOnDrop(renew)))
        }
        other => (other, None),
    };
    let (mut cluster_cfg, node_api_listener) = match cluster_cfg {
        Some(mut c) => {
            let l = bind_node_api(&args, &c).await?;
            if let Some((_, addr)) = &l {
                c.api = Some(addr.clone());
            }
            (Some(c), l.map(|(l, _)| l))
        }
        None => (None, None),
    };
    // Shims and gantry's runtime run from the small `gantry-runtime` when it is installed
    // beside this binary, else from this binary.
    let own = gantry_agent::supervisor::programs::for_current_exe()
        .context("locating the gantry binary for shims")?;
    let cfg = EngineConfig {
        root: args.root,
        run_root: args.run_root,
        runtime_program: args.runtime.clone().unwrap_or_else(|| own.program.clone()),
        runtime_args: match args.runtime {
            Some(_) => Vec::new(),
            None => own.runtime_args,
        },
        shim_program: own.program,
        shim_args: own.shim_args,
        log_max_bytes: args.log_max_size,
        log_max_files: args.log_max_files,
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        cgroup_parent: args.cgroup_parent,
    };
    let store = gantry_agent::image::ImageStore::open(&cfg.root)
        .with_context(|| format!("opening the image store in {}", cfg.root.display()))?;
    let build_runner = Arc::new(gantry_agent::build::run::OciRuntimeRunner {
        program: cfg.runtime_program.clone(),
        args: cfg.runtime_args.clone(),
        root: cfg.run_root.join("build-runtime"),
        cgroup_parent: cfg.cgroup_parent.clone(),
    });
    let overlay_node = match (&cluster_cfg, args.overlay) {
        (Some(c), true) => Some(overlay_node(c).await?),
        _ => None,
    };
    let network = if args.no_bridge {
        None
    } else {
        let subnet = match &overlay_node {
            Some((net, _, _)) => net.to_string(),
            None => args.subnet.clone(),
        };
        let mut bridge = BridgeConfig::custom(
            cfg.root.join("network"),
            &args.bridge,
            &subnet,
            &args.chain_prefix,
        )?;
        if let Some((_, _, cluster_cidr)) = &overlay_node {
            bridge.overlay_cidr = Some(*cluster_cidr);
            bridge.dns = Some(bridge.gateway);
        }
        let net = BridgeNetwork::open(bridge)
            .await
            .context("setting up the bridge network (use --no-bridge to run without one)")?;
        Some(net)
    };
    let overlay = match (&overlay_node, &network) {
        (Some((subnet, local, _)), Some(net)) => Some(
            start_overlay(*subnet, *local, net.config().gateway)
                .await
                .context("setting up the cluster overlay")?,
        ),
        _ => None,
    };
    let pulls = RegistryImages {
        store: store.clone(),
        config: gantry_agent::distribution::ClientConfig {
            insecure_registries: args.insecure_registries.clone(),
            mtls: registry_mtls,
            ..Default::default()
        },
    };
    let build_store = store.clone();
    let engine: Arc<Engine> = Engine::open(cfg, Arc::new(StoreImages { store }), network)?;
    // Builds pull with the agent's registry settings and run `RUN --network bridge` steps
    // on the engine's bridge.
    let builds = gantry_agent::build::service::BuildService::new(build_store, build_runner)
        .with_net(gantry_agent::build::net::BuildNet {
            rt: tokio::runtime::Handle::current(),
            registry: pulls.config.clone(),
            bridge: engine.clone(),
        });
    engine.recover().await?;
    let _follower = match (overlay, &cluster_cfg) {
        (Some((overlay, table, dns)), Some(c)) => {
            let e = engine.clone();
            let (iso_chain, mesh_chain) = engine
                .network()
                .map(|n| (n.config().iso_chain(), n.config().mesh_chain()))
                .unwrap_or_default();
            let follower = follower::Follower {
                join: c.join.clone(),
                transport: c.transport.clone(),
                name: c.name.clone(),
                overlay,
                table,
                local: Arc::new(move || follower::engine_addresses(&e)),
                firewall: gantry_agent::network::IptablesFirewall::default(),
                iso_chain,
                mesh_chain,
                mesh_applied: c.mesh.applied.clone(),
            };
            tracing::info!(dns = %dns.addr(), "cluster overlay up");
            Some((AbortOnDrop(tokio::spawn(follower.run())), dns))
        }
        _ => None,
    };
    let _node_api = node_api_listener.map(|l| {
        let engine = engine.clone();
        let registry = cluster::api::Registry {
            store: pulls.store.clone(),
            config: pulls.config.clone(),
        };
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = cluster::api::serve(l, engine, Some(registry), node_api_tls).await {
                tracing::error!("node API: {e}");
            }
        }))
    });
    let cluster = match cluster_cfg.take() {
        Some(cfg) => {
            tracing::info!(join = ?cfg.join, name = %cfg.name, "cluster mode");
            let containers =
                Arc::new(EngineContainers::new(engine.clone()).with_node(&cfg.name, &cfg.labels));
            Some(tokio::spawn(gantry_agent::cluster::run(
                cfg,
                containers,
                Arc::new(pulls),
            )))
        }
        None => None,
    };
    // 0600 from its first instant (bound in a private directory, then renamed into place)
    let listener = gantry_agent::engine::socket::bind_private(&sock)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .context("the engine API socket")?;
    tracing::info!(socket = %sock.display(), "engine API listening");
    let trimmer = tokio::spawn(gantry_controller::memory::trim_periodically(
        gantry_controller::memory::AGENT_TRIM_EVERY,
    ));
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down; containers keep running under their shims");
    };
    use gantry_proto::limits::{resource_exhausted, ENGINE_REPLY_MAX, ENGINE_REQUEST_MAX};
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(resource_exhausted))
        .add_service(
            EngineServer::new(EngineService::new(engine))
                .max_decoding_message_size(ENGINE_REQUEST_MAX)
                .max_encoding_message_size(ENGINE_REPLY_MAX),
        )
        .add_service(
            gantry_proto::engine::builder_server::BuilderServer::new(builds)
                .max_decoding_message_size(ENGINE_REQUEST_MAX)
                .max_encoding_message_size(ENGINE_REPLY_MAX),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving the engine API")?;
    let _ = std::fs::remove_file(&sock);
    trimmer.abort();
    if let Some(c) = cluster {
        c.abort();
    }
    Ok(())
}

/// `--teardown-network` (see its help).
async fn teardown_network(args: &AgentArgs) -> anyhow::Result<()> {
    let containers = args.root.join("containers");
    let n = std::fs::read_dir(&containers)
        .map(|d| d.count())
        .unwrap_or(0);
    if n > 0 {
        anyhow::bail!(
            "--teardown-network: {n} containers are recorded in {} (remove them first, e.g. drain the node); nothing was removed",
            containers.display()
        );
    }
    let cfg = BridgeConfig::custom(
        args.root.join("network"),
        &args.bridge,
        &args.subnet,
        &args.chain_prefix,
    )?;
    gantry_agent::network::teardown_node(
        &cfg,
        &NetlinkLinks::new()?,
        &gantry_agent::network::IptablesFirewall::default(),
        overlay::DEFAULT_VXLAN,
    )
    .await
    .context("removing this node's networking")?;
    println!(
        "removed bridge {}, vxlan {}, chains {}-*, leases",
        cfg.bridge,
        overlay::DEFAULT_VXLAN,
        cfg.chain_prefix
    );
    Ok(())
}

/// Registers to learn this node's subnet; the subnet, the underlay address and the cluster
/// network's CIDR.
async fn overlay_node(
    c: &ClusterConfig,
) -> anyhow::Result<(ipnet::Ipv4Net, std::net::Ipv4Addr, ipnet::Ipv4Net)> {
    let local = overlay::underlay_addr(&c.advertise).with_context(|| {
        format!(
            "--advertise {:?}: --overlay needs this node's IPv4 address on the underlay",
            c.advertise
        )
    })?;
    let (subnet, cidr) = follower::node_subnet(c, std::time::Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(%subnet, %local, %cidr, "node subnet of the cluster network");
    Ok((subnet, local, cidr))
}

type OverlayParts = (
    Arc<overlay::Overlay<NetlinkLinks>>,
    Arc<std::sync::RwLock<dns::ServiceTable>>,
    dns::DnsServer,
);

/// The vxlan device (stale one replaced) and the DNS server on the bridge gateway.
async fn start_overlay(
    subnet: ipnet::Ipv4Net,
    local: std::net::Ipv4Addr,
    gateway: std::net::Ipv4Addr,
) -> anyhow::Result<OverlayParts> {
    let ov = overlay::Overlay::open(
        overlay::OverlayConfig::new(local, subnet),
        NetlinkLinks::new()?,
    )
    .await?;
    let table = Arc::new(std::sync::RwLock::new(dns::ServiceTable::default()));
    let upstreams =
        dns::upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let server = dns::DnsServer::bind((gateway, 53).into(), table.clone(), upstreams).await?;
    Ok((Arc::new(ov), table, server))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Bind the node API's listener (unless `--api-listen none`); it and the address clients
/// dial, which the node registers.
async fn bind_node_api(
    args: &AgentArgs,
    c: &ClusterConfig,
) -> anyhow::Result<Option<(tokio::net::TcpListener, String)>> {
    if args.api_listen == "none" {
        return Ok(None);
    }
    let want: std::net::SocketAddr = args.api_listen.parse().with_context(|| {
        format!(
            "--api-listen {:?}: expected IP:PORT or none",
            args.api_listen
        )
    })?;
    let l = tokio::net::TcpListener::bind(want)
        .await
        .with_context(|| format!("--api-listen {want}: binding the node API"))?;
    let bound = l.local_addr()?;
    let addr = match &args.api_advertise {
        Some(a) => a.clone(),
        None if want.ip().is_unspecified() => {
            format!("{}:{}", advertised_host(&c.advertise), bound.port())
        }
        None => bound.to_string(),
    };
    tracing::info!(listen = %bound, advertise = %addr, "node API listening");
    Ok(Some((l, addr)))
}

/// The host part of an `--advertise` value (`host`, `host:port`, `[v6]:port`).
fn advertised_host(advertise: &str) -> String {
    if let Ok(sa) = advertise.parse::<std::net::SocketAddr>() {
        return match sa.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
    }
    match advertise.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h.into(),
        _ if advertise.contains(':') && !advertise.starts_with('[') => format!("[{advertise}]"),
        _ => advertise.to_string(),
    }
}

/// The cluster-mode configuration, when --join is given.
fn cluster_config(args: &AgentArgs) -> anyhow::Result<Option<ClusterConfig>> {
    if args.join.is_empty() {
        return Ok(None);
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name (or give --name)")?
            .trim()
            .to_string(),
    };
    let capacity = cluster::detect_capacity()?;
    Ok(Some(ClusterConfig {
        join: args.join.clone(),
        transport: Default::default(),
        advertise: args.advertise.clone().unwrap_or_else(|| name.clone()),
        api: None,
        name,
        labels: cluster::parse_labels(&args.labels)?,
        capacity,
        reserved: Resources {
            cpu_millis: args.reserve_cpu_millis,
            memory_bytes: args.reserve_memory_bytes,
            pids: 0,
        },
        heartbeat: std::time::Duration::from_millis(args.heartbeat_ms),
        resync: std::time::Duration::from_secs(1),
        drain_delay: std::time::Duration::from_millis(args.drain_delay_ms),
        mesh: Default::default(),
        stop_timeout_s: args.stop_timeout,
        pull_backoff: std::time::Duration::from_millis(args.pull_backoff_ms),
        pull_backoff_max: std::time::Duration::from_secs(60),
    }))
}

/// `--cgroup-parent`: see [`gantry_agent::engine::spec::check_cgroup_parent`].
fn parse_cgroup_parent(s: &str) -> Result<String, String> {
    gantry_agent::engine::spec::check_cgroup_parent(s)?;
    Ok(s.trim_matches('/').to_string())
}

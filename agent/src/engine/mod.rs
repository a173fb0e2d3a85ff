//! The engine: the local container lifecycle behind `gantry agent` (docker's dockerd).
//!
//! Vocabulary:
//! - **record**: a container's metadata in the sled store ([`store`], [`record`]): its
//!   config (fixed at create) and its run state (status, shim, exit code, restarts);
//! - **container dirs**: `ROOT/containers/ID/` — `upper/`, `work/` (the overlay's writable
//!   layer), `bundle/` (`config.json` + `rootfs/`), `container.log` ([`rootfs`]);
//! - **run dir**: `RUN_ROOT/containers/ID/`, the shim's files ([`crate::supervisor`]);
//! - **netns file**: `RUN_ROOT/netns/ID`, a bridge container's pinned network namespace,
//!   wired (veth, address, published ports: [`crate::network`]) at create and released at
//!   rm, so the container keeps its address across stop and start;
//! - **monitor**: the agent task that waits on a shim's socket for the container's exit,
//!   records it and applies the restart policy.
//!
//! Every verb is refresh → check → act → save under the container's lock; the waits of
//! `stop`/`wait` happen outside it. The agent never forks a container itself: it spawns a
//! shim, which does.

pub mod commit;
pub mod config;
pub mod images;
pub mod record;
pub mod rootfs;
pub mod service;
pub mod socket;
pub mod spec;
pub mod stats;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::network::{self, netns, BridgeNetwork, NetworkError};
use crate::supervisor::{
    self, oci::OciRuntime, timefmt, RunDir, ShimConfig, ShimStatus, SupervisorError,
};
use config::{ProcessFlags, Resources};
use images::{ImageSource, ResolvedImage};
use record::{ContainerConfig, ContainerRecord, NetworkInfo, RestartPolicy, RunState, Status};
use rootfs::ContainerDirs;
use spec::NetNs;
use store::Store;

/// Errors of the engine; [`service`] maps them to gRPC statuses in one place.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no such {what}: {reference}")]
    NotFound {
        what: &'static str,
        reference: String,
    },
    #[error(
        "container reference {reference:?} matches more than one container: use more of the id"
    )]
    Ambiguous { reference: String },
    #[error("the container name {name:?} is already in use by container {id}")]
    NameInUse { name: String, id: String },
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidArgument {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("container {id} is {status}: cannot {action}{hint}")]
    InvalidState {
        id: String,
        status: &'static str,
        action: &'static str,
        hint: &'static str,
    },
    #[error("metadata store: {source}")]
    Store {
        #[source]
        source: sled::Error,
    },
    #[error("container record {id} is unreadable: {reason}")]
    CorruptRecord { id: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount {target}: {reason}")]
    Mount {
        target: PathBuf,
        reason: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("container {id}: {source}")]
    Supervisor {
        id: String,
        #[source]
        source: SupervisorError,
    },
    #[error("image {reference}: {reason}")]
    Image { reference: String, reason: String },
    #[error("{what} is not supported by this agent: {hint}")]
    NotSupported { what: String, hint: &'static str },
    #[error("container {id} did not stop within {seconds} s of SIGKILL")]
    StopTimeout { id: String, seconds: u64 },
    #[error("image {reference} is in use by container {container}: remove the container first or use rmi -f")]
    ImageInUse {
        reference: String,
        container: String,
    },
    #[error("container {id}: network: {source}")]
    Network {
        id: String,
        #[source]
        source: NetworkError,
    },
}

fn no_bridge() -> EngineError {
    EngineError::NotSupported {
        what: "--network bridge".into(),
        hint: "this agent runs without a bridge network (started with --no-bridge): use --network none or --network host",
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_path_buf();
    move |source| EngineError::Io { what, path, source }
}

/// Where the engine keeps things and which programs it runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Persistent state: `meta/` (sled), `containers/`.
    pub root: PathBuf,
    /// Volatile state: `containers/` (run dirs), `runtime/` (the OCI runtime's root).
    pub run_root: PathBuf,
    /// The runc-compatible runtime the shims drive (its `root` is set from `run_root`).
    pub runtime_program: PathBuf,
    pub runtime_args: Vec<String>,
    /// The shim: program and arguments before `--config` (`gantry shim`).
    pub shim_program: PathBuf,
    pub shim_args: Vec<String>,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// Mount point of the cgroup file systems.
    pub cgroup_root: PathBuf,
    /// The cgroup every container's cgroup is made under (`--cgroup-parent`, as dockerd's;
    /// [`DEFAULT_CGROUP_PARENT`] by default), checked by [`spec::check_cgroup_parent`].
    pub cgroup_parent: String,
}

/// The agent's default cgroup parent: containers are at `/gantry/ID`.
pub const DEFAULT_CGROUP_PARENT: &str = "gantry";

/// What `create` takes (the engine API's request, decoded).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub image: String,
    pub rootfs: Option<PathBuf>,
    pub name: String,
    pub process: ProcessFlags,
    pub volumes: Vec<String>,
    pub tmpfs: Vec<String>,
    pub publish: Vec<String>,
    pub network: String,
    pub resources: Resources,
    pub restart: String,
    pub read_only: bool,
    pub auto_remove: bool,
    pub labels: BTreeMap<String, String>,
    pub interactive: bool,
    pub stop_signal: String,
    pub hostname: String,
}

pub struct Engine {
    cfg: EngineConfig,
    pub(crate) store: Store,
    images: Arc<dyn ImageSource>,
    /// The node's bridge network; `None` when the agent runs without one (then
    /// `--network bridge` is refused).
    network: Option<BridgeNetwork>,
    runtime: OciRuntime,
    /// Bumped on every state change; `wait`, `stop` and `logs -f` watch it.
    changed: watch::Sender<u64>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

const ID_LEN: usize = 64;

fn new_id() -> String {
    use rand::Rng;
    let mut b = [0u8; ID_LEN / 2];
    rand::rng().fill(&mut b);
    hex::encode(b)
}

fn generate_name(id: &str) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "swift", "witty",
    ];
    const NOUN: &[&str] = &[
        "turing", "hopper", "lovelace", "ritchie", "thompson", "knuth", "liskov", "dijkstra",
        "shannon", "curie",
    ];
    let n = u64::from_str_radix(&id[..12], 16).unwrap_or(0);
    format!(
        "{}_{}_{}",
        ADJ[(n % 10) as usize],
        NOUN[((n / 10) % 10) as usize],
        &id[..6]
    )
}

/// Longest container name (the runtime's limit for container ids, docker's practical one).
pub const MAX_CONTAINER_NAME_LEN: usize = 128;

fn valid_name(name: &str) -> bool {
    if name.len() > MAX_CONTAINER_NAME_LEN {
        return false;
    }
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl Engine {
    /// Opens the store and prepares directories; call [`Engine::recover`] next.
    pub fn open(
        cfg: EngineConfig,
        images: Arc<dyn ImageSource>,
        network: Option<BridgeNetwork>,
    ) -> Result<Arc<Engine>, EngineError> {
        spec::check_cgroup_parent(&cfg.cgroup_parent).map_err(|reason| {
            EngineError::InvalidArgument {
                field: "cgroup parent",
                value: cfg.cgroup_parent.clone(),
                reason,
            }
        })?;
        for d in [
            cfg.root.join("containers"),
            cfg.run_root.join("containers"),
            cfg.run_root.join("runtime"),
            cfg.run_root.join("netns"),
        ] {
            std::fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
        }
        // the shims' sockets live below: root only, whatever the umask
        let shims = cfg.run_root.join("containers");
        std::fs::set_permissions(&shims, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err("chmod 0700", &shims))?;
        let store = Store::open(&cfg.root.join("meta"))?;
        let runtime = OciRuntime {
            program: cfg.runtime_program.clone(),
            args: cfg.runtime_args.clone(),
            root: cfg.run_root.join("runtime"),
        };
        Ok(Arc::new(Engine {
            cfg,
            store,
            images,
            network,
            runtime,
            changed: watch::channel(0).0,
            locks: Mutex::new(HashMap::new()),
        }))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn dirs(&self, id: &str) -> ContainerDirs {
        ContainerDirs(self.cfg.root.join("containers").join(id))
    }

    fn run_dir(&self, id: &str) -> RunDir {
        RunDir(self.cfg.run_root.join("containers").join(id))
    }

    /// Where a bridge container's network namespace is pinned.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.cfg.run_root.join("netns").join(id)
    }

    pub fn network(&self) -> Option<&BridgeNetwork> {
        self.network.as_ref()
    }

    /// Bridge mode: pins a new netns and attaches it (veth, address, published ports).
    /// On failure nothing is left (the network undoes its half-done attach).
    async fn attach_network(&self, rec: &ContainerRecord) -> Result<NetworkInfo, EngineError> {
        let net_err = |source| EngineError::Network {
            id: rec.id.clone(),
            source,
        };
        let net = self.network.as_ref().ok_or_else(no_bridge)?;
        let ports = network::parse_port_specs(&rec.config.publish).map_err(net_err)?;
        let path = self.netns_path(&rec.id);
        netns::create(&path).map_err(net_err)?;
        match net.attach(&rec.id, &path, &ports).await {
            Ok(a) => Ok(NetworkInfo {
                ip: a.ip,
                prefix_len: a.prefix_len,
                gateway: a.gateway,
                host_veth: a.host_veth,
                ports: a.ports,
            }),
            Err(e) => {
                let _ = netns::remove(&path);
                Err(net_err(e))
            }
        }
    }

    /// Removes everything the bridge gave the container (veth, rules, lease, netns file).
    async fn release_network(&self, id: &str) -> Result<(), EngineError> {
        let net_err = |source| EngineError::Network {
            id: id.to_string(),
            source,
        };
        if let Some(net) = &self.network {
            net.detach(id).await.map_err(net_err)?;
        }
        netns::remove(&self.netns_path(id)).map_err(net_err)
    }

    /// Before a start: a bridge container whose pinned netns is gone (the host rebooted,
    /// `RUN_ROOT` is volatile) gets its stale lease dropped and a new attachment.
    async fn ensure_network(&self, rec: &mut ContainerRecord) -> Result<(), EngineError> {
        if rec.config.network != "bridge" || netns::is_pinned(&self.netns_path(&rec.id)) {
            return Ok(());
        }
        self.release_network(&rec.id).await?;
        rec.network = Some(self.attach_network(rec).await?);
        self.store.save(rec)
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("locks poisoned")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn resolve(&self, reference: &str) -> Result<ContainerRecord, EngineError> {
        self.store.resolve(reference)
    }

    pub fn list(&self) -> Result<Vec<ContainerRecord>, EngineError> {
        self.store.list()
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dirs(id).log()
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cfg.cgroup_root
    }

    /// Validates everything, then records the container and makes its directories.
    pub async fn create(
        self: &Arc<Self>,
        opts: CreateOptions,
    ) -> Result<ContainerRecord, EngineError> {
        let (mut rec, dir) = self.plan_create(opts)?;
        self.store.insert_new(&rec)?;
        let this = self.clone();
        let r2 = rec.clone();
        let prepared = tokio::task::spawn_blocking(
            move || -> Result<(Vec<rootfs::RootMount>, Option<String>), EngineError> {
                let dirs = this.dirs(&r2.id);
                dirs.create()?;
                match dir {
                    Some(d) => Ok((vec![rootfs::dir_overlay(&dirs, &d)], None)),
                    None => Ok((this.images.prepare(&r2.id, &r2.image)?, Some(r2.id.clone()))),
                }
            },
        )
        .await
        .expect("prepare task panicked");
        let saved = match prepared {
            Ok((mounts, snapshot)) => {
                rec.rootfs = mounts;
                rec.snapshot = snapshot;
                if rec.config.network == "bridge" {
                    match self.attach_network(&rec).await {
                        Ok(info) => {
                            rec.network = Some(info);
                            self.store.save(&rec)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    self.store.save(&rec)
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            if rec.network.is_some() {
                let _ = self.release_network(&rec.id).await;
            }
            let _ = self.images.release(&rec.id);
            let _ = std::fs::remove_dir_all(&self.dirs(&rec.id).0);
            let _ = self.store.remove(&rec);
            return Err(e);
        }
        self.notify();
        Ok(rec)
    }

    /// The pure part of create: every flag checked, the image resolved; no side effect.
    fn plan_create(
        &self,
        opts: CreateOptions,
    ) -> Result<(ContainerRecord, Option<PathBuf>), EngineError> {
        if !opts.name.is_empty() && !valid_name(&opts.name) {
            return Err(EngineError::InvalidArgument {
                field: "--name",
                value: opts.name.chars().take(MAX_CONTAINER_NAME_LEN + 1).collect(),
                reason: format!(
                    "use at most {MAX_CONTAINER_NAME_LEN} letters, digits and _ . - (starting \
                     with a letter or digit)"
                ),
            });
        }
        let mut mounts = Vec::new();
        for v in &opts.volumes {
            mounts.push(config::parse_volume(v)?);
        }
        for t in &opts.tmpfs {
            mounts.push(config::parse_tmpfs(t)?);
        }
        config::check_resources(&opts.resources)?;
        let restart = RestartPolicy::parse(&opts.restart)?;
        if opts.auto_remove && restart != RestartPolicy::No {
            return Err(EngineError::InvalidArgument {
                field: "--restart",
                value: opts.restart,
                reason: "a restart policy cannot be combined with --rm".into(),
            });
        }
        let network = if opts.network.is_empty() {
            "bridge".to_string()
        } else {
            opts.network.clone()
        };
        match network.as_str() {
            "host" | "none" => {
                if !opts.publish.is_empty() {
                    return Err(EngineError::InvalidArgument {
                        field: "--publish",
                        value: opts.publish.join(","),
                        reason: format!("ports cannot be published with --network {network}"),
                    });
                }
            }
            "bridge" => {
                if self.network.is_none() {
                    return Err(no_bridge());
                }
                network::parse_port_specs(&opts.publish).map_err(|e| {
                    EngineError::InvalidArgument {
                        field: "--publish",
                        value: opts.publish.join(","),
                        reason: e.to_string(),
                    }
                })?;
            }
            other => {
                return Err(EngineError::InvalidArgument {
                    field: "--network",
                    value: other.to_string(),
                    reason: "expected bridge, host or none".into(),
                })
            }
        }
        let image: ResolvedImage = match &opts.rootfs {
            Some(dir) => images::rootfs_dir(dir)?,
            None => self.images.resolve(&opts.image)?,
        };
        let process = config::merge_process(&image.config, &opts.process)?;
        let stop_signal = match (opts.stop_signal.as_str(), image.config.stop_signal.as_str()) {
            ("", "") => libc::SIGTERM,
            ("", s) => config::parse_signal("StopSignal", s)?,
            (s, _) => config::parse_signal("--stop-signal", s)?,
        };
        let id = new_id();
        let name = if opts.name.is_empty() {
            generate_name(&id)
        } else {
            opts.name
        };
        let hostname = if opts.hostname.is_empty() {
            id[..12].to_string()
        } else {
            opts.hostname
        };
        let dir = image.dir.clone();
        let rec = ContainerRecord {
            image: image.reference,
            image_id: image.id,
            rootfs: Vec::new(),
            snapshot: None,
            created_nanos: timefmt::now_nanos(),
            config: ContainerConfig {
                process,
                hostname,
                mounts,
                network,
                publish: opts.publish,
                resources: opts.resources,
                read_only: opts.read_only,
                interactive: opts.interactive,
                auto_remove: opts.auto_remove,
                restart,
                stop_signal,
                labels: opts.labels,
            },
            state: RunState {
                status: Some(Status::Created),
                ..Default::default()
            },
            network: None,
            cgroups_path: spec::cgroup_path(&self.cfg.cgroup_parent, &id),
            id,
            name,
        };
        Ok((rec, dir))
    }

    /// Starts a created or exited container (its upper dir, so its files, are kept).
    pub async fn start(self: &Arc<Self>, reference: &str) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        let rec = self.resolve(&rec.id)?;
        if rec.status() == Status::Running {
            // docker: starting a running container is a no-op.
            return Ok(());
        }
        self.start_locked(rec, false).await
    }

    async fn start_locked(
        self: &Arc<Self>,
        mut rec: ContainerRecord,
        is_restart: bool,
    ) -> Result<(), EngineError> {
        if let Err(e) = self.ensure_network(&mut rec).await {
            rec.state.error = e.to_string();
            self.store.save(&rec)?;
            return Err(e);
        }
        let this = self.clone();
        let r2 = rec.clone();
        let started = tokio::task::spawn_blocking(move || this.launch(&r2))
            .await
            .expect("launch task panicked");
        match started {
            Ok((shim, init)) => {
                rec.state.status = Some(Status::Running);
                rec.state.shim = Some(shim);
                rec.state.init = Some(init);
                rec.state.started_nanos = timefmt::now_nanos();
                rec.state.error.clear();
                if !is_restart {
                    rec.state.manually_stopped = false;
                }
                self.store.save(&rec)?;
                self.notify();
                self.spawn_monitor(rec.id.clone(), shim);
                Ok(())
            }
            Err(e) => {
                rec.state.error = e.to_string();
                if rec.state.status != Some(Status::Created) {
                    rec.state.status = Some(Status::Exited);
                    rec.state.exit_code = 128;
                }
                self.store.save(&rec)?;
                self.notify();
                Err(e)
            }
        }
    }

    /// Blocking: mount the root, write the spec, spawn the shim, read its report. Undoes
    /// the mount when anything fails.
    fn launch(
        &self,
        rec: &ContainerRecord,
    ) -> Result<(supervisor::ProcessId, supervisor::ProcessId), EngineError> {
        let dirs = self.dirs(&rec.id);
        rootfs::mount_root(&dirs, &rec.rootfs)?;
        let result = self.launch_mounted(rec, &dirs);
        if result.is_err() {
            let _ = rootfs::unmount(&dirs.rootfs());
        }
        result
    }

    fn launch_mounted(
        &self,
        rec: &ContainerRecord,
        dirs: &ContainerDirs,
    ) -> Result<(supervisor::ProcessId, supervisor::ProcessId), EngineError> {
        let root = dirs.rootfs();
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
        let (uid, gid) = config::resolve_user(&rec.config.process.user, &passwd, &group)?;
        let netns = match rec.config.network.as_str() {
            "host" => NetNs::Host,
            "bridge" => NetNs::Path(self.netns_path(&rec.id)),
            _ => NetNs::New,
        };
        let resolv = match netns {
            NetNs::Host => Some(PathBuf::from("/etc/resolv.conf")),
            NetNs::Path(_) => {
                let conf = match self.network.as_ref().and_then(|n| n.config().dns) {
                    Some(ns) => network::dns::container_resolv_conf(ns),
                    None => config::bridge_resolv_conf(
                        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                    ),
                };
                let path = dirs.0.join("resolv.conf");
                std::fs::write(&path, conf).map_err(io_err("write", &path))?;
                Some(path)
            }
            NetNs::New => None,
        };
        let spec = spec::build(spec::base_spec(), rec, uid, gid, &netns, resolv.as_ref());
        let config_path = dirs.bundle().join("config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&spec).expect("spec serializes"),
        )
        .map_err(io_err("write", &config_path))?;

        let run = self.run_dir(&rec.id);
        let _ = std::fs::remove_dir_all(&run.0);
        std::fs::create_dir_all(&run.0).map_err(io_err("create directory", &run.0))?;
        let shim_cfg = ShimConfig {
            id: rec.id.clone(),
            bundle: dirs.bundle(),
            run_dir: run.0.clone(),
            runtime: self.runtime.clone(),
            log_path: dirs.log(),
            log_max_bytes: self.cfg.log_max_bytes,
            log_max_files: self.cfg.log_max_files,
            unmount_on_exit: Some(root.clone()),
            interactive: rec.config.interactive,
        };
        supervisor::write_atomic(
            &run.config(),
            &serde_json::to_vec(&shim_cfg).expect("config serializes"),
        )
        .map_err(|source| EngineError::Supervisor {
            id: rec.id.clone(),
            source,
        })?;
        let shim_log =
            std::fs::File::create(run.shim_log()).map_err(io_err("create", &run.shim_log()))?;
        let mut child = std::process::Command::new(&self.cfg.shim_program)
            .args(&self.cfg.shim_args)
            .arg("--config")
            .arg(run.config())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .spawn()
            .map_err(io_err("spawn shim", &self.cfg.shim_program))?;
        let mut report = String::new();
        let mut out = child.stdout.take().expect("piped stdout");
        // The shim's first process exits at once; its grandchild writes the report and
        // closes the pipe.
        let _ = child.wait();
        let _ = out.read_to_string(&mut report);
        let line = report.lines().next().unwrap_or("").trim().to_string();
        let shim_failed = |message: String| EngineError::Supervisor {
            id: rec.id.clone(),
            source: SupervisorError::ShimStart {
                id: rec.id.clone(),
                message,
            },
        };
        if let Some(msg) = line.strip_prefix("error: ") {
            let _ = self.runtime.delete(&rec.id, true);
            return Err(shim_failed(msg.to_string()));
        }
        if !line.starts_with("ok ") {
            let log = std::fs::read_to_string(run.shim_log()).unwrap_or_default();
            return Err(shim_failed(format!(
                "no report from the shim ({:?}); its log: {}",
                line,
                log.trim()
            )));
        }
        let shim = supervisor::ProcessId::read(&run.shim_pid())
            .map_err(|source| EngineError::Supervisor {
                id: rec.id.clone(),
                source,
            })?
            .ok_or_else(|| shim_failed("no shim.pid".into()))?;
        let init = supervisor::ProcessId::read(&run.init_pid())
            .map_err(|source| EngineError::Supervisor {
                id: rec.id.clone(),
                source,
            })?
            .ok_or_else(|| shim_failed("no init.pid".into()))?;
        Ok((shim, init))
    }

    fn spawn_monitor(self: &Arc<Self>, id: String, shim: supervisor::ProcessId) {
        let this = self.clone();
        tokio::spawn(async move {
            let run = this.run_dir(&id);
            // The shim says `exit N` (or just closes) when the container is gone.
            if let Ok((_dir, path)) = supervisor::socket_connect_path(&run) {
                if let Ok(mut s) = tokio::net::UnixStream::connect(path).await {
                    drop(_dir);
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf).await;
                }
            }
            let status = loop {
                match supervisor::probe(&run) {
                    Ok(ShimStatus::Running { .. }) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "probing shim");
                        break ShimStatus::Lost;
                    }
                }
            };
            this.on_exit(&id, shim, status).await;
        });
    }

    /// Records an exit and applies `--rm` or the restart policy.
    async fn on_exit(self: &Arc<Self>, id: &str, shim: supervisor::ProcessId, status: ShimStatus) {
        let lock = self.lock_of(id);
        let g = lock.lock().await;
        let Ok(Some(mut rec)) = self.store.get(id) else {
            return;
        };
        if rec.state.shim != Some(shim) {
            return; // Already handled (recovery, or a newer start).
        }
        let (code, finished) = match &status {
            ShimStatus::Exited(r) => (r.exit_code, r.finished_unix_nanos),
            _ => {
                // The shim died without a record: clean up what it would have.
                let this = self.clone();
                let id2 = id.to_string();
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = this.runtime.delete(&id2, true);
                    let _ = rootfs::unmount(&this.dirs(&id2).rootfs());
                })
                .await;
                rec.state.error =
                    "the container's shim died without recording an exit status".into();
                (255, timefmt::now_nanos())
            }
        };
        let ran_for = Duration::from_nanos((finished - rec.state.started_nanos).max(0) as u64);
        rec.state.status = Some(Status::Exited);
        rec.state.exit_code = code;
        rec.state.finished_nanos = finished;
        rec.state.shim = None;
        rec.state.init = None;
        if rec.config.auto_remove {
            if let Err(e) = self.store.save(&rec) {
                tracing::error!(%id, error = %e, "saving exit");
            }
            drop(g);
            if let Err(e) = self.remove(id, true).await {
                tracing::warn!(%id, error = %e, "auto-remove");
            }
            return;
        }
        let restart = record::should_restart(rec.config.restart, code, &rec.state);
        if restart {
            rec.state.status = Some(Status::Restarting);
        }
        if let Err(e) = self.store.save(&rec) {
            tracing::error!(%id, error = %e, "saving exit");
        }
        self.notify();
        drop(g);
        if restart {
            let delay = record::restart_delay(rec.state.restart_count, ran_for);
            let this = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let lock = this.lock_of(&id);
                let _g = lock.lock().await;
                let Ok(Some(mut rec)) = this.store.get(&id) else {
                    return;
                };
                if rec.status() != Status::Restarting {
                    return; // stopped or removed meanwhile
                }
                rec.state.restart_count += 1;
                if let Err(e) = this.start_locked(rec, true).await {
                    tracing::warn!(%id, error = %e, "restart failed");
                }
            });
        }
    }

    /// On agent start: reattach to live shims, record exits that happened meanwhile, and
    /// apply restart policies (containerd's shim_load).
    pub async fn recover(self: &Arc<Self>) -> Result<(), EngineError> {
        self.reconcile_network().await?;
        for rec in self.store.list()? {
            match rec.status() {
                Status::Running => {
                    let shim = rec.state.shim;
                    let status =
                        supervisor::probe(&self.run_dir(&rec.id)).unwrap_or(ShimStatus::Lost);
                    match (status, shim) {
                        (ShimStatus::Running { shim: live, .. }, Some(s)) if live == s => {
                            tracing::info!(id = %rec.id, "reattached to live shim");
                            self.spawn_monitor(rec.id.clone(), s);
                        }
                        (status, Some(s)) => self.on_exit(&rec.id, s, status).await,
                        (_, None) => {}
                    }
                }
                Status::Restarting => {
                    let mut rec = rec;
                    rec.state.status = Some(Status::Exited);
                    self.store.save(&rec)?;
                    if record::should_restart(rec.config.restart, rec.state.exit_code, &rec.state) {
                        let _ = self.start(&rec.id).await;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Releases what the network holds for containers that have no record (an agent that
    /// died half way through a create or rm): leases, veths, port rules, netns files.
    async fn reconcile_network(&self) -> Result<(), EngineError> {
        let bridged: std::collections::HashSet<String> = self
            .store
            .list()?
            .into_iter()
            .filter(|r| r.config.network == "bridge")
            .map(|r| r.id)
            .collect();
        if let Some(net) = &self.network {
            let removed = net
                // A running build's `RUN` step (this agent's, or `gantry build --store`
                // on the same bridge) is not stale; a dead builder's is.
                .cleanup_stale(|id| {
                    bridged.contains(id) || crate::build::executor::of_live_builder(id)
                })
                .await
                .map_err(|source| EngineError::Network {
                    id: "(stale)".into(),
                    source,
                })?;
            if !removed.is_empty() {
                tracing::info!(?removed, "released the network of removed containers");
            }
        }
        let dir = self.cfg.run_root.join("netns");
        for e in std::fs::read_dir(&dir)
            .map_err(io_err("read directory", &dir))?
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            if !bridged.contains(&id) {
                netns::remove(&e.path()).map_err(|source| EngineError::Network {
                    id: id.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Sends a signal to the container's init (checked by start time, so never to a
    /// recycled pid).
    fn signal(&self, rec: &ContainerRecord, sig: i32) -> Result<(), EngineError> {
        let not_running = || EngineError::InvalidState {
            id: rec.id.clone(),
            status: rec.status().as_str(),
            action: "signal it",
            hint: "",
        };
        let init = rec.state.init.ok_or_else(not_running)?;
        if !init.is_alive() {
            return Err(not_running());
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init.pid),
            nix::sys::signal::Signal::try_from(sig).map_err(|_| EngineError::InvalidArgument {
                field: "--signal",
                value: sig.to_string(),
                reason: "not a signal of this system".into(),
            })?,
        )
        .map_err(|e| EngineError::Io {
            what: "signal process",
            path: PathBuf::from(format!("/proc/{}", init.pid)),
            source: e.into(),
        })
    }

    pub async fn kill(self: &Arc<Self>, reference: &str, sig: i32) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        let mut rec = self.resolve(&rec.id)?;
        if !rec.status().is_running() {
            return Err(EngineError::InvalidState {
                status: rec.status().as_str(),
                id: rec.id,
                action: "kill it",
                hint: " (it is not running)",
            });
        }
        rec.state.manually_stopped = true;
        self.store.save(&rec)?;
        self.signal(&rec, sig)
    }

    /// Waits until the container is not running (or `timeout` passes); its exit code.
    pub async fn wait_exit(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<i32>, EngineError> {
        let mut rx = self.changed.subscribe();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let rec = match self.store.get(id)? {
                Some(r) => r,
                None => return Ok(None),
            };
            if !matches!(rec.status(), Status::Running | Status::Restarting) {
                return Ok(Some(rec.state.exit_code));
            }
            let changed = rx.changed();
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, changed).await.is_err() {
                        return Ok(None);
                    }
                }
                None => {
                    let _ = changed.await;
                }
            }
        }
    }

    /// `stop`: the stop signal, then SIGKILL after `timeout`.
    pub async fn stop(
        self: &Arc<Self>,
        reference: &str,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        {
            let lock = self.lock_of(&rec.id);
            let _g = lock.lock().await;
            let mut rec = self.resolve(&rec.id)?;
            rec.state.manually_stopped = true;
            match rec.status() {
                Status::Running => {
                    self.store.save(&rec)?;
                    let _ = self.signal(&rec, rec.config.stop_signal);
                }
                Status::Restarting => {
                    rec.state.status = Some(Status::Exited);
                    self.store.save(&rec)?;
                    self.notify();
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        if self.wait_exit(&rec.id, Some(timeout)).await?.is_some() {
            return Ok(());
        }
        if let Ok(r) = self.resolve(&rec.id) {
            let _ = self.signal(&r, libc::SIGKILL);
        }
        let grace = 10;
        match self
            .wait_exit(&rec.id, Some(Duration::from_secs(grace)))
            .await?
        {
            Some(_) => Ok(()),
            None if self.store.get(&rec.id)?.is_none() => Ok(()),
            None => Err(EngineError::StopTimeout {
                id: rec.id,
                seconds: grace,
            }),
        }
    }

    /// `rm`: refuses a running container unless `force` (then SIGKILL); removes the
    /// record, directories, mounts and runtime state.
    pub async fn remove(self: &Arc<Self>, reference: &str, force: bool) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        if rec.status() == Status::Running {
            if !force {
                return Err(EngineError::InvalidState {
                    id: rec.id,
                    status: "running",
                    action: "remove it",
                    hint: ": stop it first or use rm -f",
                });
            }
            self.stop(&rec.id, Duration::ZERO).await?;
        }
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        let Some(rec) = self.store.get(&rec.id)? else {
            return Ok(()); // removed meanwhile (auto-remove)
        };
        if rec.status() == Status::Running {
            return Err(EngineError::InvalidState {
                id: rec.id,
                status: "running",
                action: "remove it",
                hint: ": it was started again meanwhile",
            });
        }
        let this = self.clone();
        let id = rec.id.clone();
        tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
            let _ = this.runtime.delete(&id, true);
            let dirs = this.dirs(&id);
            rootfs::unmount(&dirs.rootfs())?;
            let run = this.run_dir(&id);
            let _ = std::fs::remove_dir_all(&run.0);
            this.images.release(&id)?;
            std::fs::remove_dir_all(&dirs.0)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(io_err("remove", &dirs.0))
        })
        .await
        .expect("remove task panicked")?;
        self.release_network(&rec.id).await?;
        self.store.remove(&rec)?;
        self.locks.lock().expect("locks poisoned").remove(&rec.id);
        self.notify();
        Ok(())
    }

    /// `commit`: the container's writable layer as a new image `target` on its image
    /// (see [`commit`]). A running container is frozen (cgroup freezer) meanwhile so the
    /// layer is consistent, as docker's `commit --pause` does. The new image's id.
    pub async fn commit(
        self: &Arc<Self>,
        reference: &str,
        target: &str,
        mut meta: commit::CommitMeta,
        pause: bool,
    ) -> Result<String, EngineError> {
        let rec = self.resolve(reference)?;
        let lock = self.lock_of(&rec.id);
        let _g = lock.lock().await;
        let rec = self.resolve(&rec.id)?;
        let upper = rec
            .rootfs
            .first()
            .and_then(|m| match m.kind.as_str() {
                "bind" => Some(PathBuf::from(&m.source)),
                _ => m.upperdir(),
            })
            .filter(|_| rec.snapshot.is_some() && !rec.image_id.is_empty())
            .ok_or_else(|| EngineError::InvalidArgument {
                field: "CONTAINER",
                value: rec.name.clone(),
                reason: format!(
                    "it runs from {} (--rootfs): only containers made from an image can be committed",
                    rec.image
                ),
            })?;
        meta.container = rec.id[..12].to_string();
        meta.created = timefmt::format_rfc3339(timefmt::now_nanos());
        let freezer = (pause && rec.status() == Status::Running)
            .then(|| Freezer::find(&self.cfg.cgroup_root, &rec.cgroup_path()))
            .flatten();
        if let Some(f) = &freezer {
            f.set(true).map_err(io_err("freeze", &f.path))?;
        }
        let this = self.clone();
        let r2 = rec.clone();
        let target2 = target.to_string();
        let done = tokio::task::spawn_blocking(move || {
            this.images
                .commit(&upper, &r2.image, &r2.image_id, &target2, &meta)
        })
        .await
        .expect("commit task panicked");
        if let Some(f) = &freezer {
            f.set(false).map_err(io_err("thaw", &f.path))?;
        }
        done
    }

    /// `rmi`: refuses an image a container was made from unless `force`; removes the name
    /// and the blobs and snapshots nothing uses any more. The digests of blobs deleted.
    pub async fn remove_image(
        self: &Arc<Self>,
        reference: &str,
        force: bool,
    ) -> Result<Vec<String>, EngineError> {
        let id = self.images.image_id(reference)?;
        let records = self.list()?;
        if !force {
            if let Some(user) = records.iter().find(|r| r.image_id == id) {
                return Err(EngineError::ImageInUse {
                    reference: reference.to_string(),
                    container: format!("{} ({})", user.name, &user.id[..12]),
                });
            }
        }
        // Containers' snapshots are keyed by container id; records made but not yet
        // prepared are kept too.
        let keep: std::collections::HashSet<String> = records.into_iter().map(|r| r.id).collect();
        let this = self.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || this.images.remove(&reference, &keep))
            .await
            .expect("rmi task panicked")
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn runtime(&self) -> &OciRuntime {
        &self.runtime
    }

    pub fn run_dir_of(&self, id: &str) -> RunDir {
        self.run_dir(id)
    }
}

/// A container's cgroup freezer: `freezer.state` on v1, `cgroup.freeze` on v2.
struct Freezer {
    path: PathBuf,
    v2: bool,
}

impl Freezer {
    /// The container's freezer file, if its cgroup has one.
    fn find(cgroup_root: &Path, cgroup: &str) -> Option<Freezer> {
        let rel = cgroup.trim_start_matches('/');
        let v1 = cgroup_root.join("freezer").join(rel).join("freezer.state");
        let v2 = cgroup_root.join(rel).join("cgroup.freeze");
        if v1.exists() {
            Some(Freezer {
                path: v1,
                v2: false,
            })
        } else if v2.exists() {
            Some(Freezer { path: v2, v2: true })
        } else {
            None
        }
    }

    /// Freezes or thaws, waiting (bounded) until v1 reports the state reached.
    fn set(&self, frozen: bool) -> std::io::Result<()> {
        let value = match (self.v2, frozen) {
            (true, true) => "1",
            (true, false) => "0",
            (false, true) => "FROZEN",
            (false, false) => "THAWED",
        };
        std::fs::write(&self.path, value)?;
        if !self.v2 {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::fs::read_to_string(&self.path)?.trim() != value {
                if std::time::Instant::now() > deadline {
                    return Err(std::io::Error::other(format!(
                        "still not {value} after 5 s"
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

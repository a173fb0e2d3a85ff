//! The engine API (`gantry.engine.v1.Engine`) over an [`Engine`]: decoding requests,
//! streaming logs and exec output, and the one place engine errors become gRPC statuses.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use gantry_proto::engine as pb;
use gantry_proto::engine::engine_server::Engine as EngineApi;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use super::config::{self, ProcessFlags, Resources};
use super::record::{ContainerRecord, Status};
use super::{commit, stats, CreateOptions, Engine, EngineError};
use crate::supervisor::logfile;

impl From<EngineError> for GrpcStatus {
    fn from(e: EngineError) -> GrpcStatus {
        let msg = gantry_proto::limits::status_message(e.to_string());
        match e {
            EngineError::NotFound { .. } => GrpcStatus::not_found(msg),
            EngineError::NameInUse { .. } => GrpcStatus::already_exists(msg),
            EngineError::InvalidArgument { .. } | EngineError::Ambiguous { .. } => {
                GrpcStatus::invalid_argument(msg)
            }
            EngineError::InvalidState { .. } | EngineError::ImageInUse { .. } => {
                GrpcStatus::failed_precondition(msg)
            }
            EngineError::Network {
                source: crate::network::NetworkError::PortInUse { .. },
                ..
            } => GrpcStatus::already_exists(msg),
            EngineError::NotSupported { .. } => GrpcStatus::unimplemented(msg),
            EngineError::StopTimeout { .. } => GrpcStatus::deadline_exceeded(msg),
            _ => GrpcStatus::internal(msg),
        }
    }
}

pub struct EngineService {
    engine: Arc<Engine>,
}

impl EngineService {
    pub fn new(engine: Arc<Engine>) -> Self {
        EngineService { engine }
    }
}

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, GrpcStatus>> + Send>>;

fn summary(r: &ContainerRecord) -> pb::ContainerSummary {
    pb::ContainerSummary {
        id: r.id.clone(),
        name: r.name.clone(),
        image: r.image.clone(),
        command: r.config.process.args.join(" "),
        created_unix: r.created_nanos / 1_000_000_000,
        state: r.status().as_str().to_string(),
        exit_code: r.state.exit_code,
        started_unix: r.state.started_nanos / 1_000_000_000,
        finished_unix: r.state.finished_nanos / 1_000_000_000,
        ports: r
            .network
            .iter()
            .flat_map(|n| &n.ports)
            .map(|p| pb::PortMapping {
                host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                host_port: p.host_port.into(),
                container_port: p.container_port.into(),
                protocol: p.protocol.as_str().to_string(),
            })
            .collect(),
        labels: r.config.labels.clone().into_iter().collect(),
        pid: r.state.init.map_or(0, |p| p.pid as u32),
        restart_count: r.state.restart_count,
    }
}

/// `--filter` of ps: `name=`, `id=`, `status=`, `label=k[=v]`.
fn matches_filter(r: &ContainerRecord, f: &str) -> Result<bool, EngineError> {
    let (k, v) = f
        .split_once('=')
        .ok_or_else(|| EngineError::InvalidArgument {
            field: "--filter",
            value: f.to_string(),
            reason: "expected KEY=VALUE".into(),
        })?;
    Ok(match k {
        "name" => r.name.contains(v),
        "id" => r.id.starts_with(v),
        "status" => r.status().as_str() == v,
        "ancestor" => r.image == v || r.image_id == v,
        "label" => match v.split_once('=') {
            Some((lk, lv)) => r.config.labels.get(lk).map(String::as_str) == Some(lv),
            None => r.config.labels.contains_key(v),
        },
        _ => {
            return Err(EngineError::InvalidArgument {
                field: "--filter",
                value: f.to_string(),
                reason: "known keys: name, id, status, ancestor, label".into(),
            })
        }
    })
}

fn running(
    engine: &Engine,
    reference: &str,
    action: &'static str,
) -> Result<ContainerRecord, EngineError> {
    let rec = engine.resolve(reference)?;
    if rec.status() != Status::Running {
        return Err(EngineError::InvalidState {
            status: rec.status().as_str(),
            id: rec.id,
            action,
            hint: " (it is not running)",
        });
    }
    Ok(rec)
}

#[tonic::async_trait]
impl EngineApi for EngineService {
    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionReply>, GrpcStatus> {
        Ok(Response::new(pb::VersionReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        }))
    }

    async fn create(
        &self,
        req: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateReply>, GrpcStatus> {
        let r = req.into_inner();
        let mut volumes = Vec::new();
        let mut tmpfs = Vec::new();
        for m in r.mounts {
            match m.kind.as_str() {
                "tmpfs" => tmpfs.push(if m.options.is_empty() {
                    m.destination
                } else {
                    format!("{}:{}", m.destination, m.options)
                }),
                _ => volumes.push(format!(
                    "{}:{}{}",
                    m.source,
                    m.destination,
                    if m.read_only { ":ro" } else { "" }
                )),
            }
        }
        let opts = CreateOptions {
            image: r.image,
            rootfs: (!r.rootfs.is_empty()).then(|| PathBuf::from(r.rootfs)),
            name: r.name,
            process: ProcessFlags {
                entrypoint: r.entrypoint_set.then_some(r.entrypoint),
                cmd: r.cmd,
                env: r.env,
                workdir: r.workdir,
                user: r.user,
            },
            volumes,
            tmpfs,
            publish: r.publish,
            network: r.network,
            resources: Resources {
                memory_bytes: r.memory_bytes,
                cpus: r.cpus,
                pids_limit: r.pids_limit,
            },
            restart: r.restart,
            read_only: r.read_only,
            auto_remove: r.auto_remove,
            labels: r.labels.into_iter().collect(),
            interactive: r.interactive,
            stop_signal: r.stop_signal,
            hostname: r.hostname,
        };
        let rec = self.engine.create(opts).await?;
        Ok(Response::new(pb::CreateReply {
            id: rec.id,
            warnings: Vec::new(),
        }))
    }

    async fn start(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::Empty>, GrpcStatus> {
        self.engine.start(&req.into_inner().container).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn stop(&self, req: Request<pb::StopRequest>) -> Result<Response<pb::Empty>, GrpcStatus> {
        let r = req.into_inner();
        let t = if r.timeout_seconds < 0 {
            10
        } else {
            r.timeout_seconds as u64
        };
        self.engine
            .stop(&r.container, Duration::from_secs(t))
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn kill(&self, req: Request<pb::KillRequest>) -> Result<Response<pb::Empty>, GrpcStatus> {
        let r = req.into_inner();
        let sig = if r.signal.is_empty() {
            libc::SIGKILL
        } else {
            config::parse_signal("--signal", &r.signal)?
        };
        self.engine.kill(&r.container, sig).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn restart(
        &self,
        req: Request<pb::StopRequest>,
    ) -> Result<Response<pb::Empty>, GrpcStatus> {
        let r = req.into_inner();
        let t = if r.timeout_seconds < 0 {
            10
        } else {
            r.timeout_seconds as u64
        };
        self.engine
            .stop(&r.container, Duration::from_secs(t))
            .await?;
        self.engine.start(&r.container).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::Empty>, GrpcStatus> {
        let r = req.into_inner();
        self.engine.remove(&r.container, r.force).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, GrpcStatus> {
        let r = req.into_inner();
        let mut out = Vec::new();
        for rec in self.engine.list()? {
            if !r.all && rec.status() != Status::Running {
                continue;
            }
            let mut keep = true;
            for f in &r.filters {
                keep &= matches_filter(&rec, f)?;
            }
            if keep {
                out.push(summary(&rec));
            }
        }
        Ok(Response::new(pb::ListReply { containers: out }))
    }

    async fn inspect(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::InspectReply>, GrpcStatus> {
        let rec = self.engine.resolve(&req.into_inner().container)?;
        let mut v = serde_json::to_value(&rec).map_err(|e| GrpcStatus::internal(e.to_string()))?;
        v["state"]["status"] = serde_json::json!(rec.status().as_str());
        v["log_path"] = serde_json::json!(self.engine.log_path(&rec.id));
        v["bundle"] = serde_json::json!(self.engine.dirs(&rec.id).bundle());
        Ok(Response::new(pb::InspectReply {
            json: serde_json::to_string_pretty(&v).unwrap_or_default(),
        }))
    }

    async fn wait(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::WaitReply>, GrpcStatus> {
        let rec = self.engine.resolve(&req.into_inner().container)?;
        match self.engine.wait_exit(&rec.id, None).await? {
            Some(code) => Ok(Response::new(pb::WaitReply { exit_code: code })),
            None => Err(GrpcStatus::not_found(format!(
                "container {} was removed",
                rec.id
            ))),
        }
    }

    type LogsStream = Stream2<pb::LogRecord>;
    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, GrpcStatus> {
        let r = req.into_inner();
        let rec = self.engine.resolve(&r.container)?;
        let path = self.engine.log_path(&rec.id);
        let files = self.engine.config().log_max_files;
        let (tx, rx) = mpsc::channel(64);
        let engine = self.engine.clone();
        let (entries, mut follower) = logfile::read_all(&path, files)
            .map_err(|e| GrpcStatus::internal(format!("{}: {e}", path.display())))?;
        let since = r.since_unix_nanos;
        let to_pb = |e: logfile::LogEntry| pb::LogRecord {
            stream: e.stream,
            time_unix_nanos: e.time_nanos,
            data: e.data,
        };
        let first: Vec<pb::LogRecord> = logfile::tail(
            entries
                .into_iter()
                .filter(|e| e.time_nanos >= since)
                .collect(),
            r.tail,
        )
        .into_iter()
        .map(to_pb)
        .collect();
        let id = rec.id.clone();
        tokio::spawn(async move {
            for rec in first {
                if tx.send(Ok(rec)).await.is_err() {
                    return;
                }
            }
            if !r.follow {
                return;
            }
            let mut changed = engine.subscribe();
            loop {
                // Decide "done" before the last read, so lines written before the exit
                // are never lost.
                let done = match engine.store.get(&id) {
                    Ok(Some(rec)) => !matches!(rec.status(), Status::Running | Status::Restarting),
                    _ => true,
                };
                match follower.poll() {
                    Ok(batch) => {
                        for e in batch {
                            if tx.send(Ok(to_pb(e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(GrpcStatus::internal(e.to_string()))).await;
                        return;
                    }
                }
                if done {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = changed.changed() => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExecStream = Stream2<pb::ExecOutput>;
    async fn exec(
        &self,
        req: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, GrpcStatus> {
        let r = req.into_inner();
        let rec = running(&self.engine, &r.container, "exec into it")?;
        if r.cmd.is_empty() {
            return Err(EngineError::InvalidArgument {
                field: "command",
                value: String::new(),
                reason: "exec needs a command".into(),
            }
            .into());
        }
        let user = if r.user.is_empty() {
            None
        } else {
            let root = self.engine.dirs(&rec.id).rootfs();
            let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
            let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
            let (u, g) = config::resolve_user(&r.user, &passwd, &group)?;
            Some(format!("{u}:{g}"))
        };
        let mut env = rec.config.process.env.clone();
        env.extend(r.env);
        let cwd = (!r.workdir.is_empty()).then_some(r.workdir.as_str());
        let cmd = self
            .engine
            .runtime()
            .exec_command(&rec.id, &r.cmd, &env, cwd, user.as_deref());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| GrpcStatus::internal(format!("exec: cannot run the OCI runtime: {e}")))?;
        let (tx, rx) = mpsc::channel(64);
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        tokio::spawn(async move {
            let (mut ob, mut eb) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
            let (mut o_open, mut e_open) = (true, true);
            while o_open || e_open {
                tokio::select! {
                    n = out.read(&mut ob), if o_open => match n {
                        Ok(n) if n > 0 => { let _ = tx.send(Ok(pb::ExecOutput { kind: Some(pb::exec_output::Kind::Stdout(ob[..n].to_vec())) })).await; }
                        _ => o_open = false,
                    },
                    n = err.read(&mut eb), if e_open => match n {
                        Ok(n) if n > 0 => { let _ = tx.send(Ok(pb::ExecOutput { kind: Some(pb::exec_output::Kind::Stderr(eb[..n].to_vec())) })).await; }
                        _ => e_open = false,
                    },
                }
            }
            let code = match child.wait().await {
                Ok(s) => s.code().unwrap_or(
                    128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0),
                ),
                Err(_) => 126,
            };
            let _ = tx
                .send(Ok(pb::ExecOutput {
                    kind: Some(pb::exec_output::Kind::ExitCode(code)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsReply>, GrpcStatus> {
        let r = req.into_inner();
        let recs: Vec<ContainerRecord> = if r.containers.is_empty() {
            self.engine
                .list()?
                .into_iter()
                .filter(|c| c.status() == Status::Running)
                .collect()
        } else {
            let mut v = Vec::new();
            for c in &r.containers {
                v.push(running(&self.engine, c, "report its stats")?);
            }
            v
        };
        let root = self.engine.cgroup_root();
        let stats = recs
            .iter()
            .map(|rec| {
                let u = stats::usage(root, &rec.cgroup_path());
                pb::ContainerStats {
                    id: rec.id.clone(),
                    name: rec.name.clone(),
                    memory_usage_bytes: u.memory_bytes,
                    memory_limit_bytes: u.memory_limit_bytes,
                    cpu_usage_nanos: u.cpu_nanos,
                    pids: u.pids,
                }
            })
            .collect();
        Ok(Response::new(pb::StatsReply { stats }))
    }

    async fn top(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::TopReply>, GrpcStatus> {
        let rec = running(
            &self.engine,
            &req.into_inner().container,
            "list its processes",
        )?;
        let processes = stats::pids(self.engine.cgroup_root(), &rec.cgroup_path())
            .into_iter()
            .filter_map(stats::process_row)
            .map(|cells| pb::TopRow { cells })
            .collect();
        Ok(Response::new(pb::TopReply {
            titles: ["UID", "PID", "PPID", "CMD"].map(String::from).to_vec(),
            processes,
        }))
    }

    async fn stdin(
        &self,
        req: Request<Streaming<pb::StdinChunk>>,
    ) -> Result<Response<pb::Empty>, GrpcStatus> {
        use tokio::io::AsyncWriteExt;
        let mut s = req.into_inner();
        let Some(first) = s.message().await? else {
            return Ok(Response::new(pb::Empty {}));
        };
        let rec = running(&self.engine, &first.container, "write to its stdin")?;
        if !rec.config.interactive {
            return Err(GrpcStatus::failed_precondition(format!(
                "container {} was not created with -i: it has no stdin",
                rec.id
            )));
        }
        let fifo = self.engine.run_dir_of(&rec.id).stdin_fifo();
        let mut w = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .await
            .map_err(|e| GrpcStatus::internal(format!("{}: {e}", fifo.display())))?;
        let mut chunk = Some(first);
        while let Some(c) = chunk {
            if !c.data.is_empty() && w.write_all(&c.data).await.is_err() {
                break;
            }
            if c.eof {
                break;
            }
            chunk = s.message().await?;
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitReply>, GrpcStatus> {
        let r = req.into_inner();
        let changes = r
            .changes
            .iter()
            .map(|c| commit::parse_change(c))
            .collect::<Result<Vec<_>, _>>()?;
        let meta = commit::CommitMeta {
            message: r.message,
            author: r.author,
            changes,
            ..Default::default()
        };
        let id = self
            .engine
            .commit(&r.container, &r.image, meta, !r.no_pause)
            .await?;
        Ok(Response::new(pb::CommitReply { image_id: id }))
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageReply>, GrpcStatus> {
        let r = req.into_inner();
        let deleted = self.engine.remove_image(&r.image, r.force).await?;
        Ok(Response::new(pb::RemoveImageReply { deleted }))
    }
}

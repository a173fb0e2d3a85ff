//! The container verbs (`run`, `ps`, `logs`, `stop`, `kill`, `start`, `restart`, `rm`,
//! `exec`, `inspect`, `stats`, `wait`, `top`): clients of the engine API on the agent's unix
//! socket (`--host` / `GANTRY_HOST`), with docker's flags, tables and exit codes (125: the
//! engine refused; otherwise the container's or the exec'd process's code).
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gantry_agent::engine::config;
use gantry_agent::supervisor::timefmt;
use gantry_proto::engine as pb;
use gantry_proto::engine::engine_client::EngineClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::output;

#[derive(Args, Clone)]
pub struct Conn {
    /// The agent's socket.
    #[arg(
        long,
        env = "GANTRY_HOST",
        default_value = "unix:///run/gantry/agent.sock"
    )]
    pub host: String,
}

#[derive(Subcommand)]
pub enum ContainerCommand {
    /// Create and start a container from an image.
    Run(Box<RunArgs>),
    /// List containers.
    Ps(PsArgs),
    /// Show a container's output.
    Logs(LogsArgs),
    /// Stop containers: the stop signal, then SIGKILL after the timeout.
    Stop(StopArgs),
    /// Send a signal to containers.
    Kill(KillArgs),
    /// Start stopped containers (their files are kept).
    Start(StartArgs),
    /// Stop then start containers.
    Restart(StopArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Show containers' full records as JSON.
    Inspect(RefsArgs),
    /// Show containers' resource usage.
    Stats(StatsArgs),
    /// Block until containers stop; print their exit codes.
    Wait(RefsArgs),
    /// Show a container's processes.
    Top(TopArgs),
    /// Make a new image from a container's changes.
    Commit(CommitArgs),
    /// Remove images (refuses one a container uses unless -f); frees unused blobs.
    Rmi(RmiArgs),
}

#[derive(Args)]
pub struct CommitArgs {
    #[command(flatten)]
    conn: Conn,
    /// Commit message (the history entry's comment).
    #[arg(short, long, default_value = "")]
    message: String,
    /// Author (e.g. "Name <mail>").
    #[arg(short, long, default_value = "")]
    author: String,
    /// Dockerfile instruction applied to the new image's config (CMD, ENTRYPOINT, ENV,
    /// WORKDIR, USER, EXPOSE, LABEL, STOPSIGNAL).
    #[arg(short, long)]
    change: Vec<String>,
    /// Freeze a running container while its layer is read.
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
    pause: bool,
    container: String,
    /// NAME[:TAG] of the new image.
    image: String,
}

#[derive(Args)]
pub struct RmiArgs {
    #[command(flatten)]
    conn: Conn,
    /// Remove even if a container was made from it (the container keeps running).
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    conn: Conn,
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    #[arg(long)]
    name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to copy it from here).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines).
    #[arg(long)]
    env_file: Vec<PathBuf>,
    #[arg(short, long)]
    workdir: Option<String>,
    /// USER[:GROUP], names or ids.
    #[arg(short, long)]
    user: Option<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    /// Bind mount HOST:CONTAINER[:ro].
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// Mount a tmpfs: PATH[:OPTIONS].
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Publish a port: [IP:]HOST:CONTAINER[/tcp|udp].
    #[arg(short, long = "publish")]
    publish: Vec<String>,
    /// bridge (default), host or none.
    #[arg(long, default_value = "bridge")]
    network: String,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short, long)]
    memory: Option<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    /// no, on-failure[:N], always, unless-stopped.
    #[arg(long, default_value = "no")]
    restart: String,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    #[arg(short, long = "label")]
    label: Vec<String>,
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    interactive: bool,
    #[arg(long)]
    stop_signal: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Run from a root filesystem directory instead of an image (then every positional
    /// argument is the command).
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// The image, then the command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<String>,
}

#[derive(Args)]
pub struct PsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Show all containers (default: running only).
    #[arg(short, long)]
    all: bool,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// name=, id=, status=, ancestor=, label=.
    #[arg(short, long)]
    filter: Vec<String>,
    /// table or json.
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Follow new output until the container stops.
    #[arg(short, long)]
    follow: bool,
    /// Number of lines from the end ("all" for everything).
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// Prefix each line with its time.
    #[arg(short, long)]
    timestamps: bool,
    container: String,
}

#[derive(Args)]
pub struct StopArgs {
    #[command(flatten)]
    conn: Conn,
    /// Seconds to wait before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    time: i32,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct KillArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct StartArgs {
    #[command(flatten)]
    conn: Conn,
    /// Attach: stream its output and exit with its code.
    #[arg(short, long)]
    attach: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct RmArgs {
    #[command(flatten)]
    conn: Conn,
    /// Kill a running container first.
    #[arg(short, long)]
    force: bool,
    /// Also remove anonymous volumes (gantry creates none).
    #[arg(short, long)]
    volumes: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(short, long)]
    user: Option<String>,
    container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Args)]
pub struct RefsArgs {
    #[command(flatten)]
    conn: Conn,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print once instead of refreshing every second.
    #[arg(long)]
    no_stream: bool,
    /// table or json.
    #[arg(long, default_value = "table")]
    format: String,
    containers: Vec<String>,
}

#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    conn: Conn,
    container: String,
}

/// Connects to the agent's unix socket.
pub async fn connect(host: &str) -> anyhow::Result<EngineClient<Channel>> {
    use gantry_proto::limits::{ENGINE_REPLY_MAX, ENGINE_REQUEST_MAX};
    Ok(EngineClient::new(channel(host).await?)
        .max_decoding_message_size(ENGINE_REPLY_MAX)
        .max_encoding_message_size(ENGINE_REQUEST_MAX))
}

/// A channel to the agent's unix socket (the engine and builder services share it).
pub async fn channel(host: &str) -> anyhow::Result<Channel> {
    let path = crate::commands::agent::socket_path(host)?;
    let p2 = path.clone();
    let channel = Endpoint::try_from("http://agent.local")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p2.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .with_context(|| {
            format!(
                "cannot reach the agent at {} (is `gantry agent` running?)",
                path.display()
            )
        })?;
    Ok(channel)
}

/// An error from the agent: its message, without tonic's framing.
fn status_msg(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub fn main(cmd: ContainerCommand) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let is_run = matches!(cmd, ContainerCommand::Run(_) | ContainerCommand::Exec(_));
    match rt.block_on(dispatch(cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            if is_run {
                125
            } else {
                1
            }
        }
    }
}

async fn dispatch(cmd: ContainerCommand) -> anyhow::Result<i32> {
    match cmd {
        ContainerCommand::Run(a) => run(*a).await,
        ContainerCommand::Ps(a) => ps(a).await,
        ContainerCommand::Logs(a) => logs(a).await,
        ContainerCommand::Stop(a) => {
            let c = connect(&a.conn.host).await?;
            each(&a.containers, |id| {
                let mut c = c.clone();
                async move {
                    c.stop(pb::StopRequest {
                        container: id,
                        timeout_seconds: a.time,
                    })
                    .await
                    .map(|_| ())
                }
            })
            .await
        }
        ContainerCommand::Restart(a) => {
            let c = connect(&a.conn.host).await?;
            each(&a.containers, |id| {
                let mut c = c.clone();
                async move {
                    c.restart(pb::StopRequest {
                        container: id,
                        timeout_seconds: a.time,
                    })
                    .await
                    .map(|_| ())
                }
            })
            .await
        }
        ContainerCommand::Kill(a) => {
            let c = connect(&a.conn.host).await?;
            let sig = a.signal.clone();
            each(&a.containers, |id| {
                let mut c = c.clone();
                let signal = sig.clone();
                async move {
                    c.kill(pb::KillRequest {
                        container: id,
                        signal,
                    })
                    .await
                    .map(|_| ())
                }
            })
            .await
        }
        ContainerCommand::Start(a) => start(a).await,
        ContainerCommand::Rm(a) => {
            let c = connect(&a.conn.host).await?;
            each(&a.containers, |id| {
                let mut c = c.clone();
                async move {
                    c.remove(pb::RemoveRequest {
                        container: id,
                        force: a.force,
                        volumes: a.volumes,
                    })
                    .await
                    .map(|_| ())
                }
            })
            .await
        }
        ContainerCommand::Exec(a) => exec(a).await,
        ContainerCommand::Commit(a) => {
            let mut c = connect(&a.conn.host).await?;
            let id = c
                .commit(pb::CommitRequest {
                    container: a.container,
                    image: a.image,
                    message: a.message,
                    author: a.author,
                    changes: a.change,
                    no_pause: !a.pause,
                })
                .await
                .map_err(status_msg)?
                .into_inner()
                .image_id;
            println!("{id}");
            Ok(0)
        }
        ContainerCommand::Rmi(a) => {
            let mut c = connect(&a.conn.host).await?;
            let mut failed = false;
            for image in &a.images {
                match c
                    .remove_image(pb::RemoveImageRequest {
                        image: image.clone(),
                        force: a.force,
                    })
                    .await
                {
                    Ok(r) => {
                        println!("Untagged: {image}");
                        for d in r.into_inner().deleted {
                            println!("Deleted: {d}");
                        }
                    }
                    Err(e) => {
                        eprintln!("Error: {}", e.message());
                        failed = true;
                    }
                }
            }
            Ok(failed as i32)
        }
        ContainerCommand::Inspect(a) => {
            let mut c = connect(&a.conn.host).await?;
            let mut out = Vec::new();
            let mut failed = false;
            for id in &a.containers {
                match c
                    .inspect(pb::ContainerRef {
                        container: id.clone(),
                    })
                    .await
                {
                    Ok(r) => out.push(serde_json::from_str::<serde_json::Value>(
                        &r.into_inner().json,
                    )?),
                    Err(e) => {
                        eprintln!("Error: {}", e.message());
                        failed = true;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(failed as i32)
        }
        ContainerCommand::Wait(a) => {
            let mut c = connect(&a.conn.host).await?;
            let mut failed = false;
            for id in &a.containers {
                match c
                    .wait(pb::ContainerRef {
                        container: id.clone(),
                    })
                    .await
                {
                    Ok(r) => println!("{}", r.into_inner().exit_code),
                    Err(e) => {
                        eprintln!("Error: {}", e.message());
                        failed = true;
                    }
                }
            }
            Ok(failed as i32)
        }
        ContainerCommand::Top(a) => {
            let mut c = connect(&a.conn.host).await?;
            let r = c
                .top(pb::ContainerRef {
                    container: a.container,
                })
                .await
                .map_err(status_msg)?
                .into_inner();
            let titles: Vec<&str> = r.titles.iter().map(String::as_str).collect();
            let rows: Vec<Vec<String>> = r.processes.into_iter().map(|p| p.cells).collect();
            output::table(&titles, &rows);
            Ok(0)
        }
        ContainerCommand::Stats(a) => stats(a).await,
    }
}

/// Runs one call per container, printing each reference on success (docker's style).
async fn each<F, Fut>(refs: &[String], f: F) -> anyhow::Result<i32>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = false;
    for r in refs {
        match f(r.clone()).await {
            Ok(()) => println!("{r}"),
            Err(e) => {
                eprintln!("Error: {}", e.message());
                failed = true;
            }
        }
    }
    Ok(failed as i32)
}

fn read_env_file(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--env-file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        out.push(
            expand_env(l)
                .with_context(|| format!("--env-file {} line {}", path.display(), n + 1))?,
        );
    }
    Ok(out)
}

/// `KEY` alone takes the value from this environment (docker's rule); it must be set.
fn expand_env(e: &str) -> anyhow::Result<String> {
    if e.contains('=') {
        return Ok(e.to_string());
    }
    if e.is_empty() {
        bail!("empty variable");
    }
    match std::env::var(e) {
        Ok(v) => Ok(format!("{e}={v}")),
        Err(_) => bail!("{e} has no value and is not set in this environment"),
    }
}

async fn run(a: RunArgs) -> anyhow::Result<i32> {
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(read_env_file(f)?);
    }
    for e in &a.env {
        env.push(expand_env(e).with_context(|| format!("--env {e:?}"))?);
    }
    let mut mounts = Vec::new();
    for v in &a.volume {
        let m = config::parse_volume(v)?;
        mounts.push(pb::Mount {
            source: m.source.display().to_string(),
            destination: m.destination,
            read_only: m.read_only,
            kind: "bind".into(),
            options: String::new(),
        });
    }
    for t in &a.tmpfs {
        config::parse_tmpfs(t)?;
        let (dst, opts) = t.split_once(':').unwrap_or((t, ""));
        mounts.push(pb::Mount {
            source: String::new(),
            destination: dst.to_string(),
            read_only: false,
            kind: "tmpfs".into(),
            options: opts.to_string(),
        });
    }
    let memory_bytes = match &a.memory {
        Some(m) => config::parse_memory(m)?,
        None => 0,
    };
    let mut labels = HashMap::new();
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        if k.is_empty() {
            bail!("invalid --label {l:?}: expected KEY[=VALUE]");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    let (image, cmd) = match (&a.rootfs, a.args.split_first()) {
        (Some(_), _) => (String::new(), a.args.clone()),
        (None, Some((img, rest))) => (img.clone(), rest.to_vec()),
        (None, None) => bail!("\"gantry run\" requires an image (or --rootfs DIR)"),
    };
    let (entrypoint, entrypoint_set) = match &a.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), true),
        Some(e) => (vec![e.clone()], true),
        None => (Vec::new(), false),
    };
    let foreground = !a.detach;
    let req = pb::CreateRequest {
        image,
        rootfs: a
            .rootfs
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        name: a.name.clone().unwrap_or_default(),
        entrypoint,
        entrypoint_set,
        cmd,
        env,
        workdir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        mounts,
        publish: a.publish.clone(),
        network: a.network.clone(),
        memory_bytes,
        cpus: a.cpus.unwrap_or(0.0),
        pids_limit: a.pids_limit.unwrap_or(0),
        restart: a.restart.clone(),
        read_only: a.read_only,
        // In the foreground the CLI removes the container after reading its exit code.
        auto_remove: a.rm && !foreground,
        labels,
        interactive: a.interactive,
        stop_signal: a.stop_signal.clone().unwrap_or_default(),
        hostname: a.hostname.clone().unwrap_or_default(),
    };
    let mut c = connect(&a.conn.host).await?;
    let id = c.create(req).await.map_err(status_msg)?.into_inner().id;
    if let Err(e) = c
        .start(pb::ContainerRef {
            container: id.clone(),
        })
        .await
    {
        if a.rm {
            let _ = c
                .remove(pb::RemoveRequest {
                    container: id.clone(),
                    force: true,
                    volumes: true,
                })
                .await;
        }
        return Err(status_msg(e));
    }
    if a.detach {
        println!("{id}");
        return Ok(0);
    }
    let code = attach(&mut c, &id, a.interactive).await?;
    if a.rm {
        c.remove(pb::RemoveRequest {
            container: id,
            force: true,
            volumes: true,
        })
        .await
        .map_err(status_msg)?;
    }
    Ok(code)
}

/// Streams the container's output (and our stdin, with `-i`) until it stops; its code.
async fn attach(c: &mut EngineClient<Channel>, id: &str, interactive: bool) -> anyhow::Result<i32> {
    if interactive {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::StdinChunk>(16);
        let container = id.to_string();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            let mut first = true;
            loop {
                let n = stdin.read(&mut buf).unwrap_or(0);
                let chunk = pb::StdinChunk {
                    container: if first {
                        container.clone()
                    } else {
                        String::new()
                    },
                    data: buf[..n].to_vec(),
                    eof: n == 0,
                };
                first = false;
                if tx.blocking_send(chunk).is_err() || n == 0 {
                    return;
                }
            }
        });
        let mut c2 = c.clone();
        tokio::spawn(async move {
            let _ = c2
                .stdin(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
        });
    }
    let mut stream = c
        .logs(pb::LogsRequest {
            container: id.to_string(),
            follow: true,
            tail: -1,
            timestamps: false,
            since_unix_nanos: 0,
        })
        .await
        .map_err(status_msg)?
        .into_inner();
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    while let Some(rec) = stream.message().await.map_err(status_msg)? {
        if rec.stream == "stderr" {
            err.write_all(&rec.data)?;
        } else {
            out.write_all(&rec.data)?;
            out.flush()?;
        }
    }
    let code = c
        .wait(pb::ContainerRef {
            container: id.to_string(),
        })
        .await
        .map_err(status_msg)?
        .into_inner()
        .exit_code;
    Ok(code)
}

async fn start(a: StartArgs) -> anyhow::Result<i32> {
    let mut c = connect(&a.conn.host).await?;
    if a.attach {
        if a.containers.len() != 1 {
            bail!("start -a takes exactly one container");
        }
        let id = &a.containers[0];
        let since = timefmt::now_nanos();
        c.start(pb::ContainerRef {
            container: id.clone(),
        })
        .await
        .map_err(status_msg)?;
        let mut stream = c
            .logs(pb::LogsRequest {
                container: id.clone(),
                follow: true,
                tail: -1,
                timestamps: false,
                since_unix_nanos: since,
            })
            .await
            .map_err(status_msg)?
            .into_inner();
        while let Some(rec) = stream.message().await.map_err(status_msg)? {
            if rec.stream == "stderr" {
                std::io::stderr().write_all(&rec.data)?;
            } else {
                std::io::stdout().write_all(&rec.data)?;
            }
        }
        let code = c
            .wait(pb::ContainerRef {
                container: id.clone(),
            })
            .await
            .map_err(status_msg)?
            .into_inner()
            .exit_code;
        return Ok(code);
    }
    each(&a.containers, |id| {
        let mut c = c.clone();
        async move {
            c.start(pb::ContainerRef { container: id })
                .await
                .map(|_| ())
        }
    })
    .await
}

async fn logs(a: LogsArgs) -> anyhow::Result<i32> {
    let tail = if a.tail == "all" {
        -1
    } else {
        a.tail
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .with_context(|| format!("invalid --tail {:?}: a number or \"all\"", a.tail))?
    };
    let mut c = connect(&a.conn.host).await?;
    let mut stream = c
        .logs(pb::LogsRequest {
            container: a.container,
            follow: a.follow,
            tail,
            timestamps: a.timestamps,
            since_unix_nanos: 0,
        })
        .await
        .map_err(status_msg)?
        .into_inner();
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    while let Some(rec) = stream.message().await.map_err(status_msg)? {
        let mut line = Vec::new();
        if a.timestamps {
            line.extend_from_slice(timefmt::format_rfc3339(rec.time_unix_nanos).as_bytes());
            line.push(b' ');
        }
        line.extend_from_slice(&rec.data);
        if rec.stream == "stderr" {
            err.write_all(&line)?;
        } else {
            out.write_all(&line)?;
            out.flush()?;
        }
    }
    Ok(0)
}

async fn exec(a: ExecArgs) -> anyhow::Result<i32> {
    let mut env = Vec::new();
    for e in &a.env {
        env.push(expand_env(e).with_context(|| format!("--env {e:?}"))?);
    }
    let mut c = connect(&a.conn.host).await?;
    let mut stream = c
        .exec(pb::ExecRequest {
            container: a.container,
            cmd: a.cmd,
            env,
            workdir: a.workdir.unwrap_or_default(),
            user: a.user.unwrap_or_default(),
        })
        .await
        .map_err(status_msg)?
        .into_inner();
    let mut code = 126;
    while let Some(m) = stream.message().await.map_err(status_msg)? {
        match m.kind {
            Some(pb::exec_output::Kind::Stdout(d)) => {
                let mut o = std::io::stdout();
                o.write_all(&d)?;
                o.flush()?;
            }
            Some(pb::exec_output::Kind::Stderr(d)) => std::io::stderr().write_all(&d)?,
            Some(pb::exec_output::Kind::ExitCode(c)) => code = c,
            None => {}
        }
    }
    Ok(code)
}

fn ago(nanos: i64) -> String {
    let secs = ((timefmt::now_nanos() - nanos) / 1_000_000_000).max(0);
    match secs {
        0 => "Less than a second".into(),
        1..=59 => format!("{secs} seconds"),
        60..=3599 => format!("{} minutes", secs / 60),
        3600..=172_799 => format!("{} hours", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

fn status_text(c: &pb::ContainerSummary) -> String {
    match c.state.as_str() {
        "running" => format!("Up {}", ago(c.started_unix * 1_000_000_000)),
        "exited" => format!(
            "Exited ({}) {} ago",
            c.exit_code,
            ago(c.finished_unix * 1_000_000_000)
        ),
        "restarting" => format!(
            "Restarting ({}) {} ago",
            c.exit_code,
            ago(c.finished_unix * 1_000_000_000)
        ),
        _ => "Created".into(),
    }
}

async fn ps(a: PsArgs) -> anyhow::Result<i32> {
    let mut c = connect(&a.conn.host).await?;
    let list = c
        .list(pb::ListRequest {
            all: a.all,
            filters: a.filter,
        })
        .await
        .map_err(status_msg)?
        .into_inner()
        .containers;
    if a.quiet {
        for x in &list {
            println!("{}", &x.id[..12]);
        }
        return Ok(0);
    }
    match a.format.as_str() {
        "json" => {
            for x in &list {
                println!(
                    "{}",
                    serde_json::json!({
                        "ID": x.id, "Names": x.name, "Image": x.image, "Command": x.command,
                        "State": x.state, "Status": status_text(x), "ExitCode": x.exit_code,
                        "CreatedAt": timefmt::format_rfc3339(x.created_unix * 1_000_000_000),
                        "Pid": x.pid, "RestartCount": x.restart_count, "Labels": x.labels,
                        "Ports": ports_text(x),
                    })
                );
            }
        }
        "table" => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|x| {
                    let mut cmd = x.command.clone();
                    if cmd.chars().count() > 20 {
                        cmd = cmd.chars().take(19).collect::<String>() + "…";
                    }
                    vec![
                        x.id[..12].to_string(),
                        x.image.clone(),
                        format!("\"{cmd}\""),
                        format!("{} ago", ago(x.created_unix * 1_000_000_000)),
                        status_text(x),
                        ports_text(x),
                        x.name.clone(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "CONTAINER ID",
                    "IMAGE",
                    "COMMAND",
                    "CREATED",
                    "STATUS",
                    "PORTS",
                    "NAMES",
                ],
                &rows,
            );
        }
        f => bail!("invalid --format {f:?}: table or json"),
    }
    Ok(0)
}

/// docker's PORTS column: `0.0.0.0:8080->80/tcp, …`.
fn ports_text(x: &pb::ContainerSummary) -> String {
    x.ports
        .iter()
        .map(|p| {
            let ip = if p.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                &p.host_ip
            };
            format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.protocol)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1}{}", U[i])
}

async fn stats(a: StatsArgs) -> anyhow::Result<i32> {
    let mut c = connect(&a.conn.host).await?;
    let mut prev: HashMap<String, (u64, std::time::Instant)> = HashMap::new();
    loop {
        let now = std::time::Instant::now();
        let s = c
            .stats(pb::StatsRequest {
                containers: a.containers.clone(),
            })
            .await
            .map_err(status_msg)?
            .into_inner()
            .stats;
        let cpu_pct = |x: &pb::ContainerStats,
                       prev: &HashMap<String, (u64, std::time::Instant)>| {
            match prev.get(&x.id) {
                Some((cpu, t)) => {
                    let dt = now.duration_since(*t).as_nanos().max(1) as f64;
                    format!(
                        "{:.2}%",
                        (x.cpu_usage_nanos.saturating_sub(*cpu)) as f64 / dt * 100.0
                    )
                }
                None => "--".into(),
            }
        };
        if a.format == "json" {
            for x in &s {
                println!(
                    "{}",
                    serde_json::json!({"ID": x.id, "Name": x.name, "MemUsage": x.memory_usage_bytes,
                        "MemLimit": x.memory_limit_bytes, "CPUNanos": x.cpu_usage_nanos, "PIDs": x.pids})
                );
            }
        } else {
            let rows: Vec<Vec<String>> = s
                .iter()
                .map(|x| {
                    let limit = if x.memory_limit_bytes == 0 {
                        "unlimited".into()
                    } else {
                        human_bytes(x.memory_limit_bytes)
                    };
                    vec![
                        x.id[..12].to_string(),
                        x.name.clone(),
                        cpu_pct(x, &prev),
                        format!("{} / {}", human_bytes(x.memory_usage_bytes), limit),
                        x.pids.to_string(),
                    ]
                })
                .collect();
            if !a.no_stream {
                print!("\x1b[2J\x1b[H");
            }
            output::table(
                &["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS"],
                &rows,
            );
        }
        if a.no_stream {
            return Ok(0);
        }
        prev = s
            .iter()
            .map(|x| (x.id.clone(), (x.cpu_usage_nanos, now)))
            .collect();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

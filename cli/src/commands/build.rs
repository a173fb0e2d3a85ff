//! `gantry build`: builds an image from a Dockerfile into an image store.
//!
//! By default it asks the local agent (`--host` / `GANTRY_HOST`, the engine socket): the
//! `.dockerignore`-filtered context is streamed as a tar over gRPC while it is walked (no
//! temp copy), the agent builds (`gantry_agent::build::service`) and streams progress
//! back; the image lands in the agent's store, ready for `gantry run` and `gantry push`.
//! With `--store DIR` (or `GANTRY_STORE`) the same builder runs in this process on that
//! store, `RUN` steps under `gantry runtime` (this binary); the context takes the same
//! path through a pipe.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use gantry_agent::build::context::ContextWalker;
use gantry_agent::build::executor::{receive_context, BuildRequest, Builder, Event};
use gantry_agent::build::net::{BuildNet, LazyBridge};
use gantry_agent::build::run::{NetworkMode, OciRuntimeRunner};
use gantry_agent::build::stages::BuildOptions;
use gantry_agent::distribution::ClientConfig;
use gantry_agent::image::ImageStore;
use gantry_agent::network::BridgeConfig;
use std::sync::Arc;

use super::container::Conn;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Plain,
    Tty,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Build in this process on this image store instead of asking the agent.
    #[arg(long, env = "GANTRY_STORE")]
    pub store: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
    /// Name (and optionally tag) of the image; may be repeated.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build argument, KEY=VALUE (or KEY to take it from the environment).
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// Run every step, ignoring the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Progress output: plain (BuildKit's lines), tty (live lines per step; needs a
    /// terminal), auto (tty on a terminal, else plain).
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Network of RUN steps: bridge (the default, as in Docker: the node's bridge with NAT,
    /// like a container), host, or none (loopback only).
    #[arg(long)]
    pub network: Option<String>,
    /// With --store: reach this registry (host[:port]) over plain HTTP when pulling a base
    /// image (loopback registries always are). Through an agent, the agent's list applies.
    #[arg(long = "insecure-registry", value_name = "HOST", requires = "store")]
    pub insecure_registries: Vec<String>,
    /// With --store: the cluster credential for pulling a base image over mutual TLS.
    /// Through an agent, the agent's credential applies.
    #[command(flatten)]
    pub tls: super::distribution::RegistryTlsArgs,
    /// With --store: the bridge of `--network bridge` RUN steps (as `gantry agent --bridge`).
    #[arg(long, requires = "store", default_value = gantry_agent::network::config::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// With --store: the bridge's subnet (as `gantry agent --subnet`).
    #[arg(long, requires = "store", default_value = gantry_agent::network::config::DEFAULT_SUBNET)]
    pub subnet: String,
    /// With --store: prefix of the bridge's iptables chains (as `gantry agent --chain-prefix`).
    #[arg(long, requires = "store", default_value = gantry_agent::network::config::DEFAULT_CHAIN_PREFIX)]
    pub chain_prefix: String,
    /// Print only the image digest.
    #[arg(short, long)]
    pub quiet: bool,
    /// The build context directory.
    pub context: PathBuf,
}

/// `gantry build`.
pub fn main(args: BuildArgs) -> i32 {
    match build(&args) {
        Ok(()) => 0,
        Err(e) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("error: {msg}");
            1
        }
    }
}

fn build_args(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => bail!("--build-arg {a:?}: expected KEY=VALUE"),
            None => {
                // Docker: `--build-arg K` takes K from the environment, if set.
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// Removes the received context on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What both paths need: the request (without the context) and the context walker.
struct Prepared {
    dockerfile: String,
    options: BuildOptions,
    network: NetworkMode,
    walker: ContextWalker,
}

fn prepare(a: &BuildArgs) -> anyhow::Result<Prepared> {
    let context = a
        .context
        .canonicalize()
        .with_context(|| format!("build context {}", a.context.display()))?;
    if !context.is_dir() {
        bail!("build context {}: not a directory", a.context.display());
    }
    let file = a.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let dockerfile = std::fs::read_to_string(&file)
        .with_context(|| format!("reading Dockerfile {}", file.display()))?;
    let file_abs = file.canonicalize().unwrap_or(file.clone());
    let in_context = file_abs
        .strip_prefix(&context)
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let network = NetworkMode::parse(a.network.as_deref().unwrap_or(""))?;
    let options = BuildOptions {
        build_args: build_args(&a.build_args)?,
        target: a.target.clone(),
        ..BuildOptions::default()
    };
    let walker = ContextWalker::new(&context, in_context.as_deref())?;
    Ok(Prepared {
        dockerfile,
        options,
        network,
        walker,
    })
}

fn build(a: &BuildArgs) -> anyhow::Result<()> {
    if a.store.is_none() && a.tls.tls_cert.is_some() {
        bail!("--tls-cert: only with --store (through an agent, the agent's credential applies)");
    }
    let display = Display::new(a.progress, a.quiet)?;
    let p = prepare(a)?;
    match &a.store {
        Some(store) => build_local(a, p, store, display),
        None => build_remote(a, p, display),
    }
}

/// Prints progress in BuildKit's plain format.
fn print_event(out: &mut impl Write, e: Event) {
    let _ = match e {
        Event::Warning(w) => writeln!(out, "{w}"),
        Event::Step { n, label } => writeln!(out, "#{n} {label}"),
        Event::Cached { n } => writeln!(out, "#{n} CACHED"),
        Event::Output { n, data } => String::from_utf8_lossy(&data)
            .lines()
            .try_for_each(|l| writeln!(out, "#{n} {l}")),
        Event::Done { n, elapsed } => writeln!(out, "#{n} DONE {:.3}s", elapsed.as_secs_f64()),
    };
}

/// Where progress goes, on stderr: nothing (`-q`), BuildKit's plain lines, or on a
/// terminal one live line per step (spinner, step, running time) that ends as `CACHED` or
/// `DONE 1.2s`, with the steps' output and warnings printed above the live lines.
enum Display {
    Quiet,
    Plain,
    Tty(TtyDisplay),
}

struct TtyDisplay {
    multi: indicatif::MultiProgress,
    steps: std::collections::HashMap<usize, (indicatif::ProgressBar, String)>,
}

impl Drop for TtyDisplay {
    fn drop(&mut self) {
        self.settle();
    }
}

impl Display {
    /// `--progress tty` needs a terminal (as BuildKit's does); `auto` picks tty on one.
    fn new(mode: ProgressMode, quiet: bool) -> anyhow::Result<Display> {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        Ok(match (quiet, mode, terminal) {
            (true, _, _) => Display::Quiet,
            (false, ProgressMode::Plain, _) | (false, ProgressMode::Auto, false) => Display::Plain,
            (false, ProgressMode::Tty, false) => bail!(
                "--progress tty: standard error is not a terminal (use --progress plain or auto)"
            ),
            (false, _, true) => Display::Tty(TtyDisplay {
                multi: indicatif::MultiProgress::with_draw_target(
                    indicatif::ProgressDrawTarget::stderr(),
                ),
                steps: Default::default(),
            }),
        })
    }

    fn event(&mut self, e: Event) {
        match self {
            Display::Quiet => {}
            Display::Plain => print_event(&mut std::io::stderr().lock(), e),
            Display::Tty(t) => t.event(e),
        }
    }
}

impl TtyDisplay {
    /// Stops the spinners of steps that are still open, leaving their label.
    fn settle(&self) {
        for (n, (bar, label)) in &self.steps {
            if !bar.is_finished() {
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{msg}").expect("valid template"),
                );
                bar.finish_with_message(format!("#{n} {label}"));
            }
        }
    }

    fn event(&mut self, e: Event) {
        use indicatif::{ProgressBar, ProgressStyle};
        let done_style = || ProgressStyle::with_template("{msg}").expect("valid template");
        match e {
            Event::Warning(w) => {
                let _ = self.multi.println(w);
            }
            Event::Step { n, label } => {
                // A step with no end event of its own (FROM) ends when the next begins.
                self.settle();
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .expect("valid template"),
                );
                bar.set_message(format!("#{n} {label}"));
                bar.enable_steady_tick(std::time::Duration::from_millis(100));
                self.steps.insert(n, (bar, label));
            }
            Event::Cached { n } => {
                if let Some((bar, label)) = self.steps.get(&n) {
                    bar.set_style(done_style());
                    bar.finish_with_message(format!("#{n} {label} CACHED"));
                }
            }
            Event::Output { n, data } => {
                for l in String::from_utf8_lossy(&data).lines() {
                    let _ = self.multi.println(format!("#{n} {l}"));
                }
            }
            Event::Done { n, elapsed } => {
                if let Some((bar, label)) = self.steps.get(&n) {
                    bar.set_style(done_style());
                    bar.finish_with_message(format!(
                        "#{n} {label} DONE {:.1}s",
                        elapsed.as_secs_f64()
                    ));
                }
            }
        }
    }
}

fn print_result(
    quiet: bool,
    started: Instant,
    digest: &str,
    run: usize,
    cached: usize,
    tags: &[String],
) {
    if !quiet {
        eprintln!(
            "built {digest} in {:.3}s ({run} steps run, {cached} cached)",
            started.elapsed().as_secs_f64(),
        );
        for t in tags {
            eprintln!("naming to {t}");
        }
    }
    println!("{digest}");
}

fn build_local(
    a: &BuildArgs,
    p: Prepared,
    store: &std::path::Path,
    mut display: Display,
) -> anyhow::Result<()> {
    let store = ImageStore::open(store)
        .with_context(|| format!("opening image store {}", store.display()))?;
    let runner = OciRuntimeRunner::current_exe(store.root().join("build/runtime"))
        .context("locating the gantry binary for RUN steps")?;
    // Network I/O (pulls, downloads, the bridge) runs on this runtime's worker; the
    // builder blocks on it from this thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bridge = BridgeConfig::custom(
        store.root().join("network"),
        &a.bridge,
        &a.subnet,
        &a.chain_prefix,
    )?;
    let net = BuildNet {
        rt: rt.handle().clone(),
        registry: ClientConfig {
            insecure_registries: a.insecure_registries.clone(),
            mtls: a.tls.client_config()?,
            ..Default::default()
        },
        bridge: Arc::new(LazyBridge::new(bridge, rt.handle().clone())),
    };
    let builder = Builder::new(&store, &runner)?.with_net(net);

    // Stream the filtered context and receive it, as an agent would.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let received = ScratchDir(
        builder
            .scratch_dir()
            .join(format!("context-{}-{nanos}", std::process::id())),
    );
    let walker = p.walker;
    let (reader, writer) = std::io::pipe().context("creating the context pipe")?;
    let sender = std::thread::spawn(move || walker.write_tar(writer));
    let received_ok = receive_context(reader, &received.0);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the context streamer panicked"))?;
    sent?;
    received_ok?;

    let req = BuildRequest {
        dockerfile: p.dockerfile,
        options: p.options,
        context: received.0.clone(),
        tags: a.tags.clone(),
        no_cache: a.no_cache,
        network: p.network,
    };
    let started = Instant::now();
    let mut printer = |e: Event| display.event(e);
    let out = builder.build(&req, &mut printer)?;
    print_result(
        a.quiet,
        started,
        &out.manifest_digest.to_string(),
        out.steps_run,
        out.steps_cached,
        &out.tags,
    );
    Ok(())
}

/// Through the agent: spec, then the context stream; progress comes back.
fn build_remote(a: &BuildArgs, p: Prepared, mut display: Display) -> anyhow::Result<()> {
    use gantry_agent::build::context::ChannelWriter;
    use gantry_proto::engine::builder_client::BuilderClient;
    use gantry_proto::engine::{build_event, build_input, BuildInput, BuildSpec};
    use tokio_stream::StreamExt;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let channel = super::container::channel(&a.conn.host).await?;
        let mut client = BuilderClient::new(channel)
            .max_decoding_message_size(gantry_proto::limits::ENGINE_REPLY_MAX)
            .max_encoding_message_size(gantry_proto::limits::ENGINE_REQUEST_MAX);
        let spec = BuildInput {
            input: Some(build_input::Input::Spec(BuildSpec {
                dockerfile: p.dockerfile,
                tags: a.tags.clone(),
                build_args: p.options.build_args.into_iter().collect(),
                target: p.options.target.unwrap_or_default(),
                no_cache: a.no_cache,
                network: a.network.clone().unwrap_or_default(),
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let walker = p.walker;
        let sender = tokio::task::spawn_blocking(move || {
            walker.write_tar(ChannelWriter::new(tx, 256 << 10))
        });
        let chunks = tokio_stream::wrappers::ReceiverStream::new(rx).map(|chunk| BuildInput {
            input: Some(build_input::Input::Context(chunk)),
        });
        let input = tokio_stream::once(spec).chain(chunks);
        let started = Instant::now();
        let mut events = client
            .build(input)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let mut result = None;
        while let Some(ev) = events
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        {
            let e = match ev.event {
                Some(build_event::Event::Warning(w)) => Event::Warning(w),
                Some(build_event::Event::Step(s)) => Event::Step {
                    n: s.n as usize,
                    label: s.label,
                },
                Some(build_event::Event::Cached(n)) => Event::Cached { n: n as usize },
                Some(build_event::Event::Output(o)) => Event::Output {
                    n: o.n as usize,
                    data: o.data,
                },
                Some(build_event::Event::Done(d)) => Event::Done {
                    n: d.n as usize,
                    elapsed: std::time::Duration::from_micros(d.elapsed_micros),
                },
                Some(build_event::Event::Result(r)) => {
                    result = Some(r);
                    continue;
                }
                None => continue,
            };
            display.event(e);
        }
        // The walker's own errors (an unreadable file) explain a cut-off stream best.
        sender
            .await
            .map_err(|_| anyhow::anyhow!("the context streamer panicked"))??;
        let r = result.context("the agent ended the build without a result")?;
        print_result(
            a.quiet,
            started,
            &r.digest,
            r.steps_run as usize,
            r.steps_cached as usize,
            &r.tags,
        );
        Ok(())
    })
}

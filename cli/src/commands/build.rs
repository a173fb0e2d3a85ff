//! `gantry build`: builds an image from a Dockerfile into the local image store.
//!
//! Like the other image verbs (`pull`, `push`, `images`) it opens the store directly
//! (`--store DIR` or `GANTRY_STORE`, default `/var/lib/gantry/agent`, shared safely with a
//! running agent) and runs the builder (`gantry_agent::build::executor`) in this process;
//! `RUN` steps run under `gantry runtime` (this binary). The context travels as it would
//! to an agent: the `.dockerignore`-filtered tree is streamed as a tar (no temp tar file)
//! and received into the builder's scratch dir.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use gantry_agent::build::context::ContextWalker;
use gantry_agent::build::executor::{receive_context, BuildRequest, Builder, Event};
use gantry_agent::build::run::{NetworkMode, OciRuntimeRunner};
use gantry_agent::build::stages::BuildOptions;
use gantry_agent::image::ImageStore;

use super::image::StoreArgs;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Plain,
    Tty,
}

#[derive(Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub store: StoreArgs,
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
    /// Progress output (tty prints the plain format too).
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Network of RUN steps: none (default) or host.
    #[arg(long, default_value = "none")]
    pub network: String,
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

fn build(a: &BuildArgs) -> anyhow::Result<()> {
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
    let network = NetworkMode::parse(&a.network)?;
    let options = BuildOptions {
        build_args: build_args(&a.build_args)?,
        target: a.target.clone(),
        ..BuildOptions::default()
    };

    let store = ImageStore::open(&a.store.store)
        .with_context(|| format!("opening image store {}", a.store.store.display()))?;
    let runner = OciRuntimeRunner::current_exe(store.root().join("build/runtime"))
        .context("locating the gantry binary for RUN steps")?;
    let builder = Builder::new(&store, &runner)?;

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
    let walker = ContextWalker::new(&context, in_context.as_deref())?;
    let (reader, writer) = std::io::pipe().context("creating the context pipe")?;
    let sender = std::thread::spawn(move || walker.write_tar(writer));
    let received_ok = receive_context(reader, &received.0);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the context streamer panicked"))?;
    sent?;
    received_ok?;

    let req = BuildRequest {
        dockerfile,
        options,
        context: received.0.clone(),
        tags: a.tags.clone(),
        no_cache: a.no_cache,
        network,
    };
    let quiet = a.quiet;
    let started = Instant::now();
    let mut stderr = std::io::stderr().lock();
    let mut printer = |e: Event| {
        if quiet {
            return;
        }
        let _ = match e {
            Event::Warning(w) => writeln!(stderr, "{w}"),
            Event::Step { n, label } => writeln!(stderr, "#{n} {label}"),
            Event::Cached { n } => writeln!(stderr, "#{n} CACHED"),
            Event::Output { n, data } => {
                let text = String::from_utf8_lossy(&data);
                text.lines().try_for_each(|l| writeln!(stderr, "#{n} {l}"))
            }
            Event::Done { n, elapsed } => {
                writeln!(stderr, "#{n} DONE {:.3}s", elapsed.as_secs_f64())
            }
        };
    };
    let out = builder.build(&req, &mut printer)?;
    if !quiet {
        eprintln!(
            "built {} in {:.3}s ({} steps run, {} cached)",
            out.manifest_digest,
            started.elapsed().as_secs_f64(),
            out.steps_run,
            out.steps_cached
        );
        for t in &out.tags {
            eprintln!("naming to {t}");
        }
    }
    println!("{}", out.manifest_digest);
    Ok(())
}

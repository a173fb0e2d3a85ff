//! `gantry images`, `gantry image ls|inspect|load|save|tag|rm|prune|unpack`, `gantry tag`.
//! (`gantry rmi` goes through the agent, which knows the containers: `container.rs`.)
//!
//! Until the agent's engine daemon exists, these verbs open the local image store directly:
//! `--store DIR` or `GANTRY_STORE` (default `/var/lib/gantry/agent`). The store is safe to
//! share with a running agent (atomic files, cross-process locks). Because containers are
//! not known here yet, `prune` and `rmi` keep every active snapshot (containers' rootfs).
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use gantry_agent::image::archive::{self, Format};
use gantry_agent::image::gc::{self, GcReport};
use gantry_agent::image::snapshot::Kind;
use gantry_agent::image::{ImageStore, Reference, Snapshotter};

use crate::output;

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Image store directory (the agent root).
    #[arg(long, env = "GANTRY_STORE", default_value = "/var/lib/gantry/agent")]
    pub store: PathBuf,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ArchiveFormat {
    Docker,
    Oci,
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// List images.
    Ls(ImagesArgs),
    /// Show an image's manifest, config, diff IDs and chain IDs as JSON.
    Inspect {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Load a `docker save` archive or an OCI layout (directory or tar).
    Load {
        #[command(flatten)]
        store: StoreArgs,
        /// The archive or layout directory.
        #[arg(short, long)]
        input: PathBuf,
        /// Repository for images the archive names only by tag (or not at all).
        #[arg(long)]
        name: Option<String>,
    },
    /// Save images to a docker archive or an OCI layout (tar; directory if OUTPUT ends with /).
    Save {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "docker")]
        format: ArchiveFormat,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Point a new name at an image.
    Tag(TagArgs),
    /// Remove image names, then what no image uses any more.
    Rm(RmiArgs),
    /// Remove blobs and snapshots no image uses.
    Prune {
        #[command(flatten)]
        store: StoreArgs,
        /// Keep blobs written less than this many seconds ago (an import or pull may not
        /// have named its image yet).
        #[arg(long, default_value = "0")]
        keep_recent: u64,
    },
    /// Unpack an image's layers into snapshots (done before a container starts).
    Unpack {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
    },
}

#[derive(Args)]
pub struct TagArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Existing image (name or digest).
    pub source: String,
    /// New name.
    pub target: String,
}

#[derive(Args)]
pub struct RmiArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(required = true)]
    pub names: Vec<String>,
}

fn run(f: impl FnOnce() -> anyhow::Result<()>) -> i32 {
    match f() {
        Ok(()) => 0,
        Err(e) => {
            // The store's errors already quote their sources: print each cause only once.
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

fn open(s: &StoreArgs) -> anyhow::Result<ImageStore> {
    ImageStore::open(&s.store).with_context(|| format!("opening image store {}", s.store.display()))
}

/// `gantry images`.
pub fn images(args: ImagesArgs) -> i32 {
    run(|| list(&args))
}

/// `gantry tag`.
pub fn tag(args: TagArgs) -> i32 {
    run(|| do_tag(&args))
}

/// `gantry image …`.
pub fn main(args: ImageArgs) -> i32 {
    run(|| match args.command {
        ImageCommand::Ls(a) => list(&a),
        ImageCommand::Inspect { store, names } => {
            let store = open(&store)?;
            let mut out = Vec::new();
            for n in &names {
                let img = store.resolve_str(n)?;
                let unpacked = img
                    .top_chain_id()
                    .is_none_or(|c| store.snapshotter().stat(&c.to_string()).is_ok());
                out.push(serde_json::json!({
                    "name": n,
                    "target": img.target,
                    "targetMediaType": img.target_media_type,
                    "manifestDigest": img.manifest_digest,
                    "manifest": img.manifest,
                    "configDigest": img.config_digest,
                    "config": img.config,
                    "diffIds": img.diff_ids,
                    "chainIds": img.chain_ids,
                    "size": img.size(),
                    "unpacked": unpacked,
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        ImageCommand::Load { store, input, name } => {
            let store = open(&store)?;
            let name = name.map(|n| Reference::parse(&n)).transpose()?;
            let loaded = archive::load(&store, &input, name.as_ref())?;
            for l in loaded {
                match l.name {
                    Some(n) => println!("Loaded image: {n}"),
                    None => println!("Loaded image ID: {} (unnamed: use --name REPO)", l.digest),
                }
            }
            Ok(())
        }
        ImageCommand::Save {
            store,
            output,
            format,
            names,
        } => {
            let store = open(&store)?;
            let mut images = Vec::new();
            for n in &names {
                let img = store.resolve_str(n)?;
                let name = Reference::parse(n)
                    .ok()
                    .filter(|r| r.tag().is_some() && r.digest().is_none());
                images.push((name, img));
            }
            let format = match format {
                ArchiveFormat::Docker => Format::Docker,
                ArchiveFormat::Oci => Format::Oci,
            };
            archive::save(&store, &images, &output, format)?;
            Ok(())
        }
        ImageCommand::Tag(a) => do_tag(&a),
        ImageCommand::Rm(a) => do_rmi(&a),
        ImageCommand::Prune { store, keep_recent } => {
            let store = open(&store)?;
            let r = prune(&store, Duration::from_secs(keep_recent))?;
            print_report(&r);
            Ok(())
        }
        ImageCommand::Unpack { store, name } => {
            let store = open(&store)?;
            let img = store.resolve_str(&name)?;
            match store.unpack(&img)? {
                Some(top) => println!("{top}"),
                None => println!("(no layers)"),
            }
            Ok(())
        }
    })
}

fn do_tag(a: &TagArgs) -> anyhow::Result<()> {
    let store = open(&a.store)?;
    let dst = Reference::parse(&a.target)?;
    if dst.digest().is_some() {
        bail!("target {:?} must be a name:tag, not a digest", a.target);
    }
    store.tag(&a.source, &dst)?;
    Ok(())
}

fn do_rmi(a: &RmiArgs) -> anyhow::Result<()> {
    let store = open(&a.store)?;
    // Validate every name first: a bad one changes nothing.
    let refs = a
        .names
        .iter()
        .map(|n| Reference::parse(n).with_context(|| format!("image {n:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for r in &refs {
        if store.index().get(r)?.is_none() {
            bail!("no such image: {r}");
        }
    }
    for r in &refs {
        store.untag(r)?;
        println!("Untagged: {r}");
    }
    let report = prune(&store, Duration::ZERO)?;
    print_report(&report);
    Ok(())
}

/// Prune keeping every active snapshot: until the engine exists the CLI cannot tell which
/// belong to containers.
fn prune(store: &ImageStore, keep_recent: Duration) -> anyhow::Result<GcReport> {
    let roots: HashSet<String> = store
        .snapshotter()
        .list()?
        .into_iter()
        .filter(|i| i.kind != Kind::Committed)
        .map(|i| i.key)
        .collect();
    Ok(gc::collect(store, &roots, keep_recent)?)
}

fn print_report(r: &GcReport) {
    for b in &r.blobs_removed {
        println!("Deleted: {b}");
    }
    println!(
        "Removed {} blobs ({}), {} snapshots",
        r.blobs_removed.len(),
        human(r.bytes_freed),
        r.snapshots_removed.len()
    );
}

fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}{}", units[i]).replace(".000", "")
    }
}

fn list(a: &ImagesArgs) -> anyhow::Result<()> {
    let store = open(&a.store)?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for e in store.index().list()? {
        let r = Reference::parse(&e.name)?;
        let resolved = store
            .resolve_digest(&e.name, &e.digest, Some(&e.media_type))
            .ok();
        let config_digest = resolved.as_ref().map(|i| i.config_digest.clone());
        let created = resolved.as_ref().and_then(|i| i.config.created().clone());
        let size = resolved.as_ref().map(|i| i.size());
        rows.push(vec![
            r.name(),
            r.tag().unwrap_or("<none>").to_string(),
            if resolved.is_some() {
                e.digest.hex()[..12].to_string()
            } else {
                format!("{} <incomplete>", &e.digest.hex()[..12])
            },
            created.clone().unwrap_or_else(|| "-".into()),
            size.map(human).unwrap_or_else(|| "-".into()),
        ]);
        json.push(serde_json::json!({
            "name": e.name,
            "repository": r.name(),
            "tag": r.tag(),
            "digest": e.digest,
            "mediaType": e.media_type,
            "configDigest": config_digest,
            "created": created,
            "size": size,
        }));
    }
    match a.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        OutputFormat::Table => {
            output::table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)
        }
    }
    Ok(())
}

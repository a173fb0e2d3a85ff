//! `gantry registry …`: the OCI distribution server, and its offline garbage collection.
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RegistryArgs {
    #[command(subcommand)]
    pub command: Option<RegistryCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Removes blobs no manifest references (run it while the registry is stopped).
    Gc(GcArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (plain HTTP; put a TLS proxy in front for remote clients).
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: String,
    /// Storage directory.
    #[arg(long, default_value = "/var/lib/gantry/registry")]
    pub root: PathBuf,
    /// htpasswd file (bcrypt) of users who may pull and push.
    #[arg(long)]
    pub htpasswd_write: Option<PathBuf>,
    /// htpasswd file (bcrypt) of users who may only pull.
    #[arg(long)]
    pub htpasswd_read: Option<PathBuf>,
    /// Largest blob accepted, in bytes.
    #[arg(long, default_value_t = 16 << 30)]
    pub max_blob_size: u64,
    /// Most uploads in progress at once (beyond: TOO_MANY_REQUESTS).
    #[arg(long, default_value_t = 1024)]
    pub max_uploads: usize,
    /// fsync each blob before it becomes visible (slower, survives power loss).
    #[arg(long)]
    pub fsync: bool,
    /// Refuse DELETE of manifests and blobs (UNSUPPORTED).
    #[arg(long)]
    pub no_delete: bool,
}

#[derive(Args)]
pub struct GcArgs {
    /// Storage directory.
    #[arg(long, default_value = "/var/lib/gantry/registry")]
    pub root: PathBuf,
    /// Only report what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn main(args: RegistryArgs) -> i32 {
    let result = match args.command {
        Some(RegistryCommand::Gc(gc)) => run_gc(gc),
        None => serve(args.serve),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gantry registry: {e:#}");
            1
        }
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let users = gantry_registry::auth::Users::load(
        a.htpasswd_read.as_deref(),
        a.htpasswd_write.as_deref(),
    )?;
    let storage = gantry_registry::FsStorage::open(
        &a.root,
        gantry_registry::StorageConfig {
            max_blob_size: a.max_blob_size,
            max_uploads: a.max_uploads,
            fsync: a.fsync,
        },
    )?;
    let registry = gantry_registry::Registry::new(storage, users, !a.no_delete);
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        tracing::info!(addr = %listener.local_addr()?, root = %a.root.display(), "registry serving");
        gantry_registry::serve(listener, registry)
            .await
            .context("serving")
    })
}

fn run_gc(a: GcArgs) -> anyhow::Result<()> {
    let r = gantry_registry::gc::collect(&a.root, a.dry_run)
        .with_context(|| format!("collecting garbage in {}", a.root.display()))?;
    let verb = if a.dry_run { "would remove" } else { "removed" };
    println!(
        "{} manifests, {} blobs kept; {verb} {} blobs ({} bytes) and {} repository links",
        r.manifests, r.blobs_kept, r.blobs_removed, r.bytes_freed, r.links_removed
    );
    Ok(())
}

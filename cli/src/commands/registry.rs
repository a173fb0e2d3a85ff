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
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: String,
    /// Storage directory.
    #[arg(long, default_value = "/var/lib/gantry/registry")]
    pub root: PathBuf,
    /// This registry's certificate (PEM, from the cluster CA; role registry). Serves mutual
    /// TLS: clients need a certificate from --tls-ca; the file is read again when it changes.
    #[arg(long, requires_all = ["tls_key", "tls_ca"], conflicts_with = "insecure")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA certificate that client certificates must chain to (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Serve plain HTTP, for local experiments and third-party clients (with the htpasswd
    /// users, if any; without them, anyone may push).
    #[arg(long)]
    pub insecure: bool,
    /// htpasswd file (bcrypt) of users who may pull and push (--insecure only).
    #[arg(long, requires = "insecure")]
    pub htpasswd_write: Option<PathBuf>,
    /// htpasswd file (bcrypt) of users who may only pull (--insecure only).
    #[arg(long, requires = "insecure")]
    pub htpasswd_read: Option<PathBuf>,
    /// Largest blob accepted, in bytes.
    #[arg(long, default_value_t = gantry_registry::limits::DEFAULT_MAX_BLOB_SIZE)]
    pub max_blob_size: u64,
    /// Most uploads in progress at once (beyond: TOO_MANY_REQUESTS).
    #[arg(long, default_value_t = gantry_registry::limits::DEFAULT_MAX_UPLOADS)]
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
    // check everything before touching the storage
    let tls = match (&a.tls_cert, &a.tls_key, &a.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let certs = gantry_security::reload::CredentialFiles::load(cert, key)?;
            let id = certs.identity();
            if id.role != gantry_security::Role::Registry {
                anyhow::bail!(
                    "{}: the certificate is for {id}; a registry needs one with role registry",
                    cert.display()
                );
            }
            Some(gantry_registry::tls::server_config(ca, certs)?)
        }
        _ if a.insecure => None,
        _ => anyhow::bail!(
            "the registry serves mutual TLS: give --tls-cert, --tls-key and --tls-ca \
             (or --insecure for plain HTTP)"
        ),
    };
    let storage_config = gantry_registry::StorageConfig {
        max_blob_size: a.max_blob_size,
        max_uploads: a.max_uploads,
        fsync: a.fsync,
    };
    let registry = match tls {
        Some(_) => gantry_registry::Registry::with_roles(
            gantry_registry::FsStorage::open(&a.root, storage_config)?,
            !a.no_delete,
        ),
        None => {
            let users = gantry_registry::auth::Users::load(
                a.htpasswd_read.as_deref(),
                a.htpasswd_write.as_deref(),
            )?;
            gantry_registry::Registry::new(
                gantry_registry::FsStorage::open(&a.root, storage_config)?,
                users,
                !a.no_delete,
            )
        }
    };
    let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener.local_addr()?;
        match tls {
            Some(cfg) => {
                tracing::info!(%addr, root = %a.root.display(), "registry serving mutual TLS");
                let listener = gantry_registry::tls::TlsListener::new(listener, cfg)?;
                gantry_registry::serve_tls(listener, registry).await
            }
            None => {
                tracing::warn!(%addr, root = %a.root.display(), "registry serving plain HTTP (--insecure)");
                gantry_registry::serve(listener, registry).await
            }
        }
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

//! `gantry pull` and `gantry push`: the registry client against the local image store.
use anyhow::Context;
use clap::Args;
use gantry_agent::distribution::progress::describe;
use gantry_agent::distribution::{
    self, ClientConfig, Credentials, LayerEvent, LinePrinter, Progress,
};
use gantry_agent::image::{Digest, ImageStore};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Args)]
pub struct RegistryClientArgs {
    /// Image store directory (the agent root), as for `gantry images`.
    #[arg(long, env = "GANTRY_STORE", default_value = "/var/lib/gantry/agent")]
    pub store: PathBuf,
    /// Reach this registry (host[:port]) over plain HTTP (loopback registries always are).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// User name for the image's registry (password from GANTRY_REGISTRY_PASSWORD).
    #[arg(long, env = "GANTRY_REGISTRY_USER")]
    pub username: Option<String>,
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    #[command(flatten)]
    pub tls: RegistryTlsArgs,
}

/// A cluster credential for mutual TLS with the cluster's registries.
#[derive(Args, Clone)]
pub struct RegistryTlsArgs {
    /// Client certificate (PEM, from the cluster CA) for mutual TLS with the registry
    /// (every registry not given as --insecure-registry, loopback ones included).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA certificate the registry's certificate must chain to (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
}

impl RegistryTlsArgs {
    /// The rustls configuration, when a credential is given.
    pub fn client_config(&self) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(distribution::tls::client_config(
                &distribution::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                },
            )?)),
            _ => Ok(None),
        }
    }
}

#[derive(Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub client: RegistryClientArgs,
    /// Image to pull: host[:port]/repository[:tag][@digest].
    pub image: String,
}

#[derive(Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub client: RegistryClientArgs,
    /// Upload blobs larger than this many bytes in chunks (PATCH) instead of one PUT.
    #[arg(long)]
    pub chunk_size: Option<u64>,
    /// Local image to push: host[:port]/repository[:tag].
    pub image: String,
}

fn config(
    a: &RegistryClientArgs,
    image: &str,
    chunk_size: Option<u64>,
) -> anyhow::Result<ClientConfig> {
    let mut credentials = Vec::new();
    if let Some(user) = &a.username {
        let password = std::env::var("GANTRY_REGISTRY_PASSWORD")
            .context("--username needs the password in GANTRY_REGISTRY_PASSWORD")?;
        let r = gantry_agent::image::Reference::parse(image)?;
        if let Some(host) = r.registry() {
            credentials.push((
                host.to_string(),
                Credentials {
                    username: user.clone(),
                    password,
                },
            ));
        }
    }
    Ok(ClientConfig {
        insecure_registries: a.insecure_registries.clone(),
        credentials,
        max_parallel: a.parallel,
        chunk_size,
        mtls: a.tls.client_config()?,
    })
}

/// One progress bar per layer on a terminal, like `docker pull`.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Progress for Bars {
    fn layer(&self, digest: &Digest, event: LayerEvent) {
        let mut bars = self.bars.lock().unwrap();
        let size = match &event {
            LayerEvent::Downloading { size } | LayerEvent::Uploading { size } => Some(*size),
            _ => None,
        };
        if let Some(size) = size {
            let bar = self.multi.add(ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix}: {msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(digest.hex()[..12].to_string());
            bar.set_message(describe(&event).unwrap_or_default());
            bars.insert(digest.clone(), bar);
            return;
        }
        let Some(bar) = bars.get(digest) else {
            if let Some(text) = describe(&event) {
                let _ = self
                    .multi
                    .println(format!("{}: {text}", &digest.hex()[..12]));
            }
            return;
        };
        match event {
            LayerEvent::Progress { received, .. } => bar.set_position(received),
            LayerEvent::Downloaded { size } | LayerEvent::Pushed { size } => {
                bar.set_position(size);
                bar.set_message(describe(&event).unwrap_or_default());
                if matches!(event, LayerEvent::Pushed { .. }) {
                    bar.finish();
                }
            }
            other => {
                bar.finish_with_message(describe(&other).unwrap_or_default());
            }
        }
    }

    fn message(&self, text: &str) {
        let _ = self.multi.println(text);
    }
}

/// Bars on a terminal, plain lines otherwise (logs, pipes, CI).
fn progress() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(Bars::new())
    } else {
        Arc::new(LinePrinter)
    }
}

fn run(f: impl std::future::Future<Output = anyhow::Result<()>>) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gantry: starting tokio: {e}");
            return 1;
        }
    };
    match rt.block_on(f) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gantry: {e:#}");
            1
        }
    }
}

pub fn pull(a: PullArgs) -> i32 {
    run(async move {
        let cfg = config(&a.client, &a.image, None)?;
        let store = ImageStore::open(&a.client.store)
            .with_context(|| format!("opening the image store in {}", a.client.store.display()))?;
        let r = distribution::pull(&store, &a.image, &cfg, progress().as_ref()).await?;
        println!("{}", r.name.unwrap_or_else(|| a.image.clone()));
        println!("Digest: {}", r.digest);
        Ok(())
    })
}

pub fn push(a: PushArgs) -> i32 {
    run(async move {
        let cfg = config(&a.client, &a.image, a.chunk_size)?;
        let store = ImageStore::open(&a.client.store)
            .with_context(|| format!("opening the image store in {}", a.client.store.display()))?;
        let r = distribution::push(&store, &a.image, &cfg, progress()).await?;
        if let Some(d) = r.digest {
            println!("Digest: {d}");
        }
        Ok(())
    })
}

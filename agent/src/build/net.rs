//! What a build reaches beyond the image store: registries (a `FROM` or `COPY --from`
//! image that is not in the store is pulled), URLs (`ADD <url>`), and the network of `RUN`
//! containers (`--network bridge|host|none`).
//!
//! Vocabulary:
//! - **build net** ([`BuildNet`]): the async runtime the builder's blocking thread borrows
//!   for network I/O (`Handle::block_on`), the registry client's settings (the agent's
//!   `--insecure-registry` list; loopback registries are plain HTTP), and the bridge;
//! - **bridge source** ([`BridgeSource`]): where the bridge network comes from — the
//!   agent's engine (the same bridge, leases and NAT as its containers), or, for `gantry
//!   build --store`, a [`LazyBridge`] opened on the first `RUN` that needs it;
//! - **step netns** ([`StepNetns`]): a `RUN` container's network namespace, pinned in the
//!   step's scratch dir before the container starts: `none` = only `lo`, up; `bridge` = a
//!   veth on the bridge, an address and a default route (the lease is named after the
//!   step's container id). Removed (detached, unpinned) on drop.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::distribution::{self, ClientConfig, DistributionError, LayerEvent, Progress};
use crate::image::{Digest, ImageStore};
use crate::network::{netns, BridgeConfig, BridgeNetwork};

/// Where the bridge network of `RUN --network bridge` steps comes from.
pub trait BridgeSource: Send + Sync {
    /// The bridge, or why there is none (named so the user can act on it).
    fn bridge(&self) -> Result<&BridgeNetwork, String>;
}

impl BridgeSource for crate::engine::Engine {
    fn bridge(&self) -> Result<&BridgeNetwork, String> {
        self.network().ok_or_else(|| {
            "the agent runs without a bridge network (--no-bridge): use --network none or host"
                .to_string()
        })
    }
}

/// A bridge opened when first needed (by `gantry build --store`, which has no agent):
/// bridge, chains and leases as the agent's default network would have them, unless the
/// config says otherwise. Opening is serialized across processes by a lock file beside
/// the leases; leases of builders that died are removed then.
pub struct LazyBridge {
    cfg: BridgeConfig,
    rt: tokio::runtime::Handle,
    net: OnceLock<Result<BridgeNetwork, String>>,
}

impl LazyBridge {
    pub fn new(cfg: BridgeConfig, rt: tokio::runtime::Handle) -> LazyBridge {
        LazyBridge {
            cfg,
            rt,
            net: OnceLock::new(),
        }
    }

    fn open(&self) -> Result<BridgeNetwork, String> {
        let what = |e: &dyn std::fmt::Display| format!("bridge {}: {e}", self.cfg.bridge);
        fs::create_dir_all(&self.cfg.state_dir).map_err(|e| what(&e))?;
        let lock_path = self.cfg.state_dir.join("bridge.lock");
        let lock = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| what(&e))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| what(&e))?;
        self.rt.block_on(async {
            let net = BridgeNetwork::open(self.cfg.clone())
                .await
                .map_err(|e| what(&e))?;
            // Leases of `RUN` steps whose builder died (killed mid-step).
            let leases = net.leases().map_err(|e| what(&e))?;
            for id in leases.leases.keys() {
                if super::executor::of_dead_builder(id) {
                    net.detach(id).await.map_err(|e| what(&e))?;
                }
            }
            Ok(net)
        })
    }
}

impl BridgeSource for LazyBridge {
    fn bridge(&self) -> Result<&BridgeNetwork, String> {
        self.net
            .get_or_init(|| self.open())
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// See the module doc.
#[derive(Clone)]
pub struct BuildNet {
    pub rt: tokio::runtime::Handle,
    pub registry: ClientConfig,
    pub bridge: Arc<dyn BridgeSource>,
}

/// Progress of a pull, kept as lines (the builder shows them as the `FROM` step's output).
#[derive(Default)]
struct Lines(Mutex<Vec<u8>>);

impl Progress for Lines {
    fn layer(&self, digest: &Digest, event: LayerEvent) {
        if let Some(text) = distribution::progress::describe(&event) {
            let short = &digest.hex()[..12];
            let _ = writeln!(self.0.lock().unwrap(), "{short}: {text}");
        }
    }
    fn message(&self, text: &str) {
        let _ = writeln!(self.0.lock().unwrap(), "{text}");
    }
}

/// A downloaded file: its sha256 and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub digest: String,
    pub size: u64,
}

/// What is remembered of a URL's last download (`<cache>/<sha256(url)>.json`), its file
/// being `<cache>/<digest hex>.data`: the validators to send next time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Remembered {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    digest: String,
    size: u64,
}

impl Remembered {
    fn data(&self, cache: &Path) -> PathBuf {
        let hex = self.digest.strip_prefix("sha256:").unwrap_or(&self.digest);
        cache.join(format!("{hex}.data"))
    }
}

fn url_key(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))
}

fn recall(cache: &Path, url: &str) -> Option<Remembered> {
    let bytes = fs::read(cache.join(format!("{}.json", url_key(url)))).ok()?;
    let r: Remembered = serde_json::from_slice(&bytes).ok()?;
    (r.url == url && r.data(cache).is_file()).then_some(r)
}

/// Keeps `file` (just downloaded, verified) and its validators for the next build; best
/// effort: a failure only costs a full download next time.
fn remember(cache: &Path, r: &Remembered, file: &Path) -> std::io::Result<()> {
    fs::create_dir_all(cache)?;
    let data = r.data(cache);
    if !data.exists() {
        let tmp = cache.join(format!(".{}.tmp", url_key(&r.url)));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(file, &tmp).is_err() {
            fs::copy(file, &tmp)?;
        }
        fs::rename(&tmp, &data)?;
    }
    let meta = cache.join(format!("{}.json", url_key(&r.url)));
    let old = recall(cache, &r.url);
    let tmp = cache.join(format!(".{}.json.tmp", url_key(&r.url)));
    fs::write(&tmp, serde_json::to_vec(r).expect("serializes"))?;
    fs::rename(&tmp, &meta)?;
    // The previous version's file, unless another URL's record names it too (rare; it
    // is then downloaded again).
    if let Some(o) = old.filter(|o| o.digest != r.digest) {
        let _ = fs::remove_file(o.data(cache));
    }
    Ok(())
}

/// Why a download failed (the builder adds the line and the URL).
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0}")]
    Http(String),
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The error and its causes on one line (reqwest's own message hides the cause, e.g.
/// "error sending request" without "Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_msg = c.to_string();
        if !msg.contains(&c_msg) {
            msg = format!("{msg}: {c_msg}");
        }
        cause = c.source();
    }
    msg
}

impl BuildNet {
    /// Pulls `reference` into `store` (the registry client's rules: loopback and
    /// `--insecure-registry` hosts over plain HTTP, else HTTPS); returns the progress lines.
    pub fn pull(&self, store: &ImageStore, reference: &str) -> Result<Vec<u8>, DistributionError> {
        let lines = Lines::default();
        self.rt
            .block_on(distribution::pull(store, reference, &self.registry, &lines))?;
        Ok(lines.0.into_inner().unwrap())
    }

    /// Downloads `url` into the new file `dest` (mode 0600, as Docker gives `ADD <url>`
    /// files), hashing it on the way. With a `cache` dir, a URL downloaded before is asked
    /// for with its validators (`If-None-Match`, `If-Modified-Since`), and on 304 Not
    /// Modified the remembered copy is used. On failure `dest` is removed.
    pub fn download(
        &self,
        url: &str,
        dest: &Path,
        cache: Option<&Path>,
    ) -> Result<Downloaded, DownloadError> {
        let r = self.rt.block_on(fetch(url, dest, cache));
        if r.is_err() {
            let _ = fs::remove_file(dest);
        }
        r
    }
}

async fn fetch(url: &str, dest: &Path, cache: Option<&Path>) -> Result<Downloaded, DownloadError> {
    use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
    use std::os::unix::fs::OpenOptionsExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| DownloadError::Http(chain(&e)))?;
    let known = cache.and_then(|c| recall(c, url));
    let mut req = http.get(url);
    if let Some(k) = &known {
        if let Some(e) = &k.etag {
            req = req.header(IF_NONE_MATCH, e);
        }
        if let Some(l) = &k.last_modified {
            req = req.header(IF_MODIFIED_SINCE, l);
        }
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| DownloadError::Http(chain(&e)))?;
    let io = |source| DownloadError::Io {
        path: dest.to_path_buf(),
        source,
    };
    if let (reqwest::StatusCode::NOT_MODIFIED, Some(k), Some(c)) = (resp.status(), &known, cache) {
        let data = k.data(c);
        if fs::hard_link(&data, dest).is_err() {
            fs::copy(&data, dest).map_err(io)?;
        }
        return Ok(Downloaded {
            digest: k.digest.clone(),
            size: k.size,
        });
    }
    if !resp.status().is_success() {
        return Err(DownloadError::Status(resp.status().as_u16()));
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
    let mut file = fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io)?;
    let mut h = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| DownloadError::Http(chain(&e)))?
    {
        h.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).map_err(io)?;
    }
    file.sync_all().map_err(io)?;
    let digest = format!("sha256:{}", hex::encode(h.finalize()));
    if let Some(c) = cache.filter(|_| etag.is_some() || last_modified.is_some()) {
        let r = Remembered {
            url: url.to_string(),
            etag,
            last_modified,
            digest: digest.clone(),
            size,
        };
        if let Err(e) = remember(c, &r, dest) {
            tracing::warn!(url, error = %e, "remembering a download for the next build");
        }
    }
    Ok(Downloaded { digest, size })
}

/// A `RUN` step's pinned network namespace (see the module doc); undone on drop.
pub struct StepNetns {
    pub path: PathBuf,
    /// The bridge lease's name, when attached.
    attached: Option<(String, Arc<dyn BridgeSource>, tokio::runtime::Handle)>,
}

impl StepNetns {
    /// `none`: a new netns at `path` with `lo` up.
    pub fn loopback(path: &Path, rt: &tokio::runtime::Handle) -> Result<StepNetns, String> {
        netns::create(path).map_err(|e| e.to_string())?;
        let ns = StepNetns {
            path: path.to_path_buf(),
            attached: None,
        };
        rt.block_on(crate::network::setup_loopback_only(path))
            .map_err(|e| e.to_string())?;
        Ok(ns)
    }

    /// `bridge`: a new netns at `path`, attached to the bridge as container `id`.
    pub fn bridge(path: &Path, id: &str, net: &BuildNet) -> Result<StepNetns, String> {
        let bridge = net.bridge.bridge()?;
        netns::create(path).map_err(|e| e.to_string())?;
        let mut ns = StepNetns {
            path: path.to_path_buf(),
            attached: None,
        };
        net.rt
            .block_on(bridge.attach(id, path, &[]))
            .map_err(|e| e.to_string())?;
        ns.attached = Some((id.to_string(), net.bridge.clone(), net.rt.clone()));
        Ok(ns)
    }
}

impl Drop for StepNetns {
    fn drop(&mut self) {
        if let Some((id, source, rt)) = self.attached.take() {
            if let Ok(b) = source.bridge() {
                if let Err(e) = rt.block_on(b.detach(&id)) {
                    tracing::warn!(id, error = %e, "build step: detaching from the bridge");
                }
            }
        }
        if let Err(e) = netns::remove(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "build step: removing its netns");
        }
    }
}

/// A bridge `RUN` container's `/etc/resolv.conf`: the bridge's DNS when it has one (the
/// cluster's service discovery), else the host's without loopback nameservers.
pub fn resolv_conf(net: &BuildNet) -> String {
    if let Ok(Some(dns)) = net.bridge.bridge().map(|b| b.config().dns) {
        return format!("nameserver {dns}\n");
    }
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    crate::engine::config::bridge_resolv_conf(&host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(url: &str, content: &str) -> Remembered {
        Remembered {
            url: url.into(),
            etag: Some(format!("\"{}\"", content.len())),
            last_modified: None,
            digest: Digest::of(content.as_bytes()).to_string(),
            size: content.len() as u64,
        }
    }

    #[test]
    fn a_remembered_download_is_replaced_by_the_next_and_needs_its_file() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("urls");
        let url = "http://h/f.txt";
        let file = t.path().join("f");
        fs::write(&file, "one").unwrap();
        let one = record(url, "one");
        remember(&cache, &one, &file).unwrap();
        let got = recall(&cache, url).expect("remembered");
        assert_eq!(got.digest, one.digest);
        assert_eq!(fs::read_to_string(one.data(&cache)).unwrap(), "one");
        assert!(recall(&cache, "http://h/other").is_none());

        fs::remove_file(&file).unwrap();
        fs::write(&file, "two!").unwrap();
        let two = record(url, "two!");
        remember(&cache, &two, &file).unwrap();
        assert_eq!(recall(&cache, url).unwrap().digest, two.digest);
        assert!(!one.data(&cache).exists(), "the old copy is gone");

        // A record whose file is missing is no record.
        fs::remove_file(two.data(&cache)).unwrap();
        assert!(recall(&cache, url).is_none());
    }
}

//! The builder: runs a planned Dockerfile into an image in the image store.
//!
//! Vocabulary:
//! - **build request** ([`BuildRequest`]): the Dockerfile text, options, the received
//!   context directory (already filtered by `.dockerignore` on the sending side), names;
//! - **stage result**: a stage's final [`StageState`] and cache key; later stages build
//!   `FROM` it or `COPY --from` it;
//! - **step**: one instruction. Its cache key ([`super::cache`]) is looked up first; a hit
//!   takes the recorded state, a miss executes: config-only instructions change the config
//!   ([`super::config`]), `COPY`/`ADD` write a layer from the context or another stage,
//!   `RUN` runs in a container on an overlay of the parent's snapshots plus a fresh upper
//!   dir, whose diff ([`super::layer::diff_upper`]) is the layer;
//! - **event** ([`Event`]): progress, BuildKit-like — each step, cached or run, its
//!   output, its time.
//!
//! Layers are stored uncompressed (`…layer.v1.tar`): the build writes each byte once and
//! the digest is the diff id; a registry push sends them as they are. Nothing half-made
//! stays behind a failure: a step's mounts, container, cgroup, snapshot and temp dirs are
//! undone by guards; the image is only named after its manifest is stored.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::image::manifest::{self, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use crate::image::{
    ContentError, ContentWriter, Digest, ImageStore, Reference, ReferenceError, SnapshotError,
    Snapshotter, StoreError, UnpackOptions,
};

use super::cache::{base_key, step_key, BaseIdentity};
use super::config::{self, apply_config_step, ConfigError, Effect, ImageConfig};
use super::context::{self, ContextError, DirView, SourceAt};
use super::instruction::{Copy, Instruction};
use super::layer::{self, CopySpec, EntryData, Layer, LayerEntry, LayerError, MtimePolicy, Owner};
use super::net::{self, BuildNet, DownloadError, StepNetns};
use super::record::{BuildCache, LayerRef, RecordError, StageState};
use super::rootfs::{self, MountGuard, RootfsError, RootfsView};
use super::run::{run_spec, NetworkMode, RunError, RunProcess, StepRunner};
use super::stages::{Base, BuildOptions, Plan, PlanError, Source, Step};

/// How much of a failed `RUN`'s output its error keeps.
const OUTPUT_TAIL: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("-t {name}: {source}")]
    Tag {
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error("Dockerfile:{line}: {what} {image}: {source}")]
    Image {
        line: usize,
        what: &'static str,
        image: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("Dockerfile:{line}: {instruction}: {source}")]
    Context {
        line: usize,
        instruction: &'static str,
        #[source]
        source: ContextError,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("Dockerfile:{line}: RUN: {source}")]
    Run {
        line: usize,
        #[source]
        source: RunError,
    },
    #[error(
        "Dockerfile:{line}: RUN {command} failed with exit code {code}{}",
        tail(output)
    )]
    RunFailed {
        line: usize,
        command: String,
        code: i32,
        output: String,
    },
    #[error("Dockerfile:{line}: USER {user}: {source}")]
    User {
        line: usize,
        user: String,
        #[source]
        source: LayerError,
    },
    #[error("Dockerfile:{line}: {what} {image}: not in the image store, and pulling it failed: {source}")]
    Pull {
        line: usize,
        what: &'static str,
        image: String,
        #[source]
        source: Box<crate::distribution::DistributionError>,
    },
    #[error("Dockerfile:{line}: ADD {url}: {why}")]
    Url {
        line: usize,
        url: String,
        why: String,
    },
    #[error("Dockerfile:{line}: ADD {url}: downloading it failed: {source}")]
    Download {
        line: usize,
        url: String,
        #[source]
        source: DownloadError,
    },
    #[error("Dockerfile:{line}: RUN: --network {mode}: {why}")]
    Network {
        line: usize,
        mode: &'static str,
        why: String,
    },
    #[error("build context: {source}")]
    ReceiveContext {
        #[source]
        source: io::Error,
    },
    #[error("image config lists a malformed diff id: {source}")]
    DiffId {
        #[source]
        source: crate::image::DigestError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn tail(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; its output ended with:\n{}", output.trim_end())
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Progress of a build.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Warning(String),
    /// Step `n` (numbered over the whole build) starts: `[stage i/total] TEXT`.
    Step {
        n: usize,
        label: String,
    },
    Cached {
        n: usize,
    },
    Output {
        n: usize,
        data: Vec<u8>,
    },
    Done {
        n: usize,
        elapsed: Duration,
    },
}

/// What to build; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub dockerfile: String,
    pub options: BuildOptions,
    /// The received context directory.
    pub context: PathBuf,
    /// Names to give the image (`name[:tag]`).
    pub tags: Vec<String>,
    pub no_cache: bool,
    pub network: NetworkMode,
}

/// The built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub tags: Vec<String>,
    pub steps_run: usize,
    pub steps_cached: usize,
}

struct StageResult {
    state: StageState,
    key: String,
}

/// Runs builds against one image store; see the module doc.
pub struct Builder<'a> {
    store: &'a ImageStore,
    runner: &'a dyn StepRunner,
    cache: BuildCache,
    tmp: PathBuf,
    /// Registries, URLs and `RUN` networks; without it (tests) no pull, no download,
    /// and `RUN` steps of mode `none` get an unconfigured netns from the runtime.
    net: Option<BuildNet>,
}

/// Writes a layer into the content store.
struct BlobSink {
    writer: ContentWriter,
    error: Option<ContentError>,
}

impl io::Write for BlobSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = self.writer.write_chunk(buf) {
            self.error = Some(e);
            return Err(io::Error::other("content store write failed"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Unpacks a context tar stream (as the CLI sends it) into `dir`; `..` and absolute paths
/// cannot leave it.
pub fn receive_context(reader: impl Read, dir: &Path) -> Result<(), BuildError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(false);
    archive.set_overwrite(true);
    archive
        .unpack(dir)
        .map_err(|source| BuildError::ReceiveContext { source })
}

/// Removes a snapshot, a mount and a directory on drop (a `RUN`'s scratch state).
struct StepScratch<'a> {
    mount: Option<MountGuard>,
    dir: PathBuf,
    key: String,
    store: &'a ImageStore,
}

impl Drop for StepScratch<'_> {
    fn drop(&mut self) {
        drop(self.mount.take());
        let rootfs = self.dir.join("rootfs");
        // Never delete through a mount that is still there.
        if !is_mount_point(&rootfs) {
            let _ = fs::remove_dir_all(&self.dir);
        }
        let _ = self.store.snapshotter().remove(&self.key);
    }
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == want))
}

/// Whether a scratch name (`build-run-PID-…`, `build-view-PID-…`, `build-url-PID-…`,
/// `context-PID-…`) belongs to a builder process that no longer exists.
pub(crate) fn of_dead_builder(name: &str) -> bool {
    builder_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Whether a scratch name belongs to a builder process that is still running.
pub fn of_live_builder(name: &str) -> bool {
    builder_pid(name).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn builder_pid(name: &str) -> Option<u32> {
    let rest = ["build-run-", "build-view-", "build-url-", "context-"]
        .iter()
        .find_map(|p| name.strip_prefix(p));
    rest.and_then(|r| r.split('-').next()?.parse::<u32>().ok())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:012x}",
        std::process::id(),
        rand::random::<u64>() >> 16
    )
}

/// The `created` time of built images: `SOURCE_DATE_EPOCH` (build arg) or the epoch.
fn created(options: &BuildOptions) -> String {
    let secs = options
        .build_args
        .get("SOURCE_DATE_EPOCH")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    config::rfc3339(secs)
}

impl<'a> Builder<'a> {
    /// A builder keeping its cache and scratch dirs under `<store root>/build`.
    pub fn new(store: &'a ImageStore, runner: &'a dyn StepRunner) -> Result<Self, BuildError> {
        let base = store.root().join("build");
        let tmp = base.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let builder = Builder {
            store,
            runner,
            cache: BuildCache::open(base.join("cache"))?,
            tmp,
            net: None,
        };
        builder.remove_stale();
        Ok(builder)
    }

    /// Removes what builds of dead processes left (killed mid-step): scratch dirs (after
    /// detaching a mount still on them) and their snapshots. Names carry the builder's pid.
    fn remove_stale(&self) {
        let dead = of_dead_builder;
        for e in fs::read_dir(&self.tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !dead(&name) {
                continue;
            }
            let path = e.path();
            let _ = crate::network::netns::remove(&path.join("netns"));
            for m in [path.join("rootfs"), path.clone()] {
                if is_mount_point(&m) {
                    let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
                }
            }
            if !is_mount_point(&path.join("rootfs")) && !is_mount_point(&path) {
                let _ = fs::remove_dir_all(&path);
            }
        }
        let snapshots = self.store.snapshotter();
        for info in snapshots.list().unwrap_or_default() {
            if info.kind != crate::image::snapshot::Kind::Committed && dead(&info.key) {
                let _ = snapshots.remove(&info.key);
            }
        }
    }

    /// Gives the builder its network: pulls, downloads, `RUN` networks.
    pub fn with_net(mut self, net: BuildNet) -> Self {
        self.net = Some(net);
        self
    }

    /// Where `ADD <url>` downloads are remembered with their validators (see
    /// [`BuildNet::download`]).
    fn url_cache(&self) -> PathBuf {
        self.store.root().join("build/urls")
    }

    /// Where a build's scratch dirs go (a received context may go here too).
    pub fn scratch_dir(&self) -> &Path {
        &self.tmp
    }

    pub fn build(
        &self,
        req: &BuildRequest,
        progress: &mut dyn FnMut(Event),
    ) -> Result<BuildOutput, BuildError> {
        let tags: Vec<Reference> = req
            .tags
            .iter()
            .map(|t| {
                Reference::parse(t).map_err(|source| BuildError::Tag {
                    name: t.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let plan = Plan::from_source(&req.dockerfile, &req.options)?;
        // A bridge that cannot be had fails the build before any step, at the first RUN.
        let first_run = plan.order.iter().find_map(|&i| {
            plan.stages[i]
                .instructions
                .iter()
                .find(|l| matches!(l.instruction, Instruction::Run(_)))
                .map(|l| l.line())
        });
        if let (Some(line), NetworkMode::Bridge) = (first_run, req.network) {
            let available = match &self.net {
                None => Err("this builder has no network access".to_string()),
                Some(net) => net.bridge.bridge().map(|_| ()),
            };
            available.map_err(|why| BuildError::Network {
                line,
                mode: "bridge",
                why,
            })?;
        }
        for w in &plan.warnings {
            progress(Event::Warning(w.to_string()));
        }
        let mut run = Run {
            b: self,
            req,
            plan: &plan,
            results: HashMap::new(),
            n: 0,
            steps_run: 0,
            steps_cached: 0,
            fetched: None,
            progress,
        };
        for &index in &plan.order {
            let result = run.stage(index)?;
            run.results.insert(index, result);
        }
        let (steps_run, steps_cached) = (run.steps_run, run.steps_cached);
        let target = run
            .results
            .remove(&plan.target)
            .expect("the target is built last");
        let (manifest_digest, config_digest, size) =
            self.write_image(target.state, &created(&req.options))?;
        for t in &tags {
            self.store
                .index()
                .tag(t, &manifest_digest, OCI_MANIFEST, size)
                .map_err(StoreError::from)?;
        }
        Ok(BuildOutput {
            manifest_digest,
            config_digest,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            steps_run,
            steps_cached,
        })
    }

    fn write_image(
        &self,
        mut state: StageState,
        created: &str,
    ) -> Result<(Digest, Digest, u64), BuildError> {
        state.config.created = Some(created.to_string());
        let config_bytes = state.config.to_bytes();
        let config = self.store.content().put(&config_bytes, None)?;
        let layers: Vec<_> = state
            .layers
            .iter()
            .map(|l| {
                json!({
                    "mediaType": oci_media_type(&l.media_type),
                    "digest": l.digest.to_string(),
                    "size": l.size,
                })
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config.digest.to_string(),
                "size": config.size,
            },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).expect("manifests serialize");
        let m = self.store.content().put(&bytes, None)?;
        Ok((m.digest, config.digest, m.size))
    }

    /// Stores a layer; `None` for an empty one (no layer, like BuildKit).
    fn write_layer(&self, layer: &Layer) -> Result<Option<(LayerRef, Digest)>, BuildError> {
        if layer.entries.is_empty() {
            return Ok(None);
        }
        let mut sink = BlobSink {
            writer: self.store.content().writer(None, None)?,
            error: None,
        };
        let written = layer.write(&mut sink, MtimePolicy::default());
        if let Some(e) = sink.error.take() {
            return Err(e.into());
        }
        let digest = written?;
        let info = sink.writer.commit()?;
        let diff_id = Digest::parse(&digest.diff_id).expect("layer digests are valid");
        Ok(Some((
            LayerRef {
                digest: info.digest,
                media_type: OCI_LAYER.into(),
                size: info.size,
            },
            diff_id,
        )))
    }

    /// Unpacks every layer of `state` not yet in a snapshot; returns the top chain id.
    fn unpack(&self, state: &StageState) -> Result<Option<String>, BuildError> {
        let diff_ids: Vec<Digest> = state
            .config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<_, _>>()
            .map_err(|source| BuildError::DiffId { source })?;
        let chains = manifest::chain_ids(&diff_ids);
        let snapshots = self.store.snapshotter();
        for (i, layer) in state.layers.iter().enumerate() {
            let chain = chains[i].to_string();
            if snapshots.stat(&chain).is_ok() {
                continue;
            }
            let reader = self.store.content().reader(&layer.digest)?;
            let opts = UnpackOptions {
                expected_digest: Some(layer.digest.clone()),
                expected_diff_id: Some(diff_ids[i].clone()),
                compression: None,
                ..self.store.unpack_options.clone()
            };
            let parent = i.checked_sub(1).map(|p| chains[p].to_string());
            self.store
                .apply_layer(&chain, parent.as_deref(), reader, &opts)
                .map_err(|e| match e {
                    crate::image::ApplyError::Unpack(source) => StoreError::Unpack {
                        image: "build".into(),
                        layer: layer.digest.clone(),
                        source,
                    },
                    crate::image::ApplyError::Snapshot(s) => s.into(),
                })?;
        }
        Ok(chains.last().map(|c| c.to_string()))
    }

    /// A read-only view of `state`'s filesystem.
    fn view(&self, state: &StageState) -> Result<RootfsView, BuildError> {
        let top = self.unpack(state)?;
        Ok(RootfsView::open(
            self.store.snapshotter(),
            top.as_deref(),
            &self.tmp,
        )?)
    }

    fn image_state(
        &self,
        name: &str,
        line: usize,
        what: &'static str,
    ) -> Result<(StageState, Digest), BuildError> {
        let wrap = |source: StoreError| BuildError::Image {
            line,
            what,
            image: name.to_string(),
            source: Box::new(source),
        };
        let image = self.store.resolve_str(name).map_err(wrap)?;
        let bytes = self
            .store
            .content()
            .read(&image.config_digest)
            .map_err(|e| wrap(e.into()))?;
        let config = ImageConfig::parse(&bytes, name)?;
        let layers = image
            .layers
            .iter()
            .map(|d| {
                Ok(LayerRef {
                    digest: manifest::descriptor_digest(d, name).map_err(|source| {
                        wrap(StoreError::Manifest {
                            image: name.to_string(),
                            source,
                        })
                    })?,
                    media_type: d.media_type().to_string(),
                    size: d.size(),
                })
            })
            .collect::<Result<_, BuildError>>()?;
        Ok((StageState { config, layers }, image.config_digest))
    }
}

/// What was at `/etc/resolv.conf` before a `RUN` that bind-mounts one.
struct MountTarget {
    had_file: bool,
    etc_before: Option<layer::DirMeta>,
}

impl MountTarget {
    /// Removes the empty mount target (and an `etc` made or copied up only for it) from
    /// the step's upper dir. While mounted, the target was hidden from the step.
    fn remove_from(&self, upper: &Path) {
        use std::os::unix::fs::MetadataExt;
        if self.had_file {
            return;
        }
        let file = upper.join("etc/resolv.conf");
        if fs::symlink_metadata(&file).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = fs::remove_file(&file);
        }
        let etc = upper.join("etc");
        let Ok(m) = fs::symlink_metadata(&etc) else {
            return;
        };
        let empty = fs::read_dir(&etc).is_ok_and(|mut d| d.next().is_none());
        let opaque = xattr_set(&etc, "trusted.overlay.opaque");
        let unchanged = match &self.etc_before {
            None => true,
            Some(b) => b.mode == (m.mode() & 0o7777) && b.uid == m.uid() && b.gid == m.gid(),
        };
        if m.is_dir() && empty && !opaque && unchanged {
            let _ = fs::remove_dir(&etc);
        }
    }
}

fn xattr_set(path: &Path, name: &str) -> bool {
    xattr::get(path, name).is_ok_and(|v| v.is_some())
}

fn oci_media_type(mt: &str) -> &str {
    match mt {
        manifest::DOCKER_LAYER_GZIP => manifest::OCI_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar" => OCI_LAYER,
        other => other,
    }
}

/// One build in progress.
struct Run<'r, 'a> {
    b: &'r Builder<'a>,
    req: &'r BuildRequest,
    plan: &'r Plan,
    results: HashMap<usize, StageResult>,
    n: usize,
    steps_run: usize,
    steps_cached: usize,
    /// The current `ADD`'s downloads (fetched for its cache key, copied if it runs).
    fetched: Option<Fetched>,
    progress: &'r mut dyn FnMut(Event),
}

/// A scratch dir of downloaded `ADD` sources: `u<i>/<file name>` per URL, in order.
struct Fetched {
    dir: PathBuf,
    /// Paths relative to `dir`, one per URL source.
    files: Vec<String>,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The name a URL's file gets in a directory destination: the last segment of its path
/// (Docker's rule); `None` when there is none.
fn url_file_name(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    let name = path.rsplit('/').next().unwrap_or("");
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

impl Run<'_, '_> {
    fn stage_name(&self, index: usize) -> String {
        self.plan.stages[index]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"))
    }

    fn stage(&mut self, index: usize) -> Result<StageResult, BuildError> {
        let def = &self.plan.stages[index];
        let line = def.from.line();
        let mut pulled = None;
        let (mut state, mut key) = match &def.base {
            Base::Scratch => (
                StageState {
                    config: ImageConfig::scratch(&self.plan.platform),
                    layers: Vec::new(),
                },
                base_key(&BaseIdentity::Scratch),
            ),
            Base::Stage(i) => {
                let r = &self.results[i];
                (r.state.clone(), base_key(&BaseIdentity::Stage(&r.key)))
            }
            Base::Image(name) => {
                pulled = self.ensure_image(name, line, "FROM")?;
                let (state, config_digest) = self.b.image_state(name, line, "FROM")?;
                let key = base_key(&BaseIdentity::Image(&config_digest.to_string()));
                (state, key)
            }
        };
        let expanded = self.plan.expand_stage(
            index,
            &state.config.env_pairs(),
            &state.config.working_dir(),
        )?;
        let name = self.stage_name(index);
        let total = expanded.steps.len() + 1;
        self.n += 1;
        (self.progress)(Event::Step {
            n: self.n,
            label: format!("[{name} 1/{total}] {}", def.from.text()),
        });
        if let Some(data) = pulled {
            (self.progress)(Event::Output { n: self.n, data });
        }
        let mut cmd_set = false;
        for (i, step) in expanded.steps.iter().enumerate() {
            self.n += 1;
            let n = self.n;
            (self.progress)(Event::Step {
                n,
                label: format!("[{name} {}/{total}] {}", i + 2, step.text),
            });
            let started = Instant::now();
            self.fetched = None;
            let content = self.content_of(step)?;
            key = step_key(&key, step, content.as_deref());
            if !self.req.no_cache {
                if let Some(cached) = self.b.cache.get(&key, self.b.store.content()) {
                    if matches!(step.instruction, Instruction::Cmd(_)) {
                        cmd_set = true;
                    }
                    state = cached;
                    self.steps_cached += 1;
                    (self.progress)(Event::Cached { n });
                    continue;
                }
            }
            state = self.execute(n, step, state, &mut cmd_set)?;
            self.fetched = None;
            self.b.cache.put(&key, &state)?;
            self.steps_run += 1;
            (self.progress)(Event::Done {
                n,
                elapsed: started.elapsed(),
            });
        }
        Ok(StageResult { state, key })
    }

    /// Pulls `name` when it is not in the store and names a registry (as `docker build`
    /// does), the pull's progress as the current step's output. Without a registry in the
    /// name, or without network, the store's "no such image" stands.
    /// Returns the output to show, if it pulled.
    fn ensure_image(
        &self,
        name: &str,
        line: usize,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>, BuildError> {
        let missing = matches!(
            self.b.store.resolve_str(name),
            Err(StoreError::NoSuchImage { .. })
        );
        let pullable = Reference::parse(name).is_ok_and(|r| r.registry().is_some());
        let Some(net) = self.b.net.as_ref().filter(|_| missing && pullable) else {
            return Ok(None);
        };
        let mut lines = format!("pulling {name}\n").into_bytes();
        lines.extend(
            net.pull(self.b.store, name)
                .map_err(|source| BuildError::Pull {
                    line,
                    what,
                    image: name.to_string(),
                    source: Box::new(source),
                })?,
        );
        Ok(Some(lines))
    }

    /// Downloads the URL sources of an `ADD` (Docker's rules: a directory destination
    /// takes the URL path's last segment as file name; files get mode 0600; archives are
    /// not extracted) and checks `--checksum`; returns their content hash.
    fn fetch_urls(&mut self, line: usize, c: &Copy) -> Result<Option<String>, BuildError> {
        let urls: Vec<&String> = c.sources.iter().filter(|s| context::is_url(s)).collect();
        let Some(first) = urls.first() else {
            if c.checksum.is_some() {
                return Err(BuildError::Url {
                    line,
                    url: c.sources.join(" "),
                    why: "--checksum applies only to URL sources".into(),
                });
            }
            return Ok(None);
        };
        let url_err = |url: &str, why: &str| BuildError::Url {
            line,
            url: url.to_string(),
            why: why.to_string(),
        };
        if c.sources.len() > 1 && !c.dest.ends_with('/') {
            return Err(url_err(
                first,
                "with more than one source the destination must be a directory ending in /",
            ));
        }
        if c.checksum.is_some() && urls.len() > 1 {
            return Err(url_err(first, "--checksum needs exactly one URL source"));
        }
        let expected = match &c.checksum {
            None => None,
            Some(sum) => Some(
                crate::image::Digest::parse(sum)
                    .map_err(|e| url_err(first, &format!("--checksum={sum}: {e}")))?,
            ),
        };
        let Some(net) = self.b.net.as_ref() else {
            return Err(url_err(first, "this builder has no network access"));
        };
        let fetched = Fetched {
            dir: self.b.tmp.join(unique("build-url")),
            files: Vec::new(),
        };
        let fetched = self.fetched.insert(fetched);
        for (i, url) in urls.iter().enumerate() {
            let name =
                match url_file_name(url) {
                    Some(n) => n,
                    None if c.dest.ends_with('/') => return Err(url_err(
                        url,
                        "cannot tell the file name from the URL: give the destination a file name",
                    )),
                    None => "download".into(),
                };
            let sub = fetched.dir.join(format!("u{i}"));
            fs::create_dir_all(&sub).map_err(io_err(&sub))?;
            let got = net
                .download(url, &sub.join(&name), Some(&self.b.url_cache()))
                .map_err(|source| BuildError::Download {
                    line,
                    url: url.to_string(),
                    source,
                })?;
            if let Some(want) = &expected {
                if want.to_string() != got.digest {
                    return Err(url_err(
                        url,
                        &format!(
                            "checksum mismatch: --checksum={want}, the download is {}",
                            got.digest
                        ),
                    ));
                }
            }
            fetched.files.push(format!("u{i}/{name}"));
        }
        let view = DirView {
            root: fetched.dir.clone(),
        };
        let at = SourceAt {
            line,
            instruction: "ADD",
        };
        let wrap = |source| BuildError::Context {
            line,
            instruction: "ADD",
            source,
        };
        let sels = context::resolve_sources_in(&view, &fetched.files, at).map_err(wrap)?;
        Ok(Some(context::content_hash_in(&view, &sels).map_err(wrap)?))
    }

    /// The content part of a `COPY`/`ADD`'s cache key.
    fn content_of(&mut self, step: &Step) -> Result<Option<String>, BuildError> {
        let (c, keyword) = match &step.instruction {
            Instruction::Copy(c) => (c, "COPY"),
            Instruction::Add(c) => (c, "ADD"),
            _ => return Ok(None),
        };
        let line = step.start.line;
        match &step.copy_from {
            Some(Source::Stage(i)) => Ok(Some(self.results[i].key.clone())),
            Some(Source::Image(name)) => {
                if let Some(data) = self.ensure_image(name, line, "COPY --from")? {
                    (self.progress)(Event::Output { n: self.n, data });
                }
                let (_, config) = self.b.image_state(name, line, "COPY --from")?;
                Ok(Some(config.to_string()))
            }
            None => {
                let urls = self.fetch_urls(line, c)?;
                let local = local_sources(c);
                if local.is_empty() {
                    return Ok(urls);
                }
                let view = DirView {
                    root: self.req.context.clone(),
                };
                let at = SourceAt {
                    line,
                    instruction: keyword,
                };
                let wrap = |source| BuildError::Context {
                    line,
                    instruction: keyword,
                    source,
                };
                let sels = context::resolve_sources_in(&view, &local, at).map_err(wrap)?;
                let hash = context::content_hash_in(&view, &sels).map_err(wrap)?;
                Ok(Some(match urls {
                    Some(u) => format!("{hash}+{u}"),
                    None => hash,
                }))
            }
        }
    }

    fn execute(
        &mut self,
        n: usize,
        step: &Step,
        mut state: StageState,
        cmd_set: &mut bool,
    ) -> Result<StageState, BuildError> {
        let before = state.clone();
        let effect = apply_config_step(&mut state.config, step, cmd_set);
        let created_by = config::created_by(&before.config, step);
        // Each producer stores its layer while its mounts (the files' source) exist.
        let stored = match (&step.instruction, effect) {
            (_, Effect::ConfigOnly) => None,
            (Instruction::Workdir(dir), _) => match self.workdir_layer(&before, dir)? {
                Some(l) => self.b.write_layer(&l)?,
                None => None,
            },
            (Instruction::Copy(c), _) => self.copy_layer(step, c, &before, false)?,
            (Instruction::Add(c), _) => self.copy_layer(step, c, &before, true)?,
            (Instruction::Run(cmd), _) => {
                let argv = before.config.argv(cmd);
                self.run_layer(n, step, &before, argv)?
            }
            _ => None,
        };
        let empty = stored.is_none();
        if let Some((layer, diff_id)) = stored {
            state.layers.push(layer);
            state.config.rootfs.diff_ids.push(diff_id.to_string());
        }
        state.config.record(created_by, empty);
        Ok(state)
    }

    /// `WORKDIR` creates its directory when the image lacks it (as Docker does).
    fn workdir_layer(&self, state: &StageState, dir: &str) -> Result<Option<Layer>, BuildError> {
        let rel = dir.trim_start_matches('/');
        if rel.is_empty() {
            return Ok(None);
        }
        let view = self.b.view(state)?;
        if rootfs::exists(view.root(), rel) {
            return Ok(None);
        }
        let mut layer = Layer::new();
        let mut path = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            let meta = rootfs::dir_meta(view.root(), &path);
            layer.insert(
                &path,
                LayerEntry {
                    data: EntryData::Dir,
                    mode: meta.map(|m| m.mode).unwrap_or(0o755),
                    uid: meta.map(|m| m.uid).unwrap_or(0),
                    gid: meta.map(|m| m.gid).unwrap_or(0),
                    mtime: 0,
                    xattrs: Vec::new(),
                },
            );
        }
        Ok(Some(layer))
    }

    fn copy_layer(
        &self,
        step: &Step,
        c: &Copy,
        state: &StageState,
        add: bool,
    ) -> Result<Option<(LayerRef, Digest)>, BuildError> {
        let line = step.start.line;
        let keyword = if add { "ADD" } else { "COPY" };
        let at = SourceAt {
            line,
            instruction: keyword,
        };
        let wrap = |source| BuildError::Context {
            line,
            instruction: keyword,
            source,
        };
        // The image below: existing directories keep their metadata, `--chown` names.
        let below = self.b.view(state)?;
        let owner = match &c.chown {
            None => None,
            Some(v) => Some(layer::parse_chown(
                v,
                &rootfs::read_in_root(below.root(), "etc/passwd"),
                &rootfs::read_in_root(below.root(), "etc/group"),
                line,
            )?),
        };
        let chmod = c
            .chmod
            .as_deref()
            .map(|m| layer::parse_chmod(m, line))
            .transpose()?;
        // Where the sources are.
        let from_view;
        let source_root = match &step.copy_from {
            Some(Source::Stage(i)) => {
                from_view = Some(self.b.view(&self.results[i].state)?);
                from_view.as_ref().expect("just set").root().to_path_buf()
            }
            Some(Source::Image(name)) => {
                let (st, _) = self.b.image_state(name, line, "COPY --from")?;
                from_view = Some(self.b.view(&st)?);
                from_view.as_ref().expect("just set").root().to_path_buf()
            }
            None => {
                from_view = None;
                self.req.context.clone()
            }
        };
        let view = DirView { root: source_root };
        let local = local_sources(c);
        let sels = context::resolve_sources_in(&view, &local, at).map_err(wrap)?;
        let url_sels = match &self.fetched {
            Some(f) if add => {
                let v = DirView {
                    root: f.dir.clone(),
                };
                context::resolve_sources_in(&v, &f.files, at).map_err(wrap)?
            }
            _ => Vec::new(),
        };
        let workdir = state.config.working_dir();
        let workdir = if workdir.is_empty() {
            "/".into()
        } else {
            workdir
        };
        // A destination naming an existing directory copies into it.
        let mut dest = c.dest.clone();
        let abs = super::stages::join_workdir(&workdir, &dest);
        if !dest.ends_with('/')
            && rootfs::dir_meta(below.root(), abs.trim_start_matches('/')).is_some()
        {
            dest.push('/');
        }
        let below_root = below.root().to_path_buf();
        let existing = move |p: &str| rootfs::dir_meta(&below_root, p);
        let spec = CopySpec {
            dest: &dest,
            workdir: &workdir,
            owner: owner.map(|o: Owner| o),
            chmod,
            existing_dir: &existing,
            at,
        };
        let mut layer = match (add, sels.is_empty()) {
            (_, true) => Layer::new(),
            (true, false) => layer::add_layer(&sels, &spec)?,
            (false, false) => layer::copy_layer(&sels, &spec)?,
        };
        // Downloads are copied as they are (Docker extracts no remote archive).
        if !url_sels.is_empty() {
            for (path, entry) in layer::copy_layer(&url_sels, &spec)?.entries {
                layer.insert(&path, entry);
            }
        }
        let stored = self.b.write_layer(&layer)?;
        drop(from_view);
        Ok(stored)
    }

    fn run_layer(
        &mut self,
        n: usize,
        step: &Step,
        state: &StageState,
        argv: Vec<String>,
    ) -> Result<Option<(LayerRef, Digest)>, BuildError> {
        let line = step.start.line;
        let b = self.b;
        let parent = b.unpack(state)?;
        let key = unique("build-run");
        let dir = b.tmp.join(&key);
        let rootfs_dir = dir.join("rootfs");
        let mounts = b.store.snapshotter().prepare(&key, parent.as_deref())?;
        let mut scratch = StepScratch {
            mount: None,
            dir: dir.clone(),
            key: key.clone(),
            store: b.store,
        };
        fs::create_dir_all(&rootfs_dir).map_err(io_err(&rootfs_dir))?;
        scratch.mount = Some(MountGuard::mount(&key, &mounts, &rootfs_dir)?);

        let user = state.config.config.user.clone().unwrap_or_default();
        let owner = if user.is_empty() {
            Owner::default()
        } else {
            layer::parse_chown(
                &user,
                &rootfs::read_in_root(&rootfs_dir, "etc/passwd"),
                &rootfs::read_in_root(&rootfs_dir, "etc/group"),
                line,
            )
            .map_err(|source| BuildError::User {
                line,
                user: user.clone(),
                source,
            })?
        };
        let cwd = state.config.working_dir();
        let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
        let rel = cwd.trim_start_matches('/');
        if !rel.is_empty() && !rootfs::exists(&rootfs_dir, rel) {
            let p = rootfs_dir.join(rel);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // The step's network, pinned inside its scratch dir (dropped before it, below).
        let netns_path = dir.join("netns");
        let net_err =
            |mode: &'static str| move |why: String| BuildError::Network { line, mode, why };
        let (netns, resolv_conf) = match (self.req.network, &b.net) {
            (NetworkMode::Host, _) => (None, None),
            (NetworkMode::None, None) => (None, None),
            (NetworkMode::None, Some(net)) => (
                Some(StepNetns::loopback(&netns_path, &net.rt).map_err(net_err("none"))?),
                None,
            ),
            (NetworkMode::Bridge, None) => {
                return Err(net_err("bridge")(
                    "this builder has no network access".into(),
                ))
            }
            (NetworkMode::Bridge, Some(net)) => {
                let ns = StepNetns::bridge(&netns_path, &key, net).map_err(net_err("bridge"))?;
                let path = dir.join("resolv.conf");
                fs::write(&path, net::resolv_conf(net)).map_err(io_err(&path))?;
                (Some(ns), Some(path))
            }
        };
        // The runtime creates a missing mount target in the step's upper dir; it is ours,
        // not the step's, and is taken out of the diff below.
        let resolv_target = resolv_conf.as_ref().map(|_| MountTarget {
            had_file: rootfs::exists(&rootfs_dir, "etc/resolv.conf"),
            etc_before: rootfs::dir_meta(&rootfs_dir, "etc"),
        });
        let process = RunProcess {
            argv: argv.clone(),
            env: config::run_env(&state.config, &step.args),
            cwd,
            uid: owner.uid,
            gid: owner.gid,
            network: self.req.network,
            netns: netns.as_ref().map(|n| n.path.clone()),
            resolv_conf,
        };
        let spec = run_spec(&process, &format!("{}/{key}", b.runner.cgroup_parent()));
        let config_path = dir.join("config.json");
        fs::write(
            &config_path,
            serde_json::to_vec_pretty(&spec).expect("specs serialize"),
        )
        .map_err(io_err(&config_path))?;

        let mut tail: Vec<u8> = Vec::new();
        let progress = &mut self.progress;
        let code = b
            .runner
            .run(&key, &dir, &mut |chunk: &[u8]| {
                tail.extend_from_slice(chunk);
                if tail.len() > OUTPUT_TAIL {
                    tail.drain(..tail.len() - OUTPUT_TAIL);
                }
                progress(Event::Output {
                    n,
                    data: chunk.to_vec(),
                });
            })
            .map_err(|source| BuildError::Run { line, source })?;
        scratch.mount.take().expect("mounted above").unmount()?;
        drop(netns);
        if code != 0 {
            let command = match &step.instruction {
                Instruction::Run(super::instruction::Command::Shell(s)) => s.clone(),
                _ => argv.join(" "),
            };
            return Err(BuildError::RunFailed {
                line,
                command,
                code,
                output: String::from_utf8_lossy(&tail).into_owned(),
            });
        }
        let info = b.store.snapshotter().stat(&key)?;
        let upper = b.store.snapshotter().fs_dir(&info);
        if let Some(t) = resolv_target {
            t.remove_from(&upper);
        }
        let stored = b.write_layer(&layer::diff_upper(&upper)?)?;
        drop(scratch);
        Ok(stored)
    }
}

/// The sources of a `COPY`/`ADD` that come from the context or a stage (not URLs).
fn local_sources(c: &Copy) -> Vec<String> {
    c.sources
        .iter()
        .filter(|s| !context::is_url(s))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoRun;
    impl StepRunner for NoRun {
        fn run(&self, id: &str, _: &Path, _: &mut dyn FnMut(&[u8])) -> Result<i32, RunError> {
            panic!("no RUN expected ({id})")
        }
    }

    #[test]
    fn url_file_names_follow_docker() {
        assert_eq!(
            url_file_name("http://h:1/a/b/file.tar.gz?x=1#f").as_deref(),
            Some("file.tar.gz")
        );
        assert_eq!(url_file_name("https://h/f").as_deref(), Some("f"));
        for none in [
            "http://h",
            "http://h/",
            "http://h/dir/",
            "http://h/..",
            "http://h/?q",
        ] {
            assert_eq!(url_file_name(none), None, "{none}");
        }
    }

    #[test]
    fn a_resolv_conf_mount_target_is_taken_out_of_the_upper_dir() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        // Made by the runtime in an image without /etc: both go.
        let up = t.path().join("a");
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::write(up.join("etc/resolv.conf"), "").unwrap();
        let none = MountTarget {
            had_file: false,
            etc_before: None,
        };
        none.remove_from(&up);
        assert!(!up.join("etc").exists());
        // The step wrote another file in /etc: /etc stays, the target goes.
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::write(up.join("etc/resolv.conf"), "").unwrap();
        fs::write(up.join("etc/motd"), "hi").unwrap();
        none.remove_from(&up);
        assert!(up.join("etc/motd").exists() && !up.join("etc/resolv.conf").exists());
        // /etc existed with other metadata than now: the step changed it, it stays.
        let up = t.path().join("b");
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::set_permissions(up.join("etc"), fs::Permissions::from_mode(0o700)).unwrap();
        let changed = MountTarget {
            had_file: false,
            etc_before: Some(layer::DirMeta {
                mode: 0o755,
                uid: 0,
                gid: 0,
            }),
        };
        changed.remove_from(&up);
        assert!(up.join("etc").exists());
        // The image had the file: nothing was made, nothing is touched.
        fs::write(up.join("etc/resolv.conf"), "").unwrap();
        MountTarget {
            had_file: true,
            etc_before: None,
        }
        .remove_from(&up);
        assert!(up.join("etc/resolv.conf").exists());
    }

    #[test]
    fn leftovers_of_dead_builders_are_removed_and_live_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let store = ImageStore::open(t.path()).unwrap();
        let tmp = t.path().join("build/tmp");
        // No process has a pid this large (pid_max is at most 2^22).
        let dead_pid = 99_999_999u32;
        let me = std::process::id();
        let dead_dir = tmp.join(format!("build-run-{dead_pid}-abc/rootfs"));
        let dead_ctx = tmp.join(format!("context-{dead_pid}-1"));
        let live = tmp.join(format!("context-{me}-2"));
        for d in [&dead_dir, &dead_ctx, &live] {
            fs::create_dir_all(d).unwrap();
        }
        let snaps = store.snapshotter();
        snaps
            .prepare(&format!("build-run-{dead_pid}-abc"), None)
            .unwrap();
        snaps.prepare(&format!("build-run-{me}-def"), None).unwrap();
        assert!(of_live_builder(&format!("build-run-{me}-def")));
        assert!(!of_live_builder(&format!("build-run-{dead_pid}-abc")));
        assert!(!of_live_builder("a-container-id"));
        let _b = Builder::new(&store, &NoRun).unwrap();
        assert!(!tmp.join(format!("build-run-{dead_pid}-abc")).exists());
        assert!(!dead_ctx.exists());
        assert!(live.exists(), "a live builder's dir stays");
        let keys: Vec<String> = snaps.list().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(keys, [format!("build-run-{me}-def")]);
    }
}

//! Pull: manifest (negotiated, verified) → platform manifest → config and layers into the
//! content store (parallel, verified while streaming, present blobs skipped) → unpack →
//! tag. The tag is written last, so a failed pull leaves no name behind; a blob whose
//! digest does not match is never stored (the content writer verifies at commit).

use super::client::{header_map, status_error, RegistryClient};
use super::progress::{LayerEvent, Progress};
use super::{auth, digest_of, ClientConfig, DistributionError, ACCEPT, MAX_MANIFEST_BYTES};
use crate::image::manifest::{self, Parsed};
use crate::image::{
    ApplyError, ContentError, ContentWriter, Digest, ImageStore, Reference, Snapshotter,
    StoreError, UnpackError,
};
use reqwest::Method;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The name:tag written to the image index (None for a digest-only reference).
    pub name: Option<String>,
    /// The digest the reference resolved to (manifest or index).
    pub digest: Digest,
    pub layers_downloaded: usize,
    pub layers_present: usize,
    pub bytes_downloaded: u64,
    /// The unpacked stack's top chain ID.
    pub chain_id: Option<Digest>,
}

fn media_type(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .filter(|s| manifest::is_index_media_type(s).is_some())
}

/// Fetches a manifest by tag or digest; verifies it against `pinned` when given.
async fn fetch_manifest(
    client: &RegistryClient,
    repo: &str,
    reference: &str,
    pinned: Option<&Digest>,
    scope: &str,
) -> Result<(Vec<u8>, Digest, Option<String>), DistributionError> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let resp = client
        .send(Method::GET, &path, header_map(&[("accept", ACCEPT)]), scope)
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&client.url(&path), resp).await);
    }
    let mt = media_type(&resp);
    let header_digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| Digest::parse(s).ok());
    let body = resp
        .bytes()
        .await
        .map_err(|source| DistributionError::Http {
            url: client.url(&path),
            source,
        })?;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(DistributionError::Invalid {
            what: format!("manifest {repo}:{reference}"),
            why: format!(
                "{} bytes, more than the {MAX_MANIFEST_BYTES} accepted",
                body.len()
            ),
        });
    }
    let actual = digest_of(&body);
    for expected in [pinned, header_digest.as_ref()].into_iter().flatten() {
        if *expected != actual {
            return Err(DistributionError::DigestMismatch {
                what: format!("manifest {repo}:{reference}"),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok((body.to_vec(), actual, mt))
}

/// Network chunks of one blob, readable as a [`Read`] on a blocking thread.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl ChunkReader {
    /// The next non-empty chunk, or None at the end of the stream.
    fn next_chunk(&mut self) -> Option<bytes::Bytes> {
        loop {
            match self.rx.blocking_recv() {
                Some(c) if c.is_empty() => continue,
                other => return other,
            }
        }
    }
}

/// Copies every chunk into the content writer on its way to the unpacker: the layer is
/// stored and unpacked in one pass over the network stream, with no temp tar.
struct TeeReader {
    chunks: ChunkReader,
    writer: ContentWriter,
    /// Why writing to the content store failed (reported instead of the unpacker's error).
    failed: Option<ContentError>,
}

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.chunks.chunk.is_empty() {
            let Some(c) = self.chunks.next_chunk() else {
                return Ok(0);
            };
            if let Err(e) = self.writer.write_chunk(&c) {
                let msg = e.to_string();
                self.failed = Some(e);
                return Err(std::io::Error::other(msg));
            }
            self.chunks.chunk = c;
        }
        let n = buf.len().min(self.chunks.chunk.len());
        buf[..n].copy_from_slice(&self.chunks.chunk.split_to(n));
        Ok(n)
    }
}

/// What a download task reports back to the pull loop.
type Events = tokio::sync::mpsc::UnboundedSender<(Digest, LayerEvent)>;

/// Streams the body of blob `digest` to `sink`, which runs on a blocking thread and reads
/// the chunks through a small bounded channel (memory stays at a few MiB whatever the
/// blob's size). Returns the bytes received and the sink's result; a network failure or
/// cancellation wins over the sink's result (the sink then saw a truncated stream).
#[allow(clippy::too_many_arguments)]
async fn stream_blob<T: Send + 'static>(
    client: &RegistryClient,
    repo: &str,
    digest: &Digest,
    size: u64,
    scope: &str,
    cancel: &AtomicBool,
    events: &Events,
    sink: impl FnOnce(ChunkReader) -> T + Send + 'static,
) -> Result<(u64, T), StreamFailure<T>> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let mut resp = client
        .send(Method::GET, &path, Default::default(), scope)
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&client.url(&path), resp).await.into());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let task = tokio::task::spawn_blocking(move || {
        sink(ChunkReader {
            rx,
            chunk: bytes::Bytes::new(),
        })
    });
    let mut received = 0u64;
    let mut reported = 0u64;
    let mut failure = None;
    loop {
        if cancel.load(Ordering::Relaxed) {
            failure = Some(DistributionError::Invalid {
                what: format!("blob {digest}"),
                why: "download cancelled after another blob failed".into(),
            });
            break;
        }
        match resp.chunk().await {
            Ok(Some(c)) => {
                received += c.len() as u64;
                if tx.send(c).await.is_err() {
                    break; // the sink stopped early; its result says why
                }
                if received - reported >= PROGRESS_STEP {
                    reported = received;
                    let _ = events.send((digest.clone(), LayerEvent::Progress { received, size }));
                }
            }
            Ok(None) => break,
            Err(source) => {
                failure = Some(DistributionError::Http {
                    url: client.url(&path),
                    source,
                });
                break;
            }
        }
    }
    drop(tx);
    let out = task.await.expect("blob sink panicked");
    match failure {
        // The sink may still have finished (e.g. every chunk had arrived before the
        // cancel): hand its result back so the caller can undo it.
        Some(e) => Err(StreamFailure {
            error: e,
            sink_output: Some(out),
        }),
        None => Ok((received, out)),
    }
}

/// Why [`stream_blob`] failed, with what the sink produced if it ran to the end.
struct StreamFailure<T> {
    error: DistributionError,
    sink_output: Option<T>,
}

impl<T> From<DistributionError> for StreamFailure<T> {
    fn from(error: DistributionError) -> Self {
        StreamFailure {
            error,
            sink_output: None,
        }
    }
}

/// Progress events are sent at most once per this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;

fn blob_error(repo: &str, e: ContentError) -> DistributionError {
    match e {
        ContentError::DigestMismatch {
            expected, actual, ..
        } => DistributionError::DigestMismatch {
            what: format!("blob {repo}@{expected}"),
            expected: expected.to_string(),
            actual: actual.to_string(),
        },
        e => e.into(),
    }
}

/// Downloads one blob into the content store, verified while streaming.
#[allow(clippy::too_many_arguments)]
async fn fetch_blob(
    client: Arc<RegistryClient>,
    store: ImageStore,
    repo: String,
    digest: Digest,
    size: u64,
    scope: String,
    cancel: Arc<AtomicBool>,
    events: Events,
) -> Result<u64, DistributionError> {
    let writer = store.content().writer(Some(digest.clone()), Some(size))?;
    let sink = move |mut chunks: ChunkReader| {
        let mut w = writer;
        while let Some(c) = chunks.next_chunk() {
            w.write_chunk(&c)?;
        }
        w.commit()
    };
    let (n, committed) = stream_blob(
        &client, &repo, &digest, size, &scope, &cancel, &events, sink,
    )
    .await
    .map_err(|f| f.error)?;
    committed.map_err(|e| blob_error(&repo, e))?;
    Ok(n)
}

/// Downloads one layer into the content store and, in the same pass, unpacks it into a
/// staged snapshot ([`ImageStore::stage_layer`]); returns the bytes received and the
/// staged snapshot's key. A refused or corrupt layer leaves neither blob nor snapshot.
#[allow(clippy::too_many_arguments)]
async fn fetch_layer(
    client: Arc<RegistryClient>,
    store: ImageStore,
    repo: String,
    digest: Digest,
    size: u64,
    diff_id: Digest,
    scope: String,
    cancel: Arc<AtomicBool>,
    events: Events,
) -> Result<(u64, String), DistributionError> {
    let writer = store.content().writer(Some(digest.clone()), Some(size))?;
    let mut opts = store.unpack_options.clone();
    opts.expected_digest = Some(digest.clone());
    opts.expected_diff_id = Some(diff_id);
    opts.compression = None;
    let st = store.clone();
    let sink = move |chunks: ChunkReader| -> Result<String, LayerFailure> {
        let mut tee = TeeReader {
            chunks,
            writer,
            failed: None,
        };
        match st.stage_layer(&mut tee, &opts) {
            Ok((key, _stats)) => match tee.writer.commit() {
                Ok(_) => Ok(key),
                Err(e) => {
                    let _ = st.snapshotter().remove(&key);
                    Err(LayerFailure::Content(e))
                }
            },
            Err(e) => {
                if let Some(w) = tee.failed.take() {
                    return Err(LayerFailure::Content(w));
                }
                // A stream the decompressor or tar reader chokes on is most often a
                // corrupt download: read the rest and tell the two apart by the digest.
                if let ApplyError::Unpack(UnpackError::Tar { .. }) = &e {
                    if std::io::copy(&mut tee, &mut std::io::sink()).is_ok() {
                        if let Err(c) = tee.writer.check() {
                            return Err(LayerFailure::Content(c));
                        }
                    }
                }
                Err(LayerFailure::Unpack(e))
            }
        }
    };
    let (n, staged) = match stream_blob(
        &client, &repo, &digest, size, &scope, &cancel, &events, sink,
    )
    .await
    {
        Ok(v) => v,
        Err(f) => {
            // A layer staged before the download was cancelled must not outlive the pull.
            if let Some(Ok(key)) = f.sink_output {
                let _ = store.snapshotter().remove(&key);
            }
            return Err(f.error);
        }
    };
    match staged {
        Ok(key) => Ok((n, key)),
        Err(LayerFailure::Content(e)) => Err(blob_error(&repo, e)),
        Err(LayerFailure::Unpack(e)) => Err(DistributionError::Store(match e {
            ApplyError::Unpack(source) => StoreError::Unpack {
                image: repo.clone(),
                layer: digest,
                source,
            },
            ApplyError::Snapshot(s) => s.into(),
        })),
    }
}

enum LayerFailure {
    Content(ContentError),
    Unpack(ApplyError),
}

/// Pulls `reference` (`host[:port]/repo[:tag][@digest]`) into `store`.
pub async fn pull(
    store: &ImageStore,
    reference: &str,
    config: &ClientConfig,
    progress: &dyn Progress,
) -> Result<PullReport, DistributionError> {
    let r = Reference::parse(reference)?;
    let host = r
        .registry()
        .ok_or_else(|| DistributionError::NoRegistry {
            reference: reference.to_string(),
        })?
        .to_string();
    let repo = r.repository().to_string();
    let scope = auth::scope(&repo, false);
    let client = Arc::new(RegistryClient::new(&host, config)?);
    client.ping(&scope).await?;

    let tag_or_digest = match (r.digest(), r.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    };
    let (top, top_digest, top_mt) =
        fetch_manifest(&client, &repo, &tag_or_digest, r.digest(), &scope).await?;
    let what = format!("{host}/{repo}:{tag_or_digest}");
    let merr = |source| {
        DistributionError::Store(crate::image::StoreError::Manifest {
            image: what.clone(),
            source,
        })
    };
    let parsed = manifest::parse(&top, top_mt.as_deref(), &what).map_err(merr)?;
    let top_media_type = top_mt.clone().unwrap_or_else(|| match &parsed {
        Parsed::Index(_) => manifest::OCI_INDEX.to_string(),
        Parsed::Manifest(_) => manifest::OCI_MANIFEST.to_string(),
    });
    // Blobs to store, manifests last (they only become useful once their blobs are in).
    let mut manifests: Vec<(Vec<u8>, Digest)> = vec![(top.clone(), top_digest.clone())];
    let image_manifest = match parsed {
        Parsed::Manifest(m) => *m,
        Parsed::Index(idx) => {
            let d = manifest::select_platform(&idx, store.platform()).map_err(merr)?;
            let child = manifest::descriptor_digest(&d, &what).map_err(merr)?;
            progress.message(&format!(
                "{what}: index, using {} for {}",
                child,
                store.platform()
            ));
            let (body, digest, mt) =
                fetch_manifest(&client, &repo, &child.to_string(), Some(&child), &scope).await?;
            let mt = mt.or_else(|| Some(d.media_type().to_string()));
            let m = match manifest::parse(&body, mt.as_deref(), &what).map_err(merr)? {
                Parsed::Manifest(m) => *m,
                Parsed::Index(_) => {
                    return Err(DistributionError::Invalid {
                        what: what.clone(),
                        why: format!("platform entry {child} is itself an index"),
                    })
                }
            };
            manifests.push((body, digest));
            m
        }
    };

    let mut report = PullReport {
        name: None,
        digest: top_digest.clone(),
        layers_downloaded: 0,
        layers_present: 0,
        bytes_downloaded: 0,
        chain_id: None,
    };
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel::<(Digest, LayerEvent)>();
    let cancel = Arc::new(AtomicBool::new(false));

    // The config first: its diff_ids let each layer be verified and unpacked while it
    // downloads.
    let config_d = manifest::descriptor_digest(image_manifest.config(), &what).map_err(merr)?;
    if !store.content().exists(&config_d) {
        report.bytes_downloaded += fetch_blob(
            client.clone(),
            store.clone(),
            repo.clone(),
            config_d.clone(),
            image_manifest.config().size(),
            scope.clone(),
            cancel.clone(),
            ev_tx.clone(),
        )
        .await?;
    }
    let config_bytes = store.content().read(&config_d)?;
    let image_config =
        manifest::parse_config(&config_bytes, &format!("config {config_d}")).map_err(merr)?;
    let diff_ids = manifest::diff_ids(&image_config, &image_manifest).map_err(merr)?;
    let chain_ids = manifest::chain_ids(&diff_ids);

    // Layers, in parallel, skipping what the store has: a layer whose snapshot is missing
    // is downloaded and unpacked in one pass; one already unpacked is only downloaded
    // (its blob is kept for push and save).
    let parallel = config.max_parallel.max(1);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    let mut staged: Vec<Option<String>> = vec![None; image_manifest.layers().len()];
    for (i, l) in image_manifest.layers().iter().enumerate() {
        let d = manifest::descriptor_digest(l, &what).map_err(merr)?;
        let size = l.size();
        let unpacked = store.snapshotter().stat(&chain_ids[i].to_string()).is_ok();
        if store.content().exists(&d) {
            report.layers_present += 1;
            progress.layer(&d, LayerEvent::AlreadyExists);
            continue;
        }
        progress.layer(&d, LayerEvent::Downloading { size });
        let (client, store, repo, scope, sem, cancel, events) = (
            client.clone(),
            store.clone(),
            repo.clone(),
            scope.clone(),
            sem.clone(),
            cancel.clone(),
            ev_tx.clone(),
        );
        let diff_id = diff_ids[i].clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let (n, key) = if unpacked {
                let n =
                    fetch_blob(client, store, repo, d.clone(), size, scope, cancel, events).await?;
                (n, None)
            } else {
                let (n, key) = fetch_layer(
                    client,
                    store,
                    repo,
                    d.clone(),
                    size,
                    diff_id,
                    scope,
                    cancel,
                    events,
                )
                .await?;
                (n, Some(key))
            };
            Ok::<_, DistributionError>((i, d, n, key))
        });
    }
    drop(ev_tx);
    let mut first_error = None;
    loop {
        let joined = tokio::select! {
            Some((d, ev)) = ev_rx.recv() => {
                progress.layer(&d, ev);
                continue;
            }
            joined = tasks.join_next() => joined,
        };
        let Some(joined) = joined else { break };
        let outcome = match joined {
            Ok(o) => o,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        match outcome {
            Ok((i, d, n, key)) => {
                report.bytes_downloaded += n;
                report.layers_downloaded += 1;
                progress.layer(&d, LayerEvent::Downloaded { size: n });
                if key.is_some() {
                    progress.layer(&d, LayerEvent::Unpacked);
                }
                staged[i] = key;
            }
            Err(e) => {
                // Every task is awaited (not aborted) so that no writer outlives the pull.
                cancel.store(true, Ordering::Relaxed);
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        for key in staged.into_iter().flatten() {
            let _ = store.snapshotter().remove(&key);
        }
        return Err(e);
    }
    for (body, d) in manifests.iter().rev() {
        if let Err(e) = store.content().put(body, Some(d)) {
            for key in staged.into_iter().flatten() {
                let _ = store.snapshotter().remove(&key);
            }
            return Err(e.into());
        }
    }

    // Stack the staged layers by chain ID (unpacking any layer whose blob was present but
    // not unpacked), then name the image.
    let s = store.clone();
    let name = r.name();
    let (td, tmt) = (top_digest.clone(), top_media_type.clone());
    let chain = tokio::task::spawn_blocking(move || {
        let image = match s.resolve_digest(&name, &td, Some(&tmt)) {
            Ok(i) => i,
            Err(e) => {
                for key in staged.into_iter().flatten() {
                    let _ = s.snapshotter().remove(&key);
                }
                return Err(e);
            }
        };
        s.unpack_staged(&image, staged)
    })
    .await
    .expect("unpack task panicked")?;
    report.chain_id = chain;
    if r.digest().is_none() {
        let tagged = r.with_tag(r.tag().unwrap_or("latest"))?;
        store
            .index()
            .tag(&tagged, &top_digest, &top_media_type, top.len() as u64)?;
        report.name = tagged.name_tag();
    }
    progress.message(&format!("{what}: pulled {top_digest}"));
    Ok(report)
}

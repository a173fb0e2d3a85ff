//! Push: for the config and each layer, HEAD (skip what the registry has), else try a
//! cross-repository mount from another repository of the same registry that the local
//! index knows, else upload (one streamed PUT, or PATCH chunks with Content-Range when a
//! chunk size is set); then PUT the platform manifest under the tag and check that the
//! registry computed the same digest.

use super::client::{header_map, status_error, RegistryClient};
use super::progress::{LayerEvent, Progress};
use super::{auth, ClientConfig, DistributionError};
use crate::image::manifest;
use crate::image::{Digest, ImageStore, Reference};
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// What a push did.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub digest: Option<Digest>,
    pub blobs_uploaded: usize,
    pub blobs_present: usize,
    pub blobs_mounted: usize,
    pub bytes_uploaded: u64,
}

enum BlobOutcome {
    Present,
    Mounted,
    Uploaded(u64),
}

/// A stream of `len` bytes of `path` from `offset`, read in 1 MiB chunks.
fn file_body(path: PathBuf, offset: u64, len: u64) -> reqwest::Body {
    let stream = futures::stream::unfold(
        (None::<tokio::fs::File>, len, path, offset),
        |(file, left, path, offset)| async move {
            if left == 0 {
                return None;
            }
            let mut f = match file {
                Some(f) => f,
                None => {
                    let open = async {
                        let mut f = tokio::fs::File::open(&path).await?;
                        f.seek(std::io::SeekFrom::Start(offset)).await?;
                        Ok::<_, std::io::Error>(f)
                    };
                    match open.await {
                        Ok(f) => f,
                        Err(e) => return Some((Err(e), (None, 0, path, offset))),
                    }
                }
            };
            let want = left.min(1 << 20) as usize;
            let mut buf = vec![0u8; want];
            match f.read_exact(&mut buf).await {
                Ok(_) => Some((
                    Ok(Bytes::from(buf)),
                    (Some(f), left - want as u64, path, offset),
                )),
                Err(e) => Some((Err(e), (None, 0, path, offset))),
            }
        },
    );
    reqwest::Body::wrap_stream(stream)
}

fn with_digest(location: &str, d: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={d}")
}

fn location(resp: &reqwest::Response, url: &str) -> Result<String, DistributionError> {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| DistributionError::Invalid {
            what: url.to_string(),
            why: "upload answer has no Location header".into(),
        })
}

#[allow(clippy::too_many_arguments)]
async fn push_blob(
    client: Arc<RegistryClient>,
    store: ImageStore,
    repo: String,
    d: Digest,
    size: u64,
    mount_from: Vec<String>,
    chunk: Option<u64>,
    scope: String,
    progress: Arc<dyn Progress>,
) -> Result<BlobOutcome, DistributionError> {
    let blob_path = format!("/v2/{repo}/blobs/{d}");
    let head = client
        .send(Method::HEAD, &blob_path, Default::default(), &scope)
        .await?;
    if head.status().is_success() {
        progress.layer(&d, LayerEvent::AlreadyExists);
        return Ok(BlobOutcome::Present);
    }
    // Mount, or a session (a refused mount answers 202 with one).
    let mut session = None;
    for from in &mount_from {
        let path = format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}");
        let r = client
            .send(Method::POST, &path, Default::default(), &scope)
            .await?;
        match r.status() {
            StatusCode::CREATED => {
                progress.layer(&d, LayerEvent::Mounted { from: from.clone() });
                return Ok(BlobOutcome::Mounted);
            }
            StatusCode::ACCEPTED => {
                session = Some(location(&r, &path)?);
                break;
            }
            _ => {} // try a plain upload
        }
    }
    let mut loc = match session {
        Some(l) => l,
        None => {
            let path = format!("/v2/{repo}/blobs/uploads/");
            let r = client
                .send(Method::POST, &path, Default::default(), &scope)
                .await?;
            if r.status() != StatusCode::ACCEPTED {
                return Err(status_error(&client.url(&path), r).await);
            }
            location(&r, &path)?
        }
    };
    progress.layer(&d, LayerEvent::Uploading { size });
    let file = store.content().blob_path(&d);
    if let Some(chunk) = chunk.filter(|c| *c > 0 && size > *c) {
        let mut off = 0;
        while off < size {
            let n = chunk.min(size - off);
            let h = header_map(&[
                ("content-type", "application/octet-stream"),
                ("content-range", &format!("{}-{}", off, off + n - 1)),
                ("content-length", &n.to_string()),
            ]);
            let r = client
                .send_body(Method::PATCH, &loc, h, file_body(file.clone(), off, n))
                .await?;
            if r.status() != StatusCode::ACCEPTED {
                return Err(status_error(&client.url(&loc), r).await);
            }
            loc = location(&r, &loc)?;
            off += n;
        }
        let url = with_digest(&loc, &d);
        let h = header_map(&[("content-length", "0")]);
        let r = client
            .send_body(Method::PUT, &url, h, reqwest::Body::from(Vec::new()))
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(status_error(&client.url(&url), r).await);
        }
    } else {
        let url = with_digest(&loc, &d);
        let h = header_map(&[
            ("content-type", "application/octet-stream"),
            ("content-length", &size.to_string()),
        ]);
        let r = client
            .send_body(Method::PUT, &url, h, file_body(file, 0, size))
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(status_error(&client.url(&url), r).await);
        }
    }
    progress.layer(&d, LayerEvent::Pushed { size });
    Ok(BlobOutcome::Uploaded(size))
}

/// Pushes the local image `reference` (`host[:port]/repo[:tag]`) to its registry. For an
/// image pulled through an index, the host platform's manifest is pushed.
pub async fn push(
    store: &ImageStore,
    reference: &str,
    config: &ClientConfig,
    progress: Arc<dyn Progress>,
) -> Result<PushReport, DistributionError> {
    let r = Reference::parse(reference)?;
    let host = r
        .registry()
        .ok_or_else(|| DistributionError::NoRegistry {
            reference: reference.to_string(),
        })?
        .to_string();
    let repo = r.repository().to_string();
    let tag = r.tag().unwrap_or("latest").to_string();
    let s = store.clone();
    let r2 = r.clone();
    let image = tokio::task::spawn_blocking(move || s.resolve(&r2))
        .await
        .expect("resolve panicked")?;
    let scope = auth::scope(&repo, true);
    let client = Arc::new(RegistryClient::new(&host, config)?);
    client.ping(&scope).await?;

    // Other repositories of the same registry that the local index knows: mount sources.
    let mut mount_from: Vec<String> = Vec::new();
    for e in store.index().list()? {
        if let Ok(other) = Reference::parse(&e.name) {
            if other.registry() == Some(host.as_str())
                && other.repository() != repo
                && !mount_from.iter().any(|m| m == other.repository())
            {
                mount_from.push(other.repository().to_string());
            }
        }
    }
    mount_from.truncate(3);

    let what = format!("{host}/{repo}:{tag}");
    let mut blobs = vec![(image.config_digest.clone(), image.manifest.config().size())];
    for l in &image.layers {
        let d = manifest::descriptor_digest(l, &what).map_err(|source| {
            DistributionError::Store(crate::image::StoreError::Manifest {
                image: what.clone(),
                source,
            })
        })?;
        blobs.push((d, l.size()));
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(config.max_parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (d, size) in blobs {
        let args = (
            client.clone(),
            store.clone(),
            repo.clone(),
            mount_from.clone(),
            config.chunk_size,
            scope.clone(),
            progress.clone(),
            sem.clone(),
        );
        tasks.spawn(async move {
            let (client, store, repo, mount_from, chunk, scope, progress, sem) = args;
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            push_blob(
                client, store, repo, d, size, mount_from, chunk, scope, progress,
            )
            .await
        });
    }
    let mut report = PushReport::default();
    let mut first_error = None;
    while let Some(j) = tasks.join_next().await {
        let outcome = match j {
            Ok(o) => o,
            Err(e) if e.is_cancelled() => continue, // aborted after a first failure
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        match outcome {
            Ok(BlobOutcome::Present) => report.blobs_present += 1,
            Ok(BlobOutcome::Mounted) => report.blobs_mounted += 1,
            Ok(BlobOutcome::Uploaded(n)) => {
                report.blobs_uploaded += 1;
                report.bytes_uploaded += n;
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                    tasks.abort_all();
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    let body = store.content().read(&image.manifest_digest)?;
    let mt = image
        .manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
    let path = format!("/v2/{repo}/manifests/{tag}");
    let r = client
        .send_body(
            Method::PUT,
            &path,
            header_map(&[("content-type", &mt)]),
            reqwest::Body::from(body),
        )
        .await?;
    if r.status() != StatusCode::CREATED {
        return Err(status_error(&client.url(&path), r).await);
    }
    if let Some(got) = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        if got != image.manifest_digest.to_string() {
            return Err(DistributionError::DigestMismatch {
                what: format!("manifest {what}"),
                expected: image.manifest_digest.to_string(),
                actual: got.to_string(),
            });
        }
    }
    progress.message(&format!("{what}: pushed {}", image.manifest_digest));
    report.digest = Some(image.manifest_digest.clone());
    Ok(report)
}

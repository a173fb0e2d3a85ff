//! Pull: manifest (negotiated, verified) → platform manifest → config and layers into the
//! content store (parallel, verified while streaming, present blobs skipped) → unpack →
//! tag. The tag is written last, so a failed pull leaves no name behind; a blob whose
//! digest does not match is never stored (the content writer verifies at commit).

use super::client::{header_map, status_error, RegistryClient};
use super::progress::{LayerEvent, Progress};
use super::{auth, digest_of, ClientConfig, DistributionError, ACCEPT, MAX_MANIFEST_BYTES};
use crate::image::manifest::{self, Parsed};
use crate::image::{Digest, ImageStore, Reference};
use reqwest::Method;
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

/// Downloads one blob into the content store, verified while streaming.
async fn fetch_blob(
    client: Arc<RegistryClient>,
    store: ImageStore,
    repo: String,
    digest: Digest,
    size: u64,
    scope: String,
    cancel: Arc<AtomicBool>,
) -> Result<u64, DistributionError> {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let mut resp = client
        .send(Method::GET, &path, Default::default(), &scope)
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&client.url(&path), resp).await);
    }
    // The writer hashes on a blocking thread; the network side hands it chunks through
    // a small bounded channel (memory stays at a few MiB whatever the layer size).
    let writer = store.content().writer(Some(digest.clone()), Some(size))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let sink = tokio::task::spawn_blocking(move || {
        let mut w = writer;
        while let Some(chunk) = rx.blocking_recv() {
            w.write_chunk(&chunk)?;
        }
        w.commit()
    });
    let mut received = 0u64;
    let mut failure = None;
    loop {
        if cancel.load(Ordering::Relaxed) {
            // Another blob failed: stop, and let the writer drop its partial data.
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
                    break; // the writer failed; its error is reported below
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
    let committed = sink.await.expect("blob writer panicked");
    if let Some(e) = failure {
        return Err(e); // the writer was dropped uncommitted or failed: nothing stored
    }
    match committed {
        Ok(_) => Ok(received),
        Err(crate::image::ContentError::DigestMismatch {
            expected, actual, ..
        }) => Err(DistributionError::DigestMismatch {
            what: format!("blob {repo}@{expected}"),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
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

    // Config and layers, in parallel, skipping what the store has.
    let mut blobs: Vec<(Digest, u64, bool)> = Vec::new();
    let config_d = manifest::descriptor_digest(image_manifest.config(), &what).map_err(merr)?;
    blobs.push((config_d, image_manifest.config().size(), false));
    for l in image_manifest.layers() {
        let d = manifest::descriptor_digest(l, &what).map_err(merr)?;
        blobs.push((d, l.size(), true));
    }
    let parallel = config.max_parallel.max(1);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    let cancel = Arc::new(AtomicBool::new(false));
    let mut report = PullReport {
        name: None,
        digest: top_digest.clone(),
        layers_downloaded: 0,
        layers_present: 0,
        bytes_downloaded: 0,
        chain_id: None,
    };
    for (d, size, is_layer) in blobs {
        if store.content().exists(&d) {
            if is_layer {
                report.layers_present += 1;
                progress.layer(&d, LayerEvent::AlreadyExists);
            }
            continue;
        }
        if is_layer {
            progress.layer(&d, LayerEvent::Downloading { size });
        }
        let (client, store, repo, scope, sem, cancel) = (
            client.clone(),
            store.clone(),
            repo.clone(),
            scope.clone(),
            sem.clone(),
            cancel.clone(),
        );
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let n = fetch_blob(client, store, repo, d.clone(), size, scope, cancel).await?;
            Ok::<_, DistributionError>((d, n, is_layer))
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let outcome = match joined {
            Ok(o) => o,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        match outcome {
            Ok((d, n, is_layer)) => {
                report.bytes_downloaded += n;
                if is_layer {
                    report.layers_downloaded += 1;
                    progress.layer(&d, LayerEvent::Downloaded { size: n });
                }
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
        return Err(e);
    }
    for (body, d) in manifests.iter().rev() {
        store.content().put(body, Some(d))?;
    }

    // Unpack (each layer once, shared by chain ID), then name the image.
    let s = store.clone();
    let name = r.name();
    let (td, tmt) = (top_digest.clone(), top_media_type.clone());
    let chain = tokio::task::spawn_blocking(move || {
        let image = s.resolve_digest(&name, &td, Some(&tmt))?;
        s.unpack(&image)
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

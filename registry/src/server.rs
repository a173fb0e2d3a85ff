//! The HTTP face: one axum fallback handler reads the `/v2/…` path itself (repository
//! names contain slashes, which axum's `{param}` routes cannot match), authenticates,
//! validates the name, and dispatches to the storage. Every answer carries
//! `Docker-Distribution-API-Version: registry/2.0`.

use crate::auth::{role_access, Access, Decision, Users};
use crate::error::{ApiError, Code};
use crate::reference::{self, Digest, RangeRequest, Reference, Route};
use crate::storage::{FsStorage, StorageError};
use crate::tls::{Peer, TlsListener};
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::Extensions;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use gantry_security::Identity;
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::Arc;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
/// Read size when serving blobs: large reads keep syscalls few.
const READ_CHUNK: usize = 1 << 20;

/// Who may do what.
#[derive(Clone)]
enum Auth {
    /// htpasswd users (or nobody configured: open), over plain HTTP.
    Users(Arc<Users>),
    /// The role in the client certificate ([`role_access`]), over mutual TLS.
    Roles,
}

/// The registry's shared state.
#[derive(Clone)]
pub struct Registry {
    storage: FsStorage,
    auth: Auth,
    delete_enabled: bool,
}

impl Registry {
    /// A registry for plain HTTP with htpasswd users (none: open).
    pub fn new(storage: FsStorage, users: Users, delete_enabled: bool) -> Registry {
        Registry {
            storage,
            auth: Auth::Users(Arc::new(users)),
            delete_enabled,
        }
    }

    /// A registry for mutual TLS ([`serve_tls`]): each request is allowed by the role in
    /// its connection's client certificate.
    pub fn with_roles(storage: FsStorage, delete_enabled: bool) -> Registry {
        Registry {
            storage,
            auth: Auth::Roles,
            delete_enabled,
        }
    }

    pub fn storage(&self) -> &FsStorage {
        &self.storage
    }
}

/// The axum application.
pub fn router(registry: Registry) -> Router {
    Router::new().fallback(handle).with_state(registry)
}

/// Serves until the listener fails (or the future is dropped).
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // No Nagle: a small response (manifest, HEAD, 201) would otherwise wait for the
    // client's delayed ACK, about 40 ms per request on Linux.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(registry)).await
}

/// Serves mutual TLS (see [`crate::tls`]) until the listener fails.
pub async fn serve_tls(listener: TlsListener, registry: Registry) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(registry).into_make_service_with_connect_info::<Peer>(),
    )
    .await
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

async fn handle(
    State(reg): State<Registry>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    extensions: Extensions,
    body: Body,
) -> Response {
    let peer = extensions
        .get::<ConnectInfo<Peer>>()
        .and_then(|c| c.0.identity.as_ref());
    let mut resp = match dispatch(&reg, &method, &uri, &headers, peer, body).await {
        Ok(r) => r,
        Err(e) => {
            if e.code == Code::Unknown {
                tracing::error!(%method, path = uri.path(), error = %e, "request failed");
            }
            e.into_response()
        }
    };
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

fn need(method: &Method) -> Access {
    if method == Method::GET || method == Method::HEAD {
        Access::Read
    } else {
        Access::Write
    }
}

async fn authorize(
    reg: &Registry,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<&Identity>,
) -> Result<()> {
    let users = match &reg.auth {
        Auth::Roles => return authorize_role(peer, need(method)),
        Auth::Users(u) if !u.enabled() => return Ok(()),
        Auth::Users(u) => u.clone(),
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let need = need(method);
    let decision = tokio::task::spawn_blocking(move || users.check(auth.as_deref(), need))
        .await
        .expect("auth check panicked");
    match decision {
        Decision::Allow => Ok(()),
        Decision::Challenge(m) => Err(ApiError::new(Code::Unauthorized, m)
            .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"gantry-registry\"")),
        Decision::Deny(m) => Err(ApiError::new(Code::Denied, m)),
    }
}

/// mTLS: the role in the verified client certificate decides.
fn authorize_role(peer: Option<&Identity>, need: Access) -> Result<()> {
    let Some(id) = peer else {
        // only reachable when a Roles registry is served without TLS
        return Err(ApiError::new(
            Code::Unauthorized,
            "no client certificate on this connection",
        ));
    };
    match role_access(id.role) {
        Some(granted) if granted >= need => Ok(()),
        Some(_) => Err(ApiError::new(
            Code::Denied,
            format!("role {} ({id}) may only pull", id.role),
        )),
        None => Err(ApiError::new(
            Code::Denied,
            format!("role {} ({id}) may not use the registry", id.role),
        )),
    }
}

fn unsupported(method: &Method) -> ApiError {
    ApiError::new(
        Code::Unsupported,
        format!("method {method} is not supported here"),
    )
}

fn valid_name(name: &str) -> Result<()> {
    reference::validate_name(name).map_err(|why| {
        ApiError::new(Code::NameInvalid, format!("invalid repository name: {why}"))
            .with_detail(serde_json::json!({ "name": name }))
    })
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::parse(s).map_err(|e| ApiError::new(Code::DigestInvalid, e.to_string()))
}

fn query(uri: &Uri) -> HashMap<String, String> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

async fn dispatch(
    reg: &Registry,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    peer: Option<&Identity>,
    body: Body,
) -> Result<Response> {
    let Some(route) = reference::parse_route(uri.path()) else {
        return Err(ApiError::new(
            Code::Unsupported,
            format!("no such endpoint: {}", uri.path()),
        )
        .with_status(StatusCode::NOT_FOUND));
    };
    authorize(reg, method, headers, peer).await?;
    match route {
        Route::Base => match *method {
            Method::GET | Method::HEAD => Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response()),
            _ => Err(unsupported(method)),
        },
        Route::Catalog => match *method {
            Method::GET => catalog(reg, uri).await,
            _ => Err(unsupported(method)),
        },
        Route::Tags { name } => {
            valid_name(&name)?;
            match *method {
                Method::GET => tags(reg, &name, uri).await,
                _ => Err(unsupported(method)),
            }
        }
        Route::Manifest { name, reference } => {
            valid_name(&name)?;
            let reference = parse_reference(&reference)?;
            match *method {
                Method::GET | Method::HEAD => {
                    get_manifest(reg, &name, &reference, *method == Method::HEAD).await
                }
                Method::PUT => put_manifest(reg, &name, &reference, headers, body).await,
                Method::DELETE => delete_manifest(reg, &name, &reference).await,
                _ => Err(unsupported(method)),
            }
        }
        Route::Blob { name, digest } => {
            valid_name(&name)?;
            let digest = parse_digest(&digest)?;
            match *method {
                Method::GET | Method::HEAD => {
                    get_blob(reg, &name, &digest, headers, *method == Method::HEAD).await
                }
                Method::DELETE => delete_blob(reg, &name, &digest).await,
                _ => Err(unsupported(method)),
            }
        }
        Route::UploadStart { name } => {
            valid_name(&name)?;
            match *method {
                Method::POST => start_upload(reg, &name, uri, body).await,
                _ => Err(unsupported(method)),
            }
        }
        Route::Upload { name, session } => {
            valid_name(&name)?;
            match *method {
                Method::GET => upload_status(reg, &name, &session).await,
                Method::PATCH => patch_upload(reg, &name, &session, headers, body).await,
                Method::PUT => finish_upload(reg, &name, &session, uri, headers, body).await,
                Method::DELETE => {
                    reg.storage.cancel_upload(&name, &session).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(unsupported(method)),
            }
        }
    }
}

fn parse_reference(s: &str) -> Result<Reference> {
    Reference::parse(s).map_err(|why| {
        let code = if s.contains(':') {
            Code::DigestInvalid
        } else {
            Code::ManifestInvalid
        };
        ApiError::new(code, format!("invalid reference {s:?}: {why}"))
    })
}

// ------------------------------------------------------------------ listings

/// `n` and `last` of a list request, and the `Link` header for the next page.
fn page(all: &[String], uri: &Uri, base: &str) -> Result<(Vec<String>, Option<String>)> {
    let q = query(uri);
    let n = match q.get("n") {
        None => None,
        Some(s) => Some(s.parse::<usize>().map_err(|_| {
            ApiError::new(
                Code::Unsupported,
                format!("query parameter n={s:?} is not a number"),
            )
            .with_status(StatusCode::BAD_REQUEST)
        })?),
    };
    let last = q.get("last").map(String::as_str);
    let (items, more) = reference::paginate(all, n, last);
    let link = match (more, items.last(), n) {
        (true, Some(l), Some(n)) => Some(format!("<{base}?n={n}&last={l}>; rel=\"next\"")),
        _ => None,
    };
    Ok((items.to_vec(), link))
}

async fn catalog(reg: &Registry, uri: &Uri) -> Result<Response> {
    let all = reg.storage.catalog().await?;
    let (items, link) = page(&all, uri, "/v2/_catalog")?;
    let body = serde_json::json!({ "repositories": items }).to_string();
    Ok(json_with_link(body, link))
}

async fn tags(reg: &Registry, name: &str, uri: &Uri) -> Result<Response> {
    let Some(all) = reg.storage.tags(name).await? else {
        return Err(
            ApiError::new(Code::NameUnknown, format!("repository {name} is not known"))
                .with_detail(serde_json::json!({ "name": name })),
        );
    };
    let (items, link) = page(&all, uri, &format!("/v2/{name}/tags/list"))?;
    let body = serde_json::json!({ "name": name, "tags": items }).to_string();
    Ok(json_with_link(body, link))
}

fn json_with_link(body: String, link: Option<String>) -> Response {
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(header::LINK, l);
    }
    r
}

// ------------------------------------------------------------------ manifests

async fn get_manifest(
    reg: &Registry,
    name: &str,
    reference: &Reference,
    head: bool,
) -> Result<Response> {
    let Some(m) = reg.storage.get_manifest(name, reference).await? else {
        if !reg.storage.repo_exists(name).await {
            return Err(ApiError::new(
                Code::NameUnknown,
                format!("repository {name} is not known"),
            )
            .with_detail(serde_json::json!({ "name": name })));
        }
        return Err(ApiError::new(
            Code::ManifestUnknown,
            format!("manifest {reference} is not in {name}"),
        ));
    };
    let digest = m.digest.to_string();
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, m.media_type)
        .header(header::CONTENT_LENGTH, m.body.len())
        .header(CONTENT_DIGEST, &digest)
        .header(header::ETAG, format!("\"{digest}\""));
    if head {
        Ok(builder.body(Body::empty()).expect("valid response"))
    } else {
        Ok(builder.body(Body::from(m.body)).expect("valid response"))
    }
}

async fn put_manifest(
    reg: &Registry,
    name: &str,
    reference: &Reference,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let limit = crate::manifest::MAX_MANIFEST_BYTES;
    let body: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            Code::SizeInvalid,
            format!("manifest is larger than {limit} bytes (or the body broke off)"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    })?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let digest = reg.storage.put_manifest(name, reference, body, ct).await?;
    let d = digest.to_string();
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/manifests/{d}")),
            (CONTENT_DIGEST, d),
        ],
    )
        .into_response())
}

async fn delete_manifest(reg: &Registry, name: &str, reference: &Reference) -> Result<Response> {
    if !reg.delete_enabled {
        return Err(ApiError::new(
            Code::Unsupported,
            "deletes are disabled on this registry",
        ));
    }
    if reg.storage.delete_manifest(name, reference).await? {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(ApiError::new(
            Code::ManifestUnknown,
            format!("manifest {reference} is not in {name}"),
        ))
    }
}

// ------------------------------------------------------------------ blobs

fn blob_unknown(name: &str, d: &Digest) -> ApiError {
    ApiError::new(Code::BlobUnknown, format!("blob {d} is not in {name}"))
        .with_detail(serde_json::json!({ "digest": d.to_string() }))
}

async fn get_blob(
    reg: &Registry,
    name: &str,
    d: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let Some(blob) = reg.storage.open_blob(name, d).await? else {
        return Err(blob_unknown(name, d));
    };
    let size = blob.size;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match reference::parse_range(range_header, size) {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, r.start, r.len()),
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::new(
                Code::BlobUnknown,
                format!("range {range_header:?} is outside the blob's {size} bytes"),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .with_header(header::CONTENT_RANGE, &format!("bytes */{size}")));
        }
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(CONTENT_DIGEST, d.to_string())
        .header(header::ETAG, format!("\"{d}\""));
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    let body = if head {
        Body::empty()
    } else {
        file_body(blob.file, start, len)
    };
    Ok(b.body(body).expect("valid response"))
}

/// Streams `len` bytes of `file` from `start`: one blocking reader per transfer feeding
/// 1 MiB chunks through a small channel (at most a few MiB in flight per request).
fn file_body(mut file: std::fs::File, start: u64, len: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        if start > 0 {
            if let Err(e) = file.seek(std::io::SeekFrom::Start(start)) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
        let mut left = len;
        while left > 0 {
            let want = left.min(READ_CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "blob shorter than its size",
                        );
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            left -= want as u64;
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return; // client went away
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}

async fn delete_blob(reg: &Registry, name: &str, d: &Digest) -> Result<Response> {
    if !reg.delete_enabled {
        return Err(ApiError::new(
            Code::Unsupported,
            "deletes are disabled on this registry",
        ));
    }
    if reg.storage.delete_blob(name, d).await? {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(blob_unknown(name, d))
    }
}

// ------------------------------------------------------------------ uploads

fn blob_created(name: &str, d: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/{d}")),
            (CONTENT_DIGEST, d.to_string()),
        ],
    )
        .into_response()
}

/// 202/204 answers about a session: where to send the next chunk and what we have.
fn upload_progress(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    (
        status,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}")),
            (header::RANGE, format!("0-{}", size.saturating_sub(1))),
            (UPLOAD_UUID, id.to_string()),
            (header::CONTENT_LENGTH, "0".to_string()),
        ],
    )
        .into_response()
}

async fn start_upload(reg: &Registry, name: &str, uri: &Uri, body: Body) -> Result<Response> {
    let q = query(uri);
    if let (Some(mount), Some(from)) = (q.get("mount"), q.get("from")) {
        let d = parse_digest(mount)?;
        valid_name(from)?;
        if reg.storage.mount_blob(name, from, &d).await? {
            return Ok(blob_created(name, &d));
        }
        // Not mountable: the spec says to fall back to a normal upload session.
    }
    if let Some(d) = q.get("digest") {
        let d = parse_digest(d)?;
        reg.storage
            .put_blob(name, &d, body.into_data_stream())
            .await?;
        return Ok(blob_created(name, &d));
    }
    let id = reg.storage.start_upload(name).await?;
    Ok(upload_progress(StatusCode::ACCEPTED, name, &id, 0))
}

async fn upload_status(reg: &Registry, name: &str, id: &str) -> Result<Response> {
    let size = reg.storage.upload_size(name, id).await?;
    Ok(upload_progress(StatusCode::NO_CONTENT, name, id, size))
}

fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>> {
    match headers.get(header::CONTENT_RANGE) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().unwrap_or("");
            reference::parse_content_range(s).map(Some).ok_or_else(|| {
                ApiError::new(
                    Code::BlobUploadInvalid,
                    format!("Content-Range {s:?} is not <start>-<end>"),
                )
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            })
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Adds the session's current `Range` to a 416 so the client can resume.
async fn with_progress(reg: &Registry, name: &str, id: &str, e: StorageError) -> ApiError {
    let out_of_order = matches!(e, StorageError::OutOfOrder { .. });
    let mut api = ApiError::from(e);
    if out_of_order {
        if let Ok(size) = reg.storage.upload_size(name, id).await {
            api = api
                .with_header(header::RANGE, &format!("0-{}", size.saturating_sub(1)))
                .with_header(header::LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"));
        }
    }
    api
}

async fn patch_upload(
    reg: &Registry,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let range = content_range(headers)?;
    match reg
        .storage
        .append(
            name,
            id,
            range,
            content_length(headers),
            body.into_data_stream(),
        )
        .await
    {
        Ok(size) => Ok(upload_progress(StatusCode::ACCEPTED, name, id, size)),
        Err(e) => Err(with_progress(reg, name, id, e).await),
    }
}

async fn finish_upload(
    reg: &Registry,
    name: &str,
    id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let q = query(uri);
    let Some(d) = q.get("digest") else {
        return Err(ApiError::new(
            Code::DigestInvalid,
            "the digest query parameter is required to finish an upload",
        ));
    };
    let d = parse_digest(d)?;
    let range = content_range(headers)?;
    match reg
        .storage
        .finish_upload(name, id, &d, range, body.into_data_stream())
        .await
    {
        Ok(_) => Ok(blob_created(name, &d)),
        Err(e) => Err(with_progress(reg, name, id, e).await),
    }
}

//! The HTTP side of talking to one registry: scheme choice (HTTPS; mutual TLS with the
//! cluster CA when a credential is configured; plain HTTP for `--insecure-registry` hosts,
//! and for loopback ones without a credential, like docker), the `/v2/` ping, and requests
//! that answer a 401 by following the challenge (basic, or the bearer token flow) once.

use super::auth::{self, Challenge, Credentials};
use super::DistributionError;
use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings shared by every registry the client talks to.
#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    /// Hosts (`host[:port]`) reached over plain HTTP. Loopback hosts always are.
    pub insecure_registries: Vec<String>,
    /// Credentials by registry host.
    pub credentials: Vec<(String, Credentials)>,
    /// Layers transferred at once (default 4).
    pub max_parallel: usize,
    /// Push blobs larger than this in PATCH chunks of this size; None: one PUT per blob.
    pub chunk_size: Option<u64>,
    /// Mutual TLS with the cluster CA ([`super::tls::client_config`]): used for every
    /// registry not in `insecure_registries`, loopback ones included.
    pub mtls: Option<Arc<rustls::ClientConfig>>,
}

/// Whether `host` (`name[:port]`) is on loopback, where plain HTTP is the default.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

enum AuthState {
    Anonymous,
    Basic,
    Bearer(String),
}

/// A client of one registry host.
pub struct RegistryClient {
    http: reqwest::Client,
    host: String,
    base: String,
    credentials: Option<Credentials>,
    auth: Mutex<AuthState>,
}

impl RegistryClient {
    pub fn new(host: &str, config: &ClientConfig) -> Result<RegistryClient, DistributionError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let insecure = config.insecure_registries.iter().any(|h| h == host);
        let mtls = config.mtls.as_ref().filter(|_| !insecure);
        let plain = mtls.is_none() && (insecure || is_loopback(host));
        let scheme = if plain { "http" } else { "https" };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16);
        if let Some(tls) = mtls {
            builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(tls));
        }
        let http = builder.build().map_err(|source| DistributionError::Http {
            url: host.to_string(),
            source,
        })?;
        Ok(RegistryClient {
            http,
            host: host.to_string(),
            base: format!("{scheme}://{host}"),
            credentials: config
                .credentials
                .iter()
                .find(|(h, _)| h == host)
                .map(|(_, c)| c.clone()),
            auth: Mutex::new(AuthState::Anonymous),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// An absolute URL for a path or a `Location` header (absolute or relative).
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    fn authorize(&self, rb: RequestBuilder) -> RequestBuilder {
        match &*self.auth.lock().unwrap() {
            AuthState::Anonymous => rb,
            AuthState::Basic => match &self.credentials {
                Some(c) => rb.basic_auth(&c.username, Some(&c.password)),
                None => rb,
            },
            AuthState::Bearer(t) => rb.bearer_auth(t),
        }
    }

    /// Sends a body-less request; on 401, follows the challenge for `scope` and retries once.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        scope: &str,
    ) -> Result<Response, DistributionError> {
        let url = self.url(url);
        let build = || {
            self.authorize(self.http.request(method.clone(), &url))
                .headers(headers.clone())
        };
        let resp = build()
            .send()
            .await
            .map_err(|source| DistributionError::Http {
                url: url.clone(),
                source,
            })?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        self.answer_challenge(&resp, scope).await?;
        build()
            .send()
            .await
            .map_err(|source| DistributionError::Http {
                url: url.clone(),
                source,
            })
    }

    /// Sends a request with a body (not retried: authenticate first with a body-less one).
    pub async fn send_body(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<Response, DistributionError> {
        let url = self.url(url);
        self.authorize(self.http.request(method, &url))
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|source| DistributionError::Http { url, source })
    }

    /// Pings `/v2/` and settles authentication for `scope`.
    pub async fn ping(&self, scope: &str) -> Result<(), DistributionError> {
        let resp = self
            .send(Method::GET, "/v2/", HeaderMap::new(), scope)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => Err(DistributionError::Unauthorized {
                registry: self.host.clone(),
                detail: "credentials refused".into(),
            }),
            _ => Err(status_error(&self.url("/v2/"), resp).await),
        }
    }

    async fn answer_challenge(
        &self,
        resp: &Response,
        scope: &str,
    ) -> Result<(), DistributionError> {
        let unauthorized = |detail: String| DistributionError::Unauthorized {
            registry: self.host.clone(),
            detail,
        };
        let header = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("401 without a WWW-Authenticate challenge".into()))?;
        match auth::parse_challenge(header) {
            Some(Challenge::Basic) => {
                if self.credentials.is_none() {
                    return Err(unauthorized(
                        "the registry wants a user name and password".into(),
                    ));
                }
                *self.auth.lock().unwrap() = AuthState::Basic;
                Ok(())
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => {
                let mut q: Vec<(&str, String)> = Vec::new();
                if let Some(s) = service {
                    q.push(("service", s));
                }
                q.push(("scope", asked.unwrap_or_else(|| scope.to_string())));
                let url = reqwest::Url::parse_with_params(&realm, &q).map_err(|e| {
                    unauthorized(format!("token realm {realm:?} is not a URL: {e}"))
                })?;
                let mut rb = self.http.get(url);
                if let Some(c) = &self.credentials {
                    rb = rb.basic_auth(&c.username, Some(&c.password));
                }
                let r = rb.send().await.map_err(|source| DistributionError::Http {
                    url: realm.clone(),
                    source,
                })?;
                if !r.status().is_success() {
                    return Err(unauthorized(format!(
                        "token server {realm} answered {}",
                        r.status()
                    )));
                }
                let body = r.bytes().await.map_err(|source| DistributionError::Http {
                    url: realm.clone(),
                    source,
                })?;
                let token = auth::token_from_response(&body)
                    .ok_or_else(|| unauthorized(format!("token server {realm} gave no token")))?;
                *self.auth.lock().unwrap() = AuthState::Bearer(token);
                Ok(())
            }
            None => Err(unauthorized(format!("unsupported challenge {header:?}"))),
        }
    }
}

/// Turns an unexpected answer into an error carrying the registry's error code.
pub async fn status_error(url: &str, resp: Response) -> DistributionError {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?.clone();
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).to_string());
    DistributionError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        detail,
    }
}

pub fn header_map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_default_to_plain_http() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "127.9.9.9",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry.example:5000",
            "10.0.0.1:5000",
            "docker.io",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
        let c = RegistryClient::new("127.0.0.1:5000", &ClientConfig::default()).unwrap();
        assert_eq!(c.url("/v2/"), "http://127.0.0.1:5000/v2/");
        let c = RegistryClient::new("reg.example", &ClientConfig::default()).unwrap();
        assert_eq!(c.url("/v2/"), "https://reg.example/v2/");
        let cfg = ClientConfig {
            insecure_registries: vec!["reg.example".into()],
            ..Default::default()
        };
        let c = RegistryClient::new("reg.example", &cfg).unwrap();
        assert_eq!(c.url("/v2/x"), "http://reg.example/v2/x");
        assert_eq!(c.url("https://elsewhere/u"), "https://elsewhere/u");
    }
}

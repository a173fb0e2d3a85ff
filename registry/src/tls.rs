//! Mutual TLS for the registry: rustls (ring) under axum.
//!
//! [`server_config`] *requires* a client certificate that chains to the cluster CA: a
//! client without one, or with one from another CA, is refused in the handshake and never
//! reaches HTTP. The server's own certificate comes from
//! [`CredentialFiles`](gantry_security::reload::CredentialFiles), so a rotated
//! certificate file is used from the next connection on.
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP connections and runs
//! each handshake on its own task (bounded by [`HANDSHAKE_TIMEOUT`], so a slow client
//! delays nobody); finished connections come out with their [`Peer`] (address + the
//! identity in the client certificate), which the handlers read as `ConnectInfo<Peer>`.

use gantry_security::reload::{ca_roots_file, provider, CredentialFiles};
use gantry_security::Identity;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Credential(#[from] gantry_security::reload::CredentialFileError),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A server config presenting `certs` and requiring a client certificate from the CA.
pub fn server_config(
    ca_file: &Path,
    certs: Arc<CredentialFiles>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(ca_roots_file(ca_file)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    // axum serves HTTP/1.1 here (as the plain listener does)
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The gantry identity in the client's certificate (verified against the CA in the
    /// handshake). None only for the listener's own address.
    pub identity: Option<Identity>,
}

/// Handshaken TLS connections, for `axum::serve`.
pub struct TlsListener {
    local: SocketAddr,
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: wait a little rather than spin
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // No Nagle, as on the plain listener (server.rs::serve).
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(t)) => t,
                            Ok(Err(e)) => {
                                tracing::info!(%remote, "TLS handshake refused: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                    let identity = match tls.get_ref().1.peer_certificates() {
                        Some([leaf, ..]) => match Identity::from_cert_der(leaf) {
                            Ok(id) => id,
                            Err(e) => {
                                // signed by the CA but not a gantry identity: nobody
                                tracing::warn!(%remote, "client certificate refused: {e}");
                                return;
                            }
                        },
                        // the verifier requires a certificate; never here
                        _ => return,
                    };
                    let peer = Peer {
                        remote,
                        identity: Some(identity),
                    };
                    let _ = tx.send((tls, peer)).await;
                });
            }
        });
        Ok(TlsListener {
            local,
            rx,
            acceptor: task,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // the acceptor task only ends when aborted (on drop)
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            remote: self.local,
            identity: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Peer {
        stream.remote_addr().clone()
    }
}

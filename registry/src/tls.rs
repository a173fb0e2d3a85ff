//! Mutual TLS for the registry: rustls (ring) under axum.
//!
//! [`server_config`] *requires* a client certificate that chains to the cluster CA: a
//! client without one, or with one from another CA, is refused in the handshake and never
//! reaches HTTP. The server's own certificate comes from
//! [`CredentialFiles`](gantry_security::reload::CredentialFiles), so a rotated
//! certificate file is used from the next connection on.
//!
//! [`TlsListener`] is an [`axum::serve::Listener`] over `gantry_security::tls::incoming`
//! (each handshake on its own task, bounded, so a slow client delays nobody): finished
//! connections come out with their [`Peer`] (address + the identity in the client
//! certificate), which the handlers read as `ConnectInfo<Peer>`.

use gantry_security::reload::{ca_roots_file, CredentialFiles};
use gantry_security::tls::{incoming, server_config_with, ClientCerts, TlsConn};
use gantry_security::Identity;
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

pub use gantry_security::tls::TlsError;

/// A server config presenting `certs` and requiring a client certificate from the CA.
pub fn server_config(
    ca_file: &Path,
    certs: Arc<CredentialFiles>,
) -> Result<Arc<ServerConfig>, TlsError> {
    // axum serves HTTP/1.1 here (as the plain listener does)
    server_config_with(
        ca_roots_file(ca_file)?,
        certs,
        ClientCerts::Required,
        b"http/1.1",
    )
}

/// The client at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: Option<SocketAddr>,
    /// The gantry identity in the client's certificate (verified against the CA in the
    /// handshake; the config requires one). None only for the listener's own address.
    pub identity: Option<Identity>,
}

/// Handshaken TLS connections (`gantry_security::tls::incoming`), for `axum::serve`.
pub struct TlsListener {
    local: SocketAddr,
    conns: tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        Ok(TlsListener {
            local: listener.local_addr()?,
            conns: incoming(listener, config),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.conns.next().await {
                Some(Ok(c)) => {
                    let p = c.peer();
                    let peer = Peer {
                        remote: p.remote,
                        identity: p.identity.clone(),
                    };
                    return (c, peer);
                }
                // incoming() only yields connections; the stream ends with the listener
                Some(Err(_)) => continue,
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            remote: Some(self.local),
            identity: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Peer {
        stream.remote_addr().clone()
    }
}

//! rustls (ring) building blocks every gantry server and client uses, and their tonic glue.
//!
//! - [`CertStore`]: this process's own certificate and key, swappable at run time
//!   ([`CertStore::swap`]): it is both the server's and the client's certificate resolver,
//!   so a renewed certificate is used by every *new* handshake without a restart (open
//!   connections keep the session they have).
//! - [`server_config`]: verifies client certificates against the cluster CA. Client
//!   authentication is *optional at the TLS layer* only so that a newcomer holding nothing
//!   but a join token can call `Join`; a certificate that is sent must chain to the CA, and
//!   the servers require a verified identity for every other call ([`PeerInfo`]).
//! - [`client_config`]: verifies the server against the CA under a fixed server name
//!   ([`crate::identity::CONTROLLER_SERVER_NAME`] for controllers) whatever address is
//!   dialled, and presents our certificate when we have one.
//! - tonic: [`incoming`] turns a `TcpListener` into a stream of handshaken [`TlsConn`]s for
//!   `serve_with_incoming` (each carries the verified [`PeerInfo`], which tonic puts in every
//!   request's extensions); [`TlsConnector`] is the client side for
//!   `Endpoint::connect_with_connector`. tonic's own `ServerTlsConfig` cannot swap
//!   certificates, hence this.

use crate::identity::Identity;
use crate::pki::Credential;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a server waits for a client's TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Pki(#[from] crate::PkiError),
    #[error(transparent)]
    Credential(#[from] crate::reload::CredentialFileError),
}

/// The ring provider (the workspace's only one).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_from_pem(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A root store holding the cluster CA only.
pub fn ca_roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem("CA certificate", ca_pem)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn certified_key(cred: &Credential) -> Result<CertifiedKey, TlsError> {
    let certs = certs_from_pem("certificate", &cred.cert_pem)?;
    let key =
        PrivateKeyDer::from_pem_slice(cred.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "private key",
            reason: e.to_string(),
        })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsError::Pem {
        what: "certificate and key",
        reason: e.to_string(),
    })
}

/// Our own certificate and key, swappable while servers and clients use them.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    identity: Identity,
    not_after: SystemTime,
}

impl CertStore {
    pub fn new(cred: &Credential) -> Result<Arc<CertStore>, TlsError> {
        Ok(Arc::new(CertStore {
            current: RwLock::new(Self::load(cred)?),
        }))
    }

    fn load(cred: &Credential) -> Result<Current, TlsError> {
        Ok(Current {
            key: Arc::new(certified_key(cred)?),
            identity: cred.identity()?,
            not_after: cred.not_after()?,
        })
    }

    /// Use `cred` for every handshake from now on. A bad credential changes nothing.
    pub fn swap(&self, cred: &Credential) -> Result<(), TlsError> {
        let next = Self::load(cred)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    pub fn identity(&self) -> Identity {
        self.read().identity.clone()
    }

    pub fn not_after(&self) -> SystemTime {
        self.read().not_after
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.read().key.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Whether a server's TLS handshake demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// A certificate that is sent must chain to the CA, but a client may send none (the
    /// controller: a newcomer holding only a join token calls `Join`).
    Optional,
    /// No certificate chaining to the CA, no connection (the registry).
    Required,
}

/// The server config every gantry listener uses: presents `certs`, verifies client
/// certificates against `roots` as `client_certs` says, offers `alpn`, and never resumes a
/// session (a resumed session keeps the identity and the validity of the certificate of
/// its first handshake, past a swap or an expiry).
pub fn server_config_with(
    roots: Arc<RootCertStore>,
    certs: Arc<dyn ResolvesServerCert>,
    client_certs: ClientCerts,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
    if client_certs == ClientCerts::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// A gRPC server that presents `certs` and verifies any client certificate against the CA
/// (clients without one get through the handshake: see the module doc).
pub fn server_config(ca_pem: &str, certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(ca_roots(ca_pem)?, certs, ClientCerts::Optional, b"h2")
}

/// A client that trusts only the cluster CA and presents `certs` when given.
pub fn client_config(
    ca_pem: &str,
    certs: Option<Arc<CertStore>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(ca_roots(ca_pem)?);
    let mut cfg = match certs {
        Some(c) => b.with_client_cert_resolver(c),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A client that accepts any server certificate: only for fetching the CA certificate
/// before a join, which the caller then checks against the digest in its join token.
/// Nothing secret may be sent over it.
pub fn client_config_unverified() -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Who is at the other end of a server-side connection: set once per connection after the
/// handshake; tonic hands it to every request as an extension.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The identity in the client's certificate (verified against the CA), or None when
    /// the client sent no certificate.
    pub identity: Option<Identity>,
}

/// A server-side TLS connection and its peer.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConn {
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept TCP connections on `listener` and complete their TLS handshakes (each on its own
/// task, bounded by [`HANDSHAKE_TIMEOUT`], so a slow or hostile client delays nobody).
/// Failed handshakes are logged and dropped; the stream ends when the receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: wait a little rather than spin
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, "TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = match tls.get_ref().1.peer_certificates() {
                    None | Some([]) => None,
                    Some([leaf, ..]) => match Identity::from_cert_der(leaf) {
                        Ok(id) => Some(id),
                        Err(e) => {
                            // signed by our CA but not one of ours: refuse the connection
                            tracing::warn!(%remote, "client certificate: {e}");
                            return;
                        }
                    },
                };
                let conn = TlsConn {
                    inner: tls,
                    info: PeerInfo {
                        remote: Some(remote),
                        identity,
                    },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The client side for tonic: dials the URI's authority over TCP and runs a TLS handshake
/// that verifies the server under `server_name` (`Endpoint::connect_with_connector`).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<TlsConnector, TlsError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError::Config(format!("server name {server_name:?}: {e}")))?;
        Ok(TlsConnector {
            config,
            server_name,
        })
    }

    /// One TLS connection to `addr` (host:port).
    pub async fn connect(
        &self,
        addr: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
    }
}

impl tower::Service<tonic::codegen::http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host:port"))?;
            Ok(hyper_util::rt::TokioIo::new(this.connect(&addr).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, LeafOptions};
    use crate::Role;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    fn cred(ca: &Ca, role: Role, name: &str) -> Credential {
        ca.issue(
            &Identity::new(role, name).unwrap(),
            Duration::from_secs(3600),
            &LeafOptions::default(),
        )
        .unwrap()
    }

    /// Serve one echo of 4 bytes per connection; returns the address and the identities
    /// the server saw, in order.
    async fn echo_server(
        cfg: Arc<ServerConfig>,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Option<Identity>>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut inc = incoming(l, cfg);
        tokio::spawn(async move {
            while let Some(Ok(mut c)) = inc.next().await {
                let _ = tx.send(c.peer().identity.clone());
                let mut b = [0u8; 4];
                if c.read_exact(&mut b).await.is_ok() {
                    let _ = c.write_all(&b).await;
                    let _ = c.flush().await;
                }
            }
        });
        (addr, rx)
    }

    async fn roundtrip(conn: &TlsConnector, addr: SocketAddr) -> io::Result<()> {
        let mut s = conn.connect(&addr.to_string()).await?;
        s.write_all(b"ping").await?;
        s.flush().await?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await?;
        assert_eq!(&b, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn mutual_tls_identities_other_ca_and_hot_swap() {
        let ca = Ca::create("a").unwrap();
        let server = CertStore::new(&cred(&ca, Role::Controller, "1")).unwrap();
        let (addr, mut seen) = echo_server(server_config(ca.cert_pem(), server).unwrap()).await;

        // a client with a certificate: the server sees its identity
        let client = CertStore::new(&cred(&ca, Role::Agent, "n1")).unwrap();
        let cfg = client_config(ca.cert_pem(), Some(client.clone())).unwrap();
        let conn = TlsConnector::new(cfg, crate::identity::CONTROLLER_SERVER_NAME).unwrap();
        roundtrip(&conn, addr).await.unwrap();
        assert_eq!(seen.recv().await.unwrap().unwrap().to_string(), "agent/n1");

        // swapped: the next handshake presents the new certificate
        client.swap(&cred(&ca, Role::Agent, "n2")).unwrap();
        roundtrip(&conn, addr).await.unwrap();
        assert_eq!(seen.recv().await.unwrap().unwrap().to_string(), "agent/n2");
        // a bad credential changes nothing
        let bad = Credential {
            cert_pem: "junk".into(),
            key_pem: "junk".into(),
        };
        assert!(client.swap(&bad).is_err());
        assert_eq!(client.identity().to_string(), "agent/n2");

        // no certificate: the handshake completes, with no identity
        let anon = TlsConnector::new(
            client_config(ca.cert_pem(), None).unwrap(),
            crate::identity::CONTROLLER_SERVER_NAME,
        )
        .unwrap();
        roundtrip(&anon, addr).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), None);

        // a certificate from another CA: refused by the server
        let other = Ca::create("b").unwrap();
        let foreign = CertStore::new(&cred(&other, Role::Admin, "eve")).unwrap();
        let conn = TlsConnector::new(
            client_config(ca.cert_pem(), Some(foreign)).unwrap(),
            crate::identity::CONTROLLER_SERVER_NAME,
        )
        .unwrap();
        assert!(roundtrip(&conn, addr).await.is_err());

        // a client trusting another CA refuses our server
        let conn = TlsConnector::new(
            client_config(other.cert_pem(), None).unwrap(),
            crate::identity::CONTROLLER_SERVER_NAME,
        )
        .unwrap();
        let e = roundtrip(&conn, addr).await.unwrap_err().to_string();
        assert!(e.contains("certificate"), "{e}");

        // the server name is checked: an agent certificate cannot serve as a controller
        let agent_srv = CertStore::new(&cred(&ca, Role::Agent, "n3")).unwrap();
        let (addr2, _seen2) = echo_server(server_config(ca.cert_pem(), agent_srv).unwrap()).await;
        let conn = TlsConnector::new(
            client_config(ca.cert_pem(), None).unwrap(),
            crate::identity::CONTROLLER_SERVER_NAME,
        )
        .unwrap();
        assert!(roundtrip(&conn, addr2).await.is_err());
    }

    #[tokio::test]
    async fn an_agent_serves_under_its_own_node_name_only() {
        let ca = Ca::create("a").unwrap();
        let server = CertStore::new(&cred(&ca, Role::Agent, "n1")).unwrap();
        let (addr, _seen) = echo_server(server_config(ca.cert_pem(), server).unwrap()).await;
        let viewer = CertStore::new(&cred(&ca, Role::Viewer, "v")).unwrap();
        let cfg = client_config(ca.cert_pem(), Some(viewer)).unwrap();
        let n1 = TlsConnector::new(cfg.clone(), &crate::identity::node_server_name("n1")).unwrap();
        roundtrip(&n1, addr).await.unwrap();
        // a client that wants node n2 does not accept n1's certificate
        let n2 = TlsConnector::new(cfg.clone(), &crate::identity::node_server_name("n2")).unwrap();
        assert!(roundtrip(&n2, addr).await.is_err());
        // nor does one that wants a controller
        let ctl = TlsConnector::new(cfg, crate::identity::CONTROLLER_SERVER_NAME).unwrap();
        assert!(roundtrip(&ctl, addr).await.is_err());
    }
}

//! Mutual TLS to a cluster registry: the client presents its credential (files reloaded
//! when they change, [`CredentialFiles`]) and trusts only the cluster CA. The registry is
//! verified under the fixed name [`REGISTRY_SERVER_NAME`] whatever address is dialled:
//! registries move between hosts and addresses, the CA vouches for the role (only
//! certificates of role registry carry that name).

use gantry_security::identity::REGISTRY_SERVER_NAME;
use gantry_security::reload::{ca_roots_file, CredentialFiles};
use gantry_security::tls::provider;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

pub use gantry_security::tls::TlsError;

/// Files of a client credential and the cluster CA.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Verifies the registry's chain with webpki against the CA, under
/// [`REGISTRY_SERVER_NAME`] instead of the dialled host.
#[derive(Debug)]
struct RegistryVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for RegistryVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls client configuration for cluster registries (HTTP/1.1, as the server).
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let certs = CredentialFiles::load(&files.cert, &files.key)?;
    let inner = WebPkiServerVerifier::builder_with_provider(ca_roots_file(&files.ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = RegistryVerifier {
        inner,
        name: ServerName::try_from(REGISTRY_SERVER_NAME).expect("a valid DNS name"),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

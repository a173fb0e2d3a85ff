//! The client side of joining with a token and of renewing a certificate (agents,
//! joining controllers, `gantry credential request`).
//!
//! Joining: fetch the CA certificate over a TLS connection that verifies nothing, keep it
//! only when its SHA-256 matches the digest in the token, then send token + CSR over a
//! connection that verifies the member against that CA. The token never reaches a server
//! that does not hold a certificate of the pinned CA.

use super::client::{ClientError, ControllerClient};
use crate::raft::network::Transport;
use gantry_security::pki::{new_key_and_csr, Credential};
use gantry_security::tls::{client_config_unverified, CertStore, TlsConnector};
use gantry_security::token::{ca_fingerprint, JoinToken};
use gantry_security::{Identity, Role};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] gantry_security::token::TokenError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "the controller's CA (sha256 {got}) is not the one the join token names ({want}): \
         refusing to send the token"
    )]
    WrongCa { want: String, got: String },
    #[error("{0}")]
    Pki(String),
}

fn pki(e: impl std::fmt::Display) -> JoinError {
    JoinError::Pki(e.to_string())
}

/// What a join returns.
#[derive(Debug)]
pub struct Joined {
    pub credential: Credential,
    pub ca_pem: String,
    /// Controllers only.
    pub ca_key_pem: Option<String>,
}

/// Obtain a certificate for `name` with `token` from the controllers at `addrs`.
pub async fn join(addrs: &[String], token: &str, name: &str) -> Result<Joined, JoinError> {
    let token = JoinToken::parse(token)?;
    // The CSR's names are ignored by the CA (it writes the token's role and this name).
    let claimed = Identity::new(Role::Viewer, name).map_err(pki)?;
    let unverified = Transport::Tls(
        TlsConnector::new(
            client_config_unverified().map_err(pki)?,
            gantry_security::identity::CONTROLLER_SERVER_NAME,
        )
        .map_err(pki)?,
    );
    let ca_pem = ControllerClient::with_transport(addrs.to_vec(), unverified)
        .ca_certificate()
        .await?;
    let got = ca_fingerprint(&ca_pem).map_err(pki)?;
    if got != token.ca_sha256 {
        return Err(JoinError::WrongCa {
            want: token.ca_sha256,
            got,
        });
    }
    let (key_pem, csr_pem) = new_key_and_csr(&claimed).map_err(pki)?;
    let transport = Transport::tls(&ca_pem, None).map_err(pki)?;
    let reply = ControllerClient::with_transport(addrs.to_vec(), transport)
        .join(&token.to_string(), &csr_pem, name)
        .await?;
    let credential = Credential {
        cert_pem: reply.cert_pem,
        key_pem,
    };
    let id = credential.identity().map_err(pki)?;
    if id.name != name {
        return Err(pki(format!(
            "the controller issued {id}, not a certificate for {name}"
        )));
    }
    Ok(Joined {
        credential,
        ca_pem: reply.ca_pem,
        ca_key_pem: (!reply.ca_key_pem.is_empty()).then_some(reply.ca_key_pem),
    })
}

/// Renew the certificate in `certs` through `client` (which presents it): a new key, a
/// certificate for the same identity; `certs` is swapped in place and the new credential
/// returned (for the caller to save).
pub async fn renew(
    client: &mut ControllerClient,
    certs: &Arc<CertStore>,
) -> Result<Credential, JoinError> {
    let identity = certs.identity();
    let (key_pem, csr_pem) = new_key_and_csr(&identity).map_err(pki)?;
    let cert_pem = client.renew(&csr_pem).await?;
    let credential = Credential { cert_pem, key_pem };
    let got = credential.identity().map_err(pki)?;
    if got != identity {
        return Err(pki(format!("renewal returned {got}, not {identity}")));
    }
    certs.swap(&credential).map_err(pki)?;
    Ok(credential)
}

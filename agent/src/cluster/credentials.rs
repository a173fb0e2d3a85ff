//! The node's certificate (identity `agent/<node name>`): obtained with a join token on
//! first start, kept in `DIR/node.crt`, `DIR/node.key` (0600) and `DIR/ca.crt`, used for
//! mutual TLS with the controllers, and renewed at about 2/3 of its remaining lifetime
//! without a restart (the certificate is swapped in place: new connections present the
//! new one, open ones keep going).

use gantry_controller::api::join::{join, renew};
use gantry_controller::api::ControllerClient;
use gantry_controller::raft::network::Transport;
use gantry_security::pki::{write_private, Credential};
use gantry_security::tls::CertStore;
use gantry_security::{Identity, Role};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no node certificate in {dir}: give --token (a join token of role agent, \
         `gantry token create --role agent`)"
    )]
    NoToken { dir: PathBuf },
    #[error("{dir}: {reason}")]
    Files { dir: PathBuf, reason: String },
    #[error("joining: {0}")]
    Join(String),
}

/// The node's TLS material, ready to dial controllers.
pub struct NodeTls {
    pub certs: Arc<CertStore>,
    pub transport: Transport,
    pub dir: PathBuf,
}

/// Load the node certificate from `dir`, or obtain one from `addrs` with `token`.
pub async fn load_or_join(
    dir: &Path,
    name: &str,
    addrs: &[String],
    token: Option<&str>,
) -> Result<NodeTls, CredentialError> {
    let files = |reason: String| CredentialError::Files {
        dir: dir.to_path_buf(),
        reason,
    };
    let me = Identity::new(Role::Agent, name).map_err(|e| files(e.to_string()))?;
    if !dir.join("node.crt").exists() {
        let Some(token) = token else {
            return Err(CredentialError::NoToken {
                dir: dir.to_path_buf(),
            });
        };
        let joined = join(addrs, token, name)
            .await
            .map_err(|e| CredentialError::Join(e.to_string()))?;
        let got = joined
            .credential
            .identity()
            .map_err(|e| files(e.to_string()))?;
        if got != me {
            return Err(CredentialError::Join(format!(
                "the token is for {} credentials, an agent needs an agent token",
                got.role
            )));
        }
        write_private(&dir.join("ca.crt"), joined.ca_pem.as_bytes(), 0o644)
            .map_err(|e| files(e.to_string()))?;
        joined
            .credential
            .save(dir, "node")
            .map_err(|e| files(e.to_string()))?;
    }
    let cred = Credential::load(dir, "node").map_err(|e| files(e.to_string()))?;
    let got = cred.identity().map_err(|e| files(e.to_string()))?;
    if got != me {
        return Err(files(format!(
            "node.crt is the certificate of {got}, not of {me}"
        )));
    }
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).map_err(|e| files(e.to_string()))?;
    let certs = CertStore::new(&cred).map_err(|e| files(e.to_string()))?;
    let transport =
        Transport::tls(&ca_pem, Some(certs.clone())).map_err(|e| files(e.to_string()))?;
    Ok(NodeTls {
        certs,
        transport,
        dir: dir.to_path_buf(),
    })
}

/// When to renew a certificate valid until `not_after`, seen at `now`: after 2/3 of what
/// is left (at least 1 s from now).
pub fn renew_after(now: SystemTime, not_after: SystemTime) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    (left * 2 / 3).max(Duration::from_secs(1))
}

/// Renew the node certificate forever (until the task is dropped); failures are retried
/// after a few seconds.
pub async fn renew_forever(tls: NodeTls, addrs: Vec<String>) {
    let mut client = ControllerClient::with_transport(addrs, tls.transport.clone());
    loop {
        tokio::time::sleep(renew_after(SystemTime::now(), tls.certs.not_after())).await;
        loop {
            match renew(&mut client, &tls.certs).await {
                Ok(cred) => {
                    if let Err(e) = cred.save(&tls.dir, "node") {
                        tracing::warn!("saving the renewed node certificate: {e}");
                    }
                    tracing::info!("node certificate renewed");
                    break;
                }
                Err(e) => {
                    tracing::warn!("renewing the node certificate: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_of_what_is_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let r = renew_after(now, now + Duration::from_secs(90));
        assert_eq!(r, Duration::from_secs(60));
        assert_eq!(renew_after(now, now), Duration::from_secs(1));
    }
}

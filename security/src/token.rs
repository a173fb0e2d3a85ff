//! Join tokens: `GTKN-<ca>-<id>-<secret>`.
//!
//! `<ca>` is the hex SHA-256 of the cluster CA certificate (DER): a newcomer that has
//! nothing but the token fetches the CA from the member it dials and keeps it only when
//! the digest matches (Swarm's join tokens pin the CA the same way), so the token is never
//! sent to an impostor. `<id>` names the token (`token ls`, `token revoke`); `<secret>` is
//! 32 random bytes, of which the cluster keeps only a SHA-256.

use sha2::{Digest, Sha256};
use std::fmt;

const PREFIX: &str = "GTKN";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("join token: {0} (want GTKN-<ca sha256>-<id>-<secret>)")]
pub struct TokenError(pub &'static str);

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the CA certificate's DER.
    pub ca_sha256: String,
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex_of(&Sha256::digest(data))
}

/// Hex SHA-256 of a PEM certificate's DER.
pub fn ca_fingerprint(ca_pem: &str) -> Result<String, crate::PkiError> {
    Ok(sha256_hex(&crate::pki::cert_der(ca_pem)?))
}

impl JoinToken {
    /// A new token for the cluster whose CA is `ca_pem`.
    pub fn generate(ca_pem: &str) -> Result<JoinToken, crate::PkiError> {
        let id: [u8; 6] = rand::random();
        let secret: [u8; 32] = rand::random();
        Ok(JoinToken {
            ca_sha256: ca_fingerprint(ca_pem)?,
            id: hex_of(&id),
            secret: hex_of(&secret),
        })
    }

    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        let [prefix, ca, id, secret] = parts.as_slice() else {
            return Err(TokenError("not four '-'-separated parts"));
        };
        if *prefix != PREFIX {
            return Err(TokenError("does not start with GTKN-"));
        }
        let hex = |x: &str, len: usize| x.len() == len && x.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(ca, 64) {
            return Err(TokenError("the CA digest is not 64 hex digits"));
        }
        if !hex(id, 12) {
            return Err(TokenError("the id is not 12 hex digits"));
        }
        if !hex(secret, 64) {
            return Err(TokenError("the secret is not 64 hex digits"));
        }
        Ok(JoinToken {
            ca_sha256: ca.to_ascii_lowercase(),
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }

    /// What the cluster stores instead of the secret.
    pub fn secret_sha256(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{}-{}-{}", self.ca_sha256, self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let ca = crate::Ca::create("t").unwrap();
        let t = JoinToken::generate(ca.cert_pem()).unwrap();
        let s = t.to_string();
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert_eq!(t.ca_sha256, ca_fingerprint(ca.cert_pem()).unwrap());
        assert_ne!(t.secret_sha256(), t.secret);
        // the debug form never shows the secret
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "GTKN-abc",
            &s.replacen("GTKN", "XTKN", 1),
            &format!("{s}-x"),
            &s.replace(&t.id, "zzzzzzzzzzzz"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}

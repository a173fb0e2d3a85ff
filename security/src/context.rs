//! The CLI's context file (like a kubeconfig): where the controllers are and the
//! credential to reach them with — CA, certificate and key, PEM, in one JSON file written
//! 0600. `--context FILE`, `GANTRY_CONTEXT`, default `~/.gantry/context`.

use crate::pki::{write_private, Credential, PkiError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Member addresses (host:port).
    pub controllers: Vec<String>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("controllers", &self.controllers)
            .finish_non_exhaustive()
    }
}

/// `$HOME/.gantry/context`.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".gantry").join("context")
}

impl Context {
    pub fn credential(&self) -> Credential {
        Credential {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        let json = serde_json::to_vec_pretty(self).expect("context serializes");
        write_private(path, &json, 0o600)
    }

    pub fn load(path: &Path) -> Result<Context, PkiError> {
        let err = |reason: String| PkiError::File {
            path: path.to_path_buf(),
            reason,
        };
        let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let c: Context = serde_json::from_slice(&data).map_err(|e| err(e.to_string()))?;
        c.credential()
            .identity()
            .map_err(|e| err(format!("certificate: {e}")))?;
        Ok(c)
    }
}

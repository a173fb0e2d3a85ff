//! A credential kept in files and read again when the files change: certificate rotation
//! without a restart.
//!
//! [`CredentialFiles`] is a rustls certificate resolver for both sides (server and
//! client). At every handshake it compares the two files' stamps (device, inode, size,
//! mtime: one `stat` each) with those it loaded; when either changed it loads the pair
//! again, so the next connection presents the new certificate and open connections keep
//! theirs. A pair that does not load (half-written rotation, key not matching the
//! certificate, no gantry identity) is logged and the previous one stays in use; it is
//! tried again at the next handshake. [`crate::pki::Credential::save`] writes the key
//! first and the certificate last, each by rename, so a rotation is complete once the
//! certificate file changed.

use crate::identity::Identity;
use crate::pki::Credential;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum CredentialFileError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> CredentialFileError {
    CredentialFileError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_ns: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_ns: m.mtime_nsec(),
    })
}

/// The ring provider (the workspace's only one).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All certificates of a PEM text (`what` names it in errors).
pub fn certs_from_pem(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// The CA certificate(s) in the PEM file `ca` as a rustls root store; errors name the file.
pub fn ca_roots_file(ca: &Path) -> Result<Arc<rustls::RootCertStore>, CredentialFileError> {
    let pem = std::fs::read_to_string(ca).map_err(|e| file_err(ca, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem("CA certificate", &pem).map_err(|e| file_err(ca, e))? {
        roots
            .add(c)
            .map_err(|e| file_err(ca, format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate and its key as rustls uses them, and the identity in the certificate.
pub fn certified_key(cred: &Credential) -> Result<(CertifiedKey, Identity), String> {
    let certs = certs_from_pem("certificate", &cred.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(cred.key_pem.as_bytes())
        .map_err(|e| format!("private key: {e}"))?;
    let identity = Identity::from_cert_der(&certs[0]).map_err(|e| e.to_string())?;
    let ck = CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| format!("certificate and key: {e}"))?;
    Ok((ck, identity))
}

struct Loaded {
    stamps: (Option<Stamp>, Option<Stamp>),
    key: Arc<CertifiedKey>,
    identity: Identity,
}

/// A certificate file and its key file, reloaded when they change (see the module doc).
pub struct CredentialFiles {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for CredentialFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CredentialFiles {
    /// Loads `cert` and `key` (PEM); errors name the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CredentialFiles>, CredentialFileError> {
        let loaded = Self::read(cert, key)?;
        Ok(Arc::new(CredentialFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded: Mutex::new(loaded),
        }))
    }

    fn read(cert: &Path, key: &Path) -> Result<Loaded, CredentialFileError> {
        // stamps first: a change after this point is seen by the next check
        let stamps = (stamp(cert), stamp(key));
        let cred = Credential {
            cert_pem: std::fs::read_to_string(cert).map_err(|e| file_err(cert, e))?,
            key_pem: std::fs::read_to_string(key).map_err(|e| file_err(key, e))?,
        };
        let (ck, identity) = certified_key(&cred).map_err(|reason| {
            // a key problem names the key file, anything else the certificate
            let path = if reason.starts_with("private key") {
                key
            } else {
                cert
            };
            file_err(path, reason)
        })?;
        Ok(Loaded {
            stamps,
            key: Arc::new(ck),
            identity,
        })
    }

    /// The credential to present now, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = (stamp(&self.cert), stamp(&self.key));
        if now != loaded.stamps {
            match Self::read(&self.cert, &self.key) {
                Ok(next) => {
                    if next.identity != loaded.identity {
                        tracing::warn!(from = %loaded.identity, to = %next.identity,
                            "the reloaded certificate carries another identity");
                    }
                    tracing::info!(cert = %self.cert.display(), identity = %next.identity,
                        "certificate files changed: reloaded");
                    *loaded = next;
                }
                Err(e) => {
                    tracing::warn!("certificate files changed but do not load ({e}); keeping the previous certificate");
                }
            }
        }
        loaded.key.clone()
    }

    /// The identity in the certificate in use.
    pub fn identity(&self) -> Identity {
        self.current();
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .identity
            .clone()
    }
}

impl ResolvesServerCert for CredentialFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CredentialFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, LeafOptions};
    use crate::Role;
    use std::time::Duration;

    fn issue(ca: &Ca, name: &str) -> Credential {
        ca.issue(
            &Identity::new(Role::Agent, name).unwrap(),
            Duration::from_secs(600),
            &LeafOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn reloads_changed_files_and_keeps_the_old_pair_when_the_new_one_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("t").unwrap();
        issue(&ca, "one").save(dir.path(), "n").unwrap();
        let (crt, key) = (dir.path().join("n.crt"), dir.path().join("n.key"));
        let files = CredentialFiles::load(&crt, &key).unwrap();
        assert_eq!(files.identity().name, "one");
        let first = files.current();

        issue(&ca, "two").save(dir.path(), "n").unwrap();
        assert_eq!(files.identity().name, "two");
        assert!(!Arc::ptr_eq(&first, &files.current()));

        // a certificate whose key is not the key file's: refused, "two" stays
        let three = issue(&ca, "three");
        std::fs::write(&crt, &three.cert_pem).unwrap();
        assert_eq!(files.identity().name, "two");
        // completed (the key arrives): used
        std::fs::write(&key, &three.key_pem).unwrap();
        assert_eq!(files.identity().name, "three");

        // junk: refused, and a first load of junk names the file
        std::fs::write(&crt, "junk").unwrap();
        assert_eq!(files.identity().name, "three");
        let e = CredentialFiles::load(&crt, &key).unwrap_err().to_string();
        assert!(e.starts_with(&crt.display().to_string()), "{e}");
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = CredentialFiles::load(&crt, &dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
    }
}

//! A credential kept in files and read again when the files change: certificate rotation
//! without a restart.
//!
//! [`CredentialFiles`] is a rustls certificate resolver for both sides (server and
//! client), a [`CertStore`] swapped from files. At every handshake it compares the two files' stamps (device, inode, size,
//! mtime: one `stat` each) with those it loaded; when either changed it loads the pair
//! again, so the next connection presents the new certificate and open connections keep
//! theirs. A pair that does not load (half-written rotation, key not matching the
//! certificate, no gantry identity) is logged and the previous one stays in use; it is
//! tried again at the next handshake. [`crate::pki::Credential::save`] writes the key
//! first and the certificate last, each by rename, so a rotation is complete once the
//! certificate file changed.

use crate::identity::Identity;
use crate::pki::Credential;
use crate::tls::CertStore;
use rustls::client::ResolvesClientCert;
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

/// The CA certificate(s) in the PEM file `ca` as a rustls root store; errors name the file.
pub fn ca_roots_file(ca: &Path) -> Result<Arc<rustls::RootCertStore>, CredentialFileError> {
    let pem = std::fs::read_to_string(ca).map_err(|e| file_err(ca, e))?;
    crate::tls::ca_roots(&pem).map_err(|e| file_err(ca, e))
}

type Stamps = (Option<Stamp>, Option<Stamp>);

/// A certificate file and its key file, reloaded when they change (see the module doc):
/// a [`CertStore`] whose swaps come from the files.
pub struct CredentialFiles {
    cert: PathBuf,
    key: PathBuf,
    store: Arc<CertStore>,
    stamps: Mutex<Stamps>,
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
        // stamps first: a change after this point is seen by the next check
        let stamps = (stamp(cert), stamp(key));
        let cred = Self::read(cert, key)?;
        let store = CertStore::new(&cred).map_err(|e| Self::blame(cert, key, e))?;
        Ok(Arc::new(CredentialFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            store,
            stamps: Mutex::new(stamps),
        }))
    }

    fn read(cert: &Path, key: &Path) -> Result<Credential, CredentialFileError> {
        Ok(Credential {
            cert_pem: std::fs::read_to_string(cert).map_err(|e| file_err(cert, e))?,
            key_pem: std::fs::read_to_string(key).map_err(|e| file_err(key, e))?,
        })
    }

    /// A key problem names the key file, anything else the certificate.
    fn blame(cert: &Path, key: &Path, e: impl std::fmt::Display) -> CredentialFileError {
        let reason = e.to_string();
        file_err(
            if reason.starts_with("private key") {
                key
            } else {
                cert
            },
            reason,
        )
    }

    /// Loads the files again if they changed since the last look.
    fn refresh(&self) {
        let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        let now = (stamp(&self.cert), stamp(&self.key));
        if now == *seen {
            return;
        }
        let before = self.store.identity();
        match Self::read(&self.cert, &self.key).and_then(|cred| {
            self.store
                .swap(&cred)
                .map_err(|e| Self::blame(&self.cert, &self.key, e))
        }) {
            Ok(()) => {
                *seen = now;
                let after = self.store.identity();
                if after != before {
                    tracing::warn!(from = %before, to = %after,
                        "the reloaded certificate carries another identity");
                }
                tracing::info!(cert = %self.cert.display(), identity = %after,
                    "certificate files changed: reloaded");
            }
            // stamps stay: tried again at the next handshake
            Err(e) => tracing::warn!(
                "certificate files changed but do not load ({e}); keeping the previous certificate"
            ),
        }
    }

    /// The store in use (after a reload if the files changed).
    pub fn store(&self) -> &Arc<CertStore> {
        self.refresh();
        &self.store
    }

    /// The identity in the certificate in use.
    pub fn identity(&self) -> Identity {
        self.store().identity()
    }
}

impl ResolvesServerCert for CredentialFiles {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        ResolvesServerCert::resolve(&**self.store(), hello)
    }
}

impl ResolvesClientCert for CredentialFiles {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        ResolvesClientCert::resolve(&**self.store(), root_hint_subjects, sigschemes)
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

        issue(&ca, "two").save(dir.path(), "n").unwrap();
        assert_eq!(files.identity().name, "two");

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
        assert!(e.contains("no certificate"), "{e}");
        let e = CredentialFiles::load(&crt, &dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
    }
}

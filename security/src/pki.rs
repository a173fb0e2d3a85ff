//! The cluster CA and the certificates it issues (rcgen; ECDSA P-256 keys).
//!
//! Files: `ca.crt` (0644) and `ca.key` (0600); a credential is `NAME.crt` + `NAME.key`
//! (0600). Every write is temp file + fsync + rename, so a crash leaves the old file or
//! the new one, never half of one.

use crate::identity::{Identity, IdentityError, CONTROLLER_SERVER_NAME, REGISTRY_SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// How long a CA lives.
pub const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Backdating of `not_before`, for clocks a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("certificate signing request: {0}")]
    Csr(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Invalid(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Write `data` to `path` with `mode`, atomically (temp + fsync + rename).
pub fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // umask may have cleared bits; an existing temp file keeps its old mode
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(path, e));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| file_err(path, e))
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// A certificate and its private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("identity", &self.identity().ok())
            .field("not_after", &self.not_after().ok())
            .finish_non_exhaustive()
    }
}

/// The DER of the first certificate in a PEM text.
pub fn cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let p = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?
        .1;
    Ok(p.contents)
}

/// When a PEM certificate expires.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, PkiError> {
    let der = cert_der(cert_pem)?;
    let (_, c) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Invalid(format!("bad certificate: {e}")))?;
    let secs = c.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

impl Credential {
    pub fn identity(&self) -> Result<Identity, PkiError> {
        Ok(Identity::from_cert_der(&cert_der(&self.cert_pem)?)?)
    }

    pub fn not_after(&self) -> Result<SystemTime, PkiError> {
        not_after(&self.cert_pem)
    }

    /// Files `<dir>/<name>.crt` and `<dir>/<name>.key`, both 0600.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), PkiError> {
        write_private(
            &dir.join(format!("{name}.key")),
            self.key_pem.as_bytes(),
            0o600,
        )?;
        write_private(
            &dir.join(format!("{name}.crt")),
            self.cert_pem.as_bytes(),
            0o600,
        )
    }

    pub fn load(dir: &Path, name: &str) -> Result<Credential, PkiError> {
        Ok(Credential {
            cert_pem: read(&dir.join(format!("{name}.crt")))?,
            key_pem: read(&dir.join(format!("{name}.key")))?,
        })
    }
}

/// A new private key (PEM) and a CSR for `identity` signed with it. The CA ignores the
/// CSR's names (it writes the identity it vouches for); the CSR proves key possession.
pub fn new_key_and_csr(identity: &Identity) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&identity.name);
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "gantry");
    d.push(DnType::CommonName, cn);
    d
}

/// The cluster's certificate authority.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// What a leaf certificate is for, besides its identity.
#[derive(Debug, Default, Clone)]
pub struct LeafOptions {
    /// Extra DNS names (controllers always get [`CONTROLLER_SERVER_NAME`], registries
    /// [`REGISTRY_SERVER_NAME`]).
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Ca {
    /// A new self-signed CA for cluster `cluster` (its name goes in the CN).
    pub fn create(cluster: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("gantry cluster CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(now + CA_TTL);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        // parse once now so a bad pair fails at load, not at the first issue
        Issuer::from_ca_cert_pem(cert_pem, &key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    /// `<dir>/ca.crt` and `<dir>/ca.key`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert = read(&dir.join("ca.crt"))?;
        let key = read(&dir.join("ca.key"))?;
        Ca::from_pem(&cert, &key).map_err(|e| file_err(&dir.join("ca.key"), e))
    }

    /// Write `ca.crt` (0644) and `ca.key` (0600); refuses to replace an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let key_path = dir.join("ca.key");
        if key_path.exists() {
            return Err(file_err(
                &key_path,
                "a CA already exists here; refusing to replace it",
            ));
        }
        write_private(&key_path, self.key.serialize_pem().as_bytes(), 0o600)?;
        write_private(&dir.join("ca.crt"), self.cert_pem.as_bytes(), 0o644)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn leaf_params(
        &self,
        identity: &Identity,
        ttl: Duration,
        opts: &LeafOptions,
    ) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&identity.name);
        let mut sans = vec![SanType::URI(identity.uri().try_into()?)];
        let mut dns = opts.dns_names.clone();
        match identity.role {
            crate::Role::Controller => dns.push(CONTROLLER_SERVER_NAME.to_string()),
            crate::Role::Registry => dns.push(REGISTRY_SERVER_NAME.to_string()),
            crate::Role::Agent => dns.push(crate::identity::node_server_name(&identity.name)),
            _ => {}
        }
        dns.sort();
        dns.dedup();
        for d in dns {
            sans.push(SanType::DnsName(d.try_into()?));
        }
        sans.extend(opts.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        p.not_before = to_offset(now - CLOCK_SKEW);
        p.not_after = to_offset(now + ttl);
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }

    /// A certificate for `identity` on the public key of `csr_pem` (whose signature is
    /// verified: the requester holds the key). Names in the CSR are ignored.
    pub fn issue_for_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Duration,
        opts: &LeafOptions,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let params = self.leaf_params(identity, ttl, opts)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        Ok(params.signed_by(&csr.public_key, &issuer)?.pem())
    }

    /// A new key and a certificate for `identity` (for the CA's own host: the first
    /// member, the bootstrap admin).
    pub fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
        opts: &LeafOptions,
    ) -> Result<Credential, PkiError> {
        let key = KeyPair::generate()?;
        let params = self.leaf_params(identity, ttl, opts)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        Ok(Credential {
            cert_pem: params.signed_by(&key, &issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn ca_issues_for_csr_with_the_identity_it_chooses() {
        let ca = Ca::create("test").unwrap();
        let claimed = Identity::new(Role::Admin, "mallory").unwrap();
        let (key, csr) = new_key_and_csr(&claimed).unwrap();
        let granted = Identity::new(Role::Agent, "node-7").unwrap();
        let ttl = Duration::from_secs(3600);
        let cert = ca
            .issue_for_csr(&csr, &granted, ttl, &LeafOptions::default())
            .unwrap();
        let cred = Credential {
            cert_pem: cert,
            key_pem: key,
        };
        // the CSR asked for admin; the CA wrote what it vouches for
        assert_eq!(cred.identity().unwrap(), granted);
        let left = cred
            .not_after()
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(
            left <= ttl && left > ttl - Duration::from_secs(60),
            "{left:?}"
        );
        // a CSR whose signature does not match is refused
        let (_, other_csr) = new_key_and_csr(&claimed).unwrap();
        let mut broken = other_csr.replace("-----BEGIN CERTIFICATE REQUEST-----\n", "");
        broken.insert_str(0, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA");
        assert!(matches!(
            ca.issue_for_csr(&broken, &granted, ttl, &LeafOptions::default()),
            Err(PkiError::Csr(_))
        ));
    }

    #[test]
    fn ca_files_are_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("test").unwrap();
        ca.save(dir.path()).unwrap();
        let mode = |n: &str| {
            std::fs::metadata(dir.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("ca.crt"), 0o644);
        let again = Ca::create("test").unwrap();
        let e = again.save(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ca.key") && e.contains("already exists"), "{e}");
        let loaded = Ca::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let member = Identity::new(Role::Controller, "1").unwrap();
        let cred = loaded
            .issue(&member, Duration::from_secs(60), &LeafOptions::default())
            .unwrap();
        cred.save(dir.path(), "member").unwrap();
        assert_eq!(mode("member.key"), 0o600);
        assert_eq!(Credential::load(dir.path(), "member").unwrap(), cred);
        // a key file that is not a key names the file
        std::fs::write(dir.path().join("ca.key"), "junk").unwrap();
        let e = Ca::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ca.key"), "{e}");
    }
}

//! gantry's cluster PKI (issue #10).
//!
//! - [`identity`]: who a certificate speaks for — a [`Role`] and a name, carried in the
//!   certificate as a URI subject-alternative name `spiffe://gantry/<role>/<name>` (the
//!   SPIFFE ID shape; the CN repeats the name for humans and logs).
//! - [`pki`]: the cluster CA (rcgen), keys, CSRs and certificates issued from them; files
//!   written with 0600 permissions, temp + rename.
//! - [`reload`]: a credential in files, reloaded when the files change (a rustls
//!   certificate resolver for servers and clients: rotation without restart).
//!
//! - [`token`]: join tokens (`GTKN-<ca sha256>-<id>-<secret>`); [`context`]: the CLI's
//!   context file.
//! - [`tls`]: rustls configurations over the cluster CA, hot-swappable certificates, and
//!   the tonic glue (a TLS listener whose connections carry the peer's identity, a TLS
//!   connector for channels).

pub mod context;
pub mod identity;
pub mod pki;
pub mod reload;
pub mod tls;
pub mod token;

pub use identity::{Identity, IdentityError, Role};
pub use pki::{Ca, Credential, PkiError};

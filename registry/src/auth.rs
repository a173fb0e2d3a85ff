//! Who may pull and who may push.
//!
//! Over mutual TLS, the role in the client certificate decides ([`role_access`]). Over
//! plain HTTP (`--insecure`), basic authentication with separate read and write users:
//! two htpasswd files (the Apache format `user:hash`, one per line, `#` comments; bcrypt
//! hashes only, as `htpasswd -B` writes them and as the reference registry requires): users
//! of the **read** file may pull, users of the **write** file may pull and push. With no
//! file configured the registry is open (like the reference registry's default).
//!
//! bcrypt is slow on purpose (tens of ms per check), and a client sends credentials with
//! every request, so a successful check is remembered by a sha256 of `user:password`
//! (never the password itself) for the life of the process.

use gantry_security::Role;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// What a certificate's role may do in the registry (mutual TLS): everyone who runs or
/// inspects images pulls (agent, viewer, controller, and the writers); operators and
/// admins push and delete; a registry's own certificate does nothing.
pub fn role_access(role: Role) -> Option<Access> {
    match role {
        Role::Admin | Role::Operator => Some(Access::Write),
        Role::Agent | Role::Viewer | Role::Controller => Some(Access::Read),
        Role::Registry => None,
    }
}

/// Problems with an htpasswd file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Line {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// The answer to a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No or wrong credentials: 401 with a challenge.
    Challenge(String),
    /// Known user without the right: 403.
    Deny(String),
}

/// Parses htpasswd text; `path` only names the file in errors.
pub fn parse_htpasswd(text: &str, path: &Path) -> Result<HashMap<String, String>, AuthError> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |why: String| AuthError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            why,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| err("expected user:bcrypt-hash".into()))?;
        if user.is_empty() {
            return Err(err("user name is empty".into()));
        }
        if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")) {
            return Err(err(format!(
                "user {user:?}: only bcrypt hashes ($2y$…, `htpasswd -B`) are accepted"
            )));
        }
        if users.insert(user.to_string(), hash.to_string()).is_some() {
            return Err(err(format!("user {user:?} appears twice")));
        }
    }
    Ok(users)
}

/// The configured users.
pub struct Users {
    read: HashMap<String, String>,
    write: HashMap<String, String>,
    verified: Mutex<HashMap<[u8; 32], Access>>,
}

impl Users {
    pub fn new(read: HashMap<String, String>, write: HashMap<String, String>) -> Users {
        Users {
            read,
            write,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Loads the two files (either may be absent).
    pub fn load(read: Option<&Path>, write: Option<&Path>) -> Result<Users, AuthError> {
        let load = |p: Option<&Path>| -> Result<HashMap<String, String>, AuthError> {
            match p {
                None => Ok(HashMap::new()),
                Some(p) => {
                    let text = std::fs::read_to_string(p).map_err(|source| AuthError::Read {
                        path: p.to_path_buf(),
                        source,
                    })?;
                    parse_htpasswd(&text, p)
                }
            }
        };
        Ok(Users::new(load(read)?, load(write)?))
    }

    /// Whether any user is configured (else the registry is open).
    pub fn enabled(&self) -> bool {
        !self.read.is_empty() || !self.write.is_empty()
    }

    /// Decides on an `Authorization` header for a request needing `need`. Runs bcrypt:
    /// call from a blocking context.
    pub fn check(&self, authorization: Option<&str>, need: Access) -> Decision {
        if !self.enabled() {
            return Decision::Allow;
        }
        let Some((user, pass)) = authorization.and_then(decode_basic) else {
            return Decision::Challenge("authentication required".into());
        };
        let key: [u8; 32] = Sha256::digest(format!("{user}:{pass}").as_bytes()).into();
        let cached = self.verified.lock().unwrap().get(&key).copied();
        let granted = match cached {
            Some(a) => a,
            None => {
                let ok = |m: &HashMap<String, String>| {
                    m.get(&user)
                        .is_some_and(|h| bcrypt::verify(&pass, h).unwrap_or(false))
                };
                let granted = if ok(&self.write) {
                    Access::Write
                } else if ok(&self.read) {
                    Access::Read
                } else {
                    return Decision::Challenge(format!("invalid credentials for {user:?}"));
                };
                self.verified.lock().unwrap().insert(key, granted);
                granted
            }
        };
        if granted >= need {
            Decision::Allow
        } else {
            Decision::Deny(format!("user {user:?} may only pull"))
        }
    }
}

/// Decodes `Basic base64(user:password)`.
pub fn decode_basic(h: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let (scheme, rest) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    #[test]
    fn htpasswd_errors_name_file_and_line() {
        let p = Path::new("/etc/x.htpasswd");
        let e = parse_htpasswd("# c\n\nbob\n", p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/x.htpasswd:3: expected user:bcrypt-hash"
        );
        let e = parse_htpasswd("bob:{SHA}abc\n", p).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("/etc/x.htpasswd:1: user \"bob\": only bcrypt"));
        let e = parse_htpasswd("a:$2y$04$x\na:$2y$04$y\n", p).unwrap_err();
        assert!(e.to_string().contains(":2: user \"a\" appears twice"));
    }

    #[test]
    fn read_and_write_users() {
        let h = |p| bcrypt::hash(p, 4).unwrap();
        let users = Users::new(
            HashMap::from([("reader".to_string(), h("r-pass"))]),
            HashMap::from([("writer".to_string(), h("w-pass"))]),
        );
        let r = basic("reader", "r-pass");
        let w = basic("writer", "w-pass");
        assert_eq!(users.check(Some(&r), Access::Read), Decision::Allow);
        assert!(matches!(
            users.check(Some(&r), Access::Write),
            Decision::Deny(_)
        ));
        assert_eq!(users.check(Some(&w), Access::Write), Decision::Allow);
        assert_eq!(users.check(Some(&w), Access::Read), Decision::Allow);
        // Cached answers stay right.
        assert!(matches!(
            users.check(Some(&r), Access::Write),
            Decision::Deny(_)
        ));
        assert!(matches!(
            users.check(Some(&basic("writer", "nope")), Access::Read),
            Decision::Challenge(_)
        ));
        assert!(matches!(
            users.check(None, Access::Read),
            Decision::Challenge(_)
        ));
        assert!(matches!(
            users.check(Some("Bearer abc"), Access::Read),
            Decision::Challenge(_)
        ));
        let open = Users::new(HashMap::new(), HashMap::new());
        assert_eq!(open.check(None, Access::Write), Decision::Allow);
    }
}

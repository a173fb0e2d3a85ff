//! Identities in certificates: a role and a name.
//!
//! Encoding: one URI SAN `spiffe://gantry/<role>/<name>`. Agents are named by their node
//! name (the name they register with), controllers by their member id, people by the name
//! the admin gave them. The server names clients check are fixed DNS SANs per service
//! ([`CONTROLLER_SERVER_NAME`], [`REGISTRY_SERVER_NAME`]), as Swarm's managers all carry
//! `swarm-manager`: members move between addresses, the CA vouches for the role.

use std::fmt;
use std::str::FromStr;

/// URI prefix of gantry identities.
pub const URI_PREFIX: &str = "spiffe://gantry/";
/// DNS SAN every controller certificate carries; clients dial controllers with it as
/// the TLS server name, whatever address they connect to.
pub const CONTROLLER_SERVER_NAME: &str = "controller.gantry";
/// DNS SAN of registry certificates issued by the cluster CA.
pub const REGISTRY_SERVER_NAME: &str = "registry.gantry";
/// Suffix of the DNS SAN of agent certificates: agent `n1` carries `n1.node.gantry`, the
/// server name clients check when they dial that node's API ([`node_server_name`]). Unlike
/// controllers, agents are not interchangeable: a client asking node n1 for its
/// allocations' logs must reach n1 and no other node.
pub const NODE_SERVER_SUFFIX: &str = ".node.gantry";

/// The TLS server name of the agent of node `name`.
pub fn node_server_name(name: &str) -> String {
    format!("{name}{NODE_SERVER_SUFFIX}")
}

/// Longest identity name.
pub const MAX_NAME_LEN: usize = 63;

/// What a credential may do (enforced by the servers; see docs/architecture.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Services, migrate, drain; not membership or tokens.
    Operator,
    /// Read only.
    Viewer,
    /// One node: its registration, heartbeats, its allocations' status; reads its
    /// desired allocations.
    Agent,
    /// A controller member (Raft peers, forwarding between members).
    Controller,
    /// A registry's server certificate (serves images; calls nothing).
    Registry,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Operator,
        Role::Viewer,
        Role::Agent,
        Role::Controller,
        Role::Registry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
            Role::Controller => "controller",
            Role::Registry => "registry",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::Role(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("unknown role {0:?} (admin, operator, viewer, agent, controller, registry)")]
    Role(String),
    #[error("bad identity name {name:?}: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("bad identity URI {0:?} (want spiffe://gantry/<role>/<name>)")]
    Uri(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("the certificate carries no gantry identity (no spiffe://gantry/ URI SAN)")]
    Missing,
    #[error("the certificate carries {0} gantry identities; exactly one is allowed")]
    Several(usize),
}

/// A role and a name.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

/// Names: 1–63 characters of `[a-z0-9._-]`, starting with a letter or digit (node names,
/// member ids and user names all fit; nothing that needs escaping in a URI or a path).
pub fn check_name(name: &str) -> Result<(), IdentityError> {
    let bad = |reason| {
        Err(IdentityError::Name {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return bad("only a-z, 0-9, '.', '_' and '-' are allowed");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or a digit");
    }
    Ok(())
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Result<Identity, IdentityError> {
        let name = name.into();
        check_name(&name)?;
        Ok(Identity { role, name })
    }

    /// `spiffe://gantry/<role>/<name>`.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role, self.name)
    }

    pub fn from_uri(uri: &str) -> Result<Identity, IdentityError> {
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| IdentityError::Uri(uri.to_string()))?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Uri(uri.to_string()))?;
        Identity::new(role.parse()?, name)
    }

    /// The identity in a DER certificate (a peer's, already verified against the CA by
    /// the TLS layer): exactly one gantry URI SAN.
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with(URI_PREFIX) => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::Missing),
            [u] => Identity::from_uri(u),
            many => Err(IdentityError::Several(many.len())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_refusals() {
        let id = Identity::new(Role::Agent, "qa-1.onprem").unwrap();
        assert_eq!(id.uri(), "spiffe://gantry/agent/qa-1.onprem");
        assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
        for bad in [
            "spiffe://gantry/agent",
            "spiffe://other/agent/x",
            "spiffe://gantry/root/x",
            "spiffe://gantry/agent/",
            "spiffe://gantry/agent/a/b",
            "spiffe://gantry/agent/UPPER",
            "spiffe://gantry/agent/-x",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(64);
        assert!(matches!(
            Identity::new(Role::Viewer, long),
            Err(IdentityError::Name {
                reason: "longer than 63 characters",
                ..
            })
        ));
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            "unknown role \"root\" (admin, operator, viewer, agent, controller, registry)"
        );
    }
}

//! The network module's one error type: every variant names the link, address, rule,
//! file or field it failed on.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while parsing network flags or wiring a container up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A `-p` spec that does not parse; `reason` names the bad part.
    #[error("invalid port spec '{spec}': {reason}")]
    PortSpec { spec: String, reason: String },

    /// A `--network` value other than bridge, host or none.
    #[error("unknown network mode '{0}': expected bridge, host or none")]
    UnknownMode(String),

    /// A bridge configuration field that is unusable.
    #[error("invalid network config: {field}: {reason}")]
    Config { field: &'static str, reason: String },

    /// Every address of the subnet is leased.
    #[error("no free address left in {subnet} (bridge {bridge})")]
    SubnetExhausted { subnet: String, bridge: String },

    /// A host port that another container already publishes.
    #[error("host port {port} is already published by container {owner}")]
    PortInUse { port: String, owner: String },

    /// The container already has a lease on this bridge.
    #[error("container {0} is already attached to the network")]
    AlreadyAttached(String),

    /// A netlink request failed; `op` says which link/address/route.
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },

    /// The container's network namespace could not be opened or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An iptables command failed; `what` names the table and the rules.
    #[error("iptables: {what}: {detail}")]
    Firewall { what: String, detail: String },

    /// A file of the network state (leases, sysctl) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The service-discovery DNS server could not listen.
    #[error("dns server on {addr}: {source}")]
    Dns {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },

    /// The lease file exists but is not valid.
    #[error("lease file {path} is corrupt: {source}")]
    LeaseFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl NetworkError {
    pub(crate) fn port(spec: &str, reason: impl Into<String>) -> Self {
        NetworkError::PortSpec {
            spec: spec.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetworkError::Netlink {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        NetworkError::Io {
            path: path.into(),
            source,
        }
    }

    /// The errno behind a netlink failure, if this is one.
    pub fn netlink_errno(&self) -> Option<i32> {
        match self {
            NetworkError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.raw_code().abs()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetworkError>;

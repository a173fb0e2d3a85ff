//! [`ApiError`]: every way an API call fails, and its mapping to `tonic::Status`.

use super::LEADER_METADATA;
use std::time::Duration;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("this member is not the leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    #[error("forwarding to the leader at {addr}: {status}")]
    Forward {
        addr: String,
        #[source]
        status: Status,
    },
    #[error("{what} not done within {after:?} (no quorum?): it may or may not take effect later")]
    Timeout { what: &'static str, after: Duration },
    #[error("{field}: {reason}")]
    BadRequest { field: &'static str, reason: String },
    /// A request field over its size limit (RESOURCE_EXHAUSTED, as for a message over the
    /// transport's limit).
    #[error("{field}: {size} bytes, the limit is {limit}")]
    TooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("membership: {0}")]
    Membership(String),
    /// Another membership change is still in progress (e.g. two members joining at once):
    /// UNAVAILABLE, so clients retry.
    #[error("membership: {0} (retry when it is done)")]
    MembershipBusy(String),
    #[error("member {0} is already a voter")]
    AlreadyMember(u64),
    #[error("member {0} not found")]
    UnknownMember(u64),
    #[error("raft: {0}")]
    Raft(String),
    #[error("transfer of leadership to member {target}: {reason}")]
    Transfer { target: u64, reason: String },
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = gantry_proto::limits::status_message(e.to_string());
        match e {
            ApiError::NotLeader { leader } => {
                let mut s = Status::unavailable(msg);
                if let Some(addr) = leader.and_then(|a| a.parse().ok()) {
                    s.metadata_mut().insert(LEADER_METADATA, addr);
                }
                s
            }
            ApiError::Forward { status, .. } => {
                // Keep the leader's answer (its code and metadata) but say where it came from.
                let mut out = Status::new(status.code(), msg);
                *out.metadata_mut() = status.metadata().clone();
                out
            }
            ApiError::Timeout { .. } => Status::deadline_exceeded(msg),
            ApiError::BadRequest { .. } => Status::invalid_argument(msg),
            ApiError::TooLarge { .. } => Status::resource_exhausted(msg),
            ApiError::Membership(_) => Status::failed_precondition(msg),
            ApiError::MembershipBusy(_) => Status::unavailable(msg),
            ApiError::AlreadyMember(_) => Status::already_exists(msg),
            ApiError::UnknownMember(_) => Status::not_found(msg),
            ApiError::Raft(_) => Status::new(Code::Unavailable, msg),
            ApiError::Transfer { .. } => Status::aborted(msg),
        }
    }
}

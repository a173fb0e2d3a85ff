//! Who may call what (issue 10). Pure: a [`Caller`] and an [`Rpc`] (and for writes the
//! [`Command`] and the state it would apply to) in, allowed or a `Status` out.
//!
//! | role | may |
//! |---|---|
//! | admin | everything except the Raft peer RPCs |
//! | controller | everything (members are peers and forward each other's calls) |
//! | operator | reads; writes of services (`UpsertService`, `RemoveService`) and node status and labels (drain, activate, migrate's constraints); not membership, snapshots, tokens |
//! | viewer | reads (Status, Read, Watch, Unplaced); no write |
//! | agent | `RegisterNode` under its own name; `Heartbeat`, `ReportAllocStatus`, `SetAllocAddresses` for its own node; Read and Watch (it builds DNS and endpoints from the whole state) |
//! | registry | Status only |
//!
//! Every verified caller may `Renew` its own certificate; anybody may fetch the CA
//! certificate and `Join` (the token decides). Token objects are shown to admins and
//! controllers only (`strip_tokens`). On a cluster run with `--insecure` there is no
//! identity and no check ([`Caller::Insecure`]).

use crate::state::{Command, State};
use gantry_security::tls::PeerInfo;
use gantry_security::{Identity, Role};
use tonic::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The cluster runs without TLS: nobody is checked.
    Insecure,
    /// TLS without a client certificate.
    Anonymous,
    Verified(Identity),
}

impl Caller {
    /// The caller of `req` on a member that runs TLS (`secure`) or not.
    pub fn of<T>(req: &tonic::Request<T>, secure: bool) -> Caller {
        if !secure {
            return Caller::Insecure;
        }
        match req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone())
        {
            Some(id) => Caller::Verified(id),
            None => Caller::Anonymous,
        }
    }

    /// Is the caller an agent (whose writes and heartbeats are checked against the state)?
    pub fn is_agent(&self) -> bool {
        matches!(self, Caller::Verified(id) if id.role == Role::Agent)
    }

    /// May this caller see join tokens (and everything else)?
    pub fn sees_everything(&self) -> bool {
        match self {
            Caller::Insecure => true,
            Caller::Anonymous => false,
            Caller::Verified(id) => matches!(id.role, Role::Admin | Role::Controller),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Status,
    Write,
    Read,
    ReadTokens,
    Watch,
    AddMember,
    RemoveMember,
    SnapshotSave,
    TransferLeader,
    ElectionControl,
    Heartbeat,
    Unplaced,
    CaCertificate,
    Join,
    Renew,
    /// AppendEntries, Vote, InstallSnapshot.
    Raft,
}

fn denied(id: &Identity, what: &str) -> Status {
    Status::permission_denied(format!(
        "{id} may not call {what} (role {} allows: {})",
        id.role,
        allowed(id.role)
    ))
}

fn allowed(role: Role) -> &'static str {
    match role {
        Role::Admin => "everything",
        Role::Controller => "everything",
        Role::Operator => "reads, services, node drain/activate/labels",
        Role::Viewer => "reads",
        Role::Agent => "its own node's registration, heartbeats and allocation reports; reads",
        Role::Registry => "Status",
    }
}

/// May `caller` call `rpc` at all? (Writes are further checked per command.)
pub fn check_rpc(caller: &Caller, rpc: Rpc) -> Result<(), Status> {
    use Rpc::*;
    let id = match caller {
        Caller::Insecure => return Ok(()),
        _ if matches!(rpc, CaCertificate | Join) => return Ok(()),
        Caller::Anonymous => {
            return Err(tonic::Status::unauthenticated(format!(
                "{rpc:?} needs a client certificate signed by the cluster CA \
                 (a context file, or `gantry credential request` with a join token)"
            )))
        }
        Caller::Verified(id) => id,
    };
    let ok = match id.role {
        Role::Controller => true,
        Role::Admin => rpc != Raft,
        Role::Operator | Role::Viewer => {
            matches!(rpc, Status | Read | Watch | Unplaced | Renew | Write)
        }
        Role::Agent => matches!(rpc, Status | Read | Watch | Heartbeat | Renew | Write),
        Role::Registry => matches!(rpc, Status | Renew),
    };
    if ok {
        Ok(())
    } else {
        Err(denied(id, &format!("{rpc:?}")))
    }
}

/// May `caller` commit `cmd` (against the state it would apply to)?
pub fn check_command(caller: &Caller, cmd: &Command, state: &State) -> Result<(), Status> {
    let id = match caller {
        Caller::Insecure => return Ok(()),
        Caller::Anonymous => return check_rpc(caller, Rpc::Write),
        Caller::Verified(id) => id,
    };
    if let Command::Batch { commands } = cmd {
        return commands
            .iter()
            .try_for_each(|c| check_command(caller, c, state));
    }
    let own_node = |node: u64| state.node(node).is_some_and(|n| n.name == id.name);
    let ok = match id.role {
        Role::Admin | Role::Controller => true,
        Role::Operator => matches!(
            cmd,
            Command::UpsertService { .. }
                | Command::RemoveService { .. }
                | Command::SetNodeStatus { .. }
                | Command::SetNodeLabels { .. }
        ),
        Role::Agent => match cmd {
            Command::RegisterNode { name, .. } => *name == id.name,
            Command::ReportAllocStatus { node, .. } | Command::SetAllocAddresses { node, .. } => {
                own_node(*node)
            }
            _ => false,
        },
        Role::Viewer | Role::Registry => false,
    };
    if ok {
        return Ok(());
    }
    let what = match cmd {
        Command::RegisterNode { name, .. } => format!("RegisterNode for node {name:?}"),
        Command::ReportAllocStatus { node, .. } | Command::SetAllocAddresses { node, .. } => {
            let name = state
                .node(*node)
                .map_or("unknown".to_string(), |n| n.name.clone());
            format!("{} for node {node} ({name})", cmd.verb())
        }
        _ => cmd.verb().to_string(),
    };
    Err(denied(id, &what))
}

/// May `caller` send heartbeats for `node`?
pub fn check_heartbeat(caller: &Caller, node: u64, state: &State) -> Result<(), Status> {
    check_rpc(caller, Rpc::Heartbeat)?;
    match caller {
        Caller::Verified(id) if id.role == Role::Agent => {
            if state.node(node).is_some_and(|n| n.name == id.name) {
                Ok(())
            } else {
                Err(denied(id, &format!("Heartbeat for node {node}")))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Resources, ServiceSpec};
    use std::collections::BTreeMap;

    fn v(role: Role, name: &str) -> Caller {
        Caller::Verified(Identity::new(role, name).unwrap())
    }

    fn register(name: &str) -> Command {
        Command::RegisterNode {
            name: name.into(),
            address: "10.0.0.1".into(),
            labels: BTreeMap::new(),
            capacity: Resources::default(),
            allocatable: Resources::default(),
            api: None,
        }
    }

    #[test]
    fn roles_and_own_node() {
        let mut state = State::default();
        state.apply(1, &register("n1")).0.unwrap();
        state.apply(2, &register("n2")).0.unwrap();
        let n1 = state.node_by_name("n1").unwrap().id;
        let n2 = state.node_by_name("n2").unwrap().id;
        let agent = v(Role::Agent, "n1");
        let report = |node| Command::ReportAllocStatus {
            node,
            batch: vec![],
        };
        assert!(check_command(&agent, &register("n1"), &state).is_ok());
        assert!(check_command(&agent, &report(n1), &state).is_ok());
        let e = check_command(&agent, &report(n2), &state).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("ReportAllocStatus for node"), "{e}");
        assert!(check_command(&agent, &register("n2"), &state).is_err());
        let upsert = Command::UpsertService {
            name: "web".into(),
            spec: ServiceSpec::default(),
            expected_index: None,
        };
        assert!(check_command(&agent, &upsert, &state).is_err());
        // a batch is as strong as its weakest command
        let batch = Command::Batch {
            commands: vec![report(n1), report(n2)],
        };
        assert!(check_command(&agent, &batch, &state).is_err());
        assert!(check_heartbeat(&agent, n1, &state).is_ok());
        assert!(check_heartbeat(&agent, n2, &state).is_err());
        assert!(check_rpc(&agent, Rpc::ReadTokens).is_err());
        assert!(check_rpc(&agent, Rpc::Raft).is_err());

        let op = v(Role::Operator, "ops");
        assert!(check_command(&op, &upsert, &state).is_ok());
        assert!(check_command(&op, &register("n3"), &state).is_err());
        let tok = Command::RevokeToken { id: "x".into() };
        assert!(check_command(&op, &tok, &state).is_err());
        assert!(check_rpc(&op, Rpc::AddMember).is_err());

        let viewer = v(Role::Viewer, "eyes");
        assert!(check_rpc(&viewer, Rpc::Read).is_ok());
        assert!(check_command(&viewer, &upsert, &state).is_err());

        let admin = v(Role::Admin, "root");
        assert!(check_command(&admin, &tok, &state).is_ok());
        assert!(check_rpc(&admin, Rpc::Raft).is_err());
        assert!(check_rpc(&v(Role::Controller, "2"), Rpc::Raft).is_ok());

        assert_eq!(
            check_rpc(&Caller::Anonymous, Rpc::Read).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(check_rpc(&Caller::Anonymous, Rpc::Join).is_ok());
        assert!(check_command(&Caller::Insecure, &tok, &state).is_ok());
    }
}

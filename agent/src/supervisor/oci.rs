//! A runc-compatible OCI runtime binary (`gantry runtime`, runc, crun), driven through its
//! command line the way containerd's shim drives runc: `create`, `start`, `delete`, `exec`.
//! The shim runs `create`/`start`, so the container's init ends up the shim's child (the
//! shim is a child subreaper) and never the agent's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::SupervisorError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OciRuntime {
    /// The program (absolute path or a name found in PATH).
    pub program: PathBuf,
    /// Arguments before the global flags (e.g. `["runtime"]` for `gantry runtime`).
    pub args: Vec<String>,
    /// The runtime's state root (`--root`).
    pub root: PathBuf,
}

impl OciRuntime {
    /// A command for one verb, with the global flags set.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).arg("--root").arg(&self.root);
        c
    }

    /// `create --bundle B --pid-file P ID`; stdio is the container's.
    pub fn create_command(&self, id: &str, bundle: &Path, pid_file: &Path) -> Command {
        let mut c = self.command();
        c.arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        c
    }

    /// `start ID`.
    pub fn start(&self, id: &str) -> Result<(), SupervisorError> {
        let mut c = self.command();
        c.arg("start").arg(id);
        run_quiet(c, "start", id)
    }

    /// `delete [--force] ID`.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), SupervisorError> {
        let mut c = self.command();
        c.arg("delete");
        if force {
            c.arg("--force");
        }
        c.arg(id);
        run_quiet(c, "delete", id)
    }

    /// `exec [--env K=V]… [--cwd W] [--user U] ID CMD…`; the caller sets stdio.
    pub fn exec_command(
        &self,
        id: &str,
        cmd: &[String],
        env: &[String],
        cwd: Option<&str>,
        user: Option<&str>,
    ) -> Command {
        let mut c = self.command();
        c.arg("exec");
        for e in env {
            c.arg("--env").arg(e);
        }
        if let Some(w) = cwd {
            c.arg("--cwd").arg(w);
        }
        if let Some(u) = user {
            c.arg("--user").arg(u);
        }
        c.arg(id).args(cmd);
        c
    }
}

/// Runs a runtime verb with stdio detached, turning a failure into its stderr text.
pub fn run_quiet(mut c: Command, step: &'static str, id: &str) -> Result<(), SupervisorError> {
    let out = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| SupervisorError::Runtime {
            step,
            id: id.to_string(),
            message: format!("cannot run {:?}: {e}", c.get_program()),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SupervisorError::Runtime {
            step,
            id: id.to_string(),
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

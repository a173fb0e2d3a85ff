//! The supervisor: `gantry shim`, one small single-threaded process per container
//! (containerd's shim model). It is the container's parent, so the agent can crash or be
//! restarted without touching the containers.
//!
//! Vocabulary:
//! - **shim**: the supervising process. The agent spawns it; it forks once and `setsid`s so
//!   it belongs to no agent, becomes a child subreaper, has the OCI runtime create and start
//!   the container, then runs a plain `poll` loop (no async runtime; run from the small
//!   `gantry-runtime` binary, [`programs`], its private memory was 0.5 MiB in
//!   docs/benchmarks.md) that copies stdout/stderr into the log and reaps the container;
//! - **run dir**: the container's directory under the agent's run root (tmpfs), the shim's
//!   whole interface: `shim.json` (its [`ShimConfig`]), `shim.pid` and `init.pid`
//!   ([`ProcessId`]: pid + start time, so a recycled pid is never mistaken for ours),
//!   `shim.sock` (connect to be told `exit <code>` when the container exits), `stdin`
//!   (a fifo, for interactive containers) and `exit.json` (the [`ExitRecord`]);
//! - **reattach**: a restarted agent reads those files to find live shims and the exit
//!   records of containers that ended meanwhile ([`probe`]).

pub mod logfile;
pub mod oci;
pub mod programs;
pub mod shim;
pub mod timefmt;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the supervisor, each naming the file or step it failed on.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: invalid content: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("OCI runtime {step} failed for {id}: {message}")]
    Runtime {
        step: &'static str,
        id: String,
        message: String,
    },
    #[error("shim system call {call}: {source}")]
    Sys {
        call: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("shim for {id} did not start: {message}")]
    ShimStart { id: String, message: String },
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SupervisorError {
    let path = path.to_path_buf();
    move |source| SupervisorError::Io { what, path, source }
}

/// What one shim supervises; written by the agent as `shim.json` in the run dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimConfig {
    /// The container id (also its id in the OCI runtime).
    pub id: String,
    /// The bundle: `config.json` and the mounted `rootfs/`.
    pub bundle: PathBuf,
    /// The run dir (see the module doc).
    pub run_dir: PathBuf,
    /// The runc-compatible runtime: program, arguments before the verb, state root.
    pub runtime: oci::OciRuntime,
    /// The container log and its rotation.
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// Mount point to unmount once the container is gone (the overlay root).
    pub unmount_on_exit: Option<PathBuf>,
    /// Keep a stdin pipe fed from the `stdin` fifo.
    pub interactive: bool,
}

/// Layout of a run dir.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("shim.json")
    }
    pub fn shim_pid(&self) -> PathBuf {
        self.0.join("shim.pid")
    }
    pub fn init_pid(&self) -> PathBuf {
        self.0.join("init.pid")
    }
    pub fn socket(&self) -> PathBuf {
        self.0.join("shim.sock")
    }
    pub fn stdin_fifo(&self) -> PathBuf {
        self.0.join("stdin")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.0.join("exit.json")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.0.join("shim.log")
    }
    pub fn runtime_pid_file(&self) -> PathBuf {
        self.0.join("runtime.pid")
    }
}

/// How the container ended, as recorded by its shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit status, or 128 + signal when it was killed by one.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_unix_nanos: i64,
}

/// A process identified by pid and start time (clock ticks since boot, `/proc/PID/stat`
/// field 22), so that a pid the kernel reused is not taken for the original.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    /// The live process with this pid, if any.
    pub fn of(pid: i32) -> Option<ProcessId> {
        Some(ProcessId {
            pid,
            start_time: proc_start_time(pid)?,
        })
    }

    /// Whether the same process still exists (zombies count as gone).
    pub fn is_alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(s) => match parse_stat(&s) {
                Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
                None => false,
            },
            Err(_) => false,
        }
    }

    pub fn write(&self, path: &Path) -> Result<(), SupervisorError> {
        write_atomic(
            path,
            format!("{} {}\n", self.pid, self.start_time).as_bytes(),
        )
    }

    pub fn read(path: &Path) -> Result<Option<ProcessId>, SupervisorError> {
        let s = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", path)(e)),
        };
        let mut it = s.split_whitespace();
        let parsed = (|| {
            Some(ProcessId {
                pid: it.next()?.parse().ok()?,
                start_time: it.next()?.parse().ok()?,
            })
        })();
        parsed.map(Some).ok_or_else(|| SupervisorError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("expected \"PID STARTTIME\", got {s:?}"),
        })
    }
}

/// State letter and start time from a `/proc/PID/stat` line (the command may hold spaces
/// and parentheses: fields are counted after the last `)`).
fn parse_stat(s: &str) -> Option<(char, u64)> {
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// Start time of a live process, `None` when there is none.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s).map(|(_, t)| t)
}

/// Writes a file atomically (temp file + rename in the same directory).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SupervisorError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename into", path))
}

/// Reads the exit record, if the shim wrote one.
pub fn read_exit(run: &RunDir) -> Result<Option<ExitRecord>, SupervisorError> {
    let path = run.exit_file();
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| SupervisorError::Corrupt {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

/// Connects to a shim's socket however long the run dir's path is (unix socket paths are
/// limited to 108 bytes): through `/proc/self/fd/N/` of the opened run dir.
pub fn socket_connect_path(run: &RunDir) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(&run.0)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/shim.sock", dir.as_raw_fd()));
    Ok((dir, path))
}

/// What a (re)starting agent finds in a run dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimStatus {
    /// The shim is alive; the container's init is this process.
    Running { shim: ProcessId, init: ProcessId },
    /// The container exited and its shim recorded how.
    Exited(ExitRecord),
    /// The shim is gone without a record (killed, or the machine rebooted).
    Lost,
}

/// Finds out whether a container's shim is still alive (containerd's `shim_load`).
pub fn probe(run: &RunDir) -> Result<ShimStatus, SupervisorError> {
    if let Some(rec) = read_exit(run)? {
        return Ok(ShimStatus::Exited(rec));
    }
    let shim = ProcessId::read(&run.shim_pid())?;
    let init = ProcessId::read(&run.init_pid())?;
    match (shim, init) {
        (Some(shim), Some(init)) if shim.is_alive() => Ok(ShimStatus::Running { shim, init }),
        // It may have written the record between our two reads.
        _ => Ok(read_exit(run)?.map_or(ShimStatus::Lost, ShimStatus::Exited)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_command_names() {
        let line = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn process_id_of_self_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn probe_reads_exit_records_and_reports_lost_shims() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir(dir.path().to_path_buf());
        assert_eq!(probe(&run).unwrap(), ShimStatus::Lost);
        // A pid file naming a process that is gone (start time 1 never matches us).
        ProcessId {
            pid: std::process::id() as i32,
            start_time: 1,
        }
        .write(&run.shim_pid())
        .unwrap();
        ProcessId::of(std::process::id() as i32)
            .unwrap()
            .write(&run.init_pid())
            .unwrap();
        assert_eq!(probe(&run).unwrap(), ShimStatus::Lost);
        // A live one.
        ProcessId::of(std::process::id() as i32)
            .unwrap()
            .write(&run.shim_pid())
            .unwrap();
        assert!(matches!(probe(&run).unwrap(), ShimStatus::Running { .. }));
        // The record wins.
        let rec = ExitRecord {
            exit_code: 3,
            signal: None,
            finished_unix_nanos: 5,
        };
        write_atomic(&run.exit_file(), &serde_json::to_vec(&rec).unwrap()).unwrap();
        assert_eq!(probe(&run).unwrap(), ShimStatus::Exited(rec));
        std::fs::write(run.shim_pid(), "x").unwrap();
        std::fs::remove_file(run.exit_file()).unwrap();
        let err = probe(&run).unwrap_err().to_string();
        assert!(
            err.contains("shim.pid") && err.contains("PID STARTTIME"),
            "{err}"
        );
    }
}

//! Container lifecycle state on disk: one directory per container under the runtime root
//! (`<root>/<id>/state.json`, written atomically with temp + rename), and the status, which
//! is *derived* from the process — the recorded pid must be alive, not a zombie, and have the
//! same start time (field 22 of `/proc/PID/stat`) as when it was created, else the pid was
//! reused and the container is stopped. A created container still has its exec fifo.
//!
//! Vocabulary: **created** — set up, held at the barrier before exec; **running** — the
//! user's process runs; **stopped** — its init has exited (or never ran).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container id `{0}` is invalid: use letters, digits, '_', '-', '.', at most 128 characters, not starting with '.'")]
    InvalidId(String),
    #[error("container `{id}` already exists (state dir {dir})")]
    Exists { id: String, dir: PathBuf },
    #[error("container `{0}` does not exist")]
    NotFound(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt state: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    Stopped,
}

impl ContainerStatus {
    pub fn can_start(self) -> bool {
        self == Self::Created
    }
    pub fn can_kill(self) -> bool {
        matches!(self, Self::Created | Self::Running)
    }
    pub fn can_delete(self) -> bool {
        self == Self::Stopped
    }
    pub fn can_exec(self) -> bool {
        self == Self::Running
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Created => "created",
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }
}

/// What is saved in `state.json`: the OCI state fields plus what the runtime needs later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: u64,
    pub bundle: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    pub cgroups_path: String,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The OCI `state` output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState<'a> {
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: ContainerStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: &'a Path,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: &'a std::collections::BTreeMap<String, String>,
    pub created: &'a str,
}

/// Checks a container id (it becomes a directory name and part of cgroup paths).
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

/// The runtime root: one directory per container.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

impl StateStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
    /// Claims `id`: `mkdir` is the atomic check for duplicates.
    pub fn claim(&self, id: &str) -> Result<PathBuf, StateError> {
        check_id(id)?;
        std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StateError::Exists {
                id: id.to_string(),
                dir,
            }),
            Err(e) => Err(io("creating", &dir)(e)),
        }
    }
    /// Writes `state.json` atomically (temp file in the same dir, then rename).
    pub fn save(&self, s: &SavedState) -> Result<(), StateError> {
        let dir = self.dir(&s.id);
        let tmp = dir.join(".state.json.tmp");
        let data = serde_json::to_vec(s).expect("state serializes");
        std::fs::write(&tmp, data).map_err(io("writing", &tmp))?;
        let dst = dir.join(STATE_FILE);
        std::fs::rename(&tmp, &dst).map_err(io("renaming to", &dst))
    }
    pub fn load(&self, id: &str) -> Result<SavedState, StateError> {
        check_id(id)?;
        let path = self.dir(id).join(STATE_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt { path, source })
    }
    /// Ids of every container dir (sorted).
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &self.root)(e)),
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &dir)(e)),
            _ => Ok(()),
        }
    }
    /// The status, derived from the process and the exec fifo.
    pub fn status(&self, s: &SavedState) -> ContainerStatus {
        let fifo = self.dir(&s.id).join(EXEC_FIFO);
        derive_status(proc_start_time(s.pid), s.start_time, fifo.exists())
    }
}

/// Pure status rule: the process must be alive (not a zombie) with the recorded start time.
pub fn derive_status(
    observed: Option<ProcInfo>,
    recorded_start: u64,
    fifo_present: bool,
) -> ContainerStatus {
    match observed {
        Some(p) if p.start_time == recorded_start && p.state != 'Z' && p.state != 'X' => {
            if fifo_present {
                ContainerStatus::Created
            } else {
                ContainerStatus::Running
            }
        }
        _ => ContainerStatus::Stopped,
    }
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub state: char,
    pub start_time: u64,
}

/// Parses `/proc/PID/stat` (the comm field may contain spaces and parentheses).
pub fn parse_stat(stat: &str) -> Option<ProcInfo> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // after comm: field 3 (state) is fields[0], field 22 (starttime) is fields[19]
    Some(ProcInfo {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn proc_start_time(pid: i32) -> Option<ProcInfo> {
    if pid <= 0 {
        return None;
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Now as RFC 3339 UTC (no date crate needed for one timestamp).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rules() {
        use ContainerStatus::*;
        let live = |t| {
            Some(ProcInfo {
                state: 'S',
                start_time: t,
            })
        };
        assert_eq!(derive_status(live(5), 5, true), Created);
        assert_eq!(derive_status(live(5), 5, false), Running);
        assert_eq!(derive_status(live(6), 5, false), Stopped, "pid reused");
        assert_eq!(derive_status(None, 5, false), Stopped);
        let zombie = Some(ProcInfo {
            state: 'Z',
            start_time: 5,
        });
        assert_eq!(derive_status(zombie, 5, false), Stopped);
        assert!(Created.can_start() && !Running.can_start());
        assert!(Created.can_kill() && Running.can_kill() && !Stopped.can_kill());
        assert!(Stopped.can_delete() && !Running.can_delete() && !Created.can_delete());
    }

    #[test]
    fn stat_parsing_survives_odd_comm() {
        let s = "123 (a) b (c) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(
            parse_stat(s),
            Some(ProcInfo {
                state: 'S',
                start_time: 98765
            })
        );
        let me = proc_start_time(std::process::id() as i32).unwrap();
        assert_ne!(me.state, 'Z');
        assert!(me.start_time > 0);
    }

    #[test]
    fn claim_save_load_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let st = StateStore::new(d.path().join("root"));
        st.claim("c1").unwrap();
        assert!(matches!(st.claim("c1"), Err(StateError::Exists { .. })));
        assert!(matches!(st.claim("../x"), Err(StateError::InvalidId(_))));
        assert!(matches!(st.load("c1"), Err(StateError::NotFound(_))));
        let s = SavedState {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            pid: std::process::id() as i32,
            start_time: proc_start_time(std::process::id() as i32)
                .unwrap()
                .start_time,
            bundle: "/b".into(),
            created: now_rfc3339(),
            cgroups_path: "gantry/c1".into(),
            annotations: Default::default(),
        };
        st.save(&s).unwrap();
        assert_eq!(st.load("c1").unwrap(), s);
        assert_eq!(st.status(&s), ContainerStatus::Running);
        assert_eq!(st.list().unwrap(), vec!["c1".to_string()]);
        st.remove("c1").unwrap();
        assert!(st.list().unwrap().is_empty());
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T");
    }
}

//! The container record kept in the metadata store, its lifecycle state and the restart
//! policy decision (pure: state in, decision out).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{MountSpec, ProcessConfig, Resources};
use super::rootfs::RootMount;
use super::EngineError;
use crate::supervisor::ProcessId;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, never started.
    Created,
    /// Its shim reported it started and it has not exited since.
    Running,
    /// Exited, waiting for the restart policy's backoff.
    Restarting,
    /// Exited (or killed); its filesystem is kept until `rm`.
    Exited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
        }
    }
    pub fn can_start(self) -> bool {
        matches!(self, Status::Created | Status::Exited | Status::Restarting)
    }
    pub fn is_running(self) -> bool {
        self == Status::Running
    }
}

/// `--restart`: what the agent does when the container exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "name")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    UnlessStopped,
    /// Restart on a non-zero exit, at most `max_retries` times (0 = no limit).
    OnFailure {
        max_retries: u32,
    },
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<RestartPolicy, EngineError> {
        let bad = |reason: &str| EngineError::InvalidArgument {
            field: "--restart",
            value: s.to_string(),
            reason: reason.to_string(),
        };
        match s {
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: 0 }),
            _ => match s.strip_prefix("on-failure:") {
                Some(n) => n
                    .parse()
                    .map(|max_retries| RestartPolicy::OnFailure { max_retries })
                    .map_err(|_| bad("the retry count after on-failure: must be a number")),
                None => Err(bad("expected no, always, unless-stopped or on-failure[:N]")),
            },
        }
    }
}

/// Everything fixed at create time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerConfig {
    pub process: ProcessConfig,
    pub hostname: String,
    pub mounts: Vec<MountSpec>,
    pub network: String,
    pub publish: Vec<String>,
    pub resources: Resources,
    pub read_only: bool,
    pub interactive: bool,
    pub auto_remove: bool,
    pub restart: RestartPolicy,
    pub stop_signal: i32,
    pub labels: BTreeMap<String, String>,
}

/// What changes as the container runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RunState {
    pub status: Option<Status>,
    pub shim: Option<ProcessId>,
    pub init: Option<ProcessId>,
    pub started_nanos: i64,
    pub finished_nanos: i64,
    pub exit_code: i32,
    pub restart_count: u32,
    /// Stopped or killed by a user: restart policies leave it alone (docker's
    /// HasBeenManuallyStopped).
    pub manually_stopped: bool,
    /// The last start's or shim's error, if any.
    pub error: String,
}

/// A container as stored (one JSON value per id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The reference the user gave (or `rootfs:PATH`).
    pub image: String,
    /// Image id (config digest); empty for a rootfs container.
    pub image_id: String,
    /// The root filesystem's mount (an overlay: the image snapshot's, or a `--rootfs`
    /// directory under the container's own upper dir).
    pub rootfs: Vec<RootMount>,
    /// The image store snapshot holding the writable layer (key = container id), if any.
    pub snapshot: Option<String>,
    pub created_nanos: i64,
    pub config: ContainerConfig,
    pub state: RunState,
    /// What the bridge network gave it (from create until rm); `None` for host and none.
    #[serde(default)]
    pub network: Option<NetworkInfo>,
    /// Its cgroup, relative to each hierarchy's root (`/PARENT/ID`, from the agent's
    /// `--cgroup-parent` when it was created). Empty in records written before the parent
    /// was configurable: those are at the old fixed `/gantry/ID`.
    #[serde(default)]
    pub cgroups_path: String,
}

/// A bridge container's address and published ports, as attached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkInfo {
    pub ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: std::net::Ipv4Addr,
    /// Host end of its veth pair.
    pub host_veth: String,
    pub ports: Vec<crate::network::PortMapping>,
}

impl ContainerRecord {
    pub fn status(&self) -> Status {
        self.state.status.unwrap_or(Status::Created)
    }

    /// The container's cgroup path (see [`ContainerRecord::cgroups_path`]).
    pub fn cgroup_path(&self) -> String {
        if self.cgroups_path.is_empty() {
            super::spec::cgroup_path(super::DEFAULT_CGROUP_PARENT, &self.id)
        } else {
            self.cgroups_path.clone()
        }
    }
}

/// After an exit the container did not ask for (not a user's stop/kill), whether the
/// policy restarts it.
pub fn should_restart(policy: RestartPolicy, exit_code: i32, state: &RunState) -> bool {
    if state.manually_stopped {
        return false;
    }
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure { max_retries } => {
            exit_code != 0 && (max_retries == 0 || state.restart_count < max_retries)
        }
    }
}

/// Delay before restart number `restart_count + 1`: 100 ms doubling, at most 10 s; a run
/// that lasted 10 s or more resets it (docker's backoff).
pub fn restart_delay(restart_count: u32, ran_for: Duration) -> Duration {
    if ran_for >= Duration::from_secs(10) {
        return Duration::from_millis(100);
    }
    let ms = 100u64.saturating_mul(1u64 << restart_count.min(10));
    Duration::from_millis(ms.min(10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_parses_docker_spellings() {
        assert_eq!(RestartPolicy::parse("no").unwrap(), RestartPolicy::No);
        assert_eq!(
            RestartPolicy::parse("always").unwrap(),
            RestartPolicy::Always
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:3").unwrap(),
            RestartPolicy::OnFailure { max_retries: 3 }
        );
        let e = RestartPolicy::parse("sometimes").unwrap_err().to_string();
        assert!(e.contains("--restart") && e.contains("sometimes"), "{e}");
        assert!(RestartPolicy::parse("on-failure:x").is_err());
    }

    #[test]
    fn restart_decisions() {
        let mut st = RunState::default();
        assert!(!should_restart(RestartPolicy::No, 1, &st));
        assert!(should_restart(RestartPolicy::Always, 0, &st));
        assert!(should_restart(RestartPolicy::UnlessStopped, 0, &st));
        let of2 = RestartPolicy::OnFailure { max_retries: 2 };
        assert!(!should_restart(of2, 0, &st), "success is not a failure");
        assert!(should_restart(of2, 1, &st));
        st.restart_count = 2;
        assert!(!should_restart(of2, 1, &st), "retries exhausted");
        assert!(should_restart(
            RestartPolicy::OnFailure { max_retries: 0 },
            1,
            &st
        ));
        st.manually_stopped = true;
        assert!(!should_restart(RestartPolicy::Always, 137, &st));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let quick = Duration::from_millis(5);
        assert_eq!(restart_delay(0, quick), Duration::from_millis(100));
        assert_eq!(restart_delay(1, quick), Duration::from_millis(200));
        assert_eq!(restart_delay(3, quick), Duration::from_millis(800));
        assert_eq!(restart_delay(30, quick), Duration::from_secs(10));
        assert_eq!(
            restart_delay(30, Duration::from_secs(11)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn status_rules() {
        assert!(Status::Created.can_start());
        assert!(Status::Exited.can_start());
        assert!(!Status::Running.can_start());
        assert_eq!(Status::Restarting.as_str(), "restarting");
    }
}

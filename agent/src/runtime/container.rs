//! The lifecycle verbs (create, start, run, state, kill, delete, exec, list), each as
//! refresh → check → act → save on a container's state dir. This is the parent side of the
//! runtime; [`super::init`] is the child side.
//!
//! Process model (where the speed comes from): one single-threaded process, no async
//! runtime; signals the runtime waits for are blocked *before* `clone`, so an early exit of
//! the container is a pending SIGCHLD, never a lost one; one `clone` with the namespace
//! flags; the cgroup exists before the clone and the child is added to it before it execs;
//! `create` holds the child at the exec fifo until `start`, `run` skips that round trip.
//! stdio is inherited untouched.
//!
//! Any failure before the container is handed over runs [`CreateGuard`]'s cleanup: the
//! child is killed and reaped, the cgroup and the state dir removed.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{PosixRlimitType, Process, Spec};

use super::cgroups::CgroupManager;
use super::init::{self, ChildPipes, InitConfig, ProcessConfig};
use super::plan::{self, CgroupLayout, PlanInput};
use super::spec::{self, Bundle, SpecError};
use super::state::{self, ContainerStatus, SavedState, StateError, StateStore, EXEC_FIFO};
use super::syscall::Syscall;
use super::{capabilities, console, seccomp};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{file}: {source}")]
    Plan {
        file: PathBuf,
        #[source]
        source: plan::PlanError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("container `{id}`: cgroup {path}: {msg}")]
    Cgroup {
        id: String,
        path: String,
        msg: String,
    },
    #[error("{file}: linux.seccomp: {msg}")]
    Seccomp { file: PathBuf, msg: String },
    #[error("{file}: process.capabilities: {msg}")]
    Caps { file: PathBuf, msg: String },
    #[error("container `{id}`: init failed: {msg}")]
    InitFailed { id: String, msg: String },
    #[error("container `{id}` is {status}: cannot {verb}{hint}")]
    WrongStatus {
        id: String,
        status: &'static str,
        verb: &'static str,
        hint: &'static str,
    },
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown signal `{0}`")]
    BadSignal(String),
    #[error("--user `{0}`: expected UID or UID:GID, numeric")]
    BadUser(String),
    #[error("container `{id}`: {msg}")]
    Other { id: String, msg: String },
}

type Result<T> = std::result::Result<T, ContainerError>;

fn os(what: impl Into<String>) -> impl FnOnce(nix::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Os { what, source }
}

/// The signals `run` and `exec` wait for: SIGCHLD, and the ones they forward.
const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

fn wait_set() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        s.add(sig);
    }
    s
}

/// Parses a signal given as `KILL`, `SIGKILL`, `kill` or `9`.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| ContainerError::BadSignal(s.into()));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| ContainerError::BadSignal(s.into()))
}

/// How `create` hands the container over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Hold at the exec fifo until `start` (OCI `create`).
    Barrier,
    /// Exec as soon as set up (`run`).
    Immediate,
}

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub handover: Handover,
    pub fds: PassFds,
    /// runc's `--console-socket`: required with `process.terminal: true`, refused without.
    pub console_socket: Option<PathBuf>,
}

/// Descriptors the container's process inherits beyond stdio, as runc passes them: the
/// systemd socket-activation ones first (3 .. 3+listen), then `--preserve-fds` more. Every
/// other descriptor above 2 is closed at exec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassFds {
    pub listen: u32,
    pub preserve: u32,
}

impl PassFds {
    /// From `--preserve-fds` and the caller's `LISTEN_FDS`/`LISTEN_PID`; the listen fds
    /// count only when `LISTEN_PID` names this process (what `sd_listen_fds` checks).
    pub fn new(
        preserve: u32,
        listen_fds: Option<&str>,
        listen_pid: Option<&str>,
        own_pid: u32,
    ) -> Self {
        let ours = listen_pid.and_then(|p| p.trim().parse::<u32>().ok()) == Some(own_pid);
        let listen = match listen_fds {
            Some(n) if ours => n.trim().parse().unwrap_or(0),
            _ => 0,
        };
        PassFds { listen, preserve }
    }

    /// How many descriptors after stdio stay open.
    pub fn keep(&self) -> u32 {
        self.listen + self.preserve
    }

    /// The environment the process gets for socket activation (it is pid 1 or its own).
    pub fn env(&self, pid: &str) -> Vec<String> {
        if self.listen == 0 {
            return Vec::new();
        }
        vec![
            format!("LISTEN_FDS={}", self.listen),
            format!("LISTEN_PID={pid}"),
        ]
    }
}

/// Options of `exec`: either a full process.json, or args plus overrides of the container's
/// process.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub process: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `--user UID[:GID]`: replaces the process's uid (and gid when given).
    pub user: Option<(u32, Option<u32>)>,
    pub pid_file: Option<PathBuf>,
    pub fds: PassFds,
    /// `--tty`: the process gets a pty (as `process.terminal: true` in a process.json).
    pub tty: bool,
    /// Where the pty master goes (required with a terminal).
    pub console_socket: Option<PathBuf>,
    /// `--detach`: return once the process runs; the caller (a subreaper) reaps it.
    pub detach: bool,
}

/// Parses runc's `--user UID[:GID]` (numeric ids only).
pub fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let bad = || ContainerError::BadUser(s.to_string());
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u.parse().map_err(|_| bad())?;
    let gid = g.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

/// A container that `create` set up; `pid` is its init.
#[derive(Debug, Clone)]
pub struct Created {
    pub pid: Pid,
    pub state: SavedState,
}

/// The runtime over one state root; the syscall layer comes in through the constructor.
pub struct Runtime<'a> {
    store: StateStore,
    sys: &'a dyn Syscall,
    warn: Option<&'a dyn Fn(&str)>,
}

/// Undoes a half-made container unless disarmed.
struct CreateGuard<'a> {
    store: &'a StateStore,
    id: String,
    cgroup: Option<CgroupManager>,
    child: Option<Pid>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.child {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.destroy();
        }
        let _ = self.store.remove(&self.id);
    }
}

/// Where a container goes when its spec names no `cgroupsPath`: under the runtime's own
/// `gantry/` parent.
fn default_cgroups_path(id: &str) -> String {
    format!("gantry/{id}")
}

/// The OOM report of a stopped container, if the OOM killer ended any of its processes.
pub fn oom_report(id: &str, stats: &crate::runtime::cgroups::CgroupStats) -> Option<String> {
    let n = stats.oom_kills.filter(|n| *n > 0)?;
    let limit = match stats.memory_limit_bytes {
        Some(l) => format!("memory limit {l} bytes"),
        None => "no memory limit of its own".to_string(),
    };
    Some(format!(
        "container `{id}`: the OOM killer killed {n} process(es) ({limit})"
    ))
}

/// The container's cgroup path relative to each hierarchy root.
fn cgroups_path(b: &Bundle, id: &str) -> Result<String> {
    match b
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    {
        None => Ok(default_cgroups_path(id)),
        Some(p) => {
            let s = p.to_string_lossy();
            if s.contains(':') {
                return Err(SpecError::Invalid {
                    file: b.config.clone(),
                    field: "linux.cgroupsPath".into(),
                    msg: format!(
                        "`{s}` looks like a systemd slice path; only cgroupfs paths are supported"
                    ),
                }
                .into());
            }
            let rel = s.trim_start_matches('/').to_string();
            if rel.is_empty() || rel.split('/').any(|c| c == "..") {
                return Err(SpecError::Invalid {
                    file: b.config.clone(),
                    field: "linux.cgroupsPath".into(),
                    msg: format!("`{s}` is not a usable cgroup path"),
                }
                .into());
            }
            Ok(rel)
        }
    }
}

/// How the host mounts cgroups (read only when the spec mounts a cgroup filesystem).
pub fn detect_cgroup_layout() -> CgroupLayout {
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(fs) = nix::sys::statfs::statfs(root) {
        if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return CgroupLayout::V2;
        }
    }
    let mut hierarchies = Vec::new();
    let mut links = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_symlink() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                links.push((name, t.to_string_lossy().into_owned()));
            }
        } else if ft.is_dir() && name != "unified" {
            hierarchies.push(name);
        }
    }
    hierarchies.sort();
    links.sort();
    CgroupLayout::V1 {
        root: root.to_path_buf(),
        hierarchies,
        links,
    }
}

fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

fn cstring(file: &Path, field: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| {
        SpecError::Invalid {
            file: file.to_path_buf(),
            field: field.into(),
            msg: "contains a NUL byte".into(),
        }
        .into()
    })
}

/// Everything `execve` and the process set-up need, computed before `clone`. `root` is
/// where the container's `/` is seen from here (the rootfs, or `/proc/PID/root` for exec).
/// Also returns the warnings (spec entries left out, as runc leaves them out).
fn process_config(
    file: &Path,
    p: &Process,
    root: &Path,
    seccomp: Option<seccomp::Program>,
    fds: PassFds,
) -> Result<(ProcessConfig, Vec<String>)> {
    let args = p.args().clone().unwrap_or_default();
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(fds.env("1"));
    let path = spec::env_path(&env);
    let exe = spec::resolve_executable(root, p.cwd(), &args[0], &path).ok_or_else(|| {
        SpecError::ExecutableNotFound {
            file: file.to_path_buf(),
            arg0: args[0].clone(),
            rootfs: root.to_path_buf(),
            path: path.clone(),
        }
    })?;
    let mut warnings = Vec::new();
    if let Some(c) = p.capabilities() {
        let plan =
            capabilities::CapabilityPlan::from_spec(c).map_err(|e| ContainerError::Caps {
                file: file.to_path_buf(),
                msg: e.to_string(),
            })?;
        for cap in plan.dropped_ambient {
            warnings.push(format!(
                "{}: process.capabilities.ambient: {cap} is not in both the permitted and \
                 the inheritable set; left out",
                file.display()
            ));
        }
    }
    let user = p.user();
    let pc = ProcessConfig {
        exe: cstring(file, "process.args[0]", &exe.to_string_lossy())?,
        argv: args
            .iter()
            .map(|a| cstring(file, "process.args", a))
            .collect::<Result<_>>()?,
        envp: env
            .iter()
            .map(|e| cstring(file, "process.env", e))
            .collect::<Result<_>>()?,
        cwd: p.cwd().clone(),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask().unwrap_or(0o022),
        rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
            .collect(),
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        capabilities: p.capabilities().clone(),
        seccomp,
        sigmask: SigSet::empty(),
        keep_fds: fds.keep(),
    };
    Ok((pc, warnings))
}

fn compile_seccomp(file: &Path, spec: &Spec) -> Result<Option<seccomp::Program>> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        None => Ok(None),
        Some(s) => seccomp::compile(s)
            .map(Some)
            .map_err(|e| ContainerError::Seccomp {
                file: file.to_path_buf(),
                msg: e.to_string(),
            }),
    }
}

/// A fork-like `clone`: the child continues on a copy of this stack. Only for a
/// single-threaded caller (the `gantry runtime` process, a shim).
fn clone_process(flags: nix::sched::CloneFlags) -> Result<Option<Pid>> {
    let f = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: raw clone without CLONE_VM behaves like fork; the caller is single-threaded.
    let r = unsafe { libc::syscall(libc::SYS_clone, f, 0usize, 0usize, 0usize, 0usize) };
    match r {
        -1 => Err(ContainerError::Os {
            what: format!("clone({flags:?})"),
            source: nix::Error::last(),
        }),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

struct ParentPipes {
    sync_r: OwnedFd,
    go_w: OwnedFd,
}

fn pipes() -> Result<(ParentPipes, ChildPipes)> {
    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(os("pipe"))?;
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(os("pipe"))?;
    Ok((ParentPipes { sync_r, go_w }, ChildPipes { sync_w, go_r }))
}

/// What the child said on the sync pipe.
enum Report {
    /// `R`: held at the barrier.
    Ready,
    /// EOF: it exec'd.
    Execed,
}

fn read_report(id: &str, sync_r: OwnedFd, expect_ready: bool) -> Result<Report> {
    let mut f = std::fs::File::from(sync_r);
    let mut first = [0u8; 1];
    let n = f.read(&mut first).map_err(|e| ContainerError::Io {
        what: "reading from the container's init",
        path: PathBuf::from("sync pipe"),
        source: e,
    })?;
    match (n, first[0]) {
        (0, _) if expect_ready => Err(ContainerError::InitFailed {
            id: id.into(),
            msg: "init exited during set-up".into(),
        }),
        (0, _) => Ok(Report::Execed),
        (_, b'R') if expect_ready => Ok(Report::Ready),
        _ => {
            let mut rest = String::new();
            let _ = f.read_to_string(&mut rest);
            Err(ContainerError::InitFailed {
                id: id.into(),
                msg: rest,
            })
        }
    }
}

fn write_pid_file(path: &Path, pid: Pid) -> Result<()> {
    let tmp = path.with_extension("gantry-tmp");
    std::fs::write(&tmp, pid.to_string())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| ContainerError::Io {
            what: "writing pid file",
            path: path.to_path_buf(),
            source,
        })
}

fn write_id_maps(pid: Pid, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for (file, maps) in [
        ("uid_map", linux.and_then(|l| l.uid_mappings().as_ref())),
        ("gid_map", linux.and_then(|l| l.gid_mappings().as_ref())),
    ] {
        let Some(maps) = maps else { continue };
        let text: String = maps
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text).map_err(|source| ContainerError::Io {
            what: "writing id map",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Waits for `pid` while forwarding signals to it; returns its exit code (128+signal when
/// killed). The signals were blocked before the clone, so none is lost.
fn wait_forwarding(pid: Pid) -> Result<i32> {
    let set = wait_set();
    loop {
        match nix::sys::wait::waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(os(format!("waiting for {pid}"))(e)),
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(pid, sig);
            }
            Err(_) => {}
        }
    }
}

impl<'a> Runtime<'a> {
    pub fn new(root: impl Into<PathBuf>, sys: &'a dyn Syscall) -> Self {
        Self {
            store: StateStore::new(root),
            sys,
            warn: None,
        }
    }

    /// Where warnings go (spec entries left out); without one they are dropped.
    pub fn with_warnings(mut self, warn: &'a dyn Fn(&str)) -> Self {
        self.warn = Some(warn);
        self
    }

    fn warn_all(&self, warnings: &[String]) {
        if let Some(w) = self.warn {
            for m in warnings {
                w(m);
            }
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// OCI `create` (with [`Handover::Barrier`]), or the first half of `run`. With
    /// `Immediate`, the caller must [`Runtime::wait_and_delete`] (signals stay blocked).
    pub fn create(&self, opts: &CreateOptions) -> Result<Created> {
        // Everything that can be checked is checked before anything exists.
        let bundle = spec::load(&opts.bundle)?;
        state::check_id(&opts.id)?;
        let process = spec::process(&bundle)?.clone();
        let cg_path = cgroups_path(&bundle, &opts.id)?;
        let seccomp = compile_seccomp(&bundle.config, &bundle.spec)?;
        let has_cgroup_mount = bundle
            .spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")));
        let layout = if has_cgroup_mount {
            detect_cgroup_layout()
        } else {
            CgroupLayout::V2
        };
        let setup = plan::plan(&PlanInput {
            spec: &bundle.spec,
            bundle: &bundle.dir,
            rootfs: &bundle.rootfs,
            cgroups_path: &cg_path,
            cgroup_layout: &layout,
        })
        .map_err(|source| ContainerError::Plan {
            file: bundle.config.clone(),
            source,
        })?;
        // The original mask, restored in the child before exec.
        let mut old_mask = SigSet::empty();
        let (pc, warnings) =
            process_config(&bundle.config, &process, &bundle.rootfs, seccomp, opts.fds)?;
        let sysctl: Vec<(String, String)> = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.sysctl().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();

        let console_socket = match (process.terminal() == Some(true), &opts.console_socket) {
            (true, Some(path)) => {
                Some(console::connect(path).map_err(|e| ContainerError::Other {
                    id: opts.id.clone(),
                    msg: e.to_string(),
                })?)
            }
            (false, None) => None,
            (true, None) => {
                return Err(SpecError::Invalid {
                    file: bundle.config.clone(),
                    field: "process.terminal".into(),
                    msg: "true needs --console-socket (the caller must take the pty master)".into(),
                }
                .into())
            }
            (false, Some(p)) => {
                return Err(SpecError::Invalid {
                    file: bundle.config.clone(),
                    field: "process.terminal".into(),
                    msg: format!("is false, but --console-socket {} was given", p.display()),
                }
                .into())
            }
        };
        let dir = self.store.claim(&opts.id)?;
        self.warn_all(&warnings);
        let mut guard = CreateGuard {
            store: &self.store,
            id: opts.id.clone(),
            cgroup: None,
            child: None,
            armed: true,
        };
        let cg_err = |e: &dyn std::fmt::Display| ContainerError::Cgroup {
            id: opts.id.clone(),
            path: cg_path.clone(),
            msg: e.to_string(),
        };
        let cg = CgroupManager::new(&cg_path).map_err(|e| cg_err(&e))?;
        let resources = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref());
        let created = cg.create(resources);
        guard.cgroup = Some(cg);
        created.map_err(|e| cg_err(&e))?;

        let exec_fifo = match opts.handover {
            Handover::Barrier => {
                let p = dir.join(EXEC_FIFO);
                nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600))
                    .map_err(os(format!("mkfifo {}", p.display())))?;
                Some(p)
            }
            Handover::Immediate => None,
        };
        let (parent, child) = pipes()?;
        // Block before the clone: an early exit is then a pending SIGCHLD, never lost.
        nix::sys::signal::sigprocmask(
            SigmaskHow::SIG_BLOCK,
            Some(&wait_set()),
            Some(&mut old_mask),
        )
        .map_err(os("sigprocmask"))?;
        let cfg = InitConfig {
            plan: setup,
            process: ProcessConfig {
                sigmask: old_mask,
                ..pc
            },
            sysctl,
            exec_fifo,
            console_socket,
        };
        let pid = match clone_process(cfg.plan.clone_flags)? {
            None => {
                drop(parent);
                init::run_init(&cfg, child, self.sys)
            }
            Some(pid) => pid,
        };
        drop(child);
        guard.child = Some(pid);
        if cfg
            .plan
            .clone_flags
            .contains(nix::sched::CloneFlags::CLONE_NEWUSER)
        {
            write_id_maps(pid, &bundle.spec)?;
        }
        if let Some(adj) = process.oom_score_adj() {
            let p = PathBuf::from(format!("/proc/{pid}/oom_score_adj"));
            std::fs::write(&p, adj.to_string()).map_err(|source| ContainerError::Io {
                what: "writing",
                path: p,
                source,
            })?;
        }
        if let Some(cg) = &guard.cgroup {
            cg.add_task(pid).map_err(|e| cg_err(&e))?;
        }
        // A child that failed early has closed its end: its report says why.
        let released = nix::unistd::write(parent.go_w.as_fd(), b"g");
        drop(parent.go_w);
        read_report(&opts.id, parent.sync_r, opts.handover == Handover::Barrier)?;
        released.map_err(os("releasing init"))?;
        let info =
            state::proc_start_time(pid.as_raw()).ok_or_else(|| ContainerError::InitFailed {
                id: opts.id.clone(),
                msg: "init vanished right after set-up".into(),
            })?;
        let st = SavedState {
            oci_version: bundle.spec.version().clone(),
            id: opts.id.clone(),
            pid: pid.as_raw(),
            start_time: info.start_time,
            bundle: bundle.dir.clone(),
            created: state::now_rfc3339(),
            cgroups_path: cg_path.clone(),
            annotations: bundle
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        self.store.save(&st)?;
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        guard.armed = false;
        if opts.handover == Handover::Barrier {
            // `create` hands over: the container outlives this process.
            nix::sys::signal::sigprocmask(
                SigmaskHow::SIG_SETMASK,
                Some(&cfg.process.sigmask),
                None,
            )
            .map_err(os("sigprocmask"))?;
        }
        Ok(Created { pid, state: st })
    }

    /// `run` = create without the barrier, wait (forwarding signals), delete. Returns the
    /// container's exit code (128+signal when it was killed).
    pub fn run(&self, opts: &CreateOptions) -> Result<i32> {
        let c = self.create(&CreateOptions {
            handover: Handover::Immediate,
            ..opts.clone()
        })?;
        self.wait_and_delete(&c)
    }

    /// Second half of `run`.
    pub fn wait_and_delete(&self, c: &Created) -> Result<i32> {
        let code = wait_forwarding(c.pid)?;
        self.cleanup(&c.state)?;
        Ok(code)
    }

    /// Removes the cgroup and the state dir of a stopped container. Reports (as a warning)
    /// processes the OOM killer ended, read from the cgroup before it goes. With the
    /// default cgroup path, the runtime's own `gantry/` parent goes too once empty.
    fn cleanup(&self, st: &SavedState) -> Result<()> {
        let cg = CgroupManager::new(&st.cgroups_path).map_err(|e| ContainerError::Cgroup {
            id: st.id.clone(),
            path: st.cgroups_path.clone(),
            msg: e.to_string(),
        })?;
        if let Ok(stats) = cg.stats() {
            if let Some(msg) = oom_report(&st.id, &stats) {
                self.warn_all(&[msg]);
            }
        }
        // v1 may still see the exiting tasks for a moment: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match cg.destroy() {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(ContainerError::Cgroup {
                        id: st.id.clone(),
                        path: st.cgroups_path.clone(),
                        msg: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if st.cgroups_path == default_cgroups_path(&st.id) {
            cg.remove_empty_parents(1);
        }
        self.store.remove(&st.id)?;
        Ok(())
    }

    /// OCI `start`: releases a created container from its barrier.
    pub fn start(&self, id: &str) -> Result<()> {
        let st = self.store.load(id)?;
        let status = self.store.status(&st);
        if !status.can_start() {
            return Err(ContainerError::WrongStatus {
                id: id.into(),
                status: status.as_str(),
                verb: "start",
                hint: " (only a created container can be started)",
            });
        }
        let fifo = self.store.dir(id).join(EXEC_FIFO);
        let fd = nix::fcntl::open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(os(format!("opening {}", fifo.display())))?;
        loop {
            let mut pfd = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let n = nix::poll::poll(&mut pfd, 100u16).map_err(os("poll exec fifo"))?;
            if n > 0 {
                break;
            }
            if self.store.status(&st) == ContainerStatus::Stopped {
                return Err(ContainerError::Other {
                    id: id.into(),
                    msg: "init exited before it was started".into(),
                });
            }
        }
        let mut b = [0u8; 1];
        let n = nix::unistd::read(fd.as_fd(), &mut b).map_err(os("reading exec fifo"))?;
        let _ = std::fs::remove_file(&fifo);
        if n != 1 {
            return Err(ContainerError::Other {
                id: id.into(),
                msg: "init exited before it was started".into(),
            });
        }
        Ok(())
    }

    /// OCI `state`: the saved state with the status derived now.
    pub fn state(&self, id: &str) -> Result<(SavedState, ContainerStatus)> {
        let st = self.store.load(id)?;
        let status = self.store.status(&st);
        Ok((st, status))
    }

    pub fn list(&self) -> Result<Vec<(SavedState, ContainerStatus)>> {
        let mut out = Vec::new();
        for id in self.store.list()? {
            match self.store.load(&id) {
                Ok(st) => {
                    let s = self.store.status(&st);
                    out.push((st, s));
                }
                Err(StateError::NotFound(_)) => {} // still being created
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Sends `sig` to the container's init, or with `all` to every process in its cgroup.
    pub fn kill(&self, id: &str, sig: Signal, all: bool) -> Result<()> {
        let st = self.store.load(id)?;
        let status = self.store.status(&st);
        if !status.can_kill() {
            return Err(ContainerError::WrongStatus {
                id: id.into(),
                status: status.as_str(),
                verb: "kill",
                hint: "",
            });
        }
        if all {
            let cg = CgroupManager::new(&st.cgroups_path).map_err(|e| ContainerError::Cgroup {
                id: id.into(),
                path: st.cgroups_path.clone(),
                msg: e.to_string(),
            })?;
            let pids = cg.pids().map_err(|e| ContainerError::Cgroup {
                id: id.into(),
                path: st.cgroups_path.clone(),
                msg: e.to_string(),
            })?;
            for p in pids {
                let _ = nix::sys::signal::kill(p, sig);
            }
            return Ok(());
        }
        nix::sys::signal::kill(Pid::from_raw(st.pid), sig)
            .map_err(os(format!("kill {} {}", st.pid, sig)))
    }

    /// OCI `delete`: a stopped container's cgroup and state are removed; a created or
    /// running one only with `force` (killed first, every process of its cgroup).
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let st = match self.store.load(id) {
            Ok(st) => st,
            Err(StateError::NotFound(_)) if force && self.store.dir(id).is_dir() => {
                // a create that died without cleaning up
                return Ok(self.store.remove(id)?);
            }
            Err(e) => return Err(e.into()),
        };
        let status = self.store.status(&st);
        if !status.can_delete() {
            if !force {
                return Err(ContainerError::WrongStatus {
                    id: id.into(),
                    status: status.as_str(),
                    verb: "delete",
                    hint: " without --force",
                });
            }
            let cg = CgroupManager::new(&st.cgroups_path).ok();
            if let Some(pids) = cg.as_ref().and_then(|c| c.pids().ok()) {
                for p in pids {
                    let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
                }
            }
            let _ = nix::sys::signal::kill(Pid::from_raw(st.pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.store.status(&st) != ContainerStatus::Stopped {
                // our own child (a `run` being force-deleted from inside) needs reaping
                let _ = nix::sys::wait::waitpid(Pid::from_raw(st.pid), Some(WaitPidFlag::WNOHANG));
                if Instant::now() > deadline {
                    return Err(ContainerError::Other {
                        id: id.into(),
                        msg: format!("init {} did not die after SIGKILL", st.pid),
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.cleanup(&st)
    }

    /// Runs a new process in a running container: joins its namespaces (pid from here,
    /// before the fork; the rest in the child) and its cgroup. Returns its exit code.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        let st = self.store.load(id)?;
        let status = self.store.status(&st);
        if !status.can_exec() {
            return Err(ContainerError::WrongStatus {
                id: id.into(),
                status: status.as_str(),
                verb: "exec into it",
                hint: " (it must be running)",
            });
        }
        let config = st.bundle.join("config.json");
        let bytes = std::fs::read(&config).map_err(|source| SpecError::Read {
            bundle: st.bundle.clone(),
            source,
        })?;
        let spec = spec::parse(&config, &bytes)?;
        let (file, mut process) = match &opts.process {
            Some(pf) => {
                let b = std::fs::read(pf).map_err(|source| ContainerError::Io {
                    what: "reading",
                    path: pf.clone(),
                    source,
                })?;
                let de = &mut serde_json::Deserializer::from_slice(&b);
                let p: Process =
                    serde_path_to_error::deserialize(de).map_err(|e| SpecError::Invalid {
                        file: pf.clone(),
                        field: e.path().to_string(),
                        msg: e.inner().to_string(),
                    })?;
                (pf.clone(), p)
            }
            None => {
                let mut p = spec.process().clone().unwrap_or_default();
                p.set_args(Some(opts.args.clone()));
                let mut env = p.env().clone().unwrap_or_default();
                env.extend(opts.env.iter().cloned());
                p.set_env(Some(env));
                (config.clone(), p)
            }
        };
        if let Some(cwd) = &opts.cwd {
            process.set_cwd(cwd.clone());
        }
        if let Some((uid, gid)) = opts.user {
            let mut u = process.user().clone();
            u.set_uid(uid);
            if let Some(g) = gid {
                u.set_gid(g);
            }
            process.set_user(u);
        }
        let terminal = opts.tty || process.terminal() == Some(true);
        let console_socket = match (terminal, &opts.console_socket) {
            (true, Some(path)) => {
                Some(console::connect(path).map_err(|e| ContainerError::Other {
                    id: id.into(),
                    msg: e.to_string(),
                })?)
            }
            (true, None) => {
                return Err(SpecError::Invalid {
                    file,
                    field: "process.terminal".into(),
                    msg: "a terminal needs --console-socket".into(),
                }
                .into())
            }
            (false, _) => None,
        };
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(SpecError::Invalid {
                file,
                field: "process.args".into(),
                msg: "exec needs a command".into(),
            }
            .into());
        }
        let seccomp = compile_seccomp(&config, &spec)?;
        let root = PathBuf::from(format!("/proc/{}/root", st.pid));
        let mut old_mask = SigSet::empty();
        let (pc, warnings) = process_config(&file, &process, &root, seccomp, opts.fds)?;
        self.warn_all(&warnings);

        // Namespaces that differ from ours, in setns order (user first, mount last).
        let mut join = Vec::new();
        let mut pid_ns = None;
        for (name, flag) in [
            ("user", nix::sched::CloneFlags::CLONE_NEWUSER),
            ("ipc", nix::sched::CloneFlags::CLONE_NEWIPC),
            ("uts", nix::sched::CloneFlags::CLONE_NEWUTS),
            ("net", nix::sched::CloneFlags::CLONE_NEWNET),
            ("pid", nix::sched::CloneFlags::CLONE_NEWPID),
            ("cgroup", nix::sched::CloneFlags::CLONE_NEWCGROUP),
            ("mnt", nix::sched::CloneFlags::CLONE_NEWNS),
        ] {
            let theirs = PathBuf::from(format!("/proc/{}/ns/{name}", st.pid));
            let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
            let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
                continue;
            };
            if std::os::unix::fs::MetadataExt::ino(&a) == std::os::unix::fs::MetadataExt::ino(&b) {
                continue;
            }
            let f = std::fs::File::open(&theirs).map_err(|source| ContainerError::Io {
                what: "opening namespace",
                path: theirs.clone(),
                source,
            })?;
            if flag == nix::sched::CloneFlags::CLONE_NEWPID {
                pid_ns = Some(f);
            } else {
                join.push((flag, f));
            }
        }
        if let Some(f) = &pid_ns {
            // affects only our children: the exec'd process is born in the container's pid ns
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(os("setns into the container's pid namespace"))?;
        }
        let (parent, child) = pipes()?;
        nix::sys::signal::sigprocmask(
            SigmaskHow::SIG_BLOCK,
            Some(&wait_set()),
            Some(&mut old_mask),
        )
        .map_err(os("sigprocmask"))?;
        let pc = ProcessConfig {
            sigmask: old_mask,
            ..pc
        };
        let pid = match clone_process(nix::sched::CloneFlags::empty())? {
            None => {
                drop(parent);
                exec_child(&join, &pc, console_socket.as_ref(), child, self.sys)
            }
            Some(pid) => pid,
        };
        drop(child);
        let kill_child = |e: ContainerError| {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            e
        };
        let cg = CgroupManager::new(&st.cgroups_path).map_err(|e| {
            kill_child(ContainerError::Cgroup {
                id: id.into(),
                path: st.cgroups_path.clone(),
                msg: e.to_string(),
            })
        })?;
        cg.add_task(pid).map_err(|e| {
            kill_child(ContainerError::Cgroup {
                id: id.into(),
                path: st.cgroups_path.clone(),
                msg: e.to_string(),
            })
        })?;
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid).map_err(kill_child)?;
        }
        let released = nix::unistd::write(parent.go_w.as_fd(), b"g");
        drop(parent.go_w);
        if let Err(e) = read_report(id, parent.sync_r, false) {
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
        released.map_err(|e| kill_child(os("releasing exec")(e)))?;
        if opts.detach {
            return Ok(0);
        }
        wait_forwarding(pid)
    }
}

/// The exec'd process's side: join the namespaces, wait for the cgroup, become the process.
fn exec_child(
    join: &[(nix::sched::CloneFlags, std::fs::File)],
    pc: &ProcessConfig,
    console_socket: Option<&OwnedFd>,
    pipes: ChildPipes,
    sys: &dyn Syscall,
) -> ! {
    use std::io::Write;
    let mut sync = std::fs::File::from(pipes.sync_w);
    let mut go = std::fs::File::from(pipes.go_r);
    let r: std::result::Result<std::convert::Infallible, String> = (|| {
        for (flag, f) in join {
            nix::sched::setns(f, *flag).map_err(|e| format!("setns {flag:?}: {e}"))?;
        }
        let mut b = [0u8; 1];
        if go.read(&mut b).ok() != Some(1) {
            return Err("runtime went away".to_string());
        }
        if let Some(sock) = console_socket {
            // setns into the mount namespace moved our root to the container's.
            let slave = console::open_and_send(Path::new("/"), sock).map_err(|e| e.to_string())?;
            console::make_stdio(slave).map_err(|e| e.to_string())?;
        }
        init::become_process(pc, sys).map_err(|e| e.to_string())
    })();
    let msg = match r {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = sync.write_all(format!("E{msg}").as_bytes());
    // SAFETY: end the child without the parent's exit handlers.
    unsafe { libc::_exit(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn oom_is_reported_only_when_something_was_killed() {
        let mut stats = crate::runtime::cgroups::CgroupStats {
            oom_kills: Some(0),
            memory_limit_bytes: Some(1 << 20),
            ..Default::default()
        };
        assert_eq!(oom_report("c1", &stats), None);
        stats.oom_kills = None;
        assert_eq!(oom_report("c1", &stats), None);
        stats.oom_kills = Some(2);
        let m = oom_report("c1", &stats).unwrap();
        assert!(
            m.contains("`c1`") && m.contains("OOM killer killed 2") && m.contains("1048576"),
            "{m}"
        );
    }

    #[test]
    fn user_is_uid_or_uid_colon_gid() {
        assert_eq!(parse_user("65534").unwrap(), (65534, None));
        assert_eq!(parse_user("1:2").unwrap(), (1, Some(2)));
        for bad in ["nobody", "1:", ":2", "1:x", ""] {
            let e = parse_user(bad).unwrap_err().to_string();
            assert!(e.contains("--user") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn passed_fds_count_listen_fds_only_when_meant_for_us() {
        let f = PassFds::new(2, Some("3"), Some("4242"), 4242);
        assert_eq!(
            f,
            PassFds {
                listen: 3,
                preserve: 2
            }
        );
        assert_eq!(f.keep(), 5);
        assert_eq!(f.env("1"), vec!["LISTEN_FDS=3", "LISTEN_PID=1"]);
        // LISTEN_PID of another process (our parent's activation): not ours to pass on.
        let f = PassFds::new(1, Some("3"), Some("17"), 4242);
        assert_eq!(
            f,
            PassFds {
                listen: 0,
                preserve: 1
            }
        );
        assert!(f.env("1").is_empty());
        assert_eq!(PassFds::new(0, Some("x"), Some("9"), 9).keep(), 0);
        assert_eq!(PassFds::new(0, None, None, 9).keep(), 0);
    }
}

//! The container's init: the code the cloned child runs, from `clone` to `execve`. It never
//! returns: on success it becomes the user's process, on failure it writes `E<message>` to
//! the sync pipe and exits 1, and the parent reports the message and cleans up.
//!
//! Protocol with the parent (two CLOEXEC pipes, so a successful `execve` reads as EOF):
//! - parent → child **go**: the child is in its cgroup (and, with a user namespace, its
//!   id maps are written); the child waits for it before running anything of the user's;
//! - child → parent **sync**: `R` when held at the create barrier, `E…` on error, EOF at exec.
//!
//! The create barrier is runc's exec fifo: the child opens `<state>/exec.fifo` for writing,
//! which blocks until `start` opens it for reading.
//!
//! Everything is computed by the parent before `clone` ([`InitConfig`]); the parent is
//! single-threaded, so allocating here is safe, but nothing here needs to.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::LinuxCapabilities;

use super::plan::SetupPlan;
use super::rootfs;
use super::syscall::{Syscall, SyscallError};
use super::{capabilities, console, seccomp};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Syscall(#[from] SyscallError),
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("capabilities: {0}")]
    Caps(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("parent went away before the container was released")]
    ParentGone,
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
}

fn os(what: impl Into<String>) -> impl FnOnce(nix::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Os { what, source }
}

/// One rlimit: resource number, soft, hard.
pub type Rlimit = (libc::c_int, u64, u64);

/// What the process becomes (shared by `create` and `exec`).
#[derive(Debug)]
pub struct ProcessConfig {
    pub exe: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: u32,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    pub capabilities: Option<LinuxCapabilities>,
    pub seccomp: Option<seccomp::Program>,
    /// The signal mask to restore before exec (the parent blocked signals before clone).
    pub sigmask: SigSet,
    /// Descriptors after stdio that the process inherits (3 .. 3+keep_fds); every other
    /// one above 2 is closed at exec.
    pub keep_fds: u32,
}

#[derive(Debug)]
pub struct InitConfig {
    pub plan: SetupPlan,
    pub process: ProcessConfig,
    pub sysctl: Vec<(String, String)>,
    /// `create`: the exec fifo; `run`: none (no barrier).
    pub exec_fifo: Option<PathBuf>,
    /// `process.terminal`: the caller's console socket, connected; the pty master goes
    /// there and the slave becomes the process's stdio and controlling terminal.
    pub console_socket: Option<OwnedFd>,
}

/// The child's ends of the two pipes.
pub struct ChildPipes {
    pub sync_w: OwnedFd,
    pub go_r: OwnedFd,
}

/// Runs in the cloned child; never returns.
pub fn run_init(cfg: &InitConfig, pipes: ChildPipes, sys: &dyn Syscall) -> ! {
    let mut sync = std::fs::File::from(pipes.sync_w);
    let mut go = std::fs::File::from(pipes.go_r);
    let err = match init(cfg, &mut sync, &mut go, sys) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = sync.write_all(format!("E{err}").as_bytes());
    // SAFETY: _exit ends the child without running the parent's exit handlers twice.
    unsafe { libc::_exit(1) }
}

fn wait_go(go: &mut std::fs::File) -> Result<(), InitError> {
    let mut b = [0u8; 1];
    match go.read(&mut b) {
        Ok(1) => Ok(()),
        _ => Err(InitError::ParentGone),
    }
}

fn init(
    cfg: &InitConfig,
    sync: &mut std::fs::File,
    go: &mut std::fs::File,
    sys: &dyn Syscall,
) -> Result<std::convert::Infallible, InitError> {
    let plan = &cfg.plan;
    // Device nodes and mount targets get exactly the modes asked for.
    nix::sys::stat::umask(Mode::empty());
    if plan.user_namespace {
        // The parent writes our uid/gid maps, then says go; become root of the namespace.
        wait_go(go)?;
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .map_err(os("setresgid(0) in the user namespace"))?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .map_err(os("setresuid(0) in the user namespace"))?;
    }
    for (flag, path) in &plan.join {
        let f = std::fs::File::open(path).map_err(|e| InitError::Os {
            what: format!("opening namespace {}", path.display()),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        nix::sched::setns(&f, *flag).map_err(os(format!("setns {}", path.display())))?;
    }
    if let Some(h) = &plan.hostname {
        sys.sethostname(h)?;
    }
    // The fifo is opened (O_PATH) while the state dir is still visible, reopened for writing
    // through /proc/self/fd after pivot_root.
    let fifo = match &cfg.exec_fifo {
        Some(p) => Some(
            nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(os(format!("opening {}", p.display())))?,
        ),
        None => None,
    };
    rootfs::prepare(sys, plan)?;
    // Before the barrier, so `create` returns with the console delivered.
    let console = match &cfg.console_socket {
        Some(sock) => Some(console::open_and_send(&plan.rootfs, sock)?),
        None => None,
    };
    if !plan.user_namespace {
        wait_go(go)?;
    }
    if !plan.has_proc {
        // No /proc inside: hold at the barrier before leaving the host's view.
        barrier(fifo, sync)?;
        rootfs::pivot(sys, &plan.rootfs)?;
        set_sysctls(sys, &cfg.sysctl)?;
        rootfs::finish(sys, plan)?;
    } else {
        rootfs::pivot(sys, &plan.rootfs)?;
        set_sysctls(sys, &cfg.sysctl)?;
        rootfs::finish(sys, plan)?;
        barrier(fifo, sync)?;
    }
    if let Some(slave) = console {
        console::make_stdio(slave)?;
    }
    become_process(&cfg.process, sys)
}

fn set_sysctls(sys: &dyn Syscall, sysctl: &[(String, String)]) -> Result<(), InitError> {
    for (k, v) in sysctl {
        let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        sys.write_file(&path, v.as_bytes())?;
    }
    Ok(())
}

/// Tells the parent we are set up, then blocks until `start` opens the fifo for reading.
fn barrier(fifo: Option<OwnedFd>, sync: &mut std::fs::File) -> Result<(), InitError> {
    let Some(fd) = fifo else { return Ok(()) };
    sync.write_all(b"R").map_err(|_| InitError::ParentGone)?;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let w = nix::fcntl::open(
        path.as_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(os("waiting on the exec fifo"))?;
    let _ = nix::unistd::write(&w, b"0");
    drop(w);
    drop(fd);
    Ok(())
}

/// From a set-up container to the user's process: inherited descriptors, cwd, rlimits,
/// user, capabilities, no_new_privs, seccomp, signal mask, exec. Shared by `create` and
/// `exec`.
pub fn become_process(
    p: &ProcessConfig,
    sys: &dyn Syscall,
) -> Result<std::convert::Infallible, InitError> {
    sys.cloexec_from(3 + p.keep_fds)?;
    sys.chdir(&p.cwd)?;
    for (res, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: plain syscall with a valid pointer.
        if unsafe { libc::setrlimit(*res as _, &lim) } != 0 {
            return Err(InitError::Os {
                what: format!("setrlimit({res})"),
                source: nix::Error::last(),
            });
        }
    }
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it.
    if !p.no_new_privileges {
        if let Some(prog) = &p.seccomp {
            seccomp::install(prog).map_err(|e| InitError::Seccomp(e.to_string()))?;
        }
    }
    if let Some(c) = &p.capabilities {
        capabilities::drop_bounding(c).map_err(|e| InitError::Caps(e.to_string()))?;
    }
    nix::sys::prctl::set_keepcaps(true).map_err(os("prctl(PR_SET_KEEPCAPS)"))?;
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(os("setgroups"))?;
    let gid = Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(os(format!("setresgid({})", p.gid)))?;
    let uid = Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(os(format!("setresuid({})", p.uid)))?;
    nix::sys::prctl::set_keepcaps(false).map_err(os("prctl(PR_SET_KEEPCAPS)"))?;
    if let Some(c) = &p.capabilities {
        capabilities::apply_sets(c).map_err(|e| InitError::Caps(e.to_string()))?;
    }
    if p.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(os("prctl(PR_SET_NO_NEW_PRIVS)"))?;
        if let Some(prog) = &p.seccomp {
            seccomp::install(prog).map_err(|e| InitError::Seccomp(e.to_string()))?;
        }
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(p.umask));
    // Rust ignores SIGPIPE in its own processes; the user's process must get the default.
    // SAFETY: resetting a disposition to SIG_DFL.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&p.sigmask), None)
        .map_err(os("sigprocmask"))?;
    let e = nix::unistd::execve(&p.exe, &p.argv, &p.envp).unwrap_err();
    Err(InitError::Os {
        what: format!("exec {}", p.exe.to_string_lossy()),
        source: e,
    })
}

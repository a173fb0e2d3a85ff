//! The shim's process: fork away from the agent, have the runtime create and start the
//! container, then one `poll` loop until the container is gone: output → log records,
//! SIGCHLD (via a signalfd) → reap, the `stdin` fifo → the container's stdin, connections on
//! `shim.sock` → told `exit <code>` at the end. Single-threaded and allocation-light on
//! purpose (see the module doc of [`super`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::logfile::{LineSplitter, LogWriter};
use super::{
    io_err, timefmt, write_atomic, ExitRecord, ProcessId, RunDir, ShimConfig, SupervisorError,
};

/// After the container's init exits, how long to wait for its output pipes to close (a
/// process that escaped the pid namespace could hold them forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

fn sys(call: &'static str, r: libc::c_int) -> Result<libc::c_int, SupervisorError> {
    if r < 0 {
        Err(SupervisorError::Sys {
            call,
            source: nix::Error::last(),
        })
    } else {
        Ok(r)
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SupervisorError> {
    let mut fds = [0; 2];
    sys("pipe2", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: pipe2 just returned these two fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// `gantry shim --config PATH`: returns the process exit code. The agent reads one line
/// from the shim's stdout: `ok PID STARTTIME` once the container runs, or `error: …`.
pub fn main(config_path: &Path) -> i32 {
    let cfg: ShimConfig = match std::fs::read(config_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            println!("error: shim config {}: {e}", config_path.display());
            return 1;
        }
    };
    // The agent's child exits at once; the grandchild is the shim, in its own session, so
    // it is nobody's child but init's (or a subreaper's) and outlives the agent.
    match unsafe { libc::fork() } {
        -1 => {
            println!("error: fork: {}", std::io::Error::last_os_error());
            return 1;
        }
        0 => {}
        _ => return 0,
    }
    unsafe { libc::setsid() };
    // Our stdout is the agent's pipe: keep it aside for the one report line. Close-on-exec:
    // the agent reads the pipe to its end, so neither the runtime nor the container may
    // inherit a copy (a container holding it would hang the agent until it exits).
    let report_fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    let devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    unsafe { libc::dup2(devnull, 1) };
    let mut report = unsafe { File::from_raw_fd(report_fd) };
    match Shim::start(&cfg) {
        Ok(mut shim) => {
            let _ = writeln!(report, "ok {} {}", shim.init.pid, shim.init.start_time);
            drop(report);
            shim.run();
            shim.finish();
            0
        }
        Err(e) => {
            let _ = writeln!(report, "error: {e}");
            1
        }
    }
}

struct Shim {
    cfg: ShimConfig,
    run: RunDir,
    init: ProcessId,
    sigfd: OwnedFd,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    fifo: Option<File>,
    stdin_w: Option<File>,
    listener: UnixListener,
    clients: Vec<UnixStream>,
    log: LogWriter,
    split_out: LineSplitter,
    split_err: LineSplitter,
    status: Option<ExitRecord>,
}

impl Shim {
    fn start(cfg: &ShimConfig) -> Result<Shim, SupervisorError> {
        let run = RunDir(cfg.run_dir.clone());
        sys("prctl(PR_SET_CHILD_SUBREAPER)", unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        })?;
        ProcessId::of(std::process::id() as i32)
            .expect("own /proc entry")
            .write(&run.shim_pid())?;
        // SIGCHLD is blocked before any child exists, so no exit can be missed; children
        // get an empty mask back (std's spawn resets it).
        let sigfd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            let mut block = set;
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
                libc::sigaddset(&mut block, s);
            }
            sys(
                "sigprocmask",
                libc::sigprocmask(libc::SIG_BLOCK, &block, std::ptr::null_mut()),
            )?;
            let fd = sys(
                "signalfd",
                libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK),
            )?;
            OwnedFd::from_raw_fd(fd)
        };
        let log = LogWriter::open(&cfg.log_path, cfg.log_max_bytes, cfg.log_max_files)
            .map_err(io_err("open log", &cfg.log_path))?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (stdin, fifo, stdin_w) = if cfg.interactive {
            let path = run.stdin_fifo();
            let _ = std::fs::remove_file(&path);
            let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            sys("mkfifo", unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) })?;
            let fifo = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .map_err(io_err("open", &path))?;
            let (r, w) = pipe()?;
            (Stdio::from(r), Some(fifo), Some(File::from(w)))
        } else {
            (Stdio::null(), None, None)
        };
        let pid_file = run.runtime_pid_file();
        let mut create = cfg.runtime.create_command(&cfg.id, &cfg.bundle, &pid_file);
        create
            .stdin(stdin)
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        let status = create.status().map_err(|e| SupervisorError::Runtime {
            step: "create",
            id: cfg.id.clone(),
            message: format!("cannot run {:?}: {e}", cfg.runtime.program),
        })?;
        drop(create);
        if !status.success() {
            // The runtime wrote its reason on the stderr we gave it.
            set_nonblocking(err_r.as_raw_fd());
            let mut msg = Vec::new();
            let _ = File::from(err_r).read_to_end(&mut msg);
            return Err(SupervisorError::Runtime {
                step: "create",
                id: cfg.id.clone(),
                message: format!("{status}: {}", String::from_utf8_lossy(&msg).trim()),
            });
        }
        let init = (|| {
            let s = std::fs::read_to_string(&pid_file).map_err(io_err("read", &pid_file))?;
            let pid: i32 = s.trim().parse().map_err(|_| SupervisorError::Corrupt {
                path: pid_file.clone(),
                reason: format!("not a pid: {s:?}"),
            })?;
            ProcessId::of(pid).ok_or_else(|| SupervisorError::Runtime {
                step: "create",
                id: cfg.id.clone(),
                message: format!("container init {pid} vanished before start"),
            })
        })();
        let init = match init.and_then(|init| cfg.runtime.start(&cfg.id).map(|_| init)) {
            Ok(i) => i,
            Err(e) => {
                let _ = cfg.runtime.delete(&cfg.id, true);
                return Err(e);
            }
        };
        init.write(&run.init_pid())?;
        let sock = run.socket();
        let _ = std::fs::remove_file(&sock);
        // Bound by a relative name: socket paths are limited to 108 bytes, run dirs are not.
        std::env::set_current_dir(&run.0).map_err(io_err("chdir", &run.0))?;
        let listener = UnixListener::bind("shim.sock").map_err(io_err("bind", &sock))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("set nonblocking", &sock))?;
        set_nonblocking(out_r.as_raw_fd());
        set_nonblocking(err_r.as_raw_fd());
        Ok(Shim {
            cfg: cfg.clone(),
            run,
            init,
            sigfd,
            out: Some(out_r),
            err: Some(err_r),
            fifo,
            stdin_w,
            listener,
            clients: Vec::new(),
            log,
            split_out: LineSplitter::default(),
            split_err: LineSplitter::default(),
            status: None,
        })
    }

    fn run(&mut self) {
        let mut drain_deadline: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.status.is_some() {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if (self.out.is_none() && self.err.is_none()) || Instant::now() >= deadline {
                    return;
                }
            }
            // Fixed slots: 0 signals, 1 listener, 2 stdout, 3 stderr, 4 stdin fifo.
            let fd_of = |o: &Option<OwnedFd>| o.as_ref().map_or(-1, |f| f.as_raw_fd());
            let mut fds = [
                self.sigfd.as_raw_fd(),
                self.listener.as_raw_fd(),
                fd_of(&self.out),
                fd_of(&self.err),
                self.fifo.as_ref().map_or(-1, |f| f.as_raw_fd()),
            ]
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            let timeout = match drain_deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).as_millis() as i32 + 1,
                None => -1,
            };
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                continue; // EINTR
            }
            let ready =
                |i: usize| fds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
            if ready(0) {
                self.reap();
            }
            if ready(1) {
                while let Ok((c, _)) = self.listener.accept() {
                    self.clients.push(c);
                }
            }
            for (slot, stream) in [(2, "stdout"), (3, "stderr")] {
                if ready(slot) {
                    self.copy_output(stream, &mut buf);
                }
            }
            if ready(4) {
                self.forward_stdin(&mut buf);
            }
        }
    }

    fn reap(&mut self) {
        let mut si = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while unsafe { libc::read(self.sigfd.as_raw_fd(), si.as_mut_ptr().cast(), si.len()) } > 0 {}
        loop {
            let mut st = 0;
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if pid == self.init.pid {
                let (code, signal) = if libc::WIFSIGNALED(st) {
                    (128 + libc::WTERMSIG(st), Some(libc::WTERMSIG(st)))
                } else {
                    (libc::WEXITSTATUS(st), None)
                };
                self.status = Some(ExitRecord {
                    exit_code: code,
                    signal,
                    finished_unix_nanos: timefmt::now_nanos(),
                });
            }
        }
    }

    fn copy_output(&mut self, stream: &'static str, buf: &mut [u8]) {
        let slot = if stream == "stdout" {
            &mut self.out
        } else {
            &mut self.err
        };
        let Some(fd) = slot.as_ref() else { return };
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::Interrupted
            {
                return;
            }
        }
        let (log, split) = if stream == "stdout" {
            (&mut self.log, &mut self.split_out)
        } else {
            (&mut self.log, &mut self.split_err)
        };
        let now = timefmt::now_nanos();
        let mut write = |line: &[u8]| {
            if let Err(e) = log.write(stream, now, line) {
                eprintln!("shim {}: log write: {e}", self.cfg.id);
            }
        };
        if n <= 0 {
            split.finish(&mut write);
            *slot = None;
        } else {
            split.push(&buf[..n as usize], &mut write);
        }
    }

    fn forward_stdin(&mut self, buf: &mut [u8]) {
        let Some(fifo) = self.fifo.as_mut() else {
            return;
        };
        match fifo.read(buf) {
            Ok(0) => {
                // The writer closed the fifo: the container sees end of file.
                self.fifo = None;
                self.stdin_w = None;
            }
            Ok(n) => {
                if let Some(w) = self.stdin_w.as_mut() {
                    if w.write_all(&buf[..n]).is_err() {
                        self.stdin_w = None;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.fifo = None;
                self.stdin_w = None;
            }
        }
    }

    fn finish(mut self) {
        let status = self.status.clone().unwrap_or(ExitRecord {
            exit_code: 255,
            signal: None,
            finished_unix_nanos: timefmt::now_nanos(),
        });
        // Remove everything of the container before telling anyone it exited, so a restart
        // that follows the notice finds the runtime id and the mount point free.
        if let Err(e) = self.cfg.runtime.delete(&self.cfg.id, true) {
            eprintln!("shim {}: {e}", self.cfg.id);
        }
        if let Some(m) = &self.cfg.unmount_on_exit {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    eprintln!(
                        "shim {}: umount {}: {}",
                        self.cfg.id,
                        m.display(),
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
        match serde_json::to_vec(&status) {
            Ok(b) => {
                if let Err(e) = write_atomic(&self.run.exit_file(), &b) {
                    eprintln!("shim {}: {e}", self.cfg.id);
                }
            }
            Err(e) => eprintln!("shim {}: {e}", self.cfg.id),
        }
        // Clients that connect from now on fail and read exit.json, which is in place.
        let _ = std::fs::remove_file(self.run.stdin_fifo());
        let _ = std::fs::remove_file(self.run.socket());
        for mut c in self.clients.drain(..) {
            let _ = c.set_nonblocking(false);
            let _ = writeln!(c, "exit {}", status.exit_code);
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;

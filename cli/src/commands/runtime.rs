//! `gantry runtime …`: the runc-compatible face of the OCI runtime library
//! (`gantry_agent::runtime`). Same verbs, flags and exit codes as runc where it matters to
//! callers (podman, containerd shims, scripts): errors go to stderr (and, with `--log`, to
//! the log file as text or JSON lines), exit status 1; `run` and `exec` exit with the
//! container process's status (128+signal when it was killed).
//!
//! Runs with no async runtime and no threads: the library clones from this process.
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use gantry_agent::runtime::container::{
    self, CreateOptions, ExecOptions, Handover, PassFds, Runtime,
};
use gantry_agent::runtime::state::OciState;
use gantry_agent::runtime::syscall::LinuxSyscall;

#[derive(Args)]
pub struct RuntimeArgs {
    /// Root directory for container state.
    #[arg(long, default_value = "/run/gantry/runtime", global = true)]
    pub root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of --log lines.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// Use systemd to manage cgroups (not supported: refused with an error).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    #[command(subcommand)]
    pub command: RuntimeCommand,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum RuntimeCommand {
    /// Create a container, held before its process starts (until `start`).
    Create {
        /// Bundle directory (holds config.json).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write the container's init pid to this file.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Unix socket that receives the pty master (SCM_RIGHTS) when process.terminal is
        /// true.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Accepted for runc compatibility: gantry never creates session keyrings.
        #[arg(long)]
        no_new_keyring: bool,
        /// Extra fds (after stdio, after any LISTEN_FDS) passed to the container process;
        /// every other inherited fd is closed.
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    /// Start a created container.
    Start { id: String },
    /// Print a container's OCI state as JSON.
    State { id: String },
    /// Send a signal (name or number; default TERM) to a container.
    Kill {
        /// Signal every process of the container (through its cgroup).
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a stopped container (or, with --force, kill and delete any).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create, start and wait for a container, then delete it; exits with its status.
    Run {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Unix socket that receives the pty master when process.terminal is true.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Detach (not supported: use create + start).
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        no_new_keyring: bool,
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    /// Run a new process in a running container; exits with its status.
    Exec {
        /// A process.json (OCI process object) instead of ARGS.
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Extra environment variables (KEY=VALUE).
        #[arg(short, long)]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// The user to run as: UID[:GID], numeric (as runc).
        #[arg(short, long)]
        user: Option<String>,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Extra fds (after stdio) passed to the process.
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        /// Allocate a terminal (needs --console-socket, or process.terminal in --process).
        #[arg(short, long)]
        tty: bool,
        /// Exit once the process runs (its pid in --pid-file) instead of waiting for it.
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write a hardened default config.json (Docker's capabilities, seccomp profile, masked
    /// and read-only paths) into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Rootless spec (not supported: refused with an error).
        #[arg(long)]
        rootless: bool,
        /// The process args (default: sh).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// List containers.
    #[command(alias = "ps")]
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Print only ids.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// An error for the user: printed to stderr and --log, exit status 1.
struct Failure(String);

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        // the chain of sources, like anyhow's "{:#}"
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            let m = c.to_string();
            if !s.contains(&m) {
                s.push_str(": ");
                s.push_str(&m);
            }
            src = c.source();
        }
        Failure(s)
    }
}

fn unsupported(what: &str) -> Failure {
    Failure(format!("{what} is not supported by gantry runtime"))
}

pub fn main(args: RuntimeArgs) -> i32 {
    match dispatch(&args) {
        Ok(code) => code,
        Err(Failure(msg)) => {
            eprintln!("gantry runtime: {msg}");
            if let Some(log) = &args.log {
                log_line(log, args.log_format, "error", &msg);
            }
            1
        }
    }
}

/// A warning goes to --log when there is one, else to stderr (runc's logrus does the same).
fn warn(args: &RuntimeArgs, msg: &str) {
    match &args.log {
        Some(log) => log_line(log, args.log_format, "warning", msg),
        None => eprintln!("gantry runtime: warning: {msg}"),
    }
}

/// The descriptors to pass on: `--preserve-fds` plus systemd's LISTEN_FDS when meant for us.
fn pass_fds(preserve: u32) -> PassFds {
    PassFds::new(
        preserve,
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn log_line(path: &PathBuf, format: LogFormat, level: &str, msg: &str) {
    let time = gantry_agent::runtime::state::now_rfc3339();
    let line = match format {
        LogFormat::Text => format!("time=\"{time}\" level={level} msg={msg:?}\n"),
        LogFormat::Json => format!(
            "{}\n",
            serde_json::json!({"level": level, "msg": msg, "time": time})
        ),
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

fn dispatch(args: &RuntimeArgs) -> Result<i32, Failure> {
    if args.systemd_cgroup {
        return Err(Failure(
            "--systemd-cgroup is not supported: gantry runtime manages cgroupfs directly".into(),
        ));
    }
    let sys = LinuxSyscall;
    let warnings = |m: &str| warn(args, m);
    let rt = Runtime::new(&args.root, &sys).with_warnings(&warnings);
    match &args.command {
        RuntimeCommand::Create {
            bundle,
            pid_file,
            console_socket,
            preserve_fds,
            id,
            ..
        } => {
            rt.create(&CreateOptions {
                id: id.clone(),
                bundle: bundle.clone(),
                pid_file: pid_file.clone(),
                handover: Handover::Barrier,
                fds: pass_fds(*preserve_fds),
                console_socket: console_socket.clone(),
            })?;
            Ok(0)
        }
        RuntimeCommand::Start { id } => {
            rt.start(id)?;
            Ok(0)
        }
        RuntimeCommand::State { id } => {
            let (st, status) = rt.state(id)?;
            let out = OciState {
                oci_version: &st.oci_version,
                id: &st.id,
                status,
                pid: (status != gantry_agent::runtime::state::ContainerStatus::Stopped)
                    .then_some(st.pid),
                bundle: &st.bundle,
                annotations: &st.annotations,
                created: &st.created,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("state serializes")
            );
            Ok(0)
        }
        RuntimeCommand::Kill { all, id, signal } => {
            let sig = container::parse_signal(signal)?;
            rt.kill(id, sig, *all)?;
            Ok(0)
        }
        RuntimeCommand::Delete { force, id } => {
            rt.delete(id, *force)?;
            Ok(0)
        }
        RuntimeCommand::Run {
            bundle,
            pid_file,
            console_socket,
            detach,
            preserve_fds,
            id,
            ..
        } => {
            if *detach {
                return Err(unsupported("run --detach (use create, then start)"));
            }
            Ok(rt.run(&CreateOptions {
                id: id.clone(),
                bundle: bundle.clone(),
                pid_file: pid_file.clone(),
                handover: Handover::Immediate,
                fds: pass_fds(*preserve_fds),
                console_socket: console_socket.clone(),
            })?)
        }
        RuntimeCommand::Exec {
            process,
            env,
            cwd,
            user,
            pid_file,
            preserve_fds,
            tty,
            detach,
            console_socket,
            id,
            args: cmd,
        } => {
            if process.is_none() && cmd.is_empty() {
                return Err(Failure(
                    "exec needs either --process FILE or a command".into(),
                ));
            }
            Ok(rt.exec(
                id,
                &ExecOptions {
                    process: process.clone(),
                    args: cmd.clone(),
                    env: env.clone(),
                    cwd: cwd.clone(),
                    user: user.as_deref().map(container::parse_user).transpose()?,
                    pid_file: pid_file.clone(),
                    fds: pass_fds(*preserve_fds),
                    tty: *tty,
                    console_socket: console_socket.clone(),
                    detach: *detach,
                },
            )?)
        }
        RuntimeCommand::Spec {
            bundle,
            rootless,
            args,
        } => {
            if *rootless {
                return Err(unsupported("spec --rootless"));
            }
            let path = bundle.join("config.json");
            if path.exists() {
                return Err(Failure(format!("{}: already exists", path.display())));
            }
            let args = if args.is_empty() {
                vec!["sh".to_string()]
            } else {
                args.clone()
            };
            let spec = gantry_agent::runtime::defaults::default_spec(args);
            let json = serde_json::to_vec_pretty(&spec).expect("spec serializes");
            std::fs::write(&path, json)
                .map_err(|e| Failure(format!("writing {}: {e}", path.display())))?;
            Ok(0)
        }
        RuntimeCommand::List { format, quiet } => {
            let list = rt.list()?;
            if *quiet {
                for (st, _) in &list {
                    println!("{}", st.id);
                }
                return Ok(0);
            }
            match format.as_str() {
                "json" => {
                    let v: Vec<serde_json::Value> = list
                        .iter()
                        .map(|(st, status)| {
                            serde_json::json!({
                                "ociVersion": st.oci_version, "id": st.id, "pid": st.pid,
                                "status": status.as_str(), "bundle": st.bundle,
                                "rootfs": st.bundle.join("rootfs"), "created": st.created,
                                "owner": "root",
                            })
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                }
                "table" => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|(st, status)| {
                            vec![
                                st.id.clone(),
                                st.pid.to_string(),
                                status.as_str().to_string(),
                                st.bundle.display().to_string(),
                                st.created.clone(),
                                "root".into(),
                            ]
                        })
                        .collect();
                    crate::output::table(
                        &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
                        &rows,
                    );
                }
                other => {
                    return Err(Failure(format!(
                        "--format: unknown format `{other}` (use table or json)"
                    )))
                }
            }
            Ok(0)
        }
    }
}

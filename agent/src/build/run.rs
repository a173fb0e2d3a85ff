//! `RUN` steps: the container a step runs in, and the runtime that runs it.
//!
//! Vocabulary:
//! - **run spec** ([`run_spec`]): the bundle's `config.json` — gantry's hardened default
//!   spec (`runtime::defaults`: Docker's capabilities and seccomp profile, masked and
//!   read-only paths, no_new_privileges) with the step's argv, env, user, working dir and
//!   network, and a writable root (the step's changes are the layer). Pure;
//! - **step runner** ([`StepRunner`]): runs a prepared bundle to completion, streaming its
//!   output. [`OciRuntimeRunner`] starts `gantry runtime run` (the runtime library in its
//!   own single-threaded process: the library clones, which a multi-threaded agent must
//!   not do) — any runc-compatible runtime works the same way.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::runtime::defaults::default_spec;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting the runtime {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the output of container {id}: {source}")]
    Output {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("--network {0}: unknown network mode (expected bridge, host or none)")]
    Network(String),
}

/// The network of `RUN` containers (`--network`; Docker's default is the bridge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A network namespace on the node's bridge, with NAT, as a container gets.
    #[default]
    Bridge,
    /// A new network namespace with only loopback.
    None,
    /// The host's network.
    Host,
}

impl NetworkMode {
    /// `bridge`, `host`, `none`; `default` and empty mean `bridge`, as in Docker.
    pub fn parse(s: &str) -> Result<NetworkMode, RunError> {
        match s {
            "" | "bridge" | "default" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            other => Err(RunError::Network(other.to_string())),
        }
    }
}

/// What one `RUN` runs.
#[derive(Debug, Clone)]
pub struct RunProcess {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub network: NetworkMode,
    /// The pinned network namespace to join (`none` and `bridge`); `None` with a mode
    /// other than `host`: the runtime makes a new, unconfigured one.
    pub netns: Option<PathBuf>,
    /// A file bind-mounted read-only at `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
}

/// The bundle config for a `RUN` (root at `rootfs`, relative to the bundle).
pub fn run_spec(p: &RunProcess, cgroups_path: &str) -> Value {
    let mut spec = serde_json::to_value(default_spec(p.argv.clone())).expect("spec serializes");
    spec["root"] = json!({ "path": "rootfs", "readonly": false });
    spec["hostname"] = json!("gantry-build");
    let process = &mut spec["process"];
    process["args"] = json!(p.argv);
    process["env"] = json!(p.env);
    process["cwd"] = json!(if p.cwd.is_empty() { "/" } else { &p.cwd });
    process["user"] = json!({ "uid": p.uid, "gid": p.gid });
    process["terminal"] = json!(false);
    let linux = &mut spec["linux"];
    linux["cgroupsPath"] = json!(cgroups_path);
    if let Some(ns) = linux["namespaces"].as_array_mut() {
        if p.network == NetworkMode::Host {
            ns.retain(|n| n["type"] != "network");
        } else if let Some(path) = &p.netns {
            for n in ns.iter_mut().filter(|n| n["type"] == "network") {
                n["path"] = json!(path);
            }
        }
    }
    if let Some(r) = &p.resolv_conf {
        if let Some(m) = spec["mounts"].as_array_mut() {
            m.push(json!({
                "destination": "/etc/resolv.conf",
                "type": "bind",
                "source": r,
                "options": ["rbind", "ro"],
            }));
        }
    }
    spec
}

/// Runs a prepared bundle (config.json + mounted rootfs) to completion.
pub trait StepRunner: Send + Sync {
    /// Returns the exit code (128+signal when killed); `output` gets stdout and stderr
    /// as they come.
    fn run(&self, id: &str, bundle: &Path, output: &mut dyn FnMut(&[u8])) -> Result<i32, RunError>;

    /// The cgroup a step's container is made under (`PARENT/build-run-…`): the agent's
    /// `--cgroup-parent` for builds it runs, `gantry` by default.
    fn cgroup_parent(&self) -> &str {
        crate::engine::DEFAULT_CGROUP_PARENT
    }
}

/// Runs bundles with a runc-compatible runtime command: `<program> <args…> --root <root>
/// run --bundle <bundle> <id>`.
#[derive(Debug, Clone)]
pub struct OciRuntimeRunner {
    pub program: PathBuf,
    /// Arguments before the runtime's own (`["runtime"]` for the gantry binary).
    pub args: Vec<String>,
    /// The runtime's state root.
    pub root: PathBuf,
    /// See [`StepRunner::cgroup_parent`].
    pub cgroup_parent: String,
}

impl OciRuntimeRunner {
    /// gantry's own runtime: `gantry-runtime` beside this binary, else this binary's
    /// `gantry runtime` (see [`crate::supervisor::programs`]).
    pub fn current_exe(root: PathBuf) -> io::Result<OciRuntimeRunner> {
        let p = crate::supervisor::programs::for_current_exe()?;
        Ok(OciRuntimeRunner {
            program: p.program,
            args: p.runtime_args,
            root,
            cgroup_parent: crate::engine::DEFAULT_CGROUP_PARENT.to_string(),
        })
    }
}

impl StepRunner for OciRuntimeRunner {
    fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    fn run(&self, id: &str, bundle: &Path, output: &mut dyn FnMut(&[u8])) -> Result<i32, RunError> {
        let (mut reader, writer) = io::pipe().map_err(|source| RunError::Output {
            id: id.to_string(),
            source,
        })?;
        let writer2 = writer.try_clone().map_err(|source| RunError::Output {
            id: id.to_string(),
            source,
        })?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .arg("--root")
            .arg(&self.root)
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2);
        let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        // Our copies of the write end are gone with `cmd`: EOF comes when the container
        // and the runtime have exited.
        drop(cmd);
        let mut buf = vec![0u8; 16 * 1024];
        let read_result = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => output(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let status = child.wait().map_err(|source| RunError::Output {
            id: id.to_string(),
            source,
        })?;
        read_result.map_err(|source| RunError::Output {
            id: id.to_string(),
            source,
        })?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(network: NetworkMode) -> RunProcess {
        RunProcess {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/src".into(),
            uid: 1000,
            gid: 100,
            network,
            netns: None,
            resolv_conf: None,
        }
    }

    #[test]
    fn run_spec_is_the_hardened_default_with_the_step_written_in() {
        let s = run_spec(&process(NetworkMode::None), "gantry/build-1");
        assert_eq!(s["process"]["args"][2], "echo hi");
        assert_eq!(s["process"]["env"][0], "PATH=/bin");
        assert_eq!(s["process"]["cwd"], "/src");
        assert_eq!(s["process"]["user"]["uid"], 1000);
        assert_eq!(s["process"]["user"]["gid"], 100);
        assert_eq!(s["root"]["readonly"], false);
        assert_eq!(s["linux"]["cgroupsPath"], "gantry/build-1");
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert!(s["linux"]["seccomp"].is_object(), "default seccomp kept");
        let caps = s["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network") && ns.contains(&"mount") && ns.contains(&"pid"));
        let host = run_spec(&process(NetworkMode::Host), "x");
        assert!(!host["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }

    #[test]
    fn a_pinned_netns_is_joined_and_resolv_conf_mounted_read_only() {
        let mut p = process(NetworkMode::Bridge);
        p.netns = Some("/b/netns".into());
        p.resolv_conf = Some("/b/resolv.conf".into());
        let s = run_spec(&p, "x");
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        let net: Vec<_> = ns.iter().filter(|n| n["type"] == "network").collect();
        assert_eq!(net.len(), 1);
        assert_eq!(net[0]["path"], "/b/netns");
        let m = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .expect("resolv.conf mounted");
        assert_eq!(m["source"], "/b/resolv.conf");
        assert!(m["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        // Without a pinned netns the runtime makes a fresh one; no resolv.conf mount.
        let s = run_spec(&process(NetworkMode::None), "x");
        assert!(s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network" && n.get("path").is_none()));
        assert!(!s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/resolv.conf"));
    }

    #[test]
    fn network_modes() {
        assert_eq!(NetworkMode::parse("none").unwrap(), NetworkMode::None);
        assert_eq!(NetworkMode::parse("host").unwrap(), NetworkMode::Host);
        assert_eq!(NetworkMode::parse("bridge").unwrap(), NetworkMode::Bridge);
        assert_eq!(NetworkMode::parse("").unwrap(), NetworkMode::Bridge);
        assert_eq!(NetworkMode::default(), NetworkMode::Bridge);
        let e = NetworkMode::parse("hots").unwrap_err().to_string();
        assert!(
            e.contains("--network hots") && e.contains("bridge, host or none"),
            "{e}"
        );
    }
}

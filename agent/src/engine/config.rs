//! Pure decisions of `create`: the image's run config merged with the user's flags (docker's
//! rules), and the parsers of flag values (`--memory`, `-v`, `--tmpfs`, `--cpus`, signals,
//! `-u`). Every error names the flag and the value.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::EngineError;

/// The parts of an image config that decide how a container runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub stop_signal: String,
}

/// The user's flags that override the image.
#[derive(Debug, Clone, Default)]
pub struct ProcessFlags {
    /// `--entrypoint` (Some(empty) clears the image's).
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
}

/// The container's process, decided at create time (the user is resolved at start, once
/// the root filesystem is mounted and its /etc/passwd readable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's merge: `--entrypoint` replaces the image's entrypoint and drops its cmd; args
/// given after the image replace the cmd; env is image then flags, later keys win; PATH
/// defaults when neither sets it.
pub fn merge_process(
    image: &ImageRunConfig,
    flags: &ProcessFlags,
) -> Result<ProcessConfig, EngineError> {
    let (entrypoint, image_cmd) = match &flags.entrypoint {
        Some(e) => (e.clone(), Vec::new()),
        None => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let cmd = if flags.cmd.is_empty() {
        image_cmd
    } else {
        flags.cmd.clone()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(EngineError::InvalidArgument {
            field: "command",
            value: String::new(),
            reason: "no command given and the image has no Entrypoint or Cmd".into(),
        });
    }
    let mut env: Vec<String> = Vec::new();
    for e in image.env.iter().chain(&flags.env) {
        let Some((k, _)) = e.split_once('=') else {
            return Err(EngineError::InvalidArgument {
                field: "--env",
                value: e.clone(),
                reason: "expected KEY=VALUE".into(),
            });
        };
        if k.is_empty() {
            return Err(EngineError::InvalidArgument {
                field: "--env",
                value: e.clone(),
                reason: "empty variable name".into(),
            });
        }
        env.retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k));
        env.push(e.clone());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = if !flags.workdir.is_empty() {
        flags.workdir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".to_string()
    };
    if !cwd.starts_with('/') {
        return Err(EngineError::InvalidArgument {
            field: "--workdir",
            value: cwd,
            reason: "must be an absolute path".into(),
        });
    }
    let user = if flags.user.is_empty() {
        image.user.clone()
    } else {
        flags.user.clone()
    };
    Ok(ProcessConfig {
        args,
        env,
        cwd,
        user,
    })
}

/// Limits from `--memory`, `--cpus`, `--pids-limit` (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_bytes: i64,
    pub cpus: f64,
    pub pids_limit: i64,
}

/// `--memory`: a number with an optional b/k/m/g suffix (docker's units, powers of 1024).
pub fn parse_memory(s: &str) -> Result<i64, EngineError> {
    let bad = |reason: &str| EngineError::InvalidArgument {
        field: "--memory",
        value: s.to_string(),
        reason: reason.to_string(),
    };
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('b') => (&t[..t.len() - 1], 1i64),
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some(c) if c.is_ascii_digit() => (&t[..], 1),
        _ => return Err(bad("expected a size like 64m, 512k or 1g")),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| bad("expected a size like 64m, 512k or 1g"))?;
    let bytes = n.checked_mul(mult).ok_or_else(|| bad("too large"))?;
    // The kernel refuses limits this small and the runtime's own init needs more.
    if bytes < 6 << 20 {
        return Err(bad("the minimum memory limit is 6m"));
    }
    Ok(bytes)
}

pub fn check_resources(r: &Resources) -> Result<(), EngineError> {
    if !(r.cpus >= 0.0 && r.cpus.is_finite()) {
        return Err(EngineError::InvalidArgument {
            field: "--cpus",
            value: r.cpus.to_string(),
            reason: "must be a positive number".into(),
        });
    }
    if r.pids_limit < 0 {
        return Err(EngineError::InvalidArgument {
            field: "--pids-limit",
            value: r.pids_limit.to_string(),
            reason: "must be positive".into(),
        });
    }
    Ok(())
}

/// A bind mount (`-v HOST:CTR[:ro]`) or a tmpfs (`--tmpfs CTR[:OPTS]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub kind: String,
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
    pub options: Vec<String>,
}

/// `-v HOST:CTR[:ro|rw]`: both absolute, the host path must exist.
pub fn parse_volume(s: &str) -> Result<MountSpec, EngineError> {
    let bad = |reason: String| EngineError::InvalidArgument {
        field: "--volume",
        value: s.to_string(),
        reason,
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (host, ctr, mode) = match parts.as_slice() {
        [h, c] => (*h, *c, "rw"),
        [h, c, m] => (*h, *c, *m),
        _ => return Err(bad("expected HOST:CONTAINER[:ro|rw]".into())),
    };
    if !host.starts_with('/') {
        return Err(bad(format!(
            "host path {host:?} must be absolute (named volumes are not supported)"
        )));
    }
    if !ctr.starts_with('/') || ctr == "/" {
        return Err(bad(format!(
            "container path {ctr:?} must be absolute and not /"
        )));
    }
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        m => return Err(bad(format!("unknown mode {m:?}: use ro or rw"))),
    };
    if !std::path::Path::new(host).exists() {
        return Err(bad(format!("host path {host} does not exist")));
    }
    Ok(MountSpec {
        kind: "bind".into(),
        source: PathBuf::from(host),
        destination: ctr.to_string(),
        read_only,
        options: Vec::new(),
    })
}

/// `--tmpfs CTR[:size=64m,mode=1777]`.
pub fn parse_tmpfs(s: &str) -> Result<MountSpec, EngineError> {
    let (dst, opts) = s.split_once(':').unwrap_or((s, ""));
    if !dst.starts_with('/') || dst == "/" {
        return Err(EngineError::InvalidArgument {
            field: "--tmpfs",
            value: s.to_string(),
            reason: "the path must be absolute and not /".into(),
        });
    }
    let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        let key = o.split('=').next().unwrap_or("");
        if ![
            "size",
            "mode",
            "uid",
            "gid",
            "nr_inodes",
            "exec",
            "noexec",
            "ro",
            "rw",
        ]
        .contains(&key)
        {
            return Err(EngineError::InvalidArgument {
                field: "--tmpfs",
                value: s.to_string(),
                reason: format!("unknown option {o:?}"),
            });
        }
        if o == "exec" {
            options.retain(|x| x != "noexec");
        } else {
            options.push(o.to_string());
        }
    }
    Ok(MountSpec {
        kind: "tmpfs".into(),
        source: PathBuf::from("tmpfs"),
        destination: dst.to_string(),
        read_only: false,
        options,
    })
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("STOP", libc::SIGSTOP),
    ("CONT", libc::SIGCONT),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("PIPE", libc::SIGPIPE),
];

/// A signal by name (`TERM`, `SIGTERM`, case-insensitive) or number.
pub fn parse_signal(field: &'static str, s: &str) -> Result<i32, EngineError> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| EngineError::InvalidArgument {
            field,
            value: s.to_string(),
            reason: "unknown signal".into(),
        })
}

/// `-u USER[:GROUP]` against the container's /etc/passwd and /etc/group contents: names or
/// numbers; a user name brings its primary group.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<(u32, u32), EngineError> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let bad = |reason: String| EngineError::InvalidArgument {
        field: "--user",
        value: spec.to_string(),
        reason,
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split(':').map(str::to_string).collect())
            .collect()
    };
    let users = entries(passwd);
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            users
                .iter()
                .find(|e| e.get(2).and_then(|x| x.parse().ok()) == Some(n))
                .and_then(|e| e.get(3)?.parse().ok())
                .unwrap_or(0),
        ),
        Err(_) => {
            let e = users
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(u))
                .ok_or_else(|| bad(format!("no user {u:?} in the container's /etc/passwd")))?;
            let uid = e.get(2).and_then(|x| x.parse().ok());
            let gid = e.get(3).and_then(|x| x.parse().ok());
            match (uid, gid) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(bad(format!("malformed /etc/passwd entry for {u:?}"))),
            }
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entries(group)
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(g))
                .and_then(|e| e.get(2)?.parse().ok())
                .ok_or_else(|| bad(format!("no group {g:?} in the container's /etc/group")))?,
        },
    };
    Ok((uid, gid))
}

/// A bridge container's `/etc/resolv.conf`: the host's, without loopback nameservers
/// (127.0.0.53 of systemd-resolved and the like are unreachable from another netns).
pub fn bridge_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or("");
            if addr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageRunConfig {
        ImageRunConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/img/bin".into(), "A=1".into()],
            working_dir: "/app".into(),
            user: "daemon".into(),
            ..Default::default()
        }
    }

    #[test]
    fn bridge_resolv_conf_drops_loopback_nameservers() {
        let host = "# c\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch x\n";
        assert_eq!(
            bridge_resolv_conf(host),
            "# c\nnameserver 10.0.0.2\nsearch x\n"
        );
    }

    #[test]
    fn merge_follows_docker_rules() {
        let p = merge_process(&img(), &ProcessFlags::default()).unwrap();
        assert_eq!(p.args, ["/entry", "serve", "--port=80"]);
        assert_eq!(p.env, ["PATH=/img/bin", "A=1"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/app", "daemon"));

        let flags = ProcessFlags {
            cmd: vec!["other".into()],
            env: vec!["A=2".into(), "B=3".into()],
            workdir: "/w".into(),
            user: "1000:1000".into(),
            ..Default::default()
        };
        let p = merge_process(&img(), &flags).unwrap();
        assert_eq!(p.args, ["/entry", "other"]);
        assert_eq!(p.env, ["PATH=/img/bin", "A=2", "B=3"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/w", "1000:1000"));

        // --entrypoint drops the image's cmd.
        let flags = ProcessFlags {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        };
        assert_eq!(merge_process(&img(), &flags).unwrap().args, ["/bin/sh"]);
    }

    #[test]
    fn merge_defaults_and_errors() {
        let p = merge_process(
            &ImageRunConfig::default(),
            &ProcessFlags {
                cmd: vec!["true".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.env, [DEFAULT_PATH]);
        assert_eq!(p.cwd, "/");
        let e = merge_process(&ImageRunConfig::default(), &ProcessFlags::default()).unwrap_err();
        assert!(e.to_string().contains("no command"), "{e}");
        let e = merge_process(
            &img(),
            &ProcessFlags {
                env: vec!["NOVALUE".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--env") && e.to_string().contains("NOVALUE"));
        let e = merge_process(
            &img(),
            &ProcessFlags {
                workdir: "rel".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--workdir"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("10485760").unwrap(), 10 << 20);
        for bad in ["", "lots", "12x", "-5m", "1k", "99999999999999999g"] {
            let e = parse_memory(bad).unwrap_err().to_string();
            assert!(e.contains("--memory"), "{bad}: {e}");
        }
    }

    #[test]
    fn volumes_and_tmpfs() {
        let v = parse_volume("/tmp:/data:ro").unwrap();
        assert_eq!(
            (
                v.source.to_str().unwrap(),
                v.destination.as_str(),
                v.read_only
            ),
            ("/tmp", "/data", true)
        );
        assert!(!parse_volume("/tmp:/data").unwrap().read_only);
        for bad in [
            "/tmp",
            "named:/data",
            "/tmp:rel",
            "/tmp:/d:rx",
            "/does/not/exist/x:/d",
            "/tmp:/",
        ] {
            let e = parse_volume(bad).unwrap_err().to_string();
            assert!(e.contains("--volume") && e.contains(bad), "{bad}: {e}");
        }
        let t = parse_tmpfs("/run:size=1m,exec").unwrap();
        assert!(t.options.contains(&"size=1m".to_string()));
        assert!(!t.options.contains(&"noexec".to_string()));
        assert!(parse_tmpfs("run").is_err());
        assert!(parse_tmpfs("/run:bogus=1").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("-s", "TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("-s", "sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("-s", "10").unwrap(), 10);
        assert!(parse_signal("-s", "NOPE")
            .unwrap_err()
            .to_string()
            .contains("-s"));
        assert!(parse_signal("-s", "99").is_err());
    }

    #[test]
    fn users() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\nbob:x:1000:100::/home/bob:/bin/sh\n";
        let group = "root:x:0:\nusers:x:100:\nstaff:x:50:\n";
        assert_eq!(resolve_user("", passwd, group).unwrap(), (0, 0));
        assert_eq!(resolve_user("bob", passwd, group).unwrap(), (1000, 100));
        assert_eq!(
            resolve_user("bob:staff", passwd, group).unwrap(),
            (1000, 50)
        );
        assert_eq!(resolve_user("1000", passwd, group).unwrap(), (1000, 100));
        assert_eq!(resolve_user("4242:7", passwd, group).unwrap(), (4242, 7));
        let e = resolve_user("alice", passwd, group)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--user") && e.contains("alice"), "{e}");
        assert!(resolve_user("bob:nogroup", passwd, group).is_err());
    }
}

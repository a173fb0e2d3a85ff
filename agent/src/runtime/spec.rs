//! Loading and checking a bundle: `config.json` parsed with oci-spec (errors name the field
//! path, e.g. `linux.namespaces[2].type`, and the line), then the checks oci-spec does not
//! do — root filesystem present, process args present, `args[0]` found in the root
//! filesystem through the spec's `PATH`. Everything here runs before any state, cgroup or
//! process exists, so a bad bundle leaves nothing behind.
//!
//! Vocabulary: the **bundle** is the directory holding `config.json`; the **rootfs** is the
//! spec's `root.path`, relative to the bundle unless absolute; the **executable** is
//! `args[0]` resolved to a path inside the rootfs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {bundle}: cannot read config.json: {source}")]
    Read {
        bundle: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: field `{field}`: {msg} (line {line}, column {column})")]
    Parse {
        file: PathBuf,
        field: String,
        msg: String,
        line: usize,
        column: usize,
    },
    #[error("{file}: field `{field}`: {msg}")]
    Invalid {
        file: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{file}: root.path: root filesystem {rootfs} does not exist or is not a directory")]
    MissingRootfs { file: PathBuf, rootfs: PathBuf },
    #[error(
        "{file}: process.args[0]: `{arg0}` not found in the root filesystem {rootfs} (PATH={path})"
    )]
    ExecutableNotFound {
        file: PathBuf,
        arg0: String,
        rootfs: PathBuf,
        path: String,
    },
}

/// A loaded bundle: the spec plus the resolved paths the runtime needs.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub spec: Spec,
    /// Absolute root filesystem on the host.
    pub rootfs: PathBuf,
}

/// Reads and parses `<bundle>/config.json`; field paths in errors come from
/// serde_path_to_error.
pub fn load(bundle: &Path) -> Result<Bundle, SpecError> {
    let dir = std::path::absolute(bundle).map_err(|source| SpecError::Read {
        bundle: bundle.to_path_buf(),
        source,
    })?;
    let config = dir.join("config.json");
    let bytes = std::fs::read(&config).map_err(|source| SpecError::Read {
        bundle: dir.clone(),
        source,
    })?;
    let spec = parse(&config, &bytes)?;
    let root = spec.root().as_ref().ok_or_else(|| SpecError::Invalid {
        file: config.clone(),
        field: "root".into(),
        msg: "missing".into(),
    })?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(SpecError::MissingRootfs {
            file: config,
            rootfs,
        });
    }
    let b = Bundle {
        dir,
        config,
        spec,
        rootfs,
    };
    validate(&b)?;
    Ok(b)
}

/// Parses spec JSON; the error names the field path and position.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<Spec, SpecError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, Spec>(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // serde_json appends " at line L column C"; keep the message short.
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        SpecError::Parse {
            file: file.to_path_buf(),
            field,
            msg,
            line: inner.line(),
            column: inner.column(),
        }
    })
}

fn invalid(b: &Bundle, field: impl Into<String>, msg: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        file: b.config.clone(),
        field: field.into(),
        msg: msg.into(),
    }
}

/// The checks oci-spec's types do not make.
fn validate(b: &Bundle) -> Result<(), SpecError> {
    let p = process(b)?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid(b, "process.args", "must hold at least one element"));
    }
    if !p.cwd().is_absolute() {
        return Err(invalid(
            b,
            "process.cwd",
            format!("{} is not an absolute path", p.cwd().display()),
        ));
    }
    for (i, m) in b.spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                b,
                format!("mounts[{i}].destination"),
                format!("{} is not an absolute path", m.destination().display()),
            ));
        }
    }
    if let Some(linux) = b.spec.linux() {
        let mut seen = Vec::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if seen.contains(&ns.typ()) {
                return Err(invalid(
                    b,
                    format!("linux.namespaces[{i}].type"),
                    format!("namespace {} listed twice", ns.typ()),
                ));
            }
            seen.push(ns.typ());
            if ns.typ() == LinuxNamespaceType::Time {
                return Err(invalid(
                    b,
                    format!("linux.namespaces[{i}].type"),
                    "time namespaces are not supported",
                ));
            }
            if let Some(path) = ns.path() {
                if !path.exists() {
                    return Err(invalid(
                        b,
                        format!("linux.namespaces[{i}].path"),
                        format!("{} does not exist", path.display()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The spec's process; `process` is required for `create`/`run`.
pub fn process(b: &Bundle) -> Result<&Process, SpecError> {
    b.spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid(b, "process", "missing"))
}

/// The value of `PATH` in a process environment (the OCI default when absent).
pub fn env_path(env: &[String]) -> String {
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string()
}

/// Resolves `arg0` to a path inside the container (e.g. `/bin/sh`) by looking in `rootfs`
/// along `path` (relative `arg0` with a slash is taken from `cwd`). Symlinks are followed
/// inside the rootfs, never out of it.
pub fn resolve_executable(rootfs: &Path, cwd: &Path, arg0: &str, path: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = if arg0.starts_with('/') {
        vec![PathBuf::from(arg0)]
    } else if arg0.contains('/') {
        vec![cwd.join(arg0)]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(arg0))
            .collect()
    };
    candidates
        .into_iter()
        .find(|c| is_executable_in(rootfs, c, 0))
}

/// Whether container path `p` is an executable file inside `rootfs`, resolving symlinks
/// against `rootfs` (an absolute link target means the container's `/`).
fn is_executable_in(rootfs: &Path, p: &Path, depth: u32) -> bool {
    if depth > 16 {
        return false;
    }
    let host = rootfs.join(p.strip_prefix("/").unwrap_or(p));
    let Ok(meta) = std::fs::symlink_metadata(&host) else {
        return false;
    };
    if meta.file_type().is_symlink() {
        let Ok(target) = std::fs::read_link(&host) else {
            return false;
        };
        let next = if target.is_absolute() {
            target
        } else {
            p.parent().unwrap_or(Path::new("/")).join(target)
        };
        return is_executable_in(rootfs, &next, depth + 1);
    }
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_names_field_and_line() {
        let json =
            br#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"bogus"}]}}"#;
        let e = parse(Path::new("/b/config.json"), json).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("linux.namespaces[1].type"), "{s}");
        assert!(s.contains("bogus"), "{s}");
        assert!(s.contains("line 1"), "{s}");
    }

    #[test]
    fn invalid_json_is_reported_with_position() {
        let e = parse(Path::new("/b/config.json"), b"{\n \"ociVersion\": ,}").unwrap_err();
        match e {
            SpecError::Parse { line, .. } => assert_eq!(line, 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn resolves_through_path_and_relative_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("busybox"), b"x").unwrap();
        std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", bin.join("abs")).unwrap();
        std::fs::write(bin.join("noexec"), b"x").unwrap();
        let r = |a: &str| resolve_executable(d.path(), Path::new("/"), a, "/usr/bin:/bin");
        assert_eq!(r("sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(r("abs"), Some(PathBuf::from("/bin/abs")));
        assert_eq!(r("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(r("noexec"), None);
        assert_eq!(r("missing"), None);
        assert_eq!(env_path(&["A=1".into(), "PATH=/x".into()]), "/x");
    }
}

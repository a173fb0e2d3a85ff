//! The pure planner: spec → [`SetupPlan`]. It decides which namespaces to create or join,
//! which mounts, device nodes and links to make in which order, and which paths to mask or
//! make read-only. It reads nothing from the system: what it needs to know about the host
//! (the cgroup layout, whether a user namespace is in play) comes in as arguments, so every
//! decision is unit-tested. [`super::rootfs`] carries the plan out through a
//! [`super::syscall::Syscall`].
//!
//! Vocabulary: a **step** is one filesystem action in container paths (`/dev/null`, never
//! `<rootfs>/dev/null`: the executor adds the rootfs prefix before `pivot_root`); a **device**
//! is a node made with `mknod`, or bind-mounted from the host inside a user namespace, where
//! `mknod` is refused.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Spec};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("field `{field}`: {msg}")]
    Unsupported { field: String, msg: String },
}

/// How the host's cgroup filesystem looks, for expanding a `cgroup` mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Unified hierarchy: mount `cgroup2` (with a cgroup namespace it shows the container's
    /// own group as its root).
    V2,
    /// v1: one hierarchy per directory under `root` (`cpu,cpuacct`, `memory` …) plus the
    /// compatibility links (`cpu` → `cpu,cpuacct`).
    V1 {
        root: PathBuf,
        hierarchies: Vec<String>,
        links: Vec<(String, String)>,
    },
}

/// One filesystem action, in container paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Creates the target (a directory, or an empty file when `file_target`) and mounts.
    /// `optional` steps are skipped when their bind source does not exist.
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
        file_target: bool,
        optional: bool,
    },
    /// A remount of an existing mount point (read-only binds need a second call).
    Remount {
        target: PathBuf,
        flags: MsFlags,
    },
    /// Sets the propagation type of a mount point.
    Propagation {
        target: PathBuf,
        flags: MsFlags,
    },
    Symlink {
        original: PathBuf,
        link: PathBuf,
    },
    Device(Device),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub kind: LinuxDeviceType,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bind-mount the host's node instead of `mknod` (user namespaces).
    pub bind: bool,
}

/// Everything the container's init does to namespaces and the filesystem, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupPlan {
    /// Namespaces created by `clone`.
    pub clone_flags: CloneFlags,
    /// Namespaces joined with `setns` (type flag, path), in the spec's order.
    pub join: Vec<(CloneFlags, PathBuf)>,
    pub user_namespace: bool,
    pub rootfs: PathBuf,
    /// Propagation applied to `/` first, so nothing the container mounts reaches the host.
    pub initial_propagation: MsFlags,
    /// Propagation of the container's `/` after `pivot_root` (the spec's rootfsPropagation).
    pub rootfs_propagation: Option<MsFlags>,
    /// Before `pivot_root`: spec mounts, devices, links.
    pub steps: Vec<Step>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub readonly_root: bool,
    pub hostname: Option<String>,
    /// Whether `/proc` is mounted in the container (the create barrier reopens its fifo
    /// through `/proc/self/fd`).
    pub has_proc: bool,
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

/// The parsed `options` of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    /// Filesystem-specific options (`mode=755`, `size=65536k` …), comma-joined.
    pub data: Vec<String>,
}

/// Splits OCI mount options into mount flags, propagation flags and filesystem data.
pub fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in options {
        let (clear, flag) = match opt.as_str() {
            "defaults" => (false, MsFlags::empty()),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "suid" => (true, MsFlags::MS_NOSUID),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "dev" => (true, MsFlags::MS_NODEV),
            "nodev" => (false, MsFlags::MS_NODEV),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "atime" => (true, MsFlags::MS_NOATIME),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let mut p = match opt.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if opt.starts_with('r') {
                    p |= MsFlags::MS_REC;
                }
                o.propagation = p;
                continue;
            }
            // runc's own extensions that do not map to mount(2).
            "tmpcopyup" | "idmap" | "ridmap" => continue,
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        if clear {
            o.flags.remove(flag);
        } else {
            o.flags.insert(flag);
        }
    }
    o
}

fn propagation_flags(s: &str) -> Option<MsFlags> {
    Some(match s {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// The devices every container gets (OCI runtime spec, "Default Devices").
pub const DEFAULT_DEVICES: [(&str, i64, i64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Input of [`plan`] besides the spec.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    /// The container's cgroup path relative to each hierarchy root (`gantry/<id>`).
    pub cgroups_path: &'a str,
    pub cgroup_layout: &'a CgroupLayout,
}

/// Builds the set-up plan. Fails on what the runtime cannot do, naming the field.
pub fn plan(input: &PlanInput) -> Result<SetupPlan, PlanError> {
    let spec = input.spec;
    let linux = spec.linux().as_ref();
    let mut clone_flags = CloneFlags::empty();
    let mut join = Vec::new();
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        match ns.path() {
            Some(p) => join.push((ns_flag(ns.typ()), p.clone())),
            None => clone_flags |= ns_flag(ns.typ()),
        }
    }
    let user_namespace = clone_flags.contains(CloneFlags::CLONE_NEWUSER)
        || join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUSER);
    if !clone_flags.contains(CloneFlags::CLONE_NEWNS) {
        return Err(PlanError::Unsupported {
            field: "linux.namespaces".into(),
            msg: "gantry runtime needs a new mount namespace (add {\"type\": \"mount\"})".into(),
        });
    }
    if join
        .iter()
        .any(|(f, _)| *f == CloneFlags::CLONE_NEWUSER || *f == CloneFlags::CLONE_NEWPID)
    {
        return Err(PlanError::Unsupported {
            field: "linux.namespaces[].path".into(),
            msg: "joining an existing user or pid namespace is not supported".into(),
        });
    }

    let rootfs_propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        None | Some("") => None,
        Some(s) => Some(propagation_flags(s).ok_or_else(|| PlanError::Unsupported {
            field: "linux.rootfsPropagation".into(),
            msg: format!("unknown propagation `{s}`"),
        })?),
    };
    // Shared propagation on `/` would leak the container's mounts to the host: start as a
    // slave in that case and set shared after pivot_root, like runc.
    let initial_propagation = match rootfs_propagation {
        Some(p) if p.contains(MsFlags::MS_SHARED) || p.contains(MsFlags::MS_SLAVE) => {
            MsFlags::MS_SLAVE | MsFlags::MS_REC
        }
        _ => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
    };

    let mut steps = Vec::new();
    let mut has_proc = false;
    let mut has_devpts = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let o = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
        let fstype = m.typ().clone().filter(|t| !t.is_empty());
        let dest = m.destination().clone();
        if fstype.as_deref() == Some("cgroup") || fstype.as_deref() == Some("cgroup2") {
            cgroup_steps(
                &mut steps,
                &dest,
                &o,
                input.cgroups_path,
                input.cgroup_layout,
            );
            continue;
        }
        let is_bind = o.flags.contains(MsFlags::MS_BIND) || fstype.as_deref() == Some("bind");
        if fstype.as_deref() == Some("proc") && dest == Path::new("/proc") {
            has_proc = true;
        }
        if fstype.as_deref() == Some("devpts") && dest == Path::new("/dev/pts") {
            has_devpts = true;
        }
        let source = match m.source() {
            Some(s) if is_bind && s.is_relative() => Some(input.bundle.join(s)),
            Some(s) => Some(s.clone()),
            None if is_bind => {
                return Err(PlanError::Unsupported {
                    field: format!("mounts[{i}].source"),
                    msg: "a bind mount needs a source".into(),
                })
            }
            None => fstype.clone().map(PathBuf::from),
        };
        let mut flags = o.flags;
        if is_bind {
            flags |= MsFlags::MS_BIND;
        }
        let data = (!o.data.is_empty()).then(|| o.data.join(","));
        steps.push(Step::Mount {
            source,
            target: dest.clone(),
            fstype: if is_bind { None } else { fstype },
            // A bind ignores every flag but MS_BIND|MS_REC: the rest needs a remount.
            flags: if is_bind {
                flags & (MsFlags::MS_BIND | MsFlags::MS_REC)
            } else {
                flags
            },
            data: if is_bind { None } else { data },
            file_target: false,
            optional: false,
        });
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if is_bind && !extra.is_empty() {
            steps.push(Step::Remount {
                target: dest.clone(),
                flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            });
        }
        if !o.propagation.is_empty() {
            steps.push(Step::Propagation {
                target: dest,
                flags: o.propagation,
            });
        }
    }

    let mut devices: Vec<Device> = DEFAULT_DEVICES
        .iter()
        .map(|(p, major, minor)| Device {
            path: PathBuf::from(p),
            kind: LinuxDeviceType::C,
            major: *major,
            minor: *minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
            bind: user_namespace,
        })
        .collect();
    for (i, d) in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !d.path().starts_with("/dev") {
            return Err(PlanError::Unsupported {
                field: format!("linux.devices[{i}].path"),
                msg: format!("{} is not under /dev", d.path().display()),
            });
        }
        let dev = Device {
            path: d.path().clone(),
            kind: d.typ(),
            major: d.major(),
            minor: d.minor(),
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
            bind: user_namespace,
        };
        match devices.iter_mut().find(|x| x.path == dev.path) {
            Some(x) => *x = dev,
            None => devices.push(dev),
        }
    }
    steps.extend(devices.into_iter().map(Step::Device));
    let mut links = vec![
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    if has_devpts {
        links.push(("pts/ptmx", "/dev/ptmx"));
    }
    steps.extend(links.into_iter().map(|(o, l)| Step::Symlink {
        original: o.into(),
        link: l.into(),
    }));

    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if hostname.is_some() && !clone_flags.contains(CloneFlags::CLONE_NEWUTS) {
        return Err(PlanError::Unsupported {
            field: "hostname".into(),
            msg: "setting a hostname needs a new uts namespace".into(),
        });
    }
    Ok(SetupPlan {
        clone_flags,
        join,
        user_namespace,
        rootfs: input.rootfs.to_path_buf(),
        initial_propagation,
        rootfs_propagation,
        steps,
        masked_paths: linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        hostname,
        has_proc,
    })
}

/// A `cgroup` mount: cgroup2 on v2; on v1 a tmpfs with one bind mount of the container's
/// own group per hierarchy (what runc shows), made read-only at the end when asked.
fn cgroup_steps(
    steps: &mut Vec<Step>,
    dest: &Path,
    o: &MountOptions,
    cgroups_path: &str,
    layout: &CgroupLayout,
) {
    let base = o.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    match layout {
        CgroupLayout::V2 => steps.push(Step::Mount {
            source: Some("cgroup2".into()),
            target: dest.to_path_buf(),
            fstype: Some("cgroup2".into()),
            flags: o.flags,
            data: None,
            file_target: false,
            optional: false,
        }),
        CgroupLayout::V1 {
            root,
            hierarchies,
            links,
        } => {
            steps.push(Step::Mount {
                source: Some("tmpfs".into()),
                target: dest.to_path_buf(),
                fstype: Some("tmpfs".into()),
                flags: base,
                data: Some("mode=755".into()),
                file_target: false,
                optional: false,
            });
            let rel = cgroups_path.trim_start_matches('/');
            for h in hierarchies {
                let target = dest.join(h);
                steps.push(Step::Mount {
                    source: Some(root.join(h).join(rel)),
                    target: target.clone(),
                    fstype: None,
                    flags: MsFlags::MS_BIND,
                    data: None,
                    file_target: false,
                    optional: true,
                });
                steps.push(Step::Remount {
                    target,
                    flags: MsFlags::MS_BIND
                        | MsFlags::MS_REMOUNT
                        | base
                        | (o.flags & MsFlags::MS_RDONLY),
                });
            }
            for (link, to) in links {
                steps.push(Step::Symlink {
                    original: to.into(),
                    link: dest.join(link),
                });
            }
            if o.flags.contains(MsFlags::MS_RDONLY) {
                steps.push(Step::Remount {
                    target: dest.to_path_buf(),
                    flags: MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
        "hostname":"box",
        "mounts":[
          {"destination":"/proc","type":"proc","source":"proc"},
          {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
          {"destination":"/dev/pts","type":"devpts","source":"devpts","options":["nosuid","noexec","newinstance","ptmxmode=0666"]},
          {"destination":"/data","type":"bind","source":"data","options":["rbind","ro","nosuid","rprivate"]},
          {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","noexec","nodev","relatime","ro"]}
        ],
        "linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"network","path":"/run/netns/x"}],
          "maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],
          "devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}]}}"#;

    fn v1() -> CgroupLayout {
        CgroupLayout::V1 {
            root: "/sys/fs/cgroup".into(),
            hierarchies: vec!["memory".into(), "cpu,cpuacct".into()],
            links: vec![("cpu".into(), "cpu,cpuacct".into())],
        }
    }

    fn run(json: &str, layout: &CgroupLayout) -> Result<SetupPlan, PlanError> {
        let s = spec(json);
        plan(&PlanInput {
            spec: &s,
            bundle: Path::new("/b"),
            rootfs: Path::new("/b/rootfs"),
            cgroups_path: "gantry/c1",
            cgroup_layout: layout,
        })
    }

    #[test]
    fn namespaces_split_into_clone_and_join() {
        let p = run(BASE, &v1()).unwrap();
        assert_eq!(
            p.clone_flags,
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS
        );
        assert_eq!(
            p.join,
            vec![(CloneFlags::CLONE_NEWNET, PathBuf::from("/run/netns/x"))]
        );
        assert!(!p.user_namespace);
        assert!(p.readonly_root);
        assert!(p.has_proc);
        assert_eq!(p.hostname.as_deref(), Some("box"));
        assert_eq!(p.initial_propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    }

    #[test]
    fn mount_options_become_flags_and_data() {
        let o = parse_mount_options(&[
            "nosuid".into(),
            "ro".into(),
            "rw".into(),
            "mode=755".into(),
            "rslave".into(),
            "noexec".into(),
            "exec".into(),
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID);
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755".to_string()]);
    }

    #[test]
    fn ro_bind_gets_a_remount_and_relative_source_is_from_bundle() {
        let p = run(BASE, &v1()).unwrap();
        let i = p
            .steps
            .iter()
            .position(|s| matches!(s, Step::Mount { target, .. } if target == Path::new("/data")))
            .unwrap();
        assert_eq!(
            p.steps[i],
            Step::Mount {
                source: Some("/b/data".into()),
                target: "/data".into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
                file_target: false,
                optional: false,
            }
        );
        assert_eq!(
            p.steps[i + 1],
            Step::Remount {
                target: "/data".into(),
                flags: MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
            }
        );
        assert_eq!(
            p.steps[i + 2],
            Step::Propagation {
                target: "/data".into(),
                flags: MsFlags::MS_PRIVATE | MsFlags::MS_REC
            }
        );
    }

    #[test]
    fn tmpfs_keeps_its_data() {
        let p = run(BASE, &v1()).unwrap();
        assert!(p.steps.contains(&Step::Mount {
            source: Some("tmpfs".into()),
            target: "/dev".into(),
            fstype: Some("tmpfs".into()),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            data: Some("mode=755,size=65536k".into()),
            file_target: false,
            optional: false,
        }));
    }

    #[test]
    fn cgroup_v1_is_tmpfs_plus_own_group_binds() {
        let p = run(BASE, &v1()).unwrap();
        assert!(p.steps.contains(&Step::Mount {
            source: Some("/sys/fs/cgroup/memory/gantry/c1".into()),
            target: "/sys/fs/cgroup/memory".into(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
            file_target: false,
            optional: true,
        }));
        assert!(p.steps.contains(&Step::Symlink {
            original: "cpu,cpuacct".into(),
            link: "/sys/fs/cgroup/cpu".into()
        }));
        assert!(p.steps.contains(&Step::Remount {
            target: "/sys/fs/cgroup".into(),
            flags: MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
        }));
        let p2 = run(BASE, &CgroupLayout::V2).unwrap();
        assert!(p2.steps.iter().any(|s| matches!(s,
            Step::Mount { fstype: Some(t), target, .. } if t == "cgroup2" && target == Path::new("/sys/fs/cgroup"))));
    }

    #[test]
    fn default_devices_links_and_spec_devices() {
        let p = run(BASE, &v1()).unwrap();
        let devs: Vec<&Device> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Device(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(devs.len(), 7);
        assert!(devs
            .iter()
            .any(|d| d.path == Path::new("/dev/null") && d.major == 1 && d.minor == 3 && !d.bind));
        assert!(devs
            .iter()
            .any(|d| d.path == Path::new("/dev/fuse") && d.major == 10));
        assert!(p.steps.contains(&Step::Symlink {
            original: "pts/ptmx".into(),
            link: "/dev/ptmx".into()
        }));
        assert!(p.steps.contains(&Step::Symlink {
            original: "/proc/self/fd".into(),
            link: "/dev/fd".into()
        }));
    }

    #[test]
    fn user_namespace_binds_devices() {
        let json = BASE.replace(r#"{"type":"pid"}"#, r#"{"type":"pid"},{"type":"user"}"#);
        let p = run(&json, &v1()).unwrap();
        assert!(p.user_namespace);
        assert!(p
            .steps
            .iter()
            .all(|s| !matches!(s, Step::Device(d) if !d.bind)));
    }

    #[test]
    fn refusals_name_the_field() {
        let no_mnt = BASE.replace(r#"{"type":"mount"},"#, "");
        assert_eq!(
            run(&no_mnt, &v1()).unwrap_err(),
            PlanError::Unsupported {
                field: "linux.namespaces".into(),
                msg: "gantry runtime needs a new mount namespace (add {\"type\": \"mount\"})"
                    .into()
            }
        );
        let bad_prop = BASE.replace(
            r#""maskedPaths""#,
            r#""rootfsPropagation":"sideways","maskedPaths""#,
        );
        let e = run(&bad_prop, &v1()).unwrap_err();
        assert!(e.to_string().contains("linux.rootfsPropagation"), "{e}");
        let no_uts = BASE.replace(r#"{"type":"uts"},"#, "");
        assert!(run(&no_uts, &v1())
            .unwrap_err()
            .to_string()
            .contains("hostname"));
    }
}

//! Carries out a [`SetupPlan`]'s filesystem part through a [`Syscall`], in the container's
//! init (its own mount namespace): [`prepare`] before `pivot_root` (propagation, the rootfs
//! bind, spec mounts, devices, links — targets prefixed with the rootfs), [`pivot`], then
//! [`finish`] inside the new root (rootfs propagation, masked and read-only paths,
//! read-only `/`).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::LinuxDeviceType;

use super::plan::{SetupPlan, Step};
use super::syscall::{FileKind, Syscall, SyscallError};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("setting up {what} {path}: {source}")]
    Step {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: SyscallError,
    },
}

fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(SyscallError) -> RootfsError + 'a {
    move |source| RootfsError::Step {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `rootfs` + container path.
pub fn host_path(rootfs: &Path, p: &Path) -> PathBuf {
    rootfs.join(p.strip_prefix("/").unwrap_or(p))
}

/// Everything before `pivot_root`.
pub fn prepare(sys: &dyn Syscall, plan: &SetupPlan) -> Result<(), RootfsError> {
    let root = Path::new("/");
    sys.mount(None, root, None, plan.initial_propagation, None)
        .map_err(at("propagation of", root))?;
    // pivot_root needs the new root to be a mount point.
    sys.mount(
        Some(&plan.rootfs),
        &plan.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(at("rootfs bind", &plan.rootfs))?;
    let mut skipped = Vec::new();
    for step in &plan.steps {
        run_step(sys, &plan.rootfs, step, &mut skipped)?;
    }
    Ok(())
}

/// `skipped` collects optional mounts left out, so their remounts are left out too.
fn run_step(
    sys: &dyn Syscall,
    rootfs: &Path,
    step: &Step,
    skipped: &mut Vec<PathBuf>,
) -> Result<(), RootfsError> {
    match step {
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
            file_target,
            optional,
        } => {
            let host = host_path(rootfs, target);
            let is_bind = flags.contains(MsFlags::MS_BIND);
            let src_kind = match (is_bind, source) {
                (true, Some(s)) => sys.file_kind(s),
                _ => FileKind::Dir,
            };
            if *optional && src_kind == FileKind::Missing {
                skipped.push(target.clone());
                return Ok(());
            }
            if *file_target || src_kind == FileKind::File {
                sys.create_file(&host).map_err(at("mount target", target))?;
            } else {
                sys.mkdir_all(&host).map_err(at("mount target", target))?;
            }
            sys.mount(
                source.as_deref(),
                &host,
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            )
            .map_err(at("mount", target))
        }
        Step::Remount { target, flags } => {
            if skipped.contains(target) {
                return Ok(());
            }
            sys.mount(None, &host_path(rootfs, target), None, *flags, None)
                .map_err(at("remount", target))
        }
        Step::Propagation { target, flags } => sys
            .mount(None, &host_path(rootfs, target), None, *flags, None)
            .map_err(at("propagation of", target)),
        Step::Symlink { original, link } => match sys.symlink(original, &host_path(rootfs, link)) {
            Err(e) if e.source == nix::Error::EEXIST => Ok(()),
            r => r.map_err(at("link", link)),
        },
        Step::Device(d) => {
            let host = host_path(rootfs, &d.path);
            if let Some(parent) = host.parent() {
                sys.mkdir_all(parent).map_err(at("device dir", &d.path))?;
            }
            if d.bind {
                sys.create_file(&host).map_err(at("device", &d.path))?;
                return sys
                    .mount(Some(&d.path), &host, None, MsFlags::MS_BIND, None)
                    .map_err(at("device bind", &d.path));
            }
            let kind = match d.kind {
                LinuxDeviceType::B => SFlag::S_IFBLK,
                LinuxDeviceType::P => SFlag::S_IFIFO,
                _ => SFlag::S_IFCHR,
            };
            let dev = nix::sys::stat::makedev(d.major as u64, d.minor as u64);
            match sys.mknod(&host, kind, Mode::from_bits_truncate(d.mode), dev) {
                Err(e) if e.source == nix::Error::EEXIST => return Ok(()),
                r => r.map_err(at("device", &d.path))?,
            }
            // (init runs with umask 0, so the mode is exact)
            sys.chown(
                &host,
                Some(Uid::from_raw(d.uid)),
                Some(Gid::from_raw(d.gid)),
            )
            .map_err(at("device owner", &d.path))
        }
    }
}

/// `pivot_root(".", ".")` then detach the old root stacked on top: no `put_old` dir needed.
pub fn pivot(sys: &dyn Syscall, rootfs: &Path) -> Result<(), RootfsError> {
    let dot = Path::new(".");
    sys.chdir(rootfs).map_err(at("chdir to", rootfs))?;
    sys.pivot_root(dot, dot).map_err(at("pivot_root", rootfs))?;
    sys.umount2(dot, MntFlags::MNT_DETACH)
        .map_err(at("detaching old root of", rootfs))?;
    sys.chdir(Path::new("/"))
        .map_err(at("chdir to", Path::new("/")))
}

/// Everything after `pivot_root`, in container paths.
pub fn finish(sys: &dyn Syscall, plan: &SetupPlan) -> Result<(), RootfsError> {
    let root = Path::new("/");
    if let Some(p) = plan.rootfs_propagation {
        sys.mount(None, root, None, p, None)
            .map_err(at("propagation of", root))?;
    }
    for p in &plan.readonly_paths {
        if sys.file_kind(p) == FileKind::Missing {
            continue;
        }
        sys.mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
            .map_err(at("read-only path", p))?;
        sys.mount(
            None,
            p,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )
        .map_err(at("read-only path", p))?;
    }
    for p in &plan.masked_paths {
        match sys.file_kind(p) {
            FileKind::Missing => {}
            FileKind::Dir => sys
                .mount(
                    Some(Path::new("tmpfs")),
                    p,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                )
                .map_err(at("masked path", p))?,
            FileKind::File => sys
                .mount(
                    Some(Path::new("/dev/null")),
                    p,
                    None,
                    MsFlags::MS_BIND,
                    None,
                )
                .map_err(at("masked path", p))?,
        }
    }
    if plan.readonly_root {
        sys.mount(
            None,
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )
        .map_err(at("read-only root", root))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::plan::{plan, CgroupLayout, PlanInput};
    use super::super::syscall::{Call, FakeSyscall};
    use super::*;

    fn setup() -> SetupPlan {
        let spec: oci_spec::runtime::Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
              {"destination":"/etc/hosts","type":"bind","source":"/etc/hosts","options":["bind","ro"]}],
            "linux":{"namespaces":[{"type":"mount"}],
              "maskedPaths":["/proc/kcore","/proc/acpi","/proc/none"],"readonlyPaths":["/proc/sys"]}}"#,
        )
        .unwrap();
        plan(&PlanInput {
            spec: &spec,
            bundle: Path::new("/b"),
            rootfs: Path::new("/b/rootfs"),
            cgroups_path: "gantry/x",
            cgroup_layout: &CgroupLayout::V2,
        })
        .unwrap()
    }

    fn mount_targets(calls: &[Call]) -> Vec<PathBuf> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, .. } => Some(target.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn prepare_makes_root_private_binds_rootfs_then_mounts_in_order() {
        let sys = FakeSyscall::new();
        sys.set_kind("/etc/hosts", FileKind::File);
        let p = setup();
        prepare(&sys, &p).unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls[0],
            Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                data: None
            }
        );
        let t = mount_targets(&calls);
        assert_eq!(
            &t[..5],
            &[
                PathBuf::from("/"),
                "/b/rootfs".into(),
                "/b/rootfs/proc".into(),
                "/b/rootfs/etc/hosts".into(),
                "/b/rootfs/etc/hosts".into()
            ]
        );
        // a file bind gets a file target, a read-only bind a remount
        assert!(calls.contains(&Call::CreateFile("/b/rootfs/etc/hosts".into())));
        assert!(calls.contains(&Call::Mount {
            source: None,
            target: "/b/rootfs/etc/hosts".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            data: None
        }));
        assert!(calls.contains(&Call::Mknod(
            "/b/rootfs/dev/null".into(),
            SFlag::S_IFCHR,
            0o666,
            nix::sys::stat::makedev(1, 3)
        )));
        assert!(calls.contains(&Call::Symlink(
            "/proc/self/fd/2".into(),
            "/b/rootfs/dev/stderr".into()
        )));
    }

    #[test]
    fn pivot_uses_dot_dot_and_detaches() {
        let sys = FakeSyscall::new();
        pivot(&sys, Path::new("/b/rootfs")).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Chdir("/b/rootfs".into()),
                Call::PivotRoot(".".into(), ".".into()),
                Call::Umount2(".".into(), MntFlags::MNT_DETACH),
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn finish_masks_by_kind_and_makes_root_readonly_last() {
        let sys = FakeSyscall::new();
        sys.set_kind("/proc/kcore", FileKind::File);
        sys.set_kind("/proc/acpi", FileKind::Dir);
        sys.set_kind("/proc/sys", FileKind::Dir);
        finish(&sys, &setup()).unwrap();
        let calls = sys.calls();
        assert!(calls.contains(&Call::Mount {
            source: Some("/dev/null".into()),
            target: "/proc/kcore".into(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None
        }));
        assert!(calls.contains(&Call::Mount {
            source: Some("tmpfs".into()),
            target: "/proc/acpi".into(),
            fstype: Some("tmpfs".into()),
            flags: MsFlags::MS_RDONLY,
            data: None
        }));
        assert!(!mount_targets(&calls).contains(&PathBuf::from("/proc/none")));
        assert!(calls.contains(&Call::Mount {
            source: None,
            target: "/proc/sys".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            data: None
        }));
        assert_eq!(
            calls.last().unwrap(),
            &Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                data: None
            }
        );
    }

    #[test]
    fn a_failed_mount_names_the_container_path() {
        let sys = FakeSyscall::new();
        sys.fail_mount_at("/b/rootfs/proc");
        let e = prepare(&sys, &setup()).unwrap_err();
        assert!(e.to_string().contains("mount /proc"), "{e}");
    }
}

//! gantry's default, hardened OCI spec (`gantry runtime spec`, and what the engine starts from).
//!
//! Vocabulary:
//! - **default spec**: what `runc spec` writes (namespaces pid, network, ipc, uts, mount,
//!   cgroup; mounts proc, /dev tmpfs, devpts, shm, mqueue, sysfs ro, cgroup ro; rootfs
//!   `rootfs`, read-only; args `["sh"]`; env PATH and TERM), hardened as Docker hardens a
//!   container: Docker's default capability set, Docker's default seccomp profile, masked and
//!   read-only paths, `noNewPrivileges`, RLIMIT_NOFILE 1024, and a device cgroup that denies
//!   everything the runtime does not add itself. `cgroupsPath` is left for the caller.
//! - **default seccomp profile**: the allow-list of moby's `profiles/seccomp/default.json`
//!   (default action ERRNO(EPERM)), resolved for one capability set and the host's
//!   architecture the way Docker resolves its `includes`/`excludes` when it creates a
//!   container: syscall groups gated on a capability are allowed only when the container has
//!   that capability, and `clone` is restricted by flags (no new namespaces) unless it has
//!   CAP_SYS_ADMIN.

use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, LinuxSeccomp,
    LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// The `PATH` every default container starts with (the same as runc's and Docker's).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths Docker and runc mask in every container (a bind of /dev/null over files, an empty
/// read-only tmpfs over directories): they leak host information or control host hardware.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker and runc remount read-only in every container.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The spec `gantry runtime spec` writes: runc's default spec with Docker's hardening.
/// `linux.cgroupsPath` is unset: the caller names the container's cgroup.
pub fn default_spec(args: Vec<String>) -> Spec {
    let caps: oci_spec::runtime::Capabilities = default_capabilities().into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        // Docker leaves inheritable and ambient empty (CVE-2022-24769): an exec'd set-uid-less
        // program must not pick up capabilities through the inheritable set.
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .expect("static capabilities are valid");
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .expect("static user"),
        )
        .args(args)
        .env(vec![DEFAULT_PATH.to_string(), "TERM=xterm".to_string()])
        .cwd("/")
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()
            .expect("static rlimit")])
        .no_new_privileges(true)
        .build()
        .expect("static process is valid");

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .expect("static namespace")
    })
    .collect::<Vec<_>>();

    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("static device rule")])
        .build()
        .expect("static resources");

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .seccomp(default_seccomp())
        .build()
        .expect("static linux section");

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(true)
                .build()
                .expect("static root"),
        )
        .hostname("gantry")
        .mounts(default_mounts())
        .process(process)
        .linux(linux)
        .build()
        .expect("static spec is valid")
}

fn default_mounts() -> Vec<oci_spec::runtime::Mount> {
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .expect("static mount")
    };
    vec![
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// Docker's default capability set (moby `oci/caps/defaults.go`), in its order.
pub fn default_capabilities() -> Vec<Capability> {
    vec![
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
}

/// Docker's default seccomp profile resolved for [`default_capabilities`].
pub fn default_seccomp() -> LinuxSeccomp {
    seccomp_for_capabilities(&default_capabilities())
}

/// Syscalls moby's default profile allows unconditionally (its first, arch- and
/// capability-independent group). Names that do not exist on the host architecture are
/// skipped when the profile is compiled.
pub const DEFAULT_ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // moby allows these on kernels >= 4.8 (where seccomp can no longer be bypassed with
    // ptrace); gantry needs a newer kernel anyway.
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

/// Syscall groups moby's profile allows only to containers holding a capability.
const CAPABILITY_GATED: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The namespace flags moby's profile forbids in `clone` for containers without
/// CAP_SYS_ADMIN: CLONE_NEWNS | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWCGROUP
/// (= 2114060288). `clone` is allowed when `flags & mask == 0`.
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Personalities moby allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the
/// query value 0xffffffff.
const ALLOWED_PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// moby's default profile resolved for a container holding `caps` on the host architecture.
pub fn seccomp_for_capabilities(caps: &[Capability]) -> LinuxSeccomp {
    let has = |c: Capability| caps.contains(&c);
    let allow = |names: Vec<String>| -> LinuxSyscall {
        LinuxSyscallBuilder::default()
            .names(names)
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .expect("static syscall rule")
    };
    let eq_arg = |index: usize, value: u64, op: LinuxSeccompOperator| {
        LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op)
            .build()
            .expect("static seccomp arg")
    };

    let mut always: Vec<String> = DEFAULT_ALLOWED_SYSCALLS
        .iter()
        .map(|s| s.to_string())
        .collect();
    always.extend(arch_specific_syscalls().iter().map(|s| s.to_string()));
    let mut syscalls = vec![allow(always)];

    // socket: everything but AF_VSOCK (40).
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["socket".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![eq_arg(0, 40, LinuxSeccompOperator::ScmpCmpNe)])
            .build()
            .expect("static syscall rule"),
    );
    for &p in ALLOWED_PERSONALITIES {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["personality".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![eq_arg(0, p, LinuxSeccompOperator::ScmpCmpEq)])
                .build()
                .expect("static syscall rule"),
        );
    }

    for (cap, names) in CAPABILITY_GATED {
        if has(*cap) {
            syscalls.push(allow(names.iter().map(|s| s.to_string()).collect()));
        }
    }

    if !has(Capability::SysAdmin) {
        // clone without namespace flags (s390 passes flags in arg 1; gantry does not run
        // there). clone3 passes flags in memory seccomp cannot read: answer ENOSYS so libc
        // falls back to clone, which the rule above can check.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(CLONE_NAMESPACE_FLAGS)
                    .value_two(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()
                    .expect("static seccomp arg")])
                .build()
                .expect("static syscall rule"),
        );
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()
                .expect("static syscall rule"),
        );
    }

    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(host_architectures())
        .syscalls(syscalls)
        .build()
        .expect("static seccomp profile")
}

/// Syscalls moby allows only on some architectures (its `includes.arches`).
fn arch_specific_syscalls() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "aarch64") {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else if cfg!(target_arch = "riscv64") {
        &["riscv_flush_icache"]
    } else {
        &[]
    }
}

/// The architectures moby lists for the host (its `archMap`).
fn host_architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else if cfg!(target_arch = "riscv64") {
        vec![Arch::ScmpArchRiscv64]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceType as Ns;

    fn names_allowed(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
            .flat_map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn default_spec_round_trips_through_json() {
        let spec = default_spec(vec!["sh".into()]);
        let json = serde_json::to_string_pretty(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        // The JSON uses the OCI field names runc and podman read.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert!(v["linux"].get("cgroupsPath").is_none());
    }

    #[test]
    fn default_spec_has_runc_layout_and_docker_hardening() {
        let spec = default_spec(vec!["sh".into(), "-c".into(), "true".into()]);
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["sh", "-c", "true"]);
        assert_eq!(process.terminal(), Some(false));
        assert_eq!(process.no_new_privileges(), Some(true));
        let env = process.env().as_ref().unwrap();
        assert!(env.iter().any(|e| e == DEFAULT_PATH));
        assert!(env.iter().any(|e| e.starts_with("TERM=")));
        let rl = &process.rlimits().as_ref().unwrap()[0];
        assert_eq!(
            (rl.typ(), rl.soft(), rl.hard()),
            (PosixRlimitType::RlimitNofile, 1024, 1024)
        );

        let caps = process.capabilities().as_ref().unwrap();
        let want: oci_spec::runtime::Capabilities = default_capabilities().into_iter().collect();
        assert_eq!(caps.bounding().as_ref().unwrap(), &want);
        assert_eq!(caps.effective().as_ref().unwrap(), &want);
        assert_eq!(caps.permitted().as_ref().unwrap(), &want);
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert!(!want.contains(&Capability::SysAdmin));

        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<Ns> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for t in [
            Ns::Pid,
            Ns::Network,
            Ns::Ipc,
            Ns::Uts,
            Ns::Mount,
            Ns::Cgroup,
        ] {
            assert!(ns.contains(&t), "namespace {t:?} missing");
        }
        assert!(!ns.contains(&Ns::User));
        assert!(linux.cgroups_path().is_none());
        let masked = linux.masked_paths().as_ref().unwrap();
        assert!(masked.iter().any(|p| p == "/proc/kcore"));
        assert!(masked.iter().any(|p| p == "/sys/firmware"));
        let ro = linux.readonly_paths().as_ref().unwrap();
        assert!(ro.iter().any(|p| p == "/proc/sys"));
        assert!(ro.iter().any(|p| p == "/proc/sysrq-trigger"));
        let dev = &linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[0];
        assert!(!dev.allow());
        assert_eq!(dev.access().as_deref(), Some("rwm"));

        let mounts = spec.mounts().as_ref().unwrap();
        let find = |d: &str| {
            mounts
                .iter()
                .find(|m| m.destination().to_str() == Some(d))
                .unwrap_or_else(|| panic!("mount {d} missing"))
        };
        assert_eq!(find("/proc").typ().as_deref(), Some("proc"));
        assert_eq!(find("/dev").typ().as_deref(), Some("tmpfs"));
        assert_eq!(find("/dev/pts").typ().as_deref(), Some("devpts"));
        assert_eq!(find("/dev/shm").typ().as_deref(), Some("tmpfs"));
        assert_eq!(find("/dev/mqueue").typ().as_deref(), Some("mqueue"));
        for ro_mount in ["/sys", "/sys/fs/cgroup"] {
            let opts = find(ro_mount).options().as_ref().unwrap();
            assert!(opts.iter().any(|o| o == "ro"), "{ro_mount} must be ro");
        }
        assert_eq!(
            spec.root().as_ref().unwrap().path().to_str(),
            Some("rootfs")
        );
    }

    #[test]
    fn default_seccomp_is_docker_allow_list_without_sys_admin_groups() {
        let s = default_seccomp();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(libc::EPERM as u32));
        let allowed = names_allowed(&s);
        for n in ["read", "write", "execve", "openat", "futex", "chroot"] {
            assert!(allowed.iter().any(|a| a == n), "{n} must be allowed");
        }
        for n in [
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "reboot",
            "bpf",
            "kexec_load",
        ] {
            let in_unconditional = allowed.iter().any(|a| a == n);
            // ptrace is allowed by moby on kernels >= 4.8.
            assert_eq!(in_unconditional, n == "ptrace", "{n}");
        }
        let rules = s.syscalls().as_ref().unwrap();
        let clone = rules
            .iter()
            .find(|r| r.names().iter().any(|n| n == "clone"))
            .unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value(), 2114060288);
        let clone3 = rules
            .iter()
            .find(|r| r.names().iter().any(|n| n == "clone3"))
            .unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));
        let personalities = rules
            .iter()
            .filter(|r| r.names().iter().any(|n| n == "personality"))
            .count();
        assert_eq!(personalities, ALLOWED_PERSONALITIES.len());
    }

    #[test]
    fn seccomp_with_sys_admin_allows_namespaces_and_unrestricted_clone() {
        let mut caps = default_capabilities();
        caps.push(Capability::SysAdmin);
        let s = seccomp_for_capabilities(&caps);
        let allowed = names_allowed(&s);
        for n in ["mount", "unshare", "setns", "clone", "clone3", "umount2"] {
            assert!(allowed.iter().any(|a| a == n), "{n} must be allowed");
        }
        let rules = s.syscalls().as_ref().unwrap();
        assert!(!rules
            .iter()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActErrno));
    }
}

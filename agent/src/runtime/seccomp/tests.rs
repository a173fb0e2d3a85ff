//! seccomp tests. Filters are installed only in forked children that do nothing but
//! async-signal-safe work (raw syscalls, `execve` with arguments built before the fork,
//! `_exit`), never on a test-harness thread.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder,
};

use super::*;
use crate::runtime::defaults::default_seccomp;

pub(crate) fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test installs seccomp filters / changes capabilities in a forked child and must run as root (CI runs as root)"
    );
}

/// What a forked child reported: its exit code (or signal) and what it wrote to fd 1/2.
#[derive(Debug)]
pub(crate) struct ChildResult {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub output: String,
}

/// Forks; the child runs `f` with stdout/stderr on a pipe and `_exit`s with its result.
/// `f` must only do async-signal-safe work unless the parent is known single-threaded
/// (glibc's fork makes malloc usable in the child, which the capability tests rely on).
/// The wait is bounded: a child alive after 10 s is killed and the test fails.
pub(crate) fn in_child(f: impl FnOnce() -> i32) -> ChildResult {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only runs `f` (see the contract above) and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            libc::dup2(w.as_raw_fd(), 1);
            libc::dup2(w.as_raw_fd(), 2);
        }
        let code = f();
        unsafe { libc::_exit(code) };
    }
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    loop {
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            break;
        }
        if Instant::now() > deadline {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("forked test child {pid} hung; killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut output = String::new();
    let mut file = std::fs::File::from(r);
    use std::io::Read;
    let _ = file.read_to_string(&mut output);
    ChildResult {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        output,
    }
}

/// errno of the last failed libc call, read without allocating.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Installs `p`, then returns the errno of `call` (0 if it succeeded), or 100 + errno if
/// installing failed.
fn errno_under(p: &Program, call: impl FnOnce() -> libc::c_long) -> ChildResult {
    in_child(|| {
        if install(p).is_err() {
            return 100 + errno();
        }
        if call() < 0 {
            errno()
        } else {
            0
        }
    })
}

fn busybox() -> CString {
    assert!(
        Path::new("/bin/busybox").exists(),
        "this test runs /bin/busybox (Debian busybox-static, installed by scripts/setup.sh)"
    );
    CString::new("/bin/busybox").unwrap()
}

use std::path::Path;

/// Installs `p` and execs busybox with `args` (built before the fork).
fn exec_under(p: &Program, args: &[&str]) -> ChildResult {
    let prog = busybox();
    let args: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut argv: Vec<*const libc::c_char> = vec![prog.as_ptr()];
    argv.extend(args.iter().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    in_child(|| {
        if install(p).is_err() {
            return 100 + errno();
        }
        unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        127
    })
}

#[test]
fn default_profile_compiles_to_small_filters() {
    let p = compile(&default_seccomp()).unwrap();
    // The base allow-list plus the ERRNO(ENOSYS) filter for clone3.
    assert_eq!(p.filter_count(), 2);
    assert!(p.filters.iter().all(|f| f.len() < 4096), "BPF_MAXINSNS");
    // 32-bit-only names of moby's list do not exist on 64-bit hosts.
    assert!(p.skipped().iter().any(|s| s == "_llseek"));
    assert!(!p.skipped().iter().any(|s| s == "read"));
}

#[test]
fn syscall_table_matches_libc() {
    assert_eq!(syscall_number("read"), Some(libc::SYS_read));
    assert_eq!(syscall_number("unshare"), Some(libc::SYS_unshare));
    assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
    assert_eq!(syscall_number("mount"), Some(libc::SYS_mount));
    assert_eq!(syscall_number("no_such_call"), None);
}

fn profile(
    default: LinuxSeccompAction,
    rules: Vec<oci_spec::runtime::LinuxSyscall>,
) -> LinuxSeccomp {
    LinuxSeccompBuilder::default()
        .default_action(default)
        .syscalls(rules)
        .build()
        .unwrap()
}

#[test]
fn notify_action_is_an_error_naming_the_field() {
    let s = profile(
        LinuxSeccompAction::ScmpActAllow,
        vec![LinuxSyscallBuilder::default()
            .names(vec!["getpid".to_string()])
            .action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .unwrap()],
    );
    let e = compile(&s).unwrap_err().to_string();
    assert!(e.contains("linux.seccomp.syscalls[0].action"), "{e}");
    assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
    let s = profile(LinuxSeccompAction::ScmpActNotify, vec![]);
    let e = compile(&s).unwrap_err().to_string();
    assert!(e.contains("linux.seccomp.defaultAction"), "{e}");
}

#[test]
fn unknown_action_in_json_is_rejected_with_its_value() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getpid"],"action":"SCMP_ACT_EXPLODE"}]}"#;
    let e = serde_json::from_str::<LinuxSeccomp>(json)
        .unwrap_err()
        .to_string();
    assert!(e.contains("SCMP_ACT_EXPLODE"), "{e}");
}

#[test]
fn bad_arg_index_and_empty_names_name_the_field() {
    let s = profile(
        LinuxSeccompAction::ScmpActAllow,
        vec![LinuxSyscallBuilder::default()
            .names(vec!["getpid".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .args(vec![LinuxSeccompArgBuilder::default()
                .index(6usize)
                .value(1u64)
                .op(LinuxSeccompOperator::ScmpCmpEq)
                .build()
                .unwrap()])
            .build()
            .unwrap()],
    );
    let e = compile(&s).unwrap_err().to_string();
    assert!(e.contains("linux.seccomp.syscalls[0].args[0].index"), "{e}");
    let s = profile(
        LinuxSeccompAction::ScmpActAllow,
        vec![LinuxSyscallBuilder::default()
            .names(vec![])
            .action(LinuxSeccompAction::ScmpActErrno)
            .build()
            .unwrap()],
    );
    let e = compile(&s).unwrap_err().to_string();
    assert!(e.contains("linux.seccomp.syscalls[0].names"), "{e}");
}

#[test]
fn names_not_on_this_arch_are_skipped() {
    let s = profile(
        LinuxSeccompAction::ScmpActAllow,
        vec![LinuxSyscallBuilder::default()
            .names(vec!["getpid".to_string(), "arm_fadvise64_64".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .build()
            .unwrap()],
    );
    let p = compile(&s).unwrap();
    assert_eq!(p.skipped(), &["arm_fadvise64_64".to_string()]);
}

#[test]
fn default_profile_denies_unshare_and_mount_with_eperm() {
    require_root();
    let p = compile(&default_seccomp()).unwrap();
    let r = errno_under(&p, || unsafe {
        libc::unshare(libc::CLONE_NEWNS) as libc::c_long
    });
    assert_eq!(r.code, Some(libc::EPERM), "unshare: {r:?}");
    let r = errno_under(&p, || unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        ) as libc::c_long
    });
    assert_eq!(r.code, Some(libc::EPERM), "mount: {r:?}");
    // clone3 answers ENOSYS so libc falls back to clone, whose flags the filter can see.
    let r = errno_under(&p, || unsafe {
        libc::syscall(libc::SYS_clone3, 0usize, 0usize)
    });
    assert_eq!(r.code, Some(libc::ENOSYS), "clone3: {r:?}");
    // clone with a namespace flag is refused; the same call without it is what fork does.
    let r = errno_under(&p, || unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUTS | libc::SIGCHLD) as libc::c_ulong,
            0usize,
        )
    });
    assert_eq!(r.code, Some(libc::EPERM), "clone(CLONE_NEWUTS): {r:?}");
    // Without the filter, root may unshare: the EPERM above is the filter's doing.
    let open = compile(&profile(LinuxSeccompAction::ScmpActAllow, vec![])).unwrap();
    let r = errno_under(&open, || unsafe {
        libc::unshare(libc::CLONE_NEWNS) as libc::c_long
    });
    assert_eq!(r.code, Some(0), "unshare without filter: {r:?}");
}

#[test]
fn default_profile_still_runs_ordinary_commands() {
    require_root();
    let p = compile(&default_seccomp()).unwrap();
    let r = exec_under(
        &p,
        &[
            "sh",
            "-c",
            "echo hi; ls / >/dev/null && cat /proc/self/status | grep -c Seccomp",
        ],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.output.starts_with("hi\n"), "{r:?}");
    // busybox's own unshare and mount applets fail under the filter.
    let r = exec_under(&p, &["unshare", "-m", "true"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.output.contains("Operation not permitted"), "{r:?}");
    let r = exec_under(&p, &["mount", "-t", "tmpfs", "none", "/mnt"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(
        r.output.contains("Operation not permitted") || r.output.contains("denied"),
        "{r:?}"
    );
}

#[test]
fn per_rule_actions_errno_values_and_arg_conditions_apply() {
    require_root();
    let arg = |index: usize, value: u64, op| {
        LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op)
            .build()
            .unwrap()
    };
    // Default ALLOW; getppid → EACCES; dup(fd) → EBADF... only for fd == 1000 (conditional);
    // getpgid → KILL_PROCESS.
    let s = profile(
        LinuxSeccompAction::ScmpActAllow,
        vec![
            LinuxSyscallBuilder::default()
                .names(vec!["getppid".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::EACCES as u32)
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["dup".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOTSUP as u32)
                .args(vec![arg(0, 1000, LinuxSeccompOperator::ScmpCmpEq)])
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["getpgid".to_string()])
                .action(LinuxSeccompAction::ScmpActKillProcess)
                .build()
                .unwrap(),
        ],
    );
    let p = compile(&s).unwrap();
    assert_eq!(p.filter_count(), 3);
    let r = errno_under(&p, || unsafe { libc::syscall(libc::SYS_getppid) });
    assert_eq!(r.code, Some(libc::EACCES), "{r:?}");
    let r = errno_under(&p, || unsafe { libc::dup(1000) as libc::c_long });
    assert_eq!(r.code, Some(libc::ENOTSUP), "{r:?}");
    // Condition false: the real dup runs and fails with EBADF (fd 999 is not open).
    let r = errno_under(&p, || unsafe { libc::dup(999) as libc::c_long });
    assert_eq!(r.code, Some(libc::EBADF), "{r:?}");
    let r = errno_under(&p, || unsafe { libc::syscall(libc::SYS_getpgid, 0) });
    assert_eq!(r.signal, Some(libc::SIGSYS), "{r:?}");

    // Default ERRNO with a masked-equal allow rule: personality-like checks on arg bits.
    let s = profile(
        LinuxSeccompAction::ScmpActErrno,
        vec![
            LinuxSyscallBuilder::default()
                .names(
                    ["exit_group", "exit", "write", "rt_sigreturn"]
                        .map(String::from)
                        .to_vec(),
                )
                .action(LinuxSeccompAction::ScmpActAllow)
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["dup".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(0xf00u64)
                    .value_two(0x100u64)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()
                    .unwrap()])
                .build()
                .unwrap(),
        ],
    );
    let p = compile(&s).unwrap();
    // 0x1ff & 0xf00 == 0x100: allowed (then EBADF from the kernel); 0x2ff: EPERM (default).
    let r = errno_under(&p, || unsafe { libc::dup(0x1ff) as libc::c_long });
    assert_eq!(r.code, Some(libc::EBADF), "{r:?}");
    let r = errno_under(&p, || unsafe { libc::dup(0x2ff) as libc::c_long });
    assert_eq!(r.code, Some(libc::EPERM), "{r:?}");
}

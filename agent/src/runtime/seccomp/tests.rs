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

/// Writes to the child's fd 1 (the pipe): `println!` in a test thread goes to libtest's
/// in-memory capture, which a forked child's parent never sees.
pub(crate) fn say(msg: &str) {
    unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
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
    // ERRNO(EACCES), ERRNO(ENOTSUP), KILL_PROCESS; plus the x32 guard on x86_64.
    assert_eq!(
        p.filter_count(),
        if cfg!(target_arch = "x86_64") { 4 } else { 3 }
    );
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

/// Cost of compiling the default profile and of installing it in a child, printed (a
/// measurement, not an assertion):
/// `cargo test -p gantry-agent --lib seccomp_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn seccomp_cost() {
    require_root();
    let mut compile_t = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let p = compile(&default_seccomp()).unwrap();
        compile_t.push(t.elapsed());
        std::hint::black_box(p);
    }
    compile_t.sort();
    let p = compile(&default_seccomp()).unwrap();
    // The child measures its own install and reports microseconds as the exit code / 10.
    let mut install_us = Vec::new();
    for _ in 0..50 {
        let r = in_child(|| {
            let t = Instant::now();
            if install(&p).is_err() {
                return 255;
            }
            (t.elapsed().as_micros() / 10).min(254) as i32
        });
        install_us.push(r.code.unwrap() * 10);
    }
    install_us.sort();
    // For scale: a one-rule profile (the fixed cost of a seccomp() call).
    let tiny = compile(&profile(
        LinuxSeccompAction::ScmpActAllow,
        vec![LinuxSyscallBuilder::default()
            .names(vec!["getppid".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .build()
            .unwrap()],
    ))
    .unwrap();
    let mut tiny_us = Vec::new();
    for _ in 0..50 {
        let r = in_child(|| {
            let t = Instant::now();
            if install(&tiny).is_err() {
                return 255;
            }
            (t.elapsed().as_micros() / 10).min(254) as i32
        });
        tiny_us.push(r.code.unwrap() * 10);
    }
    tiny_us.sort();
    println!(
        "one-rule profile: install median ~{} µs",
        tiny_us[tiny_us.len() / 2]
    );
    println!(
        "default profile: {} filters, {} BPF instructions; compile median {:?}; install median ~{} µs",
        p.filter_count(),
        p.instruction_count(),
        compile_t[compile_t.len() / 2],
        install_us[install_us.len() / 2]
    );
}

/// An x32 twin of a call a default-ALLOW profile blocks must not get through.
#[test]
#[cfg(target_arch = "x86_64")]
fn blocklist_profile_kills_x32_twins_of_blocked_calls() {
    require_root();
    let s = profile(
        LinuxSeccompAction::ScmpActAllow,
        vec![LinuxSyscallBuilder::default()
            .names(vec!["getppid".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EACCES as u32)
            .build()
            .unwrap()],
    );
    let p = compile(&s).unwrap();
    let r = errno_under(&p, || unsafe { libc::syscall(libc::SYS_getppid) });
    assert_eq!(r.code, Some(libc::EACCES), "{r:?}");
    let r = errno_under(&p, || unsafe {
        libc::syscall(0x4000_0000 | libc::SYS_getppid)
    });
    assert_eq!(r.signal, Some(libc::SIGSYS), "{r:?}");
    // Ordinary calls still pass the guard.
    let r = errno_under(&p, || unsafe { libc::syscall(libc::SYS_getpid) });
    assert_eq!(r.code, Some(0), "{r:?}");
    // The allow-list default profile needs no guard: x32 numbers match nothing → EPERM.
    let d = compile(&default_seccomp()).unwrap();
    assert_eq!(d.filter_count(), 2);
    let r = errno_under(&d, || unsafe {
        libc::syscall(0x4000_0000 | libc::SYS_getppid)
    });
    assert_eq!(r.code, Some(libc::EPERM), "{r:?}");
}

/// The search-tree layout behaves exactly like seccompiler's linear chain for the same
/// rules: both run in a BPF interpreter over every syscall number (native, x32 and a foreign
/// arch) and argument values around every value the rules compare with.
#[test]
fn tree_filter_matches_seccompiler_on_every_syscall() {
    use super::tree::bpf::run;
    let mut caps_admin = crate::runtime::defaults::default_capabilities();
    caps_admin.push(oci_spec::runtime::Capability::SysAdmin);
    let arg = |index: usize, value: u64, two: Option<u64>, op| {
        let b = LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op);
        match two {
            Some(t) => b.value_two(t),
            None => b,
        }
        .build()
        .unwrap()
    };
    use LinuxSeccompOperator as Op;
    // One rule per operator, 64-bit values with interesting halves, ANDed and ORed rules.
    let ops = profile(
        LinuxSeccompAction::ScmpActErrno,
        vec![
            LinuxSyscallBuilder::default()
                .names(
                    [
                        "read",
                        "write",
                        "openat",
                        "close",
                        "mmap",
                        "brk",
                        "exit_group",
                        "futex",
                        "getpid",
                        "getppid",
                        "dup",
                        "dup2",
                        "dup3",
                        "pipe",
                        "pipe2",
                        "uname",
                        "kill",
                        "tgkill",
                        "wait4",
                        "chdir",
                    ]
                    .map(String::from)
                    .to_vec(),
                )
                .action(LinuxSeccompAction::ScmpActAllow)
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["ioctl".into()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg(1, 0x1_0000_0005, None, Op::ScmpCmpEq)])
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["ioctl".into()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![
                    arg(0, 3, None, Op::ScmpCmpGt),
                    arg(2, 0xffff_ffff, None, Op::ScmpCmpLe),
                ])
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["fcntl".into()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg(1, 0x2_0000_0000, None, Op::ScmpCmpLt)])
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["lseek".into()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg(2, 0x1_0000_0001, None, Op::ScmpCmpGe)])
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["socket".into()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg(0, 40, None, Op::ScmpCmpNe)])
                .build()
                .unwrap(),
            LinuxSyscallBuilder::default()
                .names(vec!["clone".into()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg(
                    0,
                    0xff00_0000_7e02_0000,
                    Some(0x0100_0000_0000_0000),
                    Op::ScmpCmpMaskedEq,
                )])
                .build()
                .unwrap(),
        ],
    );
    let profiles = [
        ("default", default_seccomp()),
        (
            "sys_admin",
            crate::runtime::defaults::seccomp_for_capabilities(&caps_admin),
        ),
        ("operators", ops),
    ];
    let native = super::audit_arch(super::host_arch().unwrap());
    let values: Vec<u64> = {
        let mut v = vec![
            0,
            1,
            2,
            3,
            4,
            5,
            8,
            39,
            40,
            41,
            0x20000,
            0x20008,
            0xffff_fffe,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0001,
            0x1_0000_0005,
            0x1_0000_0006,
            0x2_0000_0000,
            0x1_ffff_ffff,
            0x0100_0000_0000_0000,
            0x0100_0000_0002_0000,
            0x0100_0000_0000_0011,
            u64::MAX,
            (libc::CLONE_NEWNS | libc::SIGCHLD) as u64,
            libc::SIGCHLD as u64,
            0x7e02_0000,
        ];
        v.sort();
        v.dedup();
        v
    };
    for (name, p) in profiles {
        let l = lower(&p).unwrap();
        let mut sets = vec![(l.default.clone(), SeccompAction::Allow, l.allowed.clone())];
        for (_, (action, set)) in l.by_action {
            sets.push((SeccompAction::Allow, action, set));
        }
        for (mismatch, matched, set) in sets {
            let tree = super::tree::build(
                &set,
                u32::from(mismatch.clone()),
                u32::from(matched.clone()),
                native,
            )
            .unwrap();
            let arch = super::host_arch().unwrap();
            let linear = build_linear(set.clone(), mismatch, matched, arch).unwrap();
            let mut checked = 0u64;
            for nr in (0u32..500).chain([0x4000_0000 | 39, 0x4000_0000 | 110, u32::MAX]) {
                for arch_value in [native, 0x4000_0003] {
                    let arg_sets: Vec<[u64; 6]> =
                        if set.get(&(nr as i64)).is_some_and(|r| r.is_some()) {
                            values
                                .iter()
                                .flat_map(|&a| values.iter().map(move |&b| [a, b, b, 0, 0, 0]))
                                .collect()
                        } else {
                            vec![[0; 6]]
                        };
                    for args in arg_sets {
                        assert_eq!(
                            run(&tree, nr, arch_value, args),
                            run(&linear, nr, arch_value, args),
                            "{name}: nr {nr} arch {arch_value:#x} args {args:x?}"
                        );
                        checked += 1;
                    }
                }
            }
            assert!(checked > 1000);
            if set.len() > 100 {
                assert!(
                    tree.len() < linear.len(),
                    "{} vs {}",
                    tree.len(),
                    linear.len()
                );
            }
        }
    }
}

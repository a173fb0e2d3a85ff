//! Integration tests of `gantry runtime`: real containers from busybox bundles, checked from
//! inside with busybox commands. They need root (namespaces, mounts, cgroups) and fail
//! loudly without it. Each test uses its own runtime root, bundle dir and container ids.

mod common;

use common::*;
use serde_json::json;

#[test]
fn run_propagates_exit_code_pid1_and_hostname() {
    let t = Rt::new("exit");
    let b = t.bundle(
        "b",
        &[
            "sh",
            "-c",
            r#"test $$ = 1 || exit 91; test "$(hostname)" = gtest-host || exit 92; exit 7"#,
        ],
        |_| {},
    );
    let out = t.gantry(&["run", "-b", b.to_str().unwrap(), &t.id("c")]);
    assert_eq!(out.code, 7, "{out:?}");
    t.assert_no_container("c");
}

/// `gantry-runtime` (the small per-container binary) is the same runtime: `run` with the
/// exit code and lifecycle left clean, `create`/`state`/`delete` on the same root as
/// `gantry runtime`, and its `shim` verb refuses a missing config clearly.
#[test]
fn small_binary_is_the_same_runtime() {
    let t = Rt::new("small");
    let small = env!("CARGO_BIN_EXE_gantry-runtime");
    let root = t.root.to_str().unwrap();
    let b = t.bundle("b", &["sh", "-c", "test $$ = 1 || exit 91; exit 5"], |_| {});
    let run = std::process::Command::new(small)
        .args(["--root", root, "run", "-b", b.to_str().unwrap(), &t.id("c")])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running gantry-runtime");
    assert_eq!(run.status.code(), Some(5), "{run:?}");
    t.assert_no_container("c");

    // Created by the small binary, seen and deleted by `gantry runtime`. The held
    // container inherits create's stdio (as with runc), so that goes to files, not pipes.
    let id = t.id("d");
    let err_path = t.root.with_file_name("small-create.err");
    let created = std::process::Command::new(small)
        .args(["--root", root, "create", "-b", b.to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .expect("running gantry-runtime create");
    assert!(
        created.success(),
        "{created:?}: {}",
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    assert_eq!(t.state(&id)["status"], "created");
    let del = t.gantry(&["delete", "--force", &id]);
    assert_eq!(del.code, 0, "{del:?}");
    t.assert_no_container("d");

    let missing = t.root.join("no-such-shim.json");
    let shim = std::process::Command::new(small)
        .args(["shim", "--config", missing.to_str().unwrap()])
        .output()
        .expect("running gantry-runtime shim");
    let out = String::from_utf8_lossy(&shim.stdout);
    assert_eq!(shim.status.code(), Some(1), "{shim:?}");
    assert!(
        out.contains("shim config") && out.contains("no-such-shim.json"),
        "{out}"
    );
}

#[test]
fn run_reports_128_plus_signal_when_killed() {
    let t = Rt::new("sig");
    let b = t.bundle("b", &["sleep", "30"], |_| {});
    let id = t.id("c");
    let child = t.spawn(&["run", "-b", b.to_str().unwrap(), &id]);
    t.wait_status(&id, "running");
    let k = t.gantry(&["kill", &id, "KILL"]);
    assert_eq!(k.code, 0, "{k:?}");
    let out = child.wait();
    assert_eq!(out.code, 128 + 9, "{out:?}");
    t.assert_no_container("c");
}

#[test]
fn stdout_to_dev_null_stays_writable() {
    // youki re-opened a /dev/null stdout read-only (EBADF on echo); stdio is inherited as is.
    let t = Rt::new("devnull");
    let b = t.bundle("b", &["sh", "-c", "echo hi; echo hi >&2"], |_| {});
    let st = std::process::Command::new(gantry_bin())
        .args(["runtime", "--root", t.root.to_str().unwrap(), "run", "-b"])
        .arg(&b)
        .arg(t.id("c"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
}

#[test]
fn filesystem_mounts_masked_and_readonly_paths() {
    let t = Rt::new("fs");
    let data = t.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "hostdata").unwrap();
    let script = r#"
set -e
fail() { echo "FAIL: $*"; exit 1; }
for m in /proc /dev /dev/pts /dev/shm /dev/mqueue /sys /data; do
  grep -q " $m " /proc/self/mountinfo || fail "mount $m missing"
done
for d in null zero full random urandom tty; do test -c /dev/$d || fail "/dev/$d"; done
test -L /dev/fd && test -L /dev/stdin && test -L /dev/ptmx || fail links
echo x > /dev/null || fail "/dev/null not writable"
test "$(head -c 4 /dev/zero | wc -c)" = 4 || fail zero
test "$(cat /etc/secret.txt | wc -c)" = 0 || fail "masked file readable"
test -z "$(ls -A /secretdir)" || fail "masked dir not empty"
test "$(cat /data/f)" = hostdata || fail "bind mount content"
if touch /data/new 2>/dev/null; then fail "ro bind writable"; fi
if touch /newfile 2>/dev/null; then fail "readonly root writable"; fi
if echo 1 > /proc/sys/kernel/domainname 2>/dev/null; then fail "readonly path writable"; fi
touch /tmp/ok || fail "/tmp tmpfs not writable"
test "$(ls /sys/class/net)" = lo || fail "netns has more than lo: $(ls /sys/class/net)"
echo ALLGOOD
"#;
    let data_s = data.to_str().unwrap().to_string();
    let b = t.bundle("b", &["sh", "-c", script], |s| {
        s["root"]["readonly"] = json!(true);
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": data_s,
            "options": ["rbind", "ro", "nosuid", "nodev"]}));
        s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}));
        s["linux"]["maskedPaths"] = json!(["/etc/secret.txt", "/secretdir", "/proc/kcore", "/nonexistent"]);
        s["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
    });
    std::fs::write(b.join("rootfs/etc/secret.txt"), "secret").unwrap();
    std::fs::create_dir(b.join("rootfs/secretdir")).unwrap();
    std::fs::write(b.join("rootfs/secretdir/s"), "secret").unwrap();
    let out = t.gantry(&["run", "-b", b.to_str().unwrap(), &t.id("c")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ALLGOOD"), "{out:?}");
    // nothing of the container's mounts is visible on the host
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(b.to_str().unwrap()),
        "container mount leaked to host"
    );
}

#[test]
fn create_start_state_kill_delete_lifecycle() {
    let t = Rt::new("life");
    let marker = "/tmp/started"; // inside the container's rootfs
    let b = t.bundle(
        "b",
        &["sh", "-c", &format!("touch {marker}; exec sleep 60")],
        |_| {},
    );
    let id = t.id("c");
    let pidfile = t.dir.path().join("pid");
    let out = t.gantry(&[
        "create",
        "-b",
        b.to_str().unwrap(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let state = t.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid);
    assert_eq!(state["id"], id.as_str());
    assert!(
        !b.join("rootfs/tmp/started").exists(),
        "process ran before start"
    );
    // a created container cannot be deleted without --force
    let d = t.gantry(&["delete", &id]);
    assert_ne!(d.code, 0);
    assert!(d.stderr.contains("created"), "{d:?}");

    let out = t.gantry(&["start", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    t.wait_status(&id, "running");
    wait_until(|| b.join("rootfs/tmp/started").exists(), "process started");
    let again = t.gantry(&["start", &id]);
    assert_ne!(again.code, 0, "start twice must fail");

    let list = t.gantry(&["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["status"], "running");
    let table = t.gantry(&["list"]);
    assert!(
        table.stdout.starts_with("ID") && table.stdout.contains(&id),
        "{table:?}"
    );

    let d = t.gantry(&["delete", &id]);
    assert_ne!(d.code, 0, "delete of a running container without --force");
    assert!(
        d.stderr.contains("running") && d.stderr.contains("--force"),
        "{d:?}"
    );
    assert!(proc_alive(pid));

    assert_eq!(t.gantry(&["kill", &id, "9"]).code, 0);
    t.wait_status(&id, "stopped");
    assert_eq!(t.gantry(&["delete", &id]).code, 0);
    assert!(!proc_alive(pid));
    t.assert_no_container("c");
    let s = t.gantry(&["state", &id]);
    assert_ne!(s.code, 0);
    assert!(s.stderr.contains("does not exist"), "{s:?}");
}

#[test]
fn delete_force_kills_a_running_container() {
    let t = Rt::new("force");
    let b = t.bundle("b", &["sleep", "60"], |_| {});
    let id = t.id("c");
    assert_eq!(
        t.gantry(&["create", "-b", b.to_str().unwrap(), &id]).code,
        0
    );
    assert_eq!(t.gantry(&["start", &id]).code, 0);
    let pid = t.state(&id)["pid"].as_i64().unwrap() as i32;
    let d = t.gantry(&["delete", "--force", &id]);
    assert_eq!(d.code, 0, "{d:?}");
    assert!(!proc_alive(pid));
    t.assert_no_container("c");
}

#[test]
fn exec_joins_the_running_container() {
    let t = Rt::new("exec");
    let b = t.bundle("b", &["sleep", "60"], |_| {});
    let id = t.id("c");
    assert_eq!(
        t.gantry(&["create", "-b", b.to_str().unwrap(), &id]).code,
        0
    );
    assert_eq!(t.gantry(&["start", &id]).code, 0);
    t.wait_status(&id, "running");
    let out = t.gantry(&[
        "exec", "-e", "EXTRA=yes", &id, "sh", "-c",
        r#"echo "pid=$$ host=$(hostname) extra=$EXTRA"; ps -o pid,comm | grep -q 'sleep' && echo sees-init; exit 5"#,
    ]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stdout.contains("host=gtest-host"), "{out:?}");
    assert!(out.stdout.contains("extra=yes"), "{out:?}");
    assert!(out.stdout.contains("sees-init"), "{out:?}");
    assert!(
        !out.stdout.contains("pid=1 "),
        "exec'd process must not be pid 1: {out:?}"
    );
    let missing = t.gantry(&["exec", &id, "nosuchcmd"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("nosuchcmd"), "{missing:?}");

    // --detach (conmon's way): returns once the process runs, its pid in --pid-file.
    let pidfile = t.dir.path().join("exec.pid");
    let out = t.gantry(&[
        "exec",
        "--detach",
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "sleep 1; echo later > /tmp/detached",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid > 0);
    wait_until(
        || b.join("rootfs/tmp/detached").exists(),
        "the detached exec to finish its work",
    );

    // --tty: needs a console socket; with one, the pty master goes there.
    let out = t.gantry(&["exec", "--tty", &id, "tty"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("--console-socket"), "{out:?}");
    let sock = t.dir.path().join("exec-console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let run = t.spawn(&[
        "exec",
        "--tty",
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "tty; echo exec-done",
    ]);
    let (name, mut master) = recv_console(&listener);
    let text = read_pty(&mut master, "exec-done");
    assert!(
        text.contains(&name) && text.contains("exec-done"),
        "{text:?}"
    );
    assert_eq!(run.wait().code, 0);
    assert_eq!(t.gantry(&["delete", "-f", &id]).code, 0);
}

#[test]
fn bad_input_is_refused_clearly_and_leaves_nothing() {
    let t = Rt::new("bad");
    type Breaker = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "invalid-json",
            Box::new(|b| std::fs::write(b.join("config.json"), "{\"ociVersion\": ,").unwrap()),
            "line 1",
        ),
        (
            "unknown-namespace",
            Box::new(|b| {
                edit(b, |s| {
                    s["linux"]["namespaces"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"type": "bogus"}))
                })
            }),
            "linux.namespaces[",
        ),
        (
            "unknown-field-value",
            Box::new(|b| {
                edit(b, |s| {
                    s["process"]["rlimits"] =
                        json!([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}])
                })
            }),
            "process.rlimits[0].type",
        ),
        (
            "missing-rootfs",
            Box::new(|b| edit(b, |s| s["root"]["path"] = json!("nope"))),
            "root.path",
        ),
        (
            "args0-not-found",
            Box::new(|b| {
                edit(b, |s| {
                    s["process"]["args"] = json!(["/bin/definitely-not-here"])
                })
            }),
            "process.args[0]",
        ),
        (
            "missing-bind-source",
            Box::new(|b| {
                edit(b, |s| {
                    s["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/x", "type": "bind", "source": "/nonexistent-gantry-src", "options": ["bind"]}))
                })
            }),
            "/x",
        ),
    ];
    for (name, breakit, expect) in cases {
        let b = t.bundle(name, &["true"], |_| {});
        breakit(&b);
        for verb in ["run", "create"] {
            let id = t.id(name);
            let out = t.gantry(&[verb, "-b", b.to_str().unwrap(), &id]);
            assert_eq!(out.code, 1, "{name}/{verb}: {out:?}");
            assert!(
                out.stderr.contains(expect),
                "{name}/{verb}: stderr should name `{expect}`: {out:?}"
            );
            t.assert_no_container(name);
        }
    }
    // duplicate id: refused, and the existing container is untouched
    let b = t.bundle("dup", &["sleep", "60"], |_| {});
    let id = t.id("dup");
    assert_eq!(
        t.gantry(&["create", "-b", b.to_str().unwrap(), &id]).code,
        0
    );
    let out = t.gantry(&["create", "-b", b.to_str().unwrap(), &id]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("already exists"), "{out:?}");
    assert_eq!(t.state(&id)["status"], "created");
    assert_eq!(t.gantry(&["delete", "-f", &id]).code, 0);
    t.assert_no_container("dup");
}

#[test]
fn memory_limit_kills_an_allocating_process_and_reports_the_oom() {
    let t = Rt::new("oom");
    // The shell keeps the whole substitution in memory: ~200 MiB against a 32 MiB limit.
    let b = t.bundle(
        "b",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived ${#x}",
        ],
        |s| {
            s["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
        },
    );
    let log = t.dir.path().join("oom.log");
    let out = t.gantry(&[
        "--log",
        log.to_str().unwrap(),
        "run",
        "-b",
        b.to_str().unwrap(),
        &t.id("c"),
    ]);
    // The shell (pid 1) is the biggest process in the group: killed by SIGKILL.
    assert_eq!(out.code, 128 + 9, "{out:?}");
    assert!(!out.stdout.contains("survived"), "{out:?}");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("level=warning")
            && log.contains("OOM killer killed")
            && log.contains("33554432"),
        "the OOM must be reported on the log: {log:?}"
    );
    t.assert_no_container("c");
}

#[test]
fn pids_limit_contains_a_fork_bomb() {
    let t = Rt::new("pids");
    // Forks (a subshell that backgrounds a sleep) until refused, counting from inside.
    let script = r#"
ok=0; failed=0; i=0
while [ $i -lt 40 ]; do
  if (sleep 30 &) 2>/dev/null; then ok=$((ok+1)); else failed=$((failed+1)); fi
  i=$((i+1))
done
echo "ok=$ok failed=$failed"
"#;
    let b = t.bundle("b", &["sh", "-c", script], |s| {
        s["linux"]["resources"] = json!({"pids": {"limit": 12}});
    });
    let id = t.id("c");
    let out = t.gantry(&["run", "-b", b.to_str().unwrap(), &id]);
    let line = out.stdout.lines().last().unwrap_or_default().to_string();
    let field = |k: &str| -> u32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {out:?}"))
    };
    assert!(field("ok=") <= 12, "{out:?}");
    assert!(field("failed=") > 0, "forks must be refused: {out:?}");
    t.assert_no_container("c");
}

#[test]
fn cap_eff_equals_the_spec_effective_set() {
    let t = Rt::new("caps");
    let caps = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let b = t.bundle("b", &["grep", "^Cap", "/proc/self/status"], |s| {
        s["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": [], "ambient": []
        });
    });
    let out = t.gantry(&["run", "-b", b.to_str().unwrap(), &t.id("c")]);
    assert_eq!(out.code, 0, "{out:?}");
    // CHOWN = bit 0, KILL = bit 5, NET_BIND_SERVICE = bit 10
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert!(
            out.stdout.contains(&format!("{set}:\t0000000000000421")),
            "{set}: {out:?}"
        );
    }
    assert!(out.stdout.contains("CapAmb:\t0000000000000000"), "{out:?}");
    t.assert_no_container("c");
}

#[test]
fn ambient_capabilities_outside_inheritable_are_dropped_with_a_warning() {
    let t = Rt::new("ambient");
    let caps = json!(["CAP_CHOWN", "CAP_KILL"]);
    let b = t.bundle("b", &["grep", "^Cap", "/proc/self/status"], |s| {
        s["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": ["CAP_CHOWN"], "ambient": ["CAP_CHOWN", "CAP_KILL"]
        });
    });
    let log = t.dir.path().join("warn.log");
    let out = t.gantry(&[
        "--log",
        log.to_str().unwrap(),
        "run",
        "-b",
        b.to_str().unwrap(),
        &t.id("c"),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("CapAmb:\t0000000000000001"), "{out:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("level=warning")
            && log.contains("process.capabilities.ambient")
            && log.contains("CAP_KILL")
            && !log.contains("CAP_CHOWN"),
        "{log:?}"
    );
    // Without --log the warning goes to stderr.
    let out = t.gantry(&["run", "-b", b.to_str().unwrap(), &t.id("c2")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("CAP_KILL"),
        "{out:?}"
    );
}

/// The seccomp section of `gantry runtime spec` (Docker's default profile).
fn default_seccomp(t: &Rt) -> serde_json::Value {
    let d = t.dir.path().join("spec");
    std::fs::create_dir_all(&d).unwrap();
    let out = t.gantry(&["spec", "-b", d.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    v["linux"]["seccomp"].clone()
}

#[test]
fn default_seccomp_gives_eperm_for_unshare_and_mount() {
    let t = Rt::new("seccomp");
    // No capabilities object: the process keeps CAP_SYS_ADMIN, so only seccomp can refuse.
    let script = r#"
unshare -n true 2>&1; echo "unshare=$?"
mount -t tmpfs none /mnt 2>&1; echo "mount=$?"
"#;
    let seccomp = default_seccomp(&t);
    let b = t.bundle("b", &["sh", "-c", script], |s| {
        s["linux"]["seccomp"] = seccomp;
    });
    std::fs::create_dir_all(b.join("rootfs/mnt")).unwrap();
    let out = t.gantry(&["run", "-b", b.to_str().unwrap(), &t.id("c")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("Operation not permitted") && !out.stdout.contains("unshare=0"),
        "unshare must fail with EPERM: {out:?}"
    );
    // busybox mount words EPERM as "permission denied (are you root?)"
    assert!(
        out.stdout.contains("permission denied") && !out.stdout.contains("mount=0"),
        "mount must fail with EPERM: {out:?}"
    );
    // The same bundle without the filter: both succeed, so the filter is what refused.
    edit(&b, |s| {
        s["linux"]
            .as_object_mut()
            .unwrap()
            .remove("seccomp")
            .map(drop)
            .unwrap()
    });
    let out = t.gantry(&["run", "-b", b.to_str().unwrap(), &t.id("c")]);
    assert!(
        out.stdout.contains("unshare=0") && out.stdout.contains("mount=0"),
        "{out:?}"
    );
    t.assert_no_container("c");
}

#[test]
fn user_namespace_with_mappings_sees_the_mapped_ids() {
    let t = Rt::new("userns");
    // The host-side path to the rootfs must be searchable by the mapped root (host 100000).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = r#"
echo "uid=$(id -u) gid=$(id -g)"
echo "uidmap=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')"
echo "gidmap=$(cat /proc/self/gid_map | tr -s ' ' | sed 's/^ //')"
echo "owner=$(stat -c %u /bin/busybox)"
touch /tmp/x && echo "tmpowner=$(stat -c %u:%g /tmp/x)"
"#;
    let b = t.bundle("b", &["sh", "-c", script], |s| {
        s["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        s["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
    });
    std::fs::set_permissions(
        t.dir.path().join("bundle-b"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = t.gantry(&["run", "-b", b.to_str().unwrap(), &t.id("c")]);
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        "uid=0 gid=0",
        "uidmap=0 100000 65536",
        "gidmap=0 100000 65536",
        // host root is not mapped: the overflow id
        "owner=65534",
        "tmpowner=0:0",
    ] {
        assert!(out.stdout.contains(want), "want {want:?}: {out:?}");
    }
    t.assert_no_container("c");
}

#[test]
fn inherited_fds_are_closed_except_preserved_ones() {
    use std::os::unix::process::CommandExt;
    let t = Rt::new("fds");
    let script = r#"
for fd in 3 4 5; do test -e /proc/self/fd/$fd && echo "has$fd"; done
cat <&3 2>/dev/null
true
"#;
    let b = t.bundle("b", &["sh", "-c", script], |_| {});
    let payload = t.dir.path().join("payload");
    std::fs::write(&payload, "passed-through\n").unwrap();
    let run = |extra: &[&str], id: &str| {
        let f = std::fs::File::open(&payload).unwrap();
        let out_path = t.dir.path().join(format!("fds-out-{id}"));
        let mut c = std::process::Command::new(gantry_bin());
        c.args(["runtime", "--root", t.root.to_str().unwrap(), "run"])
            .args(extra)
            .arg("-b")
            .arg(&b)
            .arg(t.id(id))
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::process::Stdio::inherit());
        let raw = std::os::fd::AsRawFd::as_raw_fd(&f);
        // SAFETY: only dup2 (async-signal-safe) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                // via a copy above 5, so that dup2 never meets its own fd (which would keep
                // std's close-on-exec flag)
                let tmp = libc::fcntl(raw, libc::F_DUPFD, 10);
                for fd in [3, 4, 5] {
                    if tmp < 0 || libc::dup2(tmp, fd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::close(tmp);
                Ok(())
            });
        }
        let st = wait_child(c.spawn().unwrap(), &out_path, &out_path);
        drop(f);
        st
    };
    let none = run(&[], "none");
    assert_eq!(none.code, 0, "{none:?}");
    assert!(
        !none.stdout.contains("has") && !none.stdout.contains("passed-through"),
        "no fd above 2 may reach the container: {none:?}"
    );
    let one = run(&["--preserve-fds", "1"], "one");
    assert_eq!(one.code, 0, "{one:?}");
    assert!(one.stdout.contains("has3"), "{one:?}");
    assert!(
        !one.stdout.contains("has4") && !one.stdout.contains("has5"),
        "{one:?}"
    );
    assert!(one.stdout.contains("passed-through"), "{one:?}");
    t.assert_no_container("none");
    t.assert_no_container("one");
}

#[test]
fn terminal_master_is_sent_over_the_console_socket() {
    let t = Rt::new("tty");
    let b = t.bundle(
        "b",
        &[
            "sh",
            "-c",
            "tty; test -t 0 && test -t 1 && test -t 2 && echo all-ttys; echo done",
        ],
        |s| s["process"]["terminal"] = json!(true),
    );
    let sock = t.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let id = t.id("c");
    // Without the socket: a clear error naming the field, nothing left.
    let out = t.gantry(&["create", "-b", b.to_str().unwrap(), &id]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("process.terminal") && out.stderr.contains("--console-socket"),
        "{out:?}"
    );
    t.assert_no_container("c");

    let create = t.spawn(&[
        "create",
        "--console-socket",
        sock.to_str().unwrap(),
        "-b",
        b.to_str().unwrap(),
        &id,
    ]);
    let (name, mut master) = recv_console(&listener);
    assert_eq!(create.wait().code, 0);
    assert_eq!(t.gantry(&["start", &id]).code, 0);
    let text = read_pty(&mut master, "done");
    assert!(text.contains(&name), "tty must print {name}: {text:?}");
    assert!(text.contains("all-ttys"), "{text:?}");
    t.wait_status(&id, "stopped");
    assert_eq!(t.gantry(&["delete", &id]).code, 0);
    t.assert_no_container("c");
}

/// Accepts the runtime's connection on a console socket and receives the pty master:
/// its name (the message) and the fd (SCM_RIGHTS). Bounded by `wait_until`.
fn recv_console(listener: &std::os::unix::net::UnixListener) -> (String, std::fs::File) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    listener.set_nonblocking(true).unwrap();
    let mut conn = None;
    wait_until(
        || {
            conn = listener.accept().ok().map(|(c, _)| c);
            conn.is_some()
        },
        "the runtime to connect to the console socket",
    );
    let conn = conn.unwrap();
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut name = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let n = msg.bytes;
    let master = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("an fd in SCM_RIGHTS");
    let name = String::from_utf8_lossy(&name[..n]).to_string();
    assert!(name.starts_with("/dev/pts/"), "{name}");
    // SAFETY: recvmsg just gave us this descriptor.
    (
        name,
        std::fs::File::from(unsafe { OwnedFd::from_raw_fd(master) }),
    )
}

/// Reads a pty master until `until` shows up, the slave closes, or 20 s pass.
fn read_pty(master: &mut std::fs::File, until: &str) -> String {
    use std::io::Read;
    let mut text = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => text.extend_from_slice(&buf[..k]),
        }
        if String::from_utf8_lossy(&text).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

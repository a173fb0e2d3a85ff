//! `gantry build` end to end on temp stores: busybox Dockerfiles built for real (RUN steps
//! in containers), the resulting image's config and layers read back from the store, the
//! cache observed through the progress output, and failures checked for leftovers.
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_agent::image::{ImageStore, Snapshotter};
use serde_json::Value;

struct Built {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A test's store and context dirs.
struct Env {
    dir: tempfile::TempDir,
    /// The pid of the last `gantry build` (its RUN containers are named after it).
    last_pid: std::cell::Cell<u32>,
}

impl Env {
    fn new() -> Env {
        common::require_root();
        Env {
            dir: tempfile::tempdir().unwrap(),
            last_pid: std::cell::Cell::new(0),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A context with busybox and `files` (path → content).
    fn context(&self, name: &str, dockerfile: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.dir.path().join(name);
        fs::create_dir_all(&ctx).unwrap();
        fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        for (p, c) in files {
            let path = ctx.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, c).unwrap();
        }
        ctx
    }

    /// `gantry build --store STORE ARGS`; RUN steps get `--network none` unless `args`
    /// choose (the tests of other things stay off the host's bridge).
    fn build(&self, args: &[&str]) -> Built {
        if args.iter().any(|a| a.starts_with("--network")) {
            self.build_as_is(args)
        } else {
            self.build_as_is(&[&["--network", "none"], args].concat())
        }
    }

    /// `gantry build --store STORE ARGS`.
    fn build_as_is(&self, args: &[&str]) -> Built {
        let out = self.dir.path().join("out");
        let err = self.dir.path().join("err");
        let mut child = Command::new(common::gantry_bin())
            .arg("build")
            .arg("--store")
            .arg(self.store())
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        self.last_pid.set(child.id());
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gantry build {args:?} timed out: {}",
                    fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Built {
            code: status.code().unwrap_or(-1),
            stdout: fs::read_to_string(&out).unwrap(),
            stderr: fs::read_to_string(&err).unwrap(),
        }
    }

    fn build_ok(&self, args: &[&str]) -> Built {
        let b = self.build(args);
        assert_eq!(b.code, 0, "gantry build {args:?} failed:\n{}", b.stderr);
        b
    }

    fn image(&self, name: &str) -> Image {
        let store = ImageStore::open(self.store()).unwrap();
        let img = store.resolve_str(name).unwrap();
        let config: Value =
            serde_json::from_slice(&store.content().read(&img.config_digest).unwrap()).unwrap();
        let mut files = BTreeMap::new();
        for l in &img.layers {
            let d = gantry_agent::image::Digest::parse(l.digest().as_ref()).unwrap();
            let mut archive = tar::Archive::new(store.content().reader(&d).unwrap());
            for e in archive.entries().unwrap() {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let (uid, mode) = (e.header().uid().unwrap(), e.header().mode().unwrap());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                files.insert(path, (data, uid, mode));
            }
        }
        Image {
            digest: img.manifest_digest.to_string(),
            config,
            files,
            layers: img.layers.len(),
        }
    }
}

struct Image {
    digest: String,
    config: Value,
    /// Path → (content, uid, mode), upper layers winning.
    files: BTreeMap<String, (Vec<u8>, u64, u32)>,
    layers: usize,
}

impl Image {
    fn text(&self, path: &str) -> String {
        let (d, _, _) = self
            .files
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the image: {:?}", self.files.keys()));
        String::from_utf8_lossy(d).into_owned()
    }
}

/// Which steps (by their text) ran and which were cached, from the plain progress.
fn step_states(stderr: &str) -> Vec<(String, &'static str)> {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let (n, msg) = rest.split_once(' ').unwrap();
        if msg.starts_with('[') {
            let text = msg.split_once("] ").unwrap().1.to_string();
            labels.insert(n.to_string(), text);
        } else if msg == "CACHED" {
            out.push((labels[n].clone(), "cached"));
        } else if msg.starts_with("DONE") {
            out.push((labels[n].clone(), "ran"));
        }
    }
    out
}

const APP: &str = r#"# an app on busybox
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG GREETING=hello
ENV WHO=world \
    EMPTY=
LABEL org.example.name="demo app" version=1
EXPOSE 8080 53/udp
WORKDIR /app
COPY msg.txt data/ ./
RUN echo "$GREETING $WHO" > out.txt && cat msg.txt && echo "${UNSET:-dflt} ${WHO:+set}" > subst.txt
RUN mkdir /shared && chmod 777 /shared && rm /app/msg.txt
USER 1000:1000
RUN id -u > /shared/uid
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/out.txt"]
"#;

#[test]
fn a_busybox_app_builds_with_its_config_and_files() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        APP,
        &[("msg.txt", "from the context\n"), ("data/d.txt", "d\n")],
    );
    let b = env.build_ok(&[
        "-t",
        "demo/app:1",
        "--build-arg",
        "GREETING=hi",
        ctx.to_str().unwrap(),
    ]);
    assert!(
        b.stderr.contains("from the context"),
        "RUN output streamed: {}",
        b.stderr
    );
    let img = env.image("demo/app:1");
    assert_eq!(b.stdout.trim(), img.digest);
    assert_eq!(
        img.text("app/out.txt"),
        "hi world\n",
        "--build-arg wins over the default"
    );
    assert_eq!(img.text("app/subst.txt"), "dflt set\n");
    assert_eq!(
        img.text("app/d.txt"),
        "d\n",
        "a directory source copies its contents"
    );
    assert_eq!(img.text("shared/uid"), "1000\n", "USER applies to RUN");
    assert_eq!(img.files["shared/uid"].1, 1000);
    assert!(
        img.files.contains_key("app/.wh.msg.txt"),
        "a deleted file is a whiteout: {:?}",
        img.files.keys()
    );
    let c = &img.config["config"];
    let env_list: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(env_list, ["WHO=world", "EMPTY="]);
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Labels"]["org.example.name"], "demo app");
    assert_eq!(c["Labels"]["version"], "1");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object());
    assert!(c["ExposedPorts"]["53/udp"].is_object());
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["cat /app/out.txt"]));
    assert_eq!(img.config["architecture"], "amd64");
    assert_eq!(img.config["os"], "linux");
    // One history entry per step; layers only for the steps that change files.
    let history = img.config["history"].as_array().unwrap();
    assert_eq!(history.len(), 15, "one per step after FROM");
    let with_layer = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(with_layer, img.layers);
    assert_eq!(img.layers, 7, "COPY, RUN, WORKDIR, COPY, RUN, RUN, RUN");
    assert_eq!(
        img.config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        img.layers
    );
}

#[test]
fn a_rebuild_is_cached_and_a_changed_file_reruns_exactly_the_steps_after_it() {
    let env = Env::new();
    let df = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo ran-$((0+1)) > /one; echo ran-$((0+1))\"]\n\
              COPY a.txt /a.txt\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo ran-$((1+1)); /bin/busybox cat /a.txt > /two\"]\n";
    let ctx = env.context("ctx", df, &[("a.txt", "v1\n")]);
    let first = env.build_ok(&["-t", "c:1", ctx.to_str().unwrap()]);
    assert!(step_states(&first.stderr).iter().all(|(_, s)| *s == "ran"));
    let d1 = env.image("c:1").digest;

    let second = env.build_ok(&["-t", "c:1", ctx.to_str().unwrap()]);
    let states = step_states(&second.stderr);
    assert_eq!(states.len(), 4);
    assert!(states.iter().all(|(_, s)| *s == "cached"), "{states:?}");
    assert!(
        !second.stderr.contains("ran-1") && !second.stderr.contains("ran-2"),
        "no RUN step ran: {}",
        second.stderr
    );
    assert_eq!(env.image("c:1").digest, d1, "same inputs, same image");

    fs::write(ctx.join("a.txt"), "v2\n").unwrap();
    let third = env.build_ok(&["-t", "c:2", ctx.to_str().unwrap()]);
    let states: Vec<&str> = step_states(&third.stderr).iter().map(|(_, s)| *s).collect();
    assert_eq!(states, ["cached", "cached", "ran", "ran"]);
    assert!(third.stderr.contains("ran-2") && !third.stderr.contains("ran-1"));
    assert_eq!(env.image("c:2").text("two"), "v2\n");

    // --no-cache runs everything again, and still gives the same image.
    let fourth = env.build_ok(&["--no-cache", "-t", "c:3", ctx.to_str().unwrap()]);
    assert!(step_states(&fourth.stderr).iter().all(|(_, s)| *s == "ran"));
    assert_eq!(env.image("c:3").digest, env.image("c:2").digest);
}

/// `--progress tty` on a terminal (a pty from `script`): live step lines that end as
/// `DONE` (with the RUN's output above them) or `CACHED`; without a terminal it is refused
/// before anything is built.
#[test]
fn progress_tty_draws_steps_on_a_terminal_and_needs_one() {
    let env = Env::new();
    let df =
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"echo\", \"tty-out\"]\n";
    let ctx = env.context("ctx", df, &[]);

    let refused = env.build(&["--progress", "tty", "-t", "p:1", ctx.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("--progress tty: standard error is not a terminal"),
        "{}",
        refused.stderr
    );
    assert!(!env.store().exists(), "nothing built, no store made");

    // util-linux `script` runs the build on a pty and copies what it drew to stdout.
    let in_pty = |tag: &str| -> String {
        let cmd = format!(
            "{} build --store {} --network none --progress tty -t {tag} {}",
            common::gantry_bin(),
            env.store().display(),
            ctx.display()
        );
        let out = Command::new("timeout")
            .args(["120", "script", "-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("running util-linux script (package bsdutils)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "build on a pty failed: {text}");
        text
    };
    let first = in_pty("p:1");
    assert!(first.contains("RUN [\"/bin/busybox\""), "{first}");
    assert!(
        first.contains("#3 tty-out"),
        "the RUN's output is shown: {first}"
    );
    assert!(first.contains("DONE"), "{first}");
    assert!(!first.contains("CACHED"), "{first}");
    let second = in_pty("p:2");
    assert!(second.contains("CACHED"), "{second}");
    assert!(
        !second.contains("#3 tty-out"),
        "a cached RUN does not run: {second}"
    );
    assert_eq!(env.image("p:1").digest, env.image("p:2").digest);
}

#[test]
fn equal_inputs_give_equal_digests_in_separate_stores() {
    let a = Env::new();
    let b = Env::new();
    let df = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo x > /x; /bin/busybox mkdir -p /d/e\"]\nENV A=1\n";
    let ca = a.context("ctx", df, &[]);
    let cb = b.context("ctx", df, &[]);
    a.build_ok(&["-t", "r:1", ca.to_str().unwrap()]);
    b.build_ok(&["-t", "r:1", cb.to_str().unwrap()]);
    assert_eq!(a.image("r:1").digest, b.image("r:1").digest);
}

#[test]
fn multi_stage_copy_from_a_stage_and_target() {
    let env = Env::new();
    let df = r#"ARG BASE=scratch
FROM ${BASE} AS tools
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /out && echo built > /out/artifact && echo other > /out/other

FROM scratch AS final
COPY --from=tools /out/artifact /artifact
COPY --from=0 --chmod=0600 /out/other /other

FROM final AS extra
ENV X=1
"#;
    let ctx = env.context("ctx", df, &[]);
    env.build_ok(&["-t", "ms:1", "--target", "final", ctx.to_str().unwrap()]);
    let img = env.image("ms:1");
    assert_eq!(img.text("artifact"), "built\n");
    assert_eq!(img.text("other"), "other\n");
    assert_eq!(img.files["other"].2 & 0o7777, 0o600);
    assert!(
        !img.files.contains_key("bin/busybox"),
        "only what was copied"
    );
    assert!(
        img.config["config"]["Env"].is_null(),
        "--target stops at final"
    );
    env.build_ok(&["-t", "ms:2", ctx.to_str().unwrap()]);
    assert_eq!(env.image("ms:2").config["config"]["Env"][0], "X=1");
}

#[test]
fn dockerignore_keeps_files_out_of_the_context() {
    let env = Env::new();
    let df = "FROM scratch\nCOPY . /ctx/\n";
    let ctx = env.context(
        "ctx",
        df,
        &[
            (".dockerignore", "secret*\nlogs/\n!logs/keep.log\nbusybox\n"),
            ("secret.key", "k"),
            ("logs/a.log", "a"),
            ("logs/keep.log", "keep"),
            ("src/main.c", "int main;"),
        ],
    );
    env.build_ok(&["-t", "ign:1", ctx.to_str().unwrap()]);
    let img = env.image("ign:1");
    assert_eq!(img.text("ctx/src/main.c"), "int main;");
    assert_eq!(img.text("ctx/logs/keep.log"), "keep");
    for gone in ["ctx/secret.key", "ctx/logs/a.log", "ctx/busybox"] {
        assert!(!img.files.contains_key(gone), "{gone} was ignored");
    }
}

/// Nothing of a failed build stays: no mounts under the store, no active snapshots, no
/// container state, no cgroups, no scratch dirs, no image.
fn assert_clean(env: &Env) {
    let store = env.store();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(store.to_str().unwrap()),
        "a mount under the store is left: {mountinfo}"
    );
    let s = ImageStore::open(&store).unwrap();
    let active: Vec<_> = s
        .snapshotter()
        .list()
        .unwrap()
        .into_iter()
        .filter(|i| i.kind != gantry_agent::image::snapshot::Kind::Committed)
        .collect();
    assert!(active.is_empty(), "snapshots left: {active:?}");
    for d in ["build/tmp", "build/runtime"] {
        let left: Vec<_> = fs::read_dir(store.join(d))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{d} not empty: {left:?}");
    }
    for h in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let g = h.path().join("gantry");
        for e in fs::read_dir(&g).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(&format!("build-run-{}-", env.last_pid.get())),
                "cgroup {} left",
                e.path().display()
            );
        }
    }
    assert!(s.index().list().unwrap().is_empty(), "no image named");
}

#[test]
fn a_failing_run_reports_line_code_and_output_and_leaves_nothing() {
    let env = Env::new();
    let df = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
              RUN echo partial > /p && echo to-stderr >&2 && exit 7\nRUN echo never\n";
    let ctx = env.context("ctx", df, &[]);
    let b = env.build(&["-t", "bad:1", ctx.to_str().unwrap()]);
    assert_eq!(b.code, 1);
    assert!(b.stderr.contains("Dockerfile:4"), "{}", b.stderr);
    assert!(b.stderr.contains("exit code 7"), "{}", b.stderr);
    assert!(b.stderr.contains("to-stderr"), "{}", b.stderr);
    assert!(!b.stderr.contains("never"));
    assert_clean(&env);
}

#[test]
fn bad_dockerfiles_fail_with_the_line_and_change_nothing() {
    let env = Env::new();
    let cases: &[(&str, &str)] = &[
        ("FROM scratch\nFROBNICATE x\n", "Dockerfile:2"),
        ("# only args\nARG X=1\n", "no FROM"),
        ("FROM scratch\nCOPY --from=nope /x /x\n", "Dockerfile:2"),
        ("FROM scratch\nCOPY ../outside /x\n", "Dockerfile:2"),
        ("FROM scratch\nCOPY missing.txt /x\n", "Dockerfile:2"),
        (
            "FROM scratch\nADD http://127.0.0.1:9/f.tar /f\n",
            "Dockerfile:2",
        ),
        ("FROM no-such-image:1\n", "Dockerfile:1"),
        (
            "FROM scratch\nCOPY --chown=nobody busybox /b\n",
            "Dockerfile:2",
        ),
    ];
    for (i, (df, want)) in cases.iter().enumerate() {
        let ctx = env.context(&format!("ctx{i}"), df, &[]);
        let b = env.build(&["-t", "bad:1", ctx.to_str().unwrap()]);
        assert_eq!(b.code, 1, "{df:?} should fail");
        assert!(
            b.stderr.contains(want),
            "{df:?}: expected {want:?} in: {}",
            b.stderr
        );
        assert_clean(&env);
    }
    // Docker's leniency: a malformed JSON array is shell form, with a warning.
    let ctx = env.context("lenient", "FROM scratch\nCMD [\"a\",\n", &[]);
    let b = env.build_ok(&["-t", "len:1", ctx.to_str().unwrap()]);
    assert!(b.stderr.contains("Dockerfile:2"), "{}", b.stderr);
    assert_eq!(
        env.image("len:1").config["config"]["Cmd"],
        serde_json::json!(["/bin/sh", "-c", "[\"a\","])
    );
}

#[test]
fn add_extracts_a_local_tar_and_a_base_image_is_built_on() {
    let env = Env::new();
    let ctx = env.context("ctx", "", &[]);
    // A tar in the context.
    let mut tb = tar::Builder::new(fs::File::create(ctx.join("files.tar")).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    tb.append_data(&mut h, "inner/file.txt", &b"abc"[..])
        .unwrap();
    tb.finish().unwrap();
    drop(tb);
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV P=base\nCMD [\"sh\"]\n",
    )
    .unwrap();
    env.build_ok(&["-t", "base:1", ctx.to_str().unwrap()]);
    fs::write(
        ctx.join("Dockerfile.child"),
        "FROM base:1\nADD files.tar /opt/\nRUN cat /opt/inner/file.txt > /copied && echo $P >> /copied\n",
    )
    .unwrap();
    env.build_ok(&[
        "-t",
        "child:1",
        "-f",
        ctx.join("Dockerfile.child").to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let img = env.image("child:1");
    assert_eq!(img.text("opt/inner/file.txt"), "abc");
    assert_eq!(img.text("copied"), "abcbase\n");
    assert_eq!(img.config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(img.config["config"]["Env"][0], "P=base");
}

/// A `gantry agent` on the test's dir (no bridge), killed by PID on drop; its cgroup
/// parent is its own.
struct AgentProc {
    child: std::process::Child,
    sock: PathBuf,
    cgroup_parent: String,
}

impl AgentProc {
    fn start(dir: &std::path::Path) -> AgentProc {
        let sock = dir.join("agent.sock");
        let cgroup_parent = common::cluster::cgroup_parent(dir, "build-agent");
        let child = Command::new(common::gantry_bin())
            .arg("agent")
            .arg("--root")
            .arg(dir.join("agent-root"))
            .arg("--run-root")
            .arg(dir.join("agent-run"))
            .arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .arg("--no-bridge")
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let a = AgentProc {
            child,
            sock,
            cgroup_parent,
        };
        common::wait_until(|| a.sock.exists(), "the agent's socket");
        a
    }

    fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    fn gantry(&self, args: &[&str]) -> std::process::Output {
        Command::new(common::gantry_bin())
            .args(args)
            .env_remove("GANTRY_STORE")
            .env("GANTRY_HOST", self.host())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // its cgroup parent (a test that checks leaks asserts on it first)
        common::remove_cgroup_parent(&self.cgroup_parent);
    }
}

#[test]
fn through_the_agent_the_image_runs_with_gantry_run() {
    let env = Env::new();
    let agent = AgentProc::start(env.dir.path());
    let df = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
              COPY msg.txt /msg.txt\nRUN echo built-$((40+2)) | tee /built\nCMD [\"sh\", \"-c\", \"cat /msg.txt /built\"]\n";
    let ctx = env.context(
        "ctx",
        df,
        &[
            ("msg.txt", "streamed\n"),
            (".dockerignore", "big\n"),
            ("big", "x"),
        ],
    );
    // The agent has no bridge: the default network (bridge, as in Docker) is refused with
    // the reason, before anything runs.
    let out = agent.gantry(&["build", "-t", "viaagent:1", ctx.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--network bridge") && stderr.contains("--no-bridge"),
        "{stderr}"
    );
    let out = agent.gantry(&[
        "build",
        "--network",
        "none",
        "-t",
        "viaagent:1",
        ctx.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "build through the agent failed: {stderr}"
    );
    assert!(
        stderr.contains("built-42"),
        "RUN output streamed back: {stderr}"
    );
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The image is in the agent's store, not in a local one.
    let store = ImageStore::open(env.dir.path().join("agent-root")).unwrap();
    assert_eq!(
        store
            .resolve_str("viaagent:1")
            .unwrap()
            .manifest_digest
            .to_string(),
        digest
    );
    let run = agent.gantry(&["run", "--rm", "--network", "none", "viaagent:1"]);
    assert!(
        run.status.success(),
        "gantry run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), "streamed\nbuilt-42\n");
    // A failing build through the agent: the error names the line, nothing is tagged.
    fs::write(ctx.join("Dockerfile"), "FROM viaagent:1\nRUN exit 5\n").unwrap();
    let bad = agent.gantry(&[
        "build",
        "--network",
        "none",
        "-t",
        "viaagent:2",
        ctx.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("Dockerfile:2") && stderr.contains("exit code 5"),
        "{stderr}"
    );
    assert!(store.resolve_str("viaagent:2").is_err());
    // A RUN step of a build through the agent runs under the agent's cgroup parent
    // (`PARENT/build-run-…`), and is removed from it when done.
    fs::write(ctx.join("Dockerfile"), "FROM viaagent:1\nRUN sleep 3\n").unwrap();
    let host = agent.host();
    let ctx_dir = ctx.clone();
    let build = std::thread::spawn(move || {
        Command::new(common::gantry_bin())
            .args(["build", "--network", "none", "-t", "viaagent:3"])
            .arg(&ctx_dir)
            .env_remove("GANTRY_STORE")
            .env("GANTRY_HOST", host)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let step_cgroup = || {
        common::cgroup_children(&agent.cgroup_parent)
            .iter()
            .any(|d| {
                d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("build-run-"))
            })
    };
    common::wait_until(
        step_cgroup,
        "the RUN step's cgroup under the agent's parent",
    );
    let out = build.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::assert_cgroups_gone(&agent.cgroup_parent);
}

/// Kills a child process (by its PID, through `Child::kill`) on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `gantry registry` on a free loopback port.
struct Registry {
    addr: String,
    _child: KillOnDrop,
}

impl Registry {
    fn start(dir: &std::path::Path) -> Registry {
        Registry::start_on(dir, "127.0.0.1")
    }

    fn start_on(dir: &std::path::Path, ip: &str) -> Registry {
        Registry::start_with(dir, ip, &["--insecure"])
    }

    /// With `security` instead of `--insecure` (e.g. the TLS flags).
    fn start_with(dir: &std::path::Path, ip: &str, security: &[&str]) -> Registry {
        let addr = common::free_addr(ip);
        let child = Command::new(common::gantry_bin())
            .args(["registry", "--listen", &addr, "--root"])
            .arg(dir.join("registry"))
            .args(security)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gantry registry");
        let r = Registry {
            addr: addr.clone(),
            _child: KillOnDrop(child),
        };
        common::wait_until(
            || std::net::TcpStream::connect(&addr).is_ok(),
            "gantry registry listening",
        );
        r
    }
}

/// A `FROM` of an image that is not in the store pulls it from its registry (loopback:
/// plain HTTP), in process (`--store`) and through the agent, shows the pull as the FROM
/// step's output, and names the pulled base; a base the registry lacks fails at its line
/// and leaves nothing.
#[test]
fn from_pulls_a_missing_base_image_from_its_registry() {
    let env = Env::new();
    let reg = Registry::start(env.dir.path());
    let base = format!("{}/build/base:1", reg.addr);
    let df = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY msg.txt /msg.txt\n";
    let ctx = env.context("ctx", df, &[("msg.txt", "from-the-registry\n")]);
    env.build_ok(&["-t", &base, ctx.to_str().unwrap()]);
    let push = Command::new(common::gantry_bin())
        .args(["push", "--store", env.store().to_str().unwrap(), &base])
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "push: {}",
        String::from_utf8_lossy(&push.stderr)
    );

    // A fresh store: the base is pulled.
    let fresh = Env::new();
    let child_df = format!("FROM {base}\nRUN cat /msg.txt > /seen\n");
    let ctx = fresh.context("ctx", &child_df, &[]);
    let b = fresh.build_ok(&["-t", "child:1", ctx.to_str().unwrap()]);
    assert!(
        b.stderr.contains(&format!("#1 pulling {base}")),
        "the pull is the FROM step's output: {}",
        b.stderr
    );
    assert_eq!(fresh.image("child:1").text("seen"), "from-the-registry\n");
    assert_eq!(fresh.image(&base).digest, env.image(&base).digest);
    // Now it is in the store: no second pull, and the step is cached.
    let again = fresh.build_ok(&["-t", "child:1", ctx.to_str().unwrap()]);
    assert!(!again.stderr.contains("pulling"), "{}", again.stderr);
    assert_eq!(step_states(&again.stderr)[0].1, "cached");

    // Through the agent (its async runtime lends itself to the build's blocking thread).
    let agent = AgentProc::start(fresh.dir.path());
    let out = agent.gantry(&[
        "build",
        "--network",
        "none",
        "-t",
        "viaagent:pulled",
        ctx.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("pulling {base}")), "{stderr}");
    let agent_store = ImageStore::open(fresh.dir.path().join("agent-root")).unwrap();
    assert!(agent_store.resolve_str(&base).is_ok(), "the base is named");
    assert!(agent_store.resolve_str("viaagent:pulled").is_ok());

    // A base the registry does not have: the line, the image, the registry's answer.
    let missing = Env::new();
    let df = format!("FROM {}/build/nope:1\n", reg.addr);
    let ctx = missing.context("ctx", &df, &[]);
    let b = missing.build(&["-t", "nope:1", ctx.to_str().unwrap()]);
    assert_eq!(b.code, 1);
    assert!(
        b.stderr.contains("Dockerfile:1")
            && b.stderr.contains("build/nope:1")
            && b.stderr.contains("pulling it failed")
            && b.stderr.contains("404"),
        "{}",
        b.stderr
    );
    assert_clean(&missing);
}

/// A small HTTP/1.1 file server on loopback (one request per connection), counting the
/// requests it answers and the 304s among them: each file's `ETag` is its sha256, and a
/// request whose `If-None-Match` names it gets 304 Not Modified.
struct HttpServer {
    addr: String,
    files: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<u8>>>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    not_modified: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    fn start(bind: &str, files: &[(&str, &str)]) -> HttpServer {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let files = std::sync::Arc::new(std::sync::Mutex::new(
            files
                .iter()
                .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>(),
        ));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let not_modified = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, h, nm, s) = (
            files.clone(),
            hits.clone(),
            not_modified.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut c) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).into_owned();
                let target = text.split_whitespace().nth(1).unwrap_or("/");
                let path = target.split('?').next().unwrap_or("/");
                h.fetch_add(1, Ordering::SeqCst);
                let body = f.lock().unwrap().get(path).cloned();
                let if_none_match = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("if-none-match")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let _ = match body {
                    Some(b) => {
                        let etag = format!("\"{}\"", gantry_agent::image::Digest::of(&b).hex());
                        if if_none_match == etag {
                            nm.fetch_add(1, Ordering::SeqCst);
                            c.write_all(
                                format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n")
                                    .as_bytes(),
                            )
                        } else {
                            c.write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                    b.len()
                                )
                                .as_bytes(),
                            )
                            .and_then(|_| c.write_all(&b))
                        }
                    }
                    None => c.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        HttpServer {
            addr,
            files,
            hits,
            not_modified,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, path: &str, content: &str) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), content.as_bytes().to_vec());
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn not_modified(&self) -> usize {
        self.not_modified.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sha256(data: &str) -> String {
    gantry_agent::image::Digest::of(data.as_bytes()).to_string()
}

/// `ADD <url>` downloads the file (mode 0600, or `--chmod`; a directory destination takes
/// the URL's last path segment), checks `--checksum`, and is cached by the download's
/// content: asked for again on a rebuild (with the ETag: 304, no body), reused while it is
/// unchanged, re-run when it changes. Failures name the line and leave nothing.
#[test]
fn add_url_downloads_checks_and_caches_by_content() {
    let env = Env::new();
    let srv = HttpServer::start("127.0.0.1:0", &[("/files/hello.txt", "hello v1\n")]);
    let url = format!("http://{}/files/hello.txt", srv.addr);
    let df = format!(
        "FROM scratch\nADD {url} /dl/\nADD --checksum={} --chmod=644 {url}?v=1 /named.txt\n",
        sha256("hello v1\n")
    );
    let ctx = env.context("ctx", &df, &[]);
    let first = env.build_ok(&["-t", "dl:1", ctx.to_str().unwrap()]);
    assert!(step_states(&first.stderr).iter().all(|(_, s)| *s == "ran"));
    let img = env.image("dl:1");
    assert_eq!(img.text("dl/hello.txt"), "hello v1\n");
    assert_eq!(img.files["dl/hello.txt"].2 & 0o7777, 0o600);
    assert_eq!(img.text("named.txt"), "hello v1\n");
    assert_eq!(img.files["named.txt"].2 & 0o7777, 0o644);
    assert_eq!(srv.hits(), 2);

    assert_eq!(srv.not_modified(), 0);

    // Unchanged content: asked for again, answered 304 (the remembered copy is used),
    // both steps cached. --no-cache runs them on the remembered copies: same image.
    let again = env.build_ok(&["-t", "dl:1", ctx.to_str().unwrap()]);
    let states: Vec<&str> = step_states(&again.stderr).iter().map(|(_, s)| *s).collect();
    assert_eq!(states, ["cached", "cached"]);
    assert_eq!((srv.hits(), srv.not_modified()), (4, 2));
    assert_eq!(env.image("dl:1").digest, img.digest);
    env.build_ok(&["--no-cache", "-t", "dl:nc", ctx.to_str().unwrap()]);
    assert_eq!((srv.hits(), srv.not_modified()), (6, 4));
    assert_eq!(env.image("dl:nc").digest, img.digest);

    // Changed content: the plain ADD runs again; the pinned one refuses the new file.
    srv.set("/files/hello.txt", "hello v2\n");
    let changed = env.build(&["-t", "dl:2", ctx.to_str().unwrap()]);
    assert_eq!(changed.code, 1, "{}", changed.stderr);
    assert_eq!(
        step_states(&changed.stderr),
        [(format!("ADD {url} /dl/"), "ran")]
    );
    assert!(
        changed.stderr.contains("Dockerfile:3")
            && changed.stderr.contains("checksum mismatch")
            && changed.stderr.contains(&sha256("hello v2\n")),
        "{}",
        changed.stderr
    );

    // Failures name the line and the URL, and leave nothing.
    let bad = Env::new();
    let closed = common::free_addr("127.0.0.1");
    let cases = [
        (
            format!("FROM scratch\nADD http://{closed}/f.txt /f\n"),
            vec!["Dockerfile:2", "downloading it failed", "onnection refused"],
        ),
        (
            format!(
                "FROM scratch\nCOPY busybox /b\nADD http://{}/nope.txt /n\n",
                srv.addr
            ),
            vec!["Dockerfile:3", "nope.txt", "HTTP 404"],
        ),
        (
            format!("FROM scratch\nADD --checksum=md5:abc {url} /f\n"),
            vec!["Dockerfile:2", "--checksum=md5:abc"],
        ),
        (
            format!("FROM scratch\nADD http://{}/ /dir/\n", srv.addr),
            vec!["Dockerfile:2", "file name"],
        ),
    ];
    for (i, (df, wants)) in cases.iter().enumerate() {
        let ctx = bad.context(&format!("ctx{i}"), df, &[]);
        let b = bad.build(&["-t", "bad:1", ctx.to_str().unwrap()]);
        assert_eq!(b.code, 1, "{df:?} should fail");
        for w in wants {
            assert!(
                b.stderr.contains(w),
                "{df:?}: expected {w:?} in {}",
                b.stderr
            );
        }
        assert_clean(&bad);
    }
}

/// A bridge for one test (its own name, subnet and chains: `n` tells the tests of one
/// process apart), removed on drop.
struct TestBridge {
    name: String,
    subnet: String,
    prefix: String,
    state_dir: PathBuf,
}

impl TestBridge {
    fn new(env: &Env, n: u32) -> TestBridge {
        let pid = std::process::id();
        TestBridge {
            name: format!("gtb{}x{n}", pid % 100_000),
            subnet: format!("10.216.{}.0/24", (pid % 100) * 2 + n + 20),
            prefix: format!("GTB{pid}X{n}"),
            // Where `gantry build --store` keeps the bridge's leases.
            state_dir: env.store().join("network"),
        }
    }

    fn args(&self) -> Vec<&str> {
        vec![
            "--bridge",
            &self.name,
            "--subnet",
            &self.subnet,
            "--chain-prefix",
            &self.prefix,
        ]
    }

    fn config(&self) -> gantry_agent::network::BridgeConfig {
        gantry_agent::network::BridgeConfig::custom(
            &self.state_dir,
            &self.name,
            &self.subnet,
            &self.prefix,
        )
        .unwrap()
    }

    fn gateway(&self) -> std::net::Ipv4Addr {
        self.config().gateway
    }

    /// Makes the bridge now (its gateway is then a host address to listen on).
    fn open(&self) {
        let cfg = self.config();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(gantry_agent::network::BridgeNetwork::open(cfg))
            .expect("opening the test bridge");
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        let cfg = self.config();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(net) = gantry_agent::network::BridgeNetwork::open(cfg).await {
                let _ = net.teardown_all().await;
            }
        });
    }
}

/// `--network none|host|bridge` (bridge the default; not part of the cache key, as in
/// Docker, so each probe differs in its text): what a RUN step sees of the network
/// — its links and addresses, its routes, whether the host's loopback and the bridge's
/// gateway answer — and that a bridge step leaves no lease, no veth and no
/// `/etc/resolv.conf` mount target in its layer. An unknown mode names the flag.
#[test]
fn run_steps_get_the_network_they_ask_for() {
    let env = Env::new();
    let ctx = env.context("ctx", "FROM scratch\n", &[]);
    let b = env.build(&["--network", "hots", "-t", "n:1", ctx.to_str().unwrap()]);
    assert_eq!(b.code, 1);
    assert!(
        b.stderr.contains("--network hots: unknown network mode"),
        "{}",
        b.stderr
    );
    assert!(!env.store().exists(), "nothing done");

    let bridge = TestBridge::new(&env, 0);
    let host_srv = HttpServer::start("127.0.0.1:0", &[("/ping", "pong-host\n")]);
    let probe = |extra: &str| {
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             RUN ip -o -4 addr > /addr; tail -n +2 /proc/net/route > /route; \
             (wget -q -O /got http://{}/ping || echo unreachable > /got); {extra}\n",
            host_srv.addr
        )
    };
    let build = |mode: Option<&str>, tag: &str, df: &str| {
        fs::write(ctx.join("Dockerfile"), df).unwrap();
        let mut args = bridge.args();
        if let Some(m) = mode {
            args.extend(["--network", m]);
        }
        args.extend(["-t", tag, ctx.to_str().unwrap()]);
        let b = env.build_as_is(&args);
        assert_eq!(b.code, 0, "gantry build {args:?} failed:\n{}", b.stderr);
        env.image(tag)
    };

    let none = build(Some("none"), "n:none", &probe("echo none"));
    let addr = none.text("addr");
    assert!(
        addr.contains("lo") && addr.contains("127.0.0.1") && addr.lines().count() == 1,
        "none: loopback only, up: {addr}"
    );
    assert_eq!(none.text("route"), "", "none: no routes");
    assert_eq!(none.text("got"), "unreachable\n");

    let host = build(Some("host"), "n:host", &probe("echo host"));
    assert_eq!(host.text("got"), "pong-host\n", "host: the host's loopback");
    assert!(host.text("addr").lines().count() >= 1);
    // The host's default routes (other tests add and remove bridges meanwhile, so not
    // the whole table).
    let host_routes = fs::read_to_string("/proc/net/route").unwrap();
    let defaults: Vec<&str> = host_routes
        .lines()
        .filter(|l| l.split('\t').nth(1) == Some("00000000"))
        .collect();
    let step_routes = host.text("route");
    assert!(
        !step_routes.is_empty()
            && defaults
                .iter()
                .all(|d| step_routes.lines().any(|l| l == *d)),
        "host: the host's routes {defaults:?} in {step_routes}"
    );

    // The default is the bridge: eth0 in the bridge's subnet, a default route through the
    // gateway, the host's resolv.conf without loopback nameservers.
    let br = build(None, "n:bridge", &probe("cat /etc/resolv.conf > /resolv"));
    let gw = bridge.gateway();
    let prefix = bridge.subnet.trim_end_matches("0/24");
    assert!(
        br.text("addr").contains("eth0") && br.text("addr").contains(&format!("inet {prefix}")),
        "bridge: {}",
        br.text("addr")
    );
    let gw_hex = format!("{:08X}", u32::from_le_bytes(gw.octets()));
    assert!(
        br.text("route")
            .lines()
            .any(|l| l.starts_with("eth0\t00000000\t") && l.contains(&gw_hex)),
        "bridge: default route via {gw}: {}",
        br.text("route")
    );
    assert_eq!(br.text("got"), "unreachable\n", "not the host's loopback");
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(
        br.text("resolv"),
        gantry_agent::engine::config::bridge_resolv_conf(&host_resolv)
    );
    assert!(
        !br.files.keys().any(|p| p.starts_with("etc")),
        "the resolv.conf mount target is not in the layer: {:?}",
        br.files.keys()
    );

    // The gateway (the host's side of the bridge) answers a bridge step.
    let gw_srv = HttpServer::start(&format!("{gw}:0"), &[("/ping", "pong-gateway\n")]);
    let df = format!(
        "FROM n:bridge\nRUN wget -q -O /gw http://{}/ping\n",
        gw_srv.addr
    );
    assert_eq!(build(None, "n:gw", &df).text("gw"), "pong-gateway\n");

    // Nothing of the steps stays on the bridge.
    let leases: Value = serde_json::from_str(
        &fs::read_to_string(
            bridge
                .state_dir
                .join(format!("{}.leases.json", bridge.name)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(leases["leases"], serde_json::json!({}), "{leases}");
    let ports = Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge.name])
        .output()
        .unwrap();
    assert!(ports.status.success());
    assert_eq!(String::from_utf8_lossy(&ports.stdout), "", "no veth left");
    assert_clean_but_images(&env);
}

/// [`assert_clean`] without the "no image" part.
fn assert_clean_but_images(env: &Env) {
    let store = env.store();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(store.to_str().unwrap()), "{mountinfo}");
    for d in ["build/tmp", "build/runtime"] {
        let left: Vec<_> = fs::read_dir(store.join(d))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{d} not empty: {left:?}");
    }
}

/// A registry on an address that is not loopback is spoken to over HTTPS unless it is
/// listed with `--insecure-registry` (docker's rule, the registry client's): the plain
/// HTTP registry on the bridge's gateway address fails the `FROM` with the line and the
/// https URL, and is pulled from once listed.
#[test]
fn from_pulls_over_https_unless_the_registry_is_insecure() {
    let env = Env::new();
    let bridge = TestBridge::new(&env, 1);
    bridge.open();
    let reg = Registry::start_on(env.dir.path(), &bridge.gateway().to_string());
    let base = format!("{}/build/base:1", reg.addr);
    let ctx = env.context(
        "ctx",
        "FROM scratch\nCOPY msg.txt /msg.txt\n",
        &[("msg.txt", "insecure\n")],
    );
    env.build_ok(&["-t", &base, ctx.to_str().unwrap()]);
    let push = Command::new(common::gantry_bin())
        .args(["push", "--store", env.store().to_str().unwrap()])
        .args(["--insecure-registry", &reg.addr, &base])
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "push: {}",
        String::from_utf8_lossy(&push.stderr)
    );

    let fresh = Env::new();
    let ctx = fresh.context("ctx", &format!("FROM {base}\nCOPY Dockerfile /df\n"), &[]);
    let b = fresh.build(&["-t", "child:1", ctx.to_str().unwrap()]);
    assert_eq!(b.code, 1, "{}", b.stderr);
    assert!(
        b.stderr.contains("Dockerfile:1")
            && b.stderr.contains("pulling it failed")
            && b.stderr.contains(&format!("https://{}/v2/", reg.addr)),
        "{}",
        b.stderr
    );
    assert_clean(&fresh);
    let ok = fresh.build_ok(&[
        "--insecure-registry",
        &reg.addr,
        "-t",
        "child:1",
        ctx.to_str().unwrap(),
    ]);
    assert!(ok.stderr.contains("pulling"), "{}", ok.stderr);
    assert_eq!(fresh.image("child:1").text("msg.txt"), "insecure\n");
}

/// A registry that serves mutual TLS only: `FROM` of its image pulls with the cluster
/// credential given to `gantry build --store` (`--tls-cert/--tls-key/--tls-ca`), fails at
/// its line without one; through an agent, the agent's credential applies, so the flags
/// are refused there.
#[test]
fn from_pulls_over_mutual_tls_with_the_given_credential() {
    use gantry_security::pki::{Ca, LeafOptions};
    use gantry_security::{Identity, Role};
    let env = Env::new();
    let pki = env.dir.path().join("pki");
    fs::create_dir_all(&pki).unwrap();
    let ca = Ca::create("build-test").unwrap();
    fs::write(pki.join("ca.crt"), ca.cert_pem()).unwrap();
    for (role, name) in [
        (Role::Registry, "reg"),
        (Role::Operator, "ops"),
        (Role::Viewer, "alice"),
    ] {
        ca.issue(
            &Identity::new(role, name).unwrap(),
            Duration::from_secs(3600),
            &LeafOptions::default(),
        )
        .unwrap()
        .save(&pki, name)
        .unwrap();
    }
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let cred = |name: &str| -> Vec<String> {
        vec![
            "--tls-cert".into(),
            p(&format!("{name}.crt")),
            "--tls-key".into(),
            p(&format!("{name}.key")),
            "--tls-ca".into(),
            p("ca.crt"),
        ]
    };
    let reg_flags = cred("reg");
    let reg_flags: Vec<&str> = reg_flags.iter().map(String::as_str).collect();
    let reg = Registry::start_with(env.dir.path(), "127.0.0.1", &reg_flags);
    let base = format!("{}/build/base:1", reg.addr);
    let ctx = env.context(
        "ctx",
        "FROM scratch\nCOPY msg.txt /msg.txt\n",
        &[("msg.txt", "over-mtls\n")],
    );
    env.build_ok(&["-t", &base, ctx.to_str().unwrap()]);
    let push = Command::new(common::gantry_bin())
        .args(["push", "--store", env.store().to_str().unwrap()])
        .args(cred("ops"))
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "push: {}",
        String::from_utf8_lossy(&push.stderr)
    );

    let fresh = Env::new();
    let ctx = fresh.context("ctx", &format!("FROM {base}\nCOPY Dockerfile /df\n"), &[]);
    let b = fresh.build(&["-t", "child:1", ctx.to_str().unwrap()]);
    assert_eq!(b.code, 1, "{}", b.stderr);
    assert!(
        b.stderr.contains("Dockerfile:1") && b.stderr.contains("pulling it failed"),
        "{}",
        b.stderr
    );
    assert_clean(&fresh);
    let alice = cred("alice");
    let mut args: Vec<&str> = alice.iter().map(String::as_str).collect();
    args.extend(["-t", "child:1", ctx.to_str().unwrap()]);
    let ok = fresh.build_ok(&args);
    assert!(ok.stderr.contains("pulling"), "{}", ok.stderr);
    assert_eq!(fresh.image("child:1").text("msg.txt"), "over-mtls\n");

    let via_agent = Command::new(common::gantry_bin())
        .arg("build")
        .args(cred("alice"))
        .arg(ctx.to_str().unwrap())
        .env_remove("GANTRY_STORE")
        .env("GANTRY_HOST", "unix:///nonexistent/agent.sock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&via_agent.stderr);
    assert!(
        !via_agent.status.success() && err.contains("--tls-cert: only with --store"),
        "{err}"
    );
}

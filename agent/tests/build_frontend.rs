//! The build front end end to end, as the builder will drive it: the CLI streams the
//! context, the agent unpacks it, plans the Dockerfile, expands each needed stage,
//! resolves and hashes COPY sources, chains cache keys and writes COPY layers.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_agent::build::cache::{stage_keys, BaseIdentity};
use gantry_agent::build::context::{content_hash, resolve_sources, ContextWalker, SourceAt};
use gantry_agent::build::instruction::Instruction;
use gantry_agent::build::layer::{copy_layer, CopySpec, MtimePolicy};
use gantry_agent::build::stages::{BuildOptions, ExpandedStage, Plan, Source};

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM $BASE AS builder
WORKDIR /src
COPY src/ ./
RUN cc -o out main.c

FROM scratch
ARG VERSION=dev
COPY --from=builder /src/out /app/
COPY conf.txt /etc/app.conf
LABEL version=$VERSION
ENV PATH=/app
CMD ["/app/out"]
"#;

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn context() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "Dockerfile", DOCKERFILE);
    write(d.path(), ".dockerignore", "*.log\nsrc/*.o\n");
    write(d.path(), "src/main.c", "int main(){return 0;}");
    write(d.path(), "src/main.o", "object");
    write(d.path(), "conf.txt", "a=1\n");
    write(d.path(), "build.log", "noise");
    d
}

/// What the agent receives: the streamed tar, unpacked.
fn receive(ctx: &Path) -> tempfile::TempDir {
    let mut stream = Vec::new();
    ContextWalker::new(ctx, Some("Dockerfile"))
        .unwrap()
        .write_tar(&mut stream)
        .unwrap();
    let received = tempfile::tempdir().unwrap();
    tar::Archive::new(stream.as_slice())
        .unpack(received.path())
        .unwrap();
    received
}

/// Cache keys of a stage, hashing COPY sources from the context (or, for
/// `COPY --from`, a stand-in for the other stage's result).
fn keys(received: &Path, stage: &ExpandedStage, base: &BaseIdentity) -> Vec<String> {
    let hashes: BTreeMap<usize, String> = stage
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| match (&step.instruction, &step.copy_from) {
            (Instruction::Copy(c), None) => {
                let at = SourceAt {
                    line: step.start.line,
                    instruction: "COPY",
                };
                let sel = resolve_sources(received, &c.sources, at).unwrap();
                Some((i, content_hash(&sel).unwrap()))
            }
            (Instruction::Copy(_), Some(Source::Stage(s))) => {
                Some((i, format!("result-of-stage-{s}")))
            }
            _ => None,
        })
        .collect();
    stage_keys(base, stage, &|i| hashes.get(&i).cloned())
}

fn plan(received: &Path, args: &[(&str, &str)]) -> Plan {
    let text = std::fs::read_to_string(received.join("Dockerfile")).unwrap();
    let options = BuildOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..BuildOptions::default()
    };
    Plan::from_source(&text, &options).unwrap()
}

#[test]
fn context_plan_keys_and_layers_fit_together() {
    let ctx = context();
    let received = receive(ctx.path());
    assert!(!received.path().join("build.log").exists());
    assert!(!received.path().join("src/main.o").exists());
    assert!(received.path().join(".dockerignore").exists());

    let p = plan(received.path(), &[]);
    assert_eq!(p.order, vec![0, 1]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let builder = p
        .expand_stage(0, &[("PATH".into(), "/bin".into())], "/")
        .unwrap();
    assert_eq!(builder.workdir, "/src");
    let final_stage = p.expand_stage(1, &[], "").unwrap();
    assert_eq!(
        final_stage.env,
        vec![("PATH".to_string(), "/app".to_string())]
    );
    assert_eq!(final_stage.steps[1].copy_from, Some(Source::Stage(0)));

    // The builder stage's COPY writes src/ into WORKDIR, owned by root.
    let Instruction::Copy(copy) = &builder.steps[1].instruction else {
        panic!("COPY expected")
    };
    let at = SourceAt {
        line: builder.steps[1].start.line,
        instruction: "COPY",
    };
    assert_eq!(at.line, 5);
    let sel = resolve_sources(received.path(), &copy.sources, at).unwrap();
    let none = |_: &str| None;
    let layer = copy_layer(
        &sel,
        &CopySpec {
            dest: &copy.dest,
            workdir: "/src",
            owner: None,
            chmod: None,
            existing_dir: &none,
            at,
        },
    )
    .unwrap();
    let paths: Vec<&String> = layer.entries.keys().collect();
    assert_eq!(paths, vec!["src", "src/main.c"]);
    let mut tar1 = Vec::new();
    let d1 = layer.write(&mut tar1, MtimePolicy::default()).unwrap();

    // Same inputs from a fresh checkout: same keys, same layer digest.
    let ctx2 = context();
    let received2 = receive(ctx2.path());
    let base = BaseIdentity::Image("sha256:busybox-config");
    let k1_builder = keys(received.path(), &builder, &base);
    let k2_builder = keys(received2.path(), &builder, &base);
    assert_eq!(k1_builder, k2_builder);
    let sel2 = resolve_sources(received2.path(), &copy.sources, at).unwrap();
    let layer2 = copy_layer(
        &sel2,
        &CopySpec {
            dest: &copy.dest,
            workdir: "/src",
            owner: None,
            chmod: None,
            existing_dir: &none,
            at,
        },
    )
    .unwrap();
    assert_eq!(
        layer2.write(Vec::new(), MtimePolicy::default()).unwrap(),
        d1
    );

    // Changing conf.txt invalidates exactly the final stage's steps from its COPY on.
    let final_base = BaseIdentity::Scratch;
    let before = keys(received.path(), &final_stage, &final_base);
    write(received.path(), "conf.txt", "a=2\n");
    let after = keys(received.path(), &final_stage, &final_base);
    assert_eq!(before.len(), 6);
    assert_eq!(before[..2], after[..2], "ARG and COPY --from are unchanged");
    for i in 2..before.len() {
        assert_ne!(before[i], after[i], "step {i} must rerun");
    }
    assert_eq!(
        k1_builder,
        keys(received.path(), &builder, &base),
        "the builder stage does not copy conf.txt"
    );

    // A build arg changes the LABEL step (through substitution) and what follows.
    let p2 = plan(received.path(), &[("VERSION", "1.0")]);
    let final2 = p2.expand_stage(1, &[], "").unwrap();
    let with_arg = keys(received.path(), &final2, &final_base);
    assert_eq!(with_arg[..3], after[..3]);
    assert_ne!(with_arg[3], after[3]);
}

#[test]
fn bad_dockerfiles_fail_with_line_numbers() {
    let cases: &[(&str, &str)] = &[
        (
            "FROM a\nFOO bar\n",
            "Dockerfile:2:1: unknown instruction: FOO",
        ),
        ("# only a comment\n", "Dockerfile has no FROM instruction"),
        (
            "FROM a\nCOPY --from=3 /x /y\n",
            "Dockerfile:2:6: COPY --from=3: undefined stage",
        ),
        (
            "FROM a\nCMD [\"x\", 1]\n",
            "Dockerfile:2:5: CMD: JSON array must contain only strings",
        ),
    ];
    for (src, want) in cases {
        let e = Plan::from_source(src, &BuildOptions::default()).unwrap_err();
        assert!(e.to_string().starts_with(want), "{src:?}: got {e}");
    }
    let ctx = context();
    let at = SourceAt {
        line: 9,
        instruction: "COPY",
    };
    let e = resolve_sources(ctx.path(), &["../outside".into()], at).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:9: COPY source \"../outside\" is outside the build context"
    );
}

//! The build front end's share of a fully cached rebuild of a 10-step Dockerfile: what
//! must happen before the builder can look up a single cache key. Per iteration, timed
//! by phase: the CLI streams the context (tar in memory), the agent indexes the stream
//! (`ContextIndex`: no unpacking), parses, plans and expands the Dockerfile, then resolves
//! and hashes the COPY sources and chains the cache keys. For comparison it also times
//! unpacking the same stream (what a cache miss needs). Prints medians (ms) as one
//! Markdown table row.
//!
//! Usage: build_frontend_bench [ITERATIONS] [FILES]   (bench/build-frontend.sh runs it)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_agent::build::cache::{stage_keys, BaseIdentity};
use gantry_agent::build::context::{
    content_hash_in, resolve_sources_in, ContextIndex, ContextWalker, SourceAt,
};
use gantry_agent::build::instruction::Instruction;
use gantry_agent::build::stages::{BuildOptions, Plan};

const DOCKERFILE: &str = "FROM busybox
ARG VERSION=1
ENV APP=/app
WORKDIR $APP
COPY src/ ./src/
RUN ./src/build.sh
COPY conf/ /etc/app/
RUN chmod -R go-w /etc/app
LABEL version=$VERSION
EXPOSE 8080
CMD [\"/app/run\"]
";

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    let files: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);

    let ctx = tempfile::tempdir()?;
    std::fs::write(ctx.path().join("Dockerfile"), DOCKERFILE)?;
    std::fs::write(ctx.path().join(".dockerignore"), "*.log\n")?;
    let chunk = vec![b'x'; 4096];
    for i in 0..files {
        let dir = if i % 10 == 0 { "conf" } else { "src" };
        let p = ctx.path().join(format!("{dir}/d{}/f{i}", i % 17));
        std::fs::create_dir_all(p.parent().expect("parent"))?;
        std::fs::write(&p, [&chunk[..], i.to_string().as_bytes()].concat())?;
    }
    std::fs::write(ctx.path().join("ignored.log"), &chunk)?;

    let (mut stream_t, mut index_t, mut plan_t, mut hash_t, mut total_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut unpack_only = Vec::new();
    let mut bytes = 0;
    let mut first_keys: Option<Vec<String>> = None;
    for _ in 0..iterations {
        let t0 = Instant::now();
        let mut tar = Vec::new();
        ContextWalker::new(ctx.path(), Some("Dockerfile"))?.write_tar(&mut tar)?;
        let t1 = Instant::now();
        // The agent indexes the stream as it arrives (no unpacking on a cache hit).
        let index = ContextIndex::from_tar(tar.as_slice())?;
        let t2 = Instant::now();
        let plan = Plan::from_source(DOCKERFILE, &BuildOptions::default())?;
        let stage = plan.expand_stage(plan.target, &[("PATH".into(), "/bin".into())], "/")?;
        let t3 = Instant::now();
        let mut hashes = BTreeMap::new();
        for (i, step) in stage.steps.iter().enumerate() {
            if let Instruction::Copy(c) = &step.instruction {
                let at = SourceAt {
                    line: step.start.line,
                    instruction: "COPY",
                };
                let sel = resolve_sources_in(&index, &c.sources, at)?;
                hashes.insert(i, content_hash_in(&index, &sel)?);
            }
        }
        let keys = stage_keys(&BaseIdentity::Image("sha256:busybox"), &stage, &|i| {
            hashes.get(&i).cloned()
        });
        let t4 = Instant::now();
        assert_eq!(keys.len(), 10);
        assert_eq!(
            first_keys.get_or_insert(keys.clone()),
            &keys,
            "keys are stable"
        );
        bytes = tar.len();
        stream_t.push(t1 - t0);
        index_t.push(t2 - t1);
        plan_t.push(t3 - t2);
        hash_t.push(t4 - t3);
        total_t.push(t4 - t0);
        // For comparison: unpacking the same stream (what a cache miss needs).
        let u0 = Instant::now();
        let received = tempfile::tempdir()?;
        tar::Archive::new(tar.as_slice()).unpack(received.path())?;
        unpack_only.push(u0.elapsed());
    }
    println!(
        "| {files} files, {:.1} MiB context | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        bytes as f64 / (1024.0 * 1024.0),
        median(stream_t),
        median(index_t),
        median(plan_t),
        median(hash_t),
        median(total_t),
        median(unpack_only)
    );
    Ok(())
}

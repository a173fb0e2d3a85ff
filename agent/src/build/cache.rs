//! Build cache keys: when may a step's result be reused?
//!
//! Vocabulary:
//! - **base key**: the key a stage starts from — `scratch`, the base image's config
//!   digest, or the final key of the stage it is built on;
//! - **step key**: `sha256` over (parent key, the instruction after substitution in its
//!   canonical form, for `RUN` the build args in scope, for `COPY`/`ADD` the content hash
//!   of the sources). Keys chain: a changed step changes every key after it, none before.
//!
//! Like Docker, only `RUN` keys include the build args in scope (`ARG`s reach the other
//! instructions only through substitution, which the canonical text already shows), and
//! the proxy args never count: changing a proxy must not invalidate a build. Pure
//! functions, no I/O: the builder looks keys up in its store.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::instruction::Instruction;
use super::stages::{is_proxy_arg, ExpandedStage, Step};

const VERSION: &[u8] = b"gantry-build-cache-v1";

/// Where a stage starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseIdentity<'a> {
    Scratch,
    /// The image's config digest (what identifies its content).
    Image(&'a str),
    /// The last key of the stage this one is built `FROM`.
    Stage(&'a str),
}

fn field(h: &mut Sha256, tag: &[u8], value: &[u8]) {
    h.update(tag);
    h.update((value.len() as u64).to_le_bytes());
    h.update(value);
}

fn finish(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

pub fn base_key(base: &BaseIdentity) -> String {
    let mut h = Sha256::new();
    field(&mut h, b"v", VERSION);
    match base {
        BaseIdentity::Scratch => field(&mut h, b"scratch", b""),
        BaseIdentity::Image(digest) => field(&mut h, b"image", digest.as_bytes()),
        BaseIdentity::Stage(key) => field(&mut h, b"stage", key.as_bytes()),
    }
    finish(h)
}

/// The key of `step` on top of `parent`; `content` is the content hash of a
/// `COPY`/`ADD`'s sources.
pub fn step_key(parent: &str, step: &Step, content: Option<&str>) -> String {
    let mut h = Sha256::new();
    field(&mut h, b"v", VERSION);
    field(&mut h, b"parent", parent.as_bytes());
    field(&mut h, b"instruction", step.canonical().as_bytes());
    if let Some(from) = &step.copy_from {
        field(&mut h, b"from", format!("{from:?}").as_bytes());
    }
    if matches!(step.instruction, Instruction::Run(_)) {
        let args: BTreeMap<&String, &String> =
            step.args.iter().filter(|(k, _)| !is_proxy_arg(k)).collect();
        for (k, v) in args {
            field(&mut h, b"arg", k.as_bytes());
            field(&mut h, b"=", v.as_bytes());
        }
    }
    if let Some(c) = content {
        field(&mut h, b"content", c.as_bytes());
    }
    finish(h)
}

/// The keys of all steps of a stage, chained from `base`; `content(i)` gives the
/// content hash for step `i` if it copies.
pub fn stage_keys(
    base: &BaseIdentity,
    stage: &ExpandedStage,
    content: &dyn Fn(usize) -> Option<String>,
) -> Vec<String> {
    let mut parent = base_key(base);
    let mut out = Vec::with_capacity(stage.steps.len());
    for (i, step) in stage.steps.iter().enumerate() {
        let key = step_key(&parent, step, content(i).as_deref());
        out.push(key.clone());
        parent = key;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::stages::{BuildOptions, Plan};

    fn stage(src: &str, args: &[(&str, &str)]) -> ExpandedStage {
        let options = BuildOptions {
            build_args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..BuildOptions::default()
        };
        let plan = Plan::from_source(src, &options).unwrap();
        plan.expand_stage(plan.target, &[], "").unwrap()
    }

    const DF: &str = "FROM busybox\nARG V=1\nRUN echo a\nCOPY x /x\nENV E=$V\nRUN echo b\n";

    fn keys(src: &str, args: &[(&str, &str)], copied: &str) -> Vec<String> {
        let st = stage(src, args);
        let copied = copied.to_string();
        stage_keys(&BaseIdentity::Image("sha256:base"), &st, &move |i| {
            (i == 2).then(|| copied.clone())
        })
    }

    #[test]
    fn same_inputs_same_keys() {
        let a = keys(DF, &[], "sha256:c1");
        assert_eq!(a, keys(DF, &[], "sha256:c1"));
        assert_eq!(a.len(), 5);
        let unique: std::collections::BTreeSet<&String> = a.iter().collect();
        assert_eq!(unique.len(), 5, "every step has its own key");
    }

    #[test]
    fn changed_copy_content_invalidates_exactly_the_steps_after_it() {
        let a = keys(DF, &[], "sha256:c1");
        let b = keys(DF, &[], "sha256:c2");
        assert_eq!(a[..2], b[..2]);
        for i in 2..5 {
            assert_ne!(a[i], b[i], "step {i}");
        }
    }

    #[test]
    fn build_args_count_for_run_and_through_substitution() {
        let a = keys(DF, &[], "c");
        let b = keys(DF, &[("V", "2")], "c");
        // `RUN echo a` has V=1 vs V=2 in scope: it must rerun (Docker does too).
        assert_eq!(a[0], b[0], "the ARG step itself");
        assert_ne!(a[1], b[1]);
        // Proxies never count.
        let p = keys(DF, &[("http_proxy", "http://p:1")], "c");
        assert_eq!(a, p);
    }

    #[test]
    fn an_unused_arg_does_not_invalidate_copy() {
        let src = "FROM busybox\nARG V=1\nCOPY x /x\n";
        let st1 = stage(src, &[]);
        let st2 = stage(src, &[("V", "2")]);
        let base = BaseIdentity::Scratch;
        let k1 = stage_keys(&base, &st1, &|_| Some("c".into()));
        let k2 = stage_keys(&base, &st2, &|_| Some("c".into()));
        assert_eq!(k1, k2);
    }

    #[test]
    fn instruction_text_parent_and_base_matter() {
        let a = keys(DF, &[], "c");
        let b = keys(&DF.replace("echo b", "echo c"), &[], "c");
        assert_eq!(a[..4], b[..4]);
        assert_ne!(a[4], b[4]);
        let st = stage(DF, &[]);
        let other = stage_keys(&BaseIdentity::Image("sha256:other"), &st, &|i| {
            (i == 2).then(|| "c".into())
        });
        assert!(a.iter().zip(&other).all(|(x, y)| x != y));
        assert_ne!(
            base_key(&BaseIdentity::Scratch),
            base_key(&BaseIdentity::Image(""))
        );
        assert_ne!(
            base_key(&BaseIdentity::Stage("k")),
            base_key(&BaseIdentity::Image("k"))
        );
    }
}

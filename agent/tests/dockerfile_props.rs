//! Property tests of the Dockerfile front end (the build request's decoder): any text, and
//! Dockerfile-shaped text with random flags, quotes, escapes, continuations and variables,
//! parses to instructions or to an error carrying a line inside the file; planning and
//! expanding every stage never panics. Bounded (a few hundred cases); `fuzz/` has the long
//! campaign.

use gantry_agent::build::instruction::Dockerfile;
use gantry_agent::build::stages::{BuildOptions, Plan};
use proptest::prelude::*;

const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
    "MAINTAINER",
    "from",
    "BOGUS",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_./:=-]{1,10}",
        1 => r#"\$\{?[A-Z_]{1,4}(:?[-+?][a-z]{0,3})?\}?"#,
        1 => r#"["'\\`\[\],{}()#=$-]{1,3}"#,
        1 => "--[a-z]{1,8}(=[a-z0-9$]{0,6})?",
        1 => "\\PC{1,4}",
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (prop::sample::select(KEYWORDS), prop::collection::vec(word(), 0..5))
            .prop_map(|(k, ws)| format!("{k} {}", ws.join(" "))),
        1 => (prop::sample::select(KEYWORDS), prop::collection::vec("[a-z0-9 \"$/]{0,6}", 0..4))
            .prop_map(|(k, ws)| format!("{k} [{}]", ws.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(","))),
        1 => "# ?(escape|syntax|check) ?= ?[`\\\\a-z/:=]{0,8}",
        1 => "[ \t]*(#.*)?",
        1 => "\\PC{0,30}",
    ]
}

fn dockerfile() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(line(), 0..10),
        prop::collection::vec(any::<bool>(), 10),
    )
        .prop_map(|(lines, cont)| {
            let mut s = String::new();
            for (i, l) in lines.iter().enumerate() {
                s.push_str(l);
                // Some lines continue with a backslash (or the escape directive's backtick).
                s.push_str(if cont[i % 10] { " \\\n" } else { "\n" });
            }
            s
        })
}

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn check(source: &str) -> Result<(), TestCaseError> {
    let lines = source.lines().count().max(1);
    match Dockerfile::parse(source) {
        Ok(_) => {}
        Err(e) => {
            prop_assert!(
                e.position.line <= lines + 1,
                "error at line {} of a {lines}-line file: {e}",
                e.position.line
            );
            prop_assert!(!e.message.is_empty());
        }
    }
    if let Ok(plan) = Plan::from_source(source, &BuildOptions::default()) {
        for &i in &plan.order {
            let _ = plan.expand_stage(i, &[("PATH".into(), "/bin".into())], "/");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn any_text_parses_or_fails_at_a_line(source in "\\PC{0,200}") {
        check(&source)?;
    }

    #[test]
    fn dockerfile_shaped_text_parses_plans_and_expands_without_panic(source in dockerfile()) {
        check(&source)?;
    }
}

//! Stages, build arguments and substitution: from a parsed [`Dockerfile`] to a [`Plan`]
//! (which stages exist, which the target needs, in what order) and, per stage, the
//! [`Step`]s with every variable expanded.
//!
//! Vocabulary:
//! - **stage**: a `FROM` and the instructions up to the next one; known by index and by
//!   its `AS` name. Its **base** is `scratch`, an image, or an earlier stage;
//! - **global args**: `ARG`s before the first `FROM`; they are visible only in `FROM`
//!   lines, unless a stage redeclares them (`ARG NAME` takes the global value);
//! - **build args**: `--build-arg K=V`, overriding defaults of declared args;
//! - **predefined args**: the proxy variables (usable without declaring them, kept out of
//!   the cache key) and the platform args (`TARGETPLATFORM`, `TARGETOS`, `TARGETARCH`,
//!   `TARGETVARIANT`, `BUILDPLATFORM`, `BUILDOS`, `BUILDARCH`, `BUILDVARIANT`): global,
//!   and inside a stage once declared;
//! - **expansion**: which instructions expand variables follows Docker: `ADD COPY ENV
//!   EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR` (and `COPY`'s flags) do; `RUN`, `CMD`,
//!   `ENTRYPOINT`, `SHELL`, `HEALTHCHECK`, `ONBUILD` do not (the shell does, at run time).
//!   `ENV` wins over an `ARG` of the same name; all pairs of one `ENV` see the values from
//!   before that `ENV`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::instruction::{ArgDecl, Copy, Dockerfile, Instruction, KeyValue, Located};
use super::lex::{LexError, Lexer};
use super::parser::{ParseError, Position, Warning};

/// Errors of planning and expanding a build.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("Dockerfile has no FROM instruction")]
    NoFrom,
    #[error("target stage {name:?} not found (stages: {known})")]
    UnknownTarget { name: String, known: String },
    #[error("no stage {index}")]
    NoStage { index: usize },
}

/// An OS/architecture pair, as in `linux/amd64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in OCI/Go names.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// `os/arch[/variant]`.
    pub fn parse(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let os = parts.next().filter(|s| !s.is_empty())?;
        let arch = parts.next().filter(|s| !s.is_empty())?;
        let variant = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.to_ascii_lowercase(),
            arch: arch.to_ascii_lowercase(),
            variant,
        })
    }

    /// Whether `self` (as written in a Dockerfile) denotes `host`: the variant may be
    /// left out.
    pub fn matches(&self, host: &Platform) -> bool {
        self.os == host.os
            && self.arch == host.arch
            && (self.variant.is_none() || self.variant == host.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a build is asked for, besides the Dockerfile.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub platform: Platform,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            build_args: BTreeMap::new(),
            target: None,
            platform: Platform::host(),
        }
    }
}

/// Proxy args: usable without `ARG`, never part of the cache key or history.
pub const PROXY_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

pub fn is_proxy_arg(name: &str) -> bool {
    PROXY_ARGS.contains(&name) || name == "ALL_PROXY" || name == "all_proxy"
}

/// The platform args for a build on `platform` (target = build platform: no cross builds).
pub fn platform_args(platform: &Platform) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for prefix in ["TARGET", "BUILD"] {
        out.insert(format!("{prefix}PLATFORM"), platform.to_string());
        out.insert(format!("{prefix}OS"), platform.os.clone());
        out.insert(format!("{prefix}ARCH"), platform.arch.clone());
        out.insert(
            format!("{prefix}VARIANT"),
            platform.variant.clone().unwrap_or_default(),
        );
    }
    out
}

/// A stage's base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    Image(String),
    Stage(usize),
}

/// What `COPY --from` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stage(usize),
    Image(String),
}

/// A stage as declared: its base (expanded with the global args) and its instructions.
#[derive(Debug, Clone)]
pub struct StageDef {
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    pub platform: Option<Platform>,
    pub from: Located,
    pub instructions: Vec<Located>,
    /// `COPY --from` of each instruction that has one: (instruction index, source).
    pub copy_from: Vec<(usize, Source)>,
}

/// The build's shape: stages, the target and the stages it needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub escape: char,
    pub stages: Vec<StageDef>,
    /// Index of the stage to build (the last one unless `--target`).
    pub target: usize,
    /// Stages needed by the target, dependencies first, the target last.
    pub order: Vec<usize>,
    /// Values of the global args (and predefined platform args).
    pub global_args: BTreeMap<String, Option<String>>,
    pub build_args: BTreeMap<String, String>,
    pub platform: Platform,
    pub warnings: Vec<Warning>,
}

/// One instruction of a stage, expanded and ready for the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub instruction: Instruction,
    /// For `COPY --from`: the resolved source.
    pub copy_from: Option<Source>,
    pub start: Position,
    /// The instruction as written.
    pub text: String,
    /// Args in scope with a value (what a `RUN` sees in its environment, besides `ENV`).
    pub args: BTreeMap<String, String>,
}

impl Step {
    /// The instruction after substitution in a canonical form (for cache keys, history).
    pub fn canonical(&self) -> String {
        serde_json::to_string(&self.instruction).expect("instructions serialize")
    }
}

/// A stage after expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedStage {
    pub index: usize,
    pub steps: Vec<Step>,
    /// The environment at the end of the stage (base env plus `ENV`s), in order of first
    /// definition.
    pub env: Vec<(String, String)>,
    /// The working directory at the end of the stage (absolute).
    pub workdir: String,
}

fn lex_error(located: &Located, word: &str, e: LexError) -> ParseError {
    located.error_in(
        word,
        e.offset(),
        format!("{}: {e}", located.instruction.keyword()),
    )
}

/// Resolves `ARG` declarations against build args, defaults and an outer scope.
fn declare_args(
    decls: &[ArgDecl],
    located: &Located,
    lexer: &Lexer,
    build_args: &BTreeMap<String, String>,
    outer: &BTreeMap<String, Option<String>>,
    scope: &mut BTreeMap<String, Option<String>>,
    env: &[(String, String)],
) -> Result<(), ParseError> {
    for decl in decls {
        let value = if let Some(v) = build_args.get(&decl.name) {
            Some(v.clone())
        } else if let Some(default) = &decl.default {
            let lookup = |n: &str| lookup_in(env, scope, n);
            Some(
                lexer
                    .process_word(default, &lookup)
                    .map_err(|e| lex_error(located, default, e))?,
            )
        } else {
            outer.get(&decl.name).cloned().flatten()
        };
        scope.insert(decl.name.clone(), value);
    }
    Ok(())
}

fn lookup_in(
    env: &[(String, String)],
    args: &BTreeMap<String, Option<String>>,
    name: &str,
) -> Option<String> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .or_else(|| args.get(name).cloned().flatten())
}

impl Plan {
    /// Parses and plans in one go.
    pub fn from_source(source: &str, options: &BuildOptions) -> Result<Plan, PlanError> {
        Plan::new(Dockerfile::parse(source)?, options)
    }

    pub fn new(dockerfile: Dockerfile, options: &BuildOptions) -> Result<Plan, PlanError> {
        let lexer = Lexer::new(dockerfile.escape);
        let mut warnings = dockerfile.warnings;
        let mut global: BTreeMap<String, Option<String>> = platform_args(&options.platform)
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for (k, v) in &options.build_args {
            if is_proxy_arg(k) {
                global.insert(k.clone(), Some(v.clone()));
            }
        }
        let mut declared: BTreeSet<String> = BTreeSet::new();
        let mut stages: Vec<StageDef> = Vec::new();
        for located in dockerfile.instructions {
            match &located.instruction {
                Instruction::Arg(decls) if stages.is_empty() => {
                    let snapshot = global.clone();
                    declared.extend(decls.iter().map(|d| d.name.clone()));
                    declare_args(
                        decls,
                        &located,
                        &lexer,
                        &options.build_args,
                        &snapshot,
                        &mut global,
                        &[],
                    )?;
                }
                Instruction::From(from) => {
                    let lookup = |n: &str| global.get(n).cloned().flatten();
                    let image = lexer
                        .process_word(&from.image, &lookup)
                        .map_err(|e| lex_error(&located, &from.image, e))?;
                    if image.is_empty() {
                        return Err(located
                            .error_in(&from.image, 0, "FROM: base name expands to an empty string")
                            .into());
                    }
                    let platform = match &from.platform {
                        None => None,
                        Some(p) => {
                            let text = lexer
                                .process_word(p, &lookup)
                                .map_err(|e| lex_error(&located, p, e))?;
                            let at = located.flag_position("platform");
                            let parsed = Platform::parse(&text).ok_or_else(|| {
                                ParseError::new(
                                    at,
                                    format!("FROM --platform: invalid platform {text:?}: expected os/arch[/variant]"),
                                )
                            })?;
                            if !parsed.matches(&options.platform) {
                                return Err(ParseError::new(
                                    at,
                                    format!(
                                        "FROM --platform={parsed}: only the build host's platform {} is supported",
                                        options.platform
                                    ),
                                )
                                .into());
                            }
                            Some(parsed)
                        }
                    };
                    if let Some(name) = &from.name {
                        if stages.iter().any(|s| s.name.as_deref() == Some(name)) {
                            return Err(located
                                .error_in(name, 0, format!("duplicate stage name {name:?}"))
                                .into());
                        }
                    }
                    let base = if image.eq_ignore_ascii_case("scratch") {
                        Base::Scratch
                    } else if let Some(s) = stages
                        .iter()
                        .find(|s| s.name.as_deref() == Some(image.to_ascii_lowercase().as_str()))
                    {
                        Base::Stage(s.index)
                    } else {
                        Base::Image(image)
                    };
                    stages.push(StageDef {
                        index: stages.len(),
                        name: from.name.clone(),
                        base,
                        platform,
                        from: located.clone(),
                        instructions: Vec::new(),
                        copy_from: Vec::new(),
                    });
                }
                _ if stages.is_empty() => {
                    return Err(ParseError::new(
                        located.start(),
                        format!(
                            "{} before the first FROM: only ARG may precede FROM",
                            located.instruction.keyword()
                        ),
                    )
                    .into());
                }
                _ => stages
                    .last_mut()
                    .expect("a stage")
                    .instructions
                    .push(located),
            }
        }
        if stages.is_empty() {
            return Err(PlanError::NoFrom);
        }
        resolve_copy_from(&mut stages, &lexer, &options.build_args, &global)?;

        let target = match &options.target {
            None => stages.len() - 1,
            Some(name) => {
                let lower = name.to_ascii_lowercase();
                stages
                    .iter()
                    .find(|s| s.name.as_deref() == Some(lower.as_str()))
                    .map(|s| s.index)
                    .ok_or_else(|| PlanError::UnknownTarget {
                        name: name.clone(),
                        known: stages
                            .iter()
                            .filter_map(|s| s.name.clone())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?
            }
        };
        let order = build_order(&stages, target)?;

        for stage in order.iter().map(|&i| &stages[i]) {
            for located in &stage.instructions {
                if let Instruction::Arg(decls) = &located.instruction {
                    declared.extend(decls.iter().map(|d| d.name.clone()));
                }
            }
        }
        for stage in &stages {
            for keyword in ["CMD", "ENTRYPOINT", "HEALTHCHECK"] {
                let lines: Vec<usize> = stage
                    .instructions
                    .iter()
                    .filter(|l| l.instruction.keyword() == keyword)
                    .map(Located::line)
                    .collect();
                if let Some((last, earlier)) = lines.split_last() {
                    for line in earlier {
                        warnings.push(Warning {
                            line: *line,
                            message: format!(
                                "multiple {keyword} instructions in one stage: only the last (line {last}) takes effect"
                            ),
                        });
                    }
                }
            }
        }
        let unused: Vec<&str> = options
            .build_args
            .keys()
            .filter(|k| !declared.contains(*k) && !is_proxy_arg(k))
            .map(String::as_str)
            .collect();
        if !unused.is_empty() {
            warnings.push(Warning {
                line: 0,
                message: format!(
                    "build args not consumed by the build: {}",
                    unused.join(", ")
                ),
            });
        }
        Ok(Plan {
            escape: dockerfile.escape,
            stages,
            target,
            order,
            global_args: global,
            build_args: options.build_args.clone(),
            platform: options.platform.clone(),
            warnings,
        })
    }

    /// Expands stage `index`: `base_env` is its base's environment (the image config's
    /// `Env`, or the base stage's [`ExpandedStage::env`]), `base_workdir` likewise.
    pub fn expand_stage(
        &self,
        index: usize,
        base_env: &[(String, String)],
        base_workdir: &str,
    ) -> Result<ExpandedStage, PlanError> {
        let stage = self.stages.get(index).ok_or(PlanError::NoStage { index })?;
        let lexer = Lexer::new(self.escape);
        let mut env: Vec<(String, String)> = base_env.to_vec();
        let mut args: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (k, v) in &self.build_args {
            if is_proxy_arg(k) {
                args.insert(k.clone(), Some(v.clone()));
            }
        }
        let mut workdir = if base_workdir.is_empty() {
            "/".to_string()
        } else {
            base_workdir.to_string()
        };
        let mut steps = Vec::with_capacity(stage.instructions.len());
        for (i, located) in stage.instructions.iter().enumerate() {
            let word =
                |w: &str, env: &[(String, String)], args: &BTreeMap<String, Option<String>>| {
                    let lookup = |n: &str| lookup_in(env, args, n);
                    lexer
                        .process_word(w, &lookup)
                        .map_err(|e| lex_error(located, w, e))
                };
            let kvs = |pairs: &[KeyValue]| -> Result<Vec<KeyValue>, ParseError> {
                pairs
                    .iter()
                    .map(|kv| {
                        Ok(KeyValue {
                            key: word(&kv.key, &env, &args)?,
                            value: word(&kv.value, &env, &args)?,
                        })
                    })
                    .collect()
            };
            let copy = |c: &Copy| -> Result<Copy, ParseError> {
                Ok(Copy {
                    sources: c
                        .sources
                        .iter()
                        .map(|s| word(s, &env, &args))
                        .collect::<Result<_, _>>()?,
                    dest: word(&c.dest, &env, &args)?,
                    from: c.from.clone(),
                    chown: c
                        .chown
                        .as_deref()
                        .map(|s| word(s, &env, &args))
                        .transpose()?,
                    chmod: c
                        .chmod
                        .as_deref()
                        .map(|s| word(s, &env, &args))
                        .transpose()?,
                    checksum: c
                        .checksum
                        .as_deref()
                        .map(|s| word(s, &env, &args))
                        .transpose()?,
                })
            };
            let instruction = match &located.instruction {
                Instruction::Env(pairs) => {
                    let pairs = kvs(pairs)?;
                    for kv in &pairs {
                        match env.iter_mut().find(|(k, _)| *k == kv.key) {
                            Some(slot) => slot.1 = kv.value.clone(),
                            None => env.push((kv.key.clone(), kv.value.clone())),
                        }
                    }
                    Instruction::Env(pairs)
                }
                Instruction::Label(pairs) => Instruction::Label(kvs(pairs)?),
                Instruction::Arg(decls) => {
                    let snapshot = args.clone();
                    let mut outer = self.global_args.clone();
                    outer.extend(snapshot);
                    declare_args(
                        decls,
                        located,
                        &lexer,
                        &self.build_args,
                        &outer,
                        &mut args,
                        &env,
                    )?;
                    Instruction::Arg(decls.clone())
                }
                Instruction::Copy(c) => Instruction::Copy(copy(c)?),
                Instruction::Add(c) => Instruction::Add(copy(c)?),
                Instruction::Workdir(w) => {
                    let expanded = word(w, &env, &args)?;
                    workdir = join_workdir(&workdir, &expanded);
                    Instruction::Workdir(workdir.clone())
                }
                Instruction::User(u) => Instruction::User(word(u, &env, &args)?),
                Instruction::StopSignal(s) => Instruction::StopSignal(word(s, &env, &args)?),
                Instruction::Volume(v) => Instruction::Volume(
                    v.iter()
                        .map(|s| word(s, &env, &args))
                        .collect::<Result<_, _>>()?,
                ),
                Instruction::Expose(ports) => {
                    let mut out = Vec::new();
                    for p in ports {
                        let lookup = |n: &str| lookup_in(&env, &args, n);
                        out.extend(
                            lexer
                                .process_words(p, &lookup)
                                .map_err(|e| lex_error(located, p, e))?,
                        );
                    }
                    Instruction::Expose(out)
                }
                other => other.clone(),
            };
            let copy_from = stage
                .copy_from
                .iter()
                .find(|(at, _)| *at == i)
                .map(|(_, s)| s.clone());
            steps.push(Step {
                instruction,
                copy_from,
                start: located.start(),
                text: located.text().to_string(),
                args: args
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                    .collect(),
            });
        }
        Ok(ExpandedStage {
            index,
            steps,
            env,
            workdir,
        })
    }
}

/// `WORKDIR` is relative to the previous one; the result is clean and absolute.
pub fn join_workdir(current: &str, next: &str) -> String {
    let joined = if next.starts_with('/') {
        next.to_string()
    } else {
        format!("{current}/{next}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Expands and resolves each `COPY --from` (with global and stage args: ENV is not known
/// before the base image is) to a stage or an image.
fn resolve_copy_from(
    stages: &mut [StageDef],
    lexer: &Lexer,
    build_args: &BTreeMap<String, String>,
    global: &BTreeMap<String, Option<String>>,
) -> Result<(), PlanError> {
    let names: Vec<(usize, Option<String>)> =
        stages.iter().map(|s| (s.index, s.name.clone())).collect();
    let count = stages.len();
    for stage in stages.iter_mut() {
        let mut scope: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut found = Vec::new();
        for (i, located) in stage.instructions.iter().enumerate() {
            match &located.instruction {
                Instruction::Arg(decls) => {
                    let mut outer = global.clone();
                    outer.extend(scope.clone());
                    declare_args(decls, located, lexer, build_args, &outer, &mut scope, &[])?;
                }
                Instruction::Copy(Copy {
                    from: Some(from), ..
                }) => {
                    let lookup = |n: &str| scope.get(n).cloned().flatten();
                    let value = lexer
                        .process_word(from, &lookup)
                        .map_err(|e| lex_error(located, from, e))?;
                    let flag_at = located
                        .node
                        .flags
                        .iter()
                        .find(|f| f.name == "from")
                        .map_or(located.start(), |f| f.position);
                    let source = if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
                        let n: usize = value.parse().map_err(|_| {
                            ParseError::new(
                                flag_at,
                                format!("COPY --from={value}: bad stage index"),
                            )
                        })?;
                        if n >= count {
                            return Err(ParseError::new(
                                flag_at,
                                format!("COPY --from={value}: undefined stage: the Dockerfile has {count} stage(s), 0 to {}", count - 1),
                            )
                            .into());
                        }
                        Source::Stage(n)
                    } else if let Some((n, _)) = names.iter().find(|(_, name)| {
                        name.as_deref() == Some(value.to_ascii_lowercase().as_str())
                    }) {
                        Source::Stage(*n)
                    } else if value.is_empty() {
                        return Err(ParseError::new(
                            flag_at,
                            "COPY --from expands to an empty string",
                        )
                        .into());
                    } else {
                        Source::Image(value)
                    };
                    if source == Source::Stage(stage.index) {
                        return Err(ParseError::new(
                            flag_at,
                            format!("COPY --from={from}: a stage cannot copy from itself"),
                        )
                        .into());
                    }
                    found.push((i, source));
                }
                _ => {}
            }
        }
        stage.copy_from = found;
    }
    Ok(())
}

/// The stages `target` needs, dependencies first; a cycle (through a forward
/// `COPY --from`) is an error at the instruction that closes it.
fn build_order(stages: &[StageDef], target: usize) -> Result<Vec<usize>, PlanError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit(
        stages: &[StageDef],
        i: usize,
        marks: &mut [Mark],
        order: &mut Vec<usize>,
    ) -> Result<(), PlanError> {
        marks[i] = Mark::Visiting;
        let stage = &stages[i];
        let mut deps: Vec<(usize, Position)> = Vec::new();
        if let Base::Stage(b) = stage.base {
            deps.push((b, stage.from.start()));
        }
        for (at, source) in &stage.copy_from {
            if let Source::Stage(s) = source {
                deps.push((*s, stage.instructions[*at].start()));
            }
        }
        for (dep, position) in deps {
            match marks[dep] {
                Mark::Done => {}
                Mark::Visiting => {
                    return Err(ParseError::new(
                        position,
                        format!("circular dependency between stages {i} and {dep}"),
                    )
                    .into())
                }
                Mark::New => visit(stages, dep, marks, order)?,
            }
        }
        marks[i] = Mark::Done;
        order.push(i);
        Ok(())
    }
    let mut marks = vec![Mark::New; stages.len()];
    let mut order = Vec::new();
    visit(stages, target, &mut marks, &mut order)?;
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::super::instruction::Command;
    use super::*;

    fn host() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }

    fn plan(src: &str, args: &[(&str, &str)], target: Option<&str>) -> Result<Plan, PlanError> {
        Plan::from_source(
            src,
            &BuildOptions {
                build_args: args
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                target: target.map(str::to_string),
                platform: host(),
            },
        )
    }

    fn steps(p: &Plan, stage: usize) -> Vec<Instruction> {
        p.expand_stage(stage, &[("PATH".into(), "/bin".into())], "")
            .unwrap()
            .steps
            .into_iter()
            .map(|s| s.instruction)
            .collect()
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn global_args_only_in_from_unless_redeclared() {
        let src = "ARG TAG=1.36\nARG OTHER=o\nFROM busybox:$TAG\nENV A=${TAG:-unset} B=$OTHER\nARG TAG\nENV C=$TAG\n";
        let p = plan(src, &[], None).unwrap();
        assert_eq!(p.stages[0].base, Base::Image("busybox:1.36".into()));
        assert_eq!(
            steps(&p, 0),
            vec![
                Instruction::Env(vec![kv("A", "unset"), kv("B", "")]),
                Instruction::Arg(vec![ArgDecl {
                    name: "TAG".into(),
                    default: None
                }]),
                Instruction::Env(vec![kv("C", "1.36")]),
            ]
        );
        let p = plan(src, &[("TAG", "musl")], None).unwrap();
        assert_eq!(p.stages[0].base, Base::Image("busybox:musl".into()));
        assert_eq!(steps(&p, 0)[2], Instruction::Env(vec![kv("C", "musl")]));
    }

    #[test]
    fn build_args_override_defaults_and_env_wins_over_arg() {
        let src = "FROM scratch\nARG V=default\nLABEL v=$V\nENV V=env\nLABEL v=$V\n";
        assert_eq!(
            steps(&plan(src, &[], None).unwrap(), 0)[1],
            Instruction::Label(vec![kv("v", "default")])
        );
        let p = plan(src, &[("V", "cli")], None).unwrap();
        let st = steps(&p, 0);
        assert_eq!(st[1], Instruction::Label(vec![kv("v", "cli")]));
        assert_eq!(st[3], Instruction::Label(vec![kv("v", "env")]));
        let expanded = p.expand_stage(0, &[], "").unwrap();
        assert_eq!(
            expanded.steps[1].args.get("V").map(String::as_str),
            Some("cli")
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn env_pairs_see_values_from_before_the_instruction() {
        let src =
            "FROM scratch\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\nENV P=$PATH:/x\n";
        let p = plan(src, &[], None).unwrap();
        let e = p
            .expand_stage(0, &[("PATH".into(), "/bin".into())], "")
            .unwrap();
        assert_eq!(
            e.steps[1].instruction,
            Instruction::Env(vec![kv("abc", "bye"), kv("def", "hello")])
        );
        assert_eq!(
            e.steps[2].instruction,
            Instruction::Env(vec![kv("ghi", "bye")])
        );
        assert_eq!(
            e.env,
            vec![
                ("PATH".to_string(), "/bin".to_string()),
                ("abc".into(), "bye".into()),
                ("def".into(), "hello".into()),
                ("ghi".into(), "bye".into()),
                ("P".into(), "/bin:/x".into()),
            ]
        );
    }

    #[test]
    fn which_instructions_expand() {
        let src = r#"FROM scratch
ENV D=/data U=app P=8080 S=SIGINT F=f.txt
COPY --chown=$U:$U --chmod=0644 $F ${D}/
ADD $F $D
WORKDIR $D
WORKDIR sub/../x
USER $U
EXPOSE $P "$P/udp"
VOLUME $D
STOPSIGNAL $S
RUN echo $D
CMD echo $D
ENTRYPOINT ["echo", "$D"]
"#;
        let p = plan(src, &[], None).unwrap();
        let e = p.expand_stage(0, &[], "").unwrap();
        let st: Vec<Instruction> = e.steps.into_iter().map(|s| s.instruction).collect();
        assert_eq!(
            st[1],
            Instruction::Copy(Copy {
                sources: vec!["f.txt".into()],
                dest: "/data/".into(),
                from: None,
                chown: Some("app:app".into()),
                chmod: Some("0644".into()),
                checksum: None,
            })
        );
        assert_eq!(
            st[2],
            Instruction::Add(Copy {
                sources: vec!["f.txt".into()],
                dest: "/data".into(),
                from: None,
                chown: None,
                chmod: None,
                checksum: None,
            })
        );
        assert_eq!(st[3], Instruction::Workdir("/data".into()));
        assert_eq!(st[4], Instruction::Workdir("/data/x".into()));
        assert_eq!(e.workdir, "/data/x");
        assert_eq!(st[5], Instruction::User("app".into()));
        assert_eq!(
            st[6],
            Instruction::Expose(vec!["8080".into(), "8080/udp".into()])
        );
        assert_eq!(st[7], Instruction::Volume(vec!["/data".into()]));
        assert_eq!(st[8], Instruction::StopSignal("SIGINT".into()));
        assert_eq!(st[9], Instruction::Run(Command::Shell("echo $D".into())));
        assert_eq!(st[10], Instruction::Cmd(Command::Shell("echo $D".into())));
        assert_eq!(
            st[11],
            Instruction::Entrypoint(Command::Exec(vec!["echo".into(), "$D".into()]))
        );
    }

    #[test]
    fn predefined_args() {
        let src = "ARG BASE=busybox\nFROM --platform=$BUILDPLATFORM $BASE\nRUN true\nLABEL a=$TARGETARCH\nARG TARGETARCH\nLABEL a=$TARGETARCH p=$http_proxy\n";
        let p = plan(src, &[("http_proxy", "http://proxy:3128")], None).unwrap();
        assert_eq!(p.stages[0].platform, Some(host()));
        let e = p.expand_stage(0, &[], "").unwrap();
        assert_eq!(
            e.steps[1].instruction,
            Instruction::Label(vec![kv("a", "")])
        );
        assert_eq!(
            e.steps[3].instruction,
            Instruction::Label(vec![kv("a", "amd64"), kv("p", "http://proxy:3128")])
        );
        assert_eq!(
            e.steps[0].args.get("http_proxy").map(String::as_str),
            Some("http://proxy:3128")
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn foreign_platform_is_an_error_with_line() {
        let e = plan("FROM --platform=linux/arm64 busybox\n", &[], None).unwrap_err();
        match e {
            PlanError::Parse(p) => {
                assert_eq!(
                    p.position,
                    Position {
                        line: 1,
                        column: 17
                    }
                );
                assert!(
                    p.message
                        .contains("only the build host's platform linux/amd64"),
                    "{p}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(plan("FROM --platform=linux/amd64 busybox\n", &[], None).is_ok());
    }

    #[test]
    fn stage_graph_target_and_copy_from() {
        let src = "FROM busybox AS base\nRUN a\nFROM base AS build\nRUN b\nFROM scratch AS unused\nFROM alpine AS final\nCOPY --from=build /x /\nCOPY --from=0 /y /\nCOPY --from=nginx:1 /z /\n";
        let p = plan(src, &[], None).unwrap();
        assert_eq!(p.stages.len(), 4);
        assert_eq!(p.stages[1].base, Base::Stage(0));
        assert_eq!(p.stages[2].base, Base::Scratch);
        assert_eq!(p.target, 3);
        assert_eq!(p.order, vec![0, 1, 3]);
        assert_eq!(
            p.stages[3].copy_from,
            vec![
                (0, Source::Stage(1)),
                (1, Source::Stage(0)),
                (2, Source::Image("nginx:1".into()))
            ]
        );
        let e = p.expand_stage(3, &[], "").unwrap();
        assert_eq!(e.steps[0].copy_from, Some(Source::Stage(1)));
        let p = plan(src, &[], Some("BUILD")).unwrap();
        assert_eq!((p.target, p.order.clone()), (1, vec![0, 1]));
        match plan(src, &[], Some("nope")).unwrap_err() {
            PlanError::UnknownTarget { name, known } => {
                assert_eq!(name, "nope");
                assert_eq!(known, "base, build, unused, final");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn copy_from_errors_carry_line() {
        let e = plan("FROM a\nFROM b\nCOPY --from=7 /x /\n", &[], None).unwrap_err();
        let PlanError::Parse(p) = e else {
            panic!("{e:?}")
        };
        assert_eq!(p.position, Position { line: 3, column: 6 });
        assert!(p.message.contains("undefined stage"), "{p}");
        let e = plan("FROM a AS me\nCOPY --from=me /x /\n", &[], None).unwrap_err();
        assert!(e.to_string().contains("cannot copy from itself"), "{e}");
        let e = plan(
            "FROM a AS one\nCOPY --from=two /x /\nFROM b AS two\nCOPY --from=one /y /\n",
            &[],
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("circular dependency"), "{e}");
        // --from expands with the stage's args.
        let p = plan(
            "FROM a AS src\nFROM b\nARG S=src\nCOPY --from=$S /x /\n",
            &[],
            None,
        )
        .unwrap();
        assert_eq!(p.stages[1].copy_from, vec![(1, Source::Stage(0))]);
    }

    #[test]
    fn structural_errors() {
        assert_eq!(plan("ARG A=1\n", &[], None).unwrap_err(), PlanError::NoFrom);
        let e = plan("# c\nRUN x\nFROM a\n", &[], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:2:1: RUN before the first FROM: only ARG may precede FROM"
        );
        let e = plan("FROM a AS x\nFROM b AS x\n", &[], None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Dockerfile:2:11: duplicate stage name"),
            "{e}"
        );
        let e = plan("FROM a\nENV X=${Y:?needs Y}\n", &[], None)
            .unwrap()
            .expand_stage(0, &[], "")
            .unwrap_err();
        assert_eq!(e.to_string(), "Dockerfile:2:7: ENV: Y: needs Y");
        let e = plan("FROM a\nLABEL x=\"open\n", &[], None)
            .unwrap()
            .expand_stage(0, &[], "")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Dockerfile:2:9: LABEL: unexpected end"),
            "{e}"
        );
    }

    #[test]
    fn repeated_cmd_warns_at_the_overridden_lines() {
        let p = plan(
            "FROM a\nCMD one\nENTRYPOINT [\"e\"]\nCMD two\nFROM b\nCMD three\n",
            &[],
            None,
        )
        .unwrap();
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert_eq!(p.warnings[0].line, 2);
        assert!(p.warnings[0].message.contains("only the last (line 4)"));
    }

    #[test]
    fn unused_build_args_warn() {
        let p = plan(
            "ARG USED\nFROM a\nARG INSTAGE\n",
            &[("USED", "1"), ("INSTAGE", "2"), ("NOPE", "3")],
            None,
        )
        .unwrap();
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].message.contains("NOPE"));
        assert_eq!(
            p.warnings[0].to_string(),
            "Dockerfile: warning: build args not consumed by the build: NOPE"
        );
        assert!(!p.warnings[0].message.contains("USED"));
    }

    #[test]
    fn canonical_text_changes_with_expansion() {
        let src = "FROM a\nARG V\nCOPY $V /\n";
        let one = plan(src, &[("V", "x")], None)
            .unwrap()
            .expand_stage(0, &[], "")
            .unwrap();
        let two = plan(src, &[("V", "y")], None)
            .unwrap()
            .expand_stage(0, &[], "")
            .unwrap();
        assert_ne!(one.steps[1].canonical(), two.steps[1].canonical());
        assert!(one.steps[1].canonical().contains("\"x\""));
    }

    #[test]
    fn workdir_join() {
        assert_eq!(join_workdir("/", "a"), "/a");
        assert_eq!(join_workdir("/a", "../../b/./c/"), "/b/c");
        assert_eq!(join_workdir("/a", "/x"), "/x");
    }
}

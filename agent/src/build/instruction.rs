//! The instruction model: each [`Node`] becomes a typed [`Instruction`].
//!
//! Vocabulary:
//! - **shell form** / **exec form**: `RUN make all` (a string for the stage's shell) versus
//!   `RUN ["make", "all"]` (a JSON array of strings, run as is) — see [`Command`];
//! - **word**: an argument as written, quotes and `$VARS` still in it; variable
//!   substitution ([`super::lex`]) happens later, per stage, in [`super::stages`];
//! - **leniency**: where Docker accepts a mistake (a malformed JSON array is taken as shell
//!   form, the legacy `ENV K V` form), we accept it too and return a [`Warning`].
//!
//! Structural errors (unknown instruction, missing arguments, unknown flags, `ENV` without
//! `=`…) are [`ParseError`]s naming line and column.

use std::time::Duration;

use serde::Serialize;

use super::parser::{self, Flag, Node, ParseError, Position, Warning};

/// `RUN`/`CMD`/`ENTRYPOINT`/`HEALTHCHECK CMD` argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Command {
    /// Given to the stage's `SHELL` (`/bin/sh -c` by default).
    Shell(String),
    /// A JSON array, run without a shell.
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct From {
    /// Image reference, `scratch`, or the name of an earlier stage.
    pub image: String,
    /// `AS name`, lower-cased like Docker does.
    pub name: Option<String>,
    pub platform: Option<String>,
}

/// `COPY` and `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    pub sources: Vec<String>,
    pub dest: String,
    /// Only `COPY`: a stage name, stage index or image.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// Only `ADD` of a URL: the download's expected `sha256:` digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    Check {
        command: Command,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Instruction {
    From(From),
    Run(Command),
    Copy(Copy),
    Add(Copy),
    Env(Vec<KeyValue>),
    Arg(Vec<ArgDecl>),
    Workdir(String),
    User(String),
    Label(Vec<KeyValue>),
    Expose(Vec<String>),
    Cmd(Command),
    Entrypoint(Command),
    Volume(Vec<String>),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
    /// The trigger is recorded as written (it runs in a child build, not in this one).
    OnBuild {
        trigger: Box<Instruction>,
        text: String,
    },
    Maintainer(String),
}

impl Instruction {
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Env(_) => "ENV",
            Instruction::Arg(_) => "ARG",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::User(_) => "USER",
            Instruction::Label(_) => "LABEL",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Volume(_) => "VOLUME",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
            Instruction::OnBuild { .. } => "ONBUILD",
            Instruction::Maintainer(_) => "MAINTAINER",
        }
    }
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub instruction: Instruction,
    /// The logical line it was parsed from, to place errors found later (substitution,
    /// COPY sources) at a line and column.
    pub node: Node,
}

impl Located {
    pub fn start(&self) -> Position {
        self.node.start
    }
    pub fn line(&self) -> usize {
        self.node.start.line
    }
    /// The logical line as written (continuations joined).
    pub fn text(&self) -> &str {
        &self.node.text
    }
    /// Position of byte `offset` inside the first occurrence of `word` in the arguments
    /// (the instruction's start if the word is not found verbatim).
    pub fn position_in(&self, word: &str, offset: usize) -> Position {
        match self.node.args.find(word) {
            Some(at) if !word.is_empty() => self.node.arg_position(at + offset),
            _ => self.node.start,
        }
    }
    /// Position of the value of flag `--name` (the instruction's start if absent).
    pub fn flag_position(&self, name: &str) -> Position {
        self.node
            .flags
            .iter()
            .find(|f| f.name == name)
            .map_or(self.node.start, |f| Position {
                line: f.position.line,
                column: f.position.column + name.chars().count() + 3,
            })
    }
    pub fn error_in(&self, word: &str, offset: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.position_in(word, offset), message)
    }
}

/// A parsed Dockerfile: the instructions in order, and the warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub escape: char,
    pub instructions: Vec<Located>,
    pub warnings: Vec<Warning>,
}

impl Dockerfile {
    /// Parses a Dockerfile into the instruction model.
    pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
        let syntax = parser::parse(source)?;
        let mut warnings = syntax.warnings;
        let mut instructions = Vec::with_capacity(syntax.nodes.len());
        for node in &syntax.nodes {
            instructions.push(parse_node(node, syntax.escape, &mut warnings, false)?);
        }
        Ok(Dockerfile {
            escape: syntax.escape,
            instructions,
            warnings,
        })
    }
}

/// Words split on blanks, with their byte offsets (no quote handling: what BuildKit does
/// for `FROM`, `COPY`, `EXPOSE`…).
fn blank_words(args: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in args.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &args[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &args[s..]));
    }
    out
}

/// Words split on blanks outside quotes; quotes and escapes are kept in the word (they are
/// removed by substitution). Used for `ENV`, `LABEL`, `ARG`.
fn quoted_words(args: &str, escape: char) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    // Depth of `${…}`: blanks inside a substitution do not split (`${X:-a b}`).
    let mut braces = 0usize;
    let mut dollar = false;
    for (i, c) in args.char_indices() {
        if word.is_empty() && quote.is_none() && !escaped {
            if c.is_whitespace() {
                continue;
            }
            start = i;
        }
        if escaped {
            word.push(c);
            escaped = false;
            continue;
        }
        if quote != Some('\'') {
            if dollar && c == '{' {
                braces += 1;
            } else if braces > 0 && c == '}' {
                braces -= 1;
            }
            dollar = c == '$';
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() && braces == 0 => {
                out.push((start, std::mem::take(&mut word)));
                continue;
            }
            None => {}
        }
        if c == escape && quote != Some('\'') {
            escaped = true;
        }
        word.push(c);
    }
    if !word.is_empty() {
        out.push((start, word));
    }
    out
}

/// `[...]` that is a JSON array of strings → Some(list); malformed JSON → None (shell
/// form); a JSON array with non-strings → error, like BuildKit.
fn json_array(node: &Node) -> Result<Option<Vec<String>>, ParseError> {
    let args = node.args.as_str();
    if !args.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(args) {
        Ok(serde_json::Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) => out.push(s),
                    other => {
                        return Err(node.error(
                            0,
                            format!(
                                "{}: JSON array must contain only strings, found {other}",
                                node.keyword
                            ),
                        ))
                    }
                }
            }
            Ok(Some(out))
        }
        _ => Ok(None),
    }
}

fn command(node: &Node, warnings: &mut Vec<Warning>) -> Result<Command, ParseError> {
    if let Some(list) = json_array(node)? {
        return Ok(Command::Exec(list));
    }
    if node.args.starts_with('[') {
        warnings.push(Warning {
            line: node.start.line,
            message: format!(
                "{} argument starts with '[' but is not a valid JSON array of strings: run as shell form",
                node.keyword
            ),
        });
    }
    Ok(Command::Shell(node.args.clone()))
}

/// JSON array, else blank-separated words (COPY, ADD, VOLUME).
fn list(node: &Node) -> Result<Vec<String>, ParseError> {
    if let Some(list) = json_array(node)? {
        return Ok(list);
    }
    Ok(blank_words(&node.args)
        .into_iter()
        .map(|(_, w)| w.to_string())
        .collect())
}

/// Accepts only the flags in `allowed`, each at most once, each with a value unless its
/// name is in `boolean`.
fn check_flags<'a>(
    node: &'a Node,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str, &'a Flag)>, ParseError> {
    let mut out: Vec<(&str, &str, &Flag)> = Vec::new();
    for flag in &node.flags {
        if !allowed.contains(&flag.name.as_str()) {
            return Err(ParseError::new(
                flag.position,
                format!(
                    "{}: unknown or unsupported flag --{}{}",
                    node.keyword,
                    flag.name,
                    if allowed.is_empty() {
                        String::new()
                    } else {
                        format!(" (supported: --{})", allowed.join(", --"))
                    }
                ),
            ));
        }
        if out.iter().any(|(n, _, _)| *n == flag.name) {
            return Err(ParseError::new(
                flag.position,
                format!("{}: duplicate flag --{}", node.keyword, flag.name),
            ));
        }
        let Some(value) = flag.value.as_deref() else {
            return Err(ParseError::new(
                flag.position,
                format!("{}: flag --{} needs a value", node.keyword, flag.name),
            ));
        };
        out.push((flag.name.as_str(), value, flag));
    }
    Ok(out)
}

fn flag<'a>(flags: &[(&str, &'a str, &Flag)], name: &str) -> Option<&'a str> {
    flags
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, v, _)| *v)
}

fn need_args(node: &Node) -> Result<(), ParseError> {
    if node.args.trim().is_empty() {
        return Err(ParseError::new(
            node.start,
            format!("{} requires at least one argument", node.keyword),
        ));
    }
    Ok(())
}

fn exactly_one(node: &Node) -> Result<String, ParseError> {
    need_args(node)?;
    let words = blank_words(&node.args);
    if words.len() > 1 && matches!(node.keyword.as_str(), "STOPSIGNAL") {
        return Err(node.error(
            words[1].0,
            format!("{} requires exactly one argument", node.keyword),
        ));
    }
    Ok(node.args.clone())
}

/// `K=V ...`, or the legacy `K V` (one pair, the value is the rest of the line).
fn key_values(
    node: &Node,
    escape: char,
    warnings: &mut Vec<Warning>,
) -> Result<Vec<KeyValue>, ParseError> {
    need_args(node)?;
    let words = quoted_words(&node.args, escape);
    if !words[0].1.contains('=') {
        // Legacy form: `ENV KEY some value`.
        let first = blank_words(&node.args);
        if first.len() < 2 {
            return Err(node.error(
                0,
                format!(
                    "{} must have two arguments (`{} key value`) or be of the form key=value",
                    node.keyword, node.keyword
                ),
            ));
        }
        warnings.push(Warning {
            line: node.start.line,
            message: format!(
                "legacy `{} key value` form: prefer `{} key=value`",
                node.keyword, node.keyword
            ),
        });
        let value_at = first[1].0;
        return Ok(vec![KeyValue {
            key: first[0].1.to_string(),
            value: node.args[value_at..].to_string(),
        }]);
    }
    let mut out = Vec::with_capacity(words.len());
    for (offset, word) in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(node.error(
                offset,
                format!(
                    "{}: can't find = in {word:?}: must be of the form key=value",
                    node.keyword
                ),
            ));
        };
        if key.is_empty() {
            return Err(node.error(offset, format!("{}: empty key in {word:?}", node.keyword)));
        }
        out.push(KeyValue {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(out)
}

fn is_arg_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn arg(node: &Node, escape: char) -> Result<Vec<ArgDecl>, ParseError> {
    need_args(node)?;
    let mut out = Vec::new();
    for (offset, word) in quoted_words(&node.args, escape) {
        let (name, default) = match word.split_once('=') {
            Some((n, d)) => (n.to_string(), Some(d.to_string())),
            None => (word.clone(), None),
        };
        if !is_arg_name(&name) {
            return Err(node.error(offset, format!("ARG: invalid name {name:?}")));
        }
        out.push(ArgDecl { name, default });
    }
    Ok(out)
}

fn from(node: &Node) -> Result<From, ParseError> {
    need_args(node)?;
    let flags = check_flags(node, &["platform"])?;
    let words = blank_words(&node.args);
    let (image, name) = match words.as_slice() {
        [(_, image)] => (image.to_string(), None),
        [(_, image), (_, r#as), (at, name)] if r#as.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                return Err(node.error(
                    *at,
                    format!("FROM: invalid stage name {name:?}: must start with a letter and contain only letters, digits, '_', '-', '.'"),
                ));
            }
            (image.to_string(), Some(name))
        }
        _ => {
            return Err(node.error(
                0,
                "FROM requires either one argument, or three: FROM <image> AS <name>",
            ))
        }
    };
    Ok(From {
        image,
        name,
        platform: flag(&flags, "platform").map(str::to_string),
    })
}

fn copy(node: &Node, is_add: bool) -> Result<Copy, ParseError> {
    let allowed: &[&str] = if is_add {
        &["chown", "chmod", "checksum"]
    } else {
        &["from", "chown", "chmod"]
    };
    let flags = check_flags(node, allowed)?;
    let mut words = list(node)?;
    if words.len() < 2 {
        return Err(ParseError::new(
            node.start,
            format!(
                "{} requires at least two arguments: a source and a destination",
                node.keyword
            ),
        ));
    }
    let dest = words.pop().expect("two words");
    Ok(Copy {
        sources: words,
        dest,
        from: flag(&flags, "from").map(str::to_string),
        chown: flag(&flags, "chown").map(str::to_string),
        chmod: flag(&flags, "chmod").map(str::to_string),
        checksum: flag(&flags, "checksum").map(str::to_string),
    })
}

/// A Go duration (`30s`, `1m30s`, `500ms`), as HEALTHCHECK takes them.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

fn healthcheck(node: &Node, warnings: &mut Vec<Warning>) -> Result<Healthcheck, ParseError> {
    need_args(node)?;
    let words = blank_words(&node.args);
    let kind = words[0].1.to_ascii_uppercase();
    if kind == "NONE" {
        if words.len() > 1 || !node.flags.is_empty() {
            return Err(node.error(0, "HEALTHCHECK NONE takes no other arguments or flags"));
        }
        return Ok(Healthcheck::None);
    }
    if kind != "CMD" {
        return Err(node.error(
            0,
            format!(
                "HEALTHCHECK: unknown type {:?}: expected CMD or NONE",
                words[0].1
            ),
        ));
    }
    let flags = check_flags(
        node,
        &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
    )?;
    let duration = |name: &str| -> Result<Option<Duration>, ParseError> {
        let Some((_, value, flag)) = flags.iter().find(|(n, _, _)| *n == name) else {
            return Ok(None);
        };
        let d = parse_duration(value).ok_or_else(|| {
            ParseError::new(
                flag.position,
                format!("HEALTHCHECK: --{name}: invalid duration {value:?}"),
            )
        })?;
        if d != Duration::ZERO && d < Duration::from_millis(1) {
            return Err(ParseError::new(
                flag.position,
                format!("HEALTHCHECK: --{name} cannot be less than 1ms"),
            ));
        }
        Ok(Some(d))
    };
    let retries = match flags.iter().find(|(n, _, _)| *n == "retries") {
        None => None,
        Some((_, value, flag)) => Some(value.parse::<u32>().ok().filter(|r| *r > 0).ok_or_else(
            || {
                ParseError::new(
                    flag.position,
                    format!("HEALTHCHECK: --retries must be a positive integer, got {value:?}"),
                )
            },
        )?),
    };
    let rest_at = words
        .get(1)
        .map(|w| w.0)
        .ok_or_else(|| node.error(0, "HEALTHCHECK CMD requires a command"))?;
    let mut sub = node.clone();
    sub.args = node.args[rest_at..].to_string();
    sub.args_offset += rest_at;
    Ok(Healthcheck::Check {
        command: command(&sub, warnings)?,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })
}

fn onbuild(
    node: &Node,
    escape: char,
    warnings: &mut Vec<Warning>,
) -> Result<Instruction, ParseError> {
    need_args(node)?;
    let syntax = parser::parse(&node.args).map_err(|e| node.error(0, e.message))?;
    let [inner] = syntax.nodes.as_slice() else {
        return Err(node.error(0, "ONBUILD requires exactly one instruction"));
    };
    if matches!(inner.keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
        return Err(node.error(0, format!("ONBUILD {} is not allowed", inner.keyword)));
    }
    // Re-anchor the inner node on the outer one's positions for error messages.
    let mut anchored = node.clone();
    anchored.keyword = inner.keyword.clone();
    anchored.flags = inner
        .flags
        .iter()
        .map(|f| Flag {
            position: node.arg_position(f.position.column - 1),
            ..f.clone()
        })
        .collect();
    anchored.args_offset = node.args_offset + inner.args_offset;
    anchored.args = inner.args.clone();
    let located = parse_node(&anchored, escape, warnings, true)?;
    Ok(Instruction::OnBuild {
        trigger: Box::new(located.instruction),
        text: node.args.clone(),
    })
}

fn no_flags(node: &Node) -> Result<(), ParseError> {
    check_flags(node, &[]).map(|_| ())
}

fn parse_node(
    node: &Node,
    escape: char,
    warnings: &mut Vec<Warning>,
    in_onbuild: bool,
) -> Result<Located, ParseError> {
    let keyword = node.keyword.as_str();
    let instruction =
        match keyword {
            "FROM" => Instruction::From(from(node)?),
            "COPY" => Instruction::Copy(copy(node, false)?),
            "ADD" => Instruction::Add(copy(node, true)?),
            "HEALTHCHECK" => Instruction::Healthcheck(healthcheck(node, warnings)?),
            _ => {
                no_flags(node)?;
                match keyword {
                    "RUN" => {
                        need_args(node)?;
                        Instruction::Run(command(node, warnings)?)
                    }
                    "CMD" => Instruction::Cmd(command(node, warnings)?),
                    "ENTRYPOINT" => Instruction::Entrypoint(command(node, warnings)?),
                    "ENV" => Instruction::Env(key_values(node, escape, warnings)?),
                    "LABEL" => Instruction::Label(key_values(node, escape, warnings)?),
                    "ARG" => Instruction::Arg(arg(node, escape)?),
                    "WORKDIR" => Instruction::Workdir(exactly_one(node)?),
                    "USER" => Instruction::User(exactly_one(node)?),
                    "STOPSIGNAL" => Instruction::StopSignal(exactly_one(node)?),
                    "MAINTAINER" => {
                        warnings.push(Warning {
                            line: node.start.line,
                            message: "MAINTAINER is deprecated: use LABEL maintainer=…".into(),
                        });
                        Instruction::Maintainer(exactly_one(node)?)
                    }
                    "EXPOSE" => {
                        need_args(node)?;
                        Instruction::Expose(
                            blank_words(&node.args)
                                .into_iter()
                                .map(|(_, w)| w.to_string())
                                .collect(),
                        )
                    }
                    "VOLUME" => {
                        need_args(node)?;
                        Instruction::Volume(list(node)?)
                    }
                    "SHELL" => match json_array(node)? {
                        Some(list) if !list.is_empty() => Instruction::Shell(list),
                        _ => return Err(node.error(
                            0,
                            "SHELL requires the arguments to be a non-empty JSON array of strings",
                        )),
                    },
                    "ONBUILD" if !in_onbuild => onbuild(node, escape, warnings)?,
                    _ => {
                        return Err(ParseError::new(
                            node.start,
                            format!(
                                "unknown instruction: {}",
                                node.text.split_whitespace().next().unwrap_or("")
                            ),
                        ))
                    }
                }
            }
        };
    Ok(Located {
        instruction,
        node: node.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Instruction {
        let df = Dockerfile::parse(src).unwrap();
        df.instructions.last().unwrap().instruction.clone()
    }

    fn err(src: &str) -> ParseError {
        Dockerfile::parse(src).unwrap_err()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn from_forms() {
        assert_eq!(
            one("FROM busybox:1.36"),
            Instruction::From(From {
                image: "busybox:1.36".into(),
                name: None,
                platform: None
            })
        );
        assert_eq!(
            one("from --platform=$BUILDPLATFORM golang AS Build"),
            Instruction::From(From {
                image: "golang".into(),
                name: Some("build".into()),
                platform: Some("$BUILDPLATFORM".into())
            })
        );
        assert_eq!(err("FROM a b").position, Position { line: 1, column: 6 });
        assert!(err("FROM a AS 1x").message.contains("invalid stage name"));
        assert!(err("FROM --chown=1 a")
            .message
            .contains("unknown or unsupported flag --chown"));
        assert_eq!(err("FROM").message, "FROM requires at least one argument");
    }

    #[test]
    fn run_cmd_entrypoint_shell_and_exec() {
        assert_eq!(
            one("RUN echo hi && true"),
            Instruction::Run(Command::Shell("echo hi && true".into()))
        );
        assert_eq!(
            one(r#"RUN ["sh", "-c", "echo \"q\""]"#),
            Instruction::Run(Command::Exec(s(&["sh", "-c", "echo \"q\""])))
        );
        assert_eq!(
            one(r#"CMD ["a"]"#),
            Instruction::Cmd(Command::Exec(s(&["a"])))
        );
        assert_eq!(
            one("CMD a b"),
            Instruction::Cmd(Command::Shell("a b".into()))
        );
        assert_eq!(one("CMD"), Instruction::Cmd(Command::Shell(String::new())));
        assert_eq!(
            one(r#"ENTRYPOINT ["/bin/app", "--x"]"#),
            Instruction::Entrypoint(Command::Exec(s(&["/bin/app", "--x"])))
        );
        assert_eq!(
            one("ENTRYPOINT exec app"),
            Instruction::Entrypoint(Command::Shell("exec app".into()))
        );
        let e = err("FROM a\nRUN [1, 2]");
        assert_eq!(e.position, Position { line: 2, column: 5 });
        assert!(e.message.contains("only strings"), "{e}");
        assert!(err("FROM a\nRUN --mount=type=cache,target=/x make")
            .message
            .contains("--mount"));
        assert_eq!(err("FROM a\nRUN").position.line, 2);
    }

    #[test]
    fn malformed_json_is_shell_form_with_a_warning() {
        let df = Dockerfile::parse("FROM a\n\nCMD [\nENTRYPOINT [\"a\", b]\n").unwrap();
        assert_eq!(
            df.instructions[1].instruction,
            Instruction::Cmd(Command::Shell("[".into()))
        );
        assert_eq!(
            df.instructions[2].instruction,
            Instruction::Entrypoint(Command::Shell("[\"a\", b]".into()))
        );
        let lines: Vec<usize> = df.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![3, 4]);
        assert!(df.warnings[0]
            .to_string()
            .starts_with("Dockerfile:3: warning: CMD"));
    }

    #[test]
    fn copy_and_add() {
        assert_eq!(
            one("COPY --from=build --chown=1:2 --chmod=0755 a b* /dst/"),
            Instruction::Copy(Copy {
                sources: s(&["a", "b*"]),
                dest: "/dst/".into(),
                from: Some("build".into()),
                chown: Some("1:2".into()),
                chmod: Some("0755".into()),
                checksum: None,
            })
        );
        assert_eq!(
            one(r#"COPY ["a b", "/c d/"]"#),
            Instruction::Copy(Copy {
                sources: s(&["a b"]),
                dest: "/c d/".into(),
                from: None,
                chown: None,
                chmod: None,
                checksum: None,
            })
        );
        assert_eq!(
            one("ADD --chown=app x.tar /"),
            Instruction::Add(Copy {
                sources: s(&["x.tar"]),
                dest: "/".into(),
                from: None,
                chown: Some("app".into()),
                chmod: None,
                checksum: None,
            })
        );
        assert_eq!(
            one("ADD --checksum=sha256:ab http://h/f /f"),
            Instruction::Add(Copy {
                sources: s(&["http://h/f"]),
                dest: "/f".into(),
                from: None,
                chown: None,
                chmod: None,
                checksum: Some("sha256:ab".into()),
            })
        );
        assert!(err("FROM a\nCOPY --checksum=sha256:ab a /")
            .message
            .contains("checksum"));
        let e = err("FROM a\nADD --from=x a /");
        assert_eq!(e.position, Position { line: 2, column: 5 });
        assert!(err("FROM a\nCOPY onlyone").message.contains("at least two"));
        assert!(err("COPY --chown a b").message.contains("needs a value"));
        assert!(err("COPY --chown=1 --chown=2 a b")
            .message
            .contains("duplicate flag"));
    }

    #[test]
    fn env_and_label_forms() {
        assert_eq!(
            one(r#"ENV A=1 B="two words" C=three\ words D='$x'"#),
            Instruction::Env(vec![
                KeyValue {
                    key: "A".into(),
                    value: "1".into()
                },
                KeyValue {
                    key: "B".into(),
                    value: "\"two words\"".into()
                },
                KeyValue {
                    key: "C".into(),
                    value: "three\\ words".into()
                },
                KeyValue {
                    key: "D".into(),
                    value: "'$x'".into()
                },
            ])
        );
        let df = Dockerfile::parse("FROM a\nENV PATH /usr/bin:/bin  x").unwrap();
        assert_eq!(
            df.instructions[1].instruction,
            Instruction::Env(vec![KeyValue {
                key: "PATH".into(),
                value: "/usr/bin:/bin  x".into()
            }])
        );
        assert_eq!(df.warnings[0].line, 2);
        assert_eq!(
            one(r#"LABEL "com.example.v"="1.0" other=x"#),
            Instruction::Label(vec![
                KeyValue {
                    key: "\"com.example.v\"".into(),
                    value: "\"1.0\"".into()
                },
                KeyValue {
                    key: "other".into(),
                    value: "x".into()
                },
            ])
        );
        let e = err("FROM a\nENV A=1 B");
        assert_eq!(e.position, Position { line: 2, column: 9 });
        assert!(e.message.contains("can't find ="), "{e}");
        assert!(err("FROM a\nENV ONLYKEY").message.contains("two arguments"));
        assert!(err("FROM a\nENV =x").message.contains("empty key"));
    }

    #[test]
    fn arg_forms() {
        assert_eq!(
            one("ARG A B=2 C=\"x y\""),
            Instruction::Arg(vec![
                ArgDecl {
                    name: "A".into(),
                    default: None
                },
                ArgDecl {
                    name: "B".into(),
                    default: Some("2".into())
                },
                ArgDecl {
                    name: "C".into(),
                    default: Some("\"x y\"".into())
                },
            ])
        );
        let e = err("ARG ok 9bad");
        assert_eq!(e.position, Position { line: 1, column: 8 });
    }

    #[test]
    fn simple_instructions() {
        assert_eq!(
            one("WORKDIR /app dir"),
            Instruction::Workdir("/app dir".into())
        );
        assert_eq!(one("USER 1000:1000"), Instruction::User("1000:1000".into()));
        assert_eq!(
            one("STOPSIGNAL SIGTERM"),
            Instruction::StopSignal("SIGTERM".into())
        );
        assert!(err("STOPSIGNAL A B").message.contains("exactly one"));
        assert_eq!(
            one("EXPOSE 80 443/tcp"),
            Instruction::Expose(s(&["80", "443/tcp"]))
        );
        assert_eq!(one("VOLUME /a /b"), Instruction::Volume(s(&["/a", "/b"])));
        assert_eq!(
            one(r#"VOLUME ["/data"]"#),
            Instruction::Volume(s(&["/data"]))
        );
        assert_eq!(
            one(r#"SHELL ["/bin/bash", "-c"]"#),
            Instruction::Shell(s(&["/bin/bash", "-c"]))
        );
        assert!(err("SHELL /bin/bash -c").message.contains("JSON array"));
        assert_eq!(
            one("MAINTAINER me <m@x>"),
            Instruction::Maintainer("me <m@x>".into())
        );
        assert!(err("WORKDIR")
            .message
            .contains("requires at least one argument"));
        assert!(err("USER --x=1 a").message.contains("unsupported flag"));
    }

    #[test]
    fn healthcheck_forms() {
        assert_eq!(
            one("HEALTHCHECK NONE"),
            Instruction::Healthcheck(Healthcheck::None)
        );
        assert_eq!(
            one("HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms --retries=3 CMD curl -f http://x/"),
            Instruction::Healthcheck(Healthcheck::Check {
                command: Command::Shell("curl -f http://x/".into()),
                interval: Some(Duration::from_secs(30)),
                timeout: Some(Duration::from_secs(90)),
                start_period: Some(Duration::from_millis(500)),
                start_interval: None,
                retries: Some(3),
            })
        );
        assert_eq!(
            one(r#"HEALTHCHECK CMD ["true"]"#),
            Instruction::Healthcheck(Healthcheck::Check {
                command: Command::Exec(s(&["true"])),
                interval: None,
                timeout: None,
                start_period: None,
                start_interval: None,
                retries: None,
            })
        );
        let e = err("FROM a\nHEALTHCHECK --interval=soon CMD true");
        assert_eq!(
            e.position,
            Position {
                line: 2,
                column: 13
            }
        );
        assert!(e.message.contains("invalid duration"));
        assert!(err("HEALTHCHECK --retries=0 CMD x")
            .message
            .contains("positive"));
        assert!(err("HEALTHCHECK --interval=1s NONE")
            .message
            .contains("NONE takes no"));
        assert!(err("HEALTHCHECK PING x")
            .message
            .contains("expected CMD or NONE"));
        assert!(err("HEALTHCHECK CMD")
            .message
            .contains("requires a command"));
        assert!(err("HEALTHCHECK --interval=1ns CMD x")
            .message
            .contains("less than 1ms"));
    }

    #[test]
    fn onbuild_is_recorded() {
        assert_eq!(
            one("ONBUILD COPY . /src"),
            Instruction::OnBuild {
                trigger: Box::new(Instruction::Copy(Copy {
                    sources: s(&["."]),
                    dest: "/src".into(),
                    from: None,
                    chown: None,
                    chmod: None,
                    checksum: None,
                })),
                text: "COPY . /src".into()
            }
        );
        assert!(err("ONBUILD ONBUILD RUN x").message.contains("not allowed"));
        assert!(err("ONBUILD FROM x").message.contains("not allowed"));
        assert!(err("ONBUILD NOPE x")
            .message
            .contains("unknown instruction"));
    }

    #[test]
    fn unknown_instruction_has_line_and_column() {
        let e = err("FROM a\n\n   RUNN echo\n");
        assert_eq!(e.position, Position { line: 3, column: 4 });
        assert_eq!(e.to_string(), "Dockerfile:3:4: unknown instruction: RUNN");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
    }
}

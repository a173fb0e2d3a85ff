//! Dockerfile syntax: from text to logical lines ([`Node`]s).
//!
//! Vocabulary (BuildKit's, whose `frontend/dockerfile/parser` this follows in behaviour):
//! - **parser directive**: a `# name=value` comment at the very top (`escape`, `syntax`,
//!   `check`); the first blank line, ordinary comment or instruction ends them;
//! - **escape character**: `\` by default, `` ` `` with `# escape=``; as the last
//!   non-blank character of a line it continues the instruction on the next line;
//! - **logical line**: one instruction, continuation lines joined (the escape removed, no
//!   space added), comment lines inside a continuation dropped;
//! - **node**: a logical line cut into keyword, leading `--flag[=value]`s and the rest
//!   (the arguments), with a map back to source line:column for error messages.
//!
//! The typed model is built from nodes by [`super::instruction`].

use std::fmt;

/// A 1-based source position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Every error of the Dockerfile front end (syntax and instruction model) carries the
/// position in the Dockerfile it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Dockerfile:{position}: {message}")]
pub struct ParseError {
    pub position: Position,
    pub message: String,
}

impl ParseError {
    pub fn new(position: Position, message: impl Into<String>) -> Self {
        ParseError {
            position,
            message: message.into(),
        }
    }
}

/// Something Docker accepts but that is probably not what the author meant; line 0 is
/// about the whole build (e.g. unused build args).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "Dockerfile: warning: {}", self.message)
        } else {
            write!(f, "Dockerfile:{}: warning: {}", self.line, self.message)
        }
    }
}

/// A `--name[=value]` flag in front of an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    pub position: Position,
}

/// One piece of a logical line: `len` bytes starting at `offset` of the joined text come
/// from source line `line`, starting at `column`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    offset: usize,
    line: usize,
    column: usize,
}

/// One instruction as written: keyword, flags and raw arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Upper-cased instruction word.
    pub keyword: String,
    pub flags: Vec<Flag>,
    /// The arguments after the flags, continuation lines joined, trimmed.
    pub args: String,
    /// Byte offset of `args` in `text`.
    pub args_offset: usize,
    /// The whole logical line (continuations joined).
    pub text: String,
    pub start: Position,
    pub end_line: usize,
    segments: Vec<Segment>,
}

impl Node {
    /// Source position of byte `offset` of [`Node::text`].
    pub fn position_of(&self, offset: usize) -> Position {
        let seg = self
            .segments
            .iter()
            .rev()
            .find(|s| s.offset <= offset)
            .unwrap_or(&self.segments[0]);
        let end = offset.min(self.text.len());
        let chars = self
            .text
            .get(seg.offset..end)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        Position {
            line: seg.line,
            column: seg.column + chars,
        }
    }

    /// Source position of byte `offset` of [`Node::args`].
    pub fn arg_position(&self, offset: usize) -> Position {
        self.position_of(self.args_offset + offset)
    }

    pub fn error(&self, args_offset: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.arg_position(args_offset), message)
    }
}

/// A Dockerfile cut into nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syntax {
    pub escape: char,
    /// Parser directives found at the top, lower-cased names.
    pub directives: Vec<(String, String)>,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
}

const DIRECTIVES: [&str; 3] = ["escape", "syntax", "check"];

/// `# name=value` → (name, value), the form BuildKit recognises as a directive.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (name, value) = rest.split_once('=')?;
    let name = name.trim();
    let value = value.trim();
    let mut chars = name.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric()) || value.is_empty()
    {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// If `line` ends with the escape character (trailing blanks allowed), the line without it.
fn strip_continuation(line: &str, escape: char) -> Option<&str> {
    let trimmed = line.trim_end_matches([' ', '\t']);
    trimmed.strip_suffix(escape)
}

/// Cuts a Dockerfile into nodes.
pub fn parse(source: &str) -> Result<Syntax, ParseError> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let lines: Vec<&str> = source
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();

    let mut escape = '\\';
    let mut directives: Vec<(String, String)> = Vec::new();
    let mut first = 0;
    for (i, line) in lines.iter().enumerate() {
        match directive(line) {
            Some((name, value)) if DIRECTIVES.contains(&name.as_str()) => {
                let pos = Position {
                    line: i + 1,
                    column: 1,
                };
                if directives.iter().any(|(n, _)| *n == name) {
                    return Err(ParseError::new(
                        pos,
                        format!("only one `{name}` parser directive can be used"),
                    ));
                }
                if name == "escape" {
                    escape = match value.as_str() {
                        "\\" => '\\',
                        "`" => '`',
                        other => {
                            return Err(ParseError::new(
                                pos,
                                format!("invalid escape token {other:?}: must be ` or \\"),
                            ))
                        }
                    };
                }
                directives.push((name, value));
                first = i + 1;
            }
            _ => break,
        }
    }

    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut i = first;
    while i < lines.len() {
        let raw = lines[i];
        i += 1;
        if is_blank(raw) || is_comment(raw) {
            continue;
        }
        let start_line = i;
        let lead = raw.len() - raw.trim_start().len();
        let first_text = &raw[lead..];
        let mut text = String::new();
        let mut segments = vec![Segment {
            offset: 0,
            line: start_line,
            column: raw[..lead].chars().count() + 1,
        }];
        let mut end_line = start_line;
        let mut blank_lines = Vec::new();
        let mut continued = match strip_continuation(first_text, escape) {
            Some(stripped) => {
                text.push_str(stripped);
                true
            }
            None => {
                text.push_str(first_text);
                false
            }
        };
        while continued && i < lines.len() {
            let raw = lines[i];
            i += 1;
            if is_comment(raw) {
                continue;
            }
            if is_blank(raw) {
                blank_lines.push(i);
                continue;
            }
            warnings.extend(blank_lines.drain(..).map(|line| Warning {
                line,
                message: "empty continuation line (deprecated: a future Docker may end the instruction there)".into(),
            }));
            end_line = i;
            segments.push(Segment {
                offset: text.len(),
                line: i,
                column: 1,
            });
            match strip_continuation(raw, escape) {
                Some(stripped) => text.push_str(stripped),
                None => {
                    text.push_str(raw);
                    continued = false;
                }
            }
        }
        let trimmed_len = text.trim_end().len();
        text.truncate(trimmed_len);
        if text.is_empty() {
            continue;
        }
        nodes.push(split_node(text, segments, start_line, end_line)?);
    }
    Ok(Syntax {
        escape,
        directives,
        nodes,
        warnings,
    })
}

/// Offset of the next non-blank byte at or after `from`.
fn skip_blanks(text: &str, from: usize) -> usize {
    text[from..]
        .find(|c: char| !c.is_whitespace())
        .map_or(text.len(), |o| from + o)
}

/// Offset of the next blank byte at or after `from`.
fn word_end(text: &str, from: usize) -> usize {
    text[from..]
        .find(char::is_whitespace)
        .map_or(text.len(), |o| from + o)
}

fn split_node(
    text: String,
    segments: Vec<Segment>,
    start_line: usize,
    end_line: usize,
) -> Result<Node, ParseError> {
    let mut node = Node {
        keyword: String::new(),
        flags: Vec::new(),
        args: String::new(),
        args_offset: 0,
        text,
        start: Position {
            line: start_line,
            column: segments[0].column,
        },
        end_line,
        segments,
    };
    let kw_end = word_end(&node.text, 0);
    node.keyword = node.text[..kw_end].to_ascii_uppercase();
    let mut at = skip_blanks(&node.text, kw_end);
    loop {
        let end = word_end(&node.text, at);
        let word = &node.text[at..end];
        if word == "--" {
            at = skip_blanks(&node.text, end);
            break;
        }
        let Some(flag) = word.strip_prefix("--") else {
            break;
        };
        let position = node.position_of(at);
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if name.is_empty() {
            return Err(ParseError::new(
                position,
                format!("malformed flag {word:?}"),
            ));
        }
        node.flags.push(Flag {
            name,
            value,
            position,
        });
        at = skip_blanks(&node.text, end);
    }
    node.args_offset = at;
    node.args = node.text[at..].to_string();
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_join_without_space_and_drop_comment_lines() {
        let src = "FROM busybox\nRUN echo a \\\n# a comment\n  b\\\n\tc\n";
        let s = parse(src).unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.nodes[1].keyword, "RUN");
        assert_eq!(s.nodes[1].args, "echo a   b\tc");
        assert_eq!(s.nodes[1].start, Position { line: 2, column: 1 });
        assert_eq!(s.nodes[1].end_line, 5);
    }

    #[test]
    fn positions_map_back_through_continuations() {
        let src = "  run --mount=x \\\n   echo  hi\n";
        let s = parse(src).unwrap();
        let n = &s.nodes[0];
        assert_eq!(n.keyword, "RUN");
        assert_eq!(n.start, Position { line: 1, column: 3 });
        assert_eq!(n.flags[0].name, "mount");
        assert_eq!(n.flags[0].value.as_deref(), Some("x"));
        assert_eq!(n.flags[0].position, Position { line: 1, column: 7 });
        assert_eq!(n.args, "echo  hi");
        assert_eq!(n.arg_position(0), Position { line: 2, column: 4 });
        assert_eq!(
            n.arg_position(6),
            Position {
                line: 2,
                column: 10
            }
        );
    }

    #[test]
    fn escape_directive_switches_to_backtick() {
        let src = "# escape=`\n\nFROM scratch\nCOPY a\\b `\n  c\\d /\n";
        let s = parse(src).unwrap();
        assert_eq!(s.escape, '`');
        assert_eq!(s.directives, vec![("escape".into(), "`".into())]);
        assert_eq!(s.nodes[1].args, "a\\b   c\\d /");
    }

    #[test]
    fn directives_only_count_at_the_top() {
        let src = "# a comment\n# escape=`\nFROM scratch\nRUN a \\\n b\n";
        let s = parse(src).unwrap();
        assert_eq!(s.escape, '\\');
        assert!(s.directives.is_empty());
        assert_eq!(s.nodes[1].args, "a  b");
    }

    #[test]
    fn bad_and_duplicate_directives_are_errors_with_line() {
        let e = parse("# escape=x\nFROM scratch\n").unwrap_err();
        assert_eq!(e.position, Position { line: 1, column: 1 });
        assert!(e.message.contains("invalid escape token"), "{e}");
        let e = parse("# syntax=a\n# SYNTAX=b\nFROM scratch\n").unwrap_err();
        assert_eq!(e.position.line, 2);
        assert!(
            e.to_string()
                .starts_with("Dockerfile:2:1: only one `syntax`"),
            "{e}"
        );
    }

    #[test]
    fn empty_continuation_line_warns() {
        let s = parse("FROM scratch\nRUN a \\\n\n b\n").unwrap();
        assert_eq!(s.nodes[1].args, "a  b");
        assert_eq!(s.warnings.len(), 1);
        assert_eq!(s.warnings[0].line, 3);
    }

    #[test]
    fn crlf_bom_and_trailing_continuation_at_eof() {
        let s = parse("\u{feff}FROM scratch\r\nCMD x \\\r\n").unwrap();
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.nodes[0].args, "scratch");
        assert_eq!(s.nodes[1].args, "x");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn double_dash_ends_flags() {
        let s = parse("RUN --network=none -- --not-a-flag\n").unwrap();
        assert_eq!(s.nodes[0].flags.len(), 1);
        assert_eq!(s.nodes[0].args, "--not-a-flag");
        let e = parse("RUN --=x y\n").unwrap_err();
        assert_eq!(e.position, Position { line: 1, column: 5 });
    }
}

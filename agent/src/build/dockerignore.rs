//! `.dockerignore`: which paths of the context are not sent to the builder.
//!
//! Vocabulary (moby/patternmatcher's behaviour):
//! - **pattern**: one line; `#` starts a comment line; blanks around are trimmed; the
//!   pattern is cleaned like Go's `filepath.Clean` (so `./a/../b` is `b`) and a leading
//!   `/` dropped: patterns are relative to the context root;
//! - **match**: Go `filepath.Match` per path (`*` and `?` never cross `/`, `[a-z]` and
//!   `[^…]` classes, `\` escapes) plus `**`, which matches any number of directories,
//!   zero included; a pattern that matches a parent directory matches everything below it;
//! - **exception**: a pattern starting with `!` re-includes what it matches; patterns are
//!   read in order and the last one that matches decides.
//!
//! The same matcher ([`glob_match`]) resolves globs in `COPY` sources.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IgnoreError {
    #[error("{file}:{line}: bad pattern {pattern:?}: {reason}")]
    BadPattern {
        file: PathBuf,
        line: usize,
        pattern: String,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    exception: bool,
}

/// The parsed `.dockerignore` (empty: nothing excluded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

/// Go's `path.Clean` for slash-separated paths ("" → ".").
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if matches!(parts.last(), Some(p) if *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

impl Ignore {
    /// Parses `.dockerignore` text; `file` names it in errors.
    pub fn parse(text: &str, file: impl Into<PathBuf>) -> Result<Ignore, IgnoreError> {
        let file = file.into();
        let mut patterns = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.starts_with('#') {
                continue;
            }
            let mut line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let exception = line.starts_with('!');
            if exception {
                line = line[1..].trim();
                if line.is_empty() {
                    return Err(IgnoreError::BadPattern {
                        file,
                        line: i + 1,
                        pattern: raw.to_string(),
                        reason: "illegal exclusion pattern: \"!\"",
                    });
                }
            }
            let mut text = clean(line);
            if text.len() > 1 && text.starts_with('/') {
                text.remove(0);
            }
            if let Err(reason) = validate(&text) {
                return Err(IgnoreError::BadPattern {
                    file,
                    line: i + 1,
                    pattern: raw.to_string(),
                    reason,
                });
            }
            patterns.push(Pattern { text, exception });
        }
        Ok(Ignore { patterns })
    }

    /// Whether there are `!` patterns (then an excluded directory must still be walked:
    /// something below it may be re-included).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative to the context root, `/`-separated) is excluded.
    pub fn excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pattern in &self.patterns {
            // An exception only matters once matched; an exclusion only until then.
            if pattern.exception != matched {
                continue;
            }
            let mut hit = glob_match(&pattern.text, &path);
            if !hit {
                for i in 0..parents.len() {
                    if glob_match(&pattern.text, &parents[..=i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pattern.exception;
            }
        }
        matched
    }
}

/// Checks classes and escapes are well formed (what Go reports as ErrBadPattern).
fn validate(pattern: &str) -> Result<(), &'static str> {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return Err("trailing escape");
                }
                i += 2;
            }
            '[' => {
                i = class_end(&p, i).ok_or("unterminated character class")?;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Index after the `]` closing the class that opens at `start`.
fn class_end(p: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if i < p.len() && p[i] == '^' {
        i += 1;
    }
    let mut first = true;
    while i < p.len() {
        match p[i] {
            ']' if !first => return Some(i + 1),
            '\\' => i += 2,
            _ => i += 1,
        }
        first = false;
    }
    None
}

/// Whether class `p[start..end]` (brackets included) matches `c`.
fn class_matches(p: &[char], start: usize, end: usize, c: char) -> bool {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut hit = false;
    let close = end - 1;
    while i < close {
        let mut lo = p[i];
        if lo == '\\' {
            i += 1;
            lo = p[i];
        }
        i += 1;
        let mut hi = lo;
        if i + 1 < close && p[i] == '-' {
            hi = p[i + 1];
            if hi == '\\' && i + 2 < close {
                hi = p[i + 2];
                i += 1;
            }
            i += 2;
        }
        if lo <= c && c <= hi {
            hit = true;
        }
    }
    hit != negated
}

/// Go `filepath.Match` with `**` (any number of directories), on `/`-separated paths.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = path.chars().collect();
    match_from(&p, 0, &s, 0)
}

fn match_from(p: &[char], mut pi: usize, s: &[char], mut si: usize) -> bool {
    while pi < p.len() {
        match p[pi] {
            '*' if p.get(pi + 1) == Some(&'*') => {
                let rest = pi + 2;
                if p.get(rest) == Some(&'/') {
                    // `**/`: zero or more whole directories.
                    if match_from(p, rest + 1, s, si) {
                        return true;
                    }
                    for k in si..s.len() {
                        if s[k] == '/' && match_from(p, rest + 1, s, k + 1) {
                            return true;
                        }
                    }
                    return false;
                }
                return (si..=s.len()).any(|k| match_from(p, rest, s, k));
            }
            '*' => {
                let rest = pi + 1;
                let mut k = si;
                loop {
                    if match_from(p, rest, s, k) {
                        return true;
                    }
                    if k >= s.len() || s[k] == '/' {
                        return false;
                    }
                    k += 1;
                }
            }
            '?' => {
                if si >= s.len() || s[si] == '/' {
                    return false;
                }
                pi += 1;
                si += 1;
            }
            '[' => {
                let Some(end) = class_end(p, pi) else {
                    return false;
                };
                if si >= s.len() || s[si] == '/' || !class_matches(p, pi, end, s[si]) {
                    return false;
                }
                pi = end;
                si += 1;
            }
            '\\' if pi + 1 < p.len() => {
                if si >= s.len() || s[si] != p[pi + 1] {
                    return false;
                }
                pi += 2;
                si += 1;
            }
            c => {
                if si >= s.len() || s[si] != c {
                    return false;
                }
                pi += 1;
                si += 1;
            }
        }
    }
    si == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.go", "main.go", true),
            ("*.go", "cmd/main.go", false),
            ("*/*.go", "cmd/main.go", true),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("[\\]]", "]", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("**", "a/b/c", true),
            ("**/*.md", "README.md", true),
            ("**/*.md", "docs/x/y.md", true),
            ("docs/**", "docs/a/b", true),
            ("docs/**/x", "docs/x", true),
            ("docs/**/x", "docs/a/b/x", true),
            ("docs/**/x", "docsx", false),
            ("a*b", "axxb", true),
            ("a*b", "ax/xb", false),
            ("", "", true),
        ];
        for (p, s, want) in cases {
            assert_eq!(glob_match(p, s), *want, "pattern {p:?} path {s:?}");
        }
    }

    #[test]
    fn clean_like_go() {
        assert_eq!(clean("./a/../b/"), "b");
        assert_eq!(clean("/a//b/."), "/a/b");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("/../x"), "/x");
        assert_eq!(clean(""), ".");
        assert_eq!(clean("a/.."), ".");
    }

    #[test]
    fn last_match_wins_with_exceptions() {
        let ig = Ignore::parse(
            "# comment\n  *.md  \n!README.md\n/target\n./build/\n**/*.tmp\n!keep/**\n",
            ".dockerignore",
        )
        .unwrap();
        assert!(ig.excluded("CHANGES.md"));
        assert!(!ig.excluded("README.md"));
        assert!(!ig.excluded("docs/CHANGES.md"), "*.md does not cross /");
        assert!(ig.excluded("target"));
        assert!(
            ig.excluded("target/debug/x"),
            "parent match excludes children"
        );
        assert!(ig.excluded("build/a"));
        assert!(ig.excluded("x.tmp"));
        assert!(ig.excluded("a/b/x.tmp"));
        assert!(!ig.excluded("keep/a/x.tmp"));
        assert!(!ig.excluded("src/main.rs"));
        assert!(ig.has_exceptions());
    }

    #[test]
    fn exception_order_matters() {
        let ig = Ignore::parse("!a.txt\n*.txt\n", "x").unwrap();
        assert!(ig.excluded("a.txt"), "the later exclusion wins");
        let ig = Ignore::parse("dir\n!dir/keep\n", "x").unwrap();
        assert!(ig.excluded("dir/other"));
        assert!(!ig.excluded("dir/keep"));
        assert!(ig.excluded("dir"));
        let ig = Ignore::parse("#notacomment-after-blank\n \\#lit\n", "x").unwrap();
        assert!(ig.excluded("#lit"));
    }

    #[test]
    fn bad_patterns_name_file_and_line() {
        let e = Ignore::parse("ok\n\n[abc\n", "/ctx/.dockerignore").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/ctx/.dockerignore:3: bad pattern \"[abc\": unterminated character class"
        );
        let e = Ignore::parse("!\n", "f").unwrap_err();
        assert!(e.to_string().starts_with("f:1:"), "{e}");
        assert_eq!(Ignore::parse("", "f").unwrap(), Ignore::default());
        assert!(!Ignore::default().excluded("anything"));
    }
}

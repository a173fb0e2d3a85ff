//! Variable substitution, as Docker's shell lexer does it (BuildKit `shell/lex.go`).
//!
//! Vocabulary:
//! - **word**: one argument as written; processing a word expands `$V`, `${V}` and the
//!   modifiers `${V:-x}` `${V-x}` `${V:+x}` `${V+x}` `${V:?msg}` `${V?msg}`, removes quotes
//!   and escapes. Single quotes are literal; in double quotes the escape character only
//!   escapes `"`, `$` and itself. An unset variable expands to the empty string.
//! - **words**: [`Lexer::process_words`] also splits the result on blanks that are outside
//!   quotes (including blanks that came from an unquoted variable), for `EXPOSE`.
//!
//! The lexer is pure: variables come from a lookup function.

/// Why a word could not be expanded; `offset` is the byte offset in the word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("unexpected end of text while looking for matching {quote}")]
    UnterminatedQuote { quote: char, offset: usize },
    #[error("missing '}}' in variable substitution")]
    MissingBrace { offset: usize },
    #[error("bad substitution: {text:?}")]
    BadSubstitution { text: String, offset: usize },
    #[error("unsupported modifier {modifier:?} in ${{{name}…}}")]
    UnsupportedModifier {
        name: String,
        modifier: char,
        offset: usize,
    },
    #[error("{name}: {message}")]
    Required {
        name: String,
        message: String,
        offset: usize,
    },
}

impl LexError {
    pub fn offset(&self) -> usize {
        match self {
            LexError::UnterminatedQuote { offset, .. }
            | LexError::MissingBrace { offset }
            | LexError::BadSubstitution { offset, .. }
            | LexError::UnsupportedModifier { offset, .. }
            | LexError::Required { offset, .. } => *offset,
        }
    }
}

/// The shell lexer, for one escape character.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
}

/// Accumulates the output; tracks word boundaries for `process_words`.
#[derive(Default)]
struct Out {
    words: Vec<String>,
    current: String,
    /// Whether `current` is a word even if empty (it had quotes: `""`).
    started: bool,
}

impl Out {
    fn push(&mut self, c: char) {
        self.current.push(c);
        self.started = true;
    }
    fn push_str(&mut self, s: &str) {
        self.current.push_str(s);
        self.started = true;
    }
    /// Adds text that is subject to word splitting (unquoted).
    fn push_split(&mut self, s: &str) {
        for c in s.chars() {
            if c.is_whitespace() {
                self.end_word();
            } else {
                self.push(c);
            }
        }
    }
    fn end_word(&mut self) {
        if self.started {
            self.words.push(std::mem::take(&mut self.current));
            self.started = false;
        }
    }
    fn text(&self) -> String {
        let mut all = self.words.join(" ");
        if self.started {
            if !all.is_empty() {
                all.push(' ');
            }
            all.push_str(&self.current);
        }
        all
    }
}

struct Scan<'a> {
    chars: Vec<(usize, char)>,
    at: usize,
    len: usize,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    escape: char,
}

impl Scan<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).map(|(_, c)| *c)
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.at += 1;
        }
        c
    }
    fn offset(&self) -> usize {
        self.chars.get(self.at).map_or(self.len, |(o, _)| *o)
    }

    /// Processes until `stop` (consumed) or the end; in the unquoted context.
    fn process(&mut self, out: &mut Out, stop: Option<char>) -> Result<(), LexError> {
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.next();
                return Ok(());
            }
            let at = self.offset();
            self.next();
            if c == self.escape {
                match self.next() {
                    Some(n) => out.push(n),
                    None => break,
                }
            } else if c == '\'' {
                self.single_quoted(out, at)?;
            } else if c == '"' {
                self.double_quoted(out, at)?;
            } else if c == '$' {
                let value = self.dollar(at)?;
                match value {
                    Some(v) => out.push_split(&v),
                    None => out.push('$'),
                }
            } else if c.is_whitespace() {
                out.end_word();
            } else {
                out.push(c);
            }
        }
        if stop.is_some() {
            return Err(LexError::MissingBrace {
                offset: self.offset(),
            });
        }
        Ok(())
    }

    fn single_quoted(&mut self, out: &mut Out, at: usize) -> Result<(), LexError> {
        out.push_str("");
        loop {
            match self.next() {
                None => {
                    return Err(LexError::UnterminatedQuote {
                        quote: '\'',
                        offset: at,
                    })
                }
                Some('\'') => return Ok(()),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self, out: &mut Out, at: usize) -> Result<(), LexError> {
        out.push_str("");
        loop {
            let here = self.offset();
            match self.next() {
                None => {
                    return Err(LexError::UnterminatedQuote {
                        quote: '"',
                        offset: at,
                    })
                }
                Some('"') => return Ok(()),
                Some('$') => match self.dollar(here)? {
                    Some(v) => out.push_str(&v),
                    None => out.push('$'),
                },
                Some(c) if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.next();
                        out.push(n);
                    }
                    _ => out.push(c),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.next();
            } else {
                break;
            }
        }
        name
    }

    /// After a `$` at `at`: the expansion, or None when the `$` is literal.
    fn dollar(&mut self, at: usize) -> Result<Option<String>, LexError> {
        match self.peek() {
            Some('{') => {
                self.next();
                let name = self.name();
                if name.is_empty() {
                    return Err(LexError::BadSubstitution {
                        text: "${".into(),
                        offset: at,
                    });
                }
                let value = (self.lookup)(&name);
                match self.next() {
                    Some('}') => Ok(Some(value.unwrap_or_default())),
                    None => Err(LexError::MissingBrace {
                        offset: self.offset(),
                    }),
                    Some(c) => {
                        let colon = c == ':';
                        let modifier = if colon {
                            self.next().ok_or(LexError::MissingBrace {
                                offset: self.offset(),
                            })?
                        } else {
                            c
                        };
                        if !matches!(modifier, '-' | '+' | '?') {
                            return Err(LexError::UnsupportedModifier {
                                name,
                                modifier: if colon { ':' } else { modifier },
                                offset: at,
                            });
                        }
                        let mut word = Out::default();
                        self.process(&mut word, Some('}'))?;
                        let word = word.text();
                        let set = value.is_some();
                        let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
                        let present = if colon { non_empty } else { set };
                        Ok(Some(match modifier {
                            '-' if present => value.unwrap_or_default(),
                            '-' => word,
                            '+' if present => word,
                            '+' => String::new(),
                            _ if present => value.unwrap_or_default(),
                            _ => {
                                return Err(LexError::Required {
                                    message: if word.is_empty() {
                                        "is not allowed to be unset".into()
                                    } else {
                                        word
                                    },
                                    name,
                                    offset: at,
                                })
                            }
                        }))
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                Ok(Some((self.lookup)(&name).unwrap_or_default()))
            }
            Some(c) if c.is_ascii_digit() => {
                self.next();
                Ok(Some((self.lookup)(&c.to_string()).unwrap_or_default()))
            }
            _ => Ok(None),
        }
    }
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer { escape }
    }

    fn run(&self, word: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Out, LexError> {
        let mut scan = Scan {
            chars: word.char_indices().collect(),
            at: 0,
            len: word.len(),
            lookup,
            escape: self.escape,
        };
        let mut out = Out::default();
        // One word: blanks are kept, so process char by char without splitting.
        scan.process(&mut out, None)?;
        Ok(out)
    }

    /// Expands one word; blanks outside quotes are kept as they are.
    pub fn process_word(
        &self,
        word: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, LexError> {
        let mut scan = Scan {
            chars: word.char_indices().collect(),
            at: 0,
            len: word.len(),
            lookup,
            escape: self.escape,
        };
        let mut out = String::new();
        // Process piecewise so that unquoted blanks (literal or from variables) survive.
        while scan.peek().is_some() {
            let c = scan.peek().expect("peeked");
            if c.is_whitespace() {
                scan.next();
                out.push(c);
                continue;
            }
            let mut piece = Out::default();
            let start = scan.at;
            // Process one blank-free run; `$V` values keep their blanks via `text()`.
            scan.process_run(&mut piece)?;
            debug_assert!(scan.at > start);
            out.push_str(&piece.text_joined());
        }
        Ok(out)
    }

    /// Expands and splits into words on blanks outside quotes.
    pub fn process_words(
        &self,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, LexError> {
        let mut out = self.run(text, lookup)?;
        out.end_word();
        Ok(out.words)
    }
}

impl Out {
    /// The raw text, blanks from variables kept verbatim.
    fn text_joined(&self) -> String {
        let mut all = self.words.join(" ");
        if self.started || !self.current.is_empty() {
            if !all.is_empty() {
                all.push(' ');
            }
            all.push_str(&self.current);
        }
        all
    }
}

impl Scan<'_> {
    /// Processes up to the next unquoted blank; variable values are inserted verbatim.
    fn process_run(&mut self, out: &mut Out) -> Result<(), LexError> {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                return Ok(());
            }
            let at = self.offset();
            self.next();
            if c == self.escape {
                match self.next() {
                    Some(n) => out.push(n),
                    None => return Ok(()),
                }
            } else if c == '\'' {
                self.single_quoted(out, at)?;
            } else if c == '"' {
                self.double_quoted(out, at)?;
            } else if c == '$' {
                match self.dollar(at)? {
                    Some(v) => out.push_str(&v),
                    None => out.push('$'),
                }
            } else {
                out.push(c);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("a".into()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("x  y".into()),
            "PATH" => Some("/bin".into()),
            _ => None,
        }
    }

    #[test]
    fn substitution_table() {
        let lx = Lexer::new('\\');
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("$A", "a"),
            ("${A}", "a"),
            ("x$A.y", "xa.y"),
            ("${A}b", "ab"),
            ("$Ab", ""),
            ("$UNSET", ""),
            ("${UNSET:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${UNSET-d}", "d"),
            ("${A:-d}", "a"),
            ("${A:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${UNSET:-$A}", "a"),
            ("${UNSET:-'lit $A'}", "lit $A"),
            ("'$A'", "$A"),
            ("\"$A\"", "a"),
            ("\"'$A'\"", "'a'"),
            ("\\$A", "$A"),
            ("\"\\$A\"", "$A"),
            ("\"a\\b\"", "a\\b"),
            ("\"q\\\"q\"", "q\"q"),
            ("a\\ b", "a b"),
            ("$", "$"),
            ("a$", "a$"),
            ("$-", "$-"),
            ("${PATH}:/usr/bin", "/bin:/usr/bin"),
            ("hello world", "hello world"),
            ("$SP", "x  y"),
            ("\"a  b\"", "a  b"),
            ("$1", ""),
            ("\"\"", ""),
            ("a\\", "a"),
        ];
        for (input, want) in cases {
            let got = lx.process_word(input, &env);
            assert_eq!(got.as_deref(), Ok(*want), "input {input:?}");
        }
    }

    #[test]
    fn backtick_escape() {
        let lx = Lexer::new('`');
        assert_eq!(lx.process_word("`$A", &env).unwrap(), "$A");
        assert_eq!(lx.process_word("C:\\dir", &env).unwrap(), "C:\\dir");
        assert_eq!(lx.process_word("\"`\"\"", &env).unwrap(), "\"");
    }

    #[test]
    fn errors_carry_offsets() {
        let lx = Lexer::new('\\');
        let e = lx.process_word("ab'cd", &env).unwrap_err();
        assert_eq!(
            e,
            LexError::UnterminatedQuote {
                quote: '\'',
                offset: 2
            }
        );
        assert!(matches!(
            lx.process_word("${A", &env),
            Err(LexError::MissingBrace { .. })
        ));
        assert!(matches!(
            lx.process_word("${A:-x", &env),
            Err(LexError::MissingBrace { .. })
        ));
        assert!(matches!(
            lx.process_word("x${}", &env),
            Err(LexError::BadSubstitution { offset: 1, .. })
        ));
        assert!(matches!(
            lx.process_word("${A%.c}", &env),
            Err(LexError::UnsupportedModifier { modifier: '%', .. })
        ));
        let e = lx.process_word("${UNSET:?must be set}", &env).unwrap_err();
        assert_eq!(e.to_string(), "UNSET: must be set");
        assert_eq!(lx.process_word("${A:?x}", &env).unwrap(), "a");
        assert!(lx.process_word("${EMPTY?x}", &env).is_ok());
        assert!(lx.process_word("${EMPTY:?x}", &env).is_err());
    }

    #[test]
    fn words_split_outside_quotes_only() {
        let lx = Lexer::new('\\');
        assert_eq!(
            lx.process_words("80 $SP \"a b\" '' c\\ d", &env).unwrap(),
            vec!["80", "x", "y", "a b", "", "c d"]
        );
        assert_eq!(lx.process_words("  ", &env).unwrap(), Vec::<String>::new());
    }
}

//! Placement constraints on node labels, parsed from the strings users write:
//! `env==qa`, `site!=cloud`, `region in (a,b)`, `region not in (a,b)`, `gpu` (label exists),
//! `!gpu` (label absent). The scheduler evaluates them with [`Constraint::matches`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Why a constraint string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constraint {input:?}: {reason}")]
pub struct ConstraintError {
    pub input: String,
    pub reason: &'static str,
}

/// The test a constraint applies to one label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    Absent,
}

/// One typed constraint: a label key and the test on its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Constraint {
    pub key: String,
    pub op: Op,
}

impl Constraint {
    /// Does a node with these labels satisfy the constraint? A missing label satisfies
    /// the negative forms (`!=`, `not in`, `!key`) and fails the positive ones.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match (&self.op, value) {
            (Op::Eq(v), Some(x)) => x == v,
            (Op::Eq(_), None) => false,
            (Op::Ne(v), Some(x)) => x != v,
            (Op::Ne(_), None) => true,
            (Op::In(vs), Some(x)) => vs.iter().any(|v| v == x),
            (Op::In(_), None) => false,
            (Op::NotIn(vs), Some(x)) => !vs.iter().any(|v| v == x),
            (Op::NotIn(_), None) => true,
            (Op::Exists, v) => v.is_some(),
            (Op::Absent, v) => v.is_none(),
        }
    }

    /// True when every constraint of the set matches.
    pub fn all_match(set: &[Constraint], labels: &BTreeMap<String, String>) -> bool {
        set.iter().all(|c| c.matches(labels))
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
}

fn parse_list(input: &str, rest: &str) -> Result<Vec<String>, ConstraintError> {
    let err = |reason| ConstraintError {
        input: input.to_string(),
        reason,
    };
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| err("a list must be written in parentheses: (a,b)"))?;
    let items: Vec<String> = inner.split(',').map(|s| s.trim().to_string()).collect();
    if items.iter().any(|s| !valid_value(s)) {
        return Err(err("list values must be non-empty [A-Za-z0-9-_./:]"));
    }
    Ok(items)
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ConstraintError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty constraint"));
        }
        let (key, op) = if let Some((k, v)) = s.split_once("==") {
            (k.trim(), Op::Eq(v.trim().to_string()))
        } else if let Some((k, v)) = s.split_once("!=") {
            (k.trim(), Op::Ne(v.trim().to_string()))
        } else if let Some((k, v)) = s.split_once(" not in ") {
            (k.trim(), Op::NotIn(parse_list(input, v)?))
        } else if let Some((k, v)) = s.split_once(" in ") {
            (k.trim(), Op::In(parse_list(input, v)?))
        } else if s.contains('=') {
            return Err(err("use == or != to compare a label"));
        } else if let Some(k) = s.strip_prefix('!') {
            (k.trim(), Op::Absent)
        } else {
            (s, Op::Exists)
        };
        if !valid_key(key) {
            return Err(err("label key must be non-empty [A-Za-z0-9-_./]"));
        }
        if let Op::Eq(v) | Op::Ne(v) = &op {
            if !valid_value(v) {
                return Err(err("label value must be non-empty [A-Za-z0-9-_./:]"));
            }
        }
        Ok(Constraint {
            key: key.to_string(),
            op,
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::Eq(v) => write!(f, "{}=={}", self.key, v),
            Op::Ne(v) => write!(f, "{}!={}", self.key, v),
            Op::In(vs) => write!(f, "{} in ({})", self.key, vs.join(",")),
            Op::NotIn(vs) => write!(f, "{} not in ({})", self.key, vs.join(",")),
            Op::Exists => write!(f, "{}", self.key),
            Op::Absent => write!(f, "!{}", self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_form_and_round_trips() {
        for s in [
            "env==qa",
            "site!=cloud",
            "region in (a,b)",
            "region not in (a,b)",
            "gpu",
            "!gpu",
        ] {
            let c: Constraint = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
            assert_eq!(c.to_string().parse::<Constraint>().unwrap(), c);
        }
        let c: Constraint = " region in ( eu-1 , us-2 ) ".parse().unwrap();
        assert_eq!(c.op, Op::In(vec!["eu-1".into(), "us-2".into()]));
    }

    #[test]
    fn rejects_malformed_with_reason() {
        for (s, want) in [
            ("", "empty"),
            ("env=qa", "use =="),
            ("==qa", "label key"),
            ("env==", "label value"),
            ("region in a,b", "parentheses"),
            ("region in (a,)", "list values"),
            ("bad key==x", "label key"),
        ] {
            let e = s.parse::<Constraint>().unwrap_err();
            assert!(e.to_string().contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn matches_labels() {
        let l = labels(&[("env", "qa"), ("site", "onprem"), ("region", "a")]);
        let m = |s: &str| s.parse::<Constraint>().unwrap().matches(&l);
        assert!(m("env==qa"));
        assert!(!m("env==prod"));
        assert!(m("site!=cloud"));
        assert!(!m("site!=onprem"));
        assert!(m("region in (a,b)"));
        assert!(!m("region not in (a,b)"));
        assert!(m("region not in (c)"));
        assert!(!m("gpu"));
        assert!(m("!gpu"));
        assert!(m("env"));
        // missing label: negative forms pass, positive fail
        assert!(m("zone!=x"));
        assert!(m("zone not in (x)"));
        assert!(!m("zone==x"));
        assert!(!m("zone in (x)"));
    }
}

//! At most one leader per term: every member's view of itself as leader is recorded as
//! (term, member); two members leading in the same term is a split brain.

use super::Violation;
use std::collections::BTreeMap;

pub const NAME: &str = "single-leader";

/// Who was seen leading each term.
#[derive(Debug, Default, Clone)]
pub struct LeaderLog {
    leaders: BTreeMap<u64, u64>,
    violations: Vec<Violation>,
}

impl LeaderLog {
    /// Record that `member` saw itself as leader of `term`.
    pub fn observe(&mut self, term: u64, member: u64) {
        match self.leaders.get(&term) {
            Some(&other) if other != member => self.violations.push(Violation::new(
                NAME,
                format!("term {term}: members {other} and {member} both led"),
            )),
            Some(_) => {}
            None => {
                self.leaders.insert(term, member);
            }
        }
    }

    pub fn terms(&self) -> usize {
        self.leaders.len()
    }

    pub fn check(&self) -> Vec<Violation> {
        self.violations.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_is_a_violation() {
        let mut log = LeaderLog::default();
        log.observe(1, 1);
        log.observe(1, 1);
        log.observe(2, 3);
        assert!(log.check().is_empty());
        assert_eq!(log.terms(), 2);
        log.observe(2, 2);
        let v = log.check();
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("term 2"), "{}", v[0]);
    }
}

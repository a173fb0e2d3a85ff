//! No acknowledged write is lost: an oracle of client history. Each client owns one key
//! and writes increasing sequence numbers to it, one at a time; a write is *acknowledged*
//! when the cluster answered that it was committed. In the final state, a key's value must
//! be at least its last acknowledged sequence (nothing acknowledged was lost) and at most
//! its last attempted one (nothing was invented).

use super::Violation;
use std::collections::BTreeMap;

pub const NAME: &str = "acked-writes";

#[derive(Debug, Default, Clone)]
pub struct History {
    /// key → (last acknowledged, last attempted)
    keys: BTreeMap<String, (Option<u64>, u64)>,
    acks: usize,
}

impl History {
    pub fn attempt(&mut self, key: &str, seq: u64) {
        let e = self.keys.entry(key.to_string()).or_default();
        e.1 = e.1.max(seq);
    }

    pub fn ack(&mut self, key: &str, seq: u64) {
        self.acks += 1;
        let e = self.keys.entry(key.to_string()).or_default();
        e.0 = Some(e.0.map_or(seq, |s| s.max(seq)));
        e.1 = e.1.max(seq);
    }

    /// Writes acknowledged so far (all keys).
    pub fn acknowledged(&self) -> usize {
        self.acks
    }

    /// `value(key)`: the sequence number the final state holds for the key, if any.
    pub fn check(&self, value: impl Fn(&str) -> Option<u64>) -> Vec<Violation> {
        let mut out = Vec::new();
        for (key, (acked, attempted)) in &self.keys {
            let got = value(key);
            match (acked, got) {
                (Some(a), None) => out.push(Violation::new(
                    NAME,
                    format!("{key}: write {a} was acknowledged, the key is gone"),
                )),
                (Some(a), Some(g)) if g < *a => out.push(Violation::new(
                    NAME,
                    format!("{key}: write {a} was acknowledged, the state holds {g}"),
                )),
                (_, Some(g)) if g > *attempted => out.push(Violation::new(
                    NAME,
                    format!("{key}: the state holds {g}, never written (last: {attempted})"),
                )),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_acknowledged_write_is_caught() {
        let mut h = History::default();
        h.attempt("a", 1);
        h.ack("a", 1);
        h.attempt("a", 2); // unknown outcome: either 1 or 2 is fine
        h.attempt("b", 1);
        h.ack("b", 1);
        assert!(h.check(|k| Some(if k == "a" { 2 } else { 1 })).is_empty());
        assert!(h.check(|_| Some(1)).is_empty());
        let v = h.check(|k| if k == "a" { Some(0) } else { None });
        assert_eq!(v.len(), 2, "{v:?}");
        let v = h.check(|_| Some(3));
        assert_eq!(v.len(), 2, "invented values: {v:?}");
    }
}

//! The invariants a run must keep, one per file. Each `check` is pure: it reads what was
//! observed (a state, a history) and returns the [`Violation`]s it found, empty when the
//! invariant holds.

pub mod acked_writes;
pub mod convergence;
pub mod placement;
pub mod replicas;
pub mod single_leader;

use serde::Serialize;

/// One broken invariant, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: &'static str, detail: impl Into<String>) -> Self {
        Violation {
            invariant,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

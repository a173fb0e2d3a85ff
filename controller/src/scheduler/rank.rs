//! Rankers: among feasible nodes, which is best? Scores are "higher is better".
//!
//! - **binpack** (default): prefer the node that will be fullest after the placement, so
//!   large requests still find room elsewhere and idle nodes can be drained.
//! - **spread** over a label (e.g. `site`): prefer the label value that holds the fewest
//!   replicas of the service; binpack breaks ties.

use crate::state::Resources;

/// Average utilisation of cpu and memory after adding `request` (0.0 – 1.0). A dimension
/// the node does not offer (allocatable 0) counts as empty.
pub fn binpack(allocatable: Resources, used_after: Resources) -> f64 {
    fn frac(used: u64, total: u64) -> f64 {
        if total == 0 {
            0.0
        } else {
            (used as f64 / total as f64).min(1.0)
        }
    }
    (frac(used_after.cpu_millis, allocatable.cpu_millis)
        + frac(used_after.memory_bytes, allocatable.memory_bytes))
        / 2.0
}

/// The combined score used to compare two candidates: spread first (fewer replicas in the
/// node's label value is better), then binpack.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Score {
    /// Minus the replicas already in the node's spread group (0 when not spreading).
    pub spread: i64,
    pub binpack: f64,
}

impl Score {
    pub fn better_than(&self, other: &Score) -> bool {
        (self.spread, self.binpack) > (other.spread, other.binpack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpu: u64, mem: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem,
            pids: 0,
        }
    }

    #[test]
    fn fuller_node_scores_higher() {
        let total = r(1000, 1000);
        assert!(binpack(total, r(900, 900)) > binpack(total, r(100, 100)));
        assert_eq!(binpack(total, r(1000, 1000)), 1.0);
        assert_eq!(binpack(r(0, 0), r(5, 5)), 0.0);
    }

    #[test]
    fn spread_dominates_binpack() {
        let emptier_group = Score {
            spread: -1,
            binpack: 0.1,
        };
        let fuller_group = Score {
            spread: -3,
            binpack: 0.9,
        };
        assert!(emptier_group.better_than(&fuller_group));
        let same_group_fuller = Score {
            spread: -1,
            binpack: 0.5,
        };
        assert!(same_group_fuller.better_than(&emptier_group));
    }
}

//! Pull backoff, pure: after a failed pull of an image, the node waits before pulling it
//! again — `base`, doubled on each further failure up to `max` — so that an unknown image
//! or a registry that is down does not turn into a storm of pulls and of replacement
//! allocations. A success forgets the image's failures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    next: Instant,
}

/// Per image, when a pull may be tried again.
#[derive(Debug, Clone)]
pub struct PullBackoff {
    base: Duration,
    max: Duration,
    images: HashMap<String, Entry>,
}

impl PullBackoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        PullBackoff {
            base,
            max,
            images: HashMap::new(),
        }
    }

    /// When `image` may be pulled again, if not now.
    pub fn blocked_until(&self, image: &str, now: Instant) -> Option<Instant> {
        self.images
            .get(image)
            .map(|e| e.next)
            .filter(|next| *next > now)
    }

    /// A pull of `image` failed at `now`: the delay before the next try.
    pub fn failed(&mut self, image: &str, now: Instant) -> Duration {
        let e = self.images.entry(image.to_string()).or_insert(Entry {
            failures: 0,
            next: now,
        });
        e.failures = e.failures.saturating_add(1);
        let factor = 1u32 << (e.failures - 1).min(16);
        let delay = self.base.saturating_mul(factor).min(self.max);
        e.next = now + delay;
        delay
    }

    pub fn succeeded(&mut self, image: &str) {
        self.images.remove(image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_double_the_wait_up_to_the_cap_and_success_resets() {
        let mut b = PullBackoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(b.blocked_until("a", t0), None);
        assert_eq!(b.failed("a", t0), Duration::from_secs(1));
        assert_eq!(b.blocked_until("a", t0), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            b.blocked_until("b", t0),
            None,
            "other images are not blocked"
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.blocked_until("a", t1), None, "the wait is over");
        assert_eq!(b.failed("a", t1), Duration::from_secs(2));
        assert_eq!(b.failed("a", t1), Duration::from_secs(4));
        assert_eq!(b.failed("a", t1), Duration::from_secs(5), "capped");
        for _ in 0..40 {
            assert_eq!(b.failed("a", t1), Duration::from_secs(5));
        }
        b.succeeded("a");
        assert_eq!(b.blocked_until("a", t1), None);
        assert_eq!(
            b.failed("a", t1),
            Duration::from_secs(1),
            "reset by success"
        );
    }
}

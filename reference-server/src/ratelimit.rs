//! WS-RATE-*: fixed-window counters per key (agent id or remote address).
//!
//! A fixed window is the simplest fair limiter PROTOCOL.md §7 allows. Keys
//! whose window has passed are pruned by [`RateLimiter::prune`], which the
//! sweeper calls, so strangers cannot grow memory without bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The verdict on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; the window ends after this long (for `Retry-After`).
    Limited {
        retry_after: Duration,
    },
}

pub struct RateLimiter<K> {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `limit` events per `window`; a limit of 0 allows everything.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event for `key`.
    pub fn hit(&self, key: &K, now: Instant) -> Verdict {
        self.check(key, now, true)
    }

    /// Whether `key` is over its limit, without counting anything.
    pub fn peek(&self, key: &K, now: Instant) -> Verdict {
        self.check(key, now, false)
    }

    fn check(&self, key: &K, now: Instant, count: bool) -> Verdict {
        if self.limit == 0 {
            return Verdict::Allowed;
        }
        let mut windows = self.windows.lock().expect("rate limiter lock");
        let entry = match windows.get_mut(key) {
            Some(entry) => entry,
            None if !count => return Verdict::Allowed,
            None => windows.entry(key.clone()).or_insert((now, 0)),
        };
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let retry_after = self.window.saturating_sub(now.duration_since(entry.0));
            return Verdict::Limited { retry_after };
        }
        if count {
            entry.1 += 1;
        }
        Verdict::Allowed
    }

    /// Forgets keys whose window has passed.
    pub fn prune(&self, now: Instant) {
        let mut windows = self.windows.lock().expect("rate limiter lock");
        windows.retain(|_, (start, _)| now.duration_since(*start) < self.window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_within_a_window_and_resets_after_it() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.hit(&"a", t0), Verdict::Allowed);
        }
        assert_eq!(
            limiter.hit(&"a", t0 + Duration::from_secs(20)),
            Verdict::Limited {
                retry_after: Duration::from_secs(40)
            }
        );
        assert_eq!(
            limiter.hit(&"b", t0),
            Verdict::Allowed,
            "keys are independent"
        );
        assert_eq!(
            limiter.hit(&"a", t0 + Duration::from_secs(60)),
            Verdict::Allowed
        );
    }

    #[test]
    fn peek_counts_nothing_and_zero_disables() {
        let limiter = RateLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(limiter.peek(&1, t0), Verdict::Allowed);
        assert_eq!(limiter.hit(&1, t0), Verdict::Allowed);
        assert!(matches!(limiter.peek(&1, t0), Verdict::Limited { .. }));
        let off = RateLimiter::new(0, Duration::from_secs(60));
        for _ in 0..1000 {
            assert_eq!(off.hit(&1, t0), Verdict::Allowed);
        }
    }

    #[test]
    fn prune_forgets_old_windows() {
        let limiter = RateLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        limiter.hit(&"a", t0);
        limiter.prune(t0 + Duration::from_secs(2));
        assert!(limiter.windows.lock().unwrap().is_empty());
    }
}

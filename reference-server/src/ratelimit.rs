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

/// A running window of a [`RateLimiter`]: how long ago it began, and what
/// it counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub age: Duration,
    pub count: u32,
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

    /// `key`'s window, if one is running: how long ago it began, and its
    /// count. What another instance needs to go on counting for an agent
    /// whose socket moved there (PROTOCOL.md §7 limits per agent).
    pub fn window(&self, key: &K, now: Instant) -> Option<Window> {
        let windows = self.windows.lock().expect("rate limiter lock");
        let &(start, count) = windows.get(key)?;
        let age = now.duration_since(start);
        (age < self.window && count > 0).then_some(Window { age, count })
    }

    /// Forgets `key`'s window: it is counted elsewhere now.
    pub fn forget(&self, key: &K) {
        self.windows.lock().expect("rate limiter lock").remove(key);
    }

    /// Adds a window counted elsewhere to `key`'s: the counts add up, and
    /// the window begins when the earlier one did.
    pub fn add_window(&self, key: &K, window: Window, now: Instant) {
        if window.age >= self.window {
            return;
        }
        let start = now.checked_sub(window.age).unwrap_or(now);
        let mut windows = self.windows.lock().expect("rate limiter lock");
        let entry = windows.entry(key.clone()).or_insert((start, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (start, 0);
        }
        *entry = (entry.0.min(start), entry.1.saturating_add(window.count));
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
    fn a_window_moves_to_another_limiter_and_counts_on_there() {
        let (a, b) = (
            RateLimiter::new(3, Duration::from_secs(60)),
            RateLimiter::new(3, Duration::from_secs(60)),
        );
        let t0 = Instant::now();
        assert_eq!(a.window(&"x", t0), None);
        a.hit(&"x", t0);
        a.hit(&"x", t0);
        let t1 = t0 + Duration::from_secs(20);
        let moved = a.window(&"x", t1);
        assert_eq!(
            moved,
            Some(Window {
                age: Duration::from_secs(20),
                count: 2
            })
        );
        b.add_window(&"x", moved.unwrap(), t1);
        assert_eq!(b.hit(&"x", t1), Verdict::Allowed);
        assert_eq!(
            b.hit(&"x", t1),
            Verdict::Limited {
                retry_after: Duration::from_secs(40)
            },
            "the window began on the other limiter"
        );
        b.forget(&"x");
        assert_eq!(b.hit(&"x", t1), Verdict::Allowed, "no window: a fresh one");
        assert_eq!(a.window(&"x", t0 + Duration::from_secs(60)), None, "passed");
    }

    #[test]
    fn an_added_window_sums_counts_from_the_earlier_start() {
        let limiter = RateLimiter::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.hit(&"x", t0);
        let t1 = t0 + Duration::from_secs(10);
        let elsewhere = Window {
            age: Duration::from_secs(30),
            count: 3,
        };
        limiter.add_window(&"x", elsewhere, t1);
        assert_eq!(
            limiter.window(&"x", t1),
            Some(Window {
                age: Duration::from_secs(30),
                count: 4
            })
        );
        let passed = Window {
            age: Duration::from_secs(61),
            count: 50,
        };
        limiter.add_window(&"x", passed, t1);
        assert_eq!(
            limiter.window(&"x", t1).map(|w| w.count),
            Some(4),
            "a passed window adds nothing"
        );
        limiter.add_window(&"y", elsewhere, t1);
        assert_eq!(limiter.window(&"y", t1).map(|w| w.count), Some(3));
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

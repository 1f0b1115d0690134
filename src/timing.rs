//! Time is a parameter: the backend's timeouts (read from its `connected`
//! message or given as flags) and expressions over them that scenarios use,
//! like `1.5*ping_timeout + 500ms`.

use std::time::Duration;

/// The backend's timers, as the harness believes them to be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub ack_timeout: Duration,
    pub max_attempts: u32,
    /// Multiplies every wait and deadline (`--timeout-scale`).
    pub scale: f64,
}

impl Default for Timings {
    /// The spec's numbers (PROTOCOL.md §4, §5).
    fn default() -> Self {
        Timings {
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(30),
            max_attempts: 10,
            scale: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{expr}`: {why}; write e.g. `2s`, `ack_timeout`, `1.5*ping_timeout + 500ms`, `backoff(2)`"
)]
pub struct TimeExprError {
    pub expr: String,
    pub why: String,
}

impl Timings {
    /// WS-DLV-3: the backoff before attempt n+1, min(1 s · 2ⁿ⁻¹, 60 s).
    pub fn backoff(n: u32) -> Duration {
        let secs = 1u64 << n.saturating_sub(1).min(6);
        Duration::from_secs(secs.min(60))
    }

    /// WS-DLV-8: timers are kept within 10 % or 1 s, whichever is larger.
    pub fn tolerance(d: Duration) -> Duration {
        (d / 10).max(Duration::from_secs(1))
    }

    /// Evaluates a sum of terms, each `[factor*]name` or a literal duration.
    /// Unscaled: deadlines (`within`, `eventually`) are scaled by the caller
    /// with [`Timings::scaled`]; waits and `not_before` are not.
    pub fn eval(&self, expr: &str) -> Result<Duration, TimeExprError> {
        let err = |why: &str| TimeExprError {
            expr: expr.to_string(),
            why: why.to_string(),
        };
        let mut total = 0.0f64;
        for term in expr.split('+') {
            let term = term.trim();
            if term.is_empty() {
                return Err(err("an empty term"));
            }
            let (factor, name) = match term.split_once('*') {
                Some((f, n)) => (
                    f.trim()
                        .parse::<f64>()
                        .map_err(|_| err("a factor must be a number"))?,
                    n.trim(),
                ),
                None => (1.0, term),
            };
            let base = self
                .named(name)
                .or_else(|| humantime::parse_duration(name).ok())
                .ok_or_else(|| err(&format!("unknown time `{name}`")))?;
            total += factor * base.as_secs_f64();
        }
        if !total.is_finite() || total < 0.0 {
            return Err(err("not a duration"));
        }
        Ok(Duration::from_secs_f64(total))
    }

    fn named(&self, name: &str) -> Option<Duration> {
        match name {
            "ping_interval" => Some(self.ping_interval),
            "ping_timeout" => Some(self.ping_timeout),
            "ack_timeout" => Some(self.ack_timeout),
            _ => {
                let n = name
                    .strip_prefix("backoff(")?
                    .strip_suffix(')')?
                    .trim()
                    .parse()
                    .ok()?;
                Some(Timings::backoff(n))
            }
        }
    }

    /// A deadline for something that should happen "at once", scaled.
    pub fn prompt(&self) -> Duration {
        self.scaled(Duration::from_secs(5))
    }

    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale.max(0.01))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timings {
        Timings {
            ping_timeout: Duration::from_secs(2),
            ack_timeout: Duration::from_millis(500),
            ..Timings::default()
        }
    }

    #[test]
    fn expressions_over_timers() {
        assert_eq!(t().eval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(t().eval("ping_timeout"), Ok(Duration::from_secs(2)));
        assert_eq!(
            t().eval("1.5*ping_timeout + 500ms"),
            Ok(Duration::from_millis(3500))
        );
        assert_eq!(
            t().eval("ack_timeout + backoff(1)"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            t().eval("ack_timeout+backoff(3)"),
            Ok(Duration::from_millis(4500))
        );
        assert!(t()
            .eval("soon")
            .unwrap_err()
            .to_string()
            .contains("unknown time `soon`"));
        assert!(t().eval("x*ping_timeout").is_err());
        assert!(t().eval("1s +").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(Timings::backoff(1), Duration::from_secs(1));
        assert_eq!(Timings::backoff(4), Duration::from_secs(8));
        assert_eq!(Timings::backoff(30), Duration::from_secs(60));
    }
}

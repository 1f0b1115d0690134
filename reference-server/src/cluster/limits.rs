//! WS-RATE-2 and WS-RATE-3 across instances. PROTOCOL.md §7 limits
//! messages and pings per agent, and an agent's socket moves between
//! instances: a reconnect through a load balancer lands anywhere, and a
//! takeover closes the old socket elsewhere. The agent's windows move with
//! its socket, so a reconnect to another instance earns no fresh quota.
//!
//! - An instance's limiters hold the windows of the sockets it holds. When
//!   a socket closes, its windows go with it ([`Cluster::release`]): stored
//!   for whichever instance holds the agent's next socket, or, if another
//!   instance has already taken the socket over, sent to it
//!   ([`Inbound::Limits`]). Then this instance forgets them.
//! - [`Cluster::hold`] reads what the last released socket left
//!   ([`Handover`]); the new holder adds it to its own windows.
//!
//! Both the release and the hold change the agent's `agent_sockets` row,
//! so one of them waits for the other: either the hold sees the stored
//! windows or the release sees the new holder (`cluster/postgres.rs`).
//! The windows of an instance that was killed are lost: its agents count
//! from zero again, as they did before this existed. The connection limit
//! (WS-RATE-1) and the per-address limit stay per instance: they are
//! checked before the upgrade, and a database round trip for every
//! stranger's attempt would let strangers load the database.
//!
//! [`Cluster::release`]: super::Cluster::release
//! [`Cluster::hold`]: super::Cluster::hold
//! [`Inbound::Limits`]: super::Inbound::Limits

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ratelimit::{RateLimiter, Window};
use crate::state::AppState;
use crate::store::{ConnId, Millis};
use crate::wire::now_millis;

/// An agent's running windows, as they cross instances: when each began
/// (milliseconds since the epoch, so another process can read it) and
/// what it counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// WS-RATE-2: messages.
    pub messages: Option<(Millis, u32)>,
    /// WS-RATE-3: answered pings.
    pub pings: Option<(Millis, u32)>,
}

/// What [`Cluster::hold`](super::Cluster::hold) found of the agent's
/// earlier sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handover {
    /// Another instance's socket this hold took over. That instance sends
    /// its windows when the socket has closed, unless it released the
    /// socket first: then they are `released`.
    pub taken_over: Option<ConnId>,
    /// The windows the agent's last released socket left, and that
    /// socket's connection.
    pub released: Option<(ConnId, Limits)>,
}

impl Limits {
    /// `agent`'s windows on this instance.
    pub fn of(state: &AppState, agent: &str) -> Limits {
        let (now, wall) = (Instant::now(), now_millis());
        let crossing = |limiter: &RateLimiter<String>| {
            limiter
                .window(&agent.to_string(), now)
                .map(|w| (wall - w.age.as_millis() as Millis, w.count))
        };
        Limits {
            messages: crossing(&state.message_limiter),
            pings: crossing(&state.ping_limiter),
        }
    }

    /// Adds these windows to `agent`'s on this instance.
    pub fn add_to(&self, state: &AppState, agent: &str) {
        let (now, wall) = (Instant::now(), now_millis());
        let agent = agent.to_string();
        for (limiter, window) in [
            (&state.message_limiter, self.messages),
            (&state.ping_limiter, self.pings),
        ] {
            if let Some((began, count)) = window {
                let age = Duration::from_millis((wall - began).max(0) as u64);
                limiter.add_window(&agent, Window { age, count }, now);
            }
        }
    }

    /// Forgets `agent`'s windows on this instance: they went with its
    /// socket.
    pub fn forget(state: &AppState, agent: &str) {
        let agent = agent.to_string();
        state.message_limiter.forget(&agent);
        state.ping_limiter.forget(&agent);
    }
}

impl Handover {
    /// Starts `agent`'s windows on this instance from what its earlier
    /// socket counted. `replaced_here`: that socket was one of this
    /// instance, whose windows this instance still has.
    pub fn apply(&self, state: &AppState, agent: &str, replaced_here: bool) {
        if replaced_here {
            return;
        }
        match (self.taken_over, self.released) {
            // The released socket is the one taken over, or the agent had
            // no socket anywhere: its windows are the latest.
            (None, Some((_, limits))) => limits.add_to(state, agent),
            (Some(taken), Some((conn, limits))) if taken == conn => limits.add_to(state, agent),
            // The socket taken over sends its windows once closed.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cross_as_json_with_wall_clock_starts() {
        let limits = Limits {
            messages: Some((1_796_400_000_000, 60)),
            pings: None,
        };
        let text = serde_json::to_string(&limits).unwrap();
        assert_eq!(text, r#"{"messages":[1796400000000,60],"pings":null}"#);
        assert_eq!(serde_json::from_str::<Limits>(&text).unwrap(), limits);
    }
}

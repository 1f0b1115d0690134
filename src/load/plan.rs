//! Every load shape is one [`Plan`] value that one engine runs (STYLE.md
//! habit 6): flags set the basics, a profile (`scenarios/load/*.toml`)
//! adds personas, a rate shape and events.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a simulated agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    /// Pings on time, acks at once.
    WellBehaved,
    /// Acks after a delay drawn from `slow_ack`.
    SlowAcker,
    /// Acks with `success: false`.
    FailingAcker,
    /// Never pings: the backend should evict it (ping timeout).
    Silent,
    /// Reads its socket slowly (pauses between reads).
    SlowReader,
    /// Sends a malformed frame now and then.
    MalformedSender,
    /// Drops and reopens its socket every `flap_every`.
    Flapper,
    /// Opens a second socket for its own id.
    Duplicate,
}

impl Persona {
    pub const ALL: [Persona; 8] = [
        Persona::WellBehaved,
        Persona::SlowAcker,
        Persona::FailingAcker,
        Persona::Silent,
        Persona::SlowReader,
        Persona::MalformedSender,
        Persona::Flapper,
        Persona::Duplicate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Persona::WellBehaved => "well_behaved",
            Persona::SlowAcker => "slow_acker",
            Persona::FailingAcker => "failing_acker",
            Persona::Silent => "silent",
            Persona::SlowReader => "slow_reader",
            Persona::MalformedSender => "malformed_sender",
            Persona::Flapper => "flapper",
            Persona::Duplicate => "duplicate",
        }
    }
}

/// `spec` (success: bool) or `compat` (status: completed|failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckDialect {
    Spec,
    Compat,
}

/// Something that happens to the whole fleet at a moment of the run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// Every agent drops its socket at once and reconnects with backoff.
    DropAll {
        #[serde(with = "humantime_serde_compat")]
        at: Duration,
    },
    /// The backend restarts (`--restart-cmd`, or the embedded server).
    Restart {
        #[serde(with = "humantime_serde_compat")]
        at: Duration,
    },
    /// The backend is killed (`kill -9`) and started again (`--crash-cmd`,
    /// or the embedded server): nothing it answered 202 may be lost.
    Crash {
        #[serde(with = "humantime_serde_compat")]
        at: Duration,
    },
}

impl Event {
    pub fn at(&self) -> Duration {
        match self {
            Event::DropAll { at } | Event::Restart { at } | Event::Crash { at } => *at,
        }
    }
}

/// The rate over time: `steady` at `rate`, or a `spike` to `spike_rate`
/// between `spike_at` and `spike_at + spike_for`. `--ramp` ramps any shape.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Spike {
    pub rate: f64,
    #[serde(with = "humantime_serde_compat")]
    pub at: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub lasting: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub agents: usize,
    /// Commands per second across the fleet (this shard's share of it).
    pub rate: f64,
    pub duration: Duration,
    pub ramp: Duration,
    pub spike: Option<Spike>,
    /// Persona shares, summing to 1.
    pub personas: Vec<(Persona, f64)>,
    pub ping_interval: Duration,
    /// Every ping at the same moment instead of spread over the interval.
    pub ping_burst: bool,
    pub ack_dialect: AckDialect,
    /// Ack delay range for slow ackers.
    pub slow_ack: (Duration, Duration),
    /// Share of acks that report failure, for every persona.
    pub failure_ratio: f64,
    pub flap_every: Duration,
    /// Agents leaving and joining per second.
    pub churn_per_s: f64,
    pub events: Vec<Event>,
    /// How long to wait at the end for acks still on their way.
    pub drain: Duration,
    pub seed: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            agents: 100,
            rate: 100.0,
            duration: Duration::from_secs(10),
            ramp: Duration::ZERO,
            spike: None,
            personas: vec![(Persona::WellBehaved, 1.0)],
            ping_interval: Duration::from_secs(30),
            ping_burst: false,
            ack_dialect: AckDialect::Spec,
            slow_ack: (Duration::from_secs(1), Duration::from_secs(3)),
            failure_ratio: 0.0,
            flap_every: Duration::from_secs(10),
            churn_per_s: 0.0,
            events: Vec::new(),
            drain: Duration::from_secs(5),
            seed: 0,
        }
    }
}

/// A load profile as written in `scenarios/load/*.toml`; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub description: Option<String>,
    pub agents: Option<usize>,
    pub rate: Option<f64>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub duration: Option<Duration>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub ramp: Option<Duration>,
    pub spike: Option<Spike>,
    pub personas: Option<std::collections::BTreeMap<Persona, f64>>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub ping_interval: Option<Duration>,
    pub ping_burst: Option<bool>,
    pub ack_dialect: Option<AckDialect>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub slow_ack_min: Option<Duration>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub slow_ack_max: Option<Duration>,
    pub failure_ratio: Option<f64>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub flap_every: Option<Duration>,
    pub churn_per_s: Option<f64>,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// Why a profile (`--profile FILE`) cannot be used: a bad file (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {why}")]
    Unreadable { path: String, why: String },
    /// Not TOML, or a key the profile format does not have.
    #[error("{path}:{line}: {why}")]
    Invalid {
        path: String,
        line: usize,
        why: String,
    },
    #[error("persona shares must be non-negative and not all zero")]
    PersonaShares,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Unreadable {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ProfileError::Invalid {
            path: path.display().to_string(),
            line: e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].lines().count().max(1)
            }),
            why: e.message().to_string(),
        })
    }

    /// Applies the profile's keys over `plan` (flags given explicitly win; the caller applies them after).
    pub fn apply(self, plan: &mut Plan) -> Result<(), ProfileError> {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { plan.$field = v; } )* };
        }
        set!(
            agents,
            rate,
            duration,
            ramp,
            ping_interval,
            ping_burst,
            ack_dialect,
            failure_ratio,
            flap_every,
            churn_per_s
        );
        if self.spike.is_some() {
            plan.spike = self.spike;
        }
        if let Some(min) = self.slow_ack_min {
            plan.slow_ack.0 = min;
        }
        if let Some(max) = self.slow_ack_max {
            plan.slow_ack.1 = max;
        }
        if let Some(shares) = self.personas {
            let total: f64 = shares.values().sum();
            if total <= 0.0 || shares.values().any(|s| *s < 0.0) {
                return Err(ProfileError::PersonaShares);
            }
            plan.personas = shares.into_iter().map(|(p, s)| (p, s / total)).collect();
        }
        plan.events.extend(self.events);
        Ok(())
    }
}

impl Plan {
    /// The fleet-wide rate at `t` into the run.
    pub fn rate_at(&self, t: Duration) -> f64 {
        let mut rate = self.rate;
        if let Some(spike) = &self.spike {
            if t >= spike.at && t < spike.at + spike.lasting {
                rate = spike.rate;
            }
        }
        if !self.ramp.is_zero() && t < self.ramp {
            rate *= t.as_secs_f64() / self.ramp.as_secs_f64();
        }
        rate
    }

    /// While the rate is zero at `t`, the next time it may not be: the
    /// spike's start, a step into the ramp, or the end of the run.
    pub fn rate_may_rise_at(&self, t: Duration) -> Duration {
        if !self.ramp.is_zero() && t < self.ramp {
            return t + Duration::from_millis(10);
        }
        match &self.spike {
            Some(spike) if spike.at > t => spike.at,
            _ => self.duration,
        }
    }

    /// The persona of agent `index`: shares laid out over the index range,
    /// so every run with the same plan gives each agent the same persona.
    pub fn persona_of(&self, index: usize) -> Persona {
        let x = (index as f64 + 0.5) / self.agents.max(1) as f64;
        let mut acc = 0.0;
        for (persona, share) in &self.personas {
            acc += share;
            if x < acc {
                return *persona;
            }
        }
        self.personas
            .last()
            .map_or(Persona::WellBehaved, |(p, _)| *p)
    }
}

/// Durations in TOML as `"2s"`, `"1500ms"`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("`{text}`: {e}; write e.g. `2s` or `1500ms`"))
        })
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_override_the_plan() {
        let profile: Profile = toml::from_str(
            "agents = 50\nrate = 20\nramp = \"2s\"\npersonas = { well_behaved = 3, silent = 1 }\nevents = [{ kind = \"drop_all\", at = \"5s\" }]\n",
        )
        .unwrap();
        let mut plan = Plan::default();
        profile.apply(&mut plan).unwrap();
        assert_eq!(
            (plan.agents, plan.rate, plan.ramp),
            (50, 20.0, Duration::from_secs(2))
        );
        assert_eq!(
            plan.personas,
            vec![(Persona::WellBehaved, 0.75), (Persona::Silent, 0.25)]
        );
        assert_eq!(
            plan.events,
            vec![Event::DropAll {
                at: Duration::from_secs(5)
            }]
        );
        assert_eq!(plan.persona_of(0), Persona::WellBehaved);
        assert_eq!(plan.persona_of(49), Persona::Silent);
        assert_eq!(
            (0..50)
                .filter(|i| plan.persona_of(*i) == Persona::Silent)
                .count(),
            13
        );
    }

    #[test]
    fn rate_shapes() {
        let plan = Plan {
            rate: 100.0,
            ramp: Duration::from_secs(10),
            spike: Some(Spike {
                rate: 1000.0,
                at: Duration::from_secs(20),
                lasting: Duration::from_secs(5),
            }),
            ..Plan::default()
        };
        assert_eq!(plan.rate_at(Duration::from_secs(5)), 50.0);
        assert_eq!(plan.rate_at(Duration::from_secs(15)), 100.0);
        assert_eq!(plan.rate_at(Duration::from_secs(22)), 1000.0);
    }

    #[test]
    fn an_idle_stretch_sleeps_until_the_rate_can_rise() {
        let spike = Spike {
            rate: 1000.0,
            at: Duration::from_secs(20),
            lasting: Duration::from_secs(5),
        };
        let idle_then_spike = Plan {
            rate: 0.0,
            duration: Duration::from_secs(60),
            spike: Some(spike),
            ..Plan::default()
        };
        let t = Duration::from_secs(3);
        assert_eq!(idle_then_spike.rate_may_rise_at(t), Duration::from_secs(20));
        assert_eq!(
            idle_then_spike.rate_may_rise_at(Duration::from_secs(30)),
            Duration::from_secs(60)
        );
        let ramp = Plan {
            rate: 100.0,
            ramp: Duration::from_secs(10),
            ..Plan::default()
        };
        assert_eq!(
            ramp.rate_may_rise_at(Duration::ZERO),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let err = toml::from_str::<Profile>("agents = 5\ncolour = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"));
        let err = toml::from_str::<Profile>("duration = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("write e.g. `2s`"));
    }
}

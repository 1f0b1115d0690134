//! WS-OBS-1: Prometheus metrics, served as text at `GET /metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One label, e.g. `[("reason", "ping_timeout")]`.
type Label = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    pub connections_active: Gauge<i64, AtomicI64>,
    pub connections_total: Counter,
    /// by `reason`: bad_request, unauthorized, unknown_agent, rate_limited, capacity
    pub connection_failures: Family<Label, Counter>,
    pub reconnects: Counter,
    /// by `reason`: normal, ping_timeout, replaced, shutdown, error, slow_consumer
    pub disconnects: Family<Label, Counter>,
    /// by `outcome`: accepted, completed, failed, expired, dead, queue_full
    pub commands: Family<Label, Counter>,
    /// by `channel`: ws, http
    pub delivery_attempts: Family<Label, Counter>,
    /// by `result`: completed, failed, progress, duplicate, unknown
    pub acks: Family<Label, Counter>,
    latency_first_ack: Histogram,
    latency_completed: Histogram,
    /// Running totals for `/api/stats` (the histograms keep theirs private).
    pub first_ack_totals: LatencyTotals,
    pub completed_totals: LatencyTotals,
    pub pings: Counter,
    pub pongs: Counter,
    /// by `code`: the §3 error codes sent to agents.
    pub bad_messages: Family<Label, Counter>,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("edge");
        let metrics = Metrics {
            connections_active: Gauge::default(),
            connections_total: Counter::default(),
            connection_failures: Family::default(),
            reconnects: Counter::default(),
            disconnects: Family::default(),
            commands: Family::default(),
            delivery_attempts: Family::default(),
            acks: Family::default(),
            latency_first_ack: latency_buckets(),
            latency_completed: latency_buckets(),
            first_ack_totals: LatencyTotals::default(),
            completed_totals: LatencyTotals::default(),
            pings: Counter::default(),
            pongs: Counter::default(),
            bad_messages: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_active",
            "Open agent sockets",
            metrics.connections_active.clone(),
        );
        registry.register(
            "connections",
            "Agent sockets opened",
            metrics.connections_total.clone(),
        );
        registry.register(
            "connection_failures",
            "Refused upgrades by reason",
            metrics.connection_failures.clone(),
        );
        registry.register(
            "reconnects",
            "Connections of agents that had connected before",
            metrics.reconnects.clone(),
        );
        registry.register(
            "disconnects",
            "Closed agent sockets by reason",
            metrics.disconnects.clone(),
        );
        registry.register("commands", "Commands by outcome", metrics.commands.clone());
        registry.register(
            "delivery_attempts",
            "Command pushes by channel",
            metrics.delivery_attempts.clone(),
        );
        registry.register("acks", "Acks by result", metrics.acks.clone());
        registry.register(
            "command_first_ack_seconds",
            "Time from accepting a command to its first ack",
            metrics.latency_first_ack.clone(),
        );
        registry.register(
            "command_completed_seconds",
            "Time from accepting a command to its completion",
            metrics.latency_completed.clone(),
        );
        registry.register("pings", "Pings received", metrics.pings.clone());
        registry.register("pongs", "Pongs sent", metrics.pongs.clone());
        registry.register(
            "bad_messages",
            "Bad input answered with an error, by code",
            metrics.bad_messages.clone(),
        );
        // Every documented label value from the start, at 0: a family with
        // no series is left out of the page, so a fresh server would show
        // no commands, acks or failures at all, and `rate()` over a series
        // that appears mid-way misses its first increments.
        let known: [(&Family<Label, Counter>, &str, &[&str]); 5] = [
            (&metrics.connection_failures, "reason", &CONNECTION_FAILURES),
            (&metrics.disconnects, "reason", &DISCONNECTS),
            (&metrics.commands, "outcome", &OUTCOMES),
            (&metrics.delivery_attempts, "channel", &["ws", "http"]),
            (&metrics.acks, "result", &ACK_RESULTS),
        ];
        for (family, key, values) in known {
            for value in values {
                drop(family.get_or_create(&[(key, value)]));
            }
        }
        Metrics {
            registry,
            ..metrics
        }
    }
}

const CONNECTION_FAILURES: [&str; 5] = [
    "bad_request",
    "unauthorized",
    "unknown_agent",
    "rate_limited",
    "capacity",
];
const DISCONNECTS: [&str; 6] = [
    "normal",
    "ping_timeout",
    "replaced",
    "shutdown",
    "error",
    "slow_consumer",
];
const OUTCOMES: [&str; 6] = [
    "accepted",
    "completed",
    "failed",
    "expired",
    "dead",
    "queue_full",
];
const ACK_RESULTS: [&str; 5] = ["completed", "failed", "progress", "duplicate", "unknown"];

impl Metrics {
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// Accepted → first ack.
    pub fn observe_first_ack(&self, seconds: f64) {
        self.latency_first_ack.observe(seconds);
        self.first_ack_totals.add(seconds);
    }

    /// Accepted → completed.
    pub fn observe_completed(&self, seconds: f64) {
        self.latency_completed.observe(seconds);
        self.completed_totals.add(seconds);
    }

    pub fn count(family: &Family<Label, Counter>, key: &'static str, value: &'static str) {
        family.get_or_create(&[(key, value)]).inc();
    }
}

/// Count and sum of observed latencies, in microseconds.
#[derive(Default)]
pub struct LatencyTotals {
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl LatencyTotals {
    fn add(&self, seconds: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// (count, mean in seconds)
    pub fn mean(&self) -> (u64, f64) {
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (count, if count == 0 { 0.0 } else { sum / count as f64 })
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn a_fresh_page_has_every_family_at_zero() {
        let page = Metrics::default().render();
        for series in [
            "edge_connection_failures_total{reason=\"unauthorized\"} 0",
            "edge_disconnects_total{reason=\"ping_timeout\"} 0",
            "edge_commands_total{outcome=\"completed\"} 0",
            "edge_delivery_attempts_total{channel=\"http\"} 0",
            "edge_acks_total{result=\"duplicate\"} 0",
        ] {
            assert!(
                page.lines().any(|line| line == series),
                "{series} in\n{page}"
            );
        }
    }
}

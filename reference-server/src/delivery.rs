//! §5 command delivery: accepting a command, applying acks, and the sweeper
//! that expires (WS-DLV-7) and buries (WS-DLV-3) commands.
//!
//! The store is the truth; sessions only push what the store says is theirs.
//! Redelivery on a live socket is timed by the session (`session.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::registry::SessionMsg;
use crate::state::AppState;
use crate::store::{
    AckKind, AckOutcome, Channel, CommandRow, ConnId, InsertOutcome, NewCommand, Status,
    StoreResult,
};
use crate::wire::now_millis;

/// How often the sweeper looks for expired and dead commands; well inside
/// the 1 s tolerance of WS-DLV-8.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

impl AppState {
    /// WS-DLV-1: stores the command (durably, before the caller answers),
    /// then pushes it if the agent is connected, here or on another instance.
    pub async fn submit(&self, command: NewCommand) -> StoreResult<InsertOutcome> {
        let target = self.registry.get(&command.agent_id);
        let pushed_to = target.as_ref().map(|t| t.conn);
        let outcome = self.store.insert_command(command, pushed_to).await?;
        match &outcome {
            InsertOutcome::Created(row) => {
                Metrics::count(&self.metrics.commands, "outcome", "accepted");
                if let Some(target) = &target {
                    target.send(SessionMsg::Push(Box::new(row.clone())));
                }
                self.route(row, pushed_to);
            }
            // A repeat of a command still queued: its first submit may have
            // stopped (a crash) between storing and routing it.
            InsertOutcome::Existing(row) if row.status == Status::Queued => {
                self.route(row, None);
            }
            InsertOutcome::QueueFull => {
                Metrics::count(&self.metrics.commands, "outcome", "queue_full");
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Hands a stored command to whichever session holds the agent now,
    /// unless it was pushed to `pushed_to` already. Looked up after the
    /// command was stored: the agent may have (re)connected meanwhile, here
    /// or on another instance, after its new session had already claimed its
    /// pending commands. A session given the command as stored pushes it; any
    /// other claims it first (`Claim::One`), so a second push to one
    /// connection is a no-op.
    pub fn route(&self, row: &CommandRow, pushed_to: Option<ConnId>) {
        if let Some(current) = self.registry.get(&row.agent_id) {
            if Some(current.conn) == pushed_to {
                // Pushed already.
            } else if row.status == Status::Sent && row.conn_id == Some(current.conn) {
                // The store found this socket held (`Store::insert_command`)
                // before this instance's registry showed it.
                current.send(SessionMsg::Push(Box::new(row.clone())));
            } else {
                current.send(SessionMsg::Deliver(row.id.clone()));
            }
        }
        // WS-DLV-1 across instances: the instance holding it is told.
        self.cluster.announce(row);
    }

    /// WS-ACK-2, WS-ACK-3: applies an ack from `agent_id`, over a socket or
    /// HTTP; `pushed`: over the socket that got the command, which has not
    /// acked it before ([`crate::store::Store::ack_pushed`]).
    pub async fn acknowledge(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: AckKind,
        pushed: bool,
    ) -> StoreResult<AckOutcome> {
        let now = now_millis();
        let outcome = match pushed {
            true => self
                .store
                .ack_pushed(agent_id, command_id, ack.clone(), now),
            false => self.store.ack(agent_id, command_id, ack.clone(), now),
        }
        .await?;
        let result = match &outcome {
            AckOutcome::Unknown => "unknown",
            AckOutcome::Unchanged(_) => "duplicate",
            AckOutcome::Updated { before, command } => {
                let seconds = |since: i64| (now - since).max(0) as f64 / 1000.0;
                if !matches!(before, Status::Received | Status::Executing) {
                    self.metrics.observe_first_ack(seconds(command.created_at));
                }
                match ack {
                    AckKind::Completed => {
                        self.metrics.observe_completed(seconds(command.created_at));
                        Metrics::count(&self.metrics.commands, "outcome", "completed");
                        "completed"
                    }
                    AckKind::Failed { .. } => {
                        Metrics::count(&self.metrics.commands, "outcome", "failed");
                        "failed"
                    }
                    AckKind::Received | AckKind::Executing => "progress",
                }
            }
        };
        Metrics::count(&self.metrics.acks, "result", result);
        Ok(outcome)
    }

    /// Records that commands went out, for metrics and the spec's log line.
    pub fn log_sent(&self, agent_id: &str, command_id: &str, command_type: &str, channel: Channel) {
        Metrics::count(&self.metrics.delivery_attempts, "channel", channel.as_str());
        info!("Sent command {command_id} to {agent_id} (type: {command_type})");
    }
}

/// Runs until shutdown: expires commands past their TTL, marks commands
/// with no attempts left as dead, and prunes rate-limiter windows.
pub async fn run_sweeper(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = Instant::now();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.store.sweep(now_millis()).await {
            Ok(swept) => {
                for change in swept {
                    let outcome = if change.status == Status::Dead {
                        "dead"
                    } else {
                        "expired"
                    };
                    Metrics::count(&state.metrics.commands, "outcome", outcome);
                    info!(command_id = %change.command_id, agent_id = %change.agent_id, "command {outcome}");
                }
            }
            Err(e) => warn!("sweep failed: {e}"),
        }
        if last_prune.elapsed() >= Duration::from_secs(60) {
            let now = Instant::now();
            state.connect_limiter.prune(now);
            state.reject_limiter.prune(now);
            state.message_limiter.prune(now);
            state.ping_limiter.prune(now);
            last_prune = now;
        }
    }
}

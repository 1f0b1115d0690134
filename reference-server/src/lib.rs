//! edge-server: the reference backend for the edge-agent WebSocket protocol
//! (`shared/PROTOCOL.md`). Durable at-least-once command delivery on SQLite,
//! or on PostgreSQL for several instances behind a load balancer.
//!
//! Embed it with [`start`] on a listener (tests bind `127.0.0.1:0`), or run
//! the `edge-server` binary. Modules, one concern each:
//! `config` (flags/env), `auth` (WS-AUTH), `wire` (§3 messages), `registry`
//! (WS-CONN-1/2), `session` (one socket), `delivery` (§5), `store` (durable
//! state: SQLite, or PostgreSQL for several instances), `cluster` (which
//! instance holds a socket, and reaching it), `http` (routes and control API), `ratelimit` (§7), `metrics` (§9),
//! `raw_json` (JSON relayed as posted, WS-CMD-2),
//! `server` (accept loop, TLS, shutdown).

pub mod auth;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod raw_json;
pub mod registry;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use server::{bind, start, RunningServer};

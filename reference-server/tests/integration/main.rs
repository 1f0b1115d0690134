//! Integration tests of edge-server: the real server on an ephemeral loopback
//! port with a temporary SQLite file, driven over real sockets. Test names
//! start with the PROTOCOL.md rule id they check.

mod support;

mod as_posted;
mod auth;
mod cluster;
mod connection;
mod control_api;
mod crash;
mod delivery;
mod fuzz;
mod http_fallback;
mod messages;
mod outage;
mod rate_limits;
mod robustness;

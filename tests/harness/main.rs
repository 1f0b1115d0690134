//! Tests of edge-harness: the suite against the real edge-server, against
//! deliberately broken backends (a fault-injecting proxy), the CLI's exit
//! codes and errors, and snapshots of the three report formats.

mod cli;
mod faults;
mod load;
mod proxy;
mod snapshots;

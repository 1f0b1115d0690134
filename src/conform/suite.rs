//! The conformance suite, built into the binary so `edge-harness conform`
//! works from anywhere; `--scenarios DIR` reads another copy instead. To add
//! a file: put it in `scenarios/conformance/` and list it here.

use std::path::Path;

use crate::scenario::{self, Check, ScenarioError};

const FILES: &[(&str, &str)] = &[
    (
        "scenarios/conformance/auth.toml",
        include_str!("../../scenarios/conformance/auth.toml"),
    ),
    (
        "scenarios/conformance/messages.toml",
        include_str!("../../scenarios/conformance/messages.toml"),
    ),
    (
        "scenarios/conformance/bad_input.toml",
        include_str!("../../scenarios/conformance/bad_input.toml"),
    ),
    (
        "scenarios/conformance/connection.toml",
        include_str!("../../scenarios/conformance/connection.toml"),
    ),
    (
        "scenarios/conformance/delivery.toml",
        include_str!("../../scenarios/conformance/delivery.toml"),
    ),
    (
        "scenarios/conformance/http.toml",
        include_str!("../../scenarios/conformance/http.toml"),
    ),
    (
        "scenarios/conformance/rate_limits.toml",
        include_str!("../../scenarios/conformance/rate_limits.toml"),
    ),
    (
        "scenarios/conformance/control_api.toml",
        include_str!("../../scenarios/conformance/control_api.toml"),
    ),
    (
        "scenarios/conformance/observability.toml",
        include_str!("../../scenarios/conformance/observability.toml"),
    ),
];

pub fn builtin() -> Result<Vec<Check>, ScenarioError> {
    let mut checks = Vec::new();
    for (path, text) in FILES {
        checks.extend(scenario::parse(Path::new(path), text)?);
    }
    Ok(checks)
}

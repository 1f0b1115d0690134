//! JSON for machines: the whole run, with counts.

use serde_json::{json, Value};

use super::RunReport;

pub fn render(report: &RunReport) -> String {
    let value: Value = json!({
        "schema": "edge-harness/conform/v1",
        "passed": report.passed(),
        "counts": report.counts(),
        "report": report,
    });
    serde_json::to_string_pretty(&value).expect("a report serializes")
}

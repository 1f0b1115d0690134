//! The `metrics` step (WS-OBS-1): the page parses as the Prometheus text
//! format and carries a family for each thing §9 names. PROTOCOL.md names
//! what must be measured, not the metric names, so each is matched by name
//! patterns (`*connection*active*|*active*connection*`).

use super::{fail, Ctx, StepResult};
use crate::conform::glob;
use crate::scenario::prometheus;

impl Ctx<'_> {
    pub(super) async fn metrics(
        &mut self,
        path: &str,
        token: &str,
        families: &[(String, String)],
    ) -> StepResult {
        let url = format!("{}{path}", self.target.http_base);
        let authorization = self.authorization(token, "a")?;
        let mut request = self.target.http.get(&url);
        if let Some(auth) = &authorization {
            request = request.header("authorization", auth);
        }
        let response = request
            .send()
            .await
            .or_else(|e| fail(format!("GET {path} answers"), e.to_string()))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response.text().await.unwrap_or_default();
        self.note(format!(
            "http GET {path} → {status} {content_type}, {} lines",
            text.lines().count()
        ));
        if status != 200 {
            return fail(format!("GET {path}: HTTP 200"), format!("HTTP {status}"));
        }
        if !(content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"))
        {
            return fail(
                "Content-Type text/plain (Prometheus text format)",
                format!("Content-Type {content_type:?}"),
            );
        }
        let names = prometheus::families(&text)
            .or_else(|e| fail("the Prometheus text exposition format", e))?;
        let missing: Vec<String> = families
            .iter()
            .filter(|(_, patterns)| {
                !names
                    .iter()
                    .any(|name| patterns.split('|').any(|p| glob(p.trim(), name)))
            })
            .map(|(what, patterns)| format!("{what} ({patterns})"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = names.iter().map(String::as_str).take(40).collect();
        fail(
            format!("a metric family for: {}", missing.join("; ")),
            format!("none; the families are: {}", shown.join(", ")),
        )
    }
}

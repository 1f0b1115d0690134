//! The `http` and `api` steps: one request (or a poll until it matches).

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{fail, Ctx, StepResult};
use crate::scenario::matcher::{lookup, mismatch, substitute, substitute_fields, substitute_str};
use crate::scenario::raw::raw_mismatch;
use crate::scenario::{retry_after, Body, HttpCall};

impl Ctx<'_> {
    pub(super) async fn http(&mut self, call: &HttpCall, admin: bool) -> StepResult {
        let agent = call.agent.clone().unwrap_or_else(|| "a".to_string());
        let agent_id = self.agent_id(&agent);
        self.vars.insert("agent".into(), agent_id);
        let path = substitute_str(&call.path, &self.vars);
        let url = format!("{}{path}", self.target.http_base);
        let authorization = self.authorization(&call.token, &agent)?;
        let body = call.body.as_ref().map(|body| match (body, call.pad) {
            (Body::Json(value), Some(bytes)) => {
                let mut value = substitute(value, &self.vars);
                value["padding"] = Value::String("x".repeat(bytes));
                value.to_string()
            }
            _ => body.text(&self.vars),
        });
        let raw: Vec<(String, String)> = call
            .raw
            .iter()
            .map(|(path, text)| (path.clone(), substitute_str(text, &self.vars)))
            .collect();
        let method = reqwest::Method::from_bytes(call.method.as_bytes())
            .or_else(|e| fail("an HTTP method", e.to_string()))?;
        let fields = substitute_fields(&call.fields, &self.vars);
        let patience = call
            .eventually
            .as_deref()
            .map(|e| self.eval(e))
            .transpose()?
            .map(|d| self.timings().scaled(d));
        let deadline = Instant::now() + patience.unwrap_or_default();
        let kind = if admin { "api" } else { "http" };
        // In the order reqwest was given them before: credentials, the
        // step's own headers, then the body's type.
        let mut headers: Vec<(String, String)> = authorization
            .iter()
            .map(|auth| ("authorization".to_string(), auth.clone()))
            .collect();
        for (name, value) in &call.headers {
            headers.push((name.clone(), substitute_str(value, &self.vars)));
        }
        if body.is_some() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        loop {
            let answered = if call.pad.is_some() {
                let body = body.as_deref().unwrap_or_default().as_bytes();
                let tls = self.target.tls.clone();
                let within = self.timings().scaled(Duration::from_secs(30));
                crate::early_answer::send(&call.method, &url, &headers, body, tls, within)
                    .await
                    .map(|a| (a.status, a.retry_after, a.body))
            } else {
                let mut request = self.target.http.request(method.clone(), &url);
                for (name, value) in &headers {
                    request = request.header(name, value);
                }
                if let Some(body) = &body {
                    request = request.body(body.clone());
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let retry_after = response
                            .headers()
                            .get("retry-after")
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                        Ok((
                            status,
                            retry_after,
                            response.text().await.unwrap_or_default(),
                        ))
                    }
                    Err(e) => Err(crate::tls::describe(&e)),
                }
            };
            let (status, retry_after, text) =
                answered.or_else(|e| fail(format!("{} {path} answers", call.method), e))?;
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
            let problem = if !call.statuses.contains(&status) {
                Some((
                    format!("HTTP {:?}", call.statuses),
                    format!("HTTP {status} {value}"),
                ))
            } else if let Some(wrong) = call
                .retry_after
                .then(|| retry_after::problem(retry_after.as_deref()))
                .flatten()
            {
                Some((
                    "a Retry-After of whole seconds or an HTTP-date, within the minute".to_string(),
                    format!("HTTP {status}: {wrong}"),
                ))
            } else if let Some((p, e, a)) = mismatch(&value, &fields) {
                Some((format!("{p} = {e}"), format!("{p} = {a} in {value}")))
            } else if let Some(leak) = call.no_trace.then(|| self.leak(&text)).flatten() {
                Some((
                    "an answer with no stack trace and no secret".to_string(),
                    leak,
                ))
            } else {
                raw_mismatch(&text, &raw).map(|(p, e, a)| {
                    (
                        format!("{p} as posted (same members, order and values): {e}"),
                        format!("{p} = {a}"),
                    )
                })
            };
            match problem {
                Some(problem) if Instant::now() < deadline => {
                    let _ = problem;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(problem) => {
                    self.note(format!("{kind} {} {path} → {status} {value}", call.method));
                    return Err(problem);
                }
                None => {
                    self.note(format!("{kind} {} {path} → {status} {value}", call.method));
                    for (var, p) in &call.save {
                        let v = lookup(&value, p)
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
                        self.vars.insert(var.clone(), v.unwrap_or_default());
                    }
                    return Ok(());
                }
            }
        }
    }
}

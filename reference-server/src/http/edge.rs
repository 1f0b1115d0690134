//! The agent's endpoints: the WebSocket upgrade (§2), `/edge/sync`,
//! `/edge/command/ack` and `/edge/register` (§6).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{header_str, read_json, ApiError, RemoteAddr};
use crate::auth::{self, AuthError, Identity};
use crate::metrics::Metrics;
use crate::ratelimit::Verdict;
use crate::raw_json::RawJson;
use crate::session;
use crate::state::AppState;
use crate::store::{AckOutcome, Channel, Claim};
use crate::wire::{self, now_millis};

/// §3: frames (and so messages) are at most 64 KiB.
const MAX_FRAME: usize = 64 * 1024;
/// Read buffer per socket. The library default reserves 128 KiB per socket;
/// agents send small messages, so 4 KiB keeps idle sockets cheap.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes a socket may hold unsent before writes fail (the agent is stalled).
const MAX_WRITE_BUFFER: usize = 1024 * 1024;

const AGENT_ID_HEADER: &str = "x-edge-agent-id";

fn now_s() -> i64 {
    now_millis() / 1000
}

fn unauthorized(e: AuthError) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
}

fn unknown_agent() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "unknown_agent",
        "this edge_agent_id is not registered",
    )
}

/// GET /edge/ws?edge_agent_id=ID (upgrade).
pub async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    Extension(RemoteAddr(remote)): Extension<RemoteAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // WS-RATE-1: past either limit, 429 before any other check: an address
    // past its budget of refusals, or an agent past its connection attempts
    // (whatever the token; the agent's attempts are only peeked at here and
    // counted after authentication below, so strangers cannot lock it out).
    let now = Instant::now();
    let limited = match state.reject_limiter.peek(&remote.ip(), now) {
        Verdict::Allowed => match agent_id_param(query.as_deref()) {
            Some(named) => state.connect_limiter.peek(&named, now),
            None => Verdict::Allowed,
        },
        limited => limited,
    };
    if let Verdict::Limited { retry_after } = limited {
        Metrics::count(&state.metrics.connection_failures, "reason", "rate_limited");
        return ApiError::rate_limited(retry_after).into_response();
    }
    let refused = |state: &AppState, error: ApiError, reason: &'static str| {
        state.reject_limiter.hit(&remote.ip(), Instant::now());
        Metrics::count(&state.metrics.connection_failures, "reason", reason);
        error.into_response()
    };
    let agent_id = match authorize_upgrade(&state, query.as_deref(), &headers).await {
        Ok(agent_id) => agent_id,
        Err(error) => {
            let reason = match error.status {
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::FORBIDDEN => "unknown_agent",
                StatusCode::INTERNAL_SERVER_ERROR => return error.into_response(),
                _ => "bad_request",
            };
            return refused(&state, error, reason);
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let error = ApiError::bad_request("not_websocket", rejection.body_text());
            return refused(&state, error, "bad_request");
        }
    };
    // WS-RATE-1: connection attempts per agent, counted after auth.
    if let Verdict::Limited { retry_after } = state.connect_limiter.hit(&agent_id, Instant::now()) {
        Metrics::count(&state.metrics.connection_failures, "reason", "rate_limited");
        return ApiError::rate_limited(retry_after).into_response();
    }
    let tracker = state.sessions.clone();
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| {
            tracker.track_future(session::run(state, socket, agent_id, remote))
        })
}

/// The `edge_agent_id` query parameter, unless it is missing or empty (WS-AUTH-3).
fn agent_id_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(key, _)| key == "edge_agent_id")
        .map(|(_, value)| value.into_owned())
        .filter(|id| !id.is_empty())
}

/// WS-AUTH-1, WS-AUTH-3, WS-AUTH-4, WS-AUTH-5, in that order; the agent id on success.
async fn authorize_upgrade(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let agent_id = agent_id_param(query).ok_or_else(|| {
        ApiError::bad_request(
            "missing_agent_id",
            "the edge_agent_id query parameter is required",
        )
    })?;
    if !auth::valid_agent_id(&agent_id) {
        return Err(ApiError::bad_request(
            "invalid_agent_id",
            "edge_agent_id must match [A-Za-z0-9_.-]{1,128}",
        ));
    }
    if header_str(headers, AGENT_ID_HEADER).is_some_and(|h| h != agent_id) {
        return Err(ApiError::bad_request(
            "agent_id_mismatch",
            "X-Edge-Agent-Id differs from edge_agent_id",
        ));
    }
    let token =
        auth::bearer(header_str(headers, header::AUTHORIZATION.as_str())).map_err(unauthorized)?;
    state
        .auth
        .authenticate(token, Some(&agent_id), now_s())
        .map_err(unauthorized)?;
    if state.store.agent(&agent_id).await?.is_none() {
        return Err(unknown_agent());
    }
    Ok(agent_id)
}

/// The agent a request speaks for: the token's agent, or with the shared
/// secret the one it names. A named agent must agree with the token.
fn identify(
    state: &AppState,
    headers: &HeaderMap,
    named: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let token =
        auth::bearer(header_str(headers, header::AUTHORIZATION.as_str())).map_err(unauthorized)?;
    let header_id = header_str(headers, AGENT_ID_HEADER);
    if let (Some(h), Some(n)) = (header_id, named) {
        if h != n {
            return Err(ApiError::bad_request(
                "agent_id_mismatch",
                "X-Edge-Agent-Id differs from edge_agent_id",
            ));
        }
    }
    let named = named.or(header_id);
    match state
        .auth
        .authenticate(token, named, now_s())
        .map_err(unauthorized)?
    {
        Identity::Agent(id) => Ok(Some(id)),
        Identity::SharedSecret => Ok(named.map(str::to_string)),
    }
}

#[derive(Deserialize)]
struct SyncRequest {
    edge_agent_id: Option<String>,
    #[serde(default)]
    pending_events: Vec<Value>,
    /// WS-STATUS-1, stored as sent (WS-CMD-2).
    status: Option<RawJson>,
}

/// WS-HTTP-1's answer. Serialized by serde_json (`axum::Json`), so each
/// command's `parameters` goes out as posted (WS-CMD-2).
#[derive(Serialize)]
struct SyncResponse<'a> {
    commands: Vec<wire::CommandData<'a>>,
    ack_events: Vec<String>,
    config_updates: Value,
}

/// WS-HTTP-1, WS-DLV-5: POST /edge/sync.
pub async fn sync(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: SyncRequest = read_json(body).await?;
    let agent_id =
        identify(&state, &headers, request.edge_agent_id.as_deref())?.ok_or_else(|| {
            ApiError::bad_request("missing_agent_id", "name the agent in edge_agent_id")
        })?;
    if state.store.agent(&agent_id).await?.is_none() {
        return Err(unknown_agent());
    }
    let now = now_millis();
    let mut acked = Vec::new();
    for event in &request.pending_events {
        let Some(event_id) = event.get("event_id").and_then(Value::as_str) else {
            continue;
        };
        let event_type = event
            .get("event_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let details = event.get("details").unwrap_or(&Value::Null);
        state
            .store
            .record_event(&agent_id, event_id, event_type, details, now)
            .await?;
        acked.push(event_id.to_string());
    }
    if let Some(status) = request.status.as_ref().filter(|s| s.is_object()) {
        state.store.set_agent_status(&agent_id, status, now).await?;
    }
    let commands = state
        .store
        .claim(
            Claim::Http {
                agent_id: agent_id.clone(),
            },
            now,
        )
        .await?;
    let data = commands
        .iter()
        .map(|row| {
            state.log_sent(&agent_id, &row.id, &row.command_type, Channel::Http);
            wire::command_data(row)
        })
        .collect();
    let sync_interval = state.config.sync_interval.as_secs();
    Ok(axum::Json(SyncResponse {
        commands: data,
        ack_events: acked,
        config_updates: json!({ "sync_interval": sync_interval }),
    })
    .into_response())
}

/// WS-HTTP-2: POST /edge/command/ack (and /edge/ack_command).
pub async fn http_ack(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let data: Value = read_json(body).await?;
    let agent_id = identify(&state, &headers, None)?.ok_or_else(|| {
        ApiError::bad_request(
            "missing_agent_id",
            "with the shared secret, send X-Edge-Agent-Id",
        )
    })?;
    let ack = wire::parse_ack(&data)
        .map_err(|e| ApiError::bad_request("invalid_message", e.to_string()))?;
    match state
        .acknowledge(&agent_id, &ack.command_id, ack.kind, false)
        .await?
    {
        AckOutcome::Unknown => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_command",
            "no such command for this agent",
        )),
        _ => Ok(axum::Json(json!({ "acknowledged": true })).into_response()),
    }
}

#[derive(Deserialize)]
struct RegisterRequest {
    user_phone: Option<String>,
    registration_token: Option<String>,
}

/// WS-HTTP-3: POST /edge/register.
pub async fn register(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(expected) = state.config.registration_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "registration_disabled",
            "this server does not take registrations",
        ));
    };
    let request: RegisterRequest = read_json(body).await?;
    let given = request.registration_token.unwrap_or_default();
    if !auth::secrets_equal(&given, expected) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong registration_token",
        ));
    }
    let phone = request.user_phone.unwrap_or_default();
    if !auth::valid_phone(&phone) {
        return Err(ApiError::bad_request(
            "invalid_phone",
            "user_phone must match +?[0-9]{3,20}",
        ));
    }
    let agent_id = auth::agent_id_for_phone(&phone);
    state
        .store
        .upsert_agent(&agent_id, Some(&phone), now_millis())
        .await?;
    let auth_token = state.auth.mint(&agent_id, &phone, now_s());
    Ok(axum::Json(json!({ "edge_agent_id": agent_id, "auth_token": auth_token })).into_response())
}

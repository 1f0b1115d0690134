//! §8 control API: how the backend's own services push commands and read
//! outcomes. Every route takes only `ADMIN_TOKEN` (WS-API-1).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{header_str, read_json, ApiError};
use crate::auth;
use crate::cluster::{Inbound, RemoteSocket};
use crate::raw_json::RawJson;
use crate::registry::SessionMsg;
use crate::state::AppState;
use crate::store::{
    AgentRow, CommandRow, InsertOutcome, NewCommand, Priority, RetryOutcome, Status,
};
use crate::wire::{iso8601, now_millis};

const HISTORY_LIMIT: u32 = 50;
const LIST_LIMIT_DEFAULT: u32 = 1000;
const LIST_LIMIT_MAX: u32 = 10_000;

pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/agents", get(list_agents))
        .route("/agents/{id}", get(get_agent).put(provision_agent))
        .route(
            "/agents/{id}/commands",
            post(post_command).get(list_commands),
        )
        .route("/agents/{id}/config", post(push_config))
        .route("/commands/{id}", get(get_command))
        .route("/commands/{id}/retry", post(retry_command))
        .route("/stats", get(stats))
        .layer(middleware::from_fn_with_state(state, require_admin))
}

/// WS-API-1: only `ADMIN_TOKEN` opens the control API.
async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let token = auth::bearer(header_str(
        request.headers(),
        header::AUTHORIZATION.as_str(),
    ));
    match token {
        Ok(token) if auth::secrets_equal(token, &state.config.admin_token) => {
            next.run(request).await
        }
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the control API needs Authorization: Bearer ADMIN_TOKEN",
        )
        .into_response(),
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such {what}"),
    )
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    if auth::valid_agent_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_agent_id",
            "an agent id must match [A-Za-z0-9_.-]{1,128}",
        ))
    }
}

/// An agent as the control API shows it. A struct serialized by serde_json
/// rather than a `Value`, so `last_status` keeps its text (WS-CMD-2).
#[derive(Serialize)]
struct AgentView<'a> {
    edge_agent_id: &'a str,
    connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    connected_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_addr: Option<String>,
    /// Which instance holds the socket (several behind a load balancer).
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_phone: Option<&'a str>,
    pending_commands: u64,
    /// WS-STATUS-1, as the agent sent it (WS-CMD-2).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_status: Option<&'a RawJson>,
    /// WS-CONN-6; only for one agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<Value>>,
}

/// `remote` is the agent's socket on another instance, if it is not
/// connected here.
fn agent_view<'a>(
    state: &AppState,
    agent: &'a AgentRow,
    remote: Option<&RemoteSocket>,
) -> AgentView<'a> {
    let mut view = AgentView {
        edge_agent_id: &agent.id,
        connected: false,
        connected_since: None,
        last_seen: agent.last_seen.map(iso8601),
        remote_addr: None,
        instance: None,
        user_phone: agent.user_phone.as_deref(),
        pending_commands: agent.pending_commands,
        last_status: agent.last_status.as_ref(),
        history: None,
    };
    let socket = match (state.registry.get(&agent.id), remote) {
        (Some(session), _) => Some((
            session.connected_at,
            session.remote_addr,
            state.cluster.instance().to_string(),
        )),
        (None, Some(remote)) => Some((
            remote.connected_at,
            remote.remote_addr.clone(),
            remote.instance.clone(),
        )),
        (None, None) => None,
    };
    if let Some((connected_at, remote_addr, instance)) = socket {
        view.connected = true;
        view.connected_since = Some(iso8601(connected_at));
        view.last_seen = Some(iso8601(now_millis()));
        view.remote_addr = Some(remote_addr);
        view.instance = Some(instance);
    }
    view
}

/// The agent's socket on another instance, unless it is connected here.
async fn remote_socket(state: &AppState, agent_id: &str) -> Result<Option<RemoteSocket>, ApiError> {
    if state.registry.get(agent_id).is_some() {
        return Ok(None);
    }
    Ok(state.cluster.locate(agent_id).await?)
}

/// `GET /api/commands/{id}` shape (WS-API-3). A struct serialized by
/// serde_json rather than a `Value`, so `parameters` keeps its text (WS-CMD-2).
#[derive(Serialize)]
struct CommandView<'a> {
    command_id: &'a str,
    edge_agent_id: &'a str,
    command_type: &'a str,
    parameters: &'a RawJson,
    priority: &'static str,
    status: &'static str,
    attempts: u32,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_via: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn command_view(row: &CommandRow) -> CommandView<'_> {
    CommandView {
        command_id: &row.id,
        edge_agent_id: &row.agent_id,
        command_type: &row.command_type,
        parameters: &row.parameters,
        priority: row.priority.as_str(),
        status: row.status.as_str(),
        attempts: row.attempts,
        created_at: iso8601(row.created_at),
        expires_at: row.expires_at.map(iso8601),
        sent_at: row.sent_at.map(iso8601),
        acked_at: row.acked_at.map(iso8601),
        completed_at: row.completed_at.map(iso8601),
        delivered_via: row.delivered_via.map(|via| via.as_str()),
        error: row.error.as_deref(),
    }
}

#[derive(Deserialize, Default)]
struct ProvisionRequest {
    user_phone: Option<String>,
}

/// PUT /api/agents/{id}: `201` new, `200` existing; with a per-agent token.
async fn provision_agent(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let request: ProvisionRequest = read_json(body).await?;
    if let Some(phone) = &request.user_phone {
        if !auth::valid_phone(phone) {
            return Err(ApiError::bad_request(
                "invalid_phone",
                "user_phone must match +?[0-9]{3,20}",
            ));
        }
    }
    let created = state
        .store
        .upsert_agent(&id, request.user_phone.as_deref(), now_millis())
        .await?;
    let phone = match request.user_phone {
        Some(phone) => phone,
        None => state
            .store
            .agent(&id)
            .await?
            .and_then(|a| a.user_phone)
            .unwrap_or_default(),
    };
    let token = state.auth.mint(&id, &phone, now_millis() / 1000);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({ "edge_agent_id": id, "auth_token": token })),
    )
        .into_response())
}

/// GET /api/agents/{id}, with its connection history (WS-CONN-6).
async fn get_agent(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let agent = state
        .store
        .agent(&id)
        .await?
        .ok_or_else(|| not_found("agent"))?;
    let history = state.store.history(&id, HISTORY_LIMIT).await?;
    let remote = remote_socket(&state, &id).await?;
    let mut view = agent_view(&state, &agent, remote.as_ref());
    view.history = Some(
        history
            .iter()
            .map(|h| {
                json!({
                    "connected_at": iso8601(h.connected_at),
                    "disconnected_at": h.disconnected_at.map(iso8601),
                    "reason": h.reason,
                    "remote_addr": h.remote_addr,
                })
            })
            .collect(),
    );
    Ok(axum::Json(view).into_response())
}

/// GET /api/agents?connected=true|false
async fn list_agents(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let connected = match query.get("connected").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "connected must be true or false",
            ))
        }
    };
    let agents = state.store.agents().await?;
    let remote = state.cluster.remote_sockets().await?;
    let listed: Vec<AgentView> = agents
        .iter()
        .map(|a| agent_view(&state, a, remote.get(&a.id)))
        .filter(|a| connected.is_none_or(|want| a.connected == want))
        .collect();
    Ok(axum::Json(listed).into_response())
}

#[derive(Deserialize)]
struct CommandRequest {
    command_type: Option<String>,
    /// WS-CMD-2: kept as posted.
    #[serde(default)]
    parameters: Option<RawJson>,
    priority: Option<String>,
    command_id: Option<String>,
    ttl_s: Option<u64>,
}

fn valid_command_type(kind: &str) -> bool {
    (1..=64).contains(&kind.len()) && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn valid_command_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

fn new_command_id() -> String {
    format!("cmd_{:032x}", rand::random::<u128>())
}

/// POST /api/agents/{id}/commands (WS-DLV-1, WS-API-2).
async fn post_command(
    State(state): State<Arc<AppState>>,
    Path(agent_id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let request: CommandRequest = read_json(body).await?;
    let command_type = request
        .command_type
        .filter(|t| valid_command_type(t))
        .ok_or_else(|| {
            ApiError::bad_request("invalid_body", "command_type must match [a-z_]{1,64}")
        })?;
    let priority = match request.priority.as_deref() {
        None => Priority::Normal,
        Some(p) => Priority::parse(p).ok_or_else(|| {
            ApiError::bad_request("invalid_body", "priority must be high, normal or low")
        })?,
    };
    let id = match request.command_id {
        Some(id) if valid_command_id(&id) => id,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "command_id must match [A-Za-z0-9_.:-]{1,128}",
            ))
        }
        None => new_command_id(),
    };
    let ttl_ms = match request.ttl_s {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "ttl_s must be at least 1",
            ))
        }
        Some(ttl) => Some(i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX)),
        None => None,
    };
    let now = now_millis();
    let command = NewCommand {
        id,
        agent_id,
        command_type,
        parameters: request.parameters.unwrap_or_else(RawJson::empty_object),
        priority,
        created_at: now,
        expires_at: ttl_ms.map(|ttl| now.saturating_add(ttl)),
    };
    match state.submit(command).await? {
        InsertOutcome::Created(row) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({ "command_id": row.id, "status": row.status.as_str() })),
        )
            .into_response()),
        InsertOutcome::Existing(row) => Ok(axum::Json(command_view(&row)).into_response()),
        InsertOutcome::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "command_id_conflict",
            "this command_id belongs to another agent",
        )),
        InsertOutcome::QueueFull => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!(
                "the agent has {} pending commands; try again when it catches up",
                state.config.max_pending
            ),
        )),
        InsertOutcome::UnknownAgent => Err(not_found("agent")),
    }
}

/// GET /api/agents/{id}/commands?status=S&limit=N (WS-API-4).
async fn list_commands(
    State(state): State<Arc<AppState>>,
    Path(agent_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("unknown status `{s}`"))
        })?),
    };
    let limit = match query.get("limit") {
        None => LIST_LIMIT_DEFAULT,
        Some(n) => n
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=LIST_LIMIT_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("limit must be 1..={LIST_LIMIT_MAX}"),
                )
            })?,
    };
    if state.store.agent(&agent_id).await?.is_none() {
        return Err(not_found("agent"));
    }
    let rows = state.store.commands(&agent_id, status, limit).await?;
    Ok(axum::Json(rows.iter().map(command_view).collect::<Vec<_>>()).into_response())
}

/// GET /api/commands/{id} (WS-API-3).
async fn get_command(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = state
        .store
        .command(&id)
        .await?
        .ok_or_else(|| not_found("command"))?;
    Ok(axum::Json(command_view(&row)).into_response())
}

/// POST /api/commands/{id}/retry (WS-API-4).
async fn retry_command(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.store.retry(&id, now_millis()).await? {
        RetryOutcome::Requeued(row) => {
            // Pushed at once if the agent is connected, here or elsewhere.
            state.route(&row, None);
            Ok((StatusCode::ACCEPTED, axum::Json(command_view(&row))).into_response())
        }
        RetryOutcome::NotRetryable(row) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_retryable",
            format!(
                "only dead or expired commands can be retried; this one is {}",
                row.status.as_str()
            ),
        )),
        RetryOutcome::Unknown => Err(not_found("command")),
    }
}

/// POST /api/agents/{id}/config: WS-CFG-1.
async fn push_config(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    // WS-CMD-2: relayed as posted, here and through another instance.
    let config: RawJson = read_json(body).await?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "a config update is a JSON object",
        ));
    }
    if state.store.agent(&id).await?.is_none() {
        return Err(not_found("agent"));
    }
    let delivered = match state.registry.get(&id) {
        Some(session) => session.send(SessionMsg::Config(config)),
        // WS-CFG-1 across instances: handed to the instance holding the socket.
        None => match remote_socket(&state, &id).await? {
            Some(remote) => {
                let message = Inbound::Config {
                    agent: id.clone(),
                    config,
                };
                match state.cluster.forward(&remote, &message).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(agent_id = %id, "config not forwarded: {e}");
                        false
                    }
                }
            }
            None => false,
        },
    };
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "delivered": delivered })),
    )
        .into_response())
}

/// GET /api/stats
async fn stats(
    State(state): State<Arc<AppState>>,
    _headers: HeaderMap,
) -> Result<Response, ApiError> {
    let counts = state.store.status_counts().await?;
    let mut by_status = serde_json::Map::new();
    for status in Status::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        by_status.insert(status.as_str().into(), json!(n));
    }
    let m = &state.metrics;
    let latency = |totals: &crate::metrics::LatencyTotals| {
        let (count, mean) = totals.mean();
        json!({ "count": count, "mean_seconds": mean })
    };
    Ok(axum::Json(json!({
        "connections": {
            "active": state.registry.len(),
            "total": m.connections_total.get(),
            "reconnects": m.reconnects.get(),
        },
        "commands": by_status,
        "acks": {
            "completed": m.acks.get_or_create(&[("result", "completed")]).get(),
            "failed": m.acks.get_or_create(&[("result", "failed")]).get(),
            "progress": m.acks.get_or_create(&[("result", "progress")]).get(),
            "duplicate": m.acks.get_or_create(&[("result", "duplicate")]).get(),
            "unknown": m.acks.get_or_create(&[("result", "unknown")]).get(),
        },
        "latency": {
            "accepted_to_first_ack": latency(&m.first_ack_totals),
            "accepted_to_completed": latency(&m.completed_totals),
        },
    }))
    .into_response())
}

//! HTTP routes (PROTOCOL.md §1): the agent endpoints (`edge.rs`) and the
//! control API (`api.rs`), with errors as JSON everywhere (WS-HTTP-4).

mod api;
mod edge;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::state::AppState;
use crate::store::StoreError;

/// Largest request body accepted (as the 64 KiB frame limit of §3).
pub const MAX_BODY: usize = 64 * 1024;
/// What `Retry-After` says while the database cannot be reached.
const STORAGE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The remote address of the TCP connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// An HTTP error: `{"error", "message"}` with a status (WS-HTTP-4).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(error: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error, message)
    }

    pub fn rate_limited(retry_after: Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; see Retry-After",
            )
        }
    }

    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server could not complete the request",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A failover or restart of the database: the client may send
            // the same request again (a command with its `command_id` is
            // safe to repeat, WS-API-2, even if it was stored after all).
            StoreError::Unavailable(_) => {
                tracing::warn!("{e}");
                ApiError {
                    retry_after: Some(STORAGE_RETRY_AFTER),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "storage_unavailable",
                        "the database cannot be reached now; retry shortly",
                    )
                }
            }
            e => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({ "error": self.error, "message": self.message }));
        let mut response = (self.status, body).into_response();
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: never tell a client to come back early.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes; an empty body reads as `{}`.
pub async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are at most {MAX_BODY} bytes"),
        )
    })?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("request body: {e}")))
}

/// The value of a header, if it is present and valid text.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/edge/ws", get(edge::ws_upgrade))
        .route("/edge/sync", post(edge::sync))
        .route("/edge/command/ack", post(edge::http_ack))
        .route("/edge/ack_command", post(edge::http_ack))
        .route("/edge/register", post(edge::register))
        .nest("/api", api::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_shutting_down,
        ))
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let version = env!("CARGO_PKG_VERSION");
    if state.is_shutting_down() {
        let body = json!({ "status": "shutting_down", "version": version });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(json!({ "status": "healthy", "version": version })).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// WS-HTTP-4: `503` while shutting down (health says so itself).
async fn refuse_while_shutting_down(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.is_shutting_down() && request.uri().path() != "/health" {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is restarting; try again shortly",
        )
        .into_response();
    }
    next.run(request).await
}

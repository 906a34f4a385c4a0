//! The admin API's routes. JSON in and out; errors are `{"error": …, "hint": …}` with the
//! status that fits (404 unknown pipeline, 409 not now, 401 no token).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{middleware, Json, Router};
use serde_json::json;

use crate::supervisor::{Command, CommandError, OffsetsPatch, Supervisor};
use crate::telemetry::PipelineState;

pub(super) fn router(supervisor: Supervisor, token: Option<String>) -> Router {
    let token: Option<Arc<str>> = token.map(Arc::from);
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/pipelines", get(pipelines))
        .route("/reload", post(reload))
        .route("/pipelines/{name}", get(describe))
        .route("/pipelines/{name}/status", get(status))
        .route(
            "/pipelines/{name}/offsets",
            get(offsets).delete(reset_offsets).patch(patch_offsets),
        )
        .route("/pipelines/{name}/stop", put(stop))
        .route("/pipelines/{name}/pause", put(pause))
        .route("/pipelines/{name}/resume", put(resume))
        .route("/pipelines/{name}/restart", post(restart))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            token,
            super::auth::require_token,
        ))
        .with_state(supervisor)
}

pub(super) fn error_body(status: StatusCode, error: &str, hint: &str) -> Response {
    (status, Json(json!({ "error": error, "hint": hint }))).into_response()
}

/// The `{name}` of a path, with a JSON error like every other when it cannot be read (found
/// by fuzzing: axum's own rejection is plain text).
struct Name(String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(Name(name)),
            Err(e) => Err(error_body(
                StatusCode::BAD_REQUEST,
                &e.body_text(),
                "percent-encode the pipeline's name as UTF-8; GET /pipelines lists the names",
            )),
        }
    }
}

fn command_error(e: CommandError) -> Response {
    let (status, hint) = match &e {
        CommandError::Unknown(_) => (StatusCode::NOT_FOUND, "GET /pipelines lists the pipelines"),
        CommandError::Conflict { .. } => (
            StatusCode::CONFLICT,
            "GET /pipelines/{name}/status shows its state",
        ),
        CommandError::BadRequest(_) => (
            StatusCode::BAD_REQUEST,
            "the body is {\"offsets\": [{\"stream\", \"partition\", \"offset\", \"encoding\": \"text\"|\"hex\"}]}",
        ),
        CommandError::Offsets(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "check the state directory (--state-dir)",
        ),
    };
    error_body(status, &e.to_string(), hint)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when every pipeline is RUNNING with its instances created; else 503 naming the others.
async fn ready(State(sup): State<Supervisor>) -> Response {
    let not_ready: Vec<_> = sup
        .statuses()
        .into_iter()
        .filter(|s| s.state != PipelineState::Running)
        .map(|s| json!({ "name": s.name, "state": s.state, "error": s.error }))
        .collect();
    if not_ready.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        let body = json!({ "ready": false, "not_ready": not_ready });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(sup): State<Supervisor>) -> Response {
    let body = sup.telemetry().encode();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn pipelines(State(sup): State<Supervisor>) -> Response {
    Json(sup.list()).into_response()
}

async fn describe(State(sup): State<Supervisor>, Name(name): Name) -> Response {
    match sup.describe(&name) {
        Ok(v) => Json(v).into_response(),
        Err(e) => command_error(e),
    }
}

async fn status(State(sup): State<Supervisor>, Name(name): Name) -> Response {
    match sup.status(&name) {
        Ok(v) => Json(v).into_response(),
        Err(e) => command_error(e),
    }
}

async fn offsets(State(sup): State<Supervisor>, Name(name): Name) -> Response {
    match sup.offsets(&name).await {
        Ok(v) => Json(json!({ "offsets": v })).into_response(),
        Err(e) => command_error(e),
    }
}

async fn reset_offsets(State(sup): State<Supervisor>, Name(name): Name) -> Response {
    match sup.reset_offsets(&name) {
        Ok(()) => Json(json!({ "name": name, "offsets": [] })).into_response(),
        Err(e) => command_error(e),
    }
}

async fn patch_offsets(
    State(sup): State<Supervisor>,
    Name(name): Name,
    body: Result<Json<OffsetsPatch>, JsonRejection>,
) -> Response {
    let patch = match body {
        Ok(Json(p)) => p,
        Err(e) => return command_error(CommandError::BadRequest(e.body_text())),
    };
    match sup.patch_offsets(&name, patch) {
        Ok(()) => match sup.offsets(&name).await {
            Ok(v) => Json(json!({ "name": name, "offsets": v })).into_response(),
            Err(e) => command_error(e),
        },
        Err(e) => command_error(e),
    }
}

fn accepted(sup: &Supervisor, name: &str, command: Command) -> Response {
    match sup.command(name, command) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "name": name, "accepted": format!("{command:?}").to_lowercase() })),
        )
            .into_response(),
        Err(e) => command_error(e),
    }
}

async fn stop(State(sup): State<Supervisor>, Name(name): Name) -> Response {
    accepted(&sup, &name, Command::Stop)
}

async fn pause(State(sup): State<Supervisor>, Name(name): Name) -> Response {
    accepted(&sup, &name, Command::Pause)
}

async fn resume(State(sup): State<Supervisor>, Name(name): Name) -> Response {
    accepted(&sup, &name, Command::Resume)
}

async fn restart(State(sup): State<Supervisor>, Name(name): Name) -> Response {
    accepted(&sup, &name, Command::Restart)
}

async fn reload(State(sup): State<Supervisor>) -> Response {
    match sup.reload().await {
        Some(report) => Json(report).into_response(),
        None => error_body(
            StatusCode::CONFLICT,
            "this host cannot reload",
            "it was started without pipeline files to read again",
        ),
    }
}

async fn not_found() -> Response {
    error_body(
        StatusCode::NOT_FOUND,
        "no such endpoint",
        "endpoints: /health /ready /metrics /pipelines /pipelines/{name}[/status|/offsets|/pause|/resume|/stop|/restart]",
    )
}

async fn method_not_allowed() -> Response {
    error_body(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method",
        "docs/OPERATIONS.md lists each endpoint with its method",
    )
}

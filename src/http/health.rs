//! Liveness, readiness (the store answers) and Prometheus metrics.

use crate::app::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// `GET /healthz`: the process is up.
pub async fn live() -> &'static str {
    "ok"
}

/// `GET /readyz`: the store answers, so requests can be served.
pub async fn ready(State(app): State<AppState>) -> Response {
    match app.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics.welcome_statements_at(app.store.welcome_statements());
    ([("content-type", "text/plain; version=0.0.4")], app.metrics.render(app.hub.rooms.connections())).into_response()
}

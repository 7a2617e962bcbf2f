//! HTTP surface: the WebSocket endpoint, Stripe's webhook, health and metrics, and the web app.
//! Handlers translate between HTTP and the services; errors are JSON with a stable `code`.

mod health;
pub mod web;
mod webhook;

use crate::app::AppState;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// An HTTP API error: status, stable code, message. Internal causes are logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 503 `overloaded`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503 `unavailable`: a dependency is down; retrying later will work.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"code": self.code, "message": self.message}))).into_response()
    }
}

/// The internal listener's routes: `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(health::metrics)).with_state(state)
}

/// Escapes text for HTML content and quoted attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Every route. `/metrics` is here unless `server.metrics_listen` gives it an address of its own.
pub fn router(state: AppState) -> Router {
    let public = Router::new()
        .route("/v1/calls/{call_id}/ws", get(crate::ws::upgrade))
        .route("/v1/stripe/webhook", post(webhook::receive))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready));
    let public = if state.config.server.metrics_listen.is_none() {
        public.route("/metrics", get(health::metrics))
    } else {
        public
    };
    public
        .merge(crate::admin::router())
        .route("/", get(web::root))
        .route("/demo", get(web::demo))
        .route("/call/clinician", get(web::clinician))
        .route("/call/patient", get(web::patient))
        .route("/admin/client-payment", get(web::admin))
        .route("/web/{*path}", get(web::asset))
        .route("/v1/client-config", get(web::client_config))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such route.") })
        .with_state(state)
}

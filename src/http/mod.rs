//! HTTP surface: the WebSocket endpoint, Stripe's webhook, health and metrics, and the web app.
//! Handlers translate between HTTP and the services; errors are JSON with a stable `code`.

mod error;
mod extract;
mod health;
pub mod serve;
pub mod web;
mod webhook;

pub use error::ApiError;
pub use extract::{Bearer, Body, Json, Path, Query};
pub use webhook::verify_event;

use crate::app::AppState;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::time::Duration;

/// The internal listener's routes: `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(health::metrics)).with_state(state)
}

/// Whether the browser's first language preference (`Accept-Language`) is Bengali: for the few
/// pages the hub renders itself (the JavaScript pages pick their language on their own).
pub fn prefers_bengali(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| first.trim().to_ascii_lowercase().starts_with("bn"))
}

/// Escapes text for HTML content and quoted attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Every route. `/metrics` is here unless `server.metrics_listen` gives it an address of its own.
pub fn router(state: AppState) -> Router {
    let deadline = Duration::from_millis(state.config.server.request_timeout_ms.max(1));
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
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "This route does not take that method.")
        })
        .layer(axum::middleware::from_fn_with_state(deadline, within_deadline))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Largest request body: admin bodies are a few hundred bytes and Stripe's events a few KiB.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Answers 408 when a request (its body included) takes longer than the deadline, so a client
/// trickling a body cannot hold a connection and a handler indefinitely.
async fn within_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "The request took too long; send it again.")
                .into_response()
        }
    }
}

//! What every HTTP route shares: the JSON error ([`ApiError`]), extractors that answer with it,
//! the connection loop with its limits ([`serve`]), health and metrics, and the web pages.
//! Which routes exist is [`crate::server`]'s business; this layer knows no handler above it.

mod error;
mod extract;
pub mod health;
pub mod serve;
pub mod web;

pub use error::ApiError;
pub use extract::{Bearer, Body, Json, Path, Query};

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

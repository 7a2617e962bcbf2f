//! `POST /v1/stripe/webhook`: Stripe's Connect webhook. The signature is checked on the raw
//! body against every configured secret (rotation), then the event is applied. The answer is
//! 2xx for anything processed (including duplicates and unknown payments), 400 for a bad
//! signature or body, and 503 when the store is down so that Stripe retries later.

use super::{ApiError, Body};
use crate::app::AppState;
use crate::config::Secret;
use crate::payments::EventOutcome;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use stripe_webhook::{Webhook, WebhookError};

/// Verifies a delivery's `Stripe-Signature` header against each secret in turn (rotation: the
/// first that matches wins) and parses the event it signs. Pure apart from reading the clock.
pub fn verify_event(payload: &str, signature: &str, secrets: &[Secret]) -> Result<stripe_webhook::Event, ApiError> {
    let mut bad_payload = false;
    for secret in secrets {
        match Webhook::construct_event(payload, signature, secret.expose()) {
            Ok(event) => return Ok(event),
            Err(WebhookError::BadParse(_)) => bad_payload = true,
            Err(_) => {}
        }
    }
    if bad_payload {
        return Err(ApiError::bad_request("bad_payload", "The signature matched but the event could not be parsed."));
    }
    Err(ApiError::bad_request("bad_signature", "The Stripe-Signature header does not match, or is too old."))
}

/// Receives one delivery.
pub async fn receive(State(app): State<AppState>, headers: HeaderMap, Body(body): Body) -> Response {
    let arrived = std::time::Instant::now();
    let Some(signature) = headers.get("stripe-signature").and_then(|v| v.to_str().ok()) else {
        app.metrics.webhooks_rejected.inc();
        return ApiError::bad_request("bad_signature", "Missing Stripe-Signature header.").into_response();
    };
    let Ok(payload) = std::str::from_utf8(&body) else {
        app.metrics.webhooks_rejected.inc();
        return ApiError::bad_request("bad_payload", "The body is not UTF-8.").into_response();
    };
    let event = match verify_event(payload, signature, &app.config.stripe.webhook_secrets) {
        Ok(e) => e,
        Err(e) => {
            app.metrics.webhooks_rejected.inc();
            tracing::warn!("webhook refused: {e:?}");
            return e.into_response();
        }
    };
    if let stripe_webhook::EventObject::AccountApplicationDeauthorized(_) = &event.data.object {
        let Some(account) = event.account.as_deref() else {
            return axum::Json(json!({"received": true, "outcome": "ignored"})).into_response();
        };
        return match crate::admin::on_deauthorized(&app, event.id.as_str(), account).await {
            Ok(n) => {
                tracing::info!(account, clinics = n, "clinic Stripe access revoked from Stripe's side");
                axum::Json(json!({"received": true, "outcome": "deauthorized", "clinics": n})).into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, "deauthorization not applied; Stripe will retry");
                ApiError::unavailable("The event could not be stored; retry later.").into_response()
            }
        };
    }
    match app.payments.apply_event(&event).await {
        Ok(outcome) => {
            match outcome {
                EventOutcome::Applied => {
                    app.metrics.webhooks_applied.inc();
                    // The room has been told by now: apply_event announces before returning.
                    crate::metrics::Metrics::since(&app.metrics.webhook_to_room_seconds, arrived);
                }
                EventOutcome::Duplicate => {
                    app.metrics.webhooks_duplicate.inc();
                }
                _ => {}
            }
            tracing::info!(event_id = event.id.as_str(), kind = event.type_.as_str(), ?outcome, "webhook processed");
            axum::Json(json!({"received": true, "outcome": format!("{outcome:?}").to_lowercase()})).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, event_id = event.id.as_str(), "webhook not applied; Stripe will retry");
            ApiError::unavailable("The event could not be stored; retry later.").into_response()
        }
    }
}

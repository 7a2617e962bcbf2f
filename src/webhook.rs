//! `POST /v1/stripe/webhook`: Stripe's Connect webhook. The signature is checked on the raw
//! body against every configured secret (rotation), then the event is applied. The answer is
//! 2xx for anything processed (including duplicates and unknown payments), 400 for a bad
//! signature or body, and 503 when the store is down so that Stripe retries later.

use crate::app::AppState;
use crate::http::{ApiError, Body};
use crate::payments::EventOutcome;
use crate::payments::event::{self, DeliveryError, EventObject};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Verifies a delivery against every configured secret (rotation) at the current time.
fn verify(app: &AppState, payload: &str, signature: &str) -> Result<event::Event, ApiError> {
    let secrets: Vec<&str> = app.config.stripe.webhook_secrets.iter().map(|s| s.expose()).collect();
    let now = crate::auth::now_secs() as i64;
    event::verify(payload, signature, &secrets, now).map_err(|e| match e {
        DeliveryError::BadSignature => {
            ApiError::bad_request("bad_signature", "The Stripe-Signature header does not match, or is too old.")
        }
        DeliveryError::BadPayload(why) => {
            tracing::warn!(%why, "a signed webhook could not be parsed");
            ApiError::bad_request("bad_payload", "The signature matched but the event could not be parsed.")
        }
    })
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
    let event = match verify(&app, payload, signature) {
        Ok(e) => e,
        Err(e) => {
            app.metrics.webhooks_rejected.inc();
            tracing::warn!("webhook refused: {e:?}");
            return e.into_response();
        }
    };
    if let EventObject::AccountApplicationDeauthorized = &event.object {
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
            tracing::info!(event_id = event.id.as_str(), kind = event.kind.as_str(), ?outcome, "webhook processed");
            axum::Json(json!({"received": true, "outcome": format!("{outcome:?}").to_lowercase()})).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, event_id = event.id.as_str(), "webhook not applied; Stripe will retry");
            ApiError::unavailable("The event could not be stored; retry later.").into_response()
        }
    }
}

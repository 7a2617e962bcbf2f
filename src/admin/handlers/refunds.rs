//! Refunds through the API: a clinic admin's (admin token, the matrix's `Refund` row) and the
//! clinician's from the call (their join token for that call, only what they requested). Both
//! check who may, then hand the payment to the payment service, which holds every rule about
//! money; the answer is the refund and the payment as they are now.

use super::payments::{record, refund_view, visible_for};
use super::{Result, forbidden, not_found, store_err};
use crate::admin::Admin;
use crate::admin::authz::{Action, Reach, reach};
use crate::app::AppState;
use crate::http::{ApiError, Bearer, Json, Path};
use crate::payments::refunds::{RefundAsk, RefundError, Refunded};
use crate::store::{Actor, Clinic, Payment};
use axum::extract::State;
use axum::http::StatusCode;
use callpay_protocol::Role;
use serde::Deserialize;
use serde_json::{Value, json};

/// The body of a refund request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    amount: Option<i64>,
    reason: Option<String>,
    note: Option<String>,
    request_key: Option<String>,
}

impl From<RefundBody> for RefundAsk {
    fn from(b: RefundBody) -> Self {
        Self { amount: b.amount, reason: b.reason.unwrap_or_default(), note: b.note, request_key: b.request_key }
    }
}

fn refund_error(e: RefundError) -> ApiError {
    let status = match &e {
        RefundError::InvalidAmount | RefundError::InvalidReason | RefundError::InvalidField => StatusCode::BAD_REQUEST,
        RefundError::NotRefundable(_)
        | RefundError::ExceedsRemaining { .. }
        | RefundError::KeyReused
        | RefundError::Expired
        | RefundError::Expiring
        | RefundError::InProgress { .. } => StatusCode::CONFLICT,
        RefundError::StripeRefused(_) => StatusCode::BAD_GATEWAY,
        RefundError::NoAccess => StatusCode::CONFLICT,
        RefundError::StripeUnavailable | RefundError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    if let RefundError::Store(inner) = &e {
        tracing::error!(error = %inner, "store failure during a refund");
    }
    ApiError::new(status, e.code(), e.message())
}

fn window_closed() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "refund_window_closed",
        "The time in which the clinician may refund this payment has passed; a clinic admin can refund it.",
    )
}

fn answer(app: &AppState, done: Refunded, clinic: &Clinic) -> Json<Value> {
    Json(json!({"refund": refund_view(&done.refund), "payment": record(app, &done.payment, clinic)}))
}

/// `POST /v1/payments/{payment_id}/refunds`. A payment outside the caller's reach answers
/// exactly like a missing one; a team member refunds only within the clinician's window.
pub async fn create(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(payment_id): Path<String>,
    Json(body): Json<RefundBody>,
) -> Result<Json<Value>> {
    let reach = reach(&who, Action::Refund);
    if reach == Reach::No {
        return Err(forbidden());
    }
    let (payment, clinic) =
        visible_for(&app, &who, Action::Refund, &payment_id).await?.ok_or_else(|| not_found("payment"))?;
    if reach == Reach::OwnRequests && !app.payments.clinician_window_open(&payment) {
        return Err(window_closed());
    }
    let done = app.payments.refund(&payment, Actor::from(&who), body.into()).await.map_err(refund_error)?;
    Ok(answer(&app, done, &clinic))
}

/// `POST /v1/calls/{call_id}/payments/{payment_id}/refunds` with the clinician's join token:
/// the panel in the call has no admin token, and the join token already says who they are,
/// which call and which clinic. A payment of another call answers like a missing one.
pub async fn create_in_call(
    State(app): State<AppState>,
    Bearer(token): Bearer,
    Path((call_id, payment_id)): Path<(String, String)>,
    Json(body): Json<RefundBody>,
) -> Result<Json<Value>> {
    let claims =
        app.verifier.join(&token, &call_id).map_err(|_| ApiError::unauthorized("The join token is not valid."))?;
    if claims.role != Role::Clinician {
        return Err(forbidden());
    }
    let payment: Payment = match app.store.payment(&payment_id).await.map_err(store_err)? {
        Some(p) if p.call_id == claims.call_id && p.clinic_id == claims.clinic_id => p,
        _ => return Err(not_found("payment")),
    };
    if payment.requested_by_id != claims.sub {
        return Err(forbidden());
    }
    if !app.payments.clinician_window_open(&payment) {
        return Err(window_closed());
    }
    let clinic = app.store.clinic(&payment.clinic_id).await.map_err(store_err)?.ok_or_else(|| not_found("payment"))?;
    let actor = Actor { id: &claims.sub, name: &claims.name, role: "clinician" };
    let done = app.payments.refund(&payment, actor, body.into()).await.map_err(refund_error)?;
    Ok(answer(&app, done, &clinic))
}

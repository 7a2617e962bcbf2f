//! Pay by link over HTTP. The clinician's panel asks for a link to an unpaid request (with its
//! join token); the patient's link page (`/pay#link=…`, the token in the fragment, which
//! browsers never send) reads its payment with the link token as a bearer token, says which
//! language the patient pays in, and says when Stripe.js finished, so the hub reads the
//! PaymentIntent at once. What a link may do is decided by [`crate::payments`]; this module
//! only translates.

use crate::app::AppState;
use crate::http::{ApiError, Bearer, Json, Path};
use crate::payments::{Caller, LinkRefusal, LinkState, LinkView, Refusal};
use crate::rooms::view::payment_view;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callpay_protocol::{ErrorCode, Role};
use serde::Deserialize;
use serde_json::{Value, json};

/// `POST /v1/calls/{call_id}/payments/{payment_id}/link`: a link to an unpaid request of the
/// call, for its clinician (Bearer: their join token). Answers 201 `{url, expires_at}`.
pub async fn create(
    State(app): State<AppState>,
    Bearer(token): Bearer,
    Path((call_id, payment_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let claims =
        app.verifier.join(&token, &call_id).map_err(|_| ApiError::unauthorized("The join token is not valid."))?;
    let Some(key) = app.link_key.as_deref() else { return Err(links_off()) };
    let caller =
        Caller { participant: claims.participant(), call_id: claims.call_id.clone(), clinic_id: claims.clinic_id };
    let ttl = i64::try_from(app.config.links.ttl_hours.saturating_mul(3600)).unwrap_or(i64::MAX / 2);
    let (token, expires_at) = app.payments.create_link(&caller, &payment_id, key, ttl).await.map_err(refusal_error)?;
    let url = format!("{}/pay#link={token}", app.config.public_url());
    Ok((StatusCode::CREATED, Json(json!({"url": url, "expires_at": expires_at}))))
}

/// `GET /v1/pay-link` (Bearer: the link token): the payment the link leads to, as the patient
/// sees it, with `state` `payable`, `confirming` or `paid`; or why it leads nowhere.
pub async fn open(State(app): State<AppState>, Bearer(token): Bearer) -> Response {
    answer(&app, app.payments.open_link(app.link_key.as_deref(), &token).await)
}

/// `POST /v1/pay-link/submitted` (Bearer: the link token): Stripe.js finished on the link's
/// page; the hub reads the PaymentIntent now and answers as `GET /v1/pay-link` does.
pub async fn submitted(State(app): State<AppState>, Bearer(token): Bearer) -> Response {
    answer(&app, app.payments.link_submitted(app.link_key.as_deref(), &token).await)
}

/// Body of the language calls.
#[derive(Debug, Deserialize)]
pub struct Language {
    lang: String,
}

/// `PUT /v1/pay-link/language` (Bearer: the link token), body `{"lang": "en" | "bn"}`: the
/// language the patient pays in, for callpay's receipt. 204; only while the link is payable.
pub async fn link_language(
    State(app): State<AppState>,
    Bearer(token): Bearer,
    Json(body): Json<Language>,
) -> Result<StatusCode, ApiError> {
    let lang = language(&body.lang)?;
    let view = app.payments.open_link(app.link_key.as_deref(), &token).await.map_err(link_error)?;
    state_error(&view)?;
    app.payments.set_patient_language(&view.payment.id, lang).await.map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/calls/{call_id}/payments/{payment_id}/language` (Bearer: the patient's join token):
/// the same from the patient's page in the call. 204.
pub async fn call_language(
    State(app): State<AppState>,
    Bearer(token): Bearer,
    Path((call_id, payment_id)): Path<(String, String)>,
    Json(body): Json<Language>,
) -> Result<StatusCode, ApiError> {
    let claims =
        app.verifier.join(&token, &call_id).map_err(|_| ApiError::unauthorized("The join token is not valid."))?;
    if claims.role != Role::Patient {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Only the patient says which language they pay in.",
        ));
    }
    let lang = language(&body.lang)?;
    match app.store.payment(&payment_id).await.map_err(store_error)? {
        Some(p) if p.call_id == claims.call_id && p.clinic_id == claims.clinic_id => {}
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such payment in this call.")),
    }
    app.payments.set_patient_language(&payment_id, lang).await.map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn language(lang: &str) -> Result<&'static str, ApiError> {
    match lang {
        "en" => Ok("en"),
        "bn" => Ok("bn"),
        _ => Err(ApiError::bad_request("invalid_lang", "The language is en or bn.")),
    }
}

fn answer(app: &AppState, view: Result<LinkView, LinkRefusal>) -> Response {
    let view = match view {
        Ok(v) => v,
        Err(e) => return link_error(e).into_response(),
    };
    if let Err(e) = state_error(&view) {
        return e.into_response();
    }
    let payment = payment_view(&view.payment, Role::Patient, &app.config.stripe.publishable_key);
    Json(json!({
        "state": view.state.as_str(),
        "clinic_name": view.clinic_name,
        "expires_at": view.expires_at,
        "payment": payment,
    }))
    .into_response()
}

/// The states a link page shows as an error: nothing of the payment is handed out for them.
fn state_error(view: &LinkView) -> Result<(), ApiError> {
    match view.state {
        LinkState::Payable | LinkState::Confirming | LinkState::Paid => Ok(()),
        LinkState::Expired => Err(ApiError::new(
            StatusCode::GONE,
            "link_expired",
            "This payment link has expired. Ask the clinic for a new one.",
        )),
        LinkState::Canceled => Err(ApiError::new(
            StatusCode::GONE,
            "link_canceled",
            "The clinic cancelled this payment request; there is nothing to pay.",
        )),
        LinkState::ClinicUnavailable => Err(ApiError::new(
            StatusCode::CONFLICT,
            "clinic_unavailable",
            "The clinic that sent this link no longer takes this payment through callpay. Contact the clinic.",
        )),
    }
}

fn link_error(e: LinkRefusal) -> ApiError {
    match e {
        LinkRefusal::Tampered => ApiError::bad_request(
            "link_invalid",
            "This payment link is not valid: it was changed or is incomplete. Open the link exactly as the clinic sent it.",
        ),
        LinkRefusal::Off => links_off(),
        LinkRefusal::Store(e) => store_error(e),
    }
}

fn links_off() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "links_off",
        "Pay by link is not configured on this hub (links.secret).",
    )
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure on a pay link");
    ApiError::unavailable("The hub cannot read this payment right now; nothing was charged. Try again shortly.")
}

fn refusal_error(r: Refusal) -> ApiError {
    let (status, code) = match r.code {
        ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorCode::UnknownPayment => (StatusCode::NOT_FOUND, "not_found"),
        ErrorCode::InvalidState => (StatusCode::CONFLICT, "not_payable"),
        ErrorCode::StripeNotConnected | ErrorCode::AppNotEnabled => (StatusCode::CONFLICT, "clinic_unavailable"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    ApiError::new(status, code, r.message)
}

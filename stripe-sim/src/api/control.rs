//! The `/_sim` control API (platform secret key only): create accounts, reset, inject faults,
//! and read the delivery log and the receipt outbox.

use super::require_platform_secret;
use crate::sim::Sim;
use crate::state::Faults;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Body of `POST /_sim/accounts`; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewAccount {
    /// Business name shown on dashboards and statements.
    pub business_name: Option<String>,
    /// Account e-mail.
    pub email: Option<String>,
    /// Two-letter country, default `AU`.
    pub country: Option<String>,
    /// Default currency, default `aud`.
    pub default_currency: Option<String>,
    /// Whether the platform is already connected (default true); false leaves it to OAuth.
    pub connected: Option<bool>,
}

/// `POST /_sim/accounts`: creates a Standard account, connected to the platform by default.
pub async fn create_account(State(sim): State<Sim>, headers: HeaderMap, body: Option<Json<NewAccount>>) -> Response {
    if let Err(e) = require_platform_secret(&sim, &headers) {
        return e.into_response();
    }
    let spec = body.map(|b| b.0).unwrap_or_default();
    let (id, pk, account) = sim.with_world(|w| {
        let id = w.create_account(
            spec.email.as_deref(),
            spec.business_name.as_deref(),
            spec.country.as_deref().unwrap_or("AU"),
            spec.default_currency.as_deref().unwrap_or("aud"),
            spec.connected.unwrap_or(true),
        );
        let a = &w.accounts[&id];
        (id.clone(), a.publishable_key.clone(), a.object.clone())
    });
    Json(json!({"id": id, "publishable_key": pk, "connected": spec.connected.unwrap_or(true), "account": account}))
        .into_response()
}

/// `POST /_sim/reset`: forgets every account, object, event, endpoint created through the API,
/// fault and log; start-up endpoints stay. Deliveries in flight stop retrying.
pub async fn reset(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(e) = require_platform_secret(&sim, &headers) {
        return e.into_response();
    }
    sim.with_world(|w| {
        let mut fresh = crate::state::World::new(&sim.config().platform_name);
        fresh.platform = w.platform.clone();
        fresh.accounts.clear();
        let platform = w.accounts.remove(&w.platform).expect("platform always exists");
        fresh.accounts.insert(fresh.platform.clone(), crate::state::AccountData::new(platform.object, true));
        fresh.endpoints = w.endpoints.iter().filter(|e| e.from_config).cloned().collect();
        fresh.generation = w.generation + 1;
        *w = fresh;
    });
    Json(json!({"reset": true})).into_response()
}

/// `GET /_sim/faults`: faults still waiting to fire.
pub async fn faults(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(e) = require_platform_secret(&sim, &headers) {
        return e.into_response();
    }
    Json(sim.with_world(|w| w.faults.clone())).into_response()
}

/// `POST /_sim/faults` with a JSON [`Faults`]: adds those faults (fields left out keep their value).
pub async fn set_faults(State(sim): State<Sim>, headers: HeaderMap, Json(f): Json<Faults>) -> Response {
    if let Err(e) = require_platform_secret(&sim, &headers) {
        return e.into_response();
    }
    Json(sim.with_world(|w| {
        w.faults.merge(f);
        w.faults.clone()
    }))
    .into_response()
}

/// `DELETE /_sim/faults`: clears every fault.
pub async fn clear_faults(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(e) = require_platform_secret(&sim, &headers) {
        return e.into_response();
    }
    sim.with_world(|w| {
        w.faults = Faults::default();
        w.held_events.clear();
    });
    Json(json!({"cleared": true})).into_response()
}

/// `GET /_sim/deliveries`: every webhook delivery attempt, oldest first.
pub async fn deliveries(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(e) = require_platform_secret(&sim, &headers) {
        return e.into_response();
    }
    Json(json!({"data": sim.with_world(|w| w.deliveries.clone())})).into_response()
}

/// `GET /_sim/receipts`: receipt e-mails "sent" for succeeded payments, oldest first.
pub async fn receipts(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(e) = require_platform_secret(&sim, &headers) {
        return e.into_response();
    }
    Json(json!({"data": sim.with_world(|w| w.receipts.clone())})).into_response()
}

/// `GET /_sim/requests`: API and OAuth requests with their Idempotency-Key, oldest first.
pub async fn requests(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(e) = require_platform_secret(&sim, &headers) {
        return e.into_response();
    }
    Json(json!({"data": sim.with_world(|w| w.requests.clone())})).into_response()
}

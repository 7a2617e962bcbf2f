//! Events (`GET /v1/events`) and webhook endpoints (`/v1/webhook_endpoints`).

use super::{ApiRequest, secret_caller};
use crate::error::ApiError;
use crate::ids::{new_id, random_token};
use crate::objects;
use crate::sim::Sim;
use crate::state::Endpoint;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `GET /v1/events`, optionally filtered by `type`.
pub async fn list(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let kind = req.str("type").map(str::to_owned);
    sim.read(|w| {
        w.account(&who.account)?
            .events
            .page(&req.params, "/v1/events", |e| kind.as_deref().is_none_or(|k| e["type"] == k))
    })
}

/// `GET /v1/events/{id}`.
pub async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.read(|w| w.account(&who.account)?.events.get(&id).cloned().ok_or_else(|| ApiError::missing("event", &id, "id")))
}

/// `POST /v1/webhook_endpoints` (platform key only): `url`, `enabled_events[]`, `connect`,
/// `description`. The response carries the signing `secret`, once.
pub async fn create_endpoint(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if who.connected {
        return ApiError::invalid("Webhook endpoints are created on the platform account, without Stripe-Account.")
            .into_response();
    }
    sim.write(&who.account, req.idempotency_key(), req.fingerprint(), |tx| {
        req.only(&["url", "enabled_events", "connect", "description", "api_version", "metadata"])?;
        let url = req.str("url").ok_or_else(|| ApiError::param_missing("url"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::invalid(format!("Invalid URL: {url}")).code("url_invalid").param("url"));
        }
        let events: Vec<String> = match req.params.get("enabled_events") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => return Err(ApiError::param_missing("enabled_events")),
        };
        if events.is_empty() {
            return Err(ApiError::param_missing("enabled_events"));
        }
        let connect = req.str("connect") == Some("true");
        let id = new_id("we");
        let secret = format!("whsec_{}", random_token(32));
        let object = objects::webhook_endpoint(&id, url, &events, req.str("description"), None);
        tx.world.endpoints.push(Endpoint {
            id,
            url: url.to_owned(),
            secret: secret.clone(),
            connect,
            from_config: false,
            enabled_events: events,
            object: object.clone(),
        });
        let mut shown = object;
        shown["secret"] = json!(secret);
        Ok(shown)
    })
}

/// `GET /v1/webhook_endpoints`.
pub async fn list_endpoints(State(sim): State<Sim>, req: ApiRequest) -> Response {
    if let Err(e) = secret_caller(&sim, &req) {
        return e.into_response();
    }
    sim.read(|w| {
        let data: Vec<Value> = w.endpoints.iter().rev().map(|e| e.object.clone()).collect();
        Ok(objects::list("/v1/webhook_endpoints", data, false))
    })
}

/// `GET /v1/webhook_endpoints/{id}`.
pub async fn retrieve_endpoint(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    if let Err(e) = secret_caller(&sim, &req) {
        return e.into_response();
    }
    sim.read(|w| {
        w.endpoints
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.object.clone())
            .ok_or_else(|| ApiError::missing("webhook_endpoint", &id, "id"))
    })
}

/// `DELETE /v1/webhook_endpoints/{id}`.
pub async fn delete_endpoint(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.write(&who.account, None, req.fingerprint(), |tx| {
        let before = tx.world.endpoints.len();
        tx.world.endpoints.retain(|e| e.id != id);
        if tx.world.endpoints.len() == before {
            return Err(ApiError::missing("webhook_endpoint", &id, "id"));
        }
        Ok(json!({"id": id, "object": "webhook_endpoint", "deleted": true}))
    })
}

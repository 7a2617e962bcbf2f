//! The platform's event endpoints (operator only): register one (its secret is answered once),
//! list, show, change, delete; an endpoint's deliveries with their attempts; replay one.

use super::{DEFAULT_LIMIT, MAX_LIMIT, Page, Result, forbidden, store_err};
use crate::admin::Admin;
use crate::admin::authz::{Action, AdminClaims, Scope, authorize};
use crate::app::AppState;
use crate::events::{EndpointRequest, EventsError};
use crate::http::{ApiError, Json, Path, Query};
use crate::store::outbox::EventEndpoint;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// Endpoints are the platform's, not a clinic's: only a role that reaches any resource may
/// manage them.
fn may(who: &AdminClaims) -> Result<()> {
    if authorize(who, Action::ManageEvents, Scope::default()) { Ok(()) } else { Err(forbidden()) }
}

fn api_err(e: EventsError) -> ApiError {
    let status = match &e {
        EventsError::NotFound(_) => StatusCode::NOT_FOUND,
        EventsError::TooMany(_) => StatusCode::CONFLICT,
        EventsError::Store(_) => {
            return store_err(match e {
                EventsError::Store(s) => s,
                _ => unreachable!("matched above"),
            });
        }
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// An endpoint as the API shows it: never its secret.
fn view(e: &EventEndpoint) -> Value {
    json!({
        "id": e.id,
        "url": e.url,
        "enabled": e.enabled,
        "events": e.event_types,
        "description": e.description,
        "created_by": e.created_by,
        "created_at": e.created_at,
        "updated_at": e.updated_at,
    })
}

/// `POST /v1/event-endpoints`.
pub async fn create(
    State(app): State<AppState>,
    Admin(who): Admin,
    Json(body): Json<EndpointRequest>,
) -> Result<Response> {
    may(&who)?;
    let (endpoint, secret) = app.events.create_endpoint(body, &who.sub).await.map_err(api_err)?;
    let mut v = view(&endpoint);
    // The only time the secret is shown: the platform keeps it to verify signatures.
    v["secret"] = Value::String(secret);
    tracing::info!(endpoint = %endpoint.id, url = %endpoint.url, by = %who.sub, "event endpoint registered");
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /v1/event-endpoints`.
pub async fn list(State(app): State<AppState>, Admin(who): Admin, Query(page): Query<Page>) -> Result<Json<Value>> {
    may(&who)?;
    let all = app.events.outbox().endpoints().await.map_err(store_err)?;
    let views: Vec<Value> = all.iter().map(view).collect();
    Ok(Json(super::paginate(views, |v| v["id"].as_str().unwrap_or_default().to_owned(), &page)))
}

/// `GET /v1/event-endpoints/{endpoint_id}`.
pub async fn show(State(app): State<AppState>, Admin(who): Admin, Path(id): Path<String>) -> Result<Json<Value>> {
    may(&who)?;
    Ok(Json(view(&app.events.endpoint(&id).await.map_err(api_err)?)))
}

/// `PATCH /v1/event-endpoints/{endpoint_id}`.
pub async fn change(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
    Json(body): Json<EndpointRequest>,
) -> Result<Json<Value>> {
    may(&who)?;
    let endpoint = app.events.change_endpoint(&id, body).await.map_err(api_err)?;
    tracing::info!(endpoint = %id, by = %who.sub, "event endpoint changed");
    Ok(Json(view(&endpoint)))
}

/// `DELETE /v1/event-endpoints/{endpoint_id}`.
pub async fn delete(State(app): State<AppState>, Admin(who): Admin, Path(id): Path<String>) -> Result<Json<Value>> {
    may(&who)?;
    app.events.delete_endpoint(&id).await.map_err(api_err)?;
    tracing::info!(endpoint = %id, by = %who.sub, "event endpoint deleted");
    Ok(Json(json!({"id": id, "deleted": true})))
}

/// `?status=&limit=&cursor=` on an endpoint's deliveries.
#[derive(Debug, Deserialize)]
pub struct DeliveryQuery {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/event-endpoints/{endpoint_id}/deliveries`, newest first; the cursor is
/// `{created_at}:{id}` of the last row.
pub async fn deliveries(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
    Query(q): Query<DeliveryQuery>,
) -> Result<Json<Value>> {
    may(&who)?;
    app.events.endpoint(&id).await.map_err(api_err)?;
    if let Some(s) = q.status.as_deref()
        && !["pending", "delivered", "failed", "canceled"].contains(&s)
    {
        return Err(ApiError::bad_request("invalid_status", "status is pending, delivered, failed or canceled."));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as i64;
    let bad_cursor = || ApiError::bad_request("invalid_cursor", "Bad cursor.");
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let (at, last) = c.split_once(':').ok_or_else(bad_cursor)?;
            Some((at.parse().map_err(|_| bad_cursor())?, last.to_owned()))
        }
    };
    let rows = app.events.outbox().deliveries(&id, q.status.as_deref(), limit + 1, before).await.map_err(store_err)?;
    let more = rows.len() as i64 > limit;
    let data: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next = if more { data.last().map(|d| format!("{}:{}", d.created_at, d.id)) } else { None };
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

/// `GET /v1/event-endpoints/{endpoint_id}/deliveries/{delivery_id}`: the delivery, the event
/// it sends (exactly as sent) and every attempt.
pub async fn delivery(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path((endpoint_id, id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    may(&who)?;
    let (d, event, attempts) = app.events.delivery(&endpoint_id, &id).await.map_err(api_err)?;
    let body = event.map(|e| serde_json::from_str::<Value>(&e.body).unwrap_or(Value::String(e.body)));
    Ok(Json(json!({"delivery": d, "event": body, "attempts": attempts})))
}

/// `POST /v1/event-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay`.
pub async fn replay(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path((endpoint_id, id)): Path<(String, String)>,
) -> Result<Response> {
    may(&who)?;
    let d = app.events.replay(&endpoint_id, &id).await.map_err(api_err)?;
    tracing::info!(delivery = %id, replay = %d.id, by = %who.sub, "event delivery replayed");
    Ok((StatusCode::CREATED, Json(json!(d))).into_response())
}

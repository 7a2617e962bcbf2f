//! Enablement requests: an org or clinic admin asks for the payment app, the service desk
//! approves or rejects.

use super::{Page, Result, check, forbidden, load_clinic, not_found, paginate, store_err};
use crate::admin::authz::{Action, AdminClaims, Reach, Scope, authorize, reach};
use crate::admin::{Actor, Admin, announce_clinic};
use crate::app::AppState;
use crate::events::catalogue::{EventType, clinic_write};
use crate::http::{ApiError, Json, Path, Query};
use crate::store::{AuditEntry, Clinic, ClinicChange, Committed, Enablement, Write, now_ms};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// Body of an enablement request.
#[derive(Debug, Deserialize)]
pub struct EnablementBody {
    clinic_ids: Vec<String>,
    ticket_ref: String,
}

/// `POST /v1/orgs/{org_id}/enablement-requests`.
pub async fn request_enablement(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(org_id): Path<String>,
    Json(body): Json<EnablementBody>,
) -> Result<Response> {
    // An org admin's reach is decided by the path's organisation alone (403 for another one);
    // a team admin's by each clinic, below.
    match reach(&who, Action::RequestEnablement) {
        Reach::No => return Err(forbidden()),
        Reach::OwnOrg => check(&who, Action::RequestEnablement, Some(&org_id), None)?,
        Reach::OwnClinic | Reach::OwnRequests | Reach::Any => {}
    }
    let ticket = body.ticket_ref.trim();
    if ticket.is_empty() || ticket.len() > 64 {
        return Err(ApiError::bad_request(
            "invalid_ticket_ref",
            "The service-desk ticket reference is required (1 to 64 characters).",
        ));
    }
    if body.clinic_ids.is_empty() {
        return Err(ApiError::bad_request("invalid_clinics", "Name at least one clinic."));
    }
    let mut created = Vec::new();
    for clinic_id in &body.clinic_ids {
        // Another organisation's clinic, or one outside the admin's reach, answers like a
        // missing one (no existence oracle).
        let clinic = load_clinic(&app, clinic_id).await?;
        let scope = Scope { org_id: Some(&clinic.org_id), clinic_id: Some(&clinic.id), ..Scope::default() };
        if clinic.org_id != org_id || !authorize(&who, Action::RequestEnablement, scope) {
            return Err(not_found("clinic"));
        }
    }
    for clinic_id in &body.clinic_ids {
        let e = Enablement {
            id: format!("enr_{}", crate::ids::random_id()),
            org_id: org_id.clone(),
            clinic_id: clinic_id.clone(),
            ticket_ref: ticket.to_owned(),
            requested_by: who.sub.clone(),
            requested_by_name: who.name.clone(),
            status: "pending".into(),
            reason: None,
            decided_by: None,
            created_at: now_ms(),
            decided_at: None,
        };
        let audit = AuditEntry {
            org_id: Some(org_id.clone()),
            clinic_id: Some(clinic_id.clone()),
            target: Some(e.id.clone()),
            ..AuditEntry::new(Actor::from(&who), "app.enable_requested", "ok")
        }
        .with_detail(format!("ticket {ticket}"));
        app.store.commit(&[Write::NewEnablement(e.clone()), Write::Audit(audit)]).await.map_err(store_err)?;
        created.push(e);
    }
    Ok((StatusCode::CREATED, Json(json!({"data": created}))).into_response())
}

/// `?org_id=&status=` plus paging on the enablement list.
#[derive(Debug, Deserialize)]
pub struct EnablementQuery {
    org_id: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/enablement-requests`.
pub async fn list_enablements(
    State(app): State<AppState>,
    Admin(who): Admin,
    Query(q): Query<EnablementQuery>,
) -> Result<Json<Value>> {
    // Org admins see their own organisation's only, whatever they ask for.
    let org = match who.role {
        crate::admin::authz::AdminRole::PlatformOperator => q.org_id.clone(),
        _ => who.org_id.clone(),
    };
    check(&who, Action::ListEnablements, org.as_deref(), None)?;
    let items = app.store.enablements(org.as_deref(), q.status.as_deref()).await.map_err(store_err)?;
    // The service desk decides by clinic, not by id: name each request's clinic.
    let ids: Vec<String> = items.iter().map(|e| e.clinic_id.clone()).collect();
    let names: std::collections::HashMap<String, String> =
        app.store.clinics(&ids).await.map_err(store_err)?.into_iter().map(|c| (c.id, c.name)).collect();
    let items: Vec<Value> = items
        .into_iter()
        .map(|e| {
            let mut v = serde_json::to_value(&e).unwrap_or_default();
            v["clinic_name"] = names.get(&e.clinic_id).cloned().map_or(Value::Null, Value::String);
            v
        })
        .collect();
    let page = Page { limit: q.limit, cursor: q.cursor };
    Ok(Json(paginate(items, |v| v["id"].as_str().unwrap_or_default().to_owned(), &page)))
}

/// Body of a rejection.
#[derive(Debug, Deserialize)]
pub struct Reason {
    reason: String,
}

async fn decide(
    app: &AppState,
    who: &AdminClaims,
    id: &str,
    approve: bool,
    reason: Option<String>,
) -> Result<Json<Value>> {
    // A role that may never decide is refused before the request is looked up, so that it
    // cannot tell an existing id from a missing one.
    if reach(who, Action::DecideEnablement) == Reach::No {
        return Err(forbidden());
    }
    let mut e = app.store.enablement(id).await.map_err(store_err)?.ok_or_else(|| not_found("enablement request"))?;
    check(who, Action::DecideEnablement, Some(&e.org_id), Some(&e.clinic_id))?;
    e.status = if approve { "approved" } else { "rejected" }.into();
    e.reason = reason;
    e.decided_by = Some(who.sub.clone());
    e.decided_at = Some(now_ms());
    let action = if approve { "app.enable_approved" } else { "app.enable_rejected" };
    let audit = AuditEntry {
        org_id: Some(e.org_id.clone()),
        clinic_id: Some(e.clinic_id.clone()),
        target: Some(e.id.clone()),
        ..AuditEntry::new(Actor::from(who), action, "ok")
    }
    .with_detail(e.reason.clone().unwrap_or_default());
    // The decision, the clinic's enablement and the audit record land together.
    let mut writes = vec![Write::Decision(e.clone()), Write::Audit(audit)];
    if approve {
        let enabled = Clinic { app_enabled: true, ..load_clinic(app, &e.clinic_id).await? };
        writes.push(Write::Clinic { id: e.clinic_id.clone(), change: ClinicChange::SetEnabled(true) });
        // Announced to the platform only if the clinic was not enabled already.
        writes.push(clinic_write(EventType::ClinicAppEnabled, &enabled));
    }
    if app.store.commit(&writes).await.map_err(store_err)? != Committed::Applied {
        return Err(ApiError::new(StatusCode::CONFLICT, "already_decided", "This request was already decided."));
    }
    if approve {
        let clinic = load_clinic(app, &e.clinic_id).await?;
        announce_clinic(app, &clinic).await;
    }
    Ok(Json(json!(e)))
}

/// `POST /v1/enablement-requests/{id}/approve`.
pub async fn approve(State(app): State<AppState>, Admin(who): Admin, Path(id): Path<String>) -> Result<Json<Value>> {
    decide(&app, &who, &id, true, None).await
}

/// `POST /v1/enablement-requests/{id}/reject`.
pub async fn reject(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(id): Path<String>,
    Json(body): Json<Reason>,
) -> Result<Json<Value>> {
    let reason = body.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::bad_request("invalid_reason", "A reason (1 to 500 characters) is required."));
    }
    decide(&app, &who, &id, false, Some(reason.to_owned())).await
}

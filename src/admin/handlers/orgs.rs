//! Organisations and clinics: register, rename, list, view, and turn the payment app off.

use super::{Page, Result, check, clinic_for, clinic_view, load_clinic, not_found, paginate, store_err};
use crate::admin::authz::Action;
use crate::admin::{Actor, Admin, announce_clinic, clinic_audit};
use crate::app::AppState;
use crate::events::catalogue::{EventType, clinic_write};
use crate::http::{ApiError, Json, Path, Query};
use crate::store::{AuditEntry, Clinic, ClinicChange, Org, Write};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// Body of an upsert.
#[derive(Debug, Deserialize)]
pub struct Named {
    name: String,
}

fn valid_id(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_id", "Ids are 1 to 64 letters, digits, '-', '_' or '.'."))
    }
}

fn valid_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 120 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_name", "Names are 1 to 120 characters without control characters."));
    }
    Ok(name.to_owned())
}

/// `PUT /v1/orgs/{org_id}`.
pub async fn upsert_org(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(org_id): Path<String>,
    Json(body): Json<Named>,
) -> Result<Json<Value>> {
    check(&who, Action::UpsertOrg, Some(&org_id), None)?;
    valid_id(&org_id)?;
    let org = Org { id: org_id.clone(), name: valid_name(&body.name)? };
    let audit = AuditEntry {
        org_id: Some(org_id.clone()),
        target: Some(org_id.clone()),
        ..AuditEntry::new(Actor::from(&who), "org.upserted", "ok")
    }
    .with_detail(org.name.clone());
    app.store.commit(&[Write::UpsertOrg(org.clone()), Write::Audit(audit)]).await.map_err(store_err)?;
    Ok(Json(json!(org)))
}

/// `PUT /v1/orgs/{org_id}/clinics/{clinic_id}`.
pub async fn upsert_clinic(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path((org_id, clinic_id)): Path<(String, String)>,
    Json(body): Json<Named>,
) -> Result<Json<Value>> {
    check(&who, Action::UpsertClinic, Some(&org_id), Some(&clinic_id))?;
    valid_id(&clinic_id)?;
    app.store.org(&org_id).await.map_err(store_err)?.ok_or_else(|| not_found("organisation"))?;
    let name = valid_name(&body.name)?;
    let clinic = match app.store.clinic(&clinic_id).await.map_err(store_err)? {
        Some(existing) if existing.org_id != org_id => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "That clinic belongs to another organisation.",
            ));
        }
        Some(existing) => Clinic { name, ..existing },
        None => Clinic { id: clinic_id.clone(), org_id: org_id.clone(), name, ..Clinic::default() },
    };
    let audit = clinic_audit(Actor::from(&who), &clinic, "clinic.upserted", Some(&clinic_id), "ok")
        .with_detail(clinic.name.clone());
    app.store.commit(&[Write::UpsertClinic(clinic), Write::Audit(audit)]).await.map_err(store_err)?;
    // Read back: a rename changes only the name, whatever else changed meanwhile.
    let clinic = load_clinic(&app, &clinic_id).await?;
    Ok(Json(clinic_view(&app, &clinic).await?))
}

/// `GET /v1/orgs/{org_id}/clinics`.
pub async fn list_clinics(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(org_id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>> {
    check(&who, Action::ListClinics, Some(&org_id), None)?;
    let clinics = app.store.clinics_for_org(&org_id).await.map_err(store_err)?;
    let mut views = Vec::with_capacity(clinics.len());
    for c in &clinics {
        views.push(clinic_view(&app, c).await?);
    }
    Ok(Json(paginate(views, |v| v["id"].as_str().unwrap_or_default().to_owned(), &page)))
}

/// `GET /v1/clinics/{clinic_id}`.
pub async fn view_clinic(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
) -> Result<Json<Value>> {
    let clinic = clinic_for(&app, &who, Action::ViewClinic, &clinic_id).await?;
    Ok(Json(clinic_view(&app, &clinic).await?))
}

/// `POST /v1/clinics/{clinic_id}/disable`.
pub async fn disable(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
) -> Result<Json<Value>> {
    let clinic = clinic_for(&app, &who, Action::DisableApp, &clinic_id).await?;
    let audit = clinic_audit(Actor::from(&who), &clinic, "app.disabled", Some(&clinic.id), "ok");
    let disabled = Clinic { app_enabled: false, ..clinic.clone() };
    let writes = [
        Write::Clinic { id: clinic.id.clone(), change: ClinicChange::SetEnabled(false) },
        clinic_write(EventType::ClinicAppDisabled, &disabled),
        Write::Audit(audit),
    ];
    app.store.commit(&writes).await.map_err(store_err)?;
    let clinic = load_clinic(&app, &clinic_id).await?;
    announce_clinic(&app, &clinic).await;
    Ok(Json(clinic_view(&app, &clinic).await?))
}

/// Body of `PUT /v1/clinics/{clinic_id}/receipts`.
#[derive(Debug, Deserialize)]
pub struct Receipts {
    enabled: bool,
}

/// `PUT /v1/clinics/{clinic_id}/receipts`: callpay's own receipt e-mail on or off. Turning it
/// on needs a mail server on this hub (`receipts.smtp_url`); off always works.
pub async fn set_receipts(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
    Json(body): Json<Receipts>,
) -> Result<Json<Value>> {
    let clinic = clinic_for(&app, &who, Action::ManageReceipts, &clinic_id).await?;
    if body.enabled && !app.outbox.can_send() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "receipts_unavailable",
            "This hub has no mail server (receipts.smtp_url), so it cannot send receipts; Stripe's receipt is still sent.",
        ));
    }
    let action = if body.enabled { "receipts.enabled" } else { "receipts.disabled" };
    let audit = clinic_audit(Actor::from(&who), &clinic, action, Some(&clinic.id), "ok");
    let writes = [
        Write::Clinic { id: clinic.id.clone(), change: ClinicChange::SetOwnReceipts(body.enabled) },
        Write::Audit(audit),
    ];
    app.store.commit(&writes).await.map_err(store_err)?;
    let clinic = load_clinic(&app, &clinic_id).await?;
    Ok(Json(clinic_view(&app, &clinic).await?))
}

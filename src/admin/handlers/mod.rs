//! Admin JSON API handlers, one module per resource: load the resource, ask the matrix, act,
//! audit, answer. What they share (errors, scope checks, the clinic view, paging) lives here.

pub mod audit;
pub mod enablement;
pub mod events;
pub mod orgs;
pub mod payments;
pub mod refunds;
pub mod reports;
pub mod stripe;

use super::authz::{Action, AdminClaims, Reach, Scope, authorize, reach};
use crate::app::AppState;
use crate::http::ApiError;
use crate::store::Clinic;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// Page size bounds.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

type Result<T> = std::result::Result<T, ApiError>;

fn store_err(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure in admin API");
    ApiError::unavailable("The store is unavailable; nothing was changed. Retry shortly.")
}

fn forbidden() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Your role does not allow this for this resource.")
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("No such {what}."))
}

fn check(who: &AdminClaims, action: Action, org_id: Option<&str>, clinic_id: Option<&str>) -> Result<()> {
    if authorize(who, action, Scope { org_id, clinic_id, ..Scope::default() }) { Ok(()) } else { Err(forbidden()) }
}

async fn load_clinic(app: &AppState, id: &str) -> Result<Clinic> {
    app.store.clinic(id).await.map_err(store_err)?.ok_or_else(|| not_found("clinic"))
}

/// The clinic, if `who` may do `action` on it. A role that may never do `action` gets 403 (that
/// says nothing about the clinic); a clinic outside the caller's reach answers exactly like a
/// missing one, so that ids cannot be probed for existence.
async fn clinic_for(app: &AppState, who: &AdminClaims, action: Action, id: &str) -> Result<Clinic> {
    if reach(who, action) == Reach::No {
        return Err(forbidden());
    }
    match app.store.clinic(id).await.map_err(store_err)? {
        Some(c)
            if authorize(
                who,
                action,
                Scope { org_id: Some(&c.org_id), clinic_id: Some(&c.id), ..Scope::default() },
            ) =>
        {
            Ok(c)
        }
        _ => Err(not_found("clinic")),
    }
}

/// The clinic as the admin pages show it.
async fn clinic_view(app: &AppState, c: &Clinic) -> Result<Value> {
    let latest = app
        .store
        .enablements(Some(&c.org_id), None)
        .await
        .map_err(store_err)?
        .into_iter()
        .find(|e| e.clinic_id == c.id);
    Ok(json!({
        "id": c.id,
        "org_id": c.org_id,
        "name": c.name,
        "app_enabled": c.app_enabled,
        "payments_available": c.payment_readiness().is_ok(),
        "own_receipts": c.own_receipts,
        "receipts_available": app.outbox.can_send(),
        "enablement": latest,
        "stripe": {
            "linked": c.stripe_account.is_some(),
            "account": c.stripe_account,
            "display_name": c.stripe_display_name,
            "livemode": c.stripe_livemode,
            "linked_by": c.linked_by,
            "linked_at": c.linked_at,
        },
    }))
}

/// `?limit=&cursor=` on list endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct Page {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// One page of `items` (already in order) after the item whose key is `cursor`.
fn paginate<T: serde::Serialize>(items: Vec<T>, key: impl Fn(&T) -> String, page: &Page) -> Value {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let start = match &page.cursor {
        Some(c) => items.iter().position(|i| key(i) == *c).map_or(items.len(), |p| p + 1),
        None => 0,
    };
    let end = (start + limit).min(items.len());
    let next = (end < items.len()).then(|| key(&items[end - 1]));
    let data: Vec<&T> = items[start..end].iter().collect();
    json!({"data": data, "next_cursor": next})
}

//! The clinic's audit log, newest first, with keyset paging; the service desk's view leaves
//! out the payment and refund records.

use super::{DEFAULT_LIMIT, MAX_LIMIT, Page, Result, clinic_for, store_err};
use crate::admin::Admin;
use crate::admin::authz::{Action, Reach, reach};
use crate::app::AppState;
use crate::http::{ApiError, Json, Path, Query};
use axum::extract::State;
use serde_json::{Value, json};

/// `GET /v1/clinics/{clinic_id}/audit?limit=&cursor=`; the cursor is `{at}:{id}` of the last row.
pub async fn audit_log(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>> {
    clinic_for(&app, &who, Action::ViewAudit, &clinic_id).await?;
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as i64;
    let before = match page.cursor.as_deref() {
        None => None,
        Some(c) => {
            let (at, id) = c.split_once(':').ok_or_else(|| ApiError::bad_request("invalid_cursor", "Bad cursor."))?;
            Some((at.parse().map_err(|_| ApiError::bad_request("invalid_cursor", "Bad cursor."))?, id.to_owned()))
        }
    };
    // Payments are the clinic's business: a role that may not read them (the service desk)
    // reads the log without its payment and refund records.
    let with_money = reach(&who, Action::ViewPayments) != Reach::No;
    let rows = app.store.audit_for_clinic(&clinic_id, limit + 1, before, with_money).await.map_err(store_err)?;
    let more = rows.len() as i64 > limit;
    let data: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next = if more { data.last().map(|e| format!("{}:{}", e.at, e.id)) } else { None };
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

//! A clinic's payment records: the filtered, paged list and one payment with its history. The
//! history is read from the audit log, where every change of a payment is recorded in the same
//! transaction as the change, with the payment's id as its target.

use super::{DEFAULT_LIMIT, MAX_LIMIT, Result, forbidden, not_found, store_err};
use crate::admin::Admin;
use crate::admin::authz::{Action, AdminClaims, Reach, Scope, authorize, reach};
use crate::app::AppState;
use crate::http::{ApiError, Json, Path, Query};
use crate::store::{AuditEntry, Clinic, Payment, PaymentFilter, PaymentScope, Refund, status_str};
use axum::extract::State;
use callpay_protocol::PaymentStatus;
use serde::Deserialize;
use serde_json::{Value, json};

/// Most history entries answered for one payment. A payment changes a handful of times; the
/// bound keeps one answer small whatever the log holds.
const MAX_HISTORY: i64 = 500;

/// `?from=&to=&status=&clinician=&call_id=&limit=&cursor=` on the payment lists, and `clinic=`
/// on an organisation's. Times are Unix milliseconds, like every time in this API; an empty
/// parameter is no filter.
#[derive(Debug, Default, Deserialize)]
pub struct PaymentQuery {
    from: Option<String>,
    to: Option<String>,
    status: Option<String>,
    clinician: Option<String>,
    call_id: Option<String>,
    clinic: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

impl PaymentQuery {
    fn filter(&self) -> Result<PaymentFilter> {
        Ok(PaymentFilter {
            from_ms: millis(&self.from, "from")?,
            to_ms: millis(&self.to, "to")?,
            status: status(&self.status)?,
            requested_by_id: given(&self.clinician).map(str::to_owned),
            call_id: given(&self.call_id).map(str::to_owned),
            clinic_id: given(&self.clinic).map(str::to_owned),
        })
    }
}

fn bad_filter(message: &str) -> ApiError {
    ApiError::bad_request("invalid_filter", message)
}

/// A query parameter with an empty value counted as absent (a form's empty field).
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn millis(v: &Option<String>, name: &str) -> Result<Option<i64>> {
    given(v)
        .map(|s| s.parse::<i64>().map_err(|_| bad_filter(&format!("{name} is a time in Unix milliseconds."))))
        .transpose()
}

fn status(v: &Option<String>) -> Result<Option<PaymentStatus>> {
    given(v)
        .map(|s| {
            serde_json::from_value(Value::String(s.to_owned())).map_err(|_| {
                bad_filter("status is one of creating, requested, authenticating, processing, failed, succeeded, canceled, partially_refunded, refunded.")
            })
        })
        .transpose()
}

/// `{created_at}:{id}` of the last payment of a page.
fn cursor(c: &str) -> Result<(i64, String)> {
    let bad = || ApiError::bad_request("invalid_cursor", "Bad cursor.");
    let (at, id) = c.split_once(':').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.to_owned()))
}

/// Where the payment is in the clinic's Stripe dashboard: `{dashboard}/{account}/test/payments/{pi}`
/// (without `/test` for a payment made in live mode). The dashboard is the configured one: Stripe's, or
/// the simulator's in the demo.
pub fn dashboard_url(dashboard: &str, p: &Payment, livemode: bool) -> Option<String> {
    let pi = p.payment_intent_id.as_deref()?;
    let mode = if livemode { "" } else { "/test" };
    Some(format!("{}/{}{mode}/payments/{pi}", dashboard.trim_end_matches('/'), p.stripe_account))
}

/// A payment as the admin API shows it: everything but the client secret, which is for the
/// call's patient only.
pub(super) fn record(app: &AppState, p: &Payment, clinic: &Clinic) -> Value {
    json!({
        "id": p.id,
        "clinic_id": p.clinic_id,
        "clinic_name": clinic.name,
        "call_id": p.call_id,
        "client_ref": p.client_ref,
        "requested_by_id": p.requested_by_id,
        "requested_by_name": p.requested_by_name,
        "amount": p.amount,
        "currency": p.currency,
        "description": p.description,
        "status": status_str(p.status),
        "amount_received": p.amount_received,
        "amount_refunded": p.amount_refunded,
        "paid_at": p.paid_at,
        "receipt_email": p.receipt_email,
        "card_brand": p.card_brand,
        "card_last4": p.card_last4,
        "failure_code": p.failure_code,
        "failure_decline_code": p.failure_decline_code,
        "stripe_account": p.stripe_account,
        "payment_intent_id": p.payment_intent_id,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "livemode": p.livemode,
        "dashboard_url": dashboard_url(&app.config.stripe.dashboard_url, p, p.livemode),
    })
}

/// Where a change came from, read from its audit record: a participant's command through the
/// hub, a Stripe webhook event (with its id), a read of the PaymentIntent from Stripe (the
/// verify sweep, a page asking, a cancel finding it paid), or an admin.
fn source(e: &AuditEntry) -> Value {
    match e.actor_role.as_str() {
        "stripe" => match e.detail.as_deref().and_then(|d| d.strip_prefix("event ")) {
            Some(rest) => {
                let event_id: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                json!({"kind": "webhook", "event_id": event_id})
            }
            None => json!({"kind": "stripe_read"}),
        },
        "clinician" | "patient" => json!({"kind": "hub", "actor_id": e.actor_id, "actor_name": e.actor_name}),
        // callpay's own background work (the receipt e-mail).
        "system" => json!({"kind": "system"}),
        _ => json!({"kind": "admin", "actor_id": e.actor_id, "actor_name": e.actor_name, "role": e.actor_role}),
    }
}

/// One history entry: when, what (and the status it led to, for a status change), the outcome,
/// where it came from, and the record's detail.
fn history_entry(e: &AuditEntry) -> Value {
    let status = e
        .action
        .strip_prefix("payment.")
        .filter(|s| serde_json::from_value::<PaymentStatus>(Value::String((*s).to_owned())).is_ok());
    json!({
        "at": e.at,
        "action": e.action,
        "status": status,
        "outcome": e.outcome,
        "source": source(e),
        "detail": e.detail,
    })
}

/// Whether an audit record about this payment's id is part of its history. A participant can
/// name any id in a refused command (or as a `client_ref`), so only changes that went through
/// and Stripe's refusals (an amount or PaymentIntent that did not match) count.
fn in_history(e: &AuditEntry) -> bool {
    (e.action.starts_with("payment.") || e.action.starts_with("refund."))
        && (e.outcome == "ok" || e.actor_role == "stripe" || e.actor_role == "system")
}

/// A refund as the admin API shows it.
pub(super) fn refund_view(r: &Refund) -> Value {
    json!({
        "id": r.id,
        "payment_id": r.payment_id,
        "amount": r.amount,
        "currency": r.currency,
        "reason": r.reason,
        "note": r.note,
        "status": r.status,
        "stripe_refund_id": r.stripe_refund_id,
        "failure_reason": r.failure_reason,
        "source": r.source,
        "requested_by_id": r.requested_by_id,
        "requested_by_name": r.requested_by_name,
        "requested_by_role": r.requested_by_role,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    })
}

/// `GET /v1/clinics/{clinic_id}/payments`: newest first, filtered, paged by a `{created_at}:{id}`
/// cursor. A team member sees only the payments they requested.
pub async fn list(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
    Query(q): Query<PaymentQuery>,
) -> Result<Json<Value>> {
    let reach = reach(&who, Action::ViewPayments);
    if reach == Reach::No {
        return Err(forbidden());
    }
    // What a team member may see is part of the scope: their own requests.
    let own_requests = (reach == Reach::OwnRequests).then_some(who.sub.as_str());
    let clinic = match app.store.clinic(&clinic_id).await.map_err(store_err)? {
        Some(c) if authorize(&who, Action::ViewPayments, scope(&c, own_requests)) => c,
        _ => return Err(not_found("clinic")),
    };
    let mut filter = q.filter()?;
    // One clinic's list: a clinic filter is this clinic, or nothing.
    if filter.clinic_id.take().is_some_and(|c| c != clinic.id) {
        return Ok(Json(json!({"data": [], "next_cursor": null})));
    }
    if let Some(me) = own_requests {
        if filter.requested_by_id.as_deref().is_some_and(|c| c != me) {
            // Another clinician's payments: none of them are this caller's to see.
            return Ok(Json(json!({"data": [], "next_cursor": null})));
        }
        filter.requested_by_id = Some(me.to_owned());
    }
    let clinics = std::collections::HashMap::from([(clinic.id.clone(), clinic)]);
    page(&app, PaymentScope::Clinic(&clinic_id), &filter, &q, &clinics).await
}

/// `GET /v1/orgs/{org_id}/payments`: every clinic of the organisation, newest first, with the
/// same filters and paging as a clinic's list and `clinic=` to narrow it to one. An
/// organisation's admins only: a team admin reads each of their clinics' lists.
pub async fn org_list(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(org_id): Path<String>,
    Query(q): Query<PaymentQuery>,
) -> Result<Json<Value>> {
    super::check(&who, Action::ViewOrgPayments, Some(&org_id), None)?;
    let filter = q.filter()?;
    let clinics: std::collections::HashMap<String, Clinic> =
        app.store.clinics_for_org(&org_id).await.map_err(store_err)?.into_iter().map(|c| (c.id.clone(), c)).collect();
    page(&app, PaymentScope::Org(&org_id), &filter, &q, &clinics).await
}

/// One page of records in `scope`, each shown with its clinic from `clinics`.
async fn page(
    app: &AppState,
    scope: PaymentScope<'_>,
    filter: &PaymentFilter,
    q: &PaymentQuery,
    clinics: &std::collections::HashMap<String, Clinic>,
) -> Result<Json<Value>> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as i64;
    let before = q.cursor.as_deref().map(cursor).transpose()?;
    let rows = app.store.payment_records(scope, filter, limit + 1, before).await.map_err(store_err)?;
    let more = rows.len() as i64 > limit;
    let page: Vec<&Payment> = rows.iter().take(limit as usize).collect();
    let next = if more { page.last().map(|p| format!("{}:{}", p.created_at, p.id)) } else { None };
    let data: Vec<Value> = page
        .iter()
        // A payment's clinic is in its scope by the query; a clinic removed since is shown by id.
        .map(|p| match clinics.get(&p.clinic_id) {
            Some(c) => record(app, p, c),
            None => record(app, p, &Clinic { id: p.clinic_id.clone(), name: p.clinic_id.clone(), ..Clinic::default() }),
        })
        .collect();
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

fn scope<'a>(c: &'a Clinic, requested_by: Option<&'a str>) -> Scope<'a> {
    Scope { org_id: Some(&c.org_id), clinic_id: Some(&c.id), requested_by }
}

/// `GET /v1/payments/{payment_id}`: the record and its history, oldest first. A payment outside
/// the caller's reach answers exactly like a missing one.
pub async fn show(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(payment_id): Path<String>,
) -> Result<Json<Value>> {
    if reach(&who, Action::ViewPayments) == Reach::No {
        return Err(forbidden());
    }
    let (payment, clinic) = visible(&app, &who, &payment_id).await?.ok_or_else(|| not_found("payment"))?;
    let rows = app.store.audit_for_target(&payment.clinic_id, &payment.id, MAX_HISTORY).await.map_err(store_err)?;
    let history: Vec<Value> = rows.iter().filter(|e| in_history(e)).map(history_entry).collect();
    let refunds = app.store.refunds_for_payment(&payment.id).await.map_err(store_err)?;
    let mut body = record(&app, &payment, &clinic);
    body["failure_message"] = json!(payment.failure_message);
    body["history"] = Value::Array(history);
    body["refunds"] = refunds.iter().map(refund_view).collect();
    body["refundable"] = json!(refundable(&payment, &refunds));
    Ok(Json(body))
}

/// What remains to refund by our record (received, less the larger of the refunded total and
/// the pending and succeeded refunds), for the pages' refund form; 0 for an unpaid payment.
pub(super) fn refundable(p: &Payment, refunds: &[Refund]) -> i64 {
    if !matches!(p.status, PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded) {
        return 0;
    }
    let active: i64 =
        refunds.iter().filter(|r| r.status == "pending" || r.status == "succeeded").map(|r| r.amount).sum();
    (p.amount_received.unwrap_or(p.amount) - p.amount_refunded.max(active)).max(0)
}

/// The payment and its clinic, if both exist and `who` may see the payment.
async fn visible(app: &AppState, who: &AdminClaims, id: &str) -> Result<Option<(Payment, Clinic)>> {
    visible_for(app, who, Action::ViewPayments, id).await
}

/// The payment and its clinic, if both exist and `who` may do `action` on the payment.
pub(super) async fn visible_for(
    app: &AppState,
    who: &AdminClaims,
    action: Action,
    id: &str,
) -> Result<Option<(Payment, Clinic)>> {
    let Some(payment) = app.store.payment(id).await.map_err(store_err)? else { return Ok(None) };
    let Some(clinic) = app.store.clinic(&payment.clinic_id).await.map_err(store_err)? else { return Ok(None) };
    let allowed = authorize(who, action, scope(&clinic, Some(&payment.requested_by_id)));
    Ok(allowed.then_some((payment, clinic)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_links_follow_the_clinics_mode() {
        let p =
            Payment { stripe_account: "acct_1".into(), payment_intent_id: Some("pi_1".into()), ..Payment::default() };
        assert_eq!(
            dashboard_url("https://dashboard.stripe.com/", &p, false).as_deref(),
            Some("https://dashboard.stripe.com/acct_1/test/payments/pi_1")
        );
        assert_eq!(
            dashboard_url("https://dashboard.stripe.com/", &p, true).as_deref(),
            Some("https://dashboard.stripe.com/acct_1/payments/pi_1")
        );
        assert_eq!(
            dashboard_url("http://127.0.0.1:9/dashboard", &p, false).as_deref(),
            Some("http://127.0.0.1:9/dashboard/acct_1/test/payments/pi_1")
        );
        assert_eq!(dashboard_url("https://dashboard.stripe.com/", &Payment::default(), false), None);
    }

    #[test]
    fn sources_are_read_from_the_record() {
        let stripe = crate::store::STRIPE;
        let hook = AuditEntry::new(stripe, "payment.succeeded", "ok").with_detail("event evt_123 for pi_1");
        assert_eq!(source(&hook), json!({"kind": "webhook", "event_id": "evt_123"}));
        let read = AuditEntry::new(stripe, "payment.succeeded", "ok").with_detail("read from Stripe after a while");
        assert_eq!(source(&read)["kind"], "stripe_read");
        let doc = crate::store::Actor { id: "c1", name: "Dr A", role: "clinician" };
        assert_eq!(source(&AuditEntry::new(doc, "payment.requested", "ok"))["kind"], "hub");
        let admin = crate::store::Actor { id: "a1", name: "Cam", role: "team_admin" };
        assert_eq!(source(&AuditEntry::new(admin, "payment.refunded", "ok"))["kind"], "admin");
        // A participant's refusal naming this id is not part of the payment's history.
        assert!(!in_history(&AuditEntry::new(doc, "payment.canceled", "refused")));
        assert!(in_history(&AuditEntry::new(stripe, "payment.amount_mismatch", "refused")));
        assert_eq!(history_entry(&hook)["status"], "succeeded");
        assert!(history_entry(&AuditEntry::new(stripe, "payment.amount_mismatch", "refused"))["status"].is_null());
    }
}

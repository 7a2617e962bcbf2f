//! Admin request handlers: load the resource, ask the matrix, act, audit, answer.

use super::authz::{Action, AdminClaims, Reach, Scope, authorize, reach};
use super::{Actor, Admin, announce_clinic, audit_only, clinic_audit, unlink};
use crate::app::AppState;
use crate::connect::ConnectError;
use crate::http::{ApiError, Json, Path, Query};
use crate::store::{AuditEntry, ClinicChange, Committed, StripeLink, Write};
use crate::store::{Clinic, Enablement, OAuthState, Org, StateTaken, now_ms};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// How long a Connect OAuth state stays valid.
const STATE_TTL_MS: i64 = 10 * 60 * 1000;
/// Unfinished Stripe links a clinic may have at once: enough for a few browsers and retries,
/// few enough that repeated clicks cannot grow the state table or the audit log without bound.
const MAX_LIVE_STATES: usize = 10;
/// Cookie binding an OAuth attempt to the browser that started it.
const STATE_COOKIE: &str = "callpay_oauth_state";
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
    if authorize(who, action, Scope { org_id, clinic_id }) { Ok(()) } else { Err(forbidden()) }
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
        Some(c) if authorize(who, action, Scope { org_id: Some(&c.org_id), clinic_id: Some(&c.id) }) => Ok(c),
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
        Reach::OwnClinic | Reach::Any => {}
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
        let scope = Scope { org_id: Some(&clinic.org_id), clinic_id: Some(&clinic.id) };
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
        super::authz::AdminRole::PlatformOperator => q.org_id.clone(),
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
        writes.push(Write::Clinic { id: e.clinic_id.clone(), change: ClinicChange::SetEnabled(true) });
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

/// `POST /v1/clinics/{clinic_id}/disable`.
pub async fn disable(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
) -> Result<Json<Value>> {
    let clinic = clinic_for(&app, &who, Action::DisableApp, &clinic_id).await?;
    let audit = clinic_audit(Actor::from(&who), &clinic, "app.disabled", Some(&clinic.id), "ok");
    let writes =
        [Write::Clinic { id: clinic.id.clone(), change: ClinicChange::SetEnabled(false) }, Write::Audit(audit)];
    app.store.commit(&writes).await.map_err(store_err)?;
    let clinic = load_clinic(&app, &clinic_id).await?;
    announce_clinic(&app, &clinic).await;
    Ok(Json(clinic_view(&app, &clinic).await?))
}

/// `POST /v1/clinics/{clinic_id}/stripe/connect`: a fresh single-use state bound to this clinic
/// and admin (and, by cookie, to this browser); answers the Stripe URL to send the browser to.
pub async fn start_connect(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
) -> Result<Response> {
    let clinic = clinic_for(&app, &who, Action::ManageStripe, &clinic_id).await?;
    if !clinic.app_enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "app_not_enabled",
            "Enable the payment app for this clinic first.",
        ));
    }
    let state = format!("{}{}", crate::ids::random_id(), crate::ids::random_id());
    let stored = app
        .store
        .insert_oauth_state(
            &OAuthState {
                state: state.clone(),
                clinic_id: clinic.id.clone(),
                admin_id: who.sub.clone(),
                admin_name: who.name.clone(),
                admin_role: who.role.as_str().into(),
                expires_at: now_ms() + STATE_TTL_MS,
            },
            MAX_LIVE_STATES,
        )
        .await
        .map_err(store_err)?;
    if !stored {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_link_attempts",
            "Too many Stripe links started for this clinic in the last few minutes; finish one or wait.",
        ));
    }
    let redirect = format!("{}/v1/stripe/oauth/callback", app.config.public_url());
    let url = app.connect.authorize_url(&state, &redirect);
    audit_only(&app, clinic_audit(Actor::from(&who), &clinic, "stripe.link_started", Some(&clinic.id), "ok")).await;
    // Secure whenever the public URL is https, so the state never travels in clear text.
    let secure = if app.config.public_url().starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!(
        "{STATE_COOKIE}={state}; Path=/v1/stripe/oauth; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        STATE_TTL_MS / 1000
    );
    Ok(([(header::SET_COOKIE, cookie)], Json(json!({"authorize_url": url, "expires_in": STATE_TTL_MS / 1000})))
        .into_response())
}

/// Query of Stripe's redirect.
#[derive(Debug, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The OAuth callback page's sentences in Bengali, by their English text (the English is what
/// the handler writes; a sentence missing here is shown in English).
const CALLBACK_BN: &[(&str, &str)] = &[
    ("Stripe link failed", "Stripe যুক্ত করা যায়নি"),
    ("Stripe link expired", "Stripe যুক্ত করার লিংকের মেয়াদ শেষ"),
    ("Stripe account not linked", "Stripe অ্যাকাউন্ট যুক্ত হয়নি"),
    ("Stripe account linked", "Stripe অ্যাকাউন্ট যুক্ত হয়েছে"),
    ("Try again", "আবার চেষ্টা করুন"),
    (
        "The response from Stripe had no state. Start again from Configure > Client Payment.",
        "Stripe-এর উত্তরে প্রয়োজনীয় তথ্য ছিল না। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    (
        "This link was not started from this browser. Start again from Configure > Client Payment.",
        "এই লিংকটি এই ব্রাউজার থেকে শুরু হয়নি। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    (
        "callpay cannot save the link right now. Start again in a minute.",
        "callpay এখন লিংকটি সংরক্ষণ করতে পারছে না। এক মিনিট পরে আবার শুরু করুন।",
    ),
    (
        "This link is not one callpay started. Start again from Configure > Client Payment.",
        "এই লিংকটি callpay শুরু করেনি। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    (
        "This link was already used. Start again from Configure > Client Payment.",
        "এই লিংকটি আগেই ব্যবহার করা হয়েছে। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    ("callpay cannot load the clinic right now.", "callpay এখন ক্লিনিকের তথ্য আনতে পারছে না।"),
    (
        "This link expired. Start again from Configure > Client Payment.",
        "এই লিংকের মেয়াদ শেষ হয়ে গেছে। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    (
        "You cancelled on Stripe's page, so no account was linked. Nothing changed.",
        "আপনি Stripe-এর পাতায় বাতিল করেছেন, তাই কোনো অ্যাকাউন্ট যুক্ত হয়নি। কিছুই বদলায়নি।",
    ),
    (
        "Stripe did not link the account. Nothing changed; you can try again.",
        "Stripe অ্যাকাউন্টটি যুক্ত করেনি। কিছুই বদলায়নি; আবার চেষ্টা করতে পারেন।",
    ),
    ("Stripe's response had no authorization code.", "Stripe-এর উত্তরে অনুমোদনের কোড ছিল না।"),
    (
        "Stripe could not be reached. Nothing changed; try again in a minute.",
        "Stripe-এর সঙ্গে যোগাযোগ করা যায়নি। কিছুই বদলায়নি; এক মিনিট পরে আবার চেষ্টা করুন।",
    ),
    (
        "Stripe did not accept the authorization. Nothing changed; start again.",
        "Stripe অনুমোদনটি গ্রহণ করেনি। কিছুই বদলায়নি; আবার শুরু করুন।",
    ),
    ("Your role may not link this clinic's Stripe account.", "আপনার ভূমিকায় এই ক্লিনিকের Stripe অ্যাকাউন্ট যুক্ত করা যায় না।"),
    (
        "The payment app was disabled for this clinic while you were at Stripe, so nothing was linked.",
        "আপনি Stripe-এ থাকার সময় এই ক্লিনিকের পেমেন্ট অ্যাপ বন্ধ করা হয়েছে, তাই কিছুই যুক্ত হয়নি।",
    ),
    (
        "callpay could not save the link. Start again in a minute.",
        "callpay লিংকটি সংরক্ষণ করতে পারেনি। এক মিনিট পরে আবার শুরু করুন।",
    ),
    ("The account is linked.", "অ্যাকাউন্টটি যুক্ত হয়েছে।"),
    ("Back to Client Payment", "ক্লায়েন্ট পেমেন্টে ফিরে যান"),
];

/// `text` in Bengali when `bn` and the catalogue has it.
fn callback_words(bn: bool, text: &str) -> &str {
    if !bn {
        return text;
    }
    CALLBACK_BN.iter().find(|(en, _)| *en == text).map_or(text, |(_, b)| b)
}

fn page(bn: bool, status: StatusCode, title: &str, body: &str, clinic_id: Option<&str>) -> Response {
    let back = clinic_id
        .map(|c| {
            format!(
                "<p><a href=\"/admin/client-payment?clinic={}\">{}</a></p>",
                crate::http::escape(c),
                callback_words(bn, "Back to Client Payment")
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang={lang}><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>\
         <title>{t}</title><main style='font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem'>\
         <h1>{t}</h1><p role=status id=outcome>{b}</p>{back}</main></html>",
        lang = if bn { "bn" } else { "en" },
        t = crate::http::escape(callback_words(bn, title)),
        b = crate::http::escape(callback_words(bn, body)),
    );
    // A static page: no scripts, no framing, nothing sniffed or cached.
    let headers = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (status, headers, Html(html)).into_response()
}

fn cookie_state(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == STATE_COOKIE).then(|| v.to_owned())
    })
}

/// Whether the admin who started an OAuth link may still manage `clinic`'s Stripe account.
fn may_manage_stripe(s: &crate::store::OAuthState, clinic: &Clinic) -> bool {
    let Ok(role) = serde_json::from_value::<super::authz::AdminRole>(Value::String(s.admin_role.clone())) else {
        return false;
    };
    let claims = AdminClaims {
        typ: crate::auth::ADMIN_TYP.into(),
        sub: s.admin_id.clone(),
        name: s.admin_name.clone(),
        role,
        org_id: Some(clinic.org_id.clone()),
        clinic_ids: vec![clinic.id.clone()],
        exp: 0,
    };
    check(&claims, Action::ManageStripe, Some(&clinic.org_id), Some(&clinic.id)).is_ok()
}

/// `GET /v1/stripe/oauth/callback`: Stripe sends the admin's browser back here.
pub async fn oauth_callback(State(app): State<AppState>, headers: HeaderMap, Query(q): Query<Callback>) -> Response {
    // The page speaks the browser's language (Bengali or English).
    let bn = crate::http::prefers_bengali(&headers);
    let page =
        |status: StatusCode, title: &str, body: &str, clinic_id: Option<&str>| page(bn, status, title, body, clinic_id);
    let bad = |title: &str, body: &str| page(StatusCode::BAD_REQUEST, title, body, None);
    let Some(state) = q.state.filter(|s| !s.is_empty()) else {
        return bad(
            "Stripe link failed",
            "The response from Stripe had no state. Start again from Configure > Client Payment.",
        );
    };
    if cookie_state(&headers).as_deref() != Some(state.as_str()) {
        return bad(
            "Stripe link failed",
            "This link was not started from this browser. Start again from Configure > Client Payment.",
        );
    }
    let s = match app.store.take_oauth_state(&state).await {
        Err(e) => {
            tracing::error!(error = %e, "store unavailable in OAuth callback");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "callpay cannot save the link right now. Start again in a minute.",
                None,
            );
        }
        Ok(StateTaken::Unknown) => {
            return bad(
                "Stripe link failed",
                "This link is not one callpay started. Start again from Configure > Client Payment.",
            );
        }
        Ok(StateTaken::Reused) => {
            return bad(
                "Stripe link failed",
                "This link was already used. Start again from Configure > Client Payment.",
            );
        }
        Ok(StateTaken::Fresh(s)) => s,
    };
    let clinic_id = s.clinic_id.clone();
    let actor = Actor { id: &s.admin_id, name: &s.admin_name, role: &s.admin_role };
    let Ok(Some(clinic)) = app.store.clinic(&clinic_id).await else {
        return page(StatusCode::SERVICE_UNAVAILABLE, "Try again", "callpay cannot load the clinic right now.", None);
    };
    if s.expires_at < now_ms() {
        audit_only(&app, clinic_audit(actor, &clinic, "stripe.link", None, "refused").with_detail("state expired"))
            .await;
        return page(
            StatusCode::BAD_REQUEST,
            "Stripe link expired",
            "This link expired. Start again from Configure > Client Payment.",
            Some(&clinic_id),
        );
    }
    if let Some(error) = q.error {
        let detail = format!("{error}: {}", q.error_description.unwrap_or_default());
        audit_only(&app, clinic_audit(actor, &clinic, "stripe.link", None, "refused").with_detail(detail)).await;
        let body = if error == "access_denied" {
            "You cancelled on Stripe's page, so no account was linked. Nothing changed."
        } else {
            "Stripe did not link the account. Nothing changed; you can try again."
        };
        return page(StatusCode::BAD_REQUEST, "Stripe account not linked", body, Some(&clinic_id));
    }
    let Some(code) = q.code else {
        return page(
            StatusCode::BAD_REQUEST,
            "Stripe link failed",
            "Stripe's response had no authorization code.",
            Some(&clinic_id),
        );
    };
    let linked = match app.connect.exchange(&code).await {
        Ok(l) => l,
        Err(e) => {
            audit_only(&app, clinic_audit(actor, &clinic, "stripe.link", None, "failed").with_detail(e.to_string()))
                .await;
            let (status, body) = match e {
                ConnectError::Unavailable(_) => {
                    (StatusCode::BAD_GATEWAY, "Stripe could not be reached. Nothing changed; try again in a minute.")
                }
                ConnectError::Refused { .. } => {
                    (StatusCode::BAD_REQUEST, "Stripe did not accept the authorization. Nothing changed; start again.")
                }
            };
            return page(status, "Stripe account not linked", body, Some(&clinic_id));
        }
    };
    let link = StripeLink {
        account: linked.stripe_user_id.clone(),
        publishable_key: linked.stripe_publishable_key.clone(),
        display_name: app.payments_stripe.account_name(&linked.stripe_user_id).await,
        livemode: linked.livemode,
        linked_by: s.admin_name.clone(),
        linked_at: now_ms(),
    };
    // Two network calls happened since the clinic was read: re-read it, and re-check that the
    // admin's role may still manage this clinic's Stripe link and that the app is still enabled
    // (the store re-checks enablement in the same statement that links).
    let clinic = match app.store.clinic(&clinic_id).await {
        Ok(Some(c)) => c,
        _ => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "callpay cannot load the clinic right now.",
                None,
            );
        }
    };
    if !may_manage_stripe(&s, &clinic) {
        audit_only(
            &app,
            clinic_audit(actor, &clinic, "stripe.link", None, "refused").with_detail("role no longer allowed"),
        )
        .await;
        return page(
            StatusCode::FORBIDDEN,
            "Stripe account not linked",
            "Your role may not link this clinic's Stripe account.",
            Some(&clinic_id),
        );
    }
    let previous = clinic.stripe_account.clone();
    let (action, detail) = match &previous {
        Some(old) if *old != linked.stripe_user_id => {
            ("stripe.relinked", format!("{old} -> {}", linked.stripe_user_id))
        }
        _ => ("stripe.linked", linked.stripe_user_id.clone()),
    };
    let audit = clinic_audit(actor, &clinic, action, Some(&linked.stripe_user_id), "ok").with_detail(detail);
    let writes = [Write::Clinic { id: clinic_id.clone(), change: ClinicChange::Link(link) }, Write::Audit(audit)];
    match app.store.commit(&writes).await {
        Ok(Committed::Applied) => {}
        Ok(_) => {
            audit_only(
                &app,
                clinic_audit(actor, &clinic, "stripe.link", None, "refused").with_detail("app disabled meanwhile"),
            )
            .await;
            return page(
                StatusCode::CONFLICT,
                "Stripe account not linked",
                "The payment app was disabled for this clinic while you were at Stripe, so nothing was linked.",
                Some(&clinic_id),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store the Stripe link");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "callpay could not save the link. Start again in a minute.",
                Some(&clinic_id),
            );
        }
    }
    let Ok(Some(clinic)) = app.store.clinic(&clinic_id).await else {
        return page(StatusCode::OK, "Stripe account linked", "The account is linked.", Some(&clinic_id));
    };
    announce_clinic(&app, &clinic).await;
    let name = clinic.stripe_display_name.clone().unwrap_or_else(|| linked.stripe_user_id.clone());
    let body = if bn {
        format!("{name} ({}) এখন {}-এর সঙ্গে যুক্ত। রোগীদের পেমেন্ট সরাসরি এতে যাবে।", linked.stripe_user_id, clinic.name)
    } else {
        format!(
            "{name} ({}) is now linked to {}. Patients' payments go straight to it.",
            linked.stripe_user_id, clinic.name
        )
    };
    page(StatusCode::OK, "Stripe account linked", &body, Some(&clinic_id))
}

/// `DELETE /v1/clinics/{clinic_id}/stripe`: revoke callpay's access on Stripe, then unlink.
pub async fn remove_stripe(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
) -> Result<Json<Value>> {
    let clinic = clinic_for(&app, &who, Action::ManageStripe, &clinic_id).await?;
    let Some(account) = clinic.stripe_account.clone() else {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_linked", "This clinic has no linked Stripe account."));
    };
    // One key per removal: a retry of this removal is the same request, a later removal (after a
    // re-link to the same account) is a new one.
    let key = format!("callpay:deauthorize:{}:{}", clinic.id, crate::ids::random_id());
    match app.connect.deauthorize(&account, &key).await {
        Ok(()) => {}
        // Already revoked from Stripe's side: unlinking here is still right.
        Err(ConnectError::Refused { error, .. }) if error == "invalid_client" => {}
        Err(e) => {
            let entry = clinic_audit(Actor::from(&who), &clinic, "stripe.removed", Some(&account), "failed");
            audit_only(&app, entry.with_detail(e.to_string())).await;
            return Err(ApiError::unavailable("Stripe could not be reached; the account is still linked. Try again."));
        }
    }
    let audit = clinic_audit(Actor::from(&who), &clinic, "stripe.removed", Some(&account), "ok");
    let writes = [
        Write::Clinic { id: clinic.id.clone(), change: ClinicChange::Unlink { account: account.clone() } },
        Write::Audit(audit),
    ];
    app.store.commit(&writes).await.map_err(store_err)?;
    let mut clinic = load_clinic(&app, &clinic_id).await?;
    if clinic.stripe_account.as_deref() == Some(account.as_str()) {
        unlink(&mut clinic);
    }
    announce_clinic(&app, &clinic).await;
    Ok(Json(clinic_view(&app, &clinic).await?))
}

/// `GET /v1/clinics/{clinic_id}/stripe/account`: what *Edit* shows before re-linking: the
/// linked account as Stripe has it now (name, e-mail, country, charges and payouts enabled)
/// and where its dashboard is.
pub async fn stripe_account(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
) -> Result<Json<Value>> {
    let clinic = clinic_for(&app, &who, Action::ManageStripe, &clinic_id).await?;
    let Some(account) = clinic.stripe_account.as_deref() else {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_linked", "This clinic has no linked Stripe account."));
    };
    let details = app.connect.account(account).await.map_err(|e| {
        tracing::warn!(error = %e, account, "cannot read a linked account from Stripe");
        ApiError::unavailable("Stripe could not be reached for the account's details; try again.")
    })?;
    Ok(Json(json!({"account": details, "dashboard_url": app.config.stripe.dashboard_url})))
}

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
    let rows = app.store.audit_for_clinic(&clinic_id, limit + 1, before).await.map_err(store_err)?;
    let more = rows.len() as i64 > limit;
    let data: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next = if more { data.last().map(|e| format!("{}:{}", e.at, e.id)) } else { None };
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

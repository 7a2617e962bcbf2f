//! The clinic's Stripe link: start Connect OAuth, take Stripe's redirect back (answered with a
//! [`crate::admin::pages`] result page), show the linked account, remove it.

use super::{Result, check, clinic_for, clinic_view, load_clinic, store_err};
use crate::admin::authz::{Action, AdminClaims};
use crate::admin::pages::page;
use crate::admin::{Actor, Admin, announce_clinic, audit_only, clinic_audit, unlink};
use crate::app::AppState;
use crate::connect::ConnectError;
use crate::events::catalogue::{EventType, clinic_write};
use crate::http::{ApiError, Json, Path, Query};
use crate::store::{Clinic, OAuthState, StateTaken, now_ms};
use crate::store::{ClinicChange, Committed, StripeLink, Write};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// How long a Connect OAuth state stays valid.
const STATE_TTL_MS: i64 = 10 * 60 * 1000;
/// Unfinished Stripe links a clinic may have at once: enough for a few browsers and retries,
/// few enough that repeated clicks cannot grow the state table or the audit log without bound.
const MAX_LIVE_STATES: usize = 10;
/// Cookie binding an OAuth attempt to the browser that started it.
const STATE_COOKIE: &str = "callpay_oauth_state";

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

fn cookie_state(headers: &HeaderMap) -> Option<String> {
    axum_extra::extract::CookieJar::from_headers(headers).get(STATE_COOKIE).map(|c| c.value().to_owned())
}

/// Whether the admin who started an OAuth link may still manage `clinic`'s Stripe account.
fn may_manage_stripe(s: &crate::store::OAuthState, clinic: &Clinic) -> bool {
    let Ok(role) = serde_json::from_value::<crate::admin::authz::AdminRole>(Value::String(s.admin_role.clone())) else {
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
    let linked_clinic = Clinic {
        stripe_account: Some(link.account.clone()),
        stripe_publishable_key: link.publishable_key.clone(),
        stripe_display_name: link.display_name.clone(),
        stripe_livemode: link.livemode,
        linked_by: Some(link.linked_by.clone()),
        linked_at: Some(link.linked_at),
        ..clinic.clone()
    };
    let writes = [
        Write::Clinic { id: clinic_id.clone(), change: ClinicChange::Link(link) },
        clinic_write(EventType::ClinicStripeLinked, &linked_clinic),
        Write::Audit(audit),
    ];
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
    let mut unlinked = clinic.clone();
    unlink(&mut unlinked);
    let writes = [
        Write::Clinic { id: clinic.id.clone(), change: ClinicChange::Unlink { account: account.clone() } },
        // Announced only if this removal unlinked it (not a concurrent one, nor a re-link since).
        clinic_write(EventType::ClinicStripeUnlinked, &unlinked),
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

//! Connect OAuth for Standard accounts: the consent page (`GET /oauth/authorize`), the user's
//! decision (redirect back with `code` and the untouched `state`, or `error=access_denied`),
//! the single-use code exchange (`POST /oauth/token`) and `POST /oauth/deauthorize`.
//! OAuth errors use OAuth's own shape, `{"error","error_description"}`, as Stripe's do.

use super::ApiRequest;
use super::pages::escape;
use crate::ids::{now, random_token};
use crate::objects;
use crate::sim::Sim;
use crate::state::OAuthGrant;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::json;
use std::collections::HashMap;

/// How long an authorization code stays valid; Stripe's codes are short-lived too.
const CODE_TTL_SECS: i64 = 300;
const SCOPES: &[&str] = &["read_write", "read_only"];

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({"error": error, "error_description": description}))).into_response()
}

fn error_page(message: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Stripe (simulated): error</title>\
         <main style='font-family:sans-serif;max-width:36rem;margin:3rem auto'><h1>Cannot connect</h1><p role=alert>{}</p></main>",
        escape(message)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

/// `GET /oauth/authorize`: the page where a clinic admin picks (or creates) the Stripe account
/// to connect, or denies access.
pub async fn authorize_page(State(sim): State<Sim>, Query(q): Query<HashMap<String, String>>) -> Response {
    let cfg = sim.config();
    if q.get("client_id").map(String::as_str) != Some(cfg.client_id.as_str()) {
        return error_page("Unknown client_id: this application is not registered with Stripe.");
    }
    if q.get("response_type").map(String::as_str) != Some("code") {
        return error_page("response_type must be 'code'.");
    }
    let scope = q.get("scope").map(String::as_str).unwrap_or("read_only");
    if !SCOPES.contains(&scope) {
        return error_page("scope must be read_write or read_only.");
    }
    let Some(redirect_uri) = q.get("redirect_uri").filter(|u| u.starts_with("http://") || u.starts_with("https://"))
    else {
        return error_page("A valid redirect_uri is required.");
    };
    let state = q.get("state").cloned().unwrap_or_default();
    let accounts: Vec<(String, String)> = sim.with_world(|w| {
        w.accounts
            .iter()
            .filter(|(id, _)| **id != w.platform)
            .map(|(id, a)| {
                (id.clone(), a.object["business_profile"]["name"].as_str().unwrap_or("Unnamed account").to_owned())
            })
            .collect()
    });
    let mut options = String::new();
    for (i, (id, name)) in accounts.iter().enumerate() {
        options.push_str(&format!(
            "<label><input type=radio name=account value='{id}'{}> {} <code>{id}</code></label><br>",
            if i == 0 { " checked" } else { "" },
            escape(name)
        ));
    }
    let page = format!(
        r#"<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content="width=device-width,initial-scale=1">
<title>Stripe (simulated): connect your account</title>
<main style="font-family:sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem">
<p><strong>Stripe test mode</strong> (simulated)</p>
<h1>{platform} would like to connect to your Stripe account</h1>
<p>It will be able to create payments on your account ({scope}).</p>
<form method=post action="/oauth/authorize">
<fieldset><legend>Choose an account</legend>
{options}
<label><input type=radio name=account value=new{new_checked}> Create a new test account named
<input name=business_name value="My Clinic" aria-label="New account name"></label>
<label>e-mail <input name=email type=email value="clinic@example.com"></label>
</fieldset>
<input type=hidden name=client_id value="{client_id}"><input type=hidden name=redirect_uri value="{redirect}">
<input type=hidden name=state value="{state}"><input type=hidden name=scope value="{scope}">
<p><button name=decision value=allow id=connect>Connect my Stripe account</button>
<button name=decision value=deny id=deny>Deny</button></p>
</form></main></html>"#,
        platform = escape(&cfg.platform_name),
        scope = escape(scope),
        options = options,
        new_checked = if accounts.is_empty() { " checked" } else { "" },
        client_id = escape(&cfg.client_id),
        redirect = escape(redirect_uri),
        state = escape(&state),
    );
    Html(page).into_response()
}

/// `POST /oauth/authorize`: the user's decision; redirects back to the platform.
pub async fn authorize_decision(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let cfg = sim.config();
    if req.str("client_id") != Some(cfg.client_id.as_str()) {
        return error_page("Unknown client_id.");
    }
    let Some(redirect_uri) = req.str("redirect_uri").filter(|u| u.starts_with("http://") || u.starts_with("https://"))
    else {
        return error_page("A valid redirect_uri is required.");
    };
    let state = req.str("state").unwrap_or_default();
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let encode = |pairs: &[(&str, &str)]| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().filter(|(_, v)| !v.is_empty()))
            .finish()
    };
    if req.str("decision") != Some("allow") {
        let query = encode(&[
            ("error", "access_denied"),
            ("error_description", "The user denied your request"),
            ("state", state),
        ]);
        return Redirect::to(&format!("{redirect_uri}{sep}{query}")).into_response();
    }
    let scope = req.str("scope").filter(|s| SCOPES.contains(s)).unwrap_or("read_only").to_owned();
    let code = format!("ac_{}", random_token(28));
    let picked = sim.with_world(|w| {
        let account = match req.str("account") {
            Some("new") | None => {
                let name = req.str("business_name").filter(|n| !n.trim().is_empty()).unwrap_or("New test account");
                w.create_account(req.str("email"), Some(name), "AU", "aud", false)
            }
            Some(id) if w.accounts.contains_key(id) && id != w.platform => id.to_owned(),
            Some(_) => return Err("That account does not exist."),
        };
        w.oauth_codes
            .insert(code.clone(), OAuthGrant { account, scope: scope.clone(), expires_at: now() + CODE_TTL_SECS });
        Ok(())
    });
    if let Err(msg) = picked {
        return error_page(msg);
    }
    let query = encode(&[("code", &code), ("scope", &scope), ("state", state)]);
    Redirect::to(&format!("{redirect_uri}{sep}{query}")).into_response()
}

fn client_secret_ok(sim: &Sim, req: &ApiRequest) -> bool {
    let bearer = req.header("authorization").and_then(|h| h.strip_prefix("Bearer "));
    bearer.or_else(|| req.str("client_secret")) == Some(sim.config().secret_key.as_str())
}

/// `POST /oauth/token`: exchanges a single-use code (or a refresh token) for the account's id,
/// publishable key and an access token.
pub async fn token(State(sim): State<Sim>, req: ApiRequest) -> Response {
    if !client_secret_ok(&sim, &req) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "No valid client secret (the platform's secret key) was provided.",
        );
    }
    let grant_type = req.str("grant_type").unwrap_or_default().to_owned();
    let result = sim.with_world(|w| {
        let (account, scope) = match grant_type.as_str() {
            "authorization_code" => {
                let code = req.str("code").ok_or(("invalid_request", "No authorization code provided".to_owned()))?;
                // Removing it first makes the code single-use even when the exchange fails below.
                let grant = w.oauth_codes.remove(code).ok_or((
                    "invalid_grant",
                    format!("Authorization code does not exist or was already used: {code}"),
                ))?;
                if grant.expires_at < now() {
                    return Err(("invalid_grant", format!("Authorization code expired: {code}")));
                }
                (grant.account, grant.scope)
            }
            "refresh_token" => {
                let rt = req.str("refresh_token").unwrap_or_default();
                let account =
                    w.access_tokens.get(rt).cloned().ok_or(("invalid_grant", "Invalid refresh token".to_owned()))?;
                if !w.accounts.get(&account).is_some_and(|a| a.connected) {
                    return Err(("invalid_grant", "The account has disconnected from your platform.".to_owned()));
                }
                (account, "read_write".to_owned())
            }
            _ => return Err(("unsupported_grant_type", format!("Unsupported grant type: {grant_type}"))),
        };
        let acct = w.accounts.get_mut(&account).ok_or(("invalid_grant", "The account no longer exists.".to_owned()))?;
        acct.connected = true;
        let pk = acct.publishable_key.clone();
        let access = format!("sk_test_oauth_{}", random_token(32));
        let refresh = format!("rt_{}", random_token(32));
        w.access_tokens.insert(access.clone(), account.clone());
        w.access_tokens.insert(refresh.clone(), account.clone());
        Ok(json!({
            "access_token": access, "livemode": false, "refresh_token": refresh, "scope": scope,
            "stripe_publishable_key": pk, "stripe_user_id": account, "token_type": "bearer"
        }))
    });
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err((error, description)) => oauth_error(StatusCode::BAD_REQUEST, error, &description),
    }
}

/// `POST /oauth/deauthorize` with `client_id` and `stripe_user_id`: disconnects the account and
/// sends `account.application.deauthorized` to Connect endpoints.
pub async fn deauthorize(State(sim): State<Sim>, req: ApiRequest) -> Response {
    if !client_secret_ok(&sim, &req) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "No valid client secret (the platform's secret key) was provided.",
        );
    }
    let cfg = sim.config();
    if req.str("client_id") != Some(cfg.client_id.as_str()) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "Unknown client_id.");
    }
    let Some(user) = req.str("stripe_user_id").map(str::to_owned) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "stripe_user_id is required.");
    };
    let application = objects::application(&cfg.client_id, &cfg.platform_name);
    let platform = sim.with_world(|w| w.platform.clone());
    let resp = sim.write(&platform, None, req.fingerprint(), |tx| {
        let connected = tx.world.accounts.get(&user).is_some_and(|a| a.connected && user != tx.world.platform);
        if !connected {
            return Err(crate::error::ApiError::invalid(format!(
                "Stripe user {user} is not connected to client {}.",
                cfg.client_id
            ))
            .code("invalid_client"));
        }
        let acct = tx.world.accounts.get_mut(&user).expect("checked above");
        acct.connected = false;
        tx.world.access_tokens.retain(|_, a| *a != user);
        tx.emit_for(&user, "account.application.deauthorized", &application, None);
        Ok(json!({"stripe_user_id": user}))
    });
    if resp.status().is_success() {
        resp
    } else {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            &format!("Stripe user {user} is not connected to client {}.", cfg.client_id),
        )
    }
}

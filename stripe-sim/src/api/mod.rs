//! HTTP surface: Stripe's REST routes under `/v1`, Connect OAuth under `/oauth`, the control API
//! under `/_sim`, and the pages a person uses (OAuth consent, 3-D Secure challenge, receipts,
//! dashboard, the Stripe.js stand-in).

mod accounts;
mod control;
mod events;
mod oauth;
mod pages;
mod payment_intents;
mod refunds;

use crate::error::{ApiError, ApiResult};
use crate::sim::Sim;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

/// Largest request body accepted; Stripe's own limit is far above anything callpay sends.
const MAX_BODY: usize = 256 * 1024;

/// Builds the whole router.
pub fn router(sim: Sim) -> Router {
    let v1 = Router::new()
        .route("/v1/payment_intents", post(payment_intents::create).get(payment_intents::list))
        .route("/v1/payment_intents/{id}", get(payment_intents::retrieve).post(payment_intents::update))
        .route("/v1/payment_intents/{id}/confirm", post(payment_intents::confirm))
        .route("/v1/payment_intents/{id}/cancel", post(payment_intents::cancel))
        .route("/v1/payment_methods", post(payment_intents::create_payment_method))
        .route("/v1/charges", get(refunds::list_charges))
        .route("/v1/charges/{id}", get(refunds::retrieve_charge))
        .route("/v1/refunds", post(refunds::create).get(refunds::list))
        .route("/v1/refunds/{id}", get(refunds::retrieve))
        .route("/v1/account", get(accounts::current))
        .route("/v1/accounts/{id}", get(accounts::retrieve))
        .route("/v1/events", get(events::list))
        .route("/v1/events/{id}", get(events::retrieve))
        .route("/v1/webhook_endpoints", post(events::create_endpoint).get(events::list_endpoints))
        .route("/v1/webhook_endpoints/{id}", get(events::retrieve_endpoint).delete(events::delete_endpoint))
        .layer(middleware::from_fn_with_state(sim.clone(), fault_gate));
    let js_path = sim.config().stripe_js_path.clone();
    Router::new()
        .merge(v1)
        .route("/oauth/authorize", get(oauth::authorize_page).post(oauth::authorize_decision))
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/deauthorize", post(oauth::deauthorize))
        .route("/_sim/accounts", post(control::create_account))
        .route("/_sim/reset", post(control::reset))
        .route("/_sim/faults", get(control::faults).post(control::set_faults).delete(control::clear_faults))
        .route("/_sim/deliveries", get(control::deliveries))
        .route("/_sim/receipts", get(control::receipts))
        .route("/_sim/requests", get(control::requests))
        .route("/_sim/3ds/{id}", post(payment_intents::three_ds_outcome))
        .route("/3ds/{id}", get(pages::three_ds_page))
        .route("/receipts/{id}", get(pages::receipt))
        .route("/dashboard", get(pages::dashboard))
        .route("/dashboard/{account}/test/payments/{id}", get(pages::dashboard_payment))
        .route("/dashboard/{account}/payments/{id}", get(pages::dashboard_payment))
        .route("/", get(pages::dashboard))
        .route(&js_path, get(pages::stripe_js))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(sim.clone(), record))
        .layer(middleware::from_fn(cors))
        .with_state(sim)
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::unknown_route(method.as_str(), uri.path()).into_response()
}

/// Logs `/v1` and `/oauth` requests (method, path, key kind, Idempotency-Key) for `/_sim/requests`.
async fn record(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/v1/") || path.starts_with("/oauth/") {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let secret_key = header("authorization")
            .and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned))
            .is_some_and(|k| k == sim.config().secret_key);
        let entry = crate::state::RequestRecord {
            at: crate::ids::now(),
            method: req.method().to_string(),
            path,
            secret_key,
            idempotency_key: header("idempotency-key"),
            account: header("stripe-account"),
        };
        sim.with_world(|w| crate::state::World::push_capped(&mut w.requests, entry));
    }
    next.run(req).await
}

/// Stripe's API answers browsers from any origin; Stripe.js calls it cross-origin.
async fn cors(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    if preflight {
        h.insert("access-control-allow-methods", HeaderValue::from_static("GET, POST, DELETE, OPTIONS"));
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization, content-type, stripe-account, stripe-version, idempotency-key"),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
    }
    resp
}

/// Applies `/_sim/faults` API faults before a `/v1` request runs: a delay, then an error.
/// An injected error fires before idempotency is recorded, so a retry with the same key runs
/// for real, which is exactly what a client's retry logic needs to be tested against.
async fn fault_gate(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let (delay, error) = sim.with_world(|w| {
        let f = &mut w.faults;
        let delay = (f.api_delays > 0).then(|| {
            f.api_delays -= 1;
            std::time::Duration::from_millis(f.api_delay_ms)
        });
        let error = (f.api_errors > 0).then(|| {
            f.api_errors -= 1;
            StatusCode::from_u16(f.api_error_status.unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        (delay, error)
    });
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(status) = error {
        return ApiError::transient(status).into_response();
    }
    next.run(req).await
}

/// A request reduced to what Stripe's handlers need: headers and the merged query + form params.
pub struct ApiRequest {
    /// Request headers.
    pub headers: HeaderMap,
    /// `METHOD /path`, used in idempotency fingerprints.
    pub target: String,
    /// Query and body parameters (body wins).
    pub params: Value,
}

impl<S: Send + Sync> FromRequest<S> for ApiRequest {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let target = format!("{} {}", req.method(), req.uri().path());
        let query = req.uri().query().unwrap_or_default().as_bytes().to_vec();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::invalid(format!("Could not read the request body: {e}")).into_response())?;
        if body.len() > MAX_BODY {
            return Err(ApiError::invalid("Request body too large.").into_response());
        }
        let mut params = crate::form::decode(&query);
        let is_json = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body_params = if is_json {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::invalid(format!("Invalid JSON body: {e}")).into_response())?
        } else {
            crate::form::decode(&body)
        };
        if let (Some(p), Value::Object(b)) = (params.as_object_mut(), body_params) {
            p.extend(b);
        }
        Ok(Self { headers, target, params })
    }
}

impl ApiRequest {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A parameter as text.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(Value::as_str)
    }

    /// Rejects parameters outside `allowed` (Stripe's `parameter_unknown`). `expand` and the
    /// Stripe.js parameters are always allowed.
    pub fn only(&self, allowed: &[&str]) -> ApiResult<()> {
        const ALWAYS: &[&str] = &["expand", "key", "_stripe_account", "client_secret"];
        if let Some(map) = self.params.as_object()
            && let Some(bad) = map.keys().find(|k| !allowed.contains(&k.as_str()) && !ALWAYS.contains(&k.as_str()))
        {
            return Err(ApiError::param_unknown(bad));
        }
        Ok(())
    }

    /// What the idempotency layer compares a replay against.
    pub fn fingerprint(&self) -> String {
        format!("{} {}", self.target, self.params)
    }

    /// The `Idempotency-Key` header.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.header("idempotency-key").filter(|k| !k.is_empty())
    }

    /// Whether `field` is in `expand`.
    pub fn expands(&self, field: &str) -> bool {
        match self.params.get("expand") {
            Some(Value::Array(items)) => items.iter().any(|v| v == field),
            Some(Value::String(s)) => s == field,
            _ => false,
        }
    }
}

/// Which kind of key authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The platform's secret key or an OAuth access token.
    Secret,
    /// A publishable key (Stripe.js).
    Publishable,
}

/// Who is calling and on which account.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The account the request acts on.
    pub account: String,
    /// The kind of key.
    pub kind: KeyKind,
    /// Whether `account` is a connected account rather than the platform.
    pub connected: bool,
}

impl Caller {
    /// Rejects publishable keys on secret-key-only endpoints.
    pub fn require_secret(&self) -> ApiResult<()> {
        match self.kind {
            KeyKind::Secret => Ok(()),
            KeyKind::Publishable => Err(ApiError::unauthorized(
                "This API call cannot be made with a publishable API key. Use a secret API key.",
            )),
        }
    }
}

fn mask(key: &str) -> String {
    let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    let head: String = key.chars().take(8).collect();
    format!("{head}****{tail}")
}

/// Works out the caller from `Authorization: Bearer`, or `key=pk_…` as Stripe.js sends it, and
/// the account from `Stripe-Account` or `_stripe_account`.
pub fn authenticate(sim: &Sim, req: &ApiRequest) -> ApiResult<Caller> {
    let bearer = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim);
    let key = bearer.or_else(|| req.str("key")).ok_or_else(|| {
        ApiError::unauthorized(
            "You did not provide an API key. Provide it in the Authorization header as a Bearer token.",
        )
    })?;
    let cfg = sim.config();
    sim.with_world(|w| {
        let (kind, own_account) = if key == cfg.secret_key {
            (KeyKind::Secret, None)
        } else if key == cfg.publishable_key {
            (KeyKind::Publishable, None)
        } else if let Some(acct) = w.access_tokens.get(key) {
            (KeyKind::Secret, Some(acct.clone()))
        } else if let Some((id, _)) = w.accounts.iter().find(|(_, a)| a.publishable_key == key) {
            (KeyKind::Publishable, Some(id.clone()))
        } else {
            return Err(ApiError::unauthorized(format!("Invalid API Key provided: {}", mask(key))));
        };
        let requested = req.header("stripe-account").or_else(|| req.str("_stripe_account")).map(str::to_owned);
        let account = match (own_account, requested) {
            (Some(own), Some(req)) if own != req => {
                return Err(ApiError::permission(format!("The provided key does not have access to account '{req}'.")));
            }
            (Some(own), _) => own,
            (None, Some(req)) => req,
            (None, None) => w.platform.clone(),
        };
        let connected = account != w.platform;
        let ok = w.accounts.get(&account).is_some_and(|a| a.connected);
        if !ok {
            return Err(ApiError::permission(format!(
                "The provided key '{}' does not have access to account '{account}' (or that account does not exist). \
                 Application access may have been revoked.",
                mask(key)
            )));
        }
        Ok(Caller { account, kind, connected })
    })
}

/// Shorthand for handlers.
pub fn caller(sim: &Sim, req: &ApiRequest) -> ApiResult<Caller> {
    authenticate(sim, req)
}

/// Shorthand for secret-key-only handlers.
pub fn secret_caller(sim: &Sim, req: &ApiRequest) -> ApiResult<Caller> {
    let who = caller(sim, req)?;
    who.require_secret()?;
    Ok(who)
}

/// Authenticates a control-API (`/_sim`) request: the platform secret key only.
pub fn require_platform_secret(sim: &Sim, headers: &HeaderMap) -> ApiResult<()> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|k| k == sim.config().secret_key);
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized("The simulator's control API needs the platform secret key as a Bearer token."))
    }
}

//! PaymentIntents and card PaymentMethods: create, retrieve, update, confirm, cancel, list, and
//! the 3-D Secure outcome. Confirm follows Stripe's state machine:
//! `requires_payment_method` -> (`requires_action`) -> (`processing`) -> `succeeded`, or back to
//! `requires_payment_method` with `last_payment_error` on a decline, or `canceled`.

use super::{ApiRequest, Caller, KeyKind, caller, secret_caller};
use crate::cards::{self, Behaviour, TestCard};
use crate::error::{ApiError, ApiResult};
use crate::ids::now;
use crate::money;
use crate::objects::{self, ChargeOutcome, NewPaymentIntent};
use crate::sim::{Sim, Tx};
use crate::state::{AccountData, Receipt, World};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Duration;

const CREATE_PARAMS: &[&str] = &[
    "amount",
    "currency",
    "description",
    "receipt_email",
    "metadata",
    "automatic_payment_methods",
    "payment_method_types",
    "statement_descriptor_suffix",
    "statement_descriptor",
    "application_fee_amount",
    "capture_method",
    "confirm",
    "payment_method",
    "return_url",
];
const UPDATE_PARAMS: &[&str] = &[
    "amount",
    "currency",
    "description",
    "receipt_email",
    "metadata",
    "statement_descriptor_suffix",
    "application_fee_amount",
    "payment_method",
];
const CONFIRM_PARAMS: &[&str] = &["payment_method", "receipt_email", "return_url", "use_stripe_sdk"];
const CANCEL_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer", "abandoned"];
const CANCELABLE: &[&str] =
    &["requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"];
/// Stripe's limits on metadata.
const METADATA_MAX_KEYS: usize = 50;
const METADATA_MAX_KEY_LEN: usize = 40;
const METADATA_MAX_VALUE_LEN: usize = 500;

/// `POST /v1/payment_intents`.
pub async fn create(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.write(&who.account, req.idempotency_key(), req.fingerprint(), |tx| {
        req.only(CREATE_PARAMS)?;
        let currency = money::currency(req.params.get("currency"))?;
        let amount = money::amount(req.params.get("amount"), &currency)?;
        let automatic = match req.params.get("automatic_payment_methods") {
            Some(v) => bool_param(&v["enabled"], "automatic_payment_methods[enabled]")?,
            None => req.params.get("payment_method_types").is_none(),
        };
        let types = payment_method_types(&req, automatic)?;
        let fee = application_fee(&req, amount, &who)?;
        match req.str("capture_method") {
            None | Some("automatic") | Some("automatic_async") => {}
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "capture_method '{other}' is not supported by the simulator (only automatic capture)."
                ))
                .param("capture_method"));
            }
        }
        let application = who.connected.then_some(tx.client_id.clone());
        let pi = objects::payment_intent(&NewPaymentIntent {
            amount,
            currency: &currency,
            description: text_param(&req, "description", 1000)?,
            receipt_email: email_param(&req)?,
            metadata: metadata(req.params.get("metadata"), &json!({}))?,
            automatic_payment_methods: automatic,
            payment_method_types: types,
            statement_descriptor_suffix: text_param(&req, "statement_descriptor_suffix", 22)?,
            application_fee_amount: fee,
            application: application.as_deref(),
        });
        let id = pi["id"].as_str().unwrap_or_default().to_owned();
        tx.acct().payment_intents.insert(pi.clone());
        tx.emit("payment_intent.created", &pi, None);
        if bool_param(req.params.get("confirm").unwrap_or(&Value::Null), "confirm")? {
            confirm_in(tx, &id, &req)?;
        }
        Ok(expand(tx.acct(), &id, &req))
    })
}

/// `GET /v1/payment_intents/{id}`: secret key, or publishable key with the client secret.
pub async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.read(|w| {
        let acct = w.account(&who.account)?;
        find(acct, &id, &req, &who)?;
        Ok(expand(acct, &id, &req))
    })
}

/// `POST /v1/payment_intents/{id}`.
pub async fn update(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.write(&who.account, req.idempotency_key(), req.fingerprint(), |tx| {
        req.only(UPDATE_PARAMS)?;
        let pi = find(tx.acct(), &id, &req, &who)?.clone();
        let status = pi["status"].as_str().unwrap_or_default();
        if !matches!(status, "requires_payment_method" | "requires_confirmation" | "requires_action") {
            return Err(unexpected_state(
                &pi,
                &format!("You cannot update this PaymentIntent because it has a status of {status}."),
            ));
        }
        let currency = match req.params.get("currency") {
            Some(c) => money::currency(Some(c))?,
            None => pi["currency"].as_str().unwrap_or("aud").to_owned(),
        };
        let mut changes = serde_json::Map::new();
        if req.params.get("amount").is_some() || req.params.get("currency").is_some() {
            let amount = match req.params.get("amount") {
                Some(a) => money::amount(Some(a), &currency)?,
                None => money::amount(Some(&pi["amount"]), &currency)?,
            };
            changes.insert("amount".into(), json!(amount));
            changes.insert("currency".into(), json!(currency));
        }
        if req.params.get("description").is_some() {
            changes.insert("description".into(), json!(text_param(&req, "description", 1000)?));
        }
        if req.params.get("receipt_email").is_some() {
            changes.insert("receipt_email".into(), json!(email_param(&req)?));
        }
        if req.params.get("statement_descriptor_suffix").is_some() {
            changes.insert(
                "statement_descriptor_suffix".into(),
                json!(text_param(&req, "statement_descriptor_suffix", 22)?),
            );
        }
        if let Some(m) = req.params.get("metadata") {
            changes.insert("metadata".into(), metadata(Some(m), &pi["metadata"])?);
        }
        if req.params.get("application_fee_amount").is_some() {
            let amount = changes.get("amount").and_then(Value::as_i64).or(pi["amount"].as_i64()).unwrap_or(0);
            changes.insert("application_fee_amount".into(), json!(application_fee(&req, amount, &who)?));
        }
        if let Some(pm) = req.str("payment_method") {
            let pm = resolve_payment_method(tx.acct(), pm)?;
            changes.insert("payment_method".into(), pm["id"].clone());
        }
        let stored = tx.acct().payment_intents.get_mut(&id).expect("found above");
        for (k, v) in changes {
            stored[k.as_str()] = v;
        }
        Ok(expand(tx.acct(), &id, &req))
    })
}

/// `POST /v1/payment_intents/{id}/confirm`: secret key, or Stripe.js with the client secret.
pub async fn confirm(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.write(&who.account, req.idempotency_key(), req.fingerprint(), |tx| {
        req.only(CONFIRM_PARAMS)?;
        find(tx.acct(), &id, &req, &who)?;
        confirm_in(tx, &id, &req)?;
        Ok(expand(tx.acct(), &id, &req))
    })
}

/// `POST /v1/payment_intents/{id}/cancel`.
pub async fn cancel(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.write(&who.account, req.idempotency_key(), req.fingerprint(), |tx| {
        req.only(&["cancellation_reason"])?;
        let reason = req.str("cancellation_reason");
        if let Some(r) = reason
            && !CANCEL_REASONS.contains(&r)
        {
            return Err(ApiError::invalid(format!(
                "Invalid cancellation_reason: must be one of {}",
                CANCEL_REASONS.join(", ")
            ))
            .param("cancellation_reason"));
        }
        let pi = find(tx.acct(), &id, &req, &who)?.clone();
        let status = pi["status"].as_str().unwrap_or_default();
        if !CANCELABLE.contains(&status) {
            return Err(unexpected_state(
                &pi,
                &format!(
                    "You cannot cancel this PaymentIntent because it has a status of {status}. \
                     Only a PaymentIntent with one of the following statuses may be canceled: {}.",
                    CANCELABLE.join(", ")
                ),
            ));
        }
        let stored = tx.acct().payment_intents.get_mut(&id).expect("found above");
        stored["status"] = json!("canceled");
        stored["canceled_at"] = json!(now());
        stored["cancellation_reason"] = json!(reason);
        stored["next_action"] = Value::Null;
        let pi = stored.clone();
        tx.emit("payment_intent.canceled", &pi, Some(json!({"status": status})));
        Ok(expand(tx.acct(), &id, &req))
    })
}

/// `GET /v1/payment_intents`.
pub async fn list(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.read(|w| w.account(&who.account)?.payment_intents.page(&req.params, "/v1/payment_intents", |_| true))
}

/// `POST /v1/payment_methods` with `type=card` and raw card details, as Stripe.js sends it.
pub async fn create_payment_method(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.write(&who.account, req.idempotency_key(), req.fingerprint(), |tx| {
        req.only(&["type", "card", "billing_details", "metadata"])?;
        if req.str("type") != Some("card") {
            return Err(
                ApiError::invalid("Only type=card PaymentMethods are supported by the simulator.").param("type")
            );
        }
        let card = &req.params["card"];
        let number: String =
            card["number"].as_str().unwrap_or_default().chars().filter(|c| !c.is_whitespace()).collect();
        let test_card = cards::by_number(&number).ok_or_else(|| {
            ApiError::card("incorrect_number", None, "Your card number is incorrect.").param("card[number]")
        })?;
        let month = card.get("exp_month").map(|v| money::integer(v, "card[exp_month]")).transpose()?.unwrap_or(0);
        let year = card.get("exp_year").map(|v| money::integer(v, "card[exp_year]")).transpose()?.unwrap_or(0);
        let year = if (0..100).contains(&year) { 2000 + year } else { year };
        if !(1..=12).contains(&month) {
            return Err(ApiError::card("invalid_expiry_month", None, "Your card's expiration month is invalid.")
                .param("card[exp_month]"));
        }
        let (this_year, this_month) = current_year_month();
        if year < this_year || (year == this_year && month < this_month) || year > this_year + 50 {
            return Err(ApiError::card("invalid_expiry_year", None, "Your card's expiration year is invalid.")
                .param("card[exp_year]"));
        }
        let cvc = card["cvc"].as_str().unwrap_or_default();
        if !(3..=4).contains(&cvc.len()) || !cvc.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::card("invalid_cvc", None, "Your card's security code is invalid.").param("card[cvc]"));
        }
        let email = req.params["billing_details"]["email"].as_str();
        let pm = objects::payment_method(&test_card, &number[number.len() - 4..], month, year, email);
        let acct = tx.acct();
        acct.pm_cards.insert(pm["id"].as_str().unwrap_or_default().to_owned(), test_card);
        acct.payment_methods.insert(pm.clone());
        Ok(pm)
    })
}

/// `POST /_sim/3ds/{id}` with `outcome=complete|fail`: the customer's answer to the 3-D Secure
/// challenge, sent by the Stripe.js stand-in or the challenge page.
pub async fn three_ds_outcome(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.write(&who.account, None, req.fingerprint(), |tx| {
        let pi = find(tx.acct(), &id, &req, &who)?.clone();
        if pi["status"] != "requires_action" {
            return Err(unexpected_state(&pi, "This PaymentIntent is not waiting for authentication."));
        }
        let pm_id = pi["payment_method"].as_str().unwrap_or_default().to_owned();
        let pm = tx.acct().payment_methods.get(&pm_id).cloned().unwrap_or(Value::Null);
        match req.str("outcome") {
            Some("complete") => succeed_or_process(tx, &id, &pm, true),
            Some("fail") => {
                let error = json!({
                    "type": "invalid_request_error",
                    "code": "payment_intent_authentication_failure",
                    "doc_url": "https://stripe.com/docs/error-codes/payment-intent-authentication-failure",
                    "message": "The provided PaymentMethod has failed authentication. Provide a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
                    "payment_method": pm,
                });
                let stored = tx.acct().payment_intents.get_mut(&id).expect("found above");
                stored["status"] = json!("requires_payment_method");
                stored["next_action"] = Value::Null;
                stored["payment_method"] = Value::Null;
                stored["last_payment_error"] = error;
                let pi = stored.clone();
                tx.emit("payment_intent.payment_failed", &pi, Some(json!({"status": "requires_action"})));
            }
            _ => return Err(ApiError::invalid("outcome must be 'complete' or 'fail'.").param("outcome")),
        }
        Ok(expand(tx.acct(), &id, &req))
    })
}

/// Looks up a PaymentIntent; a publishable caller must present its client secret.
fn find<'a>(acct: &'a AccountData, id: &str, req: &ApiRequest, who: &Caller) -> ApiResult<&'a Value> {
    let pi = acct.payment_intents.get(id).ok_or_else(|| ApiError::missing("payment_intent", id, "intent"))?;
    if who.kind == KeyKind::Publishable && req.str("client_secret") != pi["client_secret"].as_str() {
        // Same answer as for a missing intent, so a wrong secret leaks nothing.
        return Err(ApiError::missing("payment_intent", id, "intent"));
    }
    Ok(pi)
}

/// The confirm step shared by `/confirm` and `confirm=true` on create.
fn confirm_in(tx: &mut Tx<'_>, id: &str, req: &ApiRequest) -> ApiResult<()> {
    let pi = tx.acct().payment_intents.get(id).cloned().expect("caller checked it exists");
    let status = pi["status"].as_str().unwrap_or_default().to_owned();
    if !matches!(status.as_str(), "requires_payment_method" | "requires_confirmation" | "requires_action") {
        return Err(unexpected_state(
            &pi,
            &format!("You cannot confirm this PaymentIntent because it has a status of {status}."),
        ));
    }
    let pm_ref =
        req.str("payment_method").map(str::to_owned).or_else(|| pi["payment_method"].as_str().map(str::to_owned));
    let Some(pm_ref) = pm_ref else {
        return Err(unexpected_state(
            &pi,
            "You cannot confirm this PaymentIntent because it's missing a payment method. Update it with a payment_method and then confirm it again.",
        ));
    };
    let receipt = email_param(req)?.map(str::to_owned);
    let pm = resolve_payment_method(tx.acct(), &pm_ref)?;
    let card =
        tx.acct().pm_cards.get(pm["id"].as_str().unwrap_or_default()).copied().expect("every stored pm has its card");
    let forced = tx.world.faults.decline_next_confirm.take();
    let behaviour = match forced.as_deref() {
        Some("insufficient_funds") => {
            Behaviour::Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")
        }
        Some("expired_card") => Behaviour::Decline("expired_card", "expired_card", "Your card has expired."),
        Some(_) => Behaviour::Decline("card_declined", "generic_decline", "Your card was declined."),
        None => card.behaviour,
    };
    {
        let stored = tx.acct().payment_intents.get_mut(id).expect("exists");
        if let Some(email) = &receipt {
            stored["receipt_email"] = json!(email);
        }
        stored["payment_method"] = pm["id"].clone();
        stored["last_payment_error"] = Value::Null;
    }
    match behaviour {
        Behaviour::Succeed => succeed_or_process(tx, id, &pm, false),
        Behaviour::RequireAuthentication => {
            let return_url = req.str("return_url").map(str::to_owned);
            let base = tx.base_url.clone();
            let account_param = tx_account(&tx.account, &tx.world.platform);
            let stored = tx.acct().payment_intents.get_mut(id).expect("exists");
            let secret = stored["client_secret"].as_str().unwrap_or_default().to_owned();
            stored["status"] = json!("requires_action");
            stored["next_action"] = json!({
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "url": format!("{base}3ds/{id}?client_secret={secret}&account={account_param}"),
                    "return_url": return_url,
                }
            });
            let pi = stored.clone();
            tx.emit("payment_intent.requires_action", &pi, Some(json!({"status": status})));
        }
        Behaviour::Decline(code, decline, message) => {
            let pi_now = tx.acct().payment_intents.get(id).cloned().expect("exists");
            let charge =
                objects::charge(&pi_now, &pm, &ChargeOutcome::Failed(code, decline, message), false, &tx.base_url);
            tx.acct().charges.insert(charge.clone());
            tx.emit("charge.failed", &charge, None);
            let error = json!({
                "type": "card_error", "code": code, "decline_code": decline, "message": message,
                "charge": charge["id"], "payment_method": pm,
                "doc_url": format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")),
            });
            let stored = tx.acct().payment_intents.get_mut(id).expect("exists");
            stored["status"] = json!("requires_payment_method");
            stored["payment_method"] = Value::Null;
            stored["latest_charge"] = charge["id"].clone();
            stored["last_payment_error"] = error;
            let pi = stored.clone();
            tx.emit("payment_intent.payment_failed", &pi, Some(json!({"status": status})));
            return Err(ApiError::card(code, Some(decline), message)
                .with("charge", charge["id"].clone())
                .with("payment_intent", pi)
                .with("payment_method", pm));
        }
    }
    Ok(())
}

fn tx_account(account: &str, platform: &str) -> String {
    if account == platform { String::new() } else { account.to_owned() }
}

/// A card that the issuer approves: straight to `succeeded`, or through `processing` when the
/// `processing_delay_ms` fault is set.
fn succeed_or_process(tx: &mut Tx<'_>, id: &str, pm: &Value, three_d_secure: bool) {
    let delay = tx.world.faults.processing_delay_ms;
    let Some(ms) = delay else {
        complete(tx, id, pm, three_d_secure);
        return;
    };
    let stored = tx.acct().payment_intents.get_mut(id).expect("exists");
    let before = stored["status"].clone();
    stored["status"] = json!("processing");
    stored["next_action"] = Value::Null;
    stored["processing"] = json!({"type": "card", "card": {}});
    let pi = stored.clone();
    tx.emit("payment_intent.processing", &pi, Some(json!({"status": before})));
    let (id, pm) = (id.to_owned(), pm.clone());
    tx.later.push((
        Duration::from_millis(ms),
        Box::new(move |tx: &mut Tx<'_>| {
            // The account may have been reset meanwhile; then there is nothing left to finish.
            let still_processing = tx
                .world
                .accounts
                .get(&tx.account)
                .and_then(|a| a.payment_intents.get(&id))
                .is_some_and(|pi| pi["status"] == "processing");
            if still_processing {
                complete(tx, &id, &pm, three_d_secure);
            }
        }),
    ));
}

/// Captures the payment: a succeeded charge, the intent `succeeded`, a receipt e-mail queued.
fn complete(tx: &mut Tx<'_>, id: &str, pm: &Value, three_d_secure: bool) {
    let pi_now = tx.acct().payment_intents.get(id).cloned().expect("exists");
    let before = pi_now["status"].clone();
    let charge = objects::charge(&pi_now, pm, &ChargeOutcome::Succeeded, three_d_secure, &tx.base_url);
    tx.acct().charges.insert(charge.clone());
    tx.emit("charge.succeeded", &charge, None);
    let stored = tx.acct().payment_intents.get_mut(id).expect("exists");
    stored["status"] = json!("succeeded");
    stored["amount_received"] = stored["amount"].clone();
    stored["latest_charge"] = charge["id"].clone();
    stored["payment_method"] = pm["id"].clone();
    stored["next_action"] = Value::Null;
    stored["processing"] = Value::Null;
    stored["last_payment_error"] = Value::Null;
    let pi = stored.clone();
    if let Some(to) = pi["receipt_email"].as_str() {
        let receipt = Receipt {
            at: now(),
            to: to.to_owned(),
            account: tx.account.clone(),
            charge: charge["id"].as_str().unwrap_or_default().to_owned(),
            amount: pi["amount"].as_i64().unwrap_or(0),
            currency: pi["currency"].as_str().unwrap_or_default().to_owned(),
            receipt_url: charge["receipt_url"].as_str().unwrap_or_default().to_owned(),
        };
        World::push_capped(&mut tx.world.receipts, receipt);
    }
    tx.emit("payment_intent.succeeded", &pi, Some(json!({"status": before})));
}

/// Finds a stored PaymentMethod, or makes one for a `pm_card_*` test id.
fn resolve_payment_method(acct: &mut AccountData, id: &str) -> ApiResult<Value> {
    if let Some(pm) = acct.payment_methods.get(id) {
        return Ok(pm.clone());
    }
    let card: &TestCard =
        cards::by_pm_id(id).ok_or_else(|| ApiError::missing("payment_method", id, "payment_method"))?;
    let (year, _) = current_year_month();
    let pm = objects::payment_method(card, &card.number[card.number.len() - 4..], 12, year + 3, None);
    acct.pm_cards.insert(pm["id"].as_str().unwrap_or_default().to_owned(), *card);
    acct.payment_methods.insert(pm.clone());
    Ok(pm)
}

/// The intent as JSON, with `latest_charge` / `payment_method` expanded when asked.
fn expand(acct: &AccountData, id: &str, req: &ApiRequest) -> Value {
    let mut pi = acct.payment_intents.get(id).cloned().unwrap_or(Value::Null);
    if req.expands("latest_charge")
        && let Some(ch) = pi["latest_charge"].as_str().and_then(|c| acct.charges.get(c))
    {
        pi["latest_charge"] = ch.clone();
    }
    if req.expands("payment_method")
        && let Some(pm) = pi["payment_method"].as_str().and_then(|p| acct.payment_methods.get(p))
    {
        pi["payment_method"] = pm.clone();
    }
    pi
}

fn unexpected_state(pi: &Value, message: &str) -> ApiError {
    ApiError::invalid(message).code("payment_intent_unexpected_state").with("payment_intent", pi.clone())
}

fn bool_param(raw: &Value, param: &str) -> ApiResult<bool> {
    match raw {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err(ApiError::invalid(format!("Invalid boolean: {raw}")).code("parameter_invalid_boolean").param(param)),
    }
}

fn text_param<'a>(req: &'a ApiRequest, name: &str, max: usize) -> ApiResult<Option<&'a str>> {
    match req.params.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s)),
        Some(Value::String(_)) => {
            Err(ApiError::invalid(format!("{name} must be at most {max} characters.")).param(name))
        }
        Some(_) => {
            Err(ApiError::invalid(format!("Invalid string: {name}")).code("parameter_invalid_string").param(name))
        }
    }
}

fn email_param(req: &ApiRequest) -> ApiResult<Option<&str>> {
    let Some(email) = text_param(req, "receipt_email", 800)? else { return Ok(None) };
    let valid = email.split_once('@').is_some_and(|(user, host)| {
        !user.is_empty()
            && host.contains('.')
            && !host.starts_with('.')
            && !host.ends_with('.')
            && !email.contains(char::is_whitespace)
    });
    if valid {
        Ok(Some(email))
    } else {
        Err(ApiError::invalid(format!("Invalid email address: {email}")).code("email_invalid").param("receipt_email"))
    }
}

fn payment_method_types(req: &ApiRequest, automatic: bool) -> ApiResult<Vec<String>> {
    let Some(raw) = req.params.get("payment_method_types") else {
        return Ok(vec!["card".into()]);
    };
    if automatic {
        return Err(ApiError::invalid(
            "You may only specify one of these parameters: automatic_payment_methods, payment_method_types.",
        )
        .param("payment_method_types"));
    }
    let items: Vec<String> = match raw {
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    };
    if items.is_empty() {
        return Err(
            ApiError::invalid("payment_method_types must list at least one type.").param("payment_method_types")
        );
    }
    if let Some(bad) = items.iter().find(|t| t.as_str() != "card") {
        return Err(ApiError::invalid(format!(
            "The payment method type \"{bad}\" is invalid or not supported by the simulator (only card)."
        ))
        .code("payment_method_invalid_parameter")
        .param("payment_method_types"));
    }
    Ok(items)
}

fn application_fee(req: &ApiRequest, amount: i64, who: &Caller) -> ApiResult<Option<i64>> {
    let Some(raw) = req.params.get("application_fee_amount") else { return Ok(None) };
    let fee = money::integer(raw, "application_fee_amount")?;
    if !who.connected {
        return Err(ApiError::invalid(
            "Can only apply an application_fee_amount when the PaymentIntent is a direct charge on a connected account (Stripe-Account header).",
        )
        .param("application_fee_amount"));
    }
    if fee < 0 || fee > amount {
        return Err(ApiError::invalid("application_fee_amount must be between 0 and the amount.")
            .param("application_fee_amount"));
    }
    Ok(Some(fee))
}

/// Validates metadata and merges it onto `existing`; an empty value removes a key, as in Stripe.
pub(crate) fn metadata(raw: Option<&Value>, existing: &Value) -> ApiResult<Value> {
    let mut merged = existing.as_object().cloned().unwrap_or_default();
    let Some(raw) = raw else { return Ok(Value::Object(merged)) };
    let Some(map) = raw.as_object() else {
        if raw.as_str() == Some("") {
            return Ok(json!({}));
        }
        return Err(ApiError::invalid("Invalid object: metadata must be a map of strings.").param("metadata"));
    };
    for (k, v) in map {
        let Some(v) = v.as_str() else {
            return Err(
                ApiError::invalid(format!("Invalid metadata value for '{k}': must be a string.")).param("metadata")
            );
        };
        if k.chars().count() > METADATA_MAX_KEY_LEN || v.chars().count() > METADATA_MAX_VALUE_LEN {
            return Err(ApiError::invalid(format!(
                "Metadata keys can be at most {METADATA_MAX_KEY_LEN} characters and values at most {METADATA_MAX_VALUE_LEN}."
            ))
            .param(&format!("metadata[{k}]")));
        }
        if v.is_empty() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), json!(v));
        }
    }
    if merged.len() > METADATA_MAX_KEYS {
        return Err(ApiError::invalid(format!("Metadata can have at most {METADATA_MAX_KEYS} keys.")).param("metadata"));
    }
    Ok(Value::Object(merged))
}

fn current_year_month() -> (i64, i64) {
    // Civil date from Unix days (Howard Hinnant's algorithm), to avoid a date-time dependency.
    let days = now().div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_merges_and_unsets() {
        let merged = metadata(Some(&json!({"a": "1", "b": ""})), &json!({"b": "x", "c": "y"})).unwrap();
        assert_eq!(merged, json!({"a": "1", "c": "y"}));
        assert!(metadata(Some(&json!({"k": {"nested": "x"}})), &json!({})).is_err());
        let long_key = "k".repeat(41);
        assert!(metadata(Some(&json!({long_key: "v"})), &json!({})).is_err());
    }

    #[test]
    fn current_date_is_plausible() {
        let (y, m) = current_year_month();
        assert!(y >= 2025 && (1..=12).contains(&m));
    }
}

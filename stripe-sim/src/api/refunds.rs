//! Charges (read-only, created by confirm) and refunds, full or partial, by PaymentIntent or charge.
//! A refund of Stripe's `refund_fail` test card (4000 0000 0000 5126) is accepted, then fails a
//! moment later as Stripe's does: `refund.updated` and `refund.failed` with a `failure_reason`,
//! `charge.refund.updated`, and the amount counts as unrefunded on the charge again.

use super::{ApiRequest, secret_caller};
use crate::error::ApiError;
use crate::money;
use crate::objects;
use crate::sim::{Sim, Tx};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

/// How long after it was accepted a refund of the `refund_fail` card fails.
const REFUND_FAILS_AFTER: Duration = Duration::from_millis(300);

const REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

/// `GET /v1/charges/{id}`.
pub async fn retrieve_charge(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.read(|w| {
        w.account(&who.account)?.charges.get(&id).cloned().ok_or_else(|| ApiError::missing("charge", &id, "id"))
    })
}

/// `GET /v1/charges`, optionally filtered by `payment_intent`.
pub async fn list_charges(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let pi = req.str("payment_intent").map(str::to_owned);
    sim.read(|w| {
        w.account(&who.account)?
            .charges
            .page(&req.params, "/v1/charges", |c| pi.as_deref().is_none_or(|p| c["payment_intent"] == p))
    })
}

/// `GET /v1/refunds/{id}`.
pub async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.read(|w| {
        w.account(&who.account)?.refunds.get(&id).cloned().ok_or_else(|| ApiError::missing("refund", &id, "id"))
    })
}

/// `GET /v1/refunds`, optionally filtered by `payment_intent` or `charge`.
pub async fn list(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let pi = req.str("payment_intent").map(str::to_owned);
    let ch = req.str("charge").map(str::to_owned);
    sim.read(|w| {
        w.account(&who.account)?.refunds.page(&req.params, "/v1/refunds", |r| {
            pi.as_deref().is_none_or(|p| r["payment_intent"] == p) && ch.as_deref().is_none_or(|c| r["charge"] == c)
        })
    })
}

/// `POST /v1/refunds`: refunds `amount` (default: all that remains) of a succeeded charge.
pub async fn create(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.write(&who.account, req.idempotency_key(), req.fingerprint(), |tx| {
        req.only(&["payment_intent", "charge", "amount", "reason", "metadata"])?;
        let acct = tx.acct();
        let charge_id = match (req.str("charge"), req.str("payment_intent")) {
            (None, None) => {
                return Err(ApiError::invalid(
                    "One of the following params should be provided for this request: payment_intent or charge.",
                )
                .code("parameter_missing"));
            }
            (Some(ch), pi) => {
                let charge = acct.charges.get(ch).ok_or_else(|| ApiError::missing("charge", ch, "charge"))?;
                if let Some(pi) = pi
                    && charge["payment_intent"] != pi
                {
                    return Err(ApiError::invalid(format!("Charge {ch} does not belong to PaymentIntent {pi}."))
                        .param("charge"));
                }
                ch.to_owned()
            }
            (None, Some(pi_id)) => {
                let pi = acct
                    .payment_intents
                    .get(pi_id)
                    .ok_or_else(|| ApiError::missing("payment_intent", pi_id, "payment_intent"))?;
                match (pi["status"].as_str(), pi["latest_charge"].as_str()) {
                    (Some("succeeded"), Some(ch)) => ch.to_owned(),
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "This PaymentIntent ({pi_id}) does not have a successful charge to refund."
                        ))
                        .code("charge_not_refundable")
                        .param("payment_intent"));
                    }
                }
            }
        };
        let charge = acct.charges.get(&charge_id).cloned().expect("resolved above");
        if charge["status"] != "succeeded" {
            return Err(ApiError::invalid(format!("Charge {charge_id} has not succeeded, so it cannot be refunded."))
                .code("charge_not_refundable"));
        }
        let total = charge["amount"].as_i64().unwrap_or(0);
        let refunded = charge["amount_refunded"].as_i64().unwrap_or(0);
        let remaining = total - refunded;
        let currency = charge["currency"].as_str().unwrap_or_default();
        if remaining == 0 {
            return Err(ApiError::invalid(format!("Charge {charge_id} has already been refunded."))
                .code("charge_already_refunded")
                .param("charge"));
        }
        let amount = match req.params.get("amount") {
            None => remaining,
            Some(raw) => money::integer(raw, "amount")?,
        };
        if amount <= 0 {
            return Err(ApiError::invalid("Refund amount must be positive.")
                .code("parameter_invalid_integer")
                .param("amount"));
        }
        if amount > remaining {
            return Err(ApiError::invalid(format!(
                "Refund amount ({}) is greater than unrefunded amount on charge ({}).",
                money::display(amount, currency),
                money::display(remaining, currency)
            ))
            .code("amount_too_large")
            .param("amount"));
        }
        let reason = req.str("reason");
        if let Some(r) = reason
            && !REASONS.contains(&r)
        {
            return Err(
                ApiError::invalid(format!("Invalid reason: must be one of {}", REASONS.join(", "))).param("reason")
            );
        }
        let metadata = super::payment_intents::metadata(req.params.get("metadata"), &json!({}))?;
        let refund = objects::refund(&charge, amount, reason, metadata);
        acct.refunds.insert(refund.clone());
        let stored = acct.charges.get_mut(&charge_id).expect("exists");
        stored["amount_refunded"] = json!(refunded + amount);
        stored["refunded"] = json!(refunded + amount == total);
        if let Some(data) = stored["refunds"]["data"].as_array_mut() {
            data.insert(0, refund.clone());
        }
        let charge_now = stored.clone();
        tx.emit("refund.created", &refund, None);
        tx.emit("charge.refunded", &charge_now, Some(json!({"amount_refunded": refunded, "refunded": false})));
        if charge["payment_method_details"]["card"]["last4"] == crate::cards::REFUND_FAIL_LAST4 {
            let (refund_id, charge_id) = (refund["id"].as_str().unwrap_or_default().to_owned(), charge_id.clone());
            tx.later
                .push((REFUND_FAILS_AFTER, Box::new(move |tx: &mut Tx<'_>| fail_refund(tx, &refund_id, &charge_id))));
        }
        Ok(refund)
    })
}

/// The bank returned a refund: it becomes `failed`, its amount is unrefunded on the charge again,
/// and Stripe's events for it are sent.
fn fail_refund(tx: &mut Tx<'_>, refund_id: &str, charge_id: &str) {
    let Some(acct) = tx.world.accounts.get_mut(&tx.account) else { return };
    let Some(refund) = acct.refunds.get_mut(refund_id) else { return };
    if refund["status"] != "succeeded" {
        return;
    }
    refund["status"] = json!("failed");
    refund["failure_reason"] = json!(crate::cards::REFUND_FAILURE_REASON);
    refund["failure_balance_transaction"] = json!(crate::ids::new_id("txn"));
    let refund = refund.clone();
    let amount = refund["amount"].as_i64().unwrap_or(0);
    if let Some(charge) = acct.charges.get_mut(charge_id) {
        let refunded = charge["amount_refunded"].as_i64().unwrap_or(0);
        charge["amount_refunded"] = json!((refunded - amount).max(0));
        charge["refunded"] = json!(false);
        if let Some(data) = charge["refunds"]["data"].as_array_mut() {
            for r in data.iter_mut().filter(|r| r["id"] == refund_id) {
                *r = refund.clone();
            }
        }
    }
    tx.emit("refund.updated", &refund, Some(json!({"status": "succeeded", "failure_reason": null})));
    tx.emit("refund.failed", &refund, None);
    tx.emit("charge.refund.updated", &refund, Some(json!({"status": "succeeded"})));
}

//! Builders for the JSON objects the simulator returns. Each carries every field of Stripe's own
//! example for that resource (`shared/stripe/fixtures3.json`), with values that follow from the
//! request, so generated client types parse them exactly as they parse Stripe's answers.

use crate::cards::TestCard;
use crate::ids::{new_id, now, random_token};
use serde_json::{Value, json};

/// The API version the simulator renders objects and events in (async-stripe 1.0-rc.10's).
pub const API_VERSION: &str = "2026-09-30.endive";

/// An empty Stripe list object for `url`.
pub fn list(url: &str, data: Vec<Value>, has_more: bool) -> Value {
    json!({ "object": "list", "data": data, "has_more": has_more, "url": url })
}

fn null_address() -> Value {
    json!({"city": null, "country": null, "line1": null, "line2": null, "postal_code": null, "state": null})
}

fn requirements(currently_due: &[&str]) -> Value {
    json!({
        "alternatives": [], "current_deadline": null, "currently_due": currently_due,
        "disabled_reason": null, "errors": [], "eventually_due": currently_due,
        "past_due": [], "pending_verification": []
    })
}

/// A Standard connected account (or the platform's own account).
pub fn account(id: &str, email: Option<&str>, business_name: Option<&str>, country: &str, currency: &str) -> Value {
    json!({
        "id": id,
        "object": "account",
        "business_profile": {
            "annual_revenue": {"amount": null, "currency": null, "fiscal_year_end": null},
            "estimated_worker_count": null, "mcc": "8011", "name": business_name,
            "product_description": "Telehealth consultations", "support_address": null_address(),
            "support_email": email, "support_phone": null, "support_url": null, "url": null,
            "minority_owned_business_designation": null
        },
        "business_type": "company",
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": true,
        "controller": {"type": "account"},
        "country": country,
        "created": now(),
        "default_currency": currency,
        "details_submitted": true,
        "email": email,
        "external_accounts": list(&format!("/v1/accounts/{id}/external_accounts"), vec![], false),
        "future_requirements": requirements(&[]),
        "metadata": {},
        "payouts_enabled": true,
        "requirements": requirements(&[]),
        "settings": {
            "bacs_debit_payments": {"display_name": null, "service_user_number": null},
            "branding": {"icon": null, "logo": null, "primary_color": null, "secondary_color": null},
            "card_issuing": {"tos_acceptance": {"date": null, "ip": null}},
            "card_payments": {
                "decline_on": {"avs_failure": false, "cvc_failure": true},
                "statement_descriptor_prefix": null, "statement_descriptor_prefix_kana": null,
                "statement_descriptor_prefix_kanji": null
            },
            "dashboard": {"display_name": business_name, "timezone": "Australia/Sydney"},
            "invoices": {"default_account_tax_ids": null, "hosted_payment_method_save": null},
            "payments": {
                "statement_descriptor": business_name.map(|n| n.to_uppercase().chars().take(22).collect::<String>()),
                "statement_descriptor_kana": null, "statement_descriptor_kanji": null,
                "statement_descriptor_prefix_kana": null, "statement_descriptor_prefix_kanji": null
            },
            "payouts": {"debit_negative_balances": true, "schedule": {"delay_days": 2, "interval": "daily"}, "statement_descriptor": null},
            "sepa_debit_payments": {}
        },
        "tos_acceptance": {"date": now(), "ip": "127.0.0.1", "user_agent": null},
        "type": "standard"
    })
}

/// A card PaymentMethod for `card` with the given expiry.
pub fn payment_method(card: &TestCard, last4: &str, exp_month: i64, exp_year: i64, email: Option<&str>) -> Value {
    json!({
        "id": new_id("pm"),
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {"address": null_address(), "email": email, "name": null, "phone": null, "tax_id": null},
        "card": {
            "brand": card.brand,
            "checks": {"address_line1_check": null, "address_postal_code_check": null, "cvc_check": "pass"},
            "country": "AU",
            "display_brand": card.brand,
            "exp_month": exp_month,
            "exp_year": exp_year,
            "fingerprint": fingerprint(last4, card.brand),
            "funding": card.funding,
            "generated_from": null,
            "last4": last4,
            "networks": {"available": [card.brand], "preferred": null},
            "three_d_secure_usage": {"supported": true},
            "wallet": null,
            "regulated_status": "unregulated"
        },
        "created": now(),
        "customer": null,
        "customer_account": null,
        "livemode": false,
        "metadata": {},
        "type": "card"
    })
}

/// Stable per-card fingerprint, as Stripe gives the same card the same fingerprint.
fn fingerprint(last4: &str, brand: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{brand}:{last4}"));
    hex::encode(&digest[..8])
}

/// Inputs for a new PaymentIntent, already validated.
pub struct NewPaymentIntent<'a> {
    /// Amount in minor units.
    pub amount: i64,
    /// Lowercase currency.
    pub currency: &'a str,
    /// Free text, may be absent.
    pub description: Option<&'a str>,
    /// Receipt address, may be set later at confirm.
    pub receipt_email: Option<&'a str>,
    /// String map.
    pub metadata: Value,
    /// `automatic_payment_methods[enabled]`.
    pub automatic_payment_methods: bool,
    /// Explicit payment method types.
    pub payment_method_types: Vec<String>,
    /// Suffix appended to the account's descriptor.
    pub statement_descriptor_suffix: Option<&'a str>,
    /// The platform's fee on a direct charge.
    pub application_fee_amount: Option<i64>,
    /// The platform's application id when created on a connected account.
    pub application: Option<&'a str>,
}

/// A PaymentIntent in `requires_payment_method`.
pub fn payment_intent(p: &NewPaymentIntent<'_>) -> Value {
    let id = new_id("pi");
    let secret = format!("{id}_secret_{}", random_token(25));
    json!({
        "id": id,
        "object": "payment_intent",
        "amount": p.amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": p.application,
        "application_fee_amount": p.application_fee_amount,
        "automatic_payment_methods": if p.automatic_payment_methods { json!({"enabled": true, "allow_redirects": "always"}) } else { Value::Null },
        "canceled_at": null,
        "cancellation_reason": null,
        "capture_method": "automatic_async",
        "client_secret": secret,
        "confirmation_method": "automatic",
        "created": now(),
        "currency": p.currency,
        "customer": null,
        "customer_account": null,
        "description": p.description,
        "excluded_payment_method_types": null,
        "last_payment_error": null,
        "latest_charge": null,
        "livemode": false,
        "managed_payments": {"enabled": false},
        "metadata": p.metadata,
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": null,
        "payment_method_configuration_details": null,
        "payment_method_options": {"card": {"installments": null, "mandate_options": null, "network": null, "request_three_d_secure": "automatic"}},
        "payment_method_types": p.payment_method_types,
        "processing": null,
        "receipt_email": p.receipt_email,
        "review": null,
        "setup_future_usage": null,
        "shipping": null,
        "source": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": p.statement_descriptor_suffix,
        "status": "requires_payment_method",
        "transfer_data": null,
        "transfer_group": null
    })
}

/// The outcome of one charge attempt.
pub enum ChargeOutcome<'a> {
    /// Authorised and captured.
    Succeeded,
    /// Declined by the issuer: (code, decline_code, message).
    Failed(&'a str, &'a str, &'a str),
}

/// A charge for `pi` paid with `pm`. `three_d_secure` says whether a challenge was completed.
pub fn charge(pi: &Value, pm: &Value, outcome: &ChargeOutcome<'_>, three_d_secure: bool, base_url: &str) -> Value {
    let id = new_id("ch");
    let amount = pi["amount"].as_i64().unwrap_or(0);
    let card = &pm["card"];
    let succeeded = matches!(outcome, ChargeOutcome::Succeeded);
    let (failure_code, failure_message, outcome_obj) = match outcome {
        ChargeOutcome::Succeeded => (
            Value::Null,
            Value::Null,
            json!({"advice_code": null, "network_advice_code": null, "network_decline_code": null,
                   "network_status": "approved_by_network", "reason": null, "risk_level": "normal",
                   "risk_score": 20, "seller_message": "Payment complete.", "type": "authorized"}),
        ),
        ChargeOutcome::Failed(code, decline, message) => (
            json!(code),
            json!(message),
            json!({"advice_code": "try_again_later", "network_advice_code": null, "network_decline_code": null,
                   "network_status": "declined_by_network", "reason": decline, "risk_level": "normal",
                   "risk_score": 20, "seller_message": "The bank did not return any further details with this decline.",
                   "type": "issuer_declined"}),
        ),
    };
    let three_ds = if three_d_secure {
        json!({"authentication_flow": "challenge", "electronic_commerce_indicator": "05", "exemption_indicator": null,
               "result": "authenticated", "result_reason": null, "transaction_id": random_token(32), "version": "2.2.0"})
    } else {
        Value::Null
    };
    json!({
        "id": id,
        "object": "charge",
        "amount": amount,
        "amount_captured": if succeeded { amount } else { 0 },
        "amount_refunded": 0,
        "application": pi["application"],
        "application_fee": if succeeded && pi["application_fee_amount"].is_i64() { json!(new_id("fee")) } else { Value::Null },
        "application_fee_amount": pi["application_fee_amount"],
        "balance_transaction": if succeeded { json!(new_id("txn")) } else { Value::Null },
        "billing_details": pm["billing_details"],
        "calculated_statement_descriptor": pi["statement_descriptor_suffix"].as_str().map(|s| format!("CALLPAY* {s}")).unwrap_or_else(|| "CALLPAY".into()),
        "captured": succeeded,
        "created": now(),
        "currency": pi["currency"],
        "customer": null,
        "description": pi["description"],
        "disputed": false,
        "failure_balance_transaction": null,
        "failure_code": failure_code,
        "failure_message": failure_message,
        "fraud_details": {},
        "livemode": false,
        "metadata": pi["metadata"],
        "on_behalf_of": null,
        "outcome": outcome_obj,
        "paid": succeeded,
        "payment_intent": pi["id"],
        "payment_method": pm["id"],
        "payment_method_details": {
            "card": {
                "amount_authorized": if succeeded { json!(amount) } else { Value::Null },
                "brand": card["brand"],
                "checks": card["checks"],
                "country": card["country"],
                "exp_month": card["exp_month"],
                "exp_year": card["exp_year"],
                "extended_authorization": {"status": "disabled"},
                "fingerprint": card["fingerprint"],
                "funding": card["funding"],
                "incremental_authorization": {"status": "unavailable"},
                "installments": null,
                "last4": card["last4"],
                "mandate": null,
                "multicapture": {"status": "unavailable"},
                "network": card["brand"],
                "network_token": {"used": false},
                "overcapture": {"maximum_amount_capturable": amount, "status": "unavailable"},
                "three_d_secure": three_ds,
                "wallet": null,
                "authorization_code": if succeeded { json!(random_token(6)) } else { Value::Null },
                "regulated_status": "unregulated",
                "network_transaction_id": random_token(15),
                "transaction_link_id": null
            },
            "type": "card"
        },
        "receipt_email": pi["receipt_email"],
        "receipt_number": null,
        "receipt_url": format!("{base_url}receipts/{id}"),
        "refunded": false,
        "refunds": list(&format!("/v1/charges/{id}/refunds"), vec![], false),
        "review": null,
        "shipping": null,
        "source": null,
        "source_transfer": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": pi["statement_descriptor_suffix"],
        "status": if succeeded { "succeeded" } else { "failed" },
        "transfer_data": null,
        "transfer_group": null
    })
}

/// A succeeded card refund of `amount` from `charge`.
pub fn refund(charge: &Value, amount: i64, reason: Option<&str>, metadata: Value) -> Value {
    json!({
        "id": new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": new_id("txn"),
        "charge": charge["id"],
        "created": now(),
        "currency": charge["currency"],
        "customer": null,
        "customer_account": null,
        "destination_details": {"card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"}, "type": "card"},
        "metadata": metadata,
        "payment_intent": charge["payment_intent"],
        "payment_method": charge["payment_method"],
        "reason": reason,
        "receipt_number": null,
        "source_transfer_reversal": null,
        "status": "succeeded",
        "transfer_reversal": null
    })
}

/// A webhook endpoint (the `secret` is included only in the create response, as Stripe does).
pub fn webhook_endpoint(
    id: &str,
    url: &str,
    enabled_events: &[String],
    description: Option<&str>,
    application: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "object": "webhook_endpoint",
        "api_version": API_VERSION,
        "application": application,
        "created": now(),
        "description": description,
        "enabled_events": enabled_events,
        "livemode": false,
        "metadata": {},
        "status": "enabled",
        "url": url
    })
}

/// The platform's Connect application, as it appears in `account.application.*` events.
pub fn application(client_id: &str, name: &str) -> Value {
    json!({"id": client_id, "object": "application", "name": name})
}

/// An event of `kind` about `object`. `account` is set for connected accounts only.
pub fn event(
    kind: &str,
    object: &Value,
    account: Option<&str>,
    previous: Option<Value>,
    request: (Option<&str>, Option<&str>),
    pending: usize,
) -> Value {
    let mut data = json!({"object": object});
    if let Some(prev) = previous {
        data["previous_attributes"] = prev;
    }
    let mut ev = json!({
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": now(),
        "data": data,
        "livemode": false,
        "pending_webhooks": pending,
        "request": {"id": request.0, "idempotency_key": request.1},
        "type": kind
    });
    if let Some(acct) = account {
        ev["account"] = json!(acct);
    }
    ev
}

//! Stripe's webhook deliveries, checked and parsed without I/O.
//!
//! The `Stripe-Signature` header is `t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=…]`, signed over
//! `"<t>.<raw body>"` with the endpoint's secret. A delivery is genuine when any `v1` matches and
//! `t` is within five minutes of our clock (Stripe's own tolerance; it bounds replays).
//!
//! The envelope is async-stripe's `Event`, and `data.object` is read as its `PaymentIntent`,
//! `Charge` or `Refund` only for the event types the hub acts on, all with async-stripe's own (miniserde)
//! parsers, which are compiled once in async-stripe-shared. async-stripe-webhook would parse
//! into an enum of every Stripe event type, and serde parsers of Stripe's types are generated
//! anew in the crate that uses them; either cost more build time than the rest of the hub
//! (README › Build cost).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use stripe_shared::{Charge, PaymentIntent, Refund};
use stripe_types::miniserde_helpers::FromValueOpt;

/// How far the signature's timestamp may be from our clock, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a delivery was refused. Either way Stripe gets a 400 and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No secret produced a matching `v1`, the header is malformed, or it is too old or too new.
    #[error("the Stripe-Signature header does not match, or is too old")]
    BadSignature,
    /// The signature matched but the body is not an event the hub can read.
    #[error("the signed event could not be parsed: {0}")]
    BadPayload(String),
}

/// A verified event, reduced to what the hub uses.
#[derive(Debug, Clone)]
pub struct Event {
    /// `evt_…`: the key for deduplication.
    pub id: String,
    /// Stripe's type name, e.g. `payment_intent.succeeded`.
    pub kind: String,
    /// When Stripe created the event, Unix seconds: orders events that arrive out of order.
    pub created: i64,
    /// The connected account the event happened on (every callpay payment is a direct charge).
    pub account: Option<String>,
    /// The object, for the types the hub acts on.
    pub object: EventObject,
}

/// The event types the hub acts on, with their objects. Everything else is `Other`: recorded
/// (so a retry is a duplicate) and otherwise ignored.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per delivery, short-lived
pub enum EventObject {
    /// `payment_intent.requires_action`: 3-D Secure is under way.
    PaymentIntentRequiresAction(PaymentIntent),
    /// `payment_intent.processing`.
    PaymentIntentProcessing(PaymentIntent),
    /// `payment_intent.payment_failed`.
    PaymentIntentPaymentFailed(PaymentIntent),
    /// `payment_intent.succeeded`.
    PaymentIntentSucceeded(PaymentIntent),
    /// `payment_intent.canceled`.
    PaymentIntentCanceled(PaymentIntent),
    /// `charge.succeeded`: carries the card's brand and last four.
    ChargeSucceeded(Charge),
    /// `charge.refunded`.
    ChargeRefunded(Charge),
    /// A refund was made or changed: `refund.created`, `refund.updated`, `refund.failed` and
    /// `charge.refund.updated` (the older name of the same news).
    Refund(Refund),
    /// `account.application.deauthorized`: the clinic disconnected callpay from its account.
    AccountApplicationDeauthorized,
    /// Any other type.
    Other,
}

/// Checks `header` against each secret in turn (rotation: any may match) at time `now` (Unix
/// seconds), then parses the event.
pub fn verify<S: AsRef<str>>(payload: &str, header: &str, secrets: &[S], now: i64) -> Result<Event, DeliveryError> {
    let signature = Signature::parse(header).ok_or(DeliveryError::BadSignature)?;
    let signed = secrets.iter().any(|secret| signature.signed_by(secret.as_ref(), payload));
    if !signed || (now - signature.timestamp).abs() > TOLERANCE_SECS {
        return Err(DeliveryError::BadSignature);
    }
    parse(payload)
}

/// Parses an event body without checking anything: only for bodies already verified, or read
/// from Stripe's API.
pub fn parse(payload: &str) -> Result<Event, DeliveryError> {
    let envelope: stripe_shared::Event = miniserde::json::from_str(payload)
        .map_err(|_| DeliveryError::BadPayload("not a Stripe event (id, type, created, data.object...)".into()))?;
    let kind = envelope.type_.as_str().to_owned();
    let raw = envelope.data.object;
    let intent = |raw| PaymentIntent::from_value(raw).ok_or_else(|| bad_object("PaymentIntent"));
    let charge = |raw| Charge::from_value(raw).ok_or_else(|| bad_object("Charge"));
    let object = match kind.as_str() {
        "payment_intent.requires_action" => EventObject::PaymentIntentRequiresAction(intent(raw)?),
        "payment_intent.processing" => EventObject::PaymentIntentProcessing(intent(raw)?),
        "payment_intent.payment_failed" => EventObject::PaymentIntentPaymentFailed(intent(raw)?),
        "payment_intent.succeeded" => EventObject::PaymentIntentSucceeded(intent(raw)?),
        "payment_intent.canceled" => EventObject::PaymentIntentCanceled(intent(raw)?),
        "charge.succeeded" => EventObject::ChargeSucceeded(charge(raw)?),
        "charge.refunded" => EventObject::ChargeRefunded(charge(raw)?),
        "refund.created" | "refund.updated" | "refund.failed" | "charge.refund.updated" => {
            EventObject::Refund(Refund::from_value(raw).ok_or_else(|| bad_object("Refund"))?)
        }
        "account.application.deauthorized" => EventObject::AccountApplicationDeauthorized,
        _ => EventObject::Other,
    };
    Ok(Event { id: envelope.id.to_string(), kind, created: envelope.created, account: envelope.account, object })
}

fn bad_object(what: &str) -> DeliveryError {
    DeliveryError::BadPayload(format!("data.object is not a {what}"))
}

/// A parsed `Stripe-Signature` header.
struct Signature<'a> {
    timestamp: i64,
    v1: Vec<&'a str>,
}

impl<'a> Signature<'a> {
    /// `None` when there is no integer `t` or no `v1`. Other schemes (`v0`, test-mode extras)
    /// are ignored, as Stripe's libraries do.
    fn parse(header: &'a str) -> Option<Self> {
        let mut timestamp = None;
        let mut v1 = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = Some(t.parse().ok()?),
                Some(("v1", s)) => v1.push(s),
                _ => {}
            }
        }
        (!v1.is_empty()).then_some(Self { timestamp: timestamp?, v1 })
    }

    fn signed_by(&self, secret: &str, payload: &str) -> bool {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
        mac.update(self.timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        // verify_slice compares in constant time.
        self.v1.iter().filter_map(|s| hex::decode(s).ok()).any(|sig| mac.clone().verify_slice(&sig).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn header(secret: &str, t: i64, payload: &str) -> String {
        // Computed independently of `Signature`, the way Stripe documents it.
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{payload}").as_bytes());
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn event(kind: &str, object: serde_json::Value) -> String {
        serde_json::json!({
            "id": "evt_1", "object": "event", "type": kind, "created": NOW, "account": "acct_1",
            "livemode": false, "pending_webhooks": 1, "api_version": "2025-10-29.clover",
            "data": {"object": object}
        })
        .to_string()
    }

    /// A PaymentIntent with every field Stripe sends (null where the simulator sends null).
    fn intent() -> serde_json::Value {
        let mut pi = serde_json::json!({
            "id": "pi_1", "object": "payment_intent", "amount": 5000, "amount_capturable": 0,
            "amount_details": {"tip": {}}, "amount_received": 5000, "capture_method": "automatic_async",
            "client_secret": "pi_1_secret_x", "confirmation_method": "automatic", "created": NOW,
            "currency": "aud", "livemode": false, "metadata": {"callpay_payment_id": "pay_1"},
            "payment_method_types": ["card"], "status": "succeeded", "managed_payments": {"enabled": false},
        });
        for null in [
            "application",
            "application_fee_amount",
            "automatic_payment_methods",
            "canceled_at",
            "cancellation_reason",
            "customer",
            "customer_account",
            "description",
            "excluded_payment_method_types",
            "last_payment_error",
            "latest_charge",
            "next_action",
            "on_behalf_of",
            "payment_method",
            "payment_method_configuration_details",
            "payment_method_options",
            "processing",
            "receipt_email",
            "review",
            "setup_future_usage",
            "shipping",
            "source",
            "statement_descriptor",
            "statement_descriptor_suffix",
            "transfer_data",
            "transfer_group",
        ] {
            pi[null] = serde_json::Value::Null;
        }
        pi
    }

    #[test]
    fn a_signed_event_is_parsed_into_its_kind() {
        let body = event("payment_intent.succeeded", intent());
        let e = verify(&body, &header("whsec_b", NOW, &body), &["whsec_a", "whsec_b"], NOW).unwrap();
        assert_eq!(
            (e.id.as_str(), e.kind.as_str(), e.created, e.account.as_deref()),
            ("evt_1", "payment_intent.succeeded", NOW, Some("acct_1"))
        );
        let EventObject::PaymentIntentSucceeded(pi) = e.object else { panic!("{:?}", e.object) };
        assert_eq!(
            (pi.id.as_str(), pi.amount_received, pi.metadata["callpay_payment_id"].as_str()),
            ("pi_1", 5000, "pay_1")
        );
    }

    #[test]
    fn forged_stale_and_malformed_signatures_are_refused() {
        let body = event("payment_intent.succeeded", intent());
        let good = header("whsec_a", NOW, &body);
        assert!(verify(&body, &good, &["whsec_a"], NOW).is_ok());
        let refused = |h: &str, now| verify(&body, h, &["whsec_a"], now).unwrap_err();
        assert_eq!(refused(&header("whsec_other", NOW, &body), NOW), DeliveryError::BadSignature);
        assert_eq!(refused(&good, NOW + TOLERANCE_SECS + 1), DeliveryError::BadSignature, "replayed too late");
        assert_eq!(refused(&good, NOW - TOLERANCE_SECS - 1), DeliveryError::BadSignature, "from the future");
        assert!(verify(&body, &good, &["whsec_a"], NOW + TOLERANCE_SECS).is_ok(), "at the edge");
        let tampered = body.replace("evt_1", "evt_2");
        assert_eq!(verify(&tampered, &good, &["whsec_a"], NOW).unwrap_err(), DeliveryError::BadSignature);
        for h in ["", "t=,v1=", &good.replace("t=", "x="), &good.replace("v1=", "v0="), "t=abc,v1=00", "v1=00"] {
            assert_eq!(refused(h, NOW), DeliveryError::BadSignature, "{h:?}");
        }
        let many = format!("{},v1=deadbeef,v1=not-hex", good);
        assert!(verify(&body, &many, &["whsec_a"], NOW).is_ok(), "any v1 may match");
        assert_eq!(verify(&body, &good, &[] as &[&str], NOW).unwrap_err(), DeliveryError::BadSignature);
    }

    #[test]
    fn a_signed_body_that_is_not_a_readable_event_is_a_bad_payload() {
        for body in [
            "not json".to_owned(),
            r#"{"id":"evt_1","type":"x","created":1}"#.to_owned(),
            event("payment_intent.succeeded", serde_json::json!({"id": "pi_1"})),
            event("charge.refunded", intent()),
        ] {
            let err = verify(&body, &header("whsec_a", NOW, &body), &["whsec_a"], NOW).unwrap_err();
            assert!(matches!(err, DeliveryError::BadPayload(_)), "{body}: {err:?}");
        }
    }

    #[test]
    fn types_the_hub_does_not_act_on_are_other_and_need_no_object() {
        let e = parse(&event("invoice.paid", serde_json::json!({"id": "in_1"}))).unwrap();
        assert!(matches!(e.object, EventObject::Other));
        let e = parse(&event("account.application.deauthorized", serde_json::json!({"id": "ca_1"}))).unwrap();
        assert!(matches!(e.object, EventObject::AccountApplicationDeauthorized));
    }
}

//! The event catalogue: which changes the platform hears about, and the JSON it gets. Pure:
//! a payment or clinic before and after a change in, [`Write::Event`]s out, for the batch that
//! stores the change.

use crate::store::{Clinic, OutboxEvent, Payment, Write, now_ms, status_str};
use callpay_protocol::PaymentStatus;
use serde_json::{Value, json};

/// The version of the event format; it changes only with an incompatible change of a payload
/// (fields are only ever added within a version).
pub const API_VERSION: &str = "2026-12-01";

/// Every event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A PaymentIntent exists and the patient was asked to pay.
    PaymentRequested,
    /// The payment was received.
    PaymentSucceeded,
    /// An attempt failed (declined card, failed 3-D Secure); the patient may try again.
    PaymentFailed,
    /// The request was withdrawn (by the clinician, or expired at Stripe) before being paid.
    PaymentCanceled,
    /// Money went back: the payment's refunded total grew (in part or in full).
    PaymentRefunded,
    /// A refund failed after it was counted, and its amount counts as paid again.
    PaymentRefundReversed,
    /// The operator approved the payment app for a clinic.
    ClinicAppEnabled,
    /// The app was disabled for a clinic.
    ClinicAppDisabled,
    /// A clinic linked (or re-linked) its Stripe account.
    ClinicStripeLinked,
    /// A clinic's Stripe account was removed (by an admin, or revoked on Stripe's side).
    ClinicStripeUnlinked,
}

impl EventType {
    /// Every type, in catalogue order.
    pub const ALL: [EventType; 10] = [
        EventType::PaymentRequested,
        EventType::PaymentSucceeded,
        EventType::PaymentFailed,
        EventType::PaymentCanceled,
        EventType::PaymentRefunded,
        EventType::PaymentRefundReversed,
        EventType::ClinicAppEnabled,
        EventType::ClinicAppDisabled,
        EventType::ClinicStripeLinked,
        EventType::ClinicStripeUnlinked,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PaymentRequested => "payment.requested",
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentFailed => "payment.failed",
            EventType::PaymentCanceled => "payment.canceled",
            EventType::PaymentRefunded => "payment.refunded",
            EventType::PaymentRefundReversed => "payment.refund_reversed",
            EventType::ClinicAppEnabled => "clinic.app_enabled",
            EventType::ClinicAppDisabled => "clinic.app_disabled",
            EventType::ClinicStripeLinked => "clinic.stripe_linked",
            EventType::ClinicStripeUnlinked => "clinic.stripe_unlinked",
        }
    }

    /// The type with this wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// The envelope every event shares.
fn envelope(id: &str, kind: EventType, created_ms: i64, livemode: bool, object: Value) -> Value {
    json!({
        "id": id,
        "object": "event",
        "type": kind.as_str(),
        "api_version": API_VERSION,
        "created": created_ms / 1000,
        "livemode": livemode,
        "data": {"object": object},
    })
}

/// A payment as events show it: no client secret, no card details, no patient e-mail.
pub fn payment_object(p: &Payment) -> Value {
    let failure = p
        .failure_code
        .as_ref()
        .map(|code| json!({"code": code, "decline_code": p.failure_decline_code, "message": p.failure_message}));
    json!({
        "object": "payment",
        "id": p.id,
        "clinic_id": p.clinic_id,
        "call_id": p.call_id,
        "requested_by": {"id": p.requested_by_id, "name": p.requested_by_name},
        "amount": p.amount,
        "currency": p.currency,
        "description": p.description,
        "status": status_str(p.status),
        "amount_received": p.amount_received,
        "amount_refunded": p.amount_refunded,
        "failure": failure,
        "stripe_account": p.stripe_account,
        "payment_intent_id": p.payment_intent_id,
        "livemode": p.livemode,
        "version": p.version,
        "created_at": p.created_at,
        "paid_at": p.paid_at,
        "updated_at": p.updated_at,
    })
}

/// A clinic as events show it.
pub fn clinic_object(c: &Clinic) -> Value {
    json!({
        "object": "clinic",
        "id": c.id,
        "org_id": c.org_id,
        "name": c.name,
        "app_enabled": c.app_enabled,
        "payments_available": c.payment_readiness().is_ok(),
        "stripe": {
            "linked": c.stripe_account.is_some(),
            "account": c.stripe_account,
            "livemode": c.stripe_livemode,
        },
    })
}

/// What a payment's change from `before` to `after` means for the platform: at most a couple
/// of event types (a change that only records a newer Stripe event, or a 3-D Secure step,
/// means none).
pub fn payment_change(before: &Payment, after: &Payment) -> Vec<EventType> {
    use PaymentStatus as S;
    let mut kinds = Vec::new();
    let paid = |s: S| matches!(s, S::Succeeded | S::PartiallyRefunded | S::Refunded);
    if before.status == S::Creating && after.status == S::Requested {
        kinds.push(EventType::PaymentRequested);
    }
    if after.status == S::Succeeded && !paid(before.status) {
        kinds.push(EventType::PaymentSucceeded);
    }
    let new_failure = after.status == S::Failed
        && (before.status != S::Failed
            || (before.failure_code.as_ref(), before.failure_message.as_ref())
                != (after.failure_code.as_ref(), after.failure_message.as_ref()));
    if new_failure {
        kinds.push(EventType::PaymentFailed);
    }
    if after.status == S::Canceled && before.status != S::Canceled {
        kinds.push(EventType::PaymentCanceled);
    }
    if paid(before.status) && after.amount_refunded > before.amount_refunded {
        kinds.push(EventType::PaymentRefunded);
    }
    if paid(before.status) && after.amount_refunded < before.amount_refunded {
        kinds.push(EventType::PaymentRefundReversed);
    }
    kinds
}

/// The outbox writes for a payment's change, to go in the batch that stores `after`.
pub fn payment_writes(before: &Payment, after: &Payment) -> Vec<Write> {
    payment_change(before, after)
        .into_iter()
        .map(|kind| {
            let event = new_event(kind, &after.id, Some(&after.clinic_id), after.livemode, payment_object(after));
            Write::Event { event: Box::new(event), if_changed: false }
        })
        .collect()
}

/// The outbox write for a clinic's change, to follow the [`Write::Clinic`] that makes it: it
/// is stored only if that write changed the clinic. `after` is the clinic as the change leaves it.
pub fn clinic_write(kind: EventType, after: &Clinic) -> Write {
    let event = new_event(kind, &after.id, Some(&after.id), after.stripe_livemode, clinic_object(after));
    Write::Event { event: Box::new(event), if_changed: true }
}

fn new_event(kind: EventType, order_key: &str, clinic_id: Option<&str>, livemode: bool, object: Value) -> OutboxEvent {
    let id = format!("evt_{}", crate::ids::random_id());
    let created_at = now_ms();
    let body = envelope(&id, kind, created_at, livemode, object).to_string();
    OutboxEvent {
        id,
        event_type: kind.as_str().to_owned(),
        order_key: order_key.to_owned(),
        clinic_id: clinic_id.map(str::to_owned),
        body,
        created_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentStatus as S;

    fn pay(status: S, refunded: i64) -> Payment {
        Payment { id: "pay_1".into(), status, amount: 5000, amount_refunded: refunded, ..Payment::default() }
    }

    fn failed(code: &str) -> Payment {
        Payment { failure_code: Some(code.into()), failure_message: Some(code.into()), ..pay(S::Failed, 0) }
    }

    #[test]
    fn each_transition_maps_to_its_events() {
        use EventType::*;
        let cases: Vec<(Payment, Payment, Vec<EventType>)> = vec![
            (pay(S::Creating, 0), pay(S::Requested, 0), vec![PaymentRequested]),
            (pay(S::Requested, 0), pay(S::Authenticating, 0), vec![]),
            (pay(S::Requested, 0), pay(S::Processing, 0), vec![]),
            (pay(S::Processing, 0), pay(S::Succeeded, 0), vec![PaymentSucceeded]),
            (pay(S::Requested, 0), failed("card_declined"), vec![PaymentFailed]),
            (failed("card_declined"), failed("card_declined"), vec![]),
            (failed("card_declined"), failed("expired_card"), vec![PaymentFailed]),
            (failed("card_declined"), pay(S::Succeeded, 0), vec![PaymentSucceeded]),
            (pay(S::Requested, 0), pay(S::Canceled, 0), vec![PaymentCanceled]),
            (pay(S::Succeeded, 0), pay(S::PartiallyRefunded, 1000), vec![PaymentRefunded]),
            (pay(S::PartiallyRefunded, 1000), pay(S::Refunded, 5000), vec![PaymentRefunded]),
            (pay(S::PartiallyRefunded, 1000), pay(S::Succeeded, 0), vec![PaymentRefundReversed]),
            // A whole-again payment is not paid a second time.
            (pay(S::Succeeded, 0), pay(S::Succeeded, 0), vec![]),
        ];
        for (before, after, want) in cases {
            assert_eq!(payment_change(&before, &after), want, "{:?} -> {:?}", before.status, after.status);
        }
    }

    #[test]
    fn the_body_is_the_envelope_with_the_object_and_no_secrets() {
        let p = Payment {
            client_secret: Some("pi_1_secret_x".into()),
            receipt_email: Some("sam@example.org".into()),
            card_last4: Some("4242".into()),
            ..pay(S::Succeeded, 0)
        };
        let writes = payment_writes(&pay(S::Processing, 0), &p);
        let [Write::Event { event, if_changed: false }] = writes.as_slice() else { panic!("one event: {writes:?}") };
        let body: Value = serde_json::from_str(&event.body).unwrap();
        assert_eq!(body["id"], event.id.as_str());
        assert_eq!(body["type"], "payment.succeeded");
        assert_eq!(body["api_version"], API_VERSION);
        assert_eq!(body["data"]["object"]["id"], "pay_1");
        assert_eq!(event.order_key, "pay_1");
        for secret in ["_secret_", "sam@example.org", "4242"] {
            assert!(!event.body.contains(secret), "{secret} leaked: {}", event.body);
        }
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }
}

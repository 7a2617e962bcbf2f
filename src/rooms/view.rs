//! How a stored payment and a room event look on the wire, per role. The patient's copy carries
//! what Stripe.js needs; the clinician's never carries the client secret.

use crate::store::Payment;
use callpay_protocol::{
    Failure, Participant, PaymentStatus, PaymentView, Role, ServerFrame, ServerMsg, StripeClientInfo,
};

/// `pat@example.com` -> `p•••@example.com`: enough for the patient to recognise, little to leak.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((user, host)) => {
            let first: String = user.chars().take(1).collect();
            format!("{first}•••@{host}")
        }
        None => "•••".into(),
    }
}

/// The payment as `role` may see it. `publishable_key` goes into the patient's Stripe block.
pub fn payment_view(p: &Payment, role: Role, publishable_key: &str) -> PaymentView {
    let stripe = match (role, p.client_secret.as_ref(), p.status) {
        // Only while there is something to pay: the secret is not handed out after the fact.
        (
            Role::Patient,
            Some(secret),
            PaymentStatus::Requested | PaymentStatus::Authenticating | PaymentStatus::Failed,
        ) => Some(StripeClientInfo {
            publishable_key: publishable_key.to_owned(),
            stripe_account: p.stripe_account.clone(),
            client_secret: secret.clone(),
        }),
        _ => None,
    };
    PaymentView {
        payment_id: p.id.clone(),
        client_ref: p.client_ref.clone(),
        call_id: p.call_id.clone(),
        amount: p.amount,
        currency: p.currency.clone(),
        description: p.description.clone(),
        status: p.status,
        version: p.version,
        requested_by: Participant {
            id: p.requested_by_id.clone(),
            name: p.requested_by_name.clone(),
            role: Role::Clinician,
        },
        created_at: p.created_at,
        updated_at: p.updated_at,
        amount_received: p.amount_received,
        amount_refunded: p.amount_refunded,
        paid_at: p.paid_at,
        receipt_email: p.receipt_email.as_deref().map(mask_email),
        card_brand: p.card_brand.clone(),
        card_last4: p.card_last4.clone(),
        failure: match (p.status, &p.failure_code) {
            (PaymentStatus::Failed, Some(code)) => Some(Failure {
                code: code.clone(),
                decline_code: p.failure_decline_code.clone(),
                message: p.failure_message.clone().unwrap_or_default(),
            }),
            _ => None,
        },
        reference: p.payment_intent_id.clone(),
        stripe,
    }
}

/// Whether `role` should see `p` at all: patients do not see requests not yet sent to Stripe.
pub fn visible_to(p: &Payment, role: Role) -> bool {
    role == Role::Clinician || p.status != PaymentStatus::Creating
}

/// Serialises a frame once, for every recipient of the same role: UTF-8 JSON in shared bytes.
pub fn encode(seq: u64, msg: ServerMsg) -> bytes::Bytes {
    serde_json::to_vec(&ServerFrame { seq, msg }).expect("protocol types always serialise").into()
}

/// The `seq` and `type` a frame made by [`encode`] starts with, read without parsing the rest
/// (`{"seq":N,"type":"…",…`). `None` for anything else.
pub fn frame_head(frame: &[u8]) -> Option<(u64, &str)> {
    let rest = frame.strip_prefix(br#"{"seq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(br#","type":""#)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    Some((seq, std::str::from_utf8(&rest[..end]).ok()?))
}

/// Whether a frame of this type says nothing a `welcome` built from a later store read does
/// not already say: payment states (the snapshot holds them, as new or newer).
pub fn covered_by_snapshot(kind: &str) -> bool {
    matches!(kind, "payment.requested" | "payment.updated" | "payment.confirmed" | "payment.sync")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frames_head_is_read_without_parsing_it() {
        let frame = encode(42, ServerMsg::ClinicUpdated { payments_available: true, reason: None });
        assert_eq!(frame_head(&frame), Some((42, "clinic.updated")));
        assert_eq!(frame_head(b"{\"type\":\"x\"}"), None);
        assert_eq!(frame_head(b"{\"seq\":7,"), None);
    }

    #[test]
    fn masks_emails() {
        assert_eq!(mask_email("pat@example.com"), "p•••@example.com");
        assert_eq!(mask_email("nonsense"), "•••");
    }
}

//! A Stripe event, reduced to what the state machine needs: the PaymentIntent it is about, the
//! payment id callpay put in its metadata, the change it stands for, and for a refund event the
//! refund to record.

use super::event::{Event, EventObject};
use super::state::Change;
use super::stripe::{GatewayError, StripeApi, refund_info};
use crate::ids::random_id;
use crate::store::{Refund, now_ms};
use std::collections::HashMap;

/// What an event the hub acts on carries.
pub(super) struct Parsed {
    /// The PaymentIntent it is about.
    pub intent_id: String,
    /// `callpay_payment_id` from its metadata.
    pub metadata_id: Option<String>,
    /// The change it stands for.
    pub change: Change,
    /// The refund it reports (payment and clinic ids left for the caller to fill in).
    pub refund: Option<Refund>,
}

/// How long a webhook may wait for the card's brand and last four before confirming without
/// them: Stripe expects a quick answer, and `charge.succeeded` fills them in anyway.
const CARD_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a Stripe event carries, or `None` for event types the hub does not act on. A refund
/// event needs Stripe's total refunded now (refund events arrive in any order, and a failed
/// refund shrinks it); an error means Stripe could not be asked, and the delivery is retried.
pub(super) async fn parse_event(
    event: &Event,
    account: Option<&str>,
    stripe: &dyn StripeApi,
) -> Result<Option<Parsed>, GatewayError> {
    if let EventObject::Refund(r) = &event.object {
        let (Some(acct), Some(pi)) = (account, r.payment_intent.as_ref()) else { return Ok(None) };
        let pi = pi.id().to_string();
        let total = stripe.intent(acct, &pi).await?.amount_refunded;
        let metadata = r.metadata.clone().unwrap_or_default();
        let info = refund_info(r);
        let ours = metadata.get("callpay_refund_id").cloned();
        let now = now_ms();
        let refund = Refund {
            id: ours.clone().unwrap_or_else(|| format!("ref_{}", random_id())),
            payment_id: String::new(),
            clinic_id: String::new(),
            amount: info.amount,
            currency: r.currency.to_string(),
            reason: r.reason.as_ref().map(|x| x.as_str().to_owned()).unwrap_or_default(),
            note: None,
            status: info.status,
            stripe_refund_id: Some(info.id),
            failure_reason: info.failure_reason,
            source: if ours.is_some() { "callpay" } else { "stripe" }.into(),
            request_key: None,
            requested_by_id: crate::store::STRIPE.id.into(),
            requested_by_name: crate::store::STRIPE.name.into(),
            requested_by_role: crate::store::STRIPE.role.into(),
            created_at: r.created * 1000,
            updated_at: now,
        };
        return Ok(Some(Parsed {
            intent_id: pi,
            metadata_id: metadata.get("callpay_payment_id").cloned(),
            change: Change::RefundTotal { amount_refunded: total },
            refund: Some(refund),
        }));
    }
    if let EventObject::ChargeRefunded(ch) = &event.object {
        let Some(pi) = ch.payment_intent.as_ref().map(|p| p.id().to_string()) else { return Ok(None) };
        // Stripe's total now, if it answers quickly: a charge.refunded delivered after a later
        // refund failed must not count that refund again. Otherwise the event's total, which
        // only ever grows the record.
        let now = match account {
            Some(acct) => {
                tokio::time::timeout(CARD_LOOKUP_TIMEOUT, stripe.intent(acct, &pi)).await.ok().and_then(Result::ok)
            }
            None => None,
        };
        let change = match now {
            Some(info) => Change::RefundTotal { amount_refunded: info.amount_refunded },
            None => Change::Refunded { amount_refunded: ch.amount_refunded },
        };
        let metadata_id = ch.metadata.get("callpay_payment_id").cloned();
        return Ok(Some(Parsed { intent_id: pi, metadata_id, change, refund: None }));
    }
    Ok(parse_payment_event(event, account, stripe).await.map(|(intent_id, metadata_id, change)| Parsed {
        intent_id,
        metadata_id,
        change,
        refund: None,
    }))
}

/// The PaymentIntent id, callpay metadata id and state change a payment event carries.
async fn parse_payment_event(
    event: &Event,
    account: Option<&str>,
    stripe: &dyn StripeApi,
) -> Option<(String, Option<String>, Change)> {
    let meta = |m: &HashMap<String, String>| m.get("callpay_payment_id").cloned();
    let (pi, metadata, change) = match &event.object {
        EventObject::PaymentIntentRequiresAction(pi) => (pi.id.to_string(), meta(&pi.metadata), Change::RequiresAction),
        EventObject::PaymentIntentProcessing(pi) => (pi.id.to_string(), meta(&pi.metadata), Change::Processing),
        EventObject::PaymentIntentPaymentFailed(pi) => {
            let err = pi.last_payment_error.as_deref();
            let change = Change::Failed {
                code: err
                    .and_then(|e| e.code.as_ref())
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_else(|| "payment_failed".into()),
                decline_code: err.and_then(|e| e.decline_code.clone()),
                message: err.and_then(|e| e.message.clone()).unwrap_or_else(|| "The payment failed.".into()),
            };
            (pi.id.to_string(), meta(&pi.metadata), change)
        }
        EventObject::PaymentIntentSucceeded(pi) => {
            // The event carries the charge id only; read the charge for the card's brand and
            // last four. If Stripe cannot be reached now, confirm anyway: charge.succeeded
            // fills the card in later.
            let card = match account {
                Some(acct) => tokio::time::timeout(CARD_LOOKUP_TIMEOUT, stripe.intent(acct, pi.id.as_str()))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|i| i.card),
                None => None,
            };
            let change = Change::Succeeded {
                amount_received: pi.amount_received,
                currency: pi.currency.to_string(),
                receipt_email: pi.receipt_email.clone(),
                card,
            };
            (pi.id.to_string(), meta(&pi.metadata), change)
        }
        EventObject::PaymentIntentCanceled(pi) => (pi.id.to_string(), meta(&pi.metadata), Change::Canceled),
        EventObject::ChargeSucceeded(ch) => {
            let card = ch.payment_method_details.as_ref().and_then(|d| d.card.as_ref());
            let change =
                card.and_then(|c| Some(Change::CardDetails { brand: c.brand.clone()?, last4: c.last4.clone()? }))?;
            (ch.payment_intent.as_ref()?.id().to_string(), meta(&ch.metadata), change)
        }
        _ => return None,
    };
    Some((pi, metadata, change))
}

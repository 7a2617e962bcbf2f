//! A Stripe event, reduced to what the state machine needs: the PaymentIntent it is about, the
//! payment id callpay put in its metadata, and the change it stands for.

use super::event::{Event, EventObject};
use super::state::Change;
use super::stripe::StripeApi;
use std::collections::HashMap;

/// How long a webhook may wait for the card's brand and last four before confirming without
/// them: Stripe expects a quick answer, and `charge.succeeded` fills them in anyway.
const CARD_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The PaymentIntent id, callpay metadata id and state change a Stripe event carries, or
/// `None` for event types the hub does not act on.
pub(super) async fn parse_event(
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
        EventObject::ChargeRefunded(ch) => (
            ch.payment_intent.as_ref()?.id().to_string(),
            meta(&ch.metadata),
            Change::Refunded { amount_refunded: ch.amount_refunded },
        ),
        _ => return None,
    };
    Some((pi, metadata, change))
}

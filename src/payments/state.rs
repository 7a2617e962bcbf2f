//! The payment state machine. Pure: it takes a stored payment and a change (from Stripe or the
//! clinician) and returns the next payment, or nothing when the change must not apply.
//!
//! It never moves backwards: `succeeded`, `canceled` and `refunded` absorb every later status
//! change (a late `payment_failed` after `succeeded` changes nothing), refunds only grow, and a
//! non-final change older than the newest applied Stripe event is ignored as stale.

use super::stripe::IntentInfo;
use crate::store::{Payment, now_ms};
use callpay_protocol::PaymentStatus;

/// Something that happened to a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The PaymentIntent exists on Stripe and waits for the patient.
    Created {
        /// PaymentIntent id.
        payment_intent_id: String,
        /// Its client secret.
        client_secret: String,
    },
    /// The bank asked for 3-D Secure.
    RequiresAction,
    /// Stripe is processing.
    Processing,
    /// The attempt failed; the patient may retry.
    Failed {
        /// Stripe's code.
        code: String,
        /// Bank's decline code.
        decline_code: Option<String>,
        /// Message.
        message: String,
    },
    /// Paid.
    Succeeded {
        /// Amount received.
        amount_received: i64,
        /// Currency received (lowercase).
        currency: String,
        /// Receipt address set at confirm.
        receipt_email: Option<String>,
        /// Card brand and last four, when known.
        card: Option<(String, String)>,
    },
    /// Withdrawn.
    Canceled,
    /// Card details of the successful charge (from `charge.succeeded`).
    CardDetails {
        /// Brand.
        brand: String,
        /// Last four.
        last4: String,
    },
    /// Total refunded on the charge so far, as an event reported it: only ever grows (events
    /// arrive in any order).
    Refunded {
        /// Cumulative amount refunded.
        amount_refunded: i64,
    },
    /// Total refunded on the charge now, read from Stripe: the truth, which can also shrink (a
    /// refund failed and its amount counts as paid again).
    RefundTotal {
        /// Amount refunded now (pending and succeeded refunds).
        amount_refunded: i64,
    },
}

/// The outcome of applying a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The payment after the change (version + 1).
    pub payment: Payment,
    /// True exactly once per payment: when it first becomes `succeeded`.
    pub newly_succeeded: bool,
    /// False when only bookkeeping changed (a newer event confirmed the current status): the
    /// change is stored, but nobody needs to hear about it.
    pub visible: bool,
}

fn is_final_for_status(status: PaymentStatus) -> bool {
    matches!(
        status,
        PaymentStatus::Succeeded | PaymentStatus::Canceled | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
    )
}

/// Applies `change`, seen in a Stripe event created at `event_at` (Unix s; 0 when it did not
/// come from an event), to `current`. `None` means: nothing changes.
pub fn apply(current: &Payment, change: &Change, event_at: i64) -> Option<Transition> {
    use PaymentStatus as S;
    let mut next = current.clone();
    let stale = event_at != 0 && event_at < current.last_event_at;
    let paid = is_final_for_status(current.status) && current.status != S::Canceled;
    match change {
        Change::Created { payment_intent_id, client_secret } => {
            if current.status != S::Creating {
                return None;
            }
            next.status = S::Requested;
            next.payment_intent_id = Some(payment_intent_id.clone());
            next.client_secret = Some(client_secret.clone());
        }
        Change::Succeeded { amount_received, receipt_email, card, .. } => {
            if is_final_for_status(current.status) {
                return None;
            }
            next.status = S::Succeeded;
            next.amount_received = Some(*amount_received);
            next.paid_at = Some(now_ms());
            next.receipt_email = receipt_email.clone().or(next.receipt_email);
            if let Some((brand, last4)) = card {
                next.card_brand = Some(brand.clone());
                next.card_last4 = Some(last4.clone());
            }
            clear_failure(&mut next);
        }
        Change::Canceled => {
            if is_final_for_status(current.status) {
                return None;
            }
            next.status = S::Canceled;
        }
        Change::RequiresAction | Change::Processing | Change::Failed { .. } => {
            if is_final_for_status(current.status) || stale || current.status == S::Creating {
                return None;
            }
            match change {
                Change::RequiresAction => {
                    if current.status == S::Processing {
                        return None;
                    }
                    next.status = S::Authenticating;
                    clear_failure(&mut next);
                }
                Change::Processing => {
                    next.status = S::Processing;
                    clear_failure(&mut next);
                }
                Change::Failed { code, decline_code, message } => {
                    next.status = S::Failed;
                    next.failure_code = Some(code.clone());
                    next.failure_decline_code = decline_code.clone();
                    next.failure_message = Some(message.clone());
                }
                _ => unreachable!("matched above"),
            }
        }
        Change::CardDetails { brand, last4 } => {
            if current.card_brand.as_deref() == Some(brand) && current.card_last4.as_deref() == Some(last4) {
                return None;
            }
            next.card_brand = Some(brand.clone());
            next.card_last4 = Some(last4.clone());
        }
        Change::Refunded { amount_refunded } => {
            if !paid || *amount_refunded <= current.amount_refunded {
                return None;
            }
            next.amount_refunded = *amount_refunded;
            let received = current.amount_received.unwrap_or(current.amount);
            next.status = if *amount_refunded >= received { S::Refunded } else { S::PartiallyRefunded };
        }
        Change::RefundTotal { amount_refunded } => {
            if !paid || *amount_refunded == current.amount_refunded || *amount_refunded < 0 {
                return None;
            }
            next.amount_refunded = *amount_refunded;
            let received = current.amount_received.unwrap_or(current.amount);
            next.status = match *amount_refunded {
                0 => S::Succeeded,
                n if n >= received => S::Refunded,
                _ => S::PartiallyRefunded,
            };
        }
    }
    let mut visible = true;
    if next == *current {
        // A newer status event that confirms the current status changes nothing visible, but
        // its second must be remembered: a later event of that same second is a tie to settle,
        // not a newer truth.
        let confirms_status = matches!(change, Change::RequiresAction | Change::Processing | Change::Failed { .. });
        if !(confirms_status && event_at > current.last_event_at) {
            return None;
        }
        visible = false;
    }
    next.version = current.version + 1;
    next.last_event_at = current.last_event_at.max(event_at);
    next.updated_at = now_ms();
    // A payment whole again after a failed refund was paid before: it is not newly paid.
    let newly_succeeded =
        next.status == S::Succeeded && !matches!(current.status, S::Succeeded | S::PartiallyRefunded | S::Refunded);
    Some(Transition { payment: next, newly_succeeded, visible })
}

/// Whether `change`, seen in an event created at `event_at`, ties with the newest event already
/// applied: the same whole second, a non-final status, and a status other than the current one.
/// Stripe's `created` has one-second resolution and deliveries may arrive in any order, so a tie
/// cannot be ordered by the events; the PaymentIntent's status at Stripe settles it instead.
pub fn ties(current: &Payment, change: &Change, event_at: i64) -> bool {
    use PaymentStatus as S;
    let proposed = match change {
        Change::RequiresAction => S::Authenticating,
        Change::Processing => S::Processing,
        Change::Failed { .. } => S::Failed,
        _ => return false,
    };
    event_at != 0
        && event_at == current.last_event_at
        && proposed != current.status
        && !is_final_for_status(current.status)
}

/// The change a retrieved PaymentIntent's status stands for; `None` when its status says
/// nothing new (waiting for a payment method with no error, or a status callpay does not use).
pub fn from_intent(info: &IntentInfo) -> Option<Change> {
    Some(match info.status.as_str() {
        "requires_action" => Change::RequiresAction,
        "processing" => Change::Processing,
        "succeeded" => Change::Succeeded {
            amount_received: info.amount_received,
            currency: info.currency.clone(),
            receipt_email: info.receipt_email.clone(),
            card: info.card.clone(),
        },
        "canceled" => Change::Canceled,
        "requires_payment_method" => {
            let (code, decline_code, message) = info.last_error.clone()?;
            Change::Failed { code, decline_code, message }
        }
        _ => return None,
    })
}

fn clear_failure(p: &mut Payment) {
    p.failure_code = None;
    p.failure_decline_code = None;
    p.failure_message = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: PaymentStatus) -> Payment {
        Payment {
            id: "pay_1".into(),
            status,
            version: 3,
            amount: 5000,
            payment_intent_id: Some("pi".into()),
            client_secret: Some("pi_secret".into()),
            last_event_at: 100,
            ..Payment::default()
        }
    }

    fn failed() -> Change {
        Change::Failed {
            code: "card_declined".into(),
            decline_code: Some("generic_decline".into()),
            message: "no".into(),
        }
    }

    fn succeeded() -> Change {
        Change::Succeeded {
            amount_received: 5000,
            currency: "aud".into(),
            receipt_email: Some("p@e.co".into()),
            card: Some(("visa".into(), "4242".into())),
        }
    }

    #[test]
    fn success_is_final_and_reported_once() {
        let t = apply(&payment(PaymentStatus::Requested), &succeeded(), 101).unwrap();
        assert!(t.newly_succeeded);
        assert_eq!(t.payment.status, PaymentStatus::Succeeded);
        assert_eq!(t.payment.version, 4);
        assert_eq!(t.payment.card_last4.as_deref(), Some("4242"));
        // A duplicate success, a late failure, a late 3DS prompt or a cancel change nothing.
        for late in [succeeded(), failed(), Change::RequiresAction, Change::Processing, Change::Canceled] {
            assert_eq!(apply(&t.payment, &late, 102), None, "{late:?}");
        }
    }

    #[test]
    fn declines_can_be_retried_until_success() {
        let f = apply(&payment(PaymentStatus::Requested), &failed(), 101).unwrap();
        assert_eq!(f.payment.status, PaymentStatus::Failed);
        assert_eq!(f.payment.failure_decline_code.as_deref(), Some("generic_decline"));
        let a = apply(&f.payment, &Change::RequiresAction, 102).unwrap();
        assert_eq!(a.payment.status, PaymentStatus::Authenticating);
        assert_eq!(a.payment.failure_code, None, "a new attempt clears the old failure");
        let s = apply(&a.payment, &succeeded(), 103).unwrap();
        assert!(s.newly_succeeded);
    }

    #[test]
    fn stale_non_final_events_are_ignored_but_success_is_not() {
        let p = payment(PaymentStatus::Failed);
        assert_eq!(apply(&p, &Change::RequiresAction, 99), None, "older than the newest applied event");
        assert!(apply(&p, &succeeded(), 99).is_some(), "success is the truth whenever it arrives");
        assert_eq!(apply(&payment(PaymentStatus::Processing), &Change::RequiresAction, 101), None);
    }

    #[test]
    fn cancel_only_while_unpaid_and_is_final() {
        let c = apply(&payment(PaymentStatus::Requested), &Change::Canceled, 0).unwrap();
        assert_eq!(c.payment.status, PaymentStatus::Canceled);
        assert_eq!(apply(&c.payment, &succeeded(), 200), None);
        assert_eq!(apply(&c.payment, &Change::Canceled, 200), None);
    }

    #[test]
    fn refunds_only_grow_and_only_after_payment() {
        assert_eq!(apply(&payment(PaymentStatus::Requested), &Change::Refunded { amount_refunded: 100 }, 101), None);
        let paid = apply(&payment(PaymentStatus::Requested), &succeeded(), 101).unwrap().payment;
        let part = apply(&paid, &Change::Refunded { amount_refunded: 1000 }, 102).unwrap().payment;
        assert_eq!((part.status, part.amount_refunded), (PaymentStatus::PartiallyRefunded, 1000));
        assert_eq!(apply(&part, &Change::Refunded { amount_refunded: 500 }, 103), None, "never shrinks");
        let full = apply(&part, &Change::Refunded { amount_refunded: 5000 }, 104).unwrap().payment;
        assert_eq!(full.status, PaymentStatus::Refunded);
        assert_eq!(apply(&full, &failed(), 105), None);
    }

    #[test]
    fn a_refund_total_read_from_stripe_can_shrink_when_a_refund_fails() {
        let paid = apply(&payment(PaymentStatus::Requested), &succeeded(), 101).unwrap().payment;
        let part = apply(&paid, &Change::RefundTotal { amount_refunded: 2000 }, 0).unwrap();
        assert_eq!((part.payment.status, part.payment.amount_refunded), (PaymentStatus::PartiallyRefunded, 2000));
        assert!(!part.newly_succeeded, "a payment whole again is not paid again");
        let back = apply(&part.payment, &Change::RefundTotal { amount_refunded: 0 }, 0).unwrap();
        assert_eq!((back.payment.status, back.payment.amount_refunded), (PaymentStatus::Succeeded, 0));
        assert!(!back.newly_succeeded);
        let full = apply(&back.payment, &Change::RefundTotal { amount_refunded: 5000 }, 0).unwrap().payment;
        assert_eq!(full.status, PaymentStatus::Refunded);
        assert_eq!(apply(&full, &Change::RefundTotal { amount_refunded: 5000 }, 0), None, "the same total: nothing");
        assert_eq!(apply(&payment(PaymentStatus::Requested), &Change::RefundTotal { amount_refunded: 1 }, 0), None);
    }

    /// Every pair of same-second status events, delivered in either order, ends on the status
    /// Stripe reports when the tie is settled by asking it (the rule `apply_event` follows).
    #[test]
    fn same_second_pairs_converge_on_the_truth_in_either_order() {
        let events = [Change::RequiresAction, Change::Processing, failed()];
        let status_of = |c: &Change| match c {
            Change::RequiresAction => PaymentStatus::Authenticating,
            Change::Processing => PaymentStatus::Processing,
            _ => PaymentStatus::Failed,
        };
        for a in &events {
            for b in &events {
                // Either event may be the truth at Stripe; the truth is one of the pair. Stripe
                // never goes from processing back to requires_action, so that pair with
                // requires_action as the truth cannot happen (and the machine refuses it).
                for truth in [a, b] {
                    if *truth == Change::RequiresAction && (*a == Change::Processing || *b == Change::Processing) {
                        continue;
                    }
                    for (first, second) in [(a, b), (b, a)] {
                        let mut p = payment(PaymentStatus::Requested);
                        for change in [first, second] {
                            let change = if ties(&p, change, 200) { truth } else { change };
                            if let Some(t) = apply(&p, change, 200) {
                                p = t.payment;
                            }
                        }
                        assert_eq!(p.status, status_of(truth), "{first:?} then {second:?}, truth {truth:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_newer_event_confirming_the_status_is_remembered_silently() {
        let p = payment(PaymentStatus::Authenticating);
        let t = apply(&p, &Change::RequiresAction, 150).unwrap();
        assert!(!t.visible);
        assert_eq!((t.payment.status, t.payment.last_event_at), (PaymentStatus::Authenticating, 150));
        assert!(ties(&t.payment, &failed(), 150), "a failure in the same second is now a tie");
        assert_eq!(apply(&p, &Change::RequiresAction, 100), None, "not newer: nothing to remember");
    }

    #[test]
    fn created_only_from_creating() {
        let mut p = payment(PaymentStatus::Creating);
        p.payment_intent_id = None;
        let t = apply(&p, &Change::Created { payment_intent_id: "pi_9".into(), client_secret: "s".into() }, 0).unwrap();
        assert_eq!(t.payment.status, PaymentStatus::Requested);
        assert_eq!(
            apply(&t.payment, &Change::Created { payment_intent_id: "pi_x".into(), client_secret: "s".into() }, 0),
            None
        );
        assert_eq!(apply(&p, &failed(), 101), None, "no Stripe status before the intent exists");
    }
}

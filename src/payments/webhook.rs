//! Applying what Stripe reports: a verified webhook event, or a read of the PaymentIntent made
//! by the hub itself, is matched to our payment, checked against the request, run through the
//! state machine, stored with its audit record in one transaction and announced.

use super::event::Event;
use super::parse::{Parsed, parse_event};
use super::stripe::GatewayError;
use super::{Payments, UPDATE_ATTEMPTS, state, validate};
use crate::store::{AuditEntry, Committed, Payment, Refund, STRIPE, StoreError, WebhookRecord, Write};
use callpay_protocol::PaymentStatus;
use state::Change;

/// What handling a webhook event did (answered to Stripe and logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The payment changed.
    Applied,
    /// Already processed.
    Duplicate,
    /// Valid but changes nothing (stale, or a repeat of the current state).
    NoChange,
    /// No payment of ours matches.
    UnknownPayment,
    /// An event type callpay does not act on.
    Ignored,
    /// Refused and audited: a PaymentIntent other than the one the hub created, or a success
    /// for another amount or currency than was requested. The payment is not confirmed.
    Refused,
}

/// Why a webhook event could not be handled now; Stripe retries the delivery.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Settling a same-second tie needs the PaymentIntent from Stripe, which did not answer.
    #[error("stripe unavailable while settling a same-second tie: {0}")]
    Stripe(#[from] GatewayError),
}

impl Payments {
    /// Applies what the hub learnt from Stripe itself (not from a webhook) to `payment`:
    /// through the same checks and state machine, audited as Stripe's, announced if it changed.
    pub(super) async fn settle(&self, payment: &Payment, change: Change, event_at: i64, why: &str) {
        if let Some(problem) = success_mismatch(payment, &change) {
            self.audit_only(refused_success(payment, &problem, why)).await;
            return;
        }
        let action = format!("payment.{}", crate::store::status_str(change_status(payment, &change)));
        let entry = stripe_audit(payment, &action).with_detail(why);
        match self.transition_at(&payment.id, &change, event_at, entry).await {
            Ok(Some(t)) => self.announce(t),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, payment_id = %payment.id, "could not store what Stripe reported"),
        }
    }

    /// Applies what a read of the PaymentIntent found, made while the stored payment was
    /// `read_from`. A read carries no event time, so it may be older than a webhook applied
    /// while it was on its way (a decline read after the retry's `processing` arrived): a
    /// non-final status from it applies only if nothing changed the payment since the read
    /// began. A success or a cancellation is Stripe's last word and always goes through the
    /// state machine.
    /// Answers false only when a change stored since the read began made it stale.
    pub(super) async fn settle_read(&self, read_from: &Payment, change: Change, why: &str) -> bool {
        if matches!(change, Change::Succeeded { .. } | Change::Canceled) {
            self.settle(read_from, change, 0, why).await;
            return true;
        }
        let Some(t) = state::apply(read_from, &change, 0) else { return true };
        let action = format!("payment.{}", crate::store::status_str(t.payment.status));
        let entry = stripe_audit(&t.payment, &action).with_detail(why);
        // Written only over the version the read began from: one attempt, no re-read.
        let mut writes = super::changed(read_from, &t.payment);
        writes.push(Write::Audit(entry));
        match self.store.commit(&writes).await {
            Ok(Committed::Applied) => {
                self.announce(t);
                true
            }
            Ok(_) => {
                tracing::debug!(payment_id = %read_from.id, "a read older than the payment's last change is ignored");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, payment_id = %read_from.id, "could not store what Stripe reported");
                true
            }
        }
    }

    /// Applies a verified Stripe event: deduplicated by id, matched to the PaymentIntent the hub
    /// created (metadata only helps find it), checked against the request, settled on Stripe's
    /// own status when it ties with the last applied event, run through the state machine, and
    /// stored with its audit record in one transaction, then pushed to the room. An error means
    /// nothing was stored: Stripe retries the delivery.
    pub async fn apply_event(&self, event: &Event) -> Result<EventOutcome, EventError> {
        let event_id = event.id.as_str();
        if self.store.webhook_seen(event_id).await? {
            return Ok(EventOutcome::Duplicate);
        }
        let account = event.account.clone();
        let created = event.created;
        let parsed = parse_event(event, account.as_deref(), self.stripe.as_ref()).await?;
        let record = |payment_id: Option<&str>, outcome: &str| WebhookRecord {
            event_id: event_id.to_owned(),
            event_type: event.kind.as_str().to_owned(),
            account: account.clone(),
            payment_id: payment_id.map(str::to_owned),
            outcome: outcome.to_owned(),
        };
        let Some(Parsed { intent_id, metadata_id, change, refund }) = parsed else {
            self.record_only(record(None, "ignored")).await?;
            return Ok(EventOutcome::Ignored);
        };
        for _ in 0..UPDATE_ATTEMPTS {
            let current = match self.find(&intent_id, metadata_id.as_deref(), account.as_deref()).await? {
                Found::Ours(p) => p,
                Found::Nothing => {
                    tracing::info!(
                        event_id,
                        kind = event.kind.as_str(),
                        "webhook for a payment this hub does not know"
                    );
                    return Ok(self
                        .record_only(record(None, "unknown_payment"))
                        .await?
                        .unwrap_or(EventOutcome::UnknownPayment));
                }
                Found::OtherIntent(p) => {
                    tracing::error!(
                        event_id,
                        payment_id = %p.id,
                        event_intent = %intent_id,
                        "ALERT: a PaymentIntent the hub did not create claims one of its payments; refused"
                    );
                    let audit = AuditEntry { outcome: "refused".into(), ..stripe_audit(&p, "payment.intent_mismatch") }
                        .with_detail(format!("event {event_id} for {intent_id}"));
                    let writes = [Write::Webhook(record(Some(&p.id), "intent_mismatch")), Write::Audit(audit)];
                    return Ok(match self.store.commit(&writes).await? {
                        Committed::Duplicate => EventOutcome::Duplicate,
                        _ => EventOutcome::Refused,
                    });
                }
            };
            // Stripe's refunded total is read again after the payment it is written over: a
            // total read before a newer one was stored (another event, another node) would
            // take the record back. A conflict reads both again.
            let change = match (&change, account.as_deref()) {
                (Change::RefundTotal { .. }, Some(acct)) => {
                    Change::RefundTotal { amount_refunded: self.stripe.intent(acct, &intent_id).await?.amount_refunded }
                }
                _ => change.clone(),
            };
            // Same second as the last applied event: the order of delivery says nothing, so
            // ask Stripe for the PaymentIntent's status now and apply that instead.
            let change = if state::ties(&current, &change, created) {
                let info = self.stripe.intent(&current.stripe_account, &intent_id).await?;
                match state::from_intent(&info) {
                    Some(truth) => truth,
                    None => change.clone(),
                }
            } else {
                change.clone()
            };
            if let Some(problem) = success_mismatch(&current, &change) {
                let audit = refused_success(&current, &problem, &format!("event {event_id}"));
                let writes = [Write::Webhook(record(Some(&current.id), "amount_mismatch")), Write::Audit(audit)];
                return Ok(match self.store.commit(&writes).await? {
                    Committed::Duplicate => EventOutcome::Duplicate,
                    _ => EventOutcome::Refused,
                });
            }
            // A refund event's refund is recorded whether or not the total changed (the first of
            // refund.updated, refund.failed and charge.refund.updated changes it).
            let seen = refund.clone().map(|r| {
                Write::RefundSeen(Box::new(Refund {
                    payment_id: current.id.clone(),
                    clinic_id: current.clinic_id.clone(),
                    ..r
                }))
            });
            let Some(t) = state::apply(&current, &change, created) else {
                let mut writes = vec![Write::Webhook(record(Some(&current.id), "no_change"))];
                writes.extend(seen);
                return Ok(match self.store.commit(&writes).await? {
                    Committed::Duplicate => EventOutcome::Duplicate,
                    _ => EventOutcome::NoChange,
                });
            };
            let action = format!("payment.{}", crate::store::status_str(t.payment.status));
            let audit = stripe_audit(&t.payment, &action).with_detail(format!("event {event_id}"));
            let receipt = self.receipt_write(&t).await?;
            let queued = receipt.is_some();
            let mut writes = vec![Write::Webhook(record(Some(&current.id), "applied"))];
            writes.extend(super::changed(&current, &t.payment));
            writes.push(Write::Audit(audit));
            writes.extend(receipt);
            if let Some(r) = refund.as_ref().filter(|r| r.status == "failed") {
                let detail = format!(
                    "event {event_id}: {} {}",
                    validate::display_amount(r.amount, &r.currency),
                    r.failure_reason.as_deref().unwrap_or("failed")
                );
                let entry = AuditEntry { outcome: "failed".into(), ..stripe_audit(&current, "refund.failed") };
                writes.push(Write::Audit(entry.with_detail(detail)));
            }
            writes.extend(seen);
            match self.store.commit(&writes).await? {
                Committed::Applied => {
                    // Committed, not yet announced: where a crash leaves other nodes' rooms
                    // behind the store (tests arm this to prove that they catch up).
                    if t.newly_succeeded {
                        crate::faults::crash_here("abort_after_committing_a_success");
                    }
                    if queued {
                        self.receipts_queued.notify_one();
                    }
                    self.announce(t);
                    return Ok(EventOutcome::Applied);
                }
                Committed::Duplicate => return Ok(EventOutcome::Duplicate),
                Committed::Conflict => continue,
            }
        }
        Err(StoreError::Corrupt(format!("event {event_id}: payment kept changing under concurrent updates")).into())
    }

    /// Records an event that changes nothing; `Some(Duplicate)` if it was seen before.
    async fn record_only(&self, record: WebhookRecord) -> Result<Option<EventOutcome>, StoreError> {
        Ok(match self.store.commit(&[Write::Webhook(record)]).await? {
            Committed::Duplicate => Some(EventOutcome::Duplicate),
            _ => None,
        })
    }

    /// The payment an event is about. The stored PaymentIntent id decides; the metadata only
    /// helps find a payment, which then must name the same PaymentIntent and account.
    async fn find(
        &self,
        intent_id: &str,
        metadata_id: Option<&str>,
        account: Option<&str>,
    ) -> Result<Found, StoreError> {
        let by_intent = self.store.payment_by_intent(intent_id).await?;
        let payment = match (by_intent, metadata_id) {
            (Some(p), _) => p,
            (None, Some(id)) => match self.store.payment(id).await? {
                Some(p) => p,
                None => return Ok(Found::Nothing),
            },
            (None, None) => return Ok(Found::Nothing),
        };
        // An event from another account cannot touch our payment, whatever its metadata says.
        if Some(payment.stripe_account.as_str()) != account {
            return Ok(Found::Nothing);
        }
        if payment.payment_intent_id.as_deref() != Some(intent_id) {
            return Ok(Found::OtherIntent(payment));
        }
        Ok(Found::Ours(payment))
    }
}

/// What [`Payments::find`] found.
enum Found {
    /// The payment whose PaymentIntent this is.
    Ours(Payment),
    /// A payment named by metadata whose PaymentIntent is another one.
    OtherIntent(Payment),
    /// Nothing of ours.
    Nothing,
}

/// An audit record of Stripe changing `payment`.
pub(super) fn stripe_audit(payment: &Payment, action: &str) -> AuditEntry {
    AuditEntry {
        clinic_id: Some(payment.clinic_id.clone()),
        target: Some(payment.id.clone()),
        ..AuditEntry::new(STRIPE, action, "ok")
    }
}

/// Alerts on a success that does not match the request and returns its audit record; the
/// payment is never confirmed on it.
fn refused_success(payment: &Payment, problem: &str, source: &str) -> AuditEntry {
    tracing::error!(
        payment_id = %payment.id,
        clinic_id = %payment.clinic_id,
        problem,
        source,
        "ALERT: Stripe reported a success that does not match the request; not confirmed"
    );
    AuditEntry { outcome: "refused".into(), ..stripe_audit(payment, "payment.amount_mismatch") }
        .with_detail(format!("{problem} ({source})"))
}

/// The status `change` would give `payment`, for naming the audit action.
fn change_status(payment: &Payment, change: &Change) -> PaymentStatus {
    state::apply(payment, change, 0).map_or(payment.status, |t| t.payment.status)
}

/// Why a reported success cannot be this payment's, if it cannot.
fn success_mismatch(payment: &Payment, change: &Change) -> Option<String> {
    let Change::Succeeded { amount_received, currency, .. } = change else { return None };
    let same = *amount_received == payment.amount && currency.eq_ignore_ascii_case(&payment.currency);
    (!same).then(|| {
        format!(
            "requested {}, Stripe received {}",
            validate::display_amount(payment.amount, &payment.currency),
            validate::display_amount(*amount_received, currency)
        )
    })
}

#[cfg(all(test, feature = "demo"))]
mod tests {
    use super::*;
    use crate::payments::stripe::{IntentInfo, NewIntent, NewRefund, RefundInfo, StripeApi};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::Notify;

    /// Stripe whose first read of the refunded total is from before a dashboard refund, held
    /// back until the test lets it go; every later read sees it.
    struct LaggingStripe {
        reads: AtomicU32,
        asked: Notify,
        release: Notify,
    }

    #[async_trait::async_trait]
    impl StripeApi for LaggingStripe {
        async fn create_intent(&self, _: &NewIntent) -> Result<IntentInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
        async fn cancel_intent(&self, _: &str, _: &str, _: &str) -> Result<IntentInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
        async fn intent(&self, _: &str, id: &str) -> Result<IntentInfo, GatewayError> {
            let first = self.reads.fetch_add(1, Ordering::SeqCst) == 0;
            if first {
                self.asked.notify_one();
                self.release.notified().await;
            }
            Ok(crate::payments::testing::succeeded_intent(id, if first { 1000 } else { 3000 }))
        }
        async fn account_name(&self, _: &str) -> Option<String> {
            None
        }
        async fn create_refund(&self, _: &NewRefund) -> Result<RefundInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
    }

    #[tokio::test]
    async fn a_refund_event_whose_total_was_read_before_a_newer_one_was_stored_changes_nothing() {
        let stripe = Arc::new(LaggingStripe { reads: AtomicU32::new(0), asked: Notify::new(), release: Notify::new() });
        let (payments, store) = crate::payments::testing::service(stripe.clone()).await;
        let paid = crate::payments::testing::paid();
        store.insert_payment(&paid).await.unwrap();
        let charge =
            serde_json::json!({"id": "ch_1", "currency": "aud", "payment_intent": "pi_1", "payment_method": "pm_1"});
        let refund = stripe_sim::objects::refund(&charge, 1000, Some("duplicate"), serde_json::json!({}));
        let body = stripe_sim::objects::event("refund.updated", &refund, Some("acct_1"), None, (None, None), 1);
        let event = super::super::event::parse(&body.to_string()).unwrap();
        let applying = tokio::spawn({
            let payments = payments.clone();
            async move { payments.apply_event(&event).await.map(|o| format!("{o:?}")) }
        });
        // The event's read of Stripe's total is on its way...
        stripe.asked.notified().await;
        // ...when another event stores the newer total (a second refund of 20.00).
        let newer =
            Payment { status: PaymentStatus::PartiallyRefunded, amount_refunded: 3000, version: 3, ..paid.clone() };
        let writes = [Write::Payment { payment: Box::new(newer), expected_version: 2 }];
        assert_eq!(store.commit(&writes).await.unwrap(), Committed::Applied);
        stripe.release.notify_one();
        applying.await.unwrap().unwrap();
        let now = store.payment("pay_1").await.unwrap().unwrap();
        assert_eq!(now.amount_refunded, 3000, "the event's stale total took the refunded amount back");
    }
}

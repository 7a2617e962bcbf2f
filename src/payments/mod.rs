//! The payment flow: a clinician's request becomes a stored payment and a PaymentIntent on the
//! clinic's connected account; Stripe's webhooks move it through the state machine; every change
//! is stored first and then pushed to the call's room.
//!
//! [`commands`] holds what participants ask for (request, cancel, progress), [`webhook`] applies
//! what Stripe reports, [`parse`] turns a Stripe event into a state change, and [`refunds`]
//! returns money. This file holds what they share: the service, its optimistic store writes and
//! the announcement of each committed change.

mod commands;
pub mod event;
pub mod link;
mod links;
mod parse;
pub mod refunds;
pub mod refusals;
pub mod state;
pub mod stripe;
#[cfg(test)]
mod testing;
pub mod validate;
pub mod verify;
mod webhook;

pub use links::{LinkRefusal, LinkState, LinkView};
pub use webhook::{EventError, EventOutcome};

use crate::bus::RoomEvent;
use crate::config::PaymentsConfig;
use crate::hub::Hub;
use crate::store::{Actor, AuditEntry, Committed, Payment, Store, StoreError, Write};
use callpay_protocol::{ErrorCode, Participant, Role};
use state::{Change, Transition};
use std::sync::Arc;
use stripe::StripeApi;

/// Attempts at an optimistic update before giving up (each attempt re-reads the payment).
const UPDATE_ATTEMPTS: usize = 5;

/// A refused client request: what goes into the `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
    /// The `client_ref` or `payment_id` concerned.
    pub reference: Option<String>,
    /// With [`ErrorCode::Busy`]: when to send the command again.
    pub retry_after: Option<std::time::Duration>,
}

impl Refusal {
    /// A refusal; a reference that is not a well-formed `client_ref` or payment id (too long,
    /// control characters) is not echoed back.
    pub fn new(code: ErrorCode, message: impl Into<String>, reference: Option<&str>) -> Self {
        let reference = reference.filter(|r| validate::client_ref_ok(r)).map(str::to_owned);
        Self { code, message: message.into(), reference, retry_after: None }
    }

    /// A command turned away before anything was done with it, because the node is handling
    /// as many as its store can serve: to be sent again, unchanged, after `retry`.
    pub fn busy(retry: std::time::Duration, reference: Option<&str>) -> Self {
        let message = format!("The hub is busy; nothing was done. Send it again in {:.1} s.", retry.as_secs_f64());
        Self { retry_after: Some(retry), ..Self::new(ErrorCode::Busy, message, reference) }
    }

    pub(crate) fn store(e: StoreError, reference: Option<&str>) -> Self {
        tracing::error!(error = %e, "store failure while handling a client request");
        Self::new(
            ErrorCode::Internal,
            "The hub could not save this right now; nothing was charged. Try again.",
            reference,
        )
    }
}

/// Who is asking: from the connection's join token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The participant.
    pub participant: Participant,
    /// Their call.
    pub call_id: String,
    /// The call's clinic.
    pub clinic_id: String,
}

/// The payment service.
pub struct Payments {
    store: Arc<dyn Store>,
    stripe: Arc<dyn StripeApi>,
    hub: Arc<Hub>,
    cfg: PaymentsConfig,
    verify_gate: verify::Gate,
    refusal_gate: refusals::Gate,
    /// Where the next pass over recently changed payments goes on from (none before the first).
    changes_cursor: std::sync::Mutex<Option<verify::ChangesCursor>>,
    /// Woken when a receipt is queued, so the receipt sender need not wait for its next poll.
    receipts_queued: Arc<tokio::sync::Notify>,
}

impl Payments {
    /// The service over its dependencies.
    pub fn new(store: Arc<dyn Store>, stripe: Arc<dyn StripeApi>, hub: Arc<Hub>, cfg: PaymentsConfig) -> Self {
        Self {
            store,
            stripe,
            hub,
            cfg,
            verify_gate: verify::Gate::default(),
            refusal_gate: refusals::Gate::default(),
            changes_cursor: std::sync::Mutex::new(None),
            receipts_queued: Arc::default(),
        }
    }

    /// Notified each time a success queues callpay's own receipt (the sender waits on it).
    pub fn receipts_queued(&self) -> Arc<tokio::sync::Notify> {
        self.receipts_queued.clone()
    }

    /// The outbox row for callpay's own receipt, if `t` is the payment's first success and its
    /// clinic sends its own receipts to an address the patient gave: written in the same
    /// transaction as the success, so it is sent after the confirmation is stored and no
    /// restart loses it. One clinic read, on a success only.
    pub(crate) async fn receipt_write(&self, t: &Transition) -> Result<Option<Write>, StoreError> {
        if !t.newly_succeeded || t.payment.receipt_email.is_none() {
            return Ok(None);
        }
        let own = self.store.clinic(&t.payment.clinic_id).await?.is_some_and(|c| c.own_receipts);
        Ok(own
            .then(|| Write::QueueReceipt { payment_id: t.payment.id.clone(), clinic_id: t.payment.clinic_id.clone() }))
    }

    /// Appends an audit record that stands alone (a refusal, a repeat): nothing changed, so a
    /// lost record is only logged.
    pub(crate) async fn audit_only(&self, entry: AuditEntry) {
        if let Err(e) = self.store.commit(&[Write::Audit(entry)]).await {
            tracing::error!(error = %e, "AUDIT RECORD LOST: store unavailable");
        }
    }

    /// Applies a change that did not come from a webhook event.
    pub(crate) async fn transition(
        &self,
        id: &str,
        change: &Change,
        audit: AuditEntry,
    ) -> Result<Option<Transition>, StoreError> {
        self.transition_at(id, change, 0, audit).await
    }

    /// Applies `change` with optimistic concurrency (read, compute, write if unchanged, else
    /// retry), writing `audit` in the same transaction as the change.
    pub(crate) async fn transition_at(
        &self,
        id: &str,
        change: &Change,
        event_at: i64,
        audit: AuditEntry,
    ) -> Result<Option<Transition>, StoreError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(current) = self.store.payment(id).await? else { return Ok(None) };
            let Some(t) = state::apply(&current, change, event_at) else { return Ok(None) };
            let receipt = self.receipt_write(&t).await?;
            let queued = receipt.is_some();
            let mut writes = changed(&current, &t.payment);
            writes.push(Write::Audit(audit.clone()));
            writes.extend(receipt);
            if self.store.commit(&writes).await? == Committed::Applied {
                if queued {
                    self.receipts_queued.notify_one();
                }
                return Ok(Some(t));
            }
        }
        Err(StoreError::Corrupt(format!("payment {id} kept changing under concurrent updates")))
    }

    pub(crate) fn announce(&self, t: Transition) {
        if !t.visible {
            return;
        }
        let p = Box::new(t.payment);
        self.publish(&p, RoomEvent::PaymentUpdated { payment: p.clone() });
        if t.newly_succeeded {
            self.publish(&p, RoomEvent::PaymentConfirmed { payment: p.clone() });
        }
    }

    pub(crate) fn publish(&self, p: &Payment, event: RoomEvent) {
        self.hub.publish(&p.call_id, &p.clinic_id, event);
    }
}

/// The writes that store `after` over `before` (if `before` is still the stored version), with
/// the platform's events about the change: one transaction, so an event exists exactly when
/// its change does. Every payment change goes through here.
pub(crate) fn changed(before: &Payment, after: &Payment) -> Vec<Write> {
    let mut writes = vec![Write::Payment { payment: Box::new(after.clone()), expected_version: before.version }];
    writes.extend(crate::events::catalogue::payment_writes(before, after));
    writes
}

impl Caller {
    /// An audit record of this participant's `action`.
    pub(crate) fn audit(&self, action: &str, target: Option<&str>, outcome: &str) -> AuditEntry {
        let role = match self.participant.role {
            Role::Clinician => "clinician",
            Role::Patient => "patient",
        };
        let actor = Actor { id: &self.participant.id, name: &self.participant.name, role };
        AuditEntry {
            clinic_id: Some(self.clinic_id.clone()),
            target: target.map(str::to_owned),
            ..AuditEntry::new(actor, action, outcome)
        }
    }
}

//! The payment flow: a clinician's request becomes a stored payment and a PaymentIntent on the
//! clinic's connected account; Stripe's webhooks move it through the state machine; every change
//! is stored first and then pushed to the call's room.

pub mod event;
pub mod state;
pub mod stripe;
pub mod validate;
pub mod verify;

use crate::bus::RoomEvent;
use crate::config::PaymentsConfig;
use crate::hub::Hub;
use crate::ids::random_id;
use crate::rooms::ProgressRefusal;
use crate::store::{
    Actor, AuditEntry, Committed, Inserted, Payment, STRIPE, Store, StoreError, WebhookRecord, Write, now_ms,
};
use callpay_protocol::{ErrorCode, Participant, PaymentStatus, ProgressStage, Role};
use event::{Event, EventObject};
use state::{Change, Transition};
use std::collections::HashMap;
use std::sync::Arc;
use stripe::{GatewayError, NewIntent, StripeApi};

/// Attempts at an optimistic update before giving up (each attempt re-reads the payment).
const UPDATE_ATTEMPTS: usize = 5;
/// How long a webhook may wait for the card's brand and last four before confirming without
/// them: Stripe expects a quick answer, and `charge.succeeded` fills them in anyway.
const CARD_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A refused client request: what goes into the `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
    /// The `client_ref` or `payment_id` concerned.
    pub reference: Option<String>,
}

impl Refusal {
    /// A refusal; a reference that is not a well-formed `client_ref` or payment id (too long,
    /// control characters) is not echoed back.
    pub fn new(code: ErrorCode, message: impl Into<String>, reference: Option<&str>) -> Self {
        let reference = reference.filter(|r| validate::client_ref_ok(r)).map(str::to_owned);
        Self { code, message: message.into(), reference }
    }

    fn store(e: StoreError, reference: Option<&str>) -> Self {
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
}

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
    /// The service over its dependencies.
    pub fn new(store: Arc<dyn Store>, stripe: Arc<dyn StripeApi>, hub: Arc<Hub>, cfg: PaymentsConfig) -> Self {
        Self { store, stripe, hub, cfg, verify_gate: verify::Gate::default() }
    }

    /// Every payment of a call, for `welcome`.
    pub async fn snapshot(&self, call_id: &str) -> Result<Vec<Payment>, StoreError> {
        self.store.payments_for_call(call_id).await
    }

    /// `payment.request` from a clinician; audited whatever the outcome (a request that goes
    /// through is audited in the same transaction as the payment it creates).
    pub async fn request(
        &self,
        who: &Caller,
        client_ref: &str,
        amount: i64,
        currency: &str,
        description: &str,
    ) -> Result<(), Refusal> {
        // A malformed client_ref is refused below; it is never stored beyond a bounded cut.
        let shown: String = client_ref.chars().take(validate::MAX_CLIENT_REF).collect();
        let detail = format!("{} ref {shown}", validate::display_amount(amount, currency));
        let ok = who.audit("payment.requested", Some(&shown), "ok").with_detail(detail.clone());
        let result = self.request_inner(who, client_ref, amount, currency, description, ok).await;
        if let Err(r) = &result {
            self.audit_refusal(who, "payment.requested", Some(&shown), r, detail).await;
        }
        result
    }

    async fn request_inner(
        &self,
        who: &Caller,
        client_ref: &str,
        amount: i64,
        currency: &str,
        description: &str,
        ok: AuditEntry,
    ) -> Result<(), Refusal> {
        let reference = Some(client_ref);
        if who.participant.role != Role::Clinician {
            return Err(Refusal::new(ErrorCode::Forbidden, "Only the clinician can request a payment.", reference));
        }
        let description = validate::request(&self.cfg, client_ref, amount, currency, description)
            .map_err(|(code, message)| Refusal::new(code, message, reference))?;
        let clinic = self.store.clinic(&who.clinic_id).await.map_err(|e| Refusal::store(e, reference))?;
        let account = match clinic.as_ref().map(|c| c.payment_readiness()) {
            None | Some(Err(ErrorCode::AppNotEnabled)) => {
                return Err(Refusal::new(
                    ErrorCode::AppNotEnabled,
                    "The payment app is not enabled for this clinic.",
                    reference,
                ));
            }
            Some(Err(_)) => {
                return Err(Refusal::new(
                    ErrorCode::StripeNotConnected,
                    "This clinic has not linked a Stripe account yet. A clinic admin can link one under Configure > Client Payment.",
                    reference,
                ));
            }
            Some(Ok(account)) => account.to_owned(),
        };
        let now = now_ms();
        let fresh = Payment {
            id: format!("pay_{}", random_id()),
            call_id: who.call_id.clone(),
            clinic_id: who.clinic_id.clone(),
            client_ref: client_ref.to_owned(),
            requested_by_id: who.participant.id.clone(),
            requested_by_name: who.participant.name.clone(),
            amount,
            currency: currency.to_owned(),
            description,
            stripe_account: account,
            created_at: now,
            updated_at: now,
            ..Payment::default()
        };
        let payment = match self.store.insert_payment(&fresh).await.map_err(|e| Refusal::store(e, reference))? {
            Inserted::New => fresh,
            Inserted::Existing(existing) => {
                let same = existing.amount == fresh.amount
                    && existing.currency == fresh.currency
                    && existing.description == fresh.description;
                if !same {
                    return Err(Refusal::new(
                        ErrorCode::InvalidClientRef,
                        "This client_ref was already used in this call for a different request.",
                        reference,
                    ));
                }
                if existing.status != PaymentStatus::Creating {
                    // A retry of a request that went through: show its current state again.
                    self.audit_only(ok.with_detail("repeated request; nothing new was created")).await;
                    self.publish(&existing, RoomEvent::PaymentUpdated { payment: existing.clone() });
                    return Ok(());
                }
                *existing
            }
        };
        let mut metadata = HashMap::new();
        metadata.insert("callpay_payment_id".to_owned(), payment.id.clone());
        metadata.insert("call_id".to_owned(), payment.call_id.clone());
        metadata.insert("clinic_id".to_owned(), payment.clinic_id.clone());
        let intent = NewIntent {
            account: payment.stripe_account.clone(),
            amount: payment.amount,
            currency: payment.currency.clone(),
            description: payment.description.clone(),
            metadata,
            idempotency_key: format!("callpay:{}:create", payment.id),
        };
        let created = self.stripe.create_intent(&intent).await.map_err(|e| gateway_refusal(e, reference))?;
        let change =
            Change::Created { payment_intent_id: created.id, client_secret: created.client_secret.unwrap_or_default() };
        let ok = AuditEntry { target: Some(payment.id.clone()), ..ok };
        match self.transition(&payment.id, &change, ok).await.map_err(|e| Refusal::store(e, reference))? {
            Some(t) => self.publish(&t.payment, RoomEvent::PaymentRequested { payment: Box::new(t.payment.clone()) }),
            None => {
                // A concurrent retry created it first and already announced it.
                tracing::debug!(payment_id = %payment.id, "payment already created by a concurrent request");
            }
        }
        Ok(())
    }

    /// `payment.cancel` from a clinician; audited whatever the outcome.
    pub async fn cancel(&self, who: &Caller, payment_id: &str) -> Result<(), Refusal> {
        let result = self.cancel_inner(who, payment_id).await;
        if let Err(r) = &result {
            self.audit_refusal(who, "payment.canceled", Some(payment_id), r, String::new()).await;
        }
        result
    }

    /// Records a refused participant action. Nothing changed, so a lost record is only logged.
    async fn audit_refusal(&self, who: &Caller, action: &str, target: Option<&str>, r: &Refusal, detail: String) {
        let entry = who
            .audit(action, target, "refused")
            .with_detail(format!("{detail} {:?}: {}", r.code, r.message).trim().to_owned());
        self.audit_only(entry).await;
    }

    async fn audit_only(&self, entry: AuditEntry) {
        if let Err(e) = self.store.commit(&[Write::Audit(entry)]).await {
            tracing::error!(error = %e, "AUDIT RECORD LOST: store unavailable");
        }
    }

    async fn cancel_inner(&self, who: &Caller, payment_id: &str) -> Result<(), Refusal> {
        let reference = Some(payment_id);
        if who.participant.role != Role::Clinician {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "Only the clinician can cancel a payment request.",
                reference,
            ));
        }
        let payment = self.payment_in_call(who, payment_id).await?;
        if !matches!(
            payment.status,
            PaymentStatus::Creating | PaymentStatus::Requested | PaymentStatus::Authenticating | PaymentStatus::Failed
        ) {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                format!("This payment cannot be cancelled: it is {}.", status_word(payment.status)),
                reference,
            ));
        }
        if let Some(pi) = &payment.payment_intent_id {
            let key = format!("callpay:{}:cancel", payment.id);
            if let Err(e) = self.stripe.cancel_intent(&payment.stripe_account, pi, &key).await {
                // The patient may have paid a moment ago: take Stripe's word for the state.
                if let GatewayError::Rejected { .. } = e
                    && let Ok(info) = self.stripe.intent(&payment.stripe_account, pi).await
                    && info.status == "succeeded"
                {
                    if let Some(change) = state::from_intent(&info) {
                        self.settle(&payment, change, 0, "cancel found it paid").await;
                    }
                    return Err(Refusal::new(ErrorCode::InvalidState, "The patient has already paid.", reference));
                }
                return Err(gateway_refusal(e, reference));
            }
        }
        let ok = who.audit("payment.canceled", Some(payment_id), "ok");
        match self.transition(&payment.id, &Change::Canceled, ok).await.map_err(|e| Refusal::store(e, reference))? {
            Some(t) => self.announce(t),
            None => {
                return Err(Refusal::new(
                    ErrorCode::InvalidState,
                    "This payment can no longer be cancelled.",
                    reference,
                ));
            }
        }
        Ok(())
    }

    /// Applies what the hub learnt from Stripe itself (not from a webhook) to `payment`:
    /// through the same checks and state machine, audited as Stripe's, announced if it changed.
    async fn settle(&self, payment: &Payment, change: Change, event_at: i64, why: &str) {
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
    async fn settle_read(&self, read_from: &Payment, change: Change, why: &str) {
        if matches!(change, Change::Succeeded { .. } | Change::Canceled) {
            return self.settle(read_from, change, 0, why).await;
        }
        let Some(t) = state::apply(read_from, &change, 0) else { return };
        let action = format!("payment.{}", crate::store::status_str(t.payment.status));
        let entry = stripe_audit(&t.payment, &action).with_detail(why);
        // Written only over the version the read began from: one attempt, no re-read.
        let writes = [
            Write::Payment { payment: Box::new(t.payment.clone()), expected_version: read_from.version },
            Write::Audit(entry),
        ];
        match self.store.commit(&writes).await {
            Ok(Committed::Applied) => self.announce(t),
            Ok(_) => {
                tracing::debug!(payment_id = %read_from.id, "a read older than the payment's last change is ignored")
            }
            Err(e) => tracing::error!(error = %e, payment_id = %read_from.id, "could not store what Stripe reported"),
        }
    }

    /// `payment.progress` from a patient: checked against the room's routing state (kept by
    /// the events that change payments) and relayed, without touching the store.
    pub fn progress(&self, who: &Caller, payment_id: &str, stage: ProgressStage) -> Result<(), Refusal> {
        let reference = Some(payment_id);
        if who.participant.role != Role::Patient {
            return Err(Refusal::new(ErrorCode::Forbidden, "Only the patient reports payment progress.", reference));
        }
        match self.hub.rooms.check_progress(&who.call_id, payment_id) {
            Ok(()) => {}
            Err(ProgressRefusal::UnknownPayment) => {
                return Err(Refusal::new(
                    ErrorCode::UnknownPayment,
                    "There is no such payment in this call.",
                    reference,
                ));
            }
            Err(ProgressRefusal::NotPayable) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidState,
                    "This payment is not waiting to be paid.",
                    reference,
                ));
            }
        }
        let event = RoomEvent::Progress {
            payment_id: payment_id.to_owned(),
            stage,
            participant_id: who.participant.id.clone(),
        };
        self.hub.publish(&who.call_id, &who.clinic_id, event);
        Ok(())
    }

    async fn payment_in_call(&self, who: &Caller, payment_id: &str) -> Result<Payment, Refusal> {
        let reference = Some(payment_id);
        match self.store.payment(payment_id).await.map_err(|e| Refusal::store(e, reference))? {
            Some(p) if p.call_id == who.call_id => Ok(p),
            _ => Err(Refusal::new(ErrorCode::UnknownPayment, "There is no such payment in this call.", reference)),
        }
    }

    /// Applies a change that did not come from a webhook event.
    async fn transition(&self, id: &str, change: &Change, audit: AuditEntry) -> Result<Option<Transition>, StoreError> {
        self.transition_at(id, change, 0, audit).await
    }

    /// Applies `change` with optimistic concurrency (read, compute, write if unchanged, else
    /// retry), writing `audit` in the same transaction as the change.
    async fn transition_at(
        &self,
        id: &str,
        change: &Change,
        event_at: i64,
        audit: AuditEntry,
    ) -> Result<Option<Transition>, StoreError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(current) = self.store.payment(id).await? else { return Ok(None) };
            let Some(t) = state::apply(&current, change, event_at) else { return Ok(None) };
            let writes = [
                Write::Payment { payment: Box::new(t.payment.clone()), expected_version: current.version },
                Write::Audit(audit.clone()),
            ];
            if self.store.commit(&writes).await? == Committed::Applied {
                return Ok(Some(t));
            }
        }
        Err(StoreError::Corrupt(format!("payment {id} kept changing under concurrent updates")))
    }

    fn announce(&self, t: Transition) {
        if !t.visible {
            return;
        }
        let p = Box::new(t.payment);
        self.publish(&p, RoomEvent::PaymentUpdated { payment: p.clone() });
        if t.newly_succeeded {
            self.publish(&p, RoomEvent::PaymentConfirmed { payment: p.clone() });
        }
    }

    fn publish(&self, p: &Payment, event: RoomEvent) {
        self.hub.publish(&p.call_id, &p.clinic_id, event);
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
        let parsed = parse_event(event, account.as_deref(), self.stripe.as_ref()).await;
        let record = |payment_id: Option<&str>, outcome: &str| WebhookRecord {
            event_id: event_id.to_owned(),
            event_type: event.kind.as_str().to_owned(),
            account: account.clone(),
            payment_id: payment_id.map(str::to_owned),
            outcome: outcome.to_owned(),
        };
        let Some((intent_id, metadata_id, change)) = parsed else {
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
            let Some(t) = state::apply(&current, &change, created) else {
                return Ok(self
                    .record_only(record(Some(&current.id), "no_change"))
                    .await?
                    .unwrap_or(EventOutcome::NoChange));
            };
            let action = format!("payment.{}", crate::store::status_str(t.payment.status));
            let audit = stripe_audit(&t.payment, &action).with_detail(format!("event {event_id}"));
            let writes = [
                Write::Webhook(record(Some(&current.id), "applied")),
                Write::Payment { payment: Box::new(t.payment.clone()), expected_version: current.version },
                Write::Audit(audit),
            ];
            match self.store.commit(&writes).await? {
                Committed::Applied => {
                    // Committed, not yet announced: where a crash leaves other nodes' rooms
                    // behind the store (tests arm this to prove that they catch up).
                    if t.newly_succeeded {
                        crate::faults::crash_here("abort_after_committing_a_success");
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

impl Caller {
    /// An audit record of this participant's `action`.
    fn audit(&self, action: &str, target: Option<&str>, outcome: &str) -> AuditEntry {
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

/// An audit record of Stripe changing `payment`.
fn stripe_audit(payment: &Payment, action: &str) -> AuditEntry {
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

/// The PaymentIntent id, callpay metadata id and state change a Stripe event carries, or
/// `None` for event types the hub does not act on.
async fn parse_event(
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

fn gateway_refusal(e: GatewayError, reference: Option<&str>) -> Refusal {
    match e {
        GatewayError::Unavailable(why) => {
            tracing::warn!(%why, "stripe unavailable");
            Refusal::new(
                ErrorCode::StripeUnavailable,
                "Stripe could not be reached; nothing was charged. Try again.",
                reference,
            )
        }
        GatewayError::AccountAccess(why) => {
            tracing::warn!(%why, "no access to the clinic's Stripe account");
            Refusal::new(
                ErrorCode::StripeNotConnected,
                "The clinic's Stripe account is no longer connected to callpay.",
                reference,
            )
        }
        GatewayError::Rejected { status, code, message } => {
            // Stripe's own message is for us (it can name parameters, accounts and keys), not
            // for people in the call: log it, and tell them in our words with Stripe's code.
            tracing::error!(status, ?code, %message, "stripe rejected a request");
            let code = code.unwrap_or_else(|| "unknown".into());
            Refusal::new(
                ErrorCode::Internal,
                format!("Stripe did not accept this request (Stripe code {code}); nothing was charged."),
                reference,
            )
        }
    }
}

fn status_word(s: PaymentStatus) -> &'static str {
    match s {
        PaymentStatus::Creating => "being created",
        PaymentStatus::Requested => "waiting for the patient",
        PaymentStatus::Authenticating => "being authenticated",
        PaymentStatus::Processing => "processing",
        PaymentStatus::Failed => "failed",
        PaymentStatus::Succeeded => "paid",
        PaymentStatus::Canceled => "cancelled",
        PaymentStatus::PartiallyRefunded => "partially refunded",
        PaymentStatus::Refunded => "refunded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_own_wording_never_reaches_the_call() {
        let e = GatewayError::Rejected {
            status: 400,
            code: Some("parameter_invalid_integer".into()),
            message: "Invalid integer: 12.5 for amount on acct_1Secret (sk_live_...)".into(),
        };
        let r = gateway_refusal(e, Some("r1"));
        assert!(r.message.contains("parameter_invalid_integer"), "{}", r.message);
        assert!(!r.message.contains("acct_") && !r.message.contains("Invalid integer"), "{}", r.message);
    }
}

//! The payment flow: a clinician's request becomes a stored payment and a PaymentIntent on the
//! clinic's connected account; Stripe's webhooks move it through the state machine; every change
//! is stored first and then pushed to the call's room.

pub mod state;
pub mod stripe;
pub mod validate;
pub mod view;

use crate::bus::RoomEvent;
use crate::config::PaymentsConfig;
use crate::hub::Hub;
use crate::store::{Inserted, Payment, Store, StoreError, WebhookRecord, WebhookWrite, now_ms};
use callpay_protocol::{ErrorCode, Participant, PaymentStatus, ProgressStage, Role};
use state::{Change, Transition};
use std::collections::HashMap;
use std::sync::Arc;
use stripe::{GatewayError, NewIntent, StripeApi};
use stripe_webhook::{Event, EventObject};

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
    fn new(code: ErrorCode, message: impl Into<String>, reference: Option<&str>) -> Self {
        Self { code, message: message.into(), reference: reference.map(str::to_owned) }
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
}

impl Payments {
    /// The service over its dependencies.
    pub fn new(store: Arc<dyn Store>, stripe: Arc<dyn StripeApi>, hub: Arc<Hub>, cfg: PaymentsConfig) -> Self {
        Self { store, stripe, hub, cfg }
    }

    /// Every payment of a call, for `welcome`.
    pub async fn snapshot(&self, call_id: &str) -> Result<Vec<Payment>, StoreError> {
        self.store.payments_for_call(call_id).await
    }

    /// `payment.request` from a clinician; audited whatever the outcome.
    pub async fn request(
        &self,
        who: &Caller,
        client_ref: &str,
        amount: i64,
        currency: &str,
        description: &str,
    ) -> Result<(), Refusal> {
        let result = self.request_inner(who, client_ref, amount, currency, description).await;
        let detail = format!("{} ref {client_ref}", validate::display_amount(amount, currency));
        self.audit(who, "payment.requested", Some(client_ref), &result, detail).await;
        result
    }

    async fn request_inner(
        &self,
        who: &Caller,
        client_ref: &str,
        amount: i64,
        currency: &str,
        description: &str,
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
                    self.publish(&existing, RoomEvent::PaymentUpdated { payment: existing.clone() }).await;
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
        match self.transition(&payment.id, &change, 0).await.map_err(|e| Refusal::store(e, reference))? {
            Some(t) => {
                self.publish(&t.payment, RoomEvent::PaymentRequested { payment: Box::new(t.payment.clone()) }).await
            }
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
        self.audit(who, "payment.canceled", Some(payment_id), &result, String::new()).await;
        result
    }

    /// Appends an audit record of a participant's payment action; failures are logged.
    async fn audit(
        &self,
        who: &Caller,
        action: &str,
        target: Option<&str>,
        result: &Result<(), Refusal>,
        detail: String,
    ) {
        let (outcome, detail) = match result {
            Ok(()) => ("ok", detail),
            Err(r) => ("refused", format!("{detail} {:?}: {}", r.code, r.message).trim().to_owned()),
        };
        let entry = crate::store::AuditEntry {
            id: format!("aud_{}", random_id()),
            at: now_ms(),
            org_id: None,
            clinic_id: Some(who.clinic_id.clone()),
            actor_id: who.participant.id.clone(),
            actor_name: who.participant.name.clone(),
            actor_role: match who.participant.role {
                Role::Clinician => "clinician".into(),
                Role::Patient => "patient".into(),
            },
            action: action.to_owned(),
            target: target.map(str::to_owned),
            outcome: outcome.to_owned(),
            detail: (!detail.is_empty()).then_some(detail),
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, action, "AUDIT RECORD LOST: store unavailable");
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
                    let change = Change::Succeeded {
                        amount_received: info.amount_received,
                        receipt_email: info.receipt_email,
                        card: info.card,
                    };
                    if let Ok(Some(t)) = self.transition(&payment.id, &change, 0).await {
                        self.announce(t).await;
                    }
                    return Err(Refusal::new(ErrorCode::InvalidState, "The patient has already paid.", reference));
                }
                return Err(gateway_refusal(e, reference));
            }
        }
        match self.transition(&payment.id, &Change::Canceled, 0).await.map_err(|e| Refusal::store(e, reference))? {
            Some(t) => self.announce(t).await,
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

    /// `payment.progress` from a patient.
    pub async fn progress(&self, who: &Caller, payment_id: &str, stage: ProgressStage) -> Result<(), Refusal> {
        let reference = Some(payment_id);
        if who.participant.role != Role::Patient {
            return Err(Refusal::new(ErrorCode::Forbidden, "Only the patient reports payment progress.", reference));
        }
        let payment = self.payment_in_call(who, payment_id).await?;
        if !matches!(payment.status, PaymentStatus::Requested | PaymentStatus::Authenticating | PaymentStatus::Failed) {
            return Err(Refusal::new(ErrorCode::InvalidState, "This payment is not waiting to be paid.", reference));
        }
        let event =
            RoomEvent::Progress { payment_id: payment.id.clone(), stage, participant_id: who.participant.id.clone() };
        self.hub.publish(&who.call_id, &who.clinic_id, event).await;
        Ok(())
    }

    async fn payment_in_call(&self, who: &Caller, payment_id: &str) -> Result<Payment, Refusal> {
        let reference = Some(payment_id);
        match self.store.payment(payment_id).await.map_err(|e| Refusal::store(e, reference))? {
            Some(p) if p.call_id == who.call_id => Ok(p),
            _ => Err(Refusal::new(ErrorCode::UnknownPayment, "There is no such payment in this call.", reference)),
        }
    }

    /// Applies `change` with optimistic concurrency: read, compute, write if unchanged, else retry.
    async fn transition(&self, id: &str, change: &Change, event_at: i64) -> Result<Option<Transition>, StoreError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(current) = self.store.payment(id).await? else { return Ok(None) };
            let Some(t) = state::apply(&current, change, event_at) else { return Ok(None) };
            if self.store.update_payment(&t.payment, current.version).await? {
                return Ok(Some(t));
            }
        }
        Err(StoreError::Corrupt(format!("payment {id} kept changing under concurrent updates")))
    }

    async fn announce(&self, t: Transition) {
        let p = Box::new(t.payment);
        self.publish(&p, RoomEvent::PaymentUpdated { payment: p.clone() }).await;
        if t.newly_succeeded {
            self.publish(&p, RoomEvent::PaymentConfirmed { payment: p.clone() }).await;
        }
    }

    async fn publish(&self, p: &Payment, event: RoomEvent) {
        self.hub.publish(&p.call_id, &p.clinic_id, event).await;
    }

    /// Applies a verified Stripe event: deduplicated by id, through the state machine, stored,
    /// then pushed to the room. A store error is returned so Stripe retries the delivery.
    pub async fn apply_event(&self, event: &Event) -> Result<EventOutcome, StoreError> {
        let event_id = event.id.as_str();
        if self.store.webhook_seen(event_id).await? {
            return Ok(EventOutcome::Duplicate);
        }
        let account = event.account.clone();
        let created = event.created;
        let (intent_id, metadata_id, change) = match &event.data.object {
            EventObject::PaymentIntentRequiresAction(pi) => {
                (Some(pi.id.to_string()), pi.metadata.get("callpay_payment_id").cloned(), Some(Change::RequiresAction))
            }
            EventObject::PaymentIntentProcessing(pi) => {
                (Some(pi.id.to_string()), pi.metadata.get("callpay_payment_id").cloned(), Some(Change::Processing))
            }
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
                (Some(pi.id.to_string()), pi.metadata.get("callpay_payment_id").cloned(), Some(change))
            }
            EventObject::PaymentIntentSucceeded(pi) => {
                // The event carries the charge id only; read the charge for the card's brand and
                // last four. If Stripe cannot be reached now, confirm anyway: charge.succeeded
                // fills the card in later.
                let card = match account.as_deref() {
                    Some(acct) => tokio::time::timeout(CARD_LOOKUP_TIMEOUT, self.stripe.intent(acct, pi.id.as_str()))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .and_then(|i| i.card),
                    None => None,
                };
                let change = Change::Succeeded {
                    amount_received: pi.amount_received,
                    receipt_email: pi.receipt_email.clone(),
                    card,
                };
                (Some(pi.id.to_string()), pi.metadata.get("callpay_payment_id").cloned(), Some(change))
            }
            EventObject::PaymentIntentCanceled(pi) => {
                (Some(pi.id.to_string()), pi.metadata.get("callpay_payment_id").cloned(), Some(Change::Canceled))
            }
            EventObject::ChargeSucceeded(ch) => {
                let card = ch.payment_method_details.as_ref().and_then(|d| d.card.as_ref());
                let change =
                    card.and_then(|c| Some(Change::CardDetails { brand: c.brand.clone()?, last4: c.last4.clone()? }));
                (
                    ch.payment_intent.as_ref().map(|p| p.id().to_string()),
                    ch.metadata.get("callpay_payment_id").cloned(),
                    change,
                )
            }
            EventObject::ChargeRefunded(ch) => (
                ch.payment_intent.as_ref().map(|p| p.id().to_string()),
                ch.metadata.get("callpay_payment_id").cloned(),
                Some(Change::Refunded { amount_refunded: ch.amount_refunded }),
            ),
            _ => (None, None, None),
        };
        let record = |payment_id: Option<&str>, outcome: &str| WebhookRecord {
            event_id: event_id.to_owned(),
            event_type: event.type_.as_str().to_owned(),
            account: account.clone(),
            payment_id: payment_id.map(str::to_owned),
            outcome: outcome.to_owned(),
        };
        let Some(change) = change else {
            self.store.record_webhook(&record(None, "ignored"), None).await?;
            return Ok(EventOutcome::Ignored);
        };
        for _ in 0..UPDATE_ATTEMPTS {
            let payment = match &metadata_id {
                Some(id) => self.store.payment(id).await?,
                None => None,
            };
            let payment = match (payment, &intent_id) {
                (Some(p), _) => Some(p),
                (None, Some(pi)) => self.store.payment_by_intent(pi).await?,
                (None, None) => None,
            };
            // An event from another account cannot touch our payment, whatever its metadata says.
            let Some(current) = payment.filter(|p| Some(&p.stripe_account) == account.as_ref()) else {
                tracing::info!(event_id, kind = event.type_.as_str(), "webhook for a payment this hub does not know");
                self.store.record_webhook(&record(None, "unknown_payment"), None).await?;
                return Ok(EventOutcome::UnknownPayment);
            };
            let Some(t) = state::apply(&current, &change, created) else {
                return match self.store.record_webhook(&record(Some(&current.id), "no_change"), None).await? {
                    WebhookWrite::Duplicate => Ok(EventOutcome::Duplicate),
                    _ => Ok(EventOutcome::NoChange),
                };
            };
            match self
                .store
                .record_webhook(&record(Some(&current.id), "applied"), Some((&t.payment, current.version)))
                .await?
            {
                WebhookWrite::Applied => {
                    let entry = crate::store::AuditEntry {
                        id: format!("aud_{}", random_id()),
                        at: now_ms(),
                        org_id: None,
                        clinic_id: Some(t.payment.clinic_id.clone()),
                        actor_id: "stripe".into(),
                        actor_name: "Stripe".into(),
                        actor_role: "stripe".into(),
                        action: format!("payment.{}", crate::store::status_str(t.payment.status)),
                        target: Some(t.payment.id.clone()),
                        outcome: "ok".into(),
                        detail: Some(format!("event {event_id}")),
                    };
                    if let Err(e) = self.store.append_audit(&entry).await {
                        tracing::error!(error = %e, "AUDIT RECORD LOST: store unavailable");
                    }
                    self.announce(t).await;
                    return Ok(EventOutcome::Applied);
                }
                WebhookWrite::Duplicate => return Ok(EventOutcome::Duplicate),
                WebhookWrite::Conflict => continue,
            }
        }
        Err(StoreError::Corrupt(format!("event {event_id}: payment kept changing under concurrent updates")))
    }
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
            tracing::error!(status, ?code, %message, "stripe rejected a request");
            Refusal::new(ErrorCode::Internal, format!("Stripe refused the request: {message}"), reference)
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

/// 20 random base62 characters.
pub fn random_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..20).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

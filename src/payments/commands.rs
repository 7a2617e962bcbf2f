//! What participants ask of the payment service over the call's socket: a clinician requests
//! or cancels a payment, a patient reports progress. Each is checked, stored, sent to Stripe
//! where it must be, audited whatever the outcome, and announced to the call.

use super::refusals::Verdict;
use super::stripe::{GatewayError, NewIntent};
use super::{Caller, Payments, Refusal, state, validate};
use crate::bus::RoomEvent;
use crate::ids::random_id;
use crate::rooms::ProgressRefusal;
use crate::store::{AuditEntry, Inserted, Payment, now_ms};
use callpay_protocol::{ErrorCode, PaymentStatus, ProgressStage, Role};
use state::Change;
use std::collections::HashMap;

impl Payments {
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
        let livemode = clinic.as_ref().is_some_and(|c| c.stripe_livemode);
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
            livemode,
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
                    // A retry of a request that went through: show its current state again. The
                    // record names the payment it repeats, so it is part of that history.
                    let repeat = AuditEntry { target: Some(existing.id.clone()), at: now_ms(), ..ok };
                    self.audit_only(repeat.with_detail("repeated request; nothing new was created")).await;
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
        // Stamped now: the payment's record, made above, is older than its first history entry.
        let ok = AuditEntry { target: Some(payment.id.clone()), at: now_ms(), ..ok };
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

    /// Records a refused participant action: the first of its kind (participant, action,
    /// code) each minute, saying how many of that kind were left out before it. Nothing
    /// changed, so a lost record is only logged.
    async fn audit_refusal(&self, who: &Caller, action: &str, target: Option<&str>, r: &Refusal, detail: String) {
        let code = format!("{:?}", r.code);
        let earlier = match self.refusal_gate.check(&who.participant.id, action, &code, now_ms()) {
            Verdict::Count => return,
            Verdict::Record { earlier } => earlier,
        };
        let more = if earlier > 0 { format!(" ({earlier} more like it before, not recorded)") } else { String::new() };
        let entry = who
            .audit(action, target, "refused")
            .with_detail(format!("{detail} {code}: {}{more}", r.message).trim().to_owned());
        self.audit_only(entry).await;
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

    pub(super) async fn payment_in_call(&self, who: &Caller, payment_id: &str) -> Result<Payment, Refusal> {
        let reference = Some(payment_id);
        match self.store.payment(payment_id).await.map_err(|e| Refusal::store(e, reference))? {
            Some(p) if p.call_id == who.call_id => Ok(p),
            _ => Err(Refusal::new(ErrorCode::UnknownPayment, "There is no such payment in this call.", reference)),
        }
    }
}

pub(super) fn gateway_refusal(e: GatewayError, reference: Option<&str>) -> Refusal {
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

pub(super) fn status_word(s: PaymentStatus) -> &'static str {
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

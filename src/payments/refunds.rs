//! Refunds from callpay: full or partial, through Stripe on the clinic's connected account (every
//! payment is a direct charge there). A refund is stored first, `pending`, and only if it fits
//! in what remains by our record; its Stripe Idempotency-Key is derived from its id, so a retry
//! or a double click can never refund twice. Stripe then checks against its own record, and a
//! refusal for the amount brings our record up to Stripe's. The payment's new total goes
//! through the state machine and is announced to the call like every other change.

use super::stripe::{GatewayError, NewRefund};
use super::{Payments, state, validate};
use crate::ids::random_id;
use crate::store::{Actor, AuditEntry, Payment, Refund, STRIPE, StoreError, Write, now_ms};
use callpay_protocol::PaymentStatus;
use state::Change;
use std::collections::HashMap;

/// The reasons Stripe accepts for a refund.
pub const REASONS: &[&str] = &["requested_by_customer", "duplicate", "fraudulent"];
/// Longest note kept with a refund, in characters.
pub const MAX_NOTE: usize = 200;
/// Longest request key a client may send (one refund form's key).
pub const MAX_REQUEST_KEY: usize = 64;
/// Reads of Stripe's refunded total made for one refund when webhooks keep changing the payment.
const SYNC_ATTEMPTS: usize = 3;
/// Kept refunds sent again per sweep.
const UNSENT_PER_SWEEP: i64 = 20;
/// A kept refund is sent again only until it is this old: Stripe keeps an idempotency key for
/// at least 24 hours, and a send after that could no longer be told from a new refund.
pub const UNSENT_SEND_UNTIL_MS: i64 = 22 * 3_600_000;
/// A kept refund still unsent at this age is cancelled. The hour after the last send (each
/// bounded by the Stripe client's attempts and timeout) means no send is still in flight when
/// it is given up.
pub const UNSENT_GIVE_UP_MS: i64 = 23 * 3_600_000;
/// Stripe's error codes that mean "more than remains on the charge".
const STRIPE_TOO_MUCH: &[&str] = &["amount_too_large", "charge_already_refunded"];

/// What is asked for.
#[derive(Debug, Clone, Default)]
pub struct RefundAsk {
    /// Minor units; `None`: all that remains.
    pub amount: Option<i64>,
    /// One of [`REASONS`].
    pub reason: String,
    /// The refunder's words, kept by callpay only.
    pub note: Option<String>,
    /// The refund form's key: a second request with it answers with the same refund.
    pub request_key: Option<String>,
}

/// Why a refund was not made. Each has a stable code for the API.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// Not a positive whole number of minor units.
    #[error("the amount must be a positive whole number of cents")]
    InvalidAmount,
    /// Not one of Stripe's reasons.
    #[error("unknown reason")]
    InvalidReason,
    /// A note or request key that is too long or has control characters.
    #[error("the note or request key is too long or malformed")]
    InvalidField,
    /// The payment was never paid (or was cancelled).
    #[error("payment not paid")]
    NotRefundable(PaymentStatus),
    /// More than remains, by our record or by Stripe's.
    #[error("more than remains")]
    ExceedsRemaining {
        /// What remains, minor units.
        remaining: i64,
        /// Its currency.
        currency: String,
    },
    /// Stripe refused for another reason (its code).
    #[error("stripe refused the refund: {0}")]
    StripeRefused(String),
    /// Stripe could not be reached; the refund is kept pending, and the sweep (or the same
    /// request) sends it again under the same Idempotency-Key.
    #[error("stripe unavailable")]
    StripeUnavailable,
    /// callpay no longer has access to the clinic's Stripe account.
    #[error("no access to the connected account")]
    NoAccess,
    /// The request key was already used for a refund of another amount or reason (a form
    /// changed after an error kept its key): nothing is sent.
    #[error("request key reused for a different refund")]
    KeyReused,
    /// A kept refund that could not be sent while Stripe still knew its key: never sent now,
    /// and cancelled.
    #[error("the kept refund was not sent in time")]
    Expired,
    /// A kept refund past the time it may be sent, not yet cancelled (a send may still be in
    /// flight elsewhere): it is answered within the hour.
    #[error("the kept refund is being given up")]
    Expiring,
    /// Another refund of the payment is kept unsent: no second one until it is finished, so a
    /// form reopened with a new key cannot refund twice.
    #[error("a refund of this payment is still being sent")]
    InProgress {
        /// The kept refund's amount, minor units.
        amount: i64,
        /// Its currency.
        currency: String,
    },
    /// The store failed; nothing was sent to Stripe unless the refund is pending.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RefundError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidAmount => "invalid_amount",
            Self::InvalidReason => "invalid_reason",
            Self::InvalidField => "invalid_field",
            Self::NotRefundable(_) => "not_refundable",
            Self::ExceedsRemaining { .. } => "exceeds_remaining",
            Self::StripeRefused(_) => "stripe_refused",
            Self::StripeUnavailable => "stripe_unavailable",
            Self::NoAccess => "stripe_not_connected",
            Self::KeyReused => "request_key_reused",
            Self::Expired => "refund_expired",
            Self::Expiring => "refund_expiring",
            Self::InProgress { .. } => "refund_in_progress",
            Self::Store(_) => "unavailable",
        }
    }

    /// What to tell people, in our words (Stripe's own message is logged, never shown).
    pub fn message(&self) -> String {
        match self {
            Self::InvalidAmount => "The amount must be a positive number of cents.".into(),
            Self::InvalidReason => format!("The reason must be one of {}.", REASONS.join(", ")),
            Self::InvalidField => format!(
                "The note is at most {MAX_NOTE} characters and the request key at most {MAX_REQUEST_KEY}, with no control characters."
            ),
            Self::NotRefundable(s) => {
                format!("Only a paid payment can be refunded; this one is {}.", crate::store::status_str(*s))
            }
            Self::ExceedsRemaining { remaining, currency } => {
                format!("Only {} remains to refund on this payment.", validate::display_amount(*remaining, currency))
            }
            Self::StripeRefused(code) => {
                format!("Stripe did not accept this refund (Stripe code {code}); nothing was refunded.")
            }
            Self::KeyReused => {
                "This form's earlier request was for another amount or reason; nothing was refunded now. Open the refund form again.".into()
            }
            Self::Expired => {
                "This refund could not be sent to Stripe within a day, so it was not made and is cancelled. Ask for it again.".into()
            }
            Self::Expiring => {
                "This refund could not be sent to Stripe within a day; it is not sent now and is cancelled within the hour. Ask for it again then.".into()
            }
            Self::InProgress { amount, currency } => format!(
                "A refund of {} for this payment is still being sent to Stripe; nothing more was refunded. Wait for it, or send that refund's form again.",
                validate::display_amount(*amount, currency)
            ),
            Self::StripeUnavailable => {
                "Stripe could not be reached. The refund is kept and callpay sends it as soon as Stripe answers; it is never made twice.".into()
            }
            Self::NoAccess => "The clinic's Stripe account is no longer connected to callpay.".into(),
            Self::Store(_) => "The store is unavailable; nothing was refunded. Retry shortly.".into(),
        }
    }
}

/// A refund made (or found again) and the payment as it is now.
#[derive(Debug, Clone)]
pub struct Refunded {
    /// The refund.
    pub refund: Refund,
    /// The payment.
    pub payment: Payment,
}

fn field_ok(s: &str, max: usize) -> bool {
    s.chars().count() <= max && !s.chars().any(char::is_control)
}

impl Payments {
    /// Whether the clinician who requested `payment` may still refund it themselves
    /// (`payments.clinician_refund_window_hours` after it was paid). An unpaid payment is
    /// inside the window: refunding it is refused for what it is, not for the time.
    pub fn clinician_window_open(&self, payment: &Payment) -> bool {
        let window_ms = self.cfg.clinician_refund_window_hours.saturating_mul(3_600_000);
        if window_ms == 0 {
            return false;
        }
        payment.paid_at.is_none_or(|paid| now_ms().saturating_sub(paid) <= window_ms as i64)
    }

    /// Refunds `payment` (already authorised for `by`): checked against our record, stored,
    /// sent to Stripe on the connected account, and the payment's new total announced.
    pub async fn refund(&self, payment: &Payment, by: Actor<'_>, ask: RefundAsk) -> Result<Refunded, RefundError> {
        if !REASONS.contains(&ask.reason.as_str()) {
            return Err(RefundError::InvalidReason);
        }
        if ask.amount.is_some_and(|a| a <= 0) {
            return Err(RefundError::InvalidAmount);
        }
        let note = ask.note.as_deref().map(str::trim).filter(|n| !n.is_empty());
        let key = ask.request_key.as_deref().map(str::trim).filter(|k| !k.is_empty());
        if !note.is_none_or(|n| field_ok(n, MAX_NOTE)) || !key.is_none_or(|k| field_ok(k, MAX_REQUEST_KEY)) {
            return Err(RefundError::InvalidField);
        }
        if let Some(k) = key
            && let Some(existing) = self.store.refund_by_key(&payment.id, k).await?
        {
            // The same key must mean the same refund: a changed amount or reason is a new
            // request that must not be answered with the old one's outcome.
            if ask.amount.is_some_and(|a| a != existing.amount) || ask.reason != existing.reason {
                return Err(RefundError::KeyReused);
            }
            return self.again(payment, existing).await;
        }
        if let Some(kept) = self
            .store
            .refunds_for_payment(&payment.id)
            .await?
            .into_iter()
            .find(|r| r.status == "pending" && r.stripe_refund_id.is_none())
        {
            // The same form's request racing its own first send: the same refund.
            if key.is_some() && kept.request_key.as_deref() == key {
                return self.again(payment, kept).await;
            }
            return Err(RefundError::InProgress { amount: kept.amount, currency: kept.currency });
        }
        let remaining = self.remaining(payment).await?;
        let amount = ask.amount.unwrap_or(remaining);
        if amount > remaining || remaining <= 0 {
            return Err(RefundError::ExceedsRemaining {
                remaining: remaining.max(0),
                currency: payment.currency.clone(),
            });
        }
        let now = now_ms();
        let refund = Refund {
            id: format!("ref_{}", random_id()),
            payment_id: payment.id.clone(),
            clinic_id: payment.clinic_id.clone(),
            amount,
            currency: payment.currency.clone(),
            reason: ask.reason.clone(),
            note: note.map(str::to_owned),
            status: "pending".into(),
            stripe_refund_id: None,
            failure_reason: None,
            source: "callpay".into(),
            request_key: key.map(str::to_owned),
            requested_by_id: by.id.to_owned(),
            requested_by_name: by.name.to_owned(),
            requested_by_role: by.role.to_owned(),
            created_at: now,
            updated_at: now,
        };
        let asked = AuditEntry {
            clinic_id: Some(payment.clinic_id.clone()),
            target: Some(payment.id.clone()),
            ..AuditEntry::new(by, "refund.requested", "ok")
        }
        .with_detail(format!(
            "{} {} {}",
            validate::display_amount(amount, &payment.currency),
            ask.reason,
            refund.id
        ));
        let writes =
            [Write::NewRefund { refund: Box::new(refund.clone()), limit: received(payment) }, Write::Audit(asked)];
        if self.store.commit(&writes).await? != crate::store::Committed::Applied {
            // The same form's key landed first (a double click), or another refund took what
            // remained meanwhile.
            if let Some(k) = key
                && let Some(existing) = self.store.refund_by_key(&payment.id, k).await?
            {
                return self.again(payment, existing).await;
            }
            let remaining = self.remaining(payment).await?;
            return Err(RefundError::ExceedsRemaining {
                remaining: remaining.max(0),
                currency: payment.currency.clone(),
            });
        }
        self.send(payment, refund).await
    }

    /// What remains to refund by our record: received, less the larger of the payment's
    /// refunded total and our pending and succeeded refunds.
    async fn remaining(&self, payment: &Payment) -> Result<i64, RefundError> {
        match payment.status {
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded => {}
            other => return Err(RefundError::NotRefundable(other)),
        }
        let active: i64 = self
            .store
            .refunds_for_payment(&payment.id)
            .await?
            .iter()
            .filter(|r| r.status == "pending" || r.status == "succeeded")
            .map(|r| r.amount)
            .sum();
        Ok(received(payment) - payment.amount_refunded.max(active))
    }

    /// A refund asked for again with its form's key: one never answered by Stripe is sent again
    /// under the same Idempotency-Key (Stripe makes it once); any other is answered as it is.
    async fn again(&self, payment: &Payment, existing: Refund) -> Result<Refunded, RefundError> {
        if existing.status == "pending" && existing.stripe_refund_id.is_none() {
            let age = now_ms() - existing.created_at;
            if age > UNSENT_SEND_UNTIL_MS {
                if age <= UNSENT_GIVE_UP_MS {
                    return Err(RefundError::Expiring);
                }
                if self.give_up(payment, existing.clone()).await {
                    return Err(RefundError::Expired);
                }
                // Sent meanwhile (another node, or Stripe's webhook): answered as it is now.
                let now = self.reread(&existing).await;
                let payment = self.store.payment(&payment.id).await?.unwrap_or_else(|| payment.clone());
                return Ok(Refunded { refund: now, payment });
            }
            return self.send(payment, existing).await;
        }
        // A refund that never happened is answered as the error it was, never as a success.
        if matches!(existing.status.as_str(), "refused" | "failed" | "canceled") {
            let code = existing.failure_reason.clone().unwrap_or_else(|| existing.status.clone());
            if STRIPE_TOO_MUCH.contains(&code.as_str()) {
                let remaining = self.remaining(payment).await?;
                return Err(RefundError::ExceedsRemaining {
                    remaining: remaining.max(0),
                    currency: payment.currency.clone(),
                });
            }
            return Err(RefundError::StripeRefused(code));
        }
        let payment = self.store.payment(&payment.id).await?.unwrap_or_else(|| payment.clone());
        Ok(Refunded { refund: existing, payment })
    }

    /// Asks Stripe for a stored refund and records its answer.
    async fn send(&self, payment: &Payment, refund: Refund) -> Result<Refunded, RefundError> {
        let Some(pi) = payment.payment_intent_id.clone() else {
            return Err(RefundError::NotRefundable(payment.status));
        };
        let mut metadata = HashMap::new();
        metadata.insert("callpay_payment_id".to_owned(), payment.id.clone());
        metadata.insert("callpay_refund_id".to_owned(), refund.id.clone());
        let ask = NewRefund {
            account: payment.stripe_account.clone(),
            payment_intent: pi,
            amount: refund.amount,
            reason: refund.reason.clone(),
            metadata,
            idempotency_key: format!("callpay:{}:create", refund.id),
        };
        let audit = |action: &str, outcome: &str, detail: String| {
            AuditEntry {
                clinic_id: Some(payment.clinic_id.clone()),
                target: Some(payment.id.clone()),
                ..AuditEntry::new(STRIPE, action, outcome)
            }
            .with_detail(detail)
        };
        let shown = validate::display_amount(refund.amount, &refund.currency);
        match self.stripe.create_refund(&ask).await {
            Ok(info) => {
                let seen = Refund {
                    status: info.status.clone(),
                    stripe_refund_id: Some(info.id.clone()),
                    failure_reason: info.failure_reason.clone(),
                    updated_at: now_ms(),
                    ..refund.clone()
                };
                let entry = audit("refund.created", "ok", format!("{shown} {} {}", refund.id, info.id));
                self.store.commit(&[Write::RefundSeen(Box::new(seen)), Write::Audit(entry)]).await?;
                // Stripe's total now (it may hold refunds made in its dashboard we have not
                // heard of yet); if it cannot be read, at least this refund counts.
                let fallback = Change::Refunded { amount_refunded: payment.amount_refunded + refund.amount };
                let payment = self.sync_total(payment, fallback, &format!("after refund {}", refund.id)).await;
                let refund = self.reread(&refund).await;
                Ok(Refunded { refund, payment })
            }
            Err(GatewayError::Unavailable(why)) => {
                tracing::warn!(%why, refund_id = %refund.id, "stripe unavailable for a refund; kept pending");
                Err(RefundError::StripeUnavailable)
            }
            Err(e) => {
                let code = match &e {
                    GatewayError::Rejected { status, code, message } => {
                        tracing::warn!(status, ?code, %message, refund_id = %refund.id, "stripe refused a refund");
                        code.clone().unwrap_or_else(|| "unknown".into())
                    }
                    other => {
                        tracing::warn!(error = %other, refund_id = %refund.id, "no access for a refund");
                        "account_access".into()
                    }
                };
                let refused = Refund {
                    status: "refused".into(),
                    failure_reason: Some(code.clone()),
                    updated_at: now_ms(),
                    ..refund.clone()
                };
                let entry = audit("refund.refused", "refused", format!("{shown} {} Stripe code {code}", refund.id));
                self.store.commit(&[Write::RefundSeen(Box::new(refused)), Write::Audit(entry)]).await?;
                if let GatewayError::AccountAccess(_) = e {
                    return Err(RefundError::NoAccess);
                }
                if STRIPE_TOO_MUCH.contains(&code.as_str()) {
                    // Stripe knows of refunds we do not (made in its dashboard, webhooks not
                    // yet here): take its total, and say what remains by it.
                    let payment =
                        self.sync_total(payment, Change::Refunded { amount_refunded: 0 }, "after a refusal").await;
                    let remaining = received(&payment) - payment.amount_refunded;
                    return Err(RefundError::ExceedsRemaining {
                        remaining: remaining.max(0),
                        currency: payment.currency.clone(),
                    });
                }
                Err(RefundError::StripeRefused(code))
            }
        }
    }

    /// Reads the payment's refunded total from Stripe and applies it (or `fallback` when Stripe
    /// cannot be read); returns the payment as stored afterwards. The read is applied only over
    /// the version stored before it began: a change stored meanwhile (a webhook with a newer
    /// total) wins, and the read is made again, so a stale total never moves the record back.
    async fn sync_total(&self, payment: &Payment, fallback: Change, why: &str) -> Payment {
        let pi = payment.payment_intent_id.as_deref().unwrap_or_default();
        for _ in 0..SYNC_ATTEMPTS {
            let Ok(Some(before)) = self.store.payment(&payment.id).await else { break };
            match self.stripe.intent(&payment.stripe_account, pi).await {
                Ok(info) => {
                    let change = Change::RefundTotal { amount_refunded: info.amount_refunded };
                    if self.settle_read(&before, change, &format!("read from Stripe {why}")).await {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, payment_id = %payment.id, "could not read the refunded total from Stripe");
                    // Only ever grows the total: safe over any version.
                    let entry = AuditEntry {
                        clinic_id: Some(before.clinic_id.clone()),
                        target: Some(before.id.clone()),
                        ..AuditEntry::new(STRIPE, "payment.refunded", "ok")
                    }
                    .with_detail(format!("counted {why}"));
                    match self.transition(&before.id, &fallback, entry).await {
                        Ok(Some(t)) => self.announce(t),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(error = %e, payment_id = %before.id, "could not store the refunded total")
                        }
                    }
                    break;
                }
            }
        }
        self.store.payment(&payment.id).await.ok().flatten().unwrap_or_else(|| payment.clone())
    }

    /// Sends again the refunds stored `pending` that Stripe never answered (Stripe was down, or
    /// the node stopped between storing and sending), under the same Idempotency-Key, so Stripe
    /// makes each once. One not sent within [`UNSENT_GIVE_UP_MS`] (inside Stripe's 24 hours of
    /// idempotency) is cancelled instead, and what it held back can be refunded again.
    pub async fn resend_unsent_refunds(&self) {
        let before = now_ms() - self.cfg.verify_after_ms as i64;
        let unsent = match self.store.unsent_refunds(before, UNSENT_PER_SWEEP).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for unsent refunds: store unavailable");
                return;
            }
        };
        for refund in unsent {
            let payment = match self.store.payment(&refund.payment_id).await {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot send a kept refund: store unavailable");
                    return;
                }
            };
            let age = now_ms() - refund.created_at;
            if age > UNSENT_GIVE_UP_MS {
                self.give_up(&payment, refund).await;
                continue;
            }
            if age > UNSENT_SEND_UNTIL_MS {
                // Too late to send, too early to give up: a send may still be in flight.
                continue;
            }
            tracing::info!(refund_id = %refund.id, payment_id = %payment.id, "sending a kept refund again");
            let id = refund.id.clone();
            let touched = Refund { updated_at: now_ms(), ..refund.clone() };
            // Not cut short by a timeout of ours: the Stripe client bounds each send (its attempts
            // times its timeout), and a send abandoned midway could be a refund Stripe made.
            let outcome = self.send(&payment, refund).await;
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, refund_id = %id, "a kept refund was not made");
                // Tried now: it waits `verify_after_ms` behind the others before the next attempt
                // (a refused one is final already; this only moves its time).
                if let Err(e) = self.store.commit(&[Write::RefundSeen(Box::new(touched))]).await {
                    tracing::warn!(error = %e, refund_id = %id, "could not note the attempt");
                }
            }
        }
    }

    /// Cancels a kept refund that was never sent in time, with an audit record; answers
    /// whether it was cancelled (not if it was sent meanwhile, or the store failed).
    async fn give_up(&self, payment: &Payment, refund: Refund) -> bool {
        let shown = validate::display_amount(refund.amount, &refund.currency);
        let entry = AuditEntry {
            clinic_id: Some(payment.clinic_id.clone()),
            target: Some(payment.id.clone()),
            ..AuditEntry::new(STRIPE, "refund.canceled", "refused")
        }
        .with_detail(format!("{shown} {} never reached Stripe", refund.id));
        // Only if still unsent: a node that sent it meanwhile has stored Stripe's id.
        let write = Write::RefundNotSent { id: refund.id.clone(), at: now_ms() };
        match self.store.commit(&[write, Write::Audit(entry)]).await {
            Ok(c) => c == crate::store::Committed::Applied,
            Err(e) => {
                tracing::warn!(error = %e, payment_id = %payment.id, "could not cancel an unsent refund");
                false
            }
        }
    }

    async fn reread(&self, refund: &Refund) -> Refund {
        match self.store.refunds_for_payment(&refund.payment_id).await {
            Ok(all) => all.into_iter().find(|r| r.id == refund.id).unwrap_or_else(|| refund.clone()),
            Err(_) => refund.clone(),
        }
    }
}

/// What the patient paid.
fn received(payment: &Payment) -> i64 {
    payment.amount_received.unwrap_or(payment.amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::stripe::{IntentInfo, NewIntent, StripeApi};
    use crate::store::Committed;
    use std::sync::Arc;
    use tokio::sync::Notify;

    /// Stripe that accepts refunds, then answers the first read of the refunded total with what
    /// it was a moment ago (this refund only), held back until the test lets it go; later reads
    /// answer `later`.
    struct StaleTotalStripe {
        asked: Notify,
        release: Notify,
        reads: std::sync::atomic::AtomicU32,
        /// What later reads answer.
        later: std::sync::atomic::AtomicI64,
    }

    #[async_trait::async_trait]
    impl StripeApi for StaleTotalStripe {
        async fn create_intent(&self, _: &NewIntent) -> Result<IntentInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only refunds".into()))
        }
        async fn cancel_intent(&self, _: &str, _: &str, _: &str) -> Result<IntentInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only refunds".into()))
        }
        async fn intent(&self, _: &str, id: &str) -> Result<IntentInfo, GatewayError> {
            let first = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            if first {
                self.asked.notify_one();
                self.release.notified().await;
            }
            let total = if first { 1000 } else { self.later.load(std::sync::atomic::Ordering::SeqCst) };
            Ok(crate::payments::testing::succeeded_intent(id, total))
        }
        async fn account_name(&self, _: &str) -> Option<String> {
            None
        }
        async fn create_refund(&self, r: &NewRefund) -> Result<crate::payments::stripe::RefundInfo, GatewayError> {
            Ok(crate::payments::stripe::RefundInfo {
                id: format!("re_{}", r.idempotency_key),
                amount: r.amount,
                status: "succeeded".into(),
                failure_reason: None,
            })
        }
    }

    #[tokio::test]
    async fn a_stale_read_of_stripes_total_never_moves_the_refunded_amount_back() {
        let stripe = Arc::new(StaleTotalStripe {
            asked: Notify::new(),
            release: Notify::new(),
            reads: Default::default(),
            later: 3000.into(),
        });
        let (payments, store) = crate::payments::testing::service(stripe.clone()).await;
        let paid = crate::payments::testing::paid();
        store.insert_payment(&paid).await.unwrap();
        let refund = tokio::spawn({
            let (payments, paid) = (payments.clone(), paid.clone());
            async move {
                let admin = Actor { id: "a", name: "A", role: "team_admin" };
                let ask = RefundAsk { amount: Some(1000), reason: "duplicate".into(), ..RefundAsk::default() };
                payments.refund(&paid, admin, ask).await.map(|r| r.refund.status)
            }
        });
        // Stripe accepted the refund; the hub's read of the total is on its way...
        stripe.asked.notified().await;
        // ...when a webhook stores a newer total (a dashboard refund of 20.00 as well).
        let newer =
            Payment { status: PaymentStatus::PartiallyRefunded, amount_refunded: 3000, version: 3, ..paid.clone() };
        let writes = [Write::Payment { payment: Box::new(newer), expected_version: 2 }];
        assert_eq!(store.commit(&writes).await.unwrap(), Committed::Applied);
        // The read lands with the older total.
        stripe.release.notify_one();
        assert_eq!(refund.await.unwrap().unwrap(), "succeeded");
        let now = store.payment("pay_1").await.unwrap().unwrap();
        assert_eq!(now.amount_refunded, 3000, "a stale read of Stripe's total took the refunded amount back");
        assert_eq!(now.status, PaymentStatus::PartiallyRefunded);
        // A read that is not stale is stored: 5.00 more makes Stripe's total 35.00.
        stripe.later.store(3500, std::sync::atomic::Ordering::SeqCst);
        let admin = Actor { id: "a", name: "A", role: "team_admin" };
        let ask = RefundAsk { amount: Some(500), reason: "duplicate".into(), ..RefundAsk::default() };
        let made = payments.refund(&now, admin, ask).await.unwrap();
        assert_eq!(made.payment.amount_refunded, 3500);
        assert_eq!(store.payment("pay_1").await.unwrap().unwrap().amount_refunded, 3500);
    }

    #[test]
    fn error_codes_are_stable_and_messages_say_what_remains() {
        let e = RefundError::ExceedsRemaining { remaining: 1000, currency: "aud".into() };
        assert_eq!((e.code(), e.message().contains("10.00 AUD")), ("exceeds_remaining", true));
        assert_eq!(RefundError::NotRefundable(PaymentStatus::Requested).code(), "not_refundable");
        assert!(
            field_ok("Short visit", MAX_NOTE)
                && !field_ok("a\u{7}b", MAX_NOTE)
                && !field_ok(&"x".repeat(201), MAX_NOTE)
        );
    }
}

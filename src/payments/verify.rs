//! Confirmation that does not depend on one webhook. When the patient's page says Stripe.js has
//! finished (or the 3-D Secure challenge opened), and again for any payment left waiting longer
//! than `payments.verify_after_ms`, the hub reads the PaymentIntent from Stripe (a GET, so
//! naturally idempotent) and applies what it finds through the same checks and state machine
//! as a webhook. A webhook that arrives afterwards changes nothing, so there is still exactly
//! one `payment.confirmed`.

use super::{Payments, state};
use crate::store::now_ms;
use callpay_protocol::PaymentStatus;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Shortest gap between two checks of one payment that a page asked for.
const ASKED_GAP: Duration = Duration::from_secs(1);
/// Checks per sweep, so a hub with many waiting payments spreads its reads over sweeps.
const PER_SWEEP: usize = 50;
/// A gate entry older than this is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Gate entries kept before old ones are pruned.
const GATE_PRUNE_AT: usize = 4096;

/// Why a check is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The patient's page reported that Stripe.js finished, or that 3-D Secure opened.
    PageAsked,
    /// The payment has waited longer than `payments.verify_after_ms`.
    Waiting,
}

impl Reason {
    fn detail(self) -> &'static str {
        match self {
            Self::PageAsked => "read from Stripe after the patient's page finished",
            Self::Waiting => "read from Stripe after no news for a while",
        }
    }
}

/// Rate limit per payment: a page may ask once a second; the sweep backs off (the wait doubles
/// after each check, up to 32x), so a payment that stays open for days costs a handful of reads.
#[derive(Default)]
pub struct Gate {
    checked: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Gate {
    /// Whether `payment_id` may be checked now for `reason`; records the check if so.
    pub fn allow(&self, payment_id: &str, reason: Reason, waiting_gap: Duration) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if checked.len() >= GATE_PRUNE_AT {
            checked.retain(|_, (at, _)| now.duration_since(*at) < FORGET_AFTER);
        }
        let gap = |n: u32| match reason {
            Reason::PageAsked => ASKED_GAP,
            Reason::Waiting => waiting_gap * 2u32.pow(n.min(5)),
        };
        match checked.get_mut(payment_id) {
            Some((at, n)) if now.duration_since(*at) < gap(*n) => false,
            Some((at, n)) => {
                *at = now;
                *n += 1;
                true
            }
            None => {
                // A first sweep check needs no gap: the payment was found waiting already.
                checked.insert(payment_id.to_owned(), (now, 0));
                true
            }
        }
    }
}

/// Statuses in which the hub waits for Stripe to say how the payment ended.
fn awaiting_stripe(status: PaymentStatus) -> bool {
    matches!(status, PaymentStatus::Requested | PaymentStatus::Authenticating | PaymentStatus::Processing)
}

impl Payments {
    /// Reads the payment's PaymentIntent from Stripe and applies what it says, if the payment
    /// still waits on Stripe and the gate allows a check now. Failures are logged: a later check,
    /// or the webhook, will tell.
    pub async fn verify(&self, payment_id: &str, reason: Reason) {
        let gap = Duration::from_millis(self.cfg.verify_after_ms.max(1));
        if !self.verify_gate.allow(payment_id, reason, gap) {
            return;
        }
        let payment = match self.store.payment(payment_id).await {
            Ok(Some(p)) if awaiting_stripe(p.status) => p,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, payment_id, "cannot verify a payment: store unavailable");
                return;
            }
        };
        let Some(intent) = payment.payment_intent_id.as_deref() else { return };
        match self.stripe.intent(&payment.stripe_account, intent).await {
            Ok(info) => {
                if let Some(change) = state::from_intent(&info) {
                    self.settle(&payment, change, 0, reason.detail()).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, payment_id, "cannot verify a payment: Stripe unavailable"),
        }
    }

    /// Checks the payments of this node's calls that have waited on Stripe for longer than
    /// `payments.verify_after_ms`; at most [`PER_SWEEP`] per sweep.
    pub async fn sweep(&self) {
        // Only calls whose room knows of a payment waiting on Stripe: most calls have none, and
        // the store is not asked about them.
        let calls = self.hub.rooms.calls_awaiting_stripe();
        if calls.is_empty() {
            return;
        }
        let payments = match self.store.payments_for_calls(&calls).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep waiting payments: store unavailable");
                return;
            }
        };
        let before = now_ms() - self.cfg.verify_after_ms as i64;
        let waiting = payments
            .iter()
            .filter(|p| awaiting_stripe(p.status) && p.payment_intent_id.is_some() && p.updated_at < before);
        for p in waiting.take(PER_SWEEP) {
            self.verify(&p.id, Reason::Waiting).await;
        }
    }

    /// Sweeps every `payments.verify_after_ms / 2` until `stop`.
    pub async fn run_sweeper(self: std::sync::Arc<Self>, stop: CancellationToken) {
        let period = Duration::from_millis((self.cfg.verify_after_ms / 2).max(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sweep().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_may_ask_once_a_second_and_the_sweep_backs_off() {
        let gate = Gate::default();
        let gap = Duration::from_millis(0);
        assert!(gate.allow("p", Reason::PageAsked, gap));
        assert!(!gate.allow("p", Reason::PageAsked, gap), "a second ask within a second is dropped");
        assert!(gate.allow("q", Reason::Waiting, Duration::from_secs(60)), "first sweep check is free");
        assert!(!gate.allow("q", Reason::Waiting, Duration::from_secs(60)));
        assert!(gate.allow("r", Reason::Waiting, gap));
        assert!(gate.allow("r", Reason::Waiting, gap), "with no wait configured every sweep checks");
    }
}

//! Confirmation that does not depend on one webhook. When the patient's page says Stripe.js has
//! finished (or the 3-D Secure challenge opened), and again for any payment left waiting longer
//! than `payments.verify_after_ms`, the hub reads the PaymentIntent from Stripe (a GET, so
//! naturally idempotent) and applies what it finds through the same checks and state machine
//! as a webhook. A webhook that arrives afterwards changes nothing, so there is still exactly
//! one `payment.confirmed`.

use super::{Payments, state};
use crate::store::now_ms;
use callpay_protocol::PaymentStatus;
use futures_util::StreamExt;
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Shortest gap between two checks of one payment that a page asked for.
const ASKED_GAP: Duration = Duration::from_secs(1);
/// Checks per sweep, so a hub with many waiting payments spreads its reads over sweeps.
const PER_SWEEP: usize = 50;
/// Calls whose waiting payments one sweep reads from the store at a time.
const SWEEP_CHUNK: usize = 200;
/// Checks of one sweep that wait on Stripe at the same time.
const SWEEP_CONCURRENCY: usize = 8;
/// Longest one check may wait on Stripe (its client retries inside this): a Stripe that does
/// not answer costs a sweep at most `PER_SWEEP / SWEEP_CONCURRENCY` times this, about 45 s,
/// instead of every check's full retry schedule one after another.
const CHECK_TIMEOUT: Duration = Duration::from_secs(6);
/// How far before the last pass's start the next pass over recent changes reads: `updated_at`
/// is the writing node's clock, which may run behind this node's.
const CHANGES_CLOCK_MARGIN_MS: i64 = 30_000;
/// Changed payments read at a time. Small on purpose: without statistics on `payments`
/// (autovacuum off, or a table restored or grown faster than it is analysed) PostgreSQL guesses
/// that a third of the table changed, and reading 5,000 of those through `payments_updated`
/// cost more, by that guess, than scanning the whole table and sorting it. It did that on every
/// instance every sweep (tests/it/plans.rs; found on 40,000 payments with `auto_explain`, and
/// most likely the steady whole-table scans of the 70k `scale` runs).
pub const CHANGES_PAGE: i64 = 500;
/// Most pages one pass reads: 5,000 changes (a fleet taking 100 payments a minute changes a few
/// hundred in a window). More than that, and the next pass goes on from the last one read.
const CHANGES_PAGES_PER_PASS: usize = 10;
/// A gate entry not used for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Where a pass over recently changed payments goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChangesCursor {
    /// The last pass read every change up to its start (Unix ms): the next reads again from
    /// [`CHANGES_CLOCK_MARGIN_MS`] before it, since `updated_at` is the writing node's clock,
    /// which may run behind this node's, and a write may commit a moment after its stamp.
    CaughtUp(i64),
    /// The last pass stopped at its page limit: the next goes on after this change
    /// (`updated_at`, id), with no margin, so that a backlog is read through instead of the
    /// same window again and again.
    Behind(i64, String),
}

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

/// Rate limit per payment, with one clock per reason: a page may ask once a second; the sweep
/// backs off (the wait doubles after each of its checks, up to 32x), so a payment that stays
/// open for days costs a handful of reads. A page's asks never push the sweep's wait further.
#[derive(Default)]
pub struct Gate {
    checked: Mutex<HashMap<String, Checks>>,
}

/// When a payment was last checked, by reason.
#[derive(Debug, Clone, Copy, Default)]
struct Checks {
    /// The sweep's last check and how many it made.
    swept: Option<(Instant, u32)>,
    /// A page's last ask.
    asked: Option<Instant>,
}

impl Checks {
    fn last_use(&self) -> Option<Instant> {
        self.swept.map(|(at, _)| at).max(self.asked)
    }
}

impl Gate {
    fn due_at(checks: Option<&Checks>, reason: Reason, waiting_gap: Duration, now: Instant) -> bool {
        let Some(c) = checks else { return true };
        match reason {
            Reason::PageAsked => c.asked.is_none_or(|at| now.duration_since(at) >= ASKED_GAP),
            // A first sweep check needs no gap: the payment was found waiting already.
            Reason::Waiting => c.swept.is_none_or(|(at, n)| now.duration_since(at) >= waiting_gap * 2u32.pow(n.min(5))),
        }
    }

    /// Whether `payment_id` may be checked now for `reason`, without recording anything.
    pub fn due(&self, payment_id: &str, reason: Reason, waiting_gap: Duration) -> bool {
        let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        Self::due_at(checked.get(payment_id), reason, waiting_gap, Instant::now())
    }

    /// Whether `payment_id` may be checked now for `reason`; records the check if so.
    pub fn allow(&self, payment_id: &str, reason: Reason, waiting_gap: Duration) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if !Self::due_at(checked.get(payment_id), reason, waiting_gap, now) {
            return false;
        }
        let c = checked.entry(payment_id.to_owned()).or_default();
        match reason {
            Reason::PageAsked => c.asked = Some(now),
            Reason::Waiting => c.swept = Some((now, c.swept.map_or(0, |(_, n)| n + 1))),
        }
        true
    }

    /// When the sweep last checked `payment_id` (`None`: never, or so long ago it was
    /// forgotten).
    pub fn swept_at(&self, payment_id: &str) -> Option<Instant> {
        let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.get(payment_id).and_then(|c| c.swept.map(|(at, _)| at))
    }

    /// Drops what is known of `payment_id` (it no longer waits on Stripe).
    pub fn forget(&self, payment_id: &str) {
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).remove(payment_id);
    }

    /// Drops entries not used for [`FORGET_AFTER`] (payments whose calls ended while they
    /// waited), except those of payments in `waiting`; answers how many are left.
    pub fn prune(&self, waiting: &HashSet<&str>) -> usize {
        self.prune_at(waiting, Instant::now())
    }

    /// [`Gate::prune`] as of `now`. A payment still waiting keeps its entry however long ago it
    /// was read: forgotten, it would count as never read and go ahead of every payment read
    /// since, and past what the sweeps read in [`FORGET_AFTER`] the newest of those would take
    /// every sweep's share, the oldest never read again.
    fn prune_at(&self, waiting: &HashSet<&str>, now: Instant) -> usize {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.retain(|id, c| {
            waiting.contains(id.as_str()) || c.last_use().is_some_and(|at| now.duration_since(at) < FORGET_AFTER)
        });
        checked.len()
    }
}

/// Statuses in which the hub waits for Stripe to say how the payment ended. Failed too: the
/// patient may try another card, and that retry can go straight to paid.
fn awaiting_stripe(status: PaymentStatus) -> bool {
    matches!(
        status,
        PaymentStatus::Requested | PaymentStatus::Authenticating | PaymentStatus::Processing | PaymentStatus::Failed
    )
}

/// The patient has started paying: a 3-D Secure challenge is open, or the card is processing.
fn patient_started(status: PaymentStatus) -> bool {
    matches!(status, PaymentStatus::Authenticating | PaymentStatus::Processing)
}

impl Payments {
    /// Reads the payment's PaymentIntent from Stripe and applies what it says, if the payment
    /// still waits on Stripe and the gate allows a check now. Failures are logged: a later check,
    /// or the webhook, will tell. A payment found no longer waiting (another node stored its
    /// outcome) is brought to this node's room instead, in case that node's announcement never
    /// came.
    pub async fn verify(&self, payment_id: &str, reason: Reason) {
        let gap = Duration::from_millis(self.cfg.verify_after_ms.max(1));
        if !self.verify_gate.allow(payment_id, reason, gap) {
            return;
        }
        let payment = match self.store.payment(payment_id).await {
            Ok(Some(p)) if awaiting_stripe(p.status) => p,
            Ok(Some(p)) => {
                self.verify_gate.forget(payment_id);
                self.hub.rooms.reconcile(&p.call_id, std::slice::from_ref(&p));
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, payment_id, "cannot verify a payment: store unavailable");
                return;
            }
        };
        let Some(intent) = payment.payment_intent_id.as_deref() else { return };
        match tokio::time::timeout(CHECK_TIMEOUT, self.stripe.intent(&payment.stripe_account, intent)).await {
            Ok(Ok(info)) => {
                if let Some(change) = state::from_intent(&info) {
                    self.settle_read(&payment, change, reason.detail()).await;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, payment_id, "cannot verify a payment: Stripe unavailable"),
            Err(_) => tracing::warn!(payment_id, "cannot verify a payment: Stripe did not answer in time"),
        }
    }

    /// One sweep: sends again the refunds Stripe never answered (see
    /// [`Payments::resend_unsent_refunds`]); brings this node's rooms up to the store for every call with a payment
    /// waiting on Stripe (anti-entropy: a change another node stored but never announced, for
    /// instance because it died between its commit and its publish, reaches the room here
    /// within one sweep period), then checks with Stripe the payments that have waited longer
    /// than `payments.verify_after_ms` and whose backoff allows it: at most [`PER_SWEEP`]
    /// (never checked first, then the longest unchecked), at most [`SWEEP_CONCURRENCY`] at a
    /// time, each within [`CHECK_TIMEOUT`]. The waiting calls
    /// are read [`SWEEP_CHUNK`] at a time, spread over the first quarter of the sweep period.
    pub async fn sweep(&self) {
        self.resend_unsent_refunds().await;
        self.reconcile_recent_changes().await;
        // Only calls whose room knows of a payment waiting on Stripe: most calls have none, and
        // the store is not asked about them.
        let calls = self.hub.rooms.calls_awaiting_stripe();
        if calls.is_empty() {
            self.verify_gate.prune(&HashSet::new());
            return;
        }
        // In chunks spread over the first quarter of the sweep period: thousands of waiting
        // calls read and reconciled at once held the store and a runtime thread for tens of
        // milliseconds every period, and every relayed event behind them waited (the 45-50 ms
        // stalls 10 s apart in the cross-node relay's tail at 1,000 events/s; README
        // "Cross-node latency at low rates").
        let chunks = calls.len().div_ceil(SWEEP_CHUNK);
        let pause = Duration::from_millis(self.cfg.verify_after_ms / 8) / chunks.max(1) as u32;
        let mut payments = Vec::new();
        // Whether every chunk was read: only then does `payments` hold every waiting payment
        // here, and may the gate forget the rest.
        let mut complete = true;
        for (i, chunk) in calls.chunks(SWEEP_CHUNK).enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            let read = match self.store.payments_for_calls(chunk).await {
                Ok(p) => p,
                Err(e) => {
                    // The other chunks are still reconciled and their due payments checked;
                    // this one's calls come round at the next sweep.
                    tracing::warn!(error = %e, calls = chunk.len(), "cannot sweep some waiting payments: store unavailable");
                    complete = false;
                    continue;
                }
            };
            let mut by_call: HashMap<&str, Vec<crate::store::Payment>> = HashMap::new();
            for p in &read {
                by_call.entry(p.call_id.as_str()).or_default().push(p.clone());
            }
            for (call, ps) in by_call {
                self.hub.rooms.reconcile(call, &ps);
            }
            payments.extend(read);
        }
        let waiting: HashSet<&str> =
            payments.iter().filter(|p| awaiting_stripe(p.status)).map(|p| p.id.as_str()).collect();
        if complete {
            self.verify_gate.prune(&waiting);
        }
        let gap = Duration::from_millis(self.cfg.verify_after_ms.max(1));
        let before = now_ms() - self.cfg.verify_after_ms as i64;
        // Due ones only, before taking the sweep's share: payments still backing off (an
        // abandoned request, say) must not take the places of newer ones.
        let mut due: Vec<_> = payments
            .iter()
            .filter(|p| awaiting_stripe(p.status) && p.payment_intent_id.is_some() && p.updated_at < before)
            .filter(|p| self.verify_gate.due(&p.id, Reason::Waiting, gap))
            .map(|p| {
                (self.verify_gate.swept_at(&p.id), !patient_started(p.status), Reverse(p.updated_at), p.id.as_str())
            })
            .collect();
        // Never checked first, then the longest unchecked: a node can hold thousands of
        // requests nobody is paying, more than the sweeps can keep checking at their backoff,
        // and whichever part of them an order favours for good takes every share. Read oldest
        // first they held the sweeps for tens of minutes, while a request paid a minute ago,
        // its webhooks lost, waited unconfirmed (the 100,000-socket `scale` run); newest first
        // would do the same to an old request paid late. Among equals, those whose patient has
        // started paying, then the newest.
        due.sort_unstable();
        let due: Vec<&str> = due.into_iter().take(PER_SWEEP).map(|(.., id)| id).collect();
        futures_util::stream::iter(due)
            .for_each_concurrent(SWEEP_CONCURRENCY, |id| self.verify(id, Reason::Waiting))
            .await;
    }

    /// Anti-entropy for changes that wait on nothing (a refund total, a cancel): reads the
    /// payments changed since shortly before the last pass began, a page at a time, and brings
    /// this node's rooms of their calls up to them. A change stored by a node that died before
    /// publishing it, or whose publish was lost, reaches every room within a sweep period or
    /// two while the fleet changes fewer than [`CHANGES_PAGE`] x [`CHANGES_PAGES_PER_PASS`]
    /// payments in a pass's window (the sweep period and the clock margin, about 40 s); what
    /// rooms already have changes nothing. Past that, later passes read the backlog through,
    /// without the margin: a change stamped before the cursor but committed after a pass read
    /// past it (a slow commit, a writer's clock running behind) is then missed, unless the
    /// backlog ends within the margin of it.
    async fn reconcile_recent_changes(&self) {
        let started = now_ms();
        let cursor = self.changes_cursor.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (mut since, mut after) = match cursor {
            None => (started - CHANGES_CLOCK_MARGIN_MS, String::new()),
            Some(ChangesCursor::CaughtUp(at)) => (at - CHANGES_CLOCK_MARGIN_MS, String::new()),
            Some(ChangesCursor::Behind(at, id)) => (at, id),
        };
        let mut next = None;
        for _ in 0..CHANGES_PAGES_PER_PASS {
            let changed = match self.store.payments_changed_since(since, &after, CHANGES_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read recent payment changes: store unavailable");
                    break;
                }
            };
            self.reconcile_changes(&changed);
            match changed.last() {
                // A full page: the next goes on after its last change, by time and then id, so a
                // page of changes made in the same millisecond is passed, not read again.
                Some(p) if changed.len() as i64 == CHANGES_PAGE => {
                    (since, after) = (p.updated_at, p.id.clone());
                    next = Some(ChangesCursor::Behind(since, after.clone()));
                }
                _ => {
                    next = Some(ChangesCursor::CaughtUp(started));
                    break;
                }
            }
        }
        if let Some(ChangesCursor::Behind(at, _)) = &next {
            tracing::warn!(
                behind_ms = started - at,
                "more payment changes than one pass reads; the next pass goes on from the last one read"
            );
        }
        if let Some(next) = next {
            *self.changes_cursor.lock().unwrap_or_else(|p| p.into_inner()) = Some(next);
        }
    }

    /// Brings this node's rooms of the calls of `changed` up to them.
    fn reconcile_changes(&self, changed: &[crate::store::Payment]) {
        let mut by_call: HashMap<&str, Vec<crate::store::Payment>> = HashMap::new();
        for p in changed.iter().filter(|p| self.hub.rooms.has(&p.call_id)) {
            by_call.entry(p.call_id.as_str()).or_default().push(p.clone());
        }
        for (call, ps) in by_call {
            self.hub.rooms.reconcile(call, &ps);
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
    use crate::payments::stripe::{GatewayError, IntentInfo, NewIntent, NewRefund, RefundInfo, StripeApi};
    use crate::store::{Committed, Payment, Write};
    use std::sync::Arc;
    use tokio::sync::Notify;

    /// Stripe answering reads with what it said a moment ago: the first card's decline, held
    /// back until the test lets it go.
    struct SlowStaleStripe {
        release: Notify,
        asked: Notify,
    }

    #[async_trait::async_trait]
    impl StripeApi for SlowStaleStripe {
        async fn create_intent(&self, _: &NewIntent) -> Result<IntentInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
        async fn cancel_intent(&self, _: &str, _: &str, _: &str) -> Result<IntentInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
        async fn intent(&self, _: &str, id: &str) -> Result<IntentInfo, GatewayError> {
            self.asked.notify_one();
            self.release.notified().await;
            Ok(IntentInfo {
                id: id.into(),
                client_secret: None,
                status: "requires_payment_method".into(),
                amount: 5000,
                amount_received: 0,
                currency: "aud".into(),
                last_error: Some(("card_declined".into(), Some("generic_decline".into()), "Declined.".into())),
                receipt_email: None,
                card: None,
                amount_refunded: 0,
            })
        }
        async fn account_name(&self, _: &str) -> Option<String> {
            None
        }
        async fn create_refund(&self, _: &NewRefund) -> Result<RefundInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
    }

    #[tokio::test]
    async fn a_read_older_than_a_webhook_applied_meanwhile_changes_nothing() {
        let stripe = Arc::new(SlowStaleStripe { release: Notify::new(), asked: Notify::new() });
        let (payments, store) = crate::payments::testing::service(stripe.clone()).await;
        let requested = Payment {
            id: "pay_1".into(),
            call_id: "call".into(),
            clinic_id: "c".into(),
            client_ref: "r1".into(),
            amount: 5000,
            currency: "aud".into(),
            status: PaymentStatus::Requested,
            version: 2,
            stripe_account: "acct_1".into(),
            payment_intent_id: Some("pi_1".into()),
            ..Payment::default()
        };
        store.insert_payment(&requested).await.unwrap();
        // The page says Stripe.js finished; the hub's read is on its way...
        let check = tokio::spawn({
            let payments = payments.clone();
            async move { payments.verify("pay_1", Reason::PageAsked).await }
        });
        stripe.asked.notified().await;
        // ...when the retry's `processing` webhook is applied.
        let processing = Payment { status: PaymentStatus::Processing, version: 3, last_event_at: 100, ..requested };
        let writes = [Write::Payment { payment: Box::new(processing), expected_version: 2 }];
        assert_eq!(store.commit(&writes).await.unwrap(), Committed::Applied);
        // The read lands: the first card's decline, older than what is stored.
        stripe.release.notify_one();
        check.await.unwrap();
        let now = store.payment("pay_1").await.unwrap().unwrap();
        assert_eq!(now.status, PaymentStatus::Processing, "a stale read moved the payment backwards to failed");
        assert_eq!(now.version, 3);
    }

    /// The payments of one pass's window: `calls` calls with a payment each, changed at
    /// `at(i)`, each call with a room here; answers the rooms' counters after joining.
    async fn changed_calls(
        payments: &Payments,
        store: &Arc<dyn crate::store::Store>,
        calls: i64,
        at: impl Fn(i64) -> i64,
    ) -> Vec<(String, u64, crate::rooms::Joined)> {
        let mut rooms = Vec::new();
        for i in 0..calls {
            let call = format!("call_{i:05}");
            let p = Payment {
                id: format!("pay_{i:05}"),
                call_id: call.clone(),
                client_ref: format!("r{i}"),
                updated_at: at(i),
                ..crate::payments::testing::paid()
            };
            store.insert_payment(&p).await.unwrap();
            let who = callpay_protocol::Participant {
                id: "doc".into(),
                name: "Doc".into(),
                role: callpay_protocol::Role::Clinician,
            };
            let joined = payments.hub.rooms.join(&call, "c", who, crate::rooms::Outbound::new(8).0);
            rooms.push((call.clone(), payments.hub.rooms.seq(&call), joined));
        }
        rooms
    }

    /// The calls whose rooms heard nothing since `changed_calls` joined them.
    fn unheard(payments: &Payments, rooms: &[(String, u64, crate::rooms::Joined)]) -> Vec<String> {
        rooms.iter().filter(|(call, seq, _)| payments.hub.rooms.seq(call) == *seq).map(|(c, _, _)| c.clone()).collect()
    }

    /// More changes in one pass's window than a page, 600 of them made in the same
    /// millisecond: the pass reads every one, page after page, and the next pass reads again
    /// from the margin before this one's start.
    #[tokio::test]
    async fn a_pass_reads_every_change_of_its_window_a_page_at_a_time() {
        let stripe = Arc::new(SlowStaleStripe { release: Notify::new(), asked: Notify::new() });
        let (payments, store) = crate::payments::testing::service(stripe).await;
        let before = now_ms();
        let calls = CHANGES_PAGE * 2 + 100;
        // 0-399 a millisecond apart, 400-999 in one millisecond, 1000-1099 after it.
        let at = |i: i64| before - 10_000 + i.min(400) + (i - 999).max(0);
        let rooms = changed_calls(&payments, &store, calls, at).await;
        // As if the last pass began just before the changes, however long the setup took.
        *payments.changes_cursor.lock().unwrap() = Some(ChangesCursor::CaughtUp(before));
        payments.reconcile_recent_changes().await;
        let missed = unheard(&payments, &rooms);
        assert!(missed.is_empty(), "{} of {calls} rooms missed their change, from {:?}", missed.len(), missed.first());
        let cursor = payments.changes_cursor.lock().unwrap().clone();
        assert!(matches!(cursor, Some(ChangesCursor::CaughtUp(at)) if at >= before), "{cursor:?}");
    }

    /// A backlog longer than a pass reads: the next pass goes on after the last change read,
    /// not from the clock margin again, so the backlog is read through.
    #[tokio::test]
    async fn a_backlog_longer_than_a_pass_is_read_through_by_the_next_passes() {
        let stripe = Arc::new(SlowStaleStripe { release: Notify::new(), asked: Notify::new() });
        let (payments, store) = crate::payments::testing::service(stripe).await;
        let before = now_ms();
        let per_pass = CHANGES_PAGE * CHANGES_PAGES_PER_PASS as i64;
        // Two passes' worth and a half, over the last 20 s (inside the clock margin).
        let calls = per_pass * 5 / 2;
        let rooms = changed_calls(&payments, &store, calls, |i| before - 20_000 + i * 20_000 / calls).await;
        *payments.changes_cursor.lock().unwrap() = Some(ChangesCursor::CaughtUp(before));
        payments.reconcile_recent_changes().await;
        let after_one = unheard(&payments, &rooms).len() as i64;
        assert_eq!(after_one, calls - per_pass, "one pass reads its pages' worth");
        let cursor = payments.changes_cursor.lock().unwrap().clone();
        assert!(
            matches!(&cursor, Some(ChangesCursor::Behind(_, id)) if id == &format!("pay_{:05}", per_pass - 1)),
            "{cursor:?}"
        );
        payments.reconcile_recent_changes().await;
        payments.reconcile_recent_changes().await;
        let missed = unheard(&payments, &rooms);
        assert!(missed.is_empty(), "{} rooms never heard their change, from {:?}", missed.len(), missed.first());
        assert!(matches!(payments.changes_cursor.lock().unwrap().clone(), Some(ChangesCursor::CaughtUp(_))));
    }

    /// Stripe with the PaymentIntents `pi_paid…` paid, `pi_late…` paid once the test says so,
    /// and every other one still waiting for a card;
    /// counts its reads.
    struct SomePaidStripe {
        reads: std::sync::atomic::AtomicUsize,
        /// Whether `pi_late…` is paid yet.
        late_paid: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl StripeApi for SomePaidStripe {
        async fn create_intent(&self, _: &NewIntent) -> Result<IntentInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
        async fn cancel_intent(&self, _: &str, _: &str, _: &str) -> Result<IntentInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
        async fn intent(&self, _: &str, id: &str) -> Result<IntentInfo, GatewayError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if id.starts_with("pi_paid")
                || (id.starts_with("pi_late") && self.late_paid.load(std::sync::atomic::Ordering::Relaxed))
            {
                return Ok(crate::payments::testing::succeeded_intent(id, 0));
            }
            Ok(IntentInfo {
                status: "requires_payment_method".into(),
                amount_received: 0,
                ..crate::payments::testing::succeeded_intent(id, 0)
            })
        }
        async fn account_name(&self, _: &str) -> Option<String> {
            None
        }
        async fn create_refund(&self, _: &NewRefund) -> Result<RefundInfo, GatewayError> {
            Err(GatewayError::Unavailable("this test only reads".into()))
        }
    }

    /// Waiting payment `i` of the call `call`: `status`, last changed at `at` (Unix ms), its
    /// PaymentIntent `pi_paid_…` if Stripe has it paid.
    fn waiting(i: usize, status: PaymentStatus, at: i64, paid: bool) -> Payment {
        Payment {
            id: format!("pay_{i:04}"),
            client_ref: format!("r{i}"),
            status,
            amount_received: None,
            payment_intent_id: Some(if paid { format!("pi_paid_{i:04}") } else { format!("pi_{i:04}") }),
            created_at: at,
            updated_at: at,
            ..crate::payments::testing::paid()
        }
    }

    /// `all` stored, and known to a room of their call on this node (as its members' joins
    /// made it know them); the room lasts as long as the member answered.
    async fn waiting_in_a_room(
        payments: &Payments,
        store: &Arc<dyn crate::store::Store>,
        all: &[Payment],
    ) -> crate::rooms::Joined {
        for p in all {
            store.insert_payment(p).await.unwrap();
        }
        let who = callpay_protocol::Participant {
            id: "doc".into(),
            name: "Doc".into(),
            role: callpay_protocol::Role::Clinician,
        };
        let member = payments.hub.rooms.join("call", "c", who, crate::rooms::Outbound::new(8).0);
        payments.hub.rooms.reconcile("call", all);
        member
    }

    /// A node holding thousands of requests nobody pays (found in the 100,000-socket `scale`
    /// run: every call kept one open) checks [`PER_SWEEP`] a sweep. A payment paid since, whose
    /// webhooks all failed, must not wait behind all of them: it went unconfirmed for the
    /// run's last 10 minutes, and neither side was told it was paid. Never-checked payments go
    /// first, the newest of them first.
    #[tokio::test]
    async fn a_paid_request_is_checked_before_older_requests_nobody_paid() {
        let stripe = Arc::new(SomePaidStripe { reads: Default::default(), late_paid: Default::default() });
        let (payments, store) = crate::payments::testing::service(stripe.clone()).await;
        let now = now_ms();
        // Requested ten minutes ago and never paid, as at the run's setup...
        let mut all: Vec<Payment> =
            (0..4 * PER_SWEEP).map(|i| waiting(i, PaymentStatus::Requested, now - 600_000 + i as i64, false)).collect();
        // ...and one requested a minute ago and paid, its webhooks lost.
        all.push(waiting(9_999, PaymentStatus::Requested, now - 60_000, true));
        let _member = waiting_in_a_room(&payments, &store, &all).await;
        payments.sweep().await;
        assert_eq!(stripe.reads.load(std::sync::atomic::Ordering::Relaxed), PER_SWEEP, "one sweep's share of reads");
        let paid = store.payment("pay_9999").await.unwrap().unwrap();
        assert_eq!(
            paid.status,
            PaymentStatus::Succeeded,
            "the paid request waited behind {} older ones",
            4 * PER_SWEEP
        );
    }

    /// More waiting payments than the sweeps can keep checking at their backoff (about 3,200
    /// at the default settings; here every sweep finds all due): requests paid only after
    /// every payment was read once, the oldest and the newest, both get their turn again within
    /// a round of the line, the longest unread first. Newest first never reads the oldest;
    /// oldest first never reads the newest again; the most recently read first never comes back
    /// to the first ones read.
    #[tokio::test]
    async fn old_and_new_requests_paid_late_get_their_turn_among_more_than_a_sweep_checks() {
        let stripe = Arc::new(SomePaidStripe { reads: Default::default(), late_paid: Default::default() });
        // A wait of 1 ms: the backlog the sweeps cannot keep up with, in a test's time.
        let cfg = crate::config::PaymentsConfig { verify_after_ms: 1, ..Default::default() };
        let (payments, store) = crate::payments::testing::service_with(stripe.clone(), cfg).await;
        let now = now_ms();
        let late = |p: Payment| Payment { payment_intent_id: Some(format!("pi_late_{}", p.id)), ..p };
        // Four sweeps' worth: the oldest, 198 between, the newest.
        let mut all = vec![late(waiting(0, PaymentStatus::Requested, now - 600_000, false))];
        all.extend(
            (1..4 * PER_SWEEP - 1).map(|i| waiting(i, PaymentStatus::Requested, now - 60_000 + i as i64, false)),
        );
        all.push(late(waiting(9_999, PaymentStatus::Requested, now - 1_000, false)));
        let _member = waiting_in_a_room(&payments, &store, &all).await;
        let sweeps = |n: usize| {
            let payments = payments.clone();
            async move {
                for _ in 0..n {
                    // Past the longest backoff (1 ms x 32): each sweep finds all 200 due again.
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    payments.sweep().await;
                }
            }
        };
        // Every payment read once: the newest in the first sweep, the oldest in the fourth...
        sweeps(4).await;
        assert_eq!(stripe.reads.load(std::sync::atomic::Ordering::Relaxed), 4 * PER_SWEEP);
        assert!(["pay_0000", "pay_9999"].iter().all(|id| payments.verify_gate.swept_at(id).is_some()));
        // ...then both are paid, their webhooks lost: a round of the line reads each again.
        stripe.late_paid.store(true, std::sync::atomic::Ordering::Relaxed);
        sweeps(4).await;
        for id in ["pay_0000", "pay_9999"] {
            let p = store.payment(id).await.unwrap().unwrap();
            assert_eq!(p.status, PaymentStatus::Succeeded, "a round of the line never came back to {id}");
        }
    }

    /// A patient whose first card was declined pays with another, and every webhook of it is
    /// lost: the failed payment is still checked (a retry can go straight to paid).
    #[tokio::test]
    async fn a_declined_payment_paid_on_a_retry_is_confirmed_without_its_webhooks() {
        let stripe = Arc::new(SomePaidStripe { reads: Default::default(), late_paid: Default::default() });
        let (payments, store) = crate::payments::testing::service(stripe.clone()).await;
        let failed = waiting(1, PaymentStatus::Failed, now_ms() - 60_000, true);
        let _member = waiting_in_a_room(&payments, &store, std::slice::from_ref(&failed)).await;
        payments.sweep().await;
        let now = store.payment("pay_0001").await.unwrap().unwrap();
        assert_eq!(now.status, PaymentStatus::Succeeded, "the sweep left the retried payment failed");
    }

    /// Among payments never checked, those whose patient has started paying (3-D Secure open,
    /// or the card processing) go before requests, however much newer the requests are.
    #[tokio::test]
    async fn a_payment_the_patient_started_paying_goes_before_newer_requests() {
        let stripe = Arc::new(SomePaidStripe { reads: Default::default(), late_paid: Default::default() });
        let (payments, store) = crate::payments::testing::service(stripe.clone()).await;
        let now = now_ms();
        let mut all: Vec<Payment> =
            (0..2 * PER_SWEEP).map(|i| waiting(i, PaymentStatus::Requested, now - 60_000 + i as i64, false)).collect();
        all.push(waiting(9_999, PaymentStatus::Processing, now - 600_000, true));
        let _member = waiting_in_a_room(&payments, &store, &all).await;
        payments.sweep().await;
        let processing = store.payment("pay_9999").await.unwrap().unwrap();
        assert_eq!(processing.status, PaymentStatus::Succeeded, "the processing payment waited behind newer requests");
    }

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

    #[test]
    fn a_pages_asks_never_push_the_sweeps_wait() {
        let gate = Gate::default();
        let gap = Duration::from_millis(40);
        assert!(gate.allow("p", Reason::Waiting, gap));
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(3));
            gate.allow("p", Reason::PageAsked, gap);
        }
        std::thread::sleep(Duration::from_millis(45));
        // One sweep check so far: its wait is the plain gap, whatever the page did meanwhile.
        assert!(gate.due("p", Reason::Waiting, gap), "the page's asks lengthened the sweep's backoff");
        assert!(gate.due("p", Reason::Waiting, gap), "`due` records nothing");
        assert!(gate.allow("p", Reason::Waiting, gap));
        assert!(!gate.due("p", Reason::Waiting, gap), "now it backs off (2x)");
    }

    #[test]
    fn the_gate_keeps_what_still_waits_however_long_ago_it_was_read() {
        let gate = Gate::default();
        gate.allow("waiting", Reason::Waiting, Duration::ZERO);
        gate.allow("gone", Reason::Waiting, Duration::ZERO);
        let later = Instant::now() + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(gate.prune_at(&HashSet::from(["waiting"]), later), 1);
        assert!(gate.swept_at("waiting").is_some(), "a payment still waiting lost its place in the line");
        assert!(gate.swept_at("gone").is_none(), "an entry of a payment no longer here stayed");
    }

    #[test]
    fn the_gate_forgets_what_no_longer_waits() {
        let gate = Gate::default();
        for i in 0..10 {
            gate.allow(&format!("p{i}"), Reason::Waiting, Duration::ZERO);
        }
        gate.forget("p0");
        assert_eq!(gate.prune(&HashSet::new()), 9, "recent entries stay; a forgotten one is gone");
        assert!(gate.due("p0", Reason::Waiting, Duration::from_secs(60)), "a forgotten payment starts afresh");
    }
}

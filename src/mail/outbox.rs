//! Sends the receipts queued in the store's outbox (a row written with each payment's success
//! when its clinic sends its own receipts). One task per instance: it reads what is due, takes
//! each row with a lease named by a claim token (so one instance sends it, and one that dies
//! mid-send only delays it), sends it within a bound shorter than the lease, and records the
//! outcome only while its claim still holds. A failure is retried with exponential backoff and
//! jitter until `receipts.max_attempts`; a refusal for good is not retried. Sent and given-up
//! receipts are in the audit log (and so in the payment's history).

use super::{MailError, Mailer, receipt};
use crate::config::ReceiptsConfig;
use crate::store::{Actor, AuditEntry, ReceiptJob, ReceiptOutcome, Store, StoreError, Write, now_ms};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Receipts taken per pass: a pass sends them one after another, so a burst is spread over
/// passes rather than opening many SMTP connections at once.
const BATCH: i64 = 20;
/// callpay itself, as the actor of what the outbox does.
const SYSTEM: Actor<'static> = Actor { id: "callpay", name: "callpay", role: "system" };
/// What a claim's lease adds to twice the attempt's bound: time to write the outcome (up to
/// [`FINISH_TRIES`] store round trips, each of which may wait for a pool connection) and for
/// the instances' clocks, which compare the lease, to differ by a few seconds.
const LEASE_MARGIN: Duration = Duration::from_secs(15);
/// Writes of one attempt's outcome before it is given up: a lost "sent" would let the lease
/// lapse and another instance send the receipt again.
const FINISH_TRIES: u32 = 3;

/// The receipt sender.
pub struct Outbox {
    store: Arc<dyn Store>,
    mailer: Option<Arc<dyn Mailer>>,
    cfg: ReceiptsConfig,
    wake: Arc<Notify>,
}

/// The wait before attempt `attempt + 1` after `attempt` failed ones (1-based): `base`
/// doubled per failure, at most `max`, then scaled by `jitter` (0.8 to 1.2) so instances that
/// failed together do not retry together.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let doubled = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)));
    doubled.min(max).mul_f64(jitter.clamp(0.8, 1.2))
}

impl Outbox {
    /// A sender over `store` through `mailer`, woken by `wake` when a success queues one.
    /// Without a mailer it never takes a receipt: in a fleet where only some instances have a
    /// mail server, those send every receipt, and one queued while none has waits for one.
    pub fn new(store: Arc<dyn Store>, mailer: Option<Arc<dyn Mailer>>, cfg: ReceiptsConfig, wake: Arc<Notify>) -> Self {
        Self { store, mailer, cfg, wake }
    }

    /// Whether this hub can send receipts (a clinic can turn them on only then).
    pub fn can_send(&self) -> bool {
        self.mailer.is_some()
    }

    /// The longest one attempt may take, from reading the payment to the mail server's last
    /// answer (`receipts.timeout_ms`). lettre's own timeout bounds only the connect, so a
    /// server that stops answering mid-session would otherwise hold the attempt forever.
    fn attempt_bound(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms.max(1))
    }

    /// How long a claim keeps other instances off a receipt: twice the attempt's bound and a
    /// margin, so an attempt has ended, and its outcome is written, well before the claim lapses.
    fn lease(&self) -> Duration {
        self.attempt_bound().saturating_mul(2).saturating_add(LEASE_MARGIN)
    }

    /// Sends due receipts until `shutdown`: after each pass it waits for a new receipt or the
    /// poll period, whichever comes first (the period also brings due retries). Without a
    /// mailer it ends at once, having taken nothing.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.can_send() {
            return;
        }
        let poll = Duration::from_millis(self.cfg.poll_ms.max(10));
        loop {
            // Registered before the pass, so a receipt queued during it is not missed.
            let woken = self.wake.notified();
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "receipt outbox: store unavailable; trying again later");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = woken => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One pass: every due receipt (up to a batch), each taken, tried once and recorded.
    /// Answers how many were tried: none without a mailer, which takes nothing.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let Some(mailer) = &self.mailer else { return Ok(0) };
        let now = now_ms();
        let due = self.store.due_receipts(now, BATCH).await?;
        let mut tried = 0;
        for job in due {
            let claim = crate::ids::random_id();
            let lease = now_ms().saturating_add(i64::try_from(self.lease().as_millis()).unwrap_or(i64::MAX / 4));
            if !self.store.claim_receipt(&job.payment_id, job.next_attempt_at, lease, &claim).await? {
                continue;
            }
            tried += 1;
            let attempt = u32::try_from(job.attempts + 1).unwrap_or(u32::MAX);
            let outcome =
                match tokio::time::timeout(self.attempt_bound(), self.attempt(mailer.as_ref(), &job, attempt)).await {
                    Ok(outcome) => outcome,
                    // Ended before the server's last answer: if that answer was the one taking the
                    // message, it was delivered and the retry sends a second copy. SMTP cannot tell;
                    // a copy too many is better than none.
                    Err(_) => self.retry(
                        attempt,
                        format!("no answer within receipts.timeout_ms ({} ms); ended", self.cfg.timeout_ms),
                    ),
                };
            let mut finished = Err(None);
            for tries in 1..=FINISH_TRIES {
                match self.store.finish_receipt(&job.payment_id, &claim, &outcome, now_ms()).await {
                    Ok(held) => {
                        finished = Ok(held);
                        break;
                    }
                    Err(e) if tries < FINISH_TRIES => {
                        tracing::warn!(error = %e, payment_id = %job.payment_id, "receipt outcome not stored; trying again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        finished = Err(Some(e));
                    }
                    Err(e) => finished = Err(Some(e)),
                }
            }
            let held = match finished {
                Ok(held) => held,
                Err(e) => {
                    // The rest of the batch still goes out; this one is tried again when its
                    // lease lapses (a copy too many if it was sent: the store left no choice).
                    tracing::error!(error = ?e, payment_id = %job.payment_id, outcome = ?outcome, "receipt outcome could not be stored");
                    continue;
                }
            };
            if held {
                self.record(&job, &outcome, attempt).await;
            } else {
                // Only if this instance stalled past its lease (the attempt itself is bounded
                // well within it): the attempt that took over records its own outcome.
                tracing::warn!(
                    payment_id = %job.payment_id,
                    attempt,
                    outcome = ?outcome,
                    "receipt attempt outlived its claim, which another attempt holds now; its outcome is not recorded"
                );
            }
        }
        Ok(tried)
    }

    async fn attempt(&self, mailer: &dyn Mailer, job: &ReceiptJob, attempt: u32) -> ReceiptOutcome {
        let mail = match self.compose(job).await {
            Ok(Some(mail)) => mail,
            Ok(None) => return ReceiptOutcome::Skipped("no receipt address, or the clinic turned receipts off".into()),
            Err(e) => return self.retry(attempt, format!("store unavailable: {e}")),
        };
        match mailer.send(&mail).await {
            Ok(()) => ReceiptOutcome::Sent,
            Err(MailError::Permanent(why)) => ReceiptOutcome::Failed(why),
            Err(MailError::Transient(why)) => self.retry(attempt, why),
        }
    }

    fn retry(&self, attempt: u32, error: String) -> ReceiptOutcome {
        if attempt >= self.cfg.max_attempts.max(1) {
            return ReceiptOutcome::Failed(format!("gave up after {attempt} attempts: {error}"));
        }
        let wait = backoff(
            attempt,
            Duration::from_millis(self.cfg.retry_base_ms.max(1)),
            Duration::from_millis(self.cfg.retry_max_ms.max(1)),
            0.8 + rand::random::<f64>() * 0.4,
        );
        ReceiptOutcome::Retry { at: now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 4), error }
    }

    /// The receipt as the payment and clinic are now, in the language the patient paid in.
    async fn compose(&self, job: &ReceiptJob) -> Result<Option<super::Mail>, StoreError> {
        let Some(payment) = self.store.payment(&job.payment_id).await? else { return Ok(None) };
        let Some(clinic) = self.store.clinic(&job.clinic_id).await? else { return Ok(None) };
        if !clinic.own_receipts {
            return Ok(None);
        }
        let lang = self.store.payment_lang(&job.payment_id).await?.unwrap_or_else(|| "en".into());
        Ok(receipt::compose(&payment, &clinic.name, &self.cfg.from, &lang))
    }

    /// An audit record of a receipt sent or given up (a retry is only logged).
    async fn record(&self, job: &ReceiptJob, outcome: &ReceiptOutcome, attempt: u32) {
        let (action, result, detail) = match outcome {
            ReceiptOutcome::Sent => {
                ("payment.receipt_sent", "ok", format!("callpay's receipt e-mail sent (attempt {attempt})"))
            }
            ReceiptOutcome::Failed(why) => {
                ("payment.receipt_failed", "failed", format!("callpay's receipt e-mail not sent: {why}"))
            }
            ReceiptOutcome::Skipped(why) => {
                ("payment.receipt_skipped", "ok", format!("callpay's receipt e-mail not sent: {why}"))
            }
            ReceiptOutcome::Retry { error, .. } => {
                tracing::info!(payment_id = %job.payment_id, attempt, error, "receipt e-mail not sent yet; will retry");
                return;
            }
        };
        let entry = AuditEntry {
            clinic_id: Some(job.clinic_id.clone()),
            target: Some(job.payment_id.clone()),
            ..AuditEntry::new(SYSTEM, action, result)
        }
        .with_detail(detail);
        if let Err(e) = self.store.commit(&[Write::Audit(entry)]).await {
            tracing::error!(error = %e, "AUDIT RECORD LOST: store unavailable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_bounded_jitter() {
        let (base, max) = (Duration::from_secs(30), Duration::from_secs(3600));
        assert_eq!(backoff(1, base, max, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(2, base, max, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(4, base, max, 1.0), Duration::from_secs(240));
        assert_eq!(backoff(20, base, max, 1.0), max, "capped");
        assert_eq!(backoff(u32::MAX, base, max, 1.0), max, "no overflow");
        assert_eq!(backoff(1, base, max, 5.0), Duration::from_secs(36), "jitter is bounded");
        assert_eq!(backoff(1, base, max, 0.0), Duration::from_secs(24));
    }
}

//! The delivery worker, one per instance: claims due deliveries from the outbox (a lease, so
//! instances sharing a database never send the same attempt at once), signs and POSTs each,
//! records the attempt, and schedules the next one with exponential backoff and jitter until
//! `events.retry_for_ms` has passed, then gives up. It runs beside the hub and never blocks it.

use super::sender::{EventSender, Outgoing, Sent};
use super::signature;
use crate::config::EventsConfig;
use crate::store::now_ms;
use crate::store::outbox::{Attempt, Claimed, Outbox, Settle};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The worker.
pub struct Relay {
    outbox: Arc<dyn Outbox>,
    sender: Arc<dyn EventSender>,
    cfg: EventsConfig,
}

/// When the attempt after a failed one is due, or whether to give up: the `n`th retry waits
/// `first × 2^(n-1)` capped at `max_interval`, of which a random half (`jitter` in 0..=1) is
/// taken off so that receivers coming back are not hit by every sender at once. `attempts` is
/// the number made so far, this one included; `created_at` is when the delivery was queued.
pub fn next_attempt(cfg: &EventsConfig, attempts: i64, created_at: i64, now: i64, jitter: f64) -> Settle {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 40)).unwrap_or(40);
    let first = cfg.retry_first_ms.max(1);
    let delay = first.saturating_mul(1u64 << doublings.min(40)).min(cfg.retry_max_interval_ms.max(first));
    let delay = delay / 2 + ((delay / 2) as f64 * jitter.clamp(0.0, 1.0)) as u64;
    let at = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
    let deadline = created_at.saturating_add(i64::try_from(cfg.retry_for_ms).unwrap_or(i64::MAX));
    if at > deadline { Settle::GiveUp } else { Settle::Retry(at) }
}

impl Relay {
    /// A worker over `outbox`, sending with `sender`.
    pub fn new(outbox: Arc<dyn Outbox>, sender: Arc<dyn EventSender>, cfg: EventsConfig) -> Self {
        Self { outbox, sender, cfg }
    }

    /// How long a claim holds a delivery: the attempt's timeout twice over plus time to store
    /// its outcome. An instance that dies holding one leaves it to another after this.
    fn lease(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms.saturating_mul(2).saturating_add(5_000))
    }

    /// Runs until `stop`, then lets the attempts in flight finish (each bounded by the
    /// timeout) so that they are recorded rather than left to a lease's expiry.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(10));
        let mut in_flight: JoinSet<()> = JoinSet::new();
        loop {
            let room = self.cfg.max_in_flight.max(1).saturating_sub(in_flight.len());
            if room > 0 {
                let now = now_ms();
                let until = now + i64::try_from(self.lease().as_millis()).unwrap_or(i64::MAX / 2);
                match self.outbox.claim(now, until, room).await {
                    Ok(batch) => {
                        for claimed in batch {
                            in_flight.spawn(self.clone().deliver(claimed));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the event outbox; retrying"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                // A slot freed (and maybe the next event of an order key became due): claim again.
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// One attempt of one claimed delivery, recorded.
    async fn deliver(self: Arc<Self>, c: Claimed) {
        let t = i64::try_from(crate::auth::now_secs()).unwrap_or(0);
        let attempt_no = c.delivery.attempts + 1;
        let request = Outgoing {
            url: c.url.clone(),
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("user-agent", concat!("callpay-events/", env!("CARGO_PKG_VERSION")).to_owned()),
                (signature::HEADER, signature::header(c.secret.expose(), t, c.body.as_bytes())),
                ("callpay-event-id", c.delivery.event_id.clone()),
                ("callpay-event-type", c.delivery.event_type.clone()),
                ("callpay-delivery-id", c.delivery.id.clone()),
                ("callpay-delivery-attempt", attempt_no.to_string()),
            ],
            body: bytes::Bytes::from(c.body.clone()),
        };
        let at = now_ms();
        let started = Instant::now();
        let sent = self.sender.send(request).await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (http_status, error, excerpt) = match &sent {
            Sent::Answered { status, excerpt } if (200..300).contains(status) => {
                (Some(i64::from(*status)), None, Some(excerpt.clone()))
            }
            Sent::Answered { status, excerpt } => {
                (Some(i64::from(*status)), Some(format!("answered HTTP {status}")), Some(excerpt.clone()))
            }
            Sent::Failed(e) => (None, Some(e.clone()), None),
        };
        let settle = if error.is_none() {
            Settle::Delivered
        } else {
            next_attempt(&self.cfg, attempt_no, c.delivery.created_at, now_ms(), rand::random::<f64>())
        };
        let attempt = Attempt {
            id: format!("att_{}", crate::ids::random_id()),
            delivery_id: c.delivery.id.clone(),
            at,
            duration_ms,
            http_status,
            error: error.map(|e| cut(&e, 300)),
            response_excerpt: excerpt.filter(|e| !e.is_empty()).map(|e| cut(&e, super::sender::EXCERPT_BYTES)),
        };
        match self.outbox.settle(&c.delivery.id, &c.lease_token, settle, &attempt).await {
            Ok(true) => {
                tracing::debug!(delivery = %c.delivery.id, event = %c.delivery.event_id, ?settle, "event delivery attempt")
            }
            Ok(false) => tracing::warn!(
                delivery = %c.delivery.id,
                "an event delivery's lease ran out during its attempt; another instance may send it again"
            ),
            // Its lease expires and it is sent again: at least once, never lost.
            Err(e) => tracing::error!(error = %e, delivery = %c.delivery.id, "cannot record an event delivery attempt"),
        }
        if settle == Settle::GiveUp {
            tracing::warn!(delivery = %c.delivery.id, event = %c.delivery.event_id, url = %c.url, "gave up delivering an event");
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let end = (0..=text.len().min(max)).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::sender::MemorySender;
    use crate::events::{EndpointRequest, Events, catalogue};
    use crate::store::{Payment, SqlStore, Store, Write};
    use callpay_protocol::PaymentStatus as S;

    fn cfg() -> EventsConfig {
        EventsConfig {
            retry_first_ms: 1_000,
            retry_max_interval_ms: 60_000,
            retry_for_ms: 3_600_000,
            // The tests' endpoints are on loopback.
            allow_loopback: true,
            ..EventsConfig::default()
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_until_the_deadline() {
        let c = cfg();
        let at = |n, jitter| match next_attempt(&c, n, 0, 0, jitter) {
            Settle::Retry(at) => at,
            other => panic!("{other:?}"),
        };
        assert_eq!((at(1, 0.0), at(1, 1.0)), (500, 1_000), "first retry: half to all of retry_first_ms");
        assert_eq!((at(2, 0.0), at(2, 1.0)), (1_000, 2_000));
        assert_eq!((at(3, 0.0), at(3, 1.0)), (2_000, 4_000));
        assert_eq!(at(30, 1.0), 60_000, "capped at retry_max_interval_ms");
        assert_eq!(at(i64::MAX, 1.0), 60_000, "no overflow");
        assert_eq!(next_attempt(&c, 5, 0, 3_600_000 - 100, 1.0), Settle::GiveUp, "past retry_for_ms");
    }

    async fn relay_with(sender: Arc<MemorySender>) -> (Arc<SqlStore>, Events, Arc<Relay>) {
        let store = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
        let events = Events::new(store.clone(), cfg(), Default::default());
        let relay = Arc::new(Relay::new(store.clone(), sender, cfg()));
        (store, events, relay)
    }

    async fn step(relay: &Arc<Relay>) -> usize {
        let now = now_ms();
        let batch = relay.outbox.claim(now, now + 60_000, 10).await.unwrap();
        let n = batch.len();
        for c in batch {
            relay.clone().deliver(c).await;
        }
        n
    }

    #[tokio::test]
    async fn a_payment_s_events_go_out_in_order_signed_and_a_failure_holds_back_the_next() {
        let sender = Arc::new(MemorySender::default());
        let (store, events, relay) = relay_with(sender.clone()).await;
        let request = EndpointRequest { url: Some("http://127.0.0.1:9/hook".into()), ..EndpointRequest::default() };
        let (endpoint, secret) = events.create_endpoint(request, "op").await.unwrap();
        let creating = Payment { id: "pay_1".into(), clinic_id: "c1".into(), ..Payment::default() };
        store.insert_payment(&creating).await.unwrap();
        let mut before = creating.clone();
        for status in [S::Requested, S::Succeeded] {
            let after = Payment { status, version: before.version + 1, ..before.clone() };
            let mut writes =
                vec![Write::Payment { payment: Box::new(after.clone()), expected_version: before.version }];
            writes.extend(catalogue::payment_writes(&before, &after));
            store.commit(&writes).await.unwrap();
            before = after;
        }
        sender.answer([Sent::Answered { status: 500, excerpt: "down".into() }]);
        assert_eq!(step(&relay).await, 1, "only the first of the payment's events is due");
        assert_eq!(step(&relay).await, 0, "the first waits for its retry, and holds the second back");
        let list = store.deliveries(&endpoint.id, None, 10, None).await.unwrap();
        let first = list.iter().find(|d| d.event_type == "payment.requested").unwrap();
        assert_eq!((first.status.as_str(), first.attempts, first.last_status), ("pending", 1, Some(500)));
        // Due now (as if the backoff had passed): sent, then the next one goes.
        sqlx_due_now(&store).await;
        assert_eq!(step(&relay).await, 1);
        assert_eq!(step(&relay).await, 1);
        let sent = sender.sent();
        let types: Vec<String> = sent
            .iter()
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types, ["payment.requested", "payment.requested", "payment.succeeded"]);
        assert_eq!(sent[0].body, sent[1].body, "a retry sends the same event");
        for r in &sent {
            let sig = &r.headers.iter().find(|(k, _)| *k == signature::HEADER).unwrap().1;
            assert!(signature::verify(&secret, sig, &r.body, crate::auth::now_secs() as i64), "{sig}");
        }
        assert_eq!(store.attempts(&first.id).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_delivery_whose_event_is_gone_ends_canceled_instead_of_being_claimed_again() {
        let sender = Arc::new(MemorySender::default());
        let (store, events, relay) = relay_with(sender.clone()).await;
        let request = EndpointRequest { url: Some("http://127.0.0.1:9/hook".into()), ..EndpointRequest::default() };
        let (endpoint, _) = events.create_endpoint(request, "op").await.unwrap();
        let before = Payment { id: "pay_gone".into(), ..Payment::default() };
        store
            .commit(&catalogue::payment_writes(&before, &Payment { status: S::Requested, ..before.clone() }))
            .await
            .unwrap();
        // The event pruned while a replay of it was being queued (the only way a delivery
        // outlives its event).
        sqlx::query("DELETE FROM outbound_events").execute(&store.pool_for_tests()).await.unwrap();
        assert_eq!(step(&relay).await, 0, "nothing to send");
        let list = store.deliveries(&endpoint.id, None, 10, None).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].status.as_str(), list[0].last_error.as_deref()),
            ("canceled", Some("its event or endpoint no longer exists"))
        );
        sqlx_due_now(&store).await;
        assert_eq!(step(&relay).await, 0);
        assert!(sender.sent().is_empty());
    }

    async fn sqlx_due_now(store: &SqlStore) {
        sqlx::query("UPDATE event_deliveries SET next_attempt_at = 0 WHERE status = 'pending'")
            .execute(&store.pool_for_tests())
            .await
            .unwrap();
    }
}

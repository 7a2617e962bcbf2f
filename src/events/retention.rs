//! Retention of the outbox: deliveries that ended (delivered, failed, canceled) are deleted
//! with their attempts `events.retain_for_ms` after they ended (default 30 days), and events
//! once no delivery refers to them and they are as old. A pending delivery is never deleted,
//! however old: it is retried until `events.retry_for_ms`, then ends as `failed`, and only then
//! does its retention start. Every instance that runs the delivery worker prunes; deleting is
//! idempotent, so instances sharing a database need no coordination.

use crate::config::EventsConfig;
use crate::store::outbox::{Outbox, Pruned};
use crate::store::{StoreResult, now_ms};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows one prune statement deletes at most: a large backlog (the first prune after an
/// upgrade) is worked off in short transactions rather than one that holds the tables.
pub const PRUNE_BATCH: usize = 500;

/// The periodic prune.
pub struct Retention {
    outbox: Arc<dyn Outbox>,
    retain_for_ms: u64,
    every: Duration,
}

impl Retention {
    /// The prune of `outbox` under `cfg`, or `None` when everything is kept
    /// (`events.retain_for_ms` = 0).
    pub fn new(outbox: Arc<dyn Outbox>, cfg: &EventsConfig) -> Option<Self> {
        (cfg.retain_for_ms > 0).then(|| Self {
            outbox,
            retain_for_ms: cfg.retain_for_ms,
            every: Duration::from_millis(cfg.prune_interval_ms.max(1)),
        })
    }

    /// Deletes everything whose retention is over at `now` (Unix ms), batch after batch.
    pub async fn prune(&self, now: i64) -> StoreResult<Pruned> {
        let before = now.saturating_sub(i64::try_from(self.retain_for_ms).unwrap_or(i64::MAX));
        let mut total = Pruned::default();
        loop {
            let batch = self.outbox.prune(before, PRUNE_BATCH).await?;
            total.deliveries += batch.deliveries;
            total.attempts += batch.attempts;
            total.events += batch.events;
            // A batch that was not full left nothing behind (of what was over at `before`).
            let full = |n: u64| n >= PRUNE_BATCH as u64;
            if !full(batch.deliveries) && !full(batch.events) {
                return Ok(total);
            }
        }
    }

    /// Prunes at once and then every `events.prune_interval_ms`, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.every);
        // After a pause (a busy database), one prune catches up; no burst of them.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.prune(now_ms()).await {
                Ok(p) if p.is_empty() => {}
                Ok(p) => tracing::info!(
                    deliveries = p.deliveries,
                    attempts = p.attempts,
                    events = p.events,
                    "pruned event deliveries past their retention"
                ),
                // Kept until the next prune: nothing is lost by waiting.
                Err(e) => tracing::warn!(error = %e, "cannot prune the event outbox; trying again later"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::catalogue::payment_writes;
    use crate::store::{Payment, SqlStore, Store};
    use callpay_protocol::PaymentStatus as S;

    /// Queues `n` events (no endpoint: no deliveries), one per payment.
    async fn queue(store: &SqlStore, prefix: &str, n: usize) {
        let mut writes = Vec::new();
        for i in 0..n {
            let before = Payment { id: format!("{prefix}_{i}"), ..Payment::default() };
            writes.extend(payment_writes(&before, &Payment { status: S::Requested, version: 1, ..before.clone() }));
        }
        store.commit(&writes).await.unwrap();
    }

    async fn count(store: &SqlStore) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbound_events").fetch_one(&store.pool_for_tests()).await.unwrap()
    }

    #[tokio::test]
    async fn a_backlog_larger_than_a_batch_is_pruned_in_one_go_and_nothing_newer() {
        let store = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
        queue(&store, "pay_old", 2 * PRUNE_BATCH + 7).await;
        let cfg = EventsConfig { retain_for_ms: 60_000, ..EventsConfig::default() };
        let retention = Retention::new(store.clone(), &cfg).expect("a retention is set");
        // Millisecond timestamps: a clear millisecond between the old ones and the new ones.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let between = now_ms();
        tokio::time::sleep(Duration::from_millis(2)).await;
        queue(&store, "pay_new", 3).await;
        // A minute after `between`, the old ones' retention is over; the new ones' not yet.
        let pruned = retention.prune(between + 60_000).await.unwrap();
        assert_eq!(pruned.events, 2 * PRUNE_BATCH as u64 + 7);
        assert_eq!(count(&store).await, 3);
        assert!(Retention::new(store.clone(), &EventsConfig { retain_for_ms: 0, ..cfg }).is_none(), "0: kept forever");
    }

    #[tokio::test]
    async fn the_task_prunes_at_start_and_then_periodically_until_stopped() {
        let store = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
        let cfg = EventsConfig { retain_for_ms: 1, prune_interval_ms: 20, ..EventsConfig::default() };
        queue(&store, "pay_a", 2).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(Retention::new(store.clone(), &cfg).unwrap().run(stop.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count(&store).await > 0 {
            assert!(std::time::Instant::now() < deadline, "not pruned");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Later events go at a later round.
        queue(&store, "pay_b", 2).await;
        while count(&store).await > 0 {
            assert!(std::time::Instant::now() < deadline, "not pruned again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
    }
}

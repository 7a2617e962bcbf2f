//! The outbox of events for the platform (outbound webhooks): events are written by
//! [`super::Store::commit`] in the same transaction as the change they describe
//! ([`super::Write::Event`]), each fanned out there into one delivery per subscribed endpoint.
//! [`Outbox`] is the other side: endpoints, and the delivery worker's claims, attempts and
//! outcomes, which several instances share through one database.

use super::StoreResult;
use super::sql::{IN_LIST_MAX, SqlStore, Tx, placeholders};
use crate::config::Secret;
use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

/// An event as stored: its body is the exact JSON every delivery sends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxEvent {
    /// `evt_…`, stable across retries and replays (receivers deduplicate on it).
    pub id: String,
    /// e.g. `payment.succeeded`.
    pub event_type: String,
    /// What its order is kept within (the payment's or the clinic's id): a later event of the
    /// same key is not sent to an endpoint while an earlier one is still pending there.
    pub order_key: String,
    /// The clinic concerned.
    pub clinic_id: Option<String>,
    /// The JSON body.
    pub body: String,
    /// Unix ms.
    pub created_at: i64,
}

/// An endpoint the platform registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEndpoint {
    /// `we_…`.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The signing secret (shown to the operator once, when the endpoint is created).
    pub secret: Secret,
    /// The operator's note.
    pub description: String,
    /// A disabled endpoint gets no new deliveries, and its pending ones wait.
    pub enabled: bool,
    /// Event types it takes; empty: all of them.
    pub event_types: Vec<String>,
    /// Who registered it (admin id).
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// A targeted change of an endpoint: only the fields given are written, so two operators
/// changing different fields never undo each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointChange {
    /// New URL.
    pub url: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New event types (empty: all).
    pub event_types: Option<Vec<String>>,
    /// New note.
    pub description: Option<String>,
}

/// One event queued for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivery {
    /// `dlv_…`.
    pub id: String,
    /// The event sent.
    pub event_id: String,
    /// Where to.
    pub endpoint_id: String,
    /// The event's type.
    pub event_type: String,
    /// The event's order key (a replay has its own, so it is sent outside the order).
    pub order_key: String,
    /// The event's place within its order key.
    pub seq: i64,
    /// `pending`, `delivered`, `failed` (gave up), `canceled` (endpoint deleted).
    pub status: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// When it is due next (Unix ms).
    pub next_attempt_at: i64,
    /// The last attempt's HTTP status, if it got an answer.
    pub last_status: Option<i64>,
    /// The last attempt's error, if it got none or a non-2xx one.
    pub last_error: Option<String>,
    /// The delivery this one replays.
    pub replay_of: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// When it was delivered (Unix ms).
    pub delivered_at: Option<i64>,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    /// `att_…`.
    pub id: String,
    /// The delivery.
    pub delivery_id: String,
    /// When it started (Unix ms).
    pub at: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// The receiver's HTTP status, if it answered.
    pub http_status: Option<i64>,
    /// What went wrong (connection refused, timeout, non-2xx), if anything.
    pub error: Option<String>,
    /// The start of the receiver's answer.
    pub response_excerpt: Option<String>,
}

/// A delivery the worker claimed, with what it needs to send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery.
    pub delivery: Delivery,
    /// The endpoint's URL.
    pub url: String,
    /// Its secret.
    pub secret: Secret,
    /// The event's body.
    pub body: String,
    /// This claim's token: only its holder may settle the delivery.
    pub lease_token: String,
}

/// What an attempt means for its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The receiver answered 2xx.
    Delivered,
    /// Try again at this time (Unix ms).
    Retry(i64),
    /// Retried for as long as allowed: give up.
    GiveUp,
}

/// What one prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Deliveries that had ended.
    pub deliveries: u64,
    /// Their attempts.
    pub attempts: u64,
    /// Events no delivery needed any more.
    pub events: u64,
}

impl Pruned {
    /// Whether nothing was deleted.
    pub fn is_empty(&self) -> bool {
        *self == Pruned::default()
    }
}

/// The delivery side of the outbox.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Stores a new endpoint unless `max` already exist (answers `false` then).
    async fn insert_endpoint(&self, e: &EventEndpoint, max: usize) -> StoreResult<bool>;
    /// An endpoint by id.
    async fn endpoint(&self, id: &str) -> StoreResult<Option<EventEndpoint>>;
    /// Every endpoint, oldest first.
    async fn endpoints(&self) -> StoreResult<Vec<EventEndpoint>>;
    /// Changes the given fields of an endpoint; `false` if there is no such endpoint.
    async fn change_endpoint(&self, id: &str, change: &EndpointChange) -> StoreResult<bool>;
    /// Deletes an endpoint and cancels its pending deliveries; `false` if there is none.
    async fn delete_endpoint(&self, id: &str) -> StoreResult<bool>;
    /// Claims up to `limit` deliveries due at `now` until `lease_until`: each the earliest
    /// pending one of its (endpoint, order key), of an enabled endpoint, not leased by anyone
    /// else. A conditional update takes each, so two instances never claim the same one.
    async fn claim(&self, now: i64, lease_until: i64, limit: usize) -> StoreResult<Vec<Claimed>>;
    /// Records `attempt`, and settles the delivery if `lease_token` still holds its lease
    /// (answers whether it did; the attempt is recorded either way: it happened).
    async fn settle(
        &self,
        delivery_id: &str,
        lease_token: &str,
        settle: Settle,
        attempt: &Attempt,
    ) -> StoreResult<bool>;
    /// An endpoint's deliveries, newest first, strictly older than `before` (Unix ms, id), in
    /// `status` if given; at most `limit`.
    async fn deliveries(
        &self,
        endpoint_id: &str,
        status: Option<&str>,
        limit: i64,
        before: Option<(i64, String)>,
    ) -> StoreResult<Vec<Delivery>>;
    /// A delivery by id.
    async fn delivery(&self, id: &str) -> StoreResult<Option<Delivery>>;
    /// A delivery's attempts, oldest first.
    async fn attempts(&self, delivery_id: &str) -> StoreResult<Vec<Attempt>>;
    /// An event by id.
    async fn event(&self, id: &str) -> StoreResult<Option<OutboxEvent>>;
    /// Queues the event of delivery `id` again to the same endpoint as a new delivery `new_id`,
    /// due at `now` and outside the event's order; `None` if there is no such delivery or its
    /// endpoint is gone.
    async fn replay(&self, id: &str, new_id: &str, now: i64) -> StoreResult<Option<Delivery>>;
    /// Deletes up to `limit` deliveries that ended (`delivered`, `failed`, `canceled`) before
    /// `before` (Unix ms), oldest end first, with their attempts; then up to `limit` events
    /// created before `before` that no delivery refers to any more. A pending delivery, and so
    /// its event, is never deleted, however old.
    async fn prune(&self, before: i64, limit: usize) -> StoreResult<Pruned>;
}

/// Endpoints' event types as stored: `,a,b,` (so one `LIKE '%,a,%'` finds a subscriber), or
/// empty for every type.
fn types_column(types: &[String]) -> String {
    if types.is_empty() { String::new() } else { format!(",{},", types.join(",")) }
}

fn types_from(column: &str) -> Vec<String> {
    column.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// Stores `e` and queues a delivery of it to every enabled endpoint that takes its type. Its
/// `seq` is one past the last of its order key, read after the change it describes locked that
/// payment's or clinic's row, so concurrent changes of one key number their events in turn.
pub(super) async fn insert_event(tx: &mut Tx, e: &OutboxEvent) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO outbound_events (id, event_type, order_key, seq, clinic_id, body, created_at) VALUES \
         ($1, $2, $3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM outbound_events WHERE order_key = $3), $4, $5, $6)",
    )
    .bind(&e.id)
    .bind(&e.event_type)
    .bind(&e.order_key)
    .bind(&e.clinic_id)
    .bind(&e.body)
    .bind(e.created_at)
    .execute(&mut **tx)
    .await?;
    // One delivery per (event, endpoint): its id is made of both, so it needs no random source
    // that SQLite and PostgreSQL would spell differently.
    sqlx::query(
        "INSERT INTO event_deliveries (id, event_id, endpoint_id, event_type, order_key, seq, status, attempts, \
         next_attempt_at, created_at, updated_at) \
         SELECT 'dlv_' || $1 || '_' || p.id, $2, p.id, $3, $4, (SELECT seq FROM outbound_events WHERE id = $2), \
         'pending', 0, $5, $5, $5 FROM event_endpoints p \
         WHERE p.enabled = 1 AND (p.event_types = '' OR p.event_types LIKE $6)",
    )
    .bind(e.id.trim_start_matches("evt_"))
    .bind(&e.id)
    .bind(&e.event_type)
    .bind(&e.order_key)
    .bind(e.created_at)
    .bind(format!("%,{},%", e.event_type))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, d.endpoint_id, d.event_type, d.order_key, d.seq, d.status, \
    d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.replay_of, d.created_at, d.updated_at, d.delivered_at";

fn delivery_from(r: &AnyRow) -> StoreResult<Delivery> {
    Ok(Delivery {
        id: r.try_get("id")?,
        event_id: r.try_get("event_id")?,
        endpoint_id: r.try_get("endpoint_id")?,
        event_type: r.try_get("event_type")?,
        order_key: r.try_get("order_key")?,
        seq: r.try_get("seq")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        replay_of: r.try_get("replay_of")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        delivered_at: r.try_get("delivered_at")?,
    })
}

fn endpoint_from(r: &AnyRow) -> StoreResult<EventEndpoint> {
    Ok(EventEndpoint {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        secret: Secret::new(r.try_get::<String, _>("secret")?),
        description: r.try_get("description")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        event_types: types_from(&r.try_get::<String, _>("event_types")?),
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn attempt_from(r: &AnyRow) -> StoreResult<Attempt> {
    Ok(Attempt {
        id: r.try_get("id")?,
        delivery_id: r.try_get("delivery_id")?,
        at: r.try_get("at")?,
        duration_ms: r.try_get("duration_ms")?,
        http_status: r.try_get("http_status")?,
        error: r.try_get("error")?,
        response_excerpt: r.try_get("response_excerpt")?,
    })
}

#[async_trait]
impl Outbox for SqlStore {
    async fn insert_endpoint(&self, e: &EventEndpoint, max: usize) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO event_endpoints (id, url, secret, description, enabled, event_types, created_by, created_at, \
             updated_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 \
             WHERE (SELECT COUNT(*) FROM event_endpoints) < $10",
        )
        .bind(&e.id)
        .bind(&e.url)
        .bind(e.secret.expose())
        .bind(&e.description)
        .bind(i64::from(e.enabled))
        .bind(types_column(&e.event_types))
        .bind(&e.created_by)
        .bind(e.created_at)
        .bind(e.updated_at)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn endpoint(&self, id: &str) -> StoreResult<Option<EventEndpoint>> {
        let row =
            sqlx::query("SELECT * FROM event_endpoints WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(endpoint_from).transpose()
    }

    async fn endpoints(&self) -> StoreResult<Vec<EventEndpoint>> {
        let rows = sqlx::query("SELECT * FROM event_endpoints ORDER BY created_at, id").fetch_all(&self.pool).await?;
        rows.iter().map(endpoint_from).collect()
    }

    async fn change_endpoint(&self, id: &str, c: &EndpointChange) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE event_endpoints SET url = COALESCE($1, url), enabled = COALESCE($2, enabled), \
             event_types = COALESCE($3, event_types), description = COALESCE($4, description), updated_at = $5 \
             WHERE id = $6",
        )
        .bind(&c.url)
        .bind(c.enabled.map(i64::from))
        .bind(c.event_types.as_deref().map(types_column))
        .bind(&c.description)
        .bind(super::now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_endpoint(&self, id: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM event_endpoints WHERE id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query(
            "UPDATE event_deliveries SET status = 'canceled', lease_until = NULL, lease_token = NULL, updated_at = $1 \
             WHERE endpoint_id = $2 AND status = 'pending'",
        )
        .bind(super::now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim(&self, now: i64, lease_until: i64, limit: usize) -> StoreResult<Vec<Claimed>> {
        // The head of each (endpoint, order key) queue only: a later event waits while an
        // earlier one to the same endpoint is pending (in flight, or waiting for its retry).
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM event_deliveries d JOIN event_endpoints p ON p.id = d.endpoint_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND (d.lease_until IS NULL OR d.lease_until < $1) \
             AND p.enabled = 1 AND NOT EXISTS (SELECT 1 FROM event_deliveries e WHERE e.endpoint_id = d.endpoint_id \
             AND e.order_key = d.order_key AND e.status = 'pending' AND e.seq < d.seq) \
             ORDER BY d.next_attempt_at, d.id LIMIT $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = Vec::new();
        for row in &rows {
            let delivery = delivery_from(row)?;
            let token = crate::ids::random_id();
            // Taken only if nobody took it since the read: the loser of a race updates nothing.
            let took = sqlx::query(
                "UPDATE event_deliveries SET lease_until = $1, lease_token = $2 WHERE id = $3 AND status = 'pending' \
                 AND (lease_until IS NULL OR lease_until < $4)",
            )
            .bind(lease_until)
            .bind(&token)
            .bind(&delivery.id)
            .bind(now)
            .execute(&self.pool)
            .await?;
            if took.rows_affected() != 1 {
                continue;
            }
            let target = sqlx::query(
                "SELECT p.url, p.secret, v.body FROM event_endpoints p, outbound_events v WHERE p.id = $1 AND v.id = $2",
            )
            .bind(&delivery.endpoint_id)
            .bind(&delivery.event_id)
            .fetch_optional(&self.pool)
            .await?;
            let Some(target) = target else {
                // Its endpoint was deleted meanwhile (which cancels its deliveries), or its event
                // was pruned while a replay of it was being queued: nothing can be sent, so it
                // ends here instead of being claimed again at every lease's end.
                sqlx::query(
                    "UPDATE event_deliveries SET status = 'canceled', lease_until = NULL, lease_token = NULL, \
                     last_error = 'its event or endpoint no longer exists', updated_at = $1 \
                     WHERE id = $2 AND lease_token = $3 AND status = 'pending'",
                )
                .bind(super::now_ms())
                .bind(&delivery.id)
                .bind(&token)
                .execute(&self.pool)
                .await?;
                continue;
            };
            claimed.push(Claimed {
                url: target.try_get("url")?,
                secret: Secret::new(target.try_get::<String, _>("secret")?),
                body: target.try_get("body")?,
                lease_token: token,
                delivery,
            });
        }
        Ok(claimed)
    }

    async fn settle(&self, id: &str, token: &str, settle: Settle, a: &Attempt) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO event_attempts (id, delivery_id, at, duration_ms, http_status, error, response_excerpt) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&a.id)
        .bind(&a.delivery_id)
        .bind(a.at)
        .bind(a.duration_ms)
        .bind(a.http_status)
        .bind(&a.error)
        .bind(&a.response_excerpt)
        .execute(&mut *tx)
        .await?;
        let now = super::now_ms();
        let (status, next, delivered_at) = match settle {
            Settle::Delivered => ("delivered", now, Some(now)),
            Settle::Retry(at) => ("pending", at, None),
            Settle::GiveUp => ("failed", now, None),
        };
        let done = sqlx::query(
            "UPDATE event_deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, lease_until = NULL, \
             lease_token = NULL, last_status = $3, last_error = $4, updated_at = $5, delivered_at = $6 \
             WHERE id = $7 AND lease_token = $8 AND status = 'pending'",
        )
        .bind(status)
        .bind(next)
        .bind(a.http_status)
        .bind(&a.error)
        .bind(now)
        .bind(delivered_at)
        .bind(id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn deliveries(
        &self,
        endpoint_id: &str,
        status: Option<&str>,
        limit: i64,
        before: Option<(i64, String)>,
    ) -> StoreResult<Vec<Delivery>> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM event_deliveries d WHERE d.endpoint_id = $1 AND ($2 = '' OR d.status = $2) \
             AND (d.created_at < $3 OR (d.created_at = $3 AND d.id < $4) OR ($4 = '' AND d.created_at <= $3)) \
             ORDER BY d.created_at DESC, d.id DESC LIMIT $5"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(endpoint_id)
            .bind(status.unwrap_or(""))
            .bind(at)
            .bind(&id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(delivery_from).collect()
    }

    async fn delivery(&self, id: &str) -> StoreResult<Option<Delivery>> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM event_deliveries d WHERE d.id = $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(delivery_from).transpose()
    }

    async fn attempts(&self, delivery_id: &str) -> StoreResult<Vec<Attempt>> {
        let rows = sqlx::query("SELECT * FROM event_attempts WHERE delivery_id = $1 ORDER BY at, id")
            .bind(delivery_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(attempt_from).collect()
    }

    async fn event(&self, id: &str) -> StoreResult<Option<OutboxEvent>> {
        let row =
            sqlx::query("SELECT * FROM outbound_events WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| -> StoreResult<OutboxEvent> {
            Ok(OutboxEvent {
                id: r.try_get("id")?,
                event_type: r.try_get("event_type")?,
                order_key: r.try_get("order_key")?,
                clinic_id: r.try_get("clinic_id")?,
                body: r.try_get("body")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn replay(&self, id: &str, new_id: &str, now: i64) -> StoreResult<Option<Delivery>> {
        // Its own order key: a replay is the operator's explicit choice, sent at once, and
        // neither waits for nor holds back the endpoint's other deliveries.
        let done = sqlx::query(
            "INSERT INTO event_deliveries (id, event_id, endpoint_id, event_type, order_key, seq, status, attempts, \
             next_attempt_at, replay_of, created_at, updated_at) \
             SELECT $1, d.event_id, d.endpoint_id, d.event_type, 'replay:' || $1, d.seq, 'pending', 0, $2, d.id, $2, $2 \
             FROM event_deliveries d JOIN event_endpoints p ON p.id = d.endpoint_id WHERE d.id = $3",
        )
        .bind(new_id)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        self.delivery(new_id).await
    }

    async fn prune(&self, before: i64, limit: usize) -> StoreResult<Pruned> {
        // Bounded by the longest IN list, so each statement is short. No transaction around
        // them: each delete stands alone (attempts deleted without their delivery are
        // finished by the next prune), and a prune with nothing to do only reads, so that
        // the one at every start-up never holds SQLite's write lock against the worker.
        let limit = i64::try_from(limit.clamp(1, IN_LIST_MAX)).unwrap_or(1);
        let ended: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM event_deliveries WHERE status IN ('delivered', 'failed', 'canceled') AND updated_at < $1 \
             ORDER BY updated_at, id LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut pruned = Pruned::default();
        if !ended.is_empty() {
            let list = placeholders(ended.len());
            let sql = format!("DELETE FROM event_attempts WHERE delivery_id IN ({list})");
            pruned.attempts =
                bind_all(sqlx::query(AssertSqlSafe(sql)), &ended).execute(&self.pool).await?.rows_affected();
            // `status <> 'pending'` again: nothing turns an ended delivery back to pending, and
            // this keeps it so should anything ever do.
            let sql = format!("DELETE FROM event_deliveries WHERE id IN ({list}) AND status <> 'pending'");
            pruned.deliveries =
                bind_all(sqlx::query(AssertSqlSafe(sql)), &ended).execute(&self.pool).await?.rows_affected();
        }
        let unneeded: Vec<String> = sqlx::query_scalar(
            "SELECT e.id FROM outbound_events e WHERE e.created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM event_deliveries d WHERE d.event_id = e.id) ORDER BY e.created_at, e.id LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        if !unneeded.is_empty() {
            // Checked again as it is deleted: a replay may have queued a delivery of it since.
            let sql = format!(
                "DELETE FROM outbound_events WHERE id IN ({}) \
                 AND NOT EXISTS (SELECT 1 FROM event_deliveries d WHERE d.event_id = outbound_events.id)",
                placeholders(unneeded.len())
            );
            pruned.events =
                bind_all(sqlx::query(AssertSqlSafe(sql)), &unneeded).execute(&self.pool).await?.rows_affected();
        }
        Ok(pruned)
    }
}

/// `query` with each of `values` bound in turn.
fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    values: &'q [String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for v in values {
        query = query.bind(v);
    }
    query
}

#[cfg(test)]
impl SqlStore {
    /// The pool, for tests that move time (a delivery's due date) by hand.
    pub(crate) fn pool_for_tests(&self) -> sqlx::AnyPool {
        self.pool.clone()
    }
}

//! Group commit for call bindings. Every join to a call not seen before binds it to its clinic,
//! a write; on SQLite each write transaction is one fsync of the journal, and a reconnect storm
//! or a Monday morning brings thousands of new calls a second. One task takes every binding
//! that arrived while the previous batch was written and writes them together: one multi-row
//! insert and its reads back in one transaction, so one fsync per batch instead of one per call.

use super::sql::{IN_LIST_MAX, placeholders};
use super::{StoreError, StoreResult, now_ms};
use sqlx::AnyPool;
use sqlx::AssertSqlSafe;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// Bindings written in one transaction, at most (three bound values each).
const MAX_BATCH: usize = 256;
/// Calls one read-back asks for. PostgreSQL weighs a long `IN (…)` list against reading the
/// whole table: with 35,000 calls bound and their statistics known, it read `calls` whole for
/// a list of 256 (also in a copy of a 70,000-socket `scale` run's table); at 64 the primary key
/// is the cheaper plan by a wide margin, which grows with the table.
const READ_BACK: usize = 64;
/// Bindings waiting for the writer, at most; a join past it waits for room.
const QUEUE: usize = 4096;

/// One join's request to bind its call.
struct Ask {
    call_id: String,
    clinic_id: String,
    reply: oneshot::Sender<StoreResult<String>>,
}

/// The handle joins send their bindings through; the writer task ends with the last handle.
#[derive(Clone)]
pub(super) struct Binder {
    asks: mpsc::Sender<Ask>,
    pool: AnyPool,
}

impl Binder {
    /// Starts the writer on the current runtime.
    pub(super) fn start(pool: AnyPool) -> Self {
        let (asks, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool.clone(), queue));
        Self { asks, pool }
    }

    /// The clinic `call_id` is bound to: `clinic_id` if the call is new, else the clinic of
    /// whichever join (on any instance) bound it first.
    pub(super) async fn bind(&self, call_id: &str, clinic_id: &str) -> StoreResult<String> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask { call_id: call_id.to_owned(), clinic_id: clinic_id.to_owned(), reply };
        // A writer that stopped (it panicked) costs its batching, never the joins: the call is
        // bound on its own.
        if let Err(mpsc::error::SendError(ask)) = self.asks.send(ask).await {
            tracing::error!("the call-binding writer stopped; binding calls one at a time");
            return write(&self.pool, std::slice::from_ref(&ask))
                .await?
                .remove(call_id)
                .ok_or_else(|| StoreError::Corrupt(format!("call {call_id} not bound after its insert")));
        }
        match answer.await {
            Ok(bound) => bound,
            Err(_) => {
                tracing::error!("the call-binding writer stopped mid-batch; binding this call on its own");
                let (reply, _) = oneshot::channel();
                let ask = Ask { call_id: call_id.to_owned(), clinic_id: clinic_id.to_owned(), reply };
                write(&self.pool, std::slice::from_ref(&ask))
                    .await?
                    .remove(call_id)
                    .ok_or_else(|| StoreError::Corrupt(format!("call {call_id} not bound after its insert")))
            }
        }
    }
}

async fn run(pool: AnyPool, mut queue: mpsc::Receiver<Ask>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match write(&pool, &batch).await {
            Ok(bound) => {
                for ask in batch.drain(..) {
                    let answer = bound
                        .get(&ask.call_id)
                        .cloned()
                        .ok_or_else(|| StoreError::Corrupt(format!("call {} not bound after its insert", ask.call_id)));
                    let _ = ask.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, calls = batch.len(), "cannot bind calls: store unavailable");
                for ask in batch.drain(..) {
                    let _ = ask.reply.send(Err(StoreError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

/// Inserts the batch's calls that are new (a call bound before, or twice in the batch, keeps
/// its first clinic) and reads back the clinic of each, in one transaction.
async fn write(pool: &AnyPool, batch: &[Ask]) -> StoreResult<HashMap<String, String>> {
    debug_assert!(batch.len() <= MAX_BATCH && MAX_BATCH <= IN_LIST_MAX);
    // Each call once (its first asker's clinic), in call-id order: two instances' batches that
    // share calls then take PostgreSQL's row locks in the same order and cannot deadlock.
    let mut calls: Vec<&Ask> = Vec::with_capacity(batch.len());
    let mut seen = std::collections::HashSet::new();
    for ask in batch {
        if seen.insert(ask.call_id.as_str()) {
            calls.push(ask);
        }
    }
    calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    let now = now_ms();
    let mut tx = pool.begin().await?;
    let rows: Vec<String> =
        (0..calls.len()).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
    let insert = format!(
        "INSERT INTO calls (call_id, clinic_id, created_at) VALUES {} ON CONFLICT (call_id) DO NOTHING",
        rows.join(", ")
    );
    let mut q = sqlx::query(AssertSqlSafe(insert));
    for ask in &calls {
        q = q.bind(&ask.call_id).bind(&ask.clinic_id).bind(now);
    }
    q.execute(&mut *tx).await?;
    // Read back in short lists, which PostgreSQL reads through the primary key (see
    // [`READ_BACK`]).
    let mut bound = HashMap::with_capacity(calls.len());
    for chunk in calls.chunks(READ_BACK) {
        let select = format!("SELECT call_id, clinic_id FROM calls WHERE call_id IN ({})", placeholders(chunk.len()));
        let mut q = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(select));
        for ask in chunk {
            q = q.bind(&ask.call_id);
        }
        bound.extend(q.fetch_all(&mut *tx).await?);
    }
    tx.commit().await?;
    Ok(bound)
}

//! Batched reads for `welcome`s. Every join reads its call's clinic and payments once, and a
//! reconnect storm brings thousands of joins a second: read one by one, each is a statement on
//! the pool's 16 connections, and a drained node's clients waited seconds for their `welcome`
//! behind one another (the PostgreSQL backends and the pool's queue, on cores the whole storm
//! shares). Here a few reader tasks each take every read that arrived while the others were
//! busy and answer them with one statement.
//!
//! A read still starts after its join asked for it: a batch is only taken from the queue once
//! a reader is free, and its statement runs after that. So a welcome shows every change
//! committed before its connection joined the room, as a read of its own did.

use super::sql::read_call_snapshots;
use super::{CallSnapshot, StoreError, StoreResult};
use sqlx::AnyPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Calls one statement reads, at most (two bound values each).
pub(super) const MAX_BATCH: usize = 256;
/// Reads waiting for a reader, at most; a join past it waits for room.
const QUEUE: usize = 4096;

/// One join's request for its call's snapshot.
struct Ask {
    call_id: String,
    clinic_id: String,
    reply: oneshot::Sender<StoreResult<CallSnapshot>>,
}

/// The handle joins read through; the reader tasks end with the last handle.
#[derive(Clone)]
pub(super) struct Snapshots {
    asks: mpsc::Sender<Ask>,
    pool: AnyPool,
    statements: Arc<AtomicU64>,
}

impl Snapshots {
    /// Starts the readers on the current runtime, at most `readers` statements at once (the
    /// rest of the pool stays free for payments and webhooks).
    pub(super) fn start(pool: AnyPool, readers: usize) -> Self {
        let (asks, queue) = mpsc::channel(QUEUE);
        let statements = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(pool.clone(), queue, readers.max(1), statements.clone()));
        Self { asks, pool, statements }
    }

    /// The clinic `clinic_id` and every payment of `call_id`, read after this call was made.
    pub(super) async fn read(&self, call_id: &str, clinic_id: &str) -> StoreResult<CallSnapshot> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask { call_id: call_id.to_owned(), clinic_id: clinic_id.to_owned(), reply };
        // Readers that stopped (one panicked) cost the batching, never the joins: the call is
        // read on its own.
        if self.asks.send(ask).await.is_err() {
            tracing::error!("the welcome readers stopped; reading calls one at a time");
            return self.alone(call_id, clinic_id).await;
        }
        match answer.await {
            Ok(snapshot) => snapshot,
            Err(_) => {
                tracing::error!("a welcome reader stopped mid-batch; reading this call on its own");
                self.alone(call_id, clinic_id).await
            }
        }
    }

    /// Statements read so far, each for a whole batch: joins per statement shows the batching.
    pub(super) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    async fn alone(&self, call_id: &str, clinic_id: &str) -> StoreResult<CallSnapshot> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut one = read_call_snapshots(&self.pool, &[(call_id, clinic_id)]).await?;
        one.pop().ok_or_else(|| StoreError::Corrupt(format!("no snapshot read for call {call_id}")))
    }
}

async fn run(pool: AnyPool, mut queue: mpsc::Receiver<Ask>, readers: usize, statements: Arc<AtomicU64>) {
    let free = Arc::new(Semaphore::new(readers));
    loop {
        // A reader is free before the queue is read: while every reader is busy, reads pile up
        // in the queue and the next free reader takes them all in one statement.
        let Ok(reader) = free.clone().acquire_owned().await else { return };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        let statements = statements.clone();
        tokio::spawn(async move {
            let _reader = reader;
            statements.fetch_add(1, Ordering::Relaxed);
            answer(&pool, batch).await;
        });
    }
}

/// Reads the batch's calls in one statement and answers each ask with its own.
async fn answer(pool: &AnyPool, batch: Vec<Ask>) {
    let pairs: Vec<(&str, &str)> = batch.iter().map(|a| (a.call_id.as_str(), a.clinic_id.as_str())).collect();
    match read_call_snapshots(pool, &pairs).await {
        Ok(snapshots) => {
            for (ask, snapshot) in batch.into_iter().zip(snapshots) {
                let _ = ask.reply.send(Ok(snapshot));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, calls = batch.len(), "cannot read calls for welcomes: store unavailable");
            for ask in batch {
                let _ = ask.reply.send(Err(StoreError::Unavailable(e.to_string())));
            }
        }
    }
}

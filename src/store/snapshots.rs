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

use super::sql::{SNAPSHOTS_MAX, read_call_snapshots};
use super::{CallSnapshot, StoreError, StoreResult};
use sqlx::AnyPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Joins one statement answers, at most.
const MAX_BATCH: usize = SNAPSHOTS_MAX;
/// Reads waiting for a reader, at most; a join past it waits for room.
const QUEUE: usize = 4096;
/// Longest a batch's joins wait for their answer once a reader took them, both attempts and
/// the waits for a pooled connection included: past it they get a store error (and reconnect).
/// The reader itself stays taken until its statement ends, since the statement's connection is
/// out of the pool until then; a fresh batch must not take another one.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);
/// Longest a join waits for its answer from the moment it asked, a wait for a free reader
/// included: with every reader held by a stuck statement, joins still get their error.
const ASK_WITHIN: Duration = Duration::from_secs(12);

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
    /// Whether `pool` is PostgreSQL's (the statement joins payments differently: see
    /// `payments_of_call`).
    postgres: bool,
    statements: Arc<AtomicU64>,
}

impl Snapshots {
    /// Starts the readers on the current runtime, at most `readers` statements at once (the
    /// rest of the pool stays free for payments and webhooks).
    pub(super) fn start(pool: AnyPool, postgres: bool, readers: usize) -> Self {
        let (asks, queue) = mpsc::channel(QUEUE);
        let statements = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(pool.clone(), postgres, queue, readers.max(1), statements.clone()));
        Self { asks, pool, postgres, statements }
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
        match tokio::time::timeout(ASK_WITHIN, answer).await {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(_)) => {
                tracing::error!("a welcome reader stopped mid-batch; reading this call on its own");
                self.alone(call_id, clinic_id).await
            }
            Err(_) => Err(StoreError::Unavailable(format!("no welcome reader answered within {ASK_WITHIN:?}"))),
        }
    }

    /// Statements read so far, each for a whole batch: joins per statement shows the batching.
    pub(super) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    async fn alone(&self, call_id: &str, clinic_id: &str) -> StoreResult<CallSnapshot> {
        let mut one = read_call_snapshots(&self.pool, self.postgres, &[(call_id, clinic_id)], &self.statements).await?;
        one.pop().unwrap_or_else(|| Err(StoreError::Corrupt(format!("no snapshot read for call {call_id}"))))
    }
}

async fn run(
    pool: AnyPool,
    postgres: bool,
    mut queue: mpsc::Receiver<Ask>,
    readers: usize,
    statements: Arc<AtomicU64>,
) {
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
            answer(&pool, postgres, batch, &statements).await;
        });
    }
}

/// Reads the batch's calls in one statement and answers each ask with its own. A statement
/// that fails (a connection that died, a moment's outage) is tried once more: a read is safe
/// to repeat, and it still starts after every ask in the batch. Whatever happens, the asks are
/// answered within [`ANSWER_WITHIN`]; a read still running then is awaited before the reader
/// is free again.
async fn answer(pool: &AnyPool, postgres: bool, batch: Vec<Ask>, statements: &AtomicU64) {
    let (pairs, replies): (Vec<(String, String)>, Vec<_>) =
        batch.into_iter().map(|a| ((a.call_id, a.clinic_id), a.reply)).unzip();
    let asked: Vec<(&str, &str)> = pairs.iter().map(|(call, clinic)| (call.as_str(), clinic.as_str())).collect();
    let read = async {
        match read_call_snapshots(pool, postgres, &asked, statements).await {
            Err(e) => {
                tracing::warn!(error = %e, calls = asked.len(), "welcome read failed; trying once more");
                read_call_snapshots(pool, postgres, &asked, statements).await
            }
            read => read,
        }
    };
    tokio::pin!(read);
    let outcome = tokio::select! {
        read = &mut read => Some(read),
        _ = tokio::time::sleep(ANSWER_WITHIN) => None,
    };
    let finished = outcome.is_some();
    let error = match outcome {
        Some(Ok(snapshots)) => {
            for (reply, snapshot) in replies.into_iter().zip(snapshots) {
                let _ = reply.send(snapshot);
            }
            return;
        }
        Some(Err(e)) => e.to_string(),
        None => format!("no answer within {ANSWER_WITHIN:?}"),
    };
    tracing::warn!(error = %error, calls = asked.len(), "cannot read calls for welcomes: store unavailable");
    for reply in replies {
        let _ = reply.send(Err(StoreError::Unavailable(error.clone())));
    }
    if !finished {
        // Its connection is out of the pool until the statement ends (or the connection
        // breaks), and so is this reader: stuck statements take at most the readers' share of
        // the pool, never the connections payments and webhooks need.
        let _ = read.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Clinic, Inserted, Payment, SqlStore, Store, Write};

    async fn store_with_two_calls() -> SqlStore {
        let store = SqlStore::connect("sqlite::memory:").await.unwrap();
        let clinic = Clinic { id: "clinic_x".into(), name: "X".into(), ..Clinic::default() };
        store.commit(&[Write::UpsertClinic(clinic)]).await.unwrap();
        for (call, n) in [("call_a", 2), ("call_b", 1)] {
            for k in 0..n {
                let payment = Payment {
                    id: format!("pay_{call}_{k}"),
                    call_id: call.into(),
                    clinic_id: "clinic_x".into(),
                    client_ref: format!("ref_{k}"),
                    amount: 100 + k,
                    currency: "aud".into(),
                    created_at: 10 + k,
                    ..Default::default()
                };
                assert!(matches!(store.insert_payment(&payment).await.unwrap(), Inserted::New));
            }
        }
        store
    }

    fn ids(snapshot: &StoreResult<CallSnapshot>) -> Vec<String> {
        snapshot.as_ref().unwrap().payments.iter().map(|p| p.id.clone()).collect()
    }

    #[tokio::test]
    async fn one_statement_reads_each_pair_once_in_the_order_asked() {
        let store = store_with_two_calls().await;
        let statements = AtomicU64::new(0);
        let asked =
            [("call_a", "clinic_x"), ("call_b", "clinic_gone"), ("call_a", "clinic_x"), ("call_none", "clinic_x")];
        let read = read_call_snapshots(&store.pool, false, &asked, &statements).await.unwrap();
        assert_eq!(statements.load(Ordering::Relaxed), 1);
        assert_eq!(read.len(), 4);
        assert_eq!(ids(&read[0]), ["pay_call_a_0", "pay_call_a_1"], "oldest first, each once");
        assert_eq!(ids(&read[2]), ids(&read[0]), "a pair asked twice gets the same answer");
        assert_eq!(ids(&read[1]), ["pay_call_b_0"]);
        assert!(read[1].as_ref().unwrap().clinic.is_none(), "no such clinic");
        assert_eq!(read[0].as_ref().unwrap().clinic.as_ref().map(|c| c.name.as_str()), Some("X"));
        assert!(ids(&read[3]).is_empty());
        assert!(read[3].as_ref().unwrap().clinic.is_some());
    }

    #[tokio::test]
    async fn a_corrupt_row_fails_only_its_own_calls_welcome() {
        let store = store_with_two_calls().await;
        sqlx::query("UPDATE payments SET status = 'bogus' WHERE id = 'pay_call_a_0'")
            .execute(&store.pool)
            .await
            .unwrap();
        let read = read_call_snapshots(
            &store.pool,
            false,
            &[("call_a", "clinic_x"), ("call_b", "clinic_x")],
            &AtomicU64::new(0),
        )
        .await
        .unwrap();
        assert!(matches!(read[0], Err(StoreError::Corrupt(_))), "{:?}", read[0]);
        assert_eq!(ids(&read[1]), ["pay_call_b_0"]);
        // Through the readers too: the other call's join is answered.
        let (bad, good) =
            tokio::join!(store.call_snapshot("call_a", "clinic_x"), store.call_snapshot("call_b", "clinic_x"));
        assert!(bad.is_err());
        assert_eq!(ids(&good), ["pay_call_b_0"]);
    }

    #[tokio::test]
    async fn with_the_store_closed_every_read_fails_and_none_hangs() {
        let store = store_with_two_calls().await;
        store.close().await;
        let reads = futures_util::future::join_all((0..20).map(|_| store.call_snapshot("call_a", "clinic_x")));
        let read = tokio::time::timeout(Duration::from_secs(30), reads).await.expect("every read answered");
        assert!(read.iter().all(|r| matches!(r, Err(StoreError::Unavailable(_)))), "{read:?}");
    }
}

//! How PostgreSQL carries out the store's reads by many calls at once, on tables the size a busy
//! deployment has. The verify sweep, the repairs after a reconnection and the binder each ask
//! for hundreds of calls in one read; a list that long made PostgreSQL scan the whole table,
//! often in parallel, forking workers for every read (a quarter of the machine's time in a
//! 70,000-socket rolling restart, README "A national service's Monday morning"). Each read must
//! go through its index instead, whatever the number of calls asked.
//!
//! What PostgreSQL did is read from its own counters (`pg_stat_user_tables`), which a backend
//! reports when it exits: the store is closed before they are read.

use crate::services::TempDb;
use callpay::store::{SqlStore, Store};
use std::process::Command;

/// Payments (one per call) and bound calls the tables hold: past where a list of a few hundred
/// calls stops being worth reading through the index.
const ROWS: usize = 40_000;

fn psql_value(url: &str, sql: &str) -> String {
    let out = Command::new("psql").args([url, "-At", "-q", "-c", sql]).output().expect("psql runs");
    assert!(out.status.success(), "psql failed: {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// (sequential scans, index scans) of `table` so far.
fn scans(url: &str, table: &str) -> (u64, u64) {
    let row = psql_value(
        url,
        &format!("SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = '{table}'"),
    );
    let (seq, idx) = row.split_once('|').expect("two counters");
    (seq.parse().unwrap(), idx.parse().unwrap())
}

/// Waits until PostgreSQL's counters for `table` stop moving (the closed store's backends have
/// reported), then answers them.
fn settled_scans(url: &str, table: &str) -> (u64, u64) {
    let mut last = scans(url, table);
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let now = scans(url, table);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// (call, its clinic) for every `step`-th call from the `first`-th, as the table numbers them.
fn every(url: &str, step: usize, first: usize) -> Vec<(String, String)> {
    let rows = psql_value(
        url,
        &format!(
            "SELECT call_id || '|' || clinic_id FROM calls WHERE (created_at - {EPOCH}) % {step} = {first} ORDER BY created_at"
        ),
    );
    rows.lines().map(|l| l.split_once('|').map(|(c, k)| (c.to_owned(), k.to_owned())).expect("a pair")).collect()
}

/// The first call's creation time; the `i`-th was created `i` ms later.
const EPOCH: i64 = 1_700_000_000_000;

#[tokio::test]
async fn reads_by_hundreds_of_calls_go_through_the_indexes_on_tables_of_tens_of_thousands() {
    let db = TempDb::new();
    let store = SqlStore::connect(&db.url).await.expect("the store opens and migrates");
    store.close().await;
    // Every call bound and with a payment waiting, as in a Monday morning's rooms; then each
    // payment updated once (its intent attached), which leaves a dead row per payment.
    psql_value(
        &db.url,
        &format!(
            "INSERT INTO calls (call_id, clinic_id, created_at) \
               SELECT 'call_' || md5(i::text), 'clinic_' || (i % 50), {EPOCH} + i \
               FROM generate_series(0, {last}) i; \
             INSERT INTO payments (id, call_id, clinic_id, client_ref, requested_by_id, requested_by_name, amount, \
               currency, description, status, version, stripe_account, created_at, updated_at) \
               SELECT 'pay_' || md5(i::text), 'call_' || md5(i::text), 'clinic_' || (i % 50), 'ref_' || i, \
               'doc_' || (i % 50), 'Dr Who', 4200, 'aud', 'Consultation', 'requested', 1, 'acct_' || (i % 50), \
               {EPOCH} + i, {EPOCH} + i FROM generate_series(0, {last}) i; \
             UPDATE payments SET payment_intent_id = 'pi_' || md5(id), client_secret = 'pi_' || md5(id) || '_secret', \
               version = 2; \
             ANALYZE calls; ANALYZE payments",
            last = ROWS - 1
        ),
    );
    // Spread over the table, as a node's calls are (call ids as random as real ones: PostgreSQL
    // weighs a list against the table's width and order).
    let asked: Vec<String> = every(&db.url, ROWS / 1_000, 7).into_iter().map(|(call, _)| call).collect();
    assert_eq!(asked.len(), 1_000);
    // Joins to calls bound before, all at once: the binder takes them in batches of hundreds and
    // reads each batch's clinics back.
    let joining: Vec<(String, String)> = every(&db.url, 61, 3).into_iter().take(600).collect();
    assert_eq!(joining.len(), 600);
    // Counted from here: the lists above were read by scanning `calls`.
    let before = (settled_scans(&db.url, "payments"), settled_scans(&db.url, "calls"));

    let store = SqlStore::connect(&db.url).await.expect("the store opens again");
    let payments = store.payments_for_calls(&asked).await.expect("the payments are read");
    assert_eq!(payments.len(), asked.len(), "one payment for each call asked");
    let joins = joining.iter().map(|(call, _)| store.bind_call(call, "clinic_elsewhere"));
    for ((call, clinic), bound) in joining.iter().zip(futures_util::future::join_all(joins).await) {
        assert_eq!(&bound.expect("bound"), clinic, "{call} keeps its clinic");
    }
    store.close().await;

    let after = (settled_scans(&db.url, "payments"), settled_scans(&db.url, "calls"));
    let grew = |a: (u64, u64), b: (u64, u64)| (b.0 - a.0, b.1 - a.1);
    let (payments_seq, payments_idx) = grew(before.0, after.0);
    let (calls_seq, calls_idx) = grew(before.1, after.1);
    assert_eq!(
        (payments_seq, calls_seq),
        (0, 0),
        "whole-table scans of (payments, calls): the payments of 1,000 calls, or 600 joins' calls read back"
    );
    assert!(payments_idx > 0 && calls_idx > 0, "both read through an index: {payments_idx}, {calls_idx} index scans");
}

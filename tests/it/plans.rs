//! How PostgreSQL carries out the store's reads by many calls at once, on tables the size a busy
//! deployment has. The verify sweep, the repairs after a reconnection, the binder and the
//! batched welcome read each ask for dozens or hundreds of calls in one statement. Without
//! statistics on the tables (autovacuum off, as on this machine, or a table grown faster than
//! autovacuum analyses it) PostgreSQL guessed that each call has hundreds of payments and read
//! `payments` whole for every such statement, often in parallel, forking workers each time; a
//! long list did the same even with statistics. In a 70,000-socket rolling restart that was a
//! quarter of the machine's time (README, "A national service's Monday morning"). Each read
//! must go through its index instead, whatever the number of calls and whether or not the
//! tables have been analysed.
//!
//! What PostgreSQL did is read from its own counters (`pg_stat_user_tables`), which a backend
//! reports at the end of a transaction (at most once a second) and when it exits: they are
//! read once every other backend of the database has gone.

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

/// [`scans`] once every other client backend of the database has exited, having reported its
/// counters (PostgreSQL 15 and later write them before the backend leaves `pg_stat_activity`).
fn settled_scans(url: &str, table: &str) -> (u64, u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let others = psql_value(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type IN ('client backend', 'parallel worker')",
        );
        if others == "0" {
            return scans(url, table);
        }
        assert!(std::time::Instant::now() < deadline, "{others} backends still connected after 30 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
    // payment updated once (its intent attached), which leaves a dead row per payment. Not
    // analysed yet.
    psql_value(
        &db.url,
        &format!(
            "INSERT INTO clinics (id, org_id, name, updated_at) \
               SELECT 'clinic_' || i, 'org_1', 'Clinic ' || i, {EPOCH} FROM generate_series(0, 49) i; \
             INSERT INTO calls (call_id, clinic_id, created_at) \
               SELECT 'call_' || md5(i::text), 'clinic_' || (i % 50), {EPOCH} + i \
               FROM generate_series(0, {last}) i; \
             INSERT INTO payments (id, call_id, clinic_id, client_ref, requested_by_id, requested_by_name, amount, \
               currency, description, status, version, stripe_account, created_at, updated_at) \
               SELECT 'pay_' || md5(i::text), 'call_' || md5(i::text), 'clinic_' || (i % 50), 'ref_' || i, \
               'doc_' || (i % 50), 'Dr Who', 4200, 'aud', 'Consultation', 'requested', 1, 'acct_' || (i % 50), \
               {EPOCH} + i, {EPOCH} + i FROM generate_series(0, {last}) i; \
             INSERT INTO payments (id, call_id, clinic_id, client_ref, requested_by_id, requested_by_name, amount, \
               currency, description, status, version, stripe_account, created_at, updated_at) \
               SELECT 'pay_many_' || i, 'call_many', 'clinic_1', 'ref_many_' || i, 'doc_1', 'Dr Who', 100 * i, 'aud', \
               'Consultation', 'requested', 1, 'acct_1', {EPOCH} + 10 * ((i * 2) % 3), {EPOCH} FROM generate_series(0, 2) i; \
             UPDATE payments SET payment_intent_id = 'pi_' || md5(id), client_secret = 'pi_' || md5(id) || '_secret', \
               version = 2",
            last = ROWS - 1
        ),
    );
    let whole_table_scans = reads_by_many_calls(&db.url).await;
    psql_value(&db.url, "ANALYZE calls; ANALYZE payments");
    let analysed = reads_by_many_calls(&db.url).await;
    assert_eq!(
        (whole_table_scans, analysed),
        ([0, 0], [0, 0]),
        "whole-table scans of [payments, calls], before and after ANALYZE: the payments of 1,000 calls, \
         600 joins' calls read back, 300 welcomes, or the sweep's recent changes"
    );
}

/// Runs each read by many calls through a store of its own, and answers how many times
/// PostgreSQL scanned [`payments`, `calls`] whole meanwhile (after checking it used their
/// indexes, and that every read answered what the tables hold).
async fn reads_by_many_calls(url: &str) -> [u64; 2] {
    // Spread over the table, as a node's calls are (call ids as random as real ones: PostgreSQL
    // weighs a list against the table's width and order).
    let asked: Vec<String> = every(url, ROWS / 1_000, 7).into_iter().map(|(call, _)| call).collect();
    assert_eq!(asked.len(), 1_000);
    // Joins to calls bound before, all at once: the binder takes them in batches of hundreds and
    // reads each batch's clinics back.
    let joining: Vec<(String, String)> = every(url, 61, 3).into_iter().take(600).collect();
    assert_eq!(joining.len(), 600);
    // Welcomes to 300 calls at once: read in batches of up to 256.
    let welcomed: Vec<(String, String)> = every(url, 131, 5).into_iter().take(300).collect();
    assert_eq!(welcomed.len(), 300);
    // Counted from here: the lists above were read by scanning `calls`.
    let before = [settled_scans(url, "payments"), settled_scans(url, "calls")];

    let store = SqlStore::connect(url).await.expect("the store opens");
    let payments = store.payments_for_calls(&asked).await.expect("the payments are read");
    let mut read: Vec<&str> = payments.iter().map(|p| p.call_id.as_str()).collect();
    read.sort_unstable();
    let mut expected: Vec<&str> = asked.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(read, expected, "one payment for each call asked");
    let joins = joining.iter().map(|(call, _)| store.bind_call(call, "clinic_elsewhere"));
    for ((call, clinic), bound) in joining.iter().zip(futures_util::future::join_all(joins).await) {
        assert_eq!(&bound.expect("bound"), clinic, "{call} keeps its clinic");
    }
    let welcomes = welcomed.iter().map(|(call, clinic)| store.call_snapshot(call, clinic));
    for ((call, clinic), snapshot) in welcomed.iter().zip(futures_util::future::join_all(welcomes).await) {
        let snapshot = snapshot.expect("the welcome is read");
        let ids: Vec<&str> = snapshot.payments.iter().map(|p| p.call_id.as_str()).collect();
        assert_eq!(ids, [call.as_str()], "the welcome of {call} holds its one payment");
        assert_eq!(snapshot.clinic.map(|c| c.id), Some(clinic.clone()), "the welcome of {call} holds its clinic");
    }
    // A call asked twice is read once, a call with no payment adds nothing, and a call's
    // payments come oldest first (`call_many`'s were created in the order 0, 2, 1).
    let twice = ["call_many".to_owned(), "call_without_payments".to_owned(), "call_many".to_owned()];
    let read = store.payments_for_calls(&twice).await.expect("read");
    assert_eq!(read.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["pay_many_0", "pay_many_2", "pay_many_1"]);
    // The sweep's read of the payments changed lately, which every instance makes every few
    // seconds: the last 100 changed, oldest change first, at most a page, of the size the sweep
    // asks for (500 passed here while the sweep's 5,000 scanned the whole table: without
    // statistics PostgreSQL guesses a third of the rows match, and reading 5,000 of those in
    // index order cost more, by its guess, than scanning and sorting).
    // PostgreSQL plans a statement prepared on a connection afresh for its first five runs, then
    // may keep a plan made without the values: ten runs, as a sweep makes in under a minute.
    let since = EPOCH + ROWS as i64 - 100;
    let mut all = Vec::new();
    for _ in 0..10 {
        all = store.payments_changed_since(since, "", callpay::payments::verify::CHANGES_PAGE).await.expect("read");
        assert_eq!(all.len(), 100, "the payments changed since {since}");
        assert!(all.windows(2).all(|w| (w[0].updated_at, &w[0].id) < (w[1].updated_at, &w[1].id)), "in order");
    }
    // Page after page, each going on after the last one's last change: together, all of them.
    let first = store.payments_changed_since(since, "", 30).await.expect("read");
    assert_eq!(first.len(), 30, "a page");
    let last = first.last().unwrap();
    let rest = store.payments_changed_since(last.updated_at, &last.id, 500).await.expect("read");
    let paged: Vec<&str> = first.iter().chain(&rest).map(|p| p.id.as_str()).collect();
    assert_eq!(paged, all.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), "no change twice, none left out");
    // Four changes in the same millisecond (the first call's payment and `call_many`'s three),
    // two a page: the second page goes on after the first's last by id.
    let a = store.payments_changed_since(EPOCH, "", 2).await.expect("read");
    let b = store.payments_changed_since(EPOCH, &a[1].id, 2).await.expect("read");
    let tied: Vec<(i64, &str)> = a.iter().chain(&b).map(|p| (p.updated_at, p.id.as_str())).collect();
    // (Distinct rather than ordered here: the database's collation orders ids, not Rust's.)
    let ids: std::collections::BTreeSet<&str> = tied.iter().map(|(_, id)| *id).collect();
    assert!(tied.iter().all(|(at, _)| *at == EPOCH) && ids.len() == 4, "{tied:?}");
    store.close().await;

    let after = [settled_scans(url, "payments"), settled_scans(url, "calls")];
    for (table, (b, a)) in ["payments", "calls"].iter().zip(before.iter().zip(&after)) {
        assert!(a.1 > b.1, "{table} was read through an index");
    }
    [after[0].0 - before[0].0, after[1].0 - before[1].0]
}

//! callpay's own receipt e-mail: sent to a real SMTP server the test starts on loopback
//! (Python's aiosmtpd, which decodes what it received with Python's e-mail package), in the
//! patient's language with the subject MIME-encoded; retried with backoff while the server is
//! down; kept across a restart (an outbox row); never sent for a clinic that did not ask.

use crate::helpers::*;
use callpay::store::{ReceiptJob, Store};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// aiosmtpd on a loopback port, and the messages it prints.
struct SmtpSink {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl SmtpSink {
    /// Starts the sink on `port`; fails the test, saying how to install it, if aiosmtpd is missing.
    async fn start(port: u16) -> Self {
        Self::start_stalling(port, 0).await
    }

    /// A sink whose first session waits `stall_ms` before answering its recipient (a mail
    /// server that hangs mid-session); later sessions are answered at once.
    async fn start_stalling(port: u16, stall_ms: u64) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(stall_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (the SMTP test server is Python's aiosmtpd)");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line()).await.expect("the SMTP sink starts").unwrap();
        let first: Value = serde_json::from_str(first.as_deref().unwrap_or("{}")).unwrap_or(Value::Null);
        assert!(
            first["ready"] == port,
            "the SMTP test server did not start: {first}. Install it with `pip install aiosmtpd` (scripts/test does)"
        );
        Self { child, stdin, lines }
    }

    /// The next message received, decoded.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("a message within 20 s")
            .unwrap()
            .expect("the sink is running");
        serde_json::from_str(&line).unwrap()
    }

    /// How many messages the sink took in all, by its own count, and those of them not read
    /// with [`SmtpSink::next`] yet. The sink prints the count after every message it took
    /// before, so nothing still on its way is missed.
    async fn count(&mut self) -> (u64, Vec<Value>) {
        self.stdin.write_all(b"count\n").await.unwrap();
        self.stdin.flush().await.unwrap();
        let mut unread = Vec::new();
        loop {
            let m = self.next().await;
            match m["received"].as_u64() {
                Some(n) => return (n, unread),
                None => unread.push(m),
            }
        }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Receipts over SMTP to `port`, fast retries.
fn smtp_to(port: u16) -> impl FnOnce(&mut callpay::config::Config) {
    move |c| {
        c.receipts.smtp_url = Some(callpay::config::Secret::new(format!("smtp://127.0.0.1:{port}")));
        c.receipts.from = "receipts@harbour.example".into();
        c.receipts.retry_base_ms = 200;
        c.receipts.retry_max_ms = 800;
        c.receipts.poll_ms = 50;
        c.receipts.timeout_ms = 3_000;
    }
}

impl TestHub {
    /// The clinic admin turns callpay's own receipts on (or off).
    async fn own_receipts(&self, on: bool) -> (u16, Value) {
        let url = format!("{}/v1/clinics/{}/receipts", self.info.hub_url, callpay::demo::DEMO_CLINIC);
        let auth = format!("Bearer {}", self.info.clinic_admin_token);
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let (s, v, _) = self.http.send("PUT", &url, &headers, json!({"enabled": on}).to_string()).await;
        (s, v)
    }

    async fn receipt_row(&self, payment_id: &str) -> Option<ReceiptJob> {
        self.state.store.receipt(payment_id).await.unwrap()
    }
}

/// The clinician requests, the patient (in `lang`) pays; answers the payment id once the
/// clinician's panel has the confirmation.
async fn paid(hub: &TestHub, lang: &str, amount: i64, description: &str) -> String {
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("r1", amount, description).await;
    let p = pat.until("payment.requested").await["payment"].clone();
    let pid = p["payment_id"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/calls/{}/payments/{pid}/language", hub.info.hub_url, hub.info.call_id);
    let auth = format!("Bearer {}", hub.info.patient_token);
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    assert_eq!(hub.http.send("PUT", &url, &headers, json!({"lang": lang}).to_string()).await.0, 204);
    let (s, _) = pay_like_stripe_js(hub, &p, "4242424242424242", "sam@example.com").await;
    assert_eq!(s, 200);
    doc.until("payment.confirmed").await;
    pid
}

#[tokio::test]
async fn the_receipt_reaches_a_real_smtp_server_in_bengali_with_its_subject_encoded() {
    let port = crate::ports::reserve();
    let mut sink = SmtpSink::start(port).await;
    let hub = TestHub::start_with(smtp_to(port)).await;
    let (s, clinic) = hub.own_receipts(true).await;
    assert_eq!((s, clinic["own_receipts"].as_bool()), (200, Some(true)), "{clinic}");
    let pid = paid(&hub, "bn", 5000, "Follow-up consultation").await;

    let m = sink.next().await;
    assert_eq!(m["mail_from"], "receipts@harbour.example");
    assert_eq!(m["rcpt_tos"], json!(["sam@example.com"]));
    assert_eq!(m["from"], "Harbour Clinic <receipts@harbour.example>");
    assert_eq!(m["to"], "sam@example.com");
    // On the wire every header is ASCII, the Bengali subject an RFC 2047 encoded word...
    let raw = m["raw_headers"].as_str().unwrap();
    assert!(raw.is_ascii(), "{raw}");
    let subject_line = raw.lines().find(|l| l.starts_with("Subject:")).expect("a Subject header");
    assert!(subject_line.contains("=?utf-8?"), "MIME-encoded: {subject_line}");
    // ...which Python decodes to the Bengali text, the amount in Bengali digits.
    assert_eq!(m["subject"], "Harbour Clinic থেকে আপনার পেমেন্টের রসিদ: ৫০.০০ AUD");
    assert_eq!((m["content_type"].as_str(), m["charset"].as_str()), (Some("text/plain"), Some("utf-8")));
    let body = m["body"].as_str().unwrap();
    for part in [
        "Harbour Clinic-কে পেমেন্ট করার জন্য ধন্যবাদ।",
        "পরিমাণ: ৫০.০০ AUD",
        "কিসের জন্য: Follow-up consultation",
        "৪২৪২",
        "pi_",
    ] {
        assert!(body.contains(part), "{part} in {body}");
    }
    let row = eventually(async || hub.receipt_row(&pid).await.filter(|r| r.status == "sent")).await;
    assert_eq!(row.attempts, 1);
    let history = hub.state.store.audit_for_target(callpay::demo::DEMO_CLINIC, &pid, 50).await.unwrap();
    assert!(history.iter().any(|r| r.action == "payment.receipt_sent"), "{history:?}");
    assert!(hub.mailbox.messages().is_empty(), "the configured SMTP server took it, not the demo mailbox");
    sink.stop().await;
}

#[tokio::test]
async fn an_english_receipt_over_smtp() {
    let port = crate::ports::reserve();
    let mut sink = SmtpSink::start(port).await;
    let hub = TestHub::start_with(smtp_to(port)).await;
    assert_eq!(hub.own_receipts(true).await.0, 200);
    paid(&hub, "en", 12345, "Specialist review").await;
    let m = sink.next().await;
    assert_eq!(m["subject"], "Your payment receipt from Harbour Clinic: 123.45 AUD");
    let body = m["body"].as_str().unwrap();
    for part in ["Amount: 123.45 AUD", "For: Specialist review", "Visa ending 4242", "also sends its own receipt"] {
        assert!(body.contains(part), "{part} in {body}");
    }
    sink.stop().await;
}

#[tokio::test]
async fn a_receipt_is_retried_with_backoff_until_the_server_answers_and_never_holds_up_the_confirmation() {
    const BASE_MS: i64 = 100_000;
    const SLACK_MS: i64 = 15_000;
    let dir = std::env::temp_dir().join(format!("callpay-receipts-{}", callpay::ids::random_id()));
    let db_url = format!("sqlite://{}", dir.join("callpay.db").display());
    let port = crate::ports::reserve();
    // Nothing listens yet: every attempt fails to connect, at once. Waits of a minute and more,
    // so no retry comes on its own during the test: each is made due by the test, and what is
    // checked is the schedule the hub stored, not how long anything took.
    let hub = TestHub::start_in(&dir, |c| {
        smtp_to(port)(c);
        c.receipts.retry_base_ms = BASE_MS as u64;
        c.receipts.retry_max_ms = 10 * BASE_MS as u64;
    })
    .await;
    assert_eq!(hub.own_receipts(true).await.0, 200);
    let started = std::time::Instant::now();
    let before_first = callpay::store::now_ms();
    let pid = paid(&hub, "en", 5000, "Consult").await;
    assert!(started.elapsed() < Duration::from_secs(8), "the confirmation did not wait on the mail server");
    // A row waiting for its next attempt, as opposed to one claimed by an attempt under way:
    // a claim's lease ends within 2 x 3 s + 5 s, a retry's wait is at least 0.8 x BASE_MS. With
    // retries made at once, no row ever waits and this is never reached.
    let waiting_after = async |attempts: i64| {
        let row = eventually(async || {
            hub.receipt_row(&pid).await.filter(|r| {
                r.attempts == attempts && r.status == "pending" && r.next_attempt_at > callpay::store::now_ms() + 30_000
            })
        })
        .await;
        (row, callpay::store::now_ms())
    };
    let (first, after_first) = waiting_after(1).await;
    assert!(first.last_error.is_some(), "{first:?}");
    let before_second = callpay::store::now_ms();
    make_due_now(&db_url, &pid).await;
    let (second, after_second) = waiting_after(2).await;
    // Each wait is known to within when its attempt failed, between `before_*` and `after_*`
    // (SLACK covers that span on a busy machine): the first about BASE_MS, the second doubled,
    // each ±20 %. The windows do not overlap, so equal or immediate waits fail here.
    let first_wait = (first.next_attempt_at - after_first)..=(first.next_attempt_at - before_first);
    let second_wait = (second.next_attempt_at - after_second)..=(second.next_attempt_at - before_second);
    let within = |wait: &std::ops::RangeInclusive<i64>, expected: i64| {
        *wait.start() >= expected * 8 / 10 - SLACK_MS && *wait.end() <= expected * 12 / 10 + SLACK_MS
    };
    assert!(within(&first_wait, BASE_MS), "about retry_base_ms before the second attempt: {first_wait:?}");
    assert!(within(&second_wait, 2 * BASE_MS), "twice that before the third: {first_wait:?} then {second_wait:?}");
    // The server comes up, the wait ends: the receipt goes.
    let mut sink = SmtpSink::start(port).await;
    make_due_now(&db_url, &pid).await;
    let m = sink.next().await;
    assert!(m["subject"].as_str().unwrap().contains("50.00 AUD"), "{m}");
    let row = eventually(async || hub.receipt_row(&pid).await.filter(|r| r.status == "sent")).await;
    assert_eq!(row.attempts, 3, "two failed attempts, then sent: {row:?}");
    sink.stop().await;
    hub.state.shutdown.cancel();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_queued_receipt_is_sent_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("callpay-receipts-{}", callpay::ids::random_id()));
    let port = crate::ports::reserve();
    let first = TestHub::start_in(&dir, |c| {
        smtp_to(port)(c);
        // Long waits: this hub stops before its second attempt.
        c.receipts.retry_base_ms = 600_000;
    })
    .await;
    assert_eq!(first.own_receipts(true).await.0, 200);
    let pid = paid(&first, "en", 5000, "Consult").await;
    eventually(async || first.receipt_row(&pid).await.filter(|r| r.attempts == 1 && r.status == "pending")).await;
    first.state.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new process on the same database, the mail server up, sends what the first left due
    // (its next attempt is moved to now here, as if the wait had passed).
    let mut sink = SmtpSink::start(port).await;
    make_due_now(&format!("sqlite://{}", dir.join("callpay.db").display()), &pid).await;
    let second = TestHub::start_in(&dir, smtp_to(port)).await;
    let m = sink.next().await;
    assert!(m["subject"].as_str().unwrap().contains("Harbour Clinic"), "{m}");
    let row = eventually(async || second.receipt_row(&pid).await.filter(|r| r.status == "sent")).await;
    assert_eq!(row.attempts, 2, "one attempt before the restart, one after: {row:?}");
    sink.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Makes a pending receipt due now, as the end of its wait would: its next attempt is moved to
/// the past in the database itself (the store records outcomes only for the attempt that
/// claimed a receipt, and claiming one would count an attempt).
async fn make_due_now(db_url: &str, payment_id: &str) {
    use std::str::FromStr;
    // The hub writes to the same file meanwhile: the test's write waits for any write of the
    // hub's in flight as long as the test waits for anything (sqlx's default gives up after
    // 5 s with "database is locked"; a CI failure of this file's retry test came at 5.4 s).
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(db_url).unwrap().busy_timeout(WAIT);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let moved =
        sqlx::query("UPDATE receipt_outbox SET next_attempt_at = 0 WHERE payment_id = $1 AND status = 'pending'")
            .bind(payment_id)
            .execute(&pool)
            .await
            .unwrap();
    assert_eq!(moved.rows_affected(), 1, "the receipt is still pending");
    pool.close().await;
}

#[tokio::test]
async fn no_receipt_of_callpays_own_unless_the_clinic_asks() {
    let hub = TestHub::start_with(|c| c.receipts.poll_ms = 50).await;
    let pid = paid(&hub, "en", 5000, "Consult").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hub.receipt_row(&pid).await.is_none(), "nothing queued");
    assert!(hub.mailbox.messages().is_empty());
    // Turned on, the next payment gets one (the demo's in-process mailbox takes it).
    assert_eq!(hub.own_receipts(true).await.0, 200);
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("r2", 700, "Second").await;
    let p = pat.until_where("payment.requested", |f| f["payment"]["client_ref"] == "r2").await["payment"].clone();
    pay_like_stripe_js(&hub, &p, "4242424242424242", "sam@example.com").await;
    let mail = eventually(async || hub.mailbox.messages().into_iter().next()).await.1;
    assert_eq!(mail.to, "sam@example.com");
    assert!(mail.subject.contains("7.00 AUD"), "{}", mail.subject);
    // Turned off again.
    let (s, off) = hub.own_receipts(false).await;
    assert_eq!((s, off["own_receipts"].as_bool()), (200, Some(false)));
}

#[tokio::test]
async fn a_send_that_fails_is_tried_again_and_recorded_once_sent() {
    let hub = TestHub::start_with(|c| {
        c.receipts.poll_ms = 50;
        c.receipts.retry_base_ms = 100;
        c.receipts.retry_max_ms = 200;
    })
    .await;
    assert_eq!(hub.own_receipts(true).await.0, 200);
    hub.mailbox.fail_next(2);
    let pid = paid(&hub, "bn", 5000, "Consult").await;
    let row = eventually(async || hub.receipt_row(&pid).await.filter(|r| r.status == "sent")).await;
    assert_eq!(row.attempts, 3, "two failures, then sent: {row:?}");
    assert_eq!(hub.mailbox.attempts(), 3);
    let messages = hub.mailbox.messages();
    assert_eq!(messages.len(), 1, "one receipt");
    assert!(messages[0].1.subject.contains("৫০.০০ AUD"), "{}", messages[0].1.subject);
}

#[tokio::test]
async fn a_receipt_given_up_after_its_attempts_is_in_the_audit_log() {
    let hub = TestHub::start_with(|c| {
        c.receipts.poll_ms = 50;
        c.receipts.retry_base_ms = 50;
        c.receipts.retry_max_ms = 50;
        c.receipts.max_attempts = 3;
    })
    .await;
    assert_eq!(hub.own_receipts(true).await.0, 200);
    hub.mailbox.fail_next(100);
    let pid = paid(&hub, "en", 5000, "Consult").await;
    let row = eventually(async || hub.receipt_row(&pid).await.filter(|r| r.status == "failed")).await;
    assert_eq!(row.attempts, 3, "{row:?}");
    assert!(row.last_error.as_deref().unwrap().starts_with("gave up after 3 attempts"), "{row:?}");
    let history = hub.state.store.audit_for_target(callpay::demo::DEMO_CLINIC, &pid, 50).await.unwrap();
    assert!(history.iter().any(|r| r.action == "payment.receipt_failed" && r.outcome == "failed"), "{history:?}");
    assert_eq!(hub.mailbox.attempts(), 3, "no attempt after giving up");
}

/// A clinic that sends its own receipts, a payment of it paid with a receipt address, and the
/// receipt queued, written straight to `store` (as a payment's success writes them). Answers
/// the payment's id.
async fn queued_receipt(store: &dyn callpay::store::Store) -> String {
    use callpay::store::{Clinic, ClinicChange, Org, Payment, Write};
    use callpay_protocol::PaymentStatus;
    let clinic = "clinic_receipts";
    store
        .commit(&[
            Write::UpsertOrg(Org { id: "org_receipts".into(), name: "Harbour Health".into() }),
            Write::UpsertClinic(Clinic {
                id: clinic.into(),
                org_id: "org_receipts".into(),
                name: "Harbour Clinic".into(),
                ..Clinic::default()
            }),
            Write::Clinic { id: clinic.into(), change: ClinicChange::SetOwnReceipts(true) },
        ])
        .await
        .unwrap();
    let now = callpay::store::now_ms();
    let payment = Payment {
        id: format!("pay_{}", callpay::ids::random_id()),
        clinic_id: clinic.into(),
        amount: 5000,
        amount_received: Some(5000),
        currency: "aud".into(),
        description: "Consult".into(),
        status: PaymentStatus::Succeeded,
        receipt_email: Some("sam@example.com".into()),
        paid_at: Some(now),
        created_at: now,
        updated_at: now,
        ..Payment::default()
    };
    store.insert_payment(&payment).await.unwrap();
    store.commit(&[Write::QueueReceipt { payment_id: payment.id.clone(), clinic_id: clinic.into() }]).await.unwrap();
    payment.id
}

/// Receipts settings for the multi-instance tests: SMTP to `port`, each send bounded at
/// `timeout_ms`, fast retries and polls.
fn receipts_to(port: u16, timeout_ms: u64) -> callpay::config::ReceiptsConfig {
    let mut cfg = callpay::config::Config::default();
    smtp_to(port)(&mut cfg);
    cfg.receipts.timeout_ms = timeout_ms;
    cfg.receipts
}

/// Receipt workers of separate instances: one pool on the database and one mailer each, as
/// separate processes have; stopped (their sends in flight finished) by [`Workers::stop`].
struct Workers {
    stop: tokio_util::sync::CancellationToken,
    running: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    /// One worker per configuration (`None`: an instance without a mail server), on `db_url`.
    async fn start(db_url: &str, configs: Vec<Option<callpay::config::ReceiptsConfig>>) -> Self {
        use callpay::mail::outbox::Outbox;
        let stop = tokio_util::sync::CancellationToken::new();
        let mut running = Vec::new();
        for cfg in configs {
            let store = std::sync::Arc::new(callpay::store::SqlStore::connect(db_url).await.unwrap());
            let mailer = cfg.as_ref().and_then(|c| callpay::mail::from_config(c).unwrap());
            let cfg = cfg.unwrap_or_else(|| callpay::config::Config::default().receipts);
            let outbox = std::sync::Arc::new(Outbox::new(store, mailer, cfg, Default::default()));
            running.push(tokio::spawn(outbox.run(stop.clone())));
        }
        Self { stop, running }
    }

    /// Stops every worker once its pass in progress (and so any send) has ended.
    async fn stop(self) {
        self.stop.cancel();
        for worker in self.running {
            tokio::time::timeout(Duration::from_secs(30), worker).await.expect("the worker stops").unwrap();
        }
    }
}

#[tokio::test]
async fn two_instances_deliver_a_receipt_exactly_once_when_the_mail_server_hangs_mid_send() {
    crate::services::ensure_services();
    let db = crate::services::TempDb::new();
    let port = crate::ports::reserve();
    // The first session hangs at its recipient for 4 s: longer than a claim's lease used to be
    // (2 x 1 s + 1 s), and a hang no per-exchange timeout may see end.
    let mut sink = SmtpSink::start_stalling(port, 4_000).await;
    let store = callpay::store::SqlStore::connect(&db.url).await.unwrap();
    let pid = queued_receipt(&store).await;
    let cfg = receipts_to(port, 1_000);
    let workers = Workers::start(&db.url, vec![Some(cfg.clone()), Some(cfg)]).await;
    let row = eventually(async || store.receipt(&pid).await.unwrap().filter(|r| r.status == "sent")).await;
    // Every send in flight ends before counting: a second copy would be in by then.
    workers.stop().await;
    let (received, messages) = sink.count().await;
    assert_eq!(received, 1, "exactly one receipt reached the mail server: {messages:?}");
    assert_eq!(messages[0]["rcpt_tos"], json!(["sam@example.com"]));
    let after = store.receipt(&pid).await.unwrap().unwrap();
    assert_eq!(after, row, "nothing changed the row once it was sent");
    assert_eq!(row.attempts, 2, "the hung attempt was ended at its bound and tried again: {row:?}");
    sink.stop().await;
    store.close().await;
}

#[tokio::test]
async fn a_stale_claims_finish_changes_nothing_on_sqlite_and_postgresql() {
    use callpay::store::ReceiptOutcome;
    let db = crate::services::TempDb::new();
    for url in ["sqlite::memory:", db.url.as_str()] {
        let store = callpay::store::SqlStore::connect(url).await.unwrap();
        let pid = queued_receipt(&store).await;
        let queued = store.receipt(&pid).await.unwrap().unwrap();
        let now = callpay::store::now_ms();
        // Attempt A's claim has lapsed (its instance stalled past the lease)...
        let a_lease = queued.next_attempt_at - 1_000;
        assert!(store.claim_receipt(&pid, queued.next_attempt_at, a_lease, "claim-a").await.unwrap(), "{url}");
        // ...so attempt B, seeing it due again, takes it over; a claim needs the row as it saw it.
        let b_lease = now + 60_000;
        assert!(!store.claim_receipt(&pid, queued.next_attempt_at, b_lease, "claim-b").await.unwrap(), "{url}");
        assert!(store.claim_receipt(&pid, a_lease, b_lease, "claim-b").await.unwrap(), "{url}");
        // A's late finish, whatever it came to, changes nothing.
        for outcome in [
            ReceiptOutcome::Sent,
            ReceiptOutcome::Failed("refused".into()),
            ReceiptOutcome::Retry { at: 0, error: "timed out".into() },
            ReceiptOutcome::Skipped("turned off".into()),
        ] {
            assert!(!store.finish_receipt(&pid, "claim-a", &outcome, now).await.unwrap(), "{url}: {outcome:?}");
        }
        let row = store.receipt(&pid).await.unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.attempts, row.next_attempt_at, row.sent_at, row.last_error.as_deref()),
            ("pending", 2, b_lease, None, None),
            "{url}: B's claim stands"
        );
        // B's finish lands, and only once: the claim ends with it.
        assert!(store.finish_receipt(&pid, "claim-b", &ReceiptOutcome::Sent, now + 1).await.unwrap(), "{url}");
        let late = ReceiptOutcome::Failed("late".into());
        assert!(!store.finish_receipt(&pid, "claim-b", &late, now + 2).await.unwrap(), "{url}: a claim finishes once");
        let row = store.receipt(&pid).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.sent_at, row.last_error), ("sent", Some(now + 1), None), "{url}");
        store.close().await;
    }
}

/// A hub instance as `callpay serve` wires one ([`callpay::app::Dependencies::from_config`]),
/// on `db_url` with its own pool and in-process bus, and receipts as `receipts` says (`None`:
/// no mail server). Stops with the test's runtime.
async fn instance(
    db_url: &str,
    sim: &stripe_sim::SimHandle,
    receipts: Option<callpay::config::ReceiptsConfig>,
) -> callpay::app::AppState {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = callpay::config::Config::default();
    config.server.listen = listener.local_addr().unwrap();
    config.auth.secret = callpay::config::Secret::new("receipts-platform-secret-0123456789abcdef");
    config.database.url = db_url.to_owned();
    callpay::demo::use_simulator(&mut config, sim, "whsec_receipts_test");
    config.receipts.poll_ms = 50;
    if let Some(receipts) = receipts {
        config.receipts = receipts;
    }
    config.validate_for_serve().unwrap();
    let node = callpay::app::node_id();
    let deps = callpay::app::Dependencies::from_config(&config, &node).await.unwrap();
    let app = callpay::server::App::build_on(listener, config, deps, node).await.unwrap();
    let state = app.state.clone();
    tokio::spawn(app.run_until_stopped());
    state
}

#[tokio::test]
async fn an_instance_without_a_mail_server_leaves_receipts_to_one_that_has_one() {
    crate::services::ensure_services();
    let db = crate::services::TempDb::new();
    let sim = stripe_sim::spawn(stripe_sim::SimConfig::for_tests()).await.unwrap();
    let port = crate::ports::reserve();
    let mut sink = SmtpSink::start(port).await;
    let store = callpay::store::SqlStore::connect(&db.url).await.unwrap();
    let pid = queued_receipt(&store).await;
    // The instance without a mail server starts first and is asked for a pass outright: it
    // takes nothing, so the receipt stays pending and untried for one that can send it.
    let bare = instance(&db.url, &sim, None).await;
    assert!(!bare.outbox.can_send());
    assert_eq!(bare.outbox.pass().await.unwrap(), 0, "no receipt taken without a mail server");
    let row = store.receipt(&pid).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 0), "{row:?}");
    let mailing = instance(&db.url, &sim, Some(receipts_to(port, 3_000))).await;
    let m = sink.next().await;
    assert_eq!(m["rcpt_tos"], json!(["sam@example.com"]));
    assert!(m["subject"].as_str().unwrap().contains("50.00 AUD"), "{m}");
    let row = eventually(async || store.receipt(&pid).await.unwrap().filter(|r| r.status == "sent")).await;
    assert_eq!(row.attempts, 1, "only the instance with a mail server tried it: {row:?}");
    bare.shutdown.cancel();
    mailing.shutdown.cancel();
    sink.stop().await;
    store.close().await;
}

//! Database outages: what the hub does with each kind of request while its store fails, and
//! that nothing is lost once it is back (a webhook answered 503 is retried by Stripe).

use crate::helpers::*;
use async_trait::async_trait;
use callpay::store::*;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A store that fails every call while `down` is set, and otherwise passes through.
struct FlakyStore {
    inner: Arc<dyn Store>,
    down: Arc<AtomicBool>,
    /// The next N batches that change a clinic fail (a database error mid-change).
    fail_clinic_writes: Arc<AtomicU32>,
    spare_bind: Arc<AtomicBool>,
    /// Milliseconds every binding of a call takes (a store slow to admit joins).
    slow_binds: Arc<std::sync::atomic::AtomicU64>,
}

impl FlakyStore {
    fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) { Err(StoreError::Database(sqlx::Error::PoolTimedOut)) } else { Ok(()) }
    }
}

fn outage() -> StoreError {
    StoreError::Database(sqlx::Error::PoolTimedOut)
}

/// Writes the whole impl, so `#[async_trait]` sees the expanded methods.
macro_rules! pass {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        #[async_trait]
        impl Store for FlakyStore {
            $(async fn $name(&self, $($arg: $ty),*) -> StoreResult<$ret> { self.check()?; self.inner.$name($($arg),*).await })*

            /// Spared while `spare_bind` is set, to reach the later failure of building `welcome`.
            async fn bind_call(&self, call: &str, clinic: &str) -> StoreResult<String> {
                if !self.spare_bind.load(Ordering::SeqCst) {
                    self.check()?;
                }
                let slow = self.slow_binds.load(Ordering::SeqCst);
                if slow > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
                }
                self.inner.bind_call(call, clinic).await
            }

            async fn commit(&self, writes: &[Write]) -> StoreResult<Committed> {
                self.check()?;
                let touches_clinic = writes.iter().any(|w| matches!(w, Write::Clinic { .. }));
                if touches_clinic && self.fail_clinic_writes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    return Err(outage());
                }
                self.inner.commit(writes).await
            }
        }
    };
}

pass! {
        ping() -> ();
        clinic(id: &str) -> Option<Clinic>;
        clinics_by_account(a: &str) -> Vec<Clinic>;
        insert_payment(p: &Payment) -> Inserted;
        payment(id: &str) -> Option<Payment>;
        payment_by_intent(pi: &str) -> Option<Payment>;
        payments_for_call(call: &str) -> Vec<Payment>;
        webhook_seen(id: &str) -> bool;
        clinics(ids: &[String]) -> Vec<Clinic>;
        payments_for_calls(ids: &[String]) -> Vec<Payment>;
        org(id: &str) -> Option<Org>;
        clinics_for_org(o: &str) -> Vec<Clinic>;
        enablement(id: &str) -> Option<Enablement>;
        enablements(o: Option<&str>, s: Option<&str>) -> Vec<Enablement>;
        insert_oauth_state(s: &OAuthState, m: usize) -> bool;
        take_oauth_state(s: &str) -> StateTaken;
        audit_for_clinic(c: &str, l: i64, b: Option<(i64, String)>, m: bool) -> Vec<AuditEntry>;
        payment_records(c: PaymentScope<'_>, f: &PaymentFilter, l: i64, b: Option<(i64, String)>) -> Vec<Payment>;
        audit_for_target(c: &str, t: &str, l: i64) -> Vec<AuditEntry>;
        refunds_for_payment(p: &str) -> Vec<Refund>;
        payments_created_between(c: &[String], f: i64, t: i64) -> Vec<Payment>;
        refund_by_key(p: &str, k: &str) -> Option<Refund>;
        unsent_refunds(b: i64, l: i64) -> Vec<Refund>;
        payments_changed_since(s: i64, a: &str, l: i64) -> Vec<Payment>;
        set_payment_lang(p: &str, l: &str) -> ();
        payment_lang(p: &str) -> Option<String>;
        due_receipts(n: i64, l: i64) -> Vec<ReceiptJob>;
        claim_receipt(p: &str, s: i64, l: i64, c: &str) -> bool;
        finish_receipt(p: &str, c: &str, o: &ReceiptOutcome, a: i64) -> bool;
        receipt(p: &str) -> Option<ReceiptJob>;
}

async fn flaky_hub() -> (TestHub, Arc<AtomicBool>) {
    let (hub, down, _, _) = flaky_hub_with(false).await;
    (hub, down)
}

async fn flaky_hub_with_clinic_faults() -> (TestHub, Arc<AtomicBool>, Arc<AtomicU32>) {
    let (hub, down, fail, _) = flaky_hub_with(false).await;
    (hub, down, fail)
}

async fn flaky_hub_with(spare: bool) -> (TestHub, Arc<AtomicBool>, Arc<AtomicU32>, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let fail = Arc::new(AtomicU32::new(0));
    let spare_bind = Arc::new(AtomicBool::new(spare));
    let (flag, fail_clinic_writes, spare) = (down.clone(), fail.clone(), spare_bind.clone());
    let hub = TestHub::start_wrapped(
        |_| {},
        move |inner| {
            Arc::new(FlakyStore {
                inner,
                down: flag,
                fail_clinic_writes,
                spare_bind: spare,
                slow_binds: Arc::default(),
            })
        },
    )
    .await;
    (hub, down, fail, spare_bind)
}

#[tokio::test]
async fn joining_while_the_store_is_down_gets_503_before_the_upgrade() {
    let (hub, down) = flaky_hub().await;
    down.store(true, Ordering::SeqCst);
    // The call's clinic cannot be checked, so nobody is admitted: 503, retry shortly.
    match open_ws(&hub.ws_url(&hub.info.call_id, &hub.info.clinician_token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let (status, _, _) = hub.http.send("GET", &format!("{}/readyz", hub.info.hub_url), &[], String::new()).await;
    assert_eq!(status, 503, "not ready while the store is down");
    assert_eq!((hub.state.metrics.connections_opened.get(), hub.state.hub.rooms.connections()), (0, 0));
    down.store(false, Ordering::SeqCst);
    let doc = hub.clinician().await;
    assert_eq!(doc.welcome["type"], "welcome");
}

#[tokio::test]
async fn a_store_failure_while_building_welcome_gets_an_error_and_a_clean_close() {
    let (hub, down, _, _) = flaky_hub_with(true).await;
    down.store(true, Ordering::SeqCst);
    let (mut ws, _) = open_ws(&hub.ws_url(&hub.info.call_id, &hub.info.clinician_token)).await.unwrap();
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    let frame: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!((frame["type"].as_str(), frame["code"].as_str()), (Some("error"), Some("internal")));
    match ws.next().await.unwrap().unwrap() {
        tokio_tungstenite::tungstenite::Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1011),
        other => panic!("expected a close, got {other:?}"),
    }
    // The refused connection is counted as closed too, and left nothing behind in the room.
    let m = &hub.state.metrics;
    eventually(async || (m.connections_closed.get() == 1).then_some(())).await;
    assert_eq!((m.connections_opened.get(), hub.state.hub.rooms.connections()), (1, 0));
}

#[tokio::test]
async fn a_request_during_an_outage_charges_nothing_and_can_be_retried() {
    let (hub, down) = flaky_hub().await;
    let mut doc = hub.clinician().await;
    down.store(true, Ordering::SeqCst);
    doc.request("o1", 5000, "Consult").await;
    let err = doc.until("error").await;
    assert_eq!((err["code"].as_str(), err["ref"].as_str()), (Some("internal"), Some("o1")));
    let intents = hub.sim.sim.with_world(|w| w.accounts.values().map(|a| a.payment_intents.len()).sum::<usize>());
    assert_eq!(intents, 0, "nothing reached Stripe");
    down.store(false, Ordering::SeqCst);
    doc.request("o1", 5000, "Consult").await;
    doc.until("payment.requested").await;
}

#[tokio::test]
async fn a_webhook_refused_during_an_outage_is_retried_by_stripe_and_applied() {
    let (hub, down) = flaky_hub().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("w1", 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    down.store(true, Ordering::SeqCst);
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200, "the card is charged on Stripe whatever our store does");
    // Wait until Stripe has seen a 503 from us, then bring the store back.
    let sim = hub.sim.sim.clone();
    eventually(async || {
        sim.with_world(|w| {
            w.deliveries.iter().any(|d| d.status == Some(503) && d.event_type == "payment_intent.succeeded")
        })
        .then_some(())
    })
    .await;
    down.store(false, Ordering::SeqCst);
    let confirmed = doc.until("payment.confirmed").await;
    assert_eq!(confirmed["payment"]["status"], "succeeded");
    // The simulator records the 200 once our answer reaches it, just after the room heard.
    let log = eventually(async || {
        let log = sim.with_world(|w| {
            w.deliveries
                .iter()
                .filter(|d| d.event_type == "payment_intent.succeeded")
                .map(|d| d.status)
                .collect::<Vec<_>>()
        });
        (log.last() == Some(&Some(200))).then_some(log)
    })
    .await;
    assert_eq!(log.first(), Some(&Some(503)), "refused while the store was down: {log:?}");
}

#[tokio::test]
async fn a_deauthorization_that_fails_to_store_is_applied_on_stripes_retry() {
    let (hub, _down, fail) = flaky_hub_with_clinic_faults().await;
    let mut doc = hub.clinician().await;
    let account = hub.state.store.clinic(callpay::demo::DEMO_CLINIC).await.unwrap().unwrap().stripe_account.unwrap();
    // The store fails the first attempt to unlink; Stripe retries the event.
    fail.store(1, Ordering::SeqCst);
    assert_eq!(deauthorize_on_stripe(&hub, &account).await, 200);
    let revoked = doc.until_where("clinic.updated", |f| f["payments_available"] == false).await;
    assert_eq!(revoked["reason"], "stripe_not_connected");
    let clinic = hub.state.store.clinic(callpay::demo::DEMO_CLINIC).await.unwrap().unwrap();
    assert_eq!(clinic.stripe_account, None, "unlinked on the retry, not left linked as a duplicate");
    let sim = hub.sim.sim.clone();
    let statuses: Vec<Option<u16>> = sim.with_world(|w| {
        w.deliveries.iter().filter(|d| d.event_type == "account.application.deauthorized").map(|d| d.status).collect()
    });
    assert_eq!(statuses.first(), Some(&Some(503)), "the failed attempt was refused: {statuses:?}");
    let rows = hub.state.store.audit_for_clinic(callpay::demo::DEMO_CLINIC, 100, None, true).await.unwrap();
    assert_eq!(rows.iter().filter(|r| r.action == "stripe.deauthorized").count(), 1, "audited once, with the change");
}

/// A node admitting as many joins as its store can serve closes the next one at once with
/// `4013` and a time to retry (a code a browser can read), instead of queueing it into the
/// store pool's time-outs; once a place is free, joins go through again.
#[tokio::test]
async fn joins_past_what_the_store_serves_are_told_when_to_retry() {
    // Long enough for the four turned-away joins below to be answered while both are waiting,
    // even on a busy machine.
    let slow = Arc::new(std::sync::atomic::AtomicU64::new(3000));
    let slow_binds = slow.clone();
    let hub = TestHub::start_wrapped(
        |c| c.server.max_joins_in_flight = 2,
        move |inner| {
            Arc::new(FlakyStore {
                inner,
                down: Arc::default(),
                fail_clinic_writes: Arc::default(),
                spare_bind: Arc::default(),
                slow_binds,
            })
        },
    )
    .await;
    let join = |call: &str| {
        let url = hub.ws_url(call, &hub.token_for(call, &format!("doc-{call}"), callpay_protocol::Role::Clinician));
        async move { Client::connect(&url).await }
    };
    // Two joins to new calls wait on the slow store...
    let first = tokio::spawn(join("call_slow_1"));
    let second = tokio::spawn(join("call_slow_2"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while hub.state.joins.in_flight() < 2 {
        assert!(std::time::Instant::now() < deadline, "the two slow joins never reached the store");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // ...so a third is told to come back, at once, with a ticket for its place.
    let url = hub.ws_url("call_3", &hub.token_for("call_3", "doc-3", callpay_protocol::Role::Clinician));
    let started = std::time::Instant::now();
    let (code, reason) = closed_with(&url).await;
    assert_eq!(code, callpay_protocol::close::BUSY, "{reason}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1000), "told at once, not after the store");
    let (retry, ticket) = busy(&reason);
    assert!((500..=10_000).contains(&retry), "{reason}");
    // Five more joins without tickets are shed: the line is six long.
    for _ in 0..5 {
        assert_eq!(closed_with(&url).await.0, callpay_protocol::close::BUSY);
    }
    // Back with its ticket while every place is still taken: it is given the first place in
    // a front line (at the node's rate, 2 to 4 a second here), ahead of every join without a
    // ticket. A forged ticket, or one given to someone else, counts for nothing: such a join
    // goes to the end of the line, behind the front line and the six, like one that never
    // waited. (Eight places against one leave room for the rate to double and the line to move
    // between the attempts.)
    let (code, reason) = closed_with(&format!("{url}&ticket={ticket}")).await;
    assert_eq!(code, callpay_protocol::close::BUSY, "{reason}");
    let front = busy(&reason).0;
    assert!((250..=500).contains(&front), "the front line's first place: {reason}");
    let forged = format!("{}{}", &ticket[..ticket.len() - 1], if ticket.ends_with('0') { '1' } else { '0' });
    let (_, reason) = closed_with(&format!("{url}&ticket={forged}")).await;
    assert!(busy(&reason).0 >= 2 * front, "a forged ticket, eighth in line: {reason}");
    let someone_else = hub.ws_url("call_3", &hub.token_for("call_3", "doc-4", callpay_protocol::Role::Clinician));
    let (_, reason) = closed_with(&format!("{someone_else}&ticket={ticket}")).await;
    assert!(busy(&reason).0 >= 2 * front, "another participant's ticket, ninth in line: {reason}");
    // The two waiting joins are admitted; afterwards joins go through again.
    assert_eq!(first.await.unwrap().welcome["type"], "welcome");
    assert_eq!(second.await.unwrap().welcome["type"], "welcome");
    slow.store(0, Ordering::SeqCst);
    // (A join's place is given back once its welcome is read, before its presence write and send.)
    while hub.state.joins.in_flight() > 0 {
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(5),
            "the joins kept their places"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(Client::connect(&format!("{url}&ticket={ticket}")).await.welcome["type"], "welcome");
    let metrics = hub.http.send("GET", &format!("{}/metrics", hub.info.hub_url), &[], String::new()).await.2;
    assert!(metrics.contains("callpay_ws_joins_shed_total 9\n"), "{metrics}");
    assert!(metrics.contains("callpay_ws_joins_ticketed_total 1\n"), "admitted with its ticket: {metrics}");
}

/// A node handling as many payment commands as its store serves answers the next one `busy` at
/// once, with a time to retry, and does nothing with it: no payment, no Stripe call, no audit.
/// Sent again unchanged once there is room, the same request goes through, once.
#[tokio::test]
async fn payment_commands_past_what_the_store_serves_are_told_when_to_retry() {
    let hub = TestHub::start_with(|c| c.payments.max_commands_in_flight = 1).await;
    let other_call =
        |sub: &str| hub.ws_url("call_busy", &hub.token_for("call_busy", sub, callpay_protocol::Role::Clinician));
    let mut second = Client::connect(&other_call("doc-busy")).await;
    // The first request holds the node's one place while Stripe takes 2.5 s to answer (the
    // tests' Stripe time-out is 3 s).
    hub.sim_control("POST", "/_sim/faults", serde_json::json!({"api_delays": 1, "api_delay_ms": 2500})).await;
    let mut first = hub.clinician().await;
    first.request("slow", 5000, "Consult").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while hub.state.commands.in_flight() < 1 {
        assert!(std::time::Instant::now() < deadline, "the first request never took its place");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let started = std::time::Instant::now();
    second.request("b1", 7000, "Follow-up").await;
    let err = second.until("error").await;
    assert!(started.elapsed() < std::time::Duration::from_millis(1000), "told at once, not after the first: {err}");
    assert_eq!((err["code"].as_str(), err["ref"].as_str()), (Some("busy"), Some("b1")), "{err}");
    let retry = err["retry_after_ms"].as_u64().unwrap_or_else(|| panic!("a time to retry: {err}"));
    assert!((500..=30_000).contains(&retry), "{err}");
    // Nothing was made of it: no payment in that call, and Stripe has only the first
    // request's PaymentIntent.
    assert!(hub.state.store.payments_for_call("call_busy").await.unwrap().is_empty());
    first.until("payment.requested").await;
    let intents = hub.sim.sim.with_world(|w| w.accounts.values().map(|a| a.payment_intents.len()).sum::<usize>());
    assert_eq!(intents, 1, "only the first request reached Stripe");
    // Once the first is done, the same request sent again goes through, once.
    while hub.state.commands.in_flight() > 0 {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(5), "the first kept its place");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    second.request("b1", 7000, "Follow-up").await;
    let made = second.until("payment.requested").await;
    assert_eq!((made["payment"]["client_ref"].as_str(), made["payment"]["amount"].as_i64()), (Some("b1"), Some(7000)));
    let audit = hub.state.store.audit_for_clinic(callpay::demo::DEMO_CLINIC, 100, None, true).await.unwrap();
    let requested: Vec<_> =
        audit.iter().filter(|a| a.action == "payment.requested").map(|a| a.outcome.as_str()).collect();
    assert_eq!(requested, ["ok", "ok"], "the busy answer is not a decision and is not audited: {audit:?}");
    let metrics = hub.http.send("GET", &format!("{}/metrics", hub.info.hub_url), &[], String::new()).await.2;
    assert!(metrics.contains("callpay_payment_commands_shed_total 1\n"), "{metrics}");
}

/// Opens `url` and reads until the hub closes it: the close code and reason.
async fn closed_with(url: &str) -> (u16, String) {
    let (mut ws, _) = open_ws(url).await.expect("the upgrade goes through");
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await;
        match next.expect("a close frame within 5 s") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                return (u16::from(f.code), f.reason.to_string());
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A `4013` reason's retry (ms) and ticket.
fn busy(reason: &str) -> (u64, String) {
    let rest = reason.strip_prefix("hub busy admitting joins; retry in ").unwrap_or_else(|| panic!("{reason}"));
    let (retry, ticket) = rest.split_once(" ms; ticket ").unwrap_or_else(|| panic!("{reason}"));
    (retry.parse().unwrap(), ticket.to_owned())
}

/// PostgreSQL ends the store's connections while they sit in the pool (a restart, a failover,
/// a proxy's idle timeout). A connection idle past the check is pinged before it is used and
/// replaced, so the next read does not fail on it. (A connection in constant use is not
/// pinged: its next query would find it dead just as a ping would.)
#[tokio::test]
async fn connections_postgres_ended_while_idle_are_replaced_before_their_next_use() {
    let db = crate::services::TempDb::new();
    let store = SqlStore::connect(&db.url).await.unwrap();
    for _ in 0..3 {
        store.payments_for_call("call-1").await.unwrap();
    }
    db.end_connections();
    tokio::time::sleep(callpay::store::PING_IF_IDLE + std::time::Duration::from_millis(300)).await;
    for _ in 0..3 {
        let read = store.payments_for_call("call-1").await;
        assert!(read.is_ok(), "a dead idle connection was used: {read:?}");
    }
}

/// A welcome read stuck behind a lock on PostgreSQL (a migration elsewhere, a connection that
/// stopped answering): its joins and those asking after it get a store error in bounded time,
/// the stuck statements take only the welcome readers' share of the pool (payments and
/// webhooks keep theirs), and once the lock goes, welcomes are read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_welcome_read_fails_its_joins_in_time_and_keeps_to_its_share_of_the_pool() {
    use sqlx::Connection;
    use std::time::Duration;
    let db = crate::services::TempDb::new();
    let store = SqlStore::connect(&db.url).await.unwrap();
    store.call_snapshot("call_stuck", "clinic_stuck").await.unwrap();
    let mut locker = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE payments IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await.unwrap();
    let before = store.welcome_statements();
    // Asked one after another, so that each free reader takes one and the last four wait.
    let mut asks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        asks.push(tokio::spawn(async move { store.call_snapshot(&format!("call_stuck_{i}"), "clinic_stuck").await }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for ask in asks {
        let read = tokio::time::timeout(Duration::from_secs(30), ask).await.expect("answered in time").unwrap();
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
    }
    assert_eq!(store.welcome_statements() - before, 4, "one statement per reader, none past the readers' share");
    assert!(store.clinic("clinic_stuck").await.is_ok(), "the rest of the pool still serves");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.call_snapshot("call_stuck", "clinic_stuck").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "welcomes never read again after the lock went");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.close().await;
}

//! Database outages: what the hub does with each kind of request while its store fails, and
//! that nothing is lost once it is back (a webhook answered 503 is retried by Stripe).

use crate::helpers::*;
use async_trait::async_trait;
use callpay::store::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A store that fails every call while `down` is set, and otherwise passes through.
struct FlakyStore {
    inner: Arc<dyn Store>,
    down: Arc<AtomicBool>,
}

impl FlakyStore {
    fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) { Err(StoreError::Database(sqlx::Error::PoolTimedOut)) } else { Ok(()) }
    }
}

/// Writes the whole impl, so `#[async_trait]` sees the expanded methods.
macro_rules! pass {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        #[async_trait]
        impl Store for FlakyStore {
            $(async fn $name(&self, $($arg: $ty),*) -> StoreResult<$ret> { self.check()?; self.inner.$name($($arg),*).await })*
        }
    };
}

pass! {
        ping() -> ();
        upsert_clinic(c: &Clinic) -> ();
        clinic(id: &str) -> Option<Clinic>;
        clinics_by_account(a: &str) -> Vec<Clinic>;
        insert_payment(p: &Payment) -> Inserted;
        payment(id: &str) -> Option<Payment>;
        payment_by_intent(pi: &str) -> Option<Payment>;
        payments_for_call(call: &str) -> Vec<Payment>;
        update_payment(p: &Payment, v: i64) -> bool;
        webhook_seen(id: &str) -> bool;
        record_webhook(e: &WebhookRecord, u: Option<(&Payment, i64)>) -> WebhookWrite;
        upsert_org(o: &Org) -> ();
        org(id: &str) -> Option<Org>;
        clinics_for_org(o: &str) -> Vec<Clinic>;
        insert_enablement(e: &Enablement) -> ();
        enablement(id: &str) -> Option<Enablement>;
        enablements(o: Option<&str>, s: Option<&str>) -> Vec<Enablement>;
        decide_enablement(e: &Enablement) -> bool;
        insert_oauth_state(s: &OAuthState) -> ();
        take_oauth_state(s: &str) -> StateTaken;
        append_audit(e: &AuditEntry) -> ();
        audit_for_clinic(c: &str, l: i64, b: Option<(i64, String)>) -> Vec<AuditEntry>;
}

async fn flaky_hub() -> (TestHub, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let hub = TestHub::start_wrapped(|_| {}, move |inner| Arc::new(FlakyStore { inner, down: flag })).await;
    (hub, down)
}

#[tokio::test]
async fn joining_while_the_store_is_down_gets_an_error_and_a_clean_close() {
    let (hub, down) = flaky_hub().await;
    down.store(true, Ordering::SeqCst);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(hub.ws_url(&hub.info.call_id, &hub.info.clinician_token)).await.unwrap();
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    let frame: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!((frame["type"].as_str(), frame["code"].as_str()), (Some("error"), Some("internal")));
    match ws.next().await.unwrap().unwrap() {
        tokio_tungstenite::tungstenite::Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1011),
        other => panic!("expected a close, got {other:?}"),
    }
    let (status, _, _) = hub.http.send("GET", &format!("{}/readyz", hub.info.hub_url), &[], String::new()).await;
    assert_eq!(status, 503, "not ready while the store is down");
    // The refused connection is counted as closed too, and left nothing behind in the room.
    let m = &hub.state.metrics;
    eventually(async || (m.connections_closed.get() == 1).then_some(())).await;
    assert_eq!((m.connections_opened.get(), hub.state.hub.rooms.connections()), (1, 0));
    down.store(false, Ordering::SeqCst);
    let doc = hub.clinician().await;
    assert_eq!(doc.welcome["type"], "welcome");
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

//! A confirmation never depends on one webhook: the hub reads the PaymentIntent from Stripe when
//! the patient's page says Stripe.js finished, and for payments left waiting; and what a page
//! needs after a reload (the patient's last stage) survives it.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Requests a payment and returns the patient's copy of it.
async fn requested(doc: &mut Client, pat: &mut Client, client_ref: &str) -> Value {
    doc.request(client_ref, 5000, "Consultation").await;
    pat.until_where("payment.requested", |f| f["payment"]["client_ref"] == client_ref).await["payment"].clone()
}

/// Every `payment.confirmed` frame the client has received so far, plus what arrives within `quiet`.
async fn confirmations(c: &mut Client, quiet: Duration) -> usize {
    let end = tokio::time::Instant::now() + quiet;
    while tokio::time::timeout_at(end, c.next()).await.is_ok() {}
    c.raw.iter().filter(|r| r.contains(r#""type":"payment.confirmed""#)).count()
}

#[tokio::test]
async fn every_webhook_lost_and_the_clinician_still_hears_exactly_once() {
    let hub = TestHub::start().await;
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_drop_all": true})).await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    let payment = requested(&mut doc, &mut pat, "lost-1").await;
    let (status, pi) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!((status, pi["status"].as_str()), (200, Some("succeeded")));
    pat.send(json!({"type": "payment.progress", "payment_id": payment["payment_id"], "stage": "submitted"})).await;
    let confirmed = doc.until("payment.confirmed").await;
    assert_eq!(confirmed["payment"]["status"], "succeeded");
    assert_eq!(confirmed["payment"]["amount_received"], 5000);
    // The page may report twice (a double click, a retry): still one confirmation.
    pat.send(json!({"type": "payment.progress", "payment_id": payment["payment_id"], "stage": "submitted"})).await;
    assert_eq!(confirmations(&mut doc, Duration::from_millis(1500)).await, 1);
    let deliveries = hub.sim_control("GET", "/_sim/deliveries", Value::Null).await;
    assert_eq!(deliveries["data"].as_array().map(Vec::len), Some(0), "no webhook reached the hub: {deliveries}");
    let stored = hub.state.store.payment(payment["payment_id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.status, callpay_protocol::PaymentStatus::Succeeded);
    let audit = hub.state.store.audit_for_clinic(callpay::demo::DEMO_CLINIC, 50, None, true).await.unwrap();
    assert!(audit.iter().any(|a| a.action == "payment.succeeded" && a.actor_id == "stripe"), "audited as Stripe's");
}

#[tokio::test]
async fn a_payment_left_waiting_is_checked_without_anyone_asking() {
    let hub = TestHub::start_with(|c| c.payments.verify_after_ms = 300).await;
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_drop_all": true})).await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    let payment = requested(&mut doc, &mut pat, "quiet-1").await;
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    // No `submitted` from the page (it crashed, say) and no webhook: the sweep finds it.
    let confirmed = doc.until("payment.confirmed").await;
    assert_eq!(confirmed["payment"]["payment_id"], payment["payment_id"]);
    assert_eq!(confirmations(&mut doc, Duration::from_millis(1000)).await, 1);
}

#[tokio::test]
async fn the_pop_up_comes_before_a_late_webhook_which_then_changes_nothing() {
    let hub = TestHub::start().await;
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_delays": 20, "webhook_delay_ms": 2500})).await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    let payment = requested(&mut doc, &mut pat, "late-1").await;
    let (status, pi) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    pat.send(json!({"type": "payment.progress", "payment_id": payment["payment_id"], "stage": "submitted"})).await;
    doc.until("payment.confirmed").await;
    let succeeded = |d: &Value| {
        d["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["event_type"] == "payment_intent.succeeded" && r["status"] == 200)
    };
    let before = hub.sim_control("GET", "/_sim/deliveries", Value::Null).await;
    assert!(!succeeded(&before), "the pop-up came before the webhook: {before}");
    // The webhook arrives later, is applied as no change, and nobody hears twice.
    eventually(async || succeeded(&hub.sim_control("GET", "/_sim/deliveries", Value::Null).await).then_some(())).await;
    assert_eq!(confirmations(&mut doc, Duration::from_millis(500)).await, 1);
    assert_eq!(confirmations(&mut pat, Duration::from_millis(100)).await, 1);
    assert_eq!(pi["status"], "succeeded");
}

#[tokio::test]
async fn a_reloaded_clinician_page_sees_the_patients_last_stage() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    let payment = requested(&mut doc, &mut pat, "stage-1").await;
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    pat.send(json!({"type": "payment.progress", "payment_id": id, "stage": "entering_details"})).await;
    doc.until("payment.progress").await;
    doc.close().await;
    let again = hub.clinician().await;
    assert_eq!(again.welcome["progress"][&id], "entering_details", "{}", again.welcome);
    // Once paid, the stage is history and is not reported any more.
    pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    pat.until("payment.confirmed").await;
    let after = hub.clinician().await;
    assert!(after.welcome["progress"].get(&id).is_none(), "{}", after.welcome);
}

/// Stores `n` requests in the demo call that were abandoned two hours ago (their
/// PaymentIntents are not on Stripe: every check of them fails, as it does for a request
/// whose patient never came).
async fn abandoned(hub: &TestHub, n: usize) {
    let clinic = hub.state.store.clinic(callpay::demo::DEMO_CLINIC).await.unwrap().unwrap();
    let long_ago = callpay::store::now_ms() - 2 * 3_600_000;
    for i in 0..n {
        let p = callpay::store::Payment {
            id: format!("pay_abandoned_{i}_{}", callpay::ids::random_id()),
            call_id: hub.info.call_id.clone(),
            clinic_id: callpay::demo::DEMO_CLINIC.into(),
            client_ref: format!("abandoned-{i}"),
            requested_by_id: "doc".into(),
            requested_by_name: "Doc".into(),
            amount: 1000,
            currency: "aud".into(),
            description: "Never paid".into(),
            status: callpay_protocol::PaymentStatus::Requested,
            stripe_account: clinic.stripe_account.clone().unwrap(),
            payment_intent_id: Some(format!("pi_abandoned_{i}")),
            client_secret: Some(format!("pi_abandoned_{i}_secret_x")),
            created_at: long_ago,
            updated_at: long_ago,
            ..Default::default()
        };
        hub.state.store.insert_payment(&p).await.unwrap();
    }
}

/// Issue 17, item 4: 60 requests abandoned earlier in the call are older than a newer payment
/// waiting on Stripe. The sweep used to take the 50 oldest before its backoff check, so the
/// newer one was never checked; now the backing-off ones give way and the clinician hears.
#[tokio::test]
async fn abandoned_requests_never_keep_the_sweep_from_a_newer_payment() {
    let hub = TestHub::start_with(|c| c.payments.verify_after_ms = 300).await;
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_drop_all": true})).await;
    abandoned(&hub, 60).await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    let payment = requested(&mut doc, &mut pat, "newer-1").await;
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    // No page report, no webhook: only the sweep can find it.
    let confirmed = doc.until("payment.confirmed").await;
    assert_eq!(confirmed["payment"]["payment_id"], payment["payment_id"]);
}

/// Issue 17, item 4: with Stripe not answering (every call held for 30 s), one sweep over 16
/// waiting payments ends within its bound (checks run 8 at a time, each cut off after 6 s)
/// instead of taking every check's full timeout one after another.
#[tokio::test]
async fn with_stripe_not_answering_one_sweep_stays_bounded() {
    // The background sweeper stays out of the way: its period is half an hour.
    let hub = TestHub::start_with(|c| c.payments.verify_after_ms = 3_600_000).await;
    abandoned(&hub, 16).await;
    // The clinician's welcome tells the room these payments wait on Stripe.
    let _doc = hub.clinician().await;
    hub.sim_control("POST", "/_sim/faults", json!({"api_delays": 1000, "api_delay_ms": 30000})).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(40), hub.state.payments.sweep())
        .await
        .expect("one sweep took longer than 40 s with Stripe not answering");
    println!("a sweep of 16 checks with Stripe not answering took {:?}", started.elapsed());
    hub.sim_control("POST", "/_sim/faults", json!({"api_delays": 0})).await;
}

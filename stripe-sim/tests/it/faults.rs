//! Fault injection through `/_sim/faults`: webhook duplicates, reordering, lateness and dropped
//! attempts; API delays; forced declines; the `processing` path.

use crate::helpers::*;
use serde_json::json;
use std::time::Instant;

async fn setup() -> (stripe_sim::SimHandle, Http, Receiver, String) {
    let h = sim().await;
    let http = Http::new(&h);
    let (hook, secret) = Receiver::start("").await;
    *secret.lock().unwrap() = connect_endpoint(&h, &http, &hook.url).await;
    let acct = account(&h, &http).await;
    (h, http, hook, acct)
}

#[tokio::test]
async fn duplicate_and_reordered_webhooks() {
    let (h, http, mut hook, acct) = setup().await;
    let hdr = [("stripe-account", acct.as_str())];
    http.json(h.secret_key(), "POST", "/_sim/faults", json!({"webhook_duplicate": 1})).await;
    http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await;
    let a = hook.next().await;
    let b = hook.next().await;
    assert_eq!(a.id, b.id, "the same event arrives twice");

    // Hold back the next event (payment_intent.created) until the one after it is delivered.
    http.json(h.secret_key(), "POST", "/_sim/faults", json!({"webhook_reorder": 1})).await;
    let pi = http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await.body;
    http.post(h.secret_key(), &format!("/v1/payment_intents/{}/cancel", pi["id"].as_str().unwrap()), &hdr, "").await;
    let first = hook.next().await;
    let second = hook.next().await;
    assert_eq!(first.kind, "payment_intent.canceled");
    assert_eq!(second.kind, "payment_intent.created");
}

#[tokio::test]
async fn late_and_dropped_deliveries() {
    let (h, http, mut hook, acct) = setup().await;
    let hdr = [("stripe-account", acct.as_str())];
    http.json(h.secret_key(), "POST", "/_sim/faults", json!({"webhook_delays": 1, "webhook_delay_ms": 300})).await;
    let start = Instant::now();
    http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await;
    hook.next().await;
    assert!(start.elapsed().as_millis() >= 300, "delivered late");

    http.json(h.secret_key(), "POST", "/_sim/faults", json!({"webhook_drop_attempts": 2})).await;
    http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await;
    let ev = hook.next().await;
    let log = http.get(h.secret_key(), "/_sim/deliveries", &[]).await.body;
    let attempts: Vec<_> =
        log["data"].as_array().unwrap().iter().filter(|d| d["event_id"] == ev.id.as_str()).cloned().collect();
    assert_eq!(attempts.len(), 3);
    assert!(attempts[0]["outcome"].as_str().unwrap().contains("dropped"));
    assert_eq!(attempts[2]["delivered"], true);
}

#[tokio::test]
async fn api_delay_forced_decline_and_processing() {
    let (h, http, mut hook, acct) = setup().await;
    let hdr = [("stripe-account", acct.as_str())];
    http.json(h.secret_key(), "POST", "/_sim/faults", json!({"api_delays": 1, "api_delay_ms": 250})).await;
    let start = Instant::now();
    http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await;
    assert!(start.elapsed().as_millis() >= 250);

    http.json(h.secret_key(), "POST", "/_sim/faults", json!({"decline_next_confirm": "insufficient_funds"})).await;
    let r = http
        .post(
            h.secret_key(),
            "/v1/payment_intents",
            &hdr,
            "amount=5000&currency=aud&confirm=true&payment_method=pm_card_visa",
        )
        .await;
    assert_eq!(r.status, 402);
    assert_eq!(r.body["error"]["decline_code"], "insufficient_funds");
    let r = http
        .post(
            h.secret_key(),
            "/v1/payment_intents",
            &hdr,
            "amount=5000&currency=aud&confirm=true&payment_method=pm_card_visa",
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "the fault fires once");

    http.json(h.secret_key(), "POST", "/_sim/faults", json!({"processing_delay_ms": 100})).await;
    let r = http
        .post(
            h.secret_key(),
            "/v1/payment_intents",
            &hdr,
            "amount=5000&currency=aud&confirm=true&payment_method=pm_card_visa",
        )
        .await;
    assert_eq!(r.body["status"], "processing");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let (processing, _) = hook.until("payment_intent.processing").await;
    assert_eq!(processing.raw["data"]["object"]["id"], id.as_str());
    let (done, _) = hook.until("payment_intent.succeeded").await;
    assert_eq!(done.raw["data"]["object"]["id"], id.as_str());

    let cleared =
        http.send("DELETE", "/_sim/faults", &[("authorization", &format!("Bearer {}", h.secret_key()))], "").await;
    assert_eq!(cleared.status, 200);
    assert_eq!(
        http.get(h.secret_key(), "/_sim/faults", &[]).await.body["processing_delay_ms"],
        serde_json::Value::Null
    );
    let r = http.json(h.secret_key(), "POST", "/_sim/faults", json!({"no_such_fault": 1})).await;
    assert_eq!(r.status, 422, "unknown fault names are refused, not ignored");
    let r = http.json("sk_test_other", "POST", "/_sim/faults", json!({"api_errors": 1})).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn reset_empties_the_world() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    http.post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], "amount=5000&currency=aud").await;
    let r = http.post(h.secret_key(), "/_sim/reset", &[], "").await;
    assert_eq!(r.status, 200);
    let after = http.get(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)]).await;
    assert_eq!(after.status, 403, "the account is gone");
    let platform = http.get(h.secret_key(), "/v1/account", &[]).await;
    assert_eq!(platform.status, 200, "the platform stays");
}

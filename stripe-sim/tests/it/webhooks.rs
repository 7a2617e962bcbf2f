//! Webhooks: signed like Stripe (verified with async-stripe-webhook), one event per state change,
//! `account` on connected-account events, retries, and `GET /v1/events`.

use crate::helpers::*;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn lifecycle_events_are_signed_and_carry_the_account() {
    let h = sim().await;
    let http = Http::new(&h);
    let (mut hook, secret) = Receiver::start("").await;
    *secret.lock().unwrap() = connect_endpoint(&h, &http, &hook.url).await;
    let acct = account(&h, &http).await;
    let hdr = [("stripe-account", acct.as_str())];
    let pi = http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await.body;
    let id = pi["id"].as_str().unwrap();
    let created = hook.next().await;
    assert_eq!(created.kind, "payment_intent.created");
    assert_eq!(created.account.as_deref(), Some(acct.as_str()));
    assert_eq!(created.raw["livemode"], false);
    assert_eq!(created.raw["api_version"], stripe_sim::objects::API_VERSION);
    assert!(created.raw["created"].as_i64().unwrap() > 1_700_000_000);

    http.post(h.secret_key(), &format!("/v1/payment_intents/{id}/confirm"), &hdr, "payment_method=pm_card_visa").await;
    let (succeeded, before) = hook.until("payment_intent.succeeded").await;
    assert!(before.iter().any(|e| e.kind == "charge.succeeded"));
    assert_eq!(succeeded.raw["data"]["object"]["id"], id);
    assert_eq!(succeeded.raw["data"]["object"]["status"], "succeeded");

    http.post(h.secret_key(), "/v1/refunds", &hdr, &format!("payment_intent={id}&amount=100")).await;
    let (_, before) = hook.until("charge.refunded").await;
    assert!(before.iter().any(|e| e.kind == "refund.created"));

    let failed = http
        .post(
            h.secret_key(),
            "/v1/payment_intents",
            &hdr,
            "amount=5000&currency=aud&confirm=true&payment_method=pm_card_visa_chargeDeclined",
        )
        .await;
    assert_eq!(failed.status, 402);
    hook.until("payment_intent.payment_failed").await;
    let to_cancel = http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await.body;
    http.post(h.secret_key(), &format!("/v1/payment_intents/{}/cancel", to_cancel["id"].as_str().unwrap()), &hdr, "")
        .await;
    hook.until("payment_intent.canceled").await;
    let three = http
        .post(
            h.secret_key(),
            "/v1/payment_intents",
            &hdr,
            "amount=5000&currency=aud&confirm=true&payment_method=pm_card_threeDSecure2Required",
        )
        .await;
    assert_eq!(three.body["status"], "requires_action");
    hook.until("payment_intent.requires_action").await;
    assert_eq!(hook.rejected.load(Ordering::SeqCst), 0, "every signature verified");

    // The events API lists the same events for the account, newest first.
    let events = http.get(h.secret_key(), "/v1/events?type=payment_intent.succeeded", &hdr).await.body;
    assert_eq!(events["data"][0]["id"], succeeded.id);
    let one = http.get(h.secret_key(), &format!("/v1/events/{}", succeeded.id), &hdr).await;
    assert_eq!(one.body["type"], "payment_intent.succeeded");
    assert_eq!(one.body["pending_webhooks"], 0, "delivered, so nothing pending");
}

#[tokio::test]
async fn platform_endpoints_do_not_receive_connected_events() {
    let h = sim().await;
    let http = Http::new(&h);
    let (mut platform_hook, secret) = Receiver::start("").await;
    let r = http
        .post(
            h.secret_key(),
            "/v1/webhook_endpoints",
            &[],
            &format!("url={}&enabled_events[]=payment_intent.created", urlencode(&platform_hook.url)),
        )
        .await;
    *secret.lock().unwrap() = r.body["secret"].as_str().unwrap().to_owned();
    let acct = account(&h, &http).await;
    http.post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], "amount=5000&currency=aud").await;
    let own = http.post(h.secret_key(), "/v1/payment_intents", &[], "amount=7000&currency=aud").await.body;
    let ev = platform_hook.next().await;
    assert_eq!(ev.raw["data"]["object"]["id"], own["id"], "the first event this endpoint sees is the platform's own");
    assert_eq!(ev.account, None);
}

#[tokio::test]
async fn failed_deliveries_are_retried_until_a_2xx() {
    let h = sim().await;
    let http = Http::new(&h);
    let (mut hook, secret) = Receiver::start("").await;
    *secret.lock().unwrap() = connect_endpoint(&h, &http, &hook.url).await;
    hook.fail_first.store(2, Ordering::SeqCst);
    let acct = account(&h, &http).await;
    let pi = http
        .post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], "amount=5000&currency=aud")
        .await
        .body;
    let ev = hook.next().await;
    assert_eq!(ev.raw["data"]["object"]["id"], pi["id"]);
    let log = http.get(h.secret_key(), "/_sim/deliveries", &[]).await.body;
    let attempts: Vec<_> = log["data"].as_array().unwrap().iter().filter(|d| d["event_id"] == ev.id.as_str()).collect();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[2]["status"], 200);
    assert_eq!(attempts[2]["attempt"], 3);
}

#[tokio::test]
async fn a_wrong_secret_fails_verification_at_the_receiver() {
    let h = sim().await;
    let http = Http::new(&h);
    let (hook, secret) = Receiver::start("").await;
    connect_endpoint(&h, &http, &hook.url).await;
    *secret.lock().unwrap() = "whsec_not_the_one".to_owned();
    let acct = account(&h, &http).await;
    http.post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], "amount=5000&currency=aud").await;
    let rejected = hook.rejected.clone();
    eventually(async || (rejected.load(Ordering::SeqCst) >= 1).then_some(())).await;
}

//! Idempotency-Key: replay, reuse with other parameters, and retries through injected faults.

use crate::helpers::*;
use serde_json::json;
use stripe::RequestStrategy;
use stripe::StripeRequest;
use stripe_core::payment_intent::CreatePaymentIntent;
use stripe_types::Currency;

#[tokio::test]
async fn same_key_replays_other_params_is_an_idempotency_error() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let hdr = [("stripe-account", acct.as_str()), ("idempotency-key", "pay_123-create")];
    let first = http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await;
    let second = http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await;
    assert_eq!(first.status, 200);
    assert_eq!(second.body["id"], first.body["id"], "replay returns the first result");
    assert_eq!(second.headers.get("idempotent-replayed").unwrap(), "true");
    assert!(first.headers.get("idempotent-replayed").is_none());
    let other = http.post(h.secret_key(), "/v1/payment_intents", &hdr, "amount=6000&currency=aud").await;
    assert_eq!(other.status, 400);
    assert_eq!(other.body["error"]["type"], "idempotency_error");
    let list = http.get(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)]).await.body;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "only one intent was created");

    // Keys are per account: the same key on another account is a new request.
    let b = account(&h, &http).await;
    let on_b = http
        .post(
            h.secret_key(),
            "/v1/payment_intents",
            &[("stripe-account", &b), ("idempotency-key", "pay_123-create")],
            "amount=5000&currency=aud",
        )
        .await;
    assert_ne!(on_b.body["id"], first.body["id"]);

    // A validation failure is not saved: the same key works once the request is fixed.
    let hdr2 = [("stripe-account", acct.as_str()), ("idempotency-key", "pay_456-create")];
    let bad = http.post(h.secret_key(), "/v1/payment_intents", &hdr2, "amount=1&currency=aud").await;
    assert_eq!(bad.status, 400);
    let bad_again = http.post(h.secret_key(), "/v1/payment_intents", &hdr2, "amount=1&currency=aud").await;
    assert!(bad_again.headers.get("idempotent-replayed").is_none());

    // A decline is saved and replayed: retrying a confirm cannot charge a second card attempt.
    let pi = first.body["id"].as_str().unwrap();
    let hdr3 = [("stripe-account", acct.as_str()), ("idempotency-key", "pay_123-confirm")];
    let d1 = http
        .post(
            h.secret_key(),
            &format!("/v1/payment_intents/{pi}/confirm"),
            &hdr3,
            "payment_method=pm_card_visa_chargeDeclined",
        )
        .await;
    let d2 = http
        .post(
            h.secret_key(),
            &format!("/v1/payment_intents/{pi}/confirm"),
            &hdr3,
            "payment_method=pm_card_visa_chargeDeclined",
        )
        .await;
    assert_eq!((d1.status, d2.status), (402, 402));
    assert_eq!(d1.body["error"]["charge"], d2.body["error"]["charge"]);
    let charges =
        http.get(h.secret_key(), &format!("/v1/charges?payment_intent={pi}"), &[("stripe-account", &acct)]).await.body;
    assert_eq!(charges["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn async_stripe_retries_through_500_and_429_with_one_key_and_one_intent() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    for status in [500, 429] {
        let r = http
            .json(h.secret_key(), "POST", "/_sim/faults", json!({"api_errors": 2, "api_error_status": status}))
            .await;
        assert_eq!(r.status, 200);
        let client = stripe(&h);
        let pi = CreatePaymentIntent::new(5000, Currency::AUD)
            .customize()
            .account_id(acct.parse().unwrap())
            .request_strategy(RequestStrategy::Retry(3))
            .send(&client)
            .await
            .expect("third attempt succeeds");
        assert_eq!(pi.amount, 5000);
        let faults = http.get(h.secret_key(), "/_sim/faults", &[]).await.body;
        assert_eq!(faults["api_errors"], 0, "both injected errors fired");
    }
    let list = http.get(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)]).await.body;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "one intent per logical request");

    // Without retries the injected error reaches the caller with Stripe's shape.
    http.json(h.secret_key(), "POST", "/_sim/faults", json!({"api_errors": 1, "api_error_status": 500})).await;
    let r = http
        .post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], "amount=5000&currency=aud")
        .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body["error"]["type"], "api_error");
    assert_eq!(r.headers.get("stripe-should-retry").unwrap(), "true");
}

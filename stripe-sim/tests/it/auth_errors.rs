//! Keys, connected-account isolation and Stripe's error shape.

use crate::helpers::*;
use stripe::StripeRequest;

#[tokio::test]
async fn keys_are_checked_and_errors_have_stripes_shape() {
    let h = sim().await;
    let http = Http::new(&h);
    let r = http.send("GET", "/v1/payment_intents", &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("API key"));

    let r = http.get("sk_test_wrong_key_1234", "/v1/payment_intents", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("****1234"), "key is masked: {}", r.text);

    // A publishable key cannot list payments.
    let r = http.get(h.publishable_key(), "/v1/payment_intents", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("publishable"));

    // Unknown routes answer JSON too.
    let r = http.get(h.secret_key(), "/v1/no_such_thing", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("/v1/no_such_thing"));

    // Unknown parameters are rejected by name.
    let r = http.post(h.secret_key(), "/v1/payment_intents", &[], "amount=100&currency=aud&colour=blue").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "parameter_unknown");
    assert_eq!(r.body["error"]["param"], "colour");
}

#[tokio::test]
async fn connected_accounts_are_isolated() {
    let h = sim().await;
    let http = Http::new(&h);
    let a = account(&h, &http).await;
    let b = account(&h, &http).await;
    let r =
        http.post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &a)], "amount=5000&currency=aud").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(r.body["application"], h.client_id(), "direct charges name the platform's application");

    let on_a = http.get(h.secret_key(), &format!("/v1/payment_intents/{id}"), &[("stripe-account", &a)]).await;
    assert_eq!(on_a.status, 200);
    let on_b = http.get(h.secret_key(), &format!("/v1/payment_intents/{id}"), &[("stripe-account", &b)]).await;
    assert_eq!(on_b.status, 404);
    assert_eq!(on_b.body["error"]["code"], "resource_missing");
    let on_platform = http.get(h.secret_key(), &format!("/v1/payment_intents/{id}"), &[]).await;
    assert_eq!(on_platform.status, 404);

    let r = http.get(h.secret_key(), "/v1/payment_intents", &[("stripe-account", "acct_doesnotexist")]).await;
    assert_eq!(r.status, 403);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("does not have access"));

    // The same through async-stripe: its error type carries Stripe's status and code.
    let client = stripe(&h);
    let err = stripe_core::payment_intent::RetrievePaymentIntent::new(id)
        .customize()
        .account_id(b.parse().unwrap())
        .send(&client)
        .await
        .unwrap_err();
    match err {
        stripe::StripeError::Stripe(e, status) => {
            assert_eq!(status, 404);
            assert_eq!(e.code.map(|c| c.as_str().to_owned()).as_deref(), Some("resource_missing"));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn publishable_key_needs_the_client_secret() {
    let h = sim().await;
    let http = Http::new(&h);
    let a = account(&h, &http).await;
    let pi = http
        .post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &a)], "amount=5000&currency=aud")
        .await
        .body;
    let id = pi["id"].as_str().unwrap();
    let secret = pi["client_secret"].as_str().unwrap();
    let pk = h.publishable_key();
    let ok = http
        .send("GET", &format!("/v1/payment_intents/{id}?key={pk}&client_secret={secret}&_stripe_account={a}"), &[], "")
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["id"], id);
    let wrong = http
        .send(
            "GET",
            &format!("/v1/payment_intents/{id}?key={pk}&client_secret={id}_secret_nope&_stripe_account={a}"),
            &[],
            "",
        )
        .await;
    assert_eq!(wrong.status, 404);
    // A publishable key cannot create intents.
    let r = http.send("POST", "/v1/payment_intents", &[], &format!("key={pk}&amount=5000&currency=aud")).await;
    assert_eq!(r.status, 401);
}

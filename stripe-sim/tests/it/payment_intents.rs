//! PaymentIntents through async-stripe's own client: every status path and Stripe's validation.

use crate::helpers::*;
use serde_json::Value;
use stripe::StripeRequest;
use stripe_core::payment_intent::{
    CancelPaymentIntent, CancelPaymentIntentCancellationReason, ConfirmPaymentIntent, CreatePaymentIntent,
    RetrievePaymentIntent, UpdatePaymentIntent,
};
use stripe_shared::PaymentIntentStatus;
use stripe_types::Currency;

fn meta() -> std::collections::HashMap<String, String> {
    [("callpay_payment_id", "pay_1"), ("call_id", "call_1")].into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

#[tokio::test]
async fn create_retrieve_update_confirm_on_a_connected_account() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let client = stripe(&h);
    let pi = CreatePaymentIntent::new(5000, Currency::AUD)
        .description("Consultation")
        .receipt_email("pat@example.com")
        .metadata(meta())
        .statement_descriptor_suffix("CONSULT")
        .application_fee_amount(100)
        .automatic_payment_methods(stripe_core::payment_intent::CreatePaymentIntentAutomaticPaymentMethods::new(true))
        .customize()
        .account_id(acct.parse().unwrap())
        .send(&client)
        .await
        .expect("create");
    assert_eq!(pi.status, PaymentIntentStatus::RequiresPaymentMethod);
    assert_eq!(pi.amount, 5000);
    assert_eq!(pi.currency, Currency::AUD);
    assert_eq!(pi.description.as_deref(), Some("Consultation"));
    assert_eq!(pi.metadata.get("call_id").map(String::as_str), Some("call_1"));
    assert_eq!(pi.application_fee_amount, Some(100));
    assert!(pi.client_secret.as_deref().unwrap().starts_with(&format!("{}_secret_", pi.id.as_str())));

    let updated = UpdatePaymentIntent::new(pi.id.clone())
        .amount(6000)
        .customize()
        .account_id(acct.parse().unwrap())
        .send(&client)
        .await
        .expect("update");
    assert_eq!(updated.amount, 6000);

    let confirmed = ConfirmPaymentIntent::new(pi.id.clone())
        .payment_method("pm_card_visa")
        .expand(vec!["latest_charge".to_owned()])
        .customize()
        .account_id(acct.parse().unwrap())
        .send(&client)
        .await
        .expect("confirm");
    assert_eq!(confirmed.status, PaymentIntentStatus::Succeeded);
    assert_eq!(confirmed.amount_received, 6000);
    let charge = match confirmed.latest_charge.expect("charge") {
        stripe_types::Expandable::Object(c) => c,
        other => panic!("latest_charge not expanded: {other:?}"),
    };
    let card = charge.payment_method_details.as_ref().unwrap().card.as_ref().unwrap();
    assert_eq!(card.brand.as_deref(), Some("visa"));
    assert_eq!(card.last4.as_deref(), Some("4242"));
    assert_eq!(charge.receipt_email.as_deref(), Some("pat@example.com"));
    assert!(charge.receipt_url.as_deref().unwrap().contains("/receipts/"));

    let again = RetrievePaymentIntent::new(pi.id.clone())
        .customize()
        .account_id(acct.parse().unwrap())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(again.status, PaymentIntentStatus::Succeeded);

    // Confirming again is Stripe's unexpected-state error.
    let err = ConfirmPaymentIntent::new(pi.id.clone())
        .customize()
        .account_id(acct.parse().unwrap())
        .send(&client)
        .await
        .unwrap_err();
    assert!(
        matches!(err, stripe::StripeError::Stripe(ref e, 400) if e.code.as_ref().map(|c| c.as_str()) == Some("payment_intent_unexpected_state")),
        "{err:?}"
    );

    // And the receipt went to the outbox.
    let receipts = http.get(h.secret_key(), "/_sim/receipts", &[]).await.body;
    assert_eq!(receipts["data"][0]["to"], "pat@example.com");
    assert_eq!(receipts["data"][0]["amount"], 6000);
}

async fn create_raw(http: &Http, key: &str, acct: &str, body: &str) -> Value {
    let r = http.post(key, "/v1/payment_intents", &[("stripe-account", acct)], body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

#[tokio::test]
async fn decline_cards_fail_with_stripes_codes_and_a_retry_succeeds() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let key = h.secret_key();
    for (pm, code, decline) in [
        ("pm_card_visa_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_visa_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ] {
        let pi = create_raw(&http, key, &acct, "amount=5000&currency=aud").await;
        let id = pi["id"].as_str().unwrap();
        let r = http
            .post(
                key,
                &format!("/v1/payment_intents/{id}/confirm"),
                &[("stripe-account", &acct)],
                &format!("payment_method={pm}"),
            )
            .await;
        assert_eq!(r.status, 402, "{}", r.text);
        assert_eq!(r.body["error"]["type"], "card_error");
        assert_eq!(r.body["error"]["code"], code);
        assert_eq!(r.body["error"]["decline_code"], decline);
        assert_eq!(r.body["error"]["payment_intent"]["status"], "requires_payment_method");
        assert_eq!(r.body["error"]["payment_intent"]["last_payment_error"]["decline_code"], decline);
        let charge = r.body["error"]["charge"].as_str().unwrap();
        let ch = http.get(key, &format!("/v1/charges/{charge}"), &[("stripe-account", &acct)]).await.body;
        assert_eq!(ch["status"], "failed");
        assert_eq!(ch["outcome"]["reason"], decline);
        // The patient tries again with a good card.
        let ok = http
            .post(
                key,
                &format!("/v1/payment_intents/{id}/confirm"),
                &[("stripe-account", &acct)],
                "payment_method=pm_card_visa",
            )
            .await;
        assert_eq!(ok.status, 200, "{}", ok.text);
        assert_eq!(ok.body["status"], "succeeded");
        assert_eq!(ok.body["last_payment_error"], Value::Null);
    }

    // async-stripe parses the decline, embedded intent included.
    let client = stripe(&h);
    let pi = create_raw(&http, key, &acct, "amount=5000&currency=aud").await;
    let err = ConfirmPaymentIntent::new(pi["id"].as_str().unwrap())
        .payment_method("pm_card_visa_chargeDeclined")
        .customize()
        .account_id(acct.parse().unwrap())
        .send(&client)
        .await
        .unwrap_err();
    match err {
        stripe::StripeError::Stripe(e, 402) => {
            assert_eq!(e.decline_code.as_deref(), Some("generic_decline"));
            assert_eq!(e.payment_intent.unwrap().status, PaymentIntentStatus::RequiresPaymentMethod);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn three_d_secure_complete_and_fail() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let key = h.secret_key();
    let pk = h.publishable_key();
    for (outcome, status) in [("complete", "succeeded"), ("fail", "requires_payment_method")] {
        let pi = create_raw(&http, key, &acct, "amount=5000&currency=aud").await;
        let id = pi["id"].as_str().unwrap();
        let secret = pi["client_secret"].as_str().unwrap();
        // Stripe.js confirms with the publishable key and the client secret.
        let body = format!(
            "key={pk}&_stripe_account={acct}&client_secret={secret}&payment_method=pm_card_authenticationRequiredOnSetup&receipt_email=p%40example.com&return_url=http%3A%2F%2F127.0.0.1%2Fdone"
        );
        let r = http.send("POST", &format!("/v1/payment_intents/{id}/confirm"), &[], &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["status"], "requires_action");
        assert_eq!(r.body["next_action"]["type"], "redirect_to_url");
        let url = r.body["next_action"]["redirect_to_url"]["url"].as_str().unwrap();
        let path = &url[url.find("/3ds/").unwrap()..];
        let page = http.send("GET", path, &[], "").await;
        assert_eq!(page.status, 200);
        assert!(page.text.contains("Complete authentication") && page.text.contains("50.00 AUD"));
        let r = http
            .send(
                "POST",
                &format!("/_sim/3ds/{id}"),
                &[],
                &format!("key={pk}&_stripe_account={acct}&client_secret={secret}&outcome={outcome}"),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["status"], status);
        if outcome == "fail" {
            assert_eq!(r.body["last_payment_error"]["code"], "payment_intent_authentication_failure");
        } else {
            let ch = http
                .get(
                    key,
                    &format!("/v1/charges/{}", r.body["latest_charge"].as_str().unwrap()),
                    &[("stripe-account", &acct)],
                )
                .await;
            assert_eq!(ch.body["payment_method_details"]["card"]["three_d_secure"]["result"], "authenticated");
        }
    }
}

#[tokio::test]
async fn cancel_with_reason_and_only_while_unpaid() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let client = stripe(&h);
    let pi = create_raw(&http, h.secret_key(), &acct, "amount=5000&currency=aud").await;
    let canceled = CancelPaymentIntent::new(pi["id"].as_str().unwrap())
        .cancellation_reason(CancelPaymentIntentCancellationReason::RequestedByCustomer)
        .customize()
        .account_id(acct.parse().unwrap())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(canceled.status, PaymentIntentStatus::Canceled);
    assert!(canceled.canceled_at.is_some());
    let r = http
        .post(
            h.secret_key(),
            &format!("/v1/payment_intents/{}/confirm", pi["id"].as_str().unwrap()),
            &[("stripe-account", &acct)],
            "payment_method=pm_card_visa",
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "payment_intent_unexpected_state");

    let paid =
        create_raw(&http, h.secret_key(), &acct, "amount=5000&currency=aud&confirm=true&payment_method=pm_card_visa")
            .await;
    assert_eq!(paid["status"], "succeeded");
    let r = http
        .post(
            h.secret_key(),
            &format!("/v1/payment_intents/{}/cancel", paid["id"].as_str().unwrap()),
            &[("stripe-account", &acct)],
            "",
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "payment_intent_unexpected_state");
    let r = http
        .post(
            h.secret_key(),
            &format!("/v1/payment_intents/{}/cancel", paid["id"].as_str().unwrap()),
            &[("stripe-account", &acct)],
            "cancellation_reason=bored",
        )
        .await;
    assert_eq!(r.body["error"]["param"], "cancellation_reason");
}

#[tokio::test]
async fn amounts_and_currencies_are_validated_like_stripe() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let cases = [
        ("amount=49&currency=aud", "amount_too_small", "amount"),
        ("amount=100000000&currency=aud", "amount_too_large", "amount"),
        ("amount=12.5&currency=aud", "parameter_invalid_integer", "amount"),
        ("currency=aud", "parameter_missing", "amount"),
        ("amount=5000", "parameter_missing", "currency"),
    ];
    for (body, code, param) in cases {
        let r = http.post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.body["error"]["code"], code, "{body}");
        assert_eq!(r.body["error"]["param"], param, "{body}");
    }
    for bad in ["AUD", "xyz"] {
        let r = http
            .post(
                h.secret_key(),
                "/v1/payment_intents",
                &[("stripe-account", &acct)],
                &format!("amount=5000&currency={bad}"),
            )
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["param"], "currency");
    }
    // Boundaries are accepted; zero-decimal JPY takes whole yen.
    for body in
        ["amount=50&currency=aud", "amount=99999999&currency=aud", "amount=50&currency=jpy", "amount=30&currency=gbp"]
    {
        let r = http.post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text);
    }
    let r = http
        .post(h.secret_key(), "/v1/payment_intents", &[], "amount=5000&currency=aud&application_fee_amount=10")
        .await;
    assert_eq!(r.body["error"]["param"], "application_fee_amount", "fees need a connected account");
    let r = http
        .post(
            h.secret_key(),
            "/v1/payment_intents",
            &[("stripe-account", &acct)],
            "amount=5000&currency=aud&receipt_email=nope",
        )
        .await;
    assert_eq!(r.body["error"]["code"], "email_invalid");
}

#[tokio::test]
async fn list_pages_newest_first() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            create_raw(&http, h.secret_key(), &acct, &format!("amount={}&currency=aud", 5000 + i)).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let page = http.get(h.secret_key(), "/v1/payment_intents?limit=2", &[("stripe-account", &acct)]).await.body;
    assert_eq!(page["object"], "list");
    assert_eq!(page["data"][0]["id"], ids[2]);
    assert_eq!(page["has_more"], true);
    let next = http
        .get(
            h.secret_key(),
            &format!("/v1/payment_intents?limit=2&starting_after={}", ids[1]),
            &[("stripe-account", &acct)],
        )
        .await
        .body;
    assert_eq!(next["data"][0]["id"], ids[0]);
    assert_eq!(next["has_more"], false);
}

#[tokio::test]
async fn card_details_are_validated_when_stripe_js_makes_a_payment_method() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let pk = h.publishable_key();
    let post = |card: &str| {
        let body = format!("key={pk}&_stripe_account={acct}&type=card&{card}");
        let http = &http;
        async move { http.send("POST", "/v1/payment_methods", &[], &body).await }
    };
    let ok = post("card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2040&card[cvc]=123").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["card"]["last4"], "4242");
    assert!(
        ok.body.get("number").is_none() && !ok.text.contains("4242424242424242"),
        "the full number is never echoed"
    );
    let bad = post("card[number]=4242424242424241&card[exp_month]=12&card[exp_year]=2040&card[cvc]=123").await;
    assert_eq!((bad.status, bad.body["error"]["code"].as_str()), (402, Some("incorrect_number")));
    let bad = post("card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2001&card[cvc]=123").await;
    assert_eq!(bad.body["error"]["code"], "invalid_expiry_year");
    let bad = post("card[number]=4242424242424242&card[exp_month]=13&card[exp_year]=2040&card[cvc]=123").await;
    assert_eq!(bad.body["error"]["code"], "invalid_expiry_month");
    let bad = post("card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2040&card[cvc]=1").await;
    assert_eq!(bad.body["error"]["code"], "invalid_cvc");
}

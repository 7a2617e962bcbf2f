//! Refunds: partial, by charge, the rest, and the over-refund error.

use crate::helpers::*;
use stripe::StripeRequest;
use stripe_core::refund::CreateRefund;

#[tokio::test]
async fn partial_then_full_then_over_refund() {
    let h = sim().await;
    let http = Http::new(&h);
    let acct = account(&h, &http).await;
    let key = h.secret_key();
    let hdr = [("stripe-account", acct.as_str())];
    let pi = http
        .post(key, "/v1/payment_intents", &hdr, "amount=5000&currency=aud&confirm=true&payment_method=pm_card_visa")
        .await
        .body;
    let pi_id = pi["id"].as_str().unwrap();
    let charge = pi["latest_charge"].as_str().unwrap();

    let client = stripe(&h);
    let first = CreateRefund::new()
        .payment_intent(pi_id)
        .amount(2000)
        .customize()
        .account_id(acct.parse().unwrap())
        .send(&client)
        .await
        .expect("partial refund");
    assert_eq!(first.amount, 2000);
    assert_eq!(first.charge.as_ref().map(|c| c.id().as_str().to_owned()).as_deref(), Some(charge));

    let ch = http.get(key, &format!("/v1/charges/{charge}"), &hdr).await.body;
    assert_eq!(ch["amount_refunded"], 2000);
    assert_eq!(ch["refunded"], false);

    let over = http.post(key, "/v1/refunds", &hdr, &format!("charge={charge}&amount=3001")).await;
    assert_eq!(over.status, 400);
    assert_eq!(over.body["error"]["code"], "amount_too_large");
    assert_eq!(over.body["error"]["param"], "amount");
    assert!(over.body["error"]["message"].as_str().unwrap().contains("30.00 AUD"));

    let rest = http.post(key, "/v1/refunds", &hdr, &format!("charge={charge}")).await;
    assert_eq!(rest.status, 200, "{}", rest.text);
    assert_eq!(rest.body["amount"], 3000);
    let ch = http.get(key, &format!("/v1/charges/{charge}"), &hdr).await.body;
    assert_eq!((ch["amount_refunded"].as_i64(), ch["refunded"].as_bool()), (Some(5000), Some(true)));
    assert_eq!(ch["refunds"]["data"].as_array().unwrap().len(), 2);

    let again = http.post(key, "/v1/refunds", &hdr, &format!("payment_intent={pi_id}&amount=1")).await;
    assert_eq!(again.body["error"]["code"], "charge_already_refunded");

    let listed = http.get(key, &format!("/v1/refunds?payment_intent={pi_id}"), &hdr).await.body;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);

    // An unpaid intent has nothing to refund.
    let unpaid = http.post(key, "/v1/payment_intents", &hdr, "amount=5000&currency=aud").await.body;
    let r = http.post(key, "/v1/refunds", &hdr, &format!("payment_intent={}", unpaid["id"].as_str().unwrap())).await;
    assert_eq!(r.body["error"]["code"], "charge_not_refundable");
}

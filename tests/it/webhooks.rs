//! Stripe's webhook: signature checks, deduplication, out-of-order delivery, unknown payments.

use crate::helpers::*;
use serde_json::json;

async fn post_webhook(hub: &TestHub, payload: &str, signature: Option<&str>) -> (u16, serde_json::Value) {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(s) = signature {
        headers.push(("stripe-signature", s));
    }
    let (status, body, _) =
        hub.http.send("POST", &format!("{}/v1/stripe/webhook", hub.info.hub_url), &headers, payload.to_owned()).await;
    (status, body)
}

fn secret(hub: &TestHub) -> String {
    hub.state.config.stripe.webhook_secrets[0].expose().to_owned()
}

#[tokio::test]
async fn signatures_are_verified_on_the_raw_body() {
    let hub = TestHub::start().await;
    let payload = json!({"id": "evt_x", "object": "event", "api_version": null, "created": 1, "livemode": false, "pending_webhooks": 0, "request": null, "type": "payment_intent.created", "data": {"object": {"id": "pi_x", "object": "payment_intent"}}}).to_string();
    assert_eq!(post_webhook(&hub, &payload, None).await.0, 400);
    let wrong = sign_webhook(&payload, "whsec_wrong", None);
    let (status, body) = post_webhook(&hub, &payload, Some(&wrong)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_signature")));
    // A valid signature over different bytes fails.
    let good = sign_webhook(&payload, &secret(&hub), None);
    let tampered = payload.replace("pi_x", "pi_y");
    assert_eq!(post_webhook(&hub, &tampered, Some(&good)).await.0, 400);
    // A replay older than five minutes fails.
    let old = sign_webhook(&payload, &secret(&hub), Some(callpay::auth::now_secs() as i64 - 301));
    assert_eq!(post_webhook(&hub, &payload, Some(&old)).await.0, 400);
    let metrics = hub.http.send("GET", &format!("{}/metrics", hub.info.hub_url), &[], String::new()).await.2;
    assert!(metrics.contains("callpay_webhooks_rejected_total 4"), "{metrics}");
}

#[tokio::test]
async fn rotated_secrets_and_unknown_payments_are_answered_2xx() {
    let hub =
        TestHub::start_with(|c| c.stripe.webhook_secrets.push(callpay::config::Secret::new("whsec_next_secret"))).await;
    // A payment_intent.canceled for an intent the hub never created, signed with the second secret.
    let unknown = json!({
        "id": "evt_unknown_2", "object": "event", "api_version": "2026-09-30.endive", "created": 1_700_000_000,
        "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "type": "payment_intent.canceled", "account": "acct_someone_else",
        "data": {"object": hub_intent_json("pi_never_ours")}
    })
    .to_string();
    let sig = sign_webhook(&unknown, "whsec_next_secret", None);
    let (status, body) = post_webhook(&hub, &unknown, Some(&sig)).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("unknownpayment")), "{body}");
    let (status, body) = post_webhook(&hub, &unknown, Some(&sig)).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));
}

/// A minimal PaymentIntent as Stripe sends it, taken from the simulator so it parses.
fn hub_intent_json(id: &str) -> serde_json::Value {
    let mut pi = stripe_sim::objects::payment_intent(&stripe_sim::objects::NewPaymentIntent {
        amount: 5000,
        currency: "aud",
        description: None,
        receipt_email: None,
        metadata: json!({}),
        automatic_payment_methods: true,
        payment_method_types: vec!["card".into()],
        statement_descriptor_suffix: None,
        application_fee_amount: None,
        application: None,
    });
    pi["id"] = json!(id);
    pi["status"] = json!("canceled");
    pi
}

#[tokio::test]
async fn duplicated_and_out_of_order_webhooks_confirm_exactly_once() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("w1", 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    // Every event of the payment is delivered twice, and charge.succeeded is held back until
    // after payment_intent.succeeded.
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_duplicate": 10, "webhook_reorder": 1})).await;
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    let confirmed = doc.until("payment.confirmed").await;
    assert_eq!(confirmed["payment"]["card_last4"], "4242");
    // Wait until every delivery (duplicates included) was answered, then count.
    let sim = hub.sim.sim.clone();
    eventually(async || {
        let n = sim.with_world(|w| w.deliveries.iter().filter(|d| d.delivered).count());
        (n >= 4).then_some(())
    })
    .await;
    // Duplicates are counted as the hub answers them, which may trail the deliveries counted above.
    let metrics = hub.state.metrics.clone();
    eventually(async || (metrics.webhooks_duplicate.get() >= 2).then_some(())).await;
    // A fresh connection's snapshot is the paid payment; the old sockets got one confirmation.
    let fresh = hub.clinician().await;
    assert_eq!(fresh.welcome["payments"][0]["status"], "succeeded");
    drop(fresh);
    doc.request("w-after", 5000, "Marker").await;
    doc.until_where("payment.requested", |f| f["payment"]["client_ref"] == "w-after").await;
    let confirmations = doc.raw.iter().filter(|f| f.contains("\"payment.confirmed\"")).count();
    assert_eq!(confirmations, 1, "exactly one payment.confirmed");
    pat.until("payment.confirmed").await;
    pat.until_where("payment.requested", |f| f["payment"]["client_ref"] == "w-after").await;
    assert_eq!(pat.raw.iter().filter(|f| f.contains("\"payment.confirmed\"")).count(), 1);
}

#[tokio::test]
async fn a_late_failure_after_success_changes_nothing() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    doc.request("late", 5000, "Consult").await;
    let requested = doc.until("payment.requested").await;
    let pid = requested["payment"]["payment_id"].as_str().unwrap().to_owned();
    let pat = hub.patient().await;
    let payment = pat.welcome["payments"][0].clone();
    // Hold back the payment_failed event of a declined attempt until after the success.
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4000000000000002", "sam@example.com").await;
    assert_eq!(status, 402);
    doc.until_where("payment.updated", |f| f["payment"]["status"] == "failed").await;
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    doc.until("payment.confirmed").await;
    // Replay the failure event Stripe sent earlier, as a new delivery with a fresh signature.
    let failed_event = hub.sim.sim.with_world(|w| {
        w.accounts
            .values()
            .flat_map(|a| a.events.newest_first())
            .find(|e| e["type"] == "payment_intent.payment_failed")
            .cloned()
            .unwrap()
    });
    let mut late = failed_event.clone();
    late["id"] = json!("evt_late_failure");
    late["created"] = json!(callpay::auth::now_secs() + 5);
    let body = late.to_string();
    let sig = sign_webhook(&body, &secret(&hub), None);
    let (status, resp) = post_webhook(&hub, &body, Some(&sig)).await;
    assert_eq!((status, resp["outcome"].as_str()), (200, Some("nochange")));
    let stored = hub.state.store.payment(&pid).await.unwrap().unwrap();
    assert_eq!(stored.status, callpay_protocol::PaymentStatus::Succeeded);
}

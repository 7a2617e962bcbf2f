//! The in-call payment flow end to end: request, patient sees it, pays as Stripe.js would,
//! Stripe's signed webhook confirms, both sides hear it.

use crate::helpers::*;
use serde_json::{Value, json};

fn is_ref(r: &'static str) -> impl Fn(&Value) -> bool {
    move |f: &Value| f["payment"]["client_ref"] == r
}

#[tokio::test]
async fn request_pay_confirm_on_both_sides() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    assert_eq!(doc.welcome["protocol_version"], 1);
    assert_eq!(doc.welcome["clinic_name"], "Harbour Clinic");
    assert_eq!(doc.welcome["payments_available"], true);
    assert_eq!(pat.welcome["you"]["role"], "patient");
    doc.until_where("participant.joined", |f| f["participant"]["role"] == "patient").await;

    doc.request("r1", 5000, "Follow-up consultation").await;
    let requested = pat.until("payment.requested").await;
    let payment = &requested["payment"];
    assert_eq!(payment["amount"], 5000);
    assert_eq!(payment["currency"], "aud");
    assert_eq!(payment["status"], "requested");
    assert_eq!(payment["description"], "Follow-up consultation");
    assert_eq!(payment["requested_by"]["name"], "Dr Ada Lee");
    assert!(payment["stripe"]["client_secret"].as_str().unwrap().contains("_secret_"));
    let doc_copy = doc.until("payment.requested").await;
    assert!(doc_copy["payment"].get("stripe").is_none());
    assert_eq!(doc_copy["payment"]["payment_id"], payment["payment_id"]);

    pat.send(json!({"type": "payment.progress", "payment_id": payment["payment_id"], "stage": "entering_details"}))
        .await;
    let progress = doc.until("payment.progress").await;
    assert_eq!(progress["stage"], "entering_details");
    assert_eq!(progress["participant_id"], "patient-sam");

    let (status, pi) = pay_like_stripe_js(&hub, payment, "4242424242424242", "sam@example.com").await;
    assert_eq!((status, pi["status"].as_str()), (200, Some("succeeded")));

    for client in [&mut doc, &mut pat] {
        let confirmed = client.until("payment.confirmed").await;
        let p = &confirmed["payment"];
        assert_eq!(p["status"], "succeeded");
        assert_eq!(p["amount_received"], 5000);
        assert_eq!(p["card_brand"], "visa");
        assert_eq!(p["card_last4"], "4242");
        assert_eq!(p["receipt_email"], "s•••@example.com");
        assert!(p["paid_at"].as_i64().unwrap() > 0);
        assert_eq!(p["reference"], pi["id"]);
    }
    // Stripe's own record is a direct charge on the clinic's account, with our ids in metadata.
    let acct = payment["stripe"]["stripe_account"].as_str().unwrap();
    let (_, stored, _) = hub
        .http
        .send(
            "GET",
            &format!("{}/v1/payment_intents/{}", hub.info.stripe_url, pi["id"].as_str().unwrap()),
            &[("authorization", &format!("Bearer {}", hub.sim.secret_key())), ("stripe-account", acct)],
            String::new(),
        )
        .await;
    assert_eq!(stored["metadata"]["callpay_payment_id"], payment["payment_id"]);
    assert_eq!(stored["metadata"]["call_id"], hub.info.call_id.as_str());
    assert_eq!(stored["application"], hub.sim.client_id());
    assert_no_secret(&doc.raw);
    assert!(assert_hub_posts_are_idempotent(&hub).await >= 1);
    // The receipt e-mail went out.
    let receipts = hub.sim_control("GET", "/_sim/receipts", Value::Null).await;
    assert_eq!(receipts["data"][0]["to"], "sam@example.com");
}

#[tokio::test]
async fn three_d_secure_complete_and_fail() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    for (r, outcome) in [("3ds-ok", "complete"), ("3ds-bad", "fail")] {
        doc.request(r, 7000, "Consult").await;
        let payment = pat.until_where("payment.requested", is_ref(r)).await["payment"].clone();
        let (status, pi) = pay_like_stripe_js(&hub, &payment, "4000002500003155", "sam@example.com").await;
        assert_eq!((status, pi["status"].as_str()), (200, Some("requires_action")));
        let auth = doc
            .until_where("payment.updated", |f| {
                f["payment"]["client_ref"] == r && f["payment"]["status"] == "authenticating"
            })
            .await;
        assert_eq!(auth["payment"]["version"], 3);
        answer_3ds(&hub, &payment, outcome).await;
        if outcome == "complete" {
            doc.until_where("payment.confirmed", is_ref(r)).await;
            pat.until_where("payment.confirmed", is_ref(r)).await;
        } else {
            let failed = doc
                .until_where("payment.updated", |f| {
                    f["payment"]["client_ref"] == r && f["payment"]["status"] == "failed"
                })
                .await;
            assert_eq!(failed["payment"]["failure"]["code"], "payment_intent_authentication_failure");
        }
    }
    assert_no_secret(&doc.raw);
}

#[tokio::test]
async fn declined_card_then_a_good_one() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("d1", 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    let (status, body) = pay_like_stripe_js(&hub, &payment, "4000000000009995", "sam@example.com").await;
    assert_eq!(status, 402);
    assert_eq!(body["error"]["decline_code"], "insufficient_funds");
    let failed = pat.until_where("payment.updated", |f| f["payment"]["status"] == "failed").await;
    assert_eq!(failed["payment"]["failure"]["decline_code"], "insufficient_funds");
    assert_eq!(failed["payment"]["failure"]["message"], "Your card has insufficient funds.");
    assert!(failed["payment"]["stripe"]["client_secret"].is_string(), "the patient can still pay");
    doc.until_where("payment.updated", |f| f["payment"]["status"] == "failed").await;

    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    let confirmed = doc.until("payment.confirmed").await;
    assert!(confirmed["payment"].get("failure").is_none(), "the old failure is cleared");
    pat.until("payment.confirmed").await;
}

#[tokio::test]
async fn clinician_cancels_and_the_patient_can_no_longer_pay() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("c1", 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    doc.send(json!({"type": "payment.cancel", "payment_id": payment["payment_id"]})).await;
    let canceled = pat.until_where("payment.updated", |f| f["payment"]["status"] == "canceled").await;
    assert!(canceled["payment"].get("stripe").is_none(), "nothing to pay with after cancelling");
    doc.until_where("payment.updated", |f| f["payment"]["status"] == "canceled").await;
    let (status, body) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "payment_intent_unexpected_state");
    // Cancelling again, or a paid payment, is invalid_state.
    doc.send(json!({"type": "payment.cancel", "payment_id": payment["payment_id"]})).await;
    assert_eq!(doc.error_code().await, "invalid_state");
    assert_eq!(assert_hub_posts_are_idempotent(&hub).await, 2, "create and cancel, each keyed");
}

#[tokio::test]
async fn reconnecting_mid_payment_gets_a_whole_snapshot() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("m1", 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    // Both drop off; the patient pays on their phone meanwhile.
    pat.close().await;
    doc.close().await;
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    // The webhook lands while nobody is connected; the store has it, so the snapshot does.
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    let store = hub.state.store.clone();
    eventually(async || {
        store.payment(&id).await.unwrap().filter(|p| p.status == callpay_protocol::PaymentStatus::Succeeded)
    })
    .await;
    let mut doc = hub.clinician().await;
    assert_eq!(doc.welcome["payments"][0]["status"], "succeeded");
    let p = &doc.welcome["payments"][0];
    assert_eq!(p["card_last4"], "4242");
    assert!(p.get("stripe").is_none());
    let pat = hub.patient().await;
    assert_eq!(pat.welcome["payments"][0]["status"], "succeeded");
    assert_eq!(pat.welcome["payments"][0]["payment_id"], payment["payment_id"]);
    assert_eq!(doc.welcome["participants"].as_array().unwrap().len(), 1);
    doc.until("participant.joined").await;
    assert_no_secret(&doc.raw);
}

#[tokio::test]
async fn a_retried_request_with_the_same_client_ref_makes_one_payment() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    doc.request("same", 5000, "Consult").await;
    let first = doc.until("payment.requested").await;
    doc.request("same", 5000, "Consult").await;
    let again = doc.until("payment.updated").await;
    assert_eq!(again["payment"]["payment_id"], first["payment"]["payment_id"]);
    doc.request("same", 6000, "Consult").await;
    assert_eq!(doc.error_code().await, "invalid_client_ref");
    let mut doc2 = hub.clinician().await;
    assert_eq!(doc2.welcome["payments"].as_array().unwrap().len(), 1);
    let acct = first["payment"]["requested_by"].clone();
    assert_eq!(acct["id"], "clinician-ada");
    let list = hub.sim.sim.with_world(|w| w.accounts.values().map(|a| a.payment_intents.len()).sum::<usize>());
    assert_eq!(list, 1, "one PaymentIntent on Stripe");
    doc2.send(json!({"type": "payment.cancel", "payment_id": "pay_nope"})).await;
    assert_eq!(doc2.error_code().await, "unknown_payment");
}

#[tokio::test]
async fn refunds_made_on_stripe_reach_the_call() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("rf", 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    assert_eq!(pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await.0, 200);
    let confirmed = doc.until("payment.confirmed").await;
    let pi = confirmed["payment"]["reference"].as_str().unwrap().to_owned();
    let acct = payment["stripe"]["stripe_account"].as_str().unwrap().to_owned();
    // The clinic refunds from its Stripe dashboard: part, then the rest.
    let auth = format!("Bearer {}", hub.sim.secret_key());
    let refund = |amount: &'static str| {
        let (hub, pi, acct, auth) = (&hub, pi.clone(), acct.clone(), auth.clone());
        async move {
            let body = if amount.is_empty() {
                format!("payment_intent={pi}")
            } else {
                format!("payment_intent={pi}&amount={amount}")
            };
            let headers = [
                ("authorization", auth.as_str()),
                ("stripe-account", acct.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ];
            hub.http.send("POST", &format!("{}/v1/refunds", hub.info.stripe_url), &headers, body).await.0
        }
    };
    assert_eq!(refund("2000").await, 200);
    let part = doc.until_where("payment.updated", |f| f["payment"]["status"] == "partially_refunded").await;
    assert_eq!(part["payment"]["amount_refunded"], 2000);
    assert_eq!(refund("").await, 200);
    let full = pat.until_where("payment.updated", |f| f["payment"]["status"] == "refunded").await;
    assert_eq!(full["payment"]["amount_refunded"], 5000);
    assert_eq!(doc.raw.iter().filter(|f| f.contains("\"payment.confirmed\"")).count(), 1, "refunds do not re-confirm");
}

/// `/metrics` carries latency histograms of the paths people wait on, recorded by real traffic.
#[tokio::test]
async fn metrics_histograms_record_relays_webhooks_and_stripe_calls() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("m1", 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    let id = payment["payment_id"].as_str().unwrap();
    pat.send(serde_json::json!({"type": "payment.progress", "payment_id": id, "stage": "viewing"})).await;
    doc.until("payment.progress").await;
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    doc.until("payment.confirmed").await;
    let metrics = eventually(async || {
        let text = hub.http.send("GET", &format!("{}/metrics", hub.info.hub_url), &[], String::new()).await.2;
        let applied =
            text.lines().any(|l| l.starts_with("callpay_webhook_to_room_seconds_count ") && !l.ends_with(" 0"));
        applied.then_some(text)
    })
    .await;
    for line in [
        "callpay_relay_seconds_count 1",
        r#"callpay_stripe_request_seconds_count{operation="create_intent",outcome="ok"} 1"#,
        "# HELP callpay_ws_outbound_queue_depth",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

//! Every error code, and what happens to the frame that caused it: an `error` reply, the
//! socket stays open, nothing is stored or charged.

use crate::helpers::*;
use callpay_protocol::Role;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn req(client_ref: &str, amount: serde_json::Value, currency: &str, description: &str) -> serde_json::Value {
    json!({"type": "payment.request", "client_ref": client_ref, "amount": amount, "currency": currency, "description": description})
}

#[tokio::test]
async fn validation_codes_and_the_socket_survives() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let cases = [
        (req("a", json!(49), "aud", "x"), "invalid_amount"),
        (req("b", json!(1_000_001), "aud", "x"), "invalid_amount"),
        (req("c", json!(12.5), "aud", "x"), "invalid_amount"),
        (req("d", json!(-100), "aud", "x"), "invalid_amount"),
        (req("e", json!(5000), "usd", "x"), "invalid_currency"),
        (req("f", json!(5000), "AUD", "x"), "invalid_currency"),
        (req("g", json!(5000), "aud", ""), "invalid_description"),
        (req("h", json!(5000), "aud", &"x".repeat(201)), "invalid_description"),
        (req("i", json!(5000), "aud", "line\u{0}break"), "invalid_description"),
        (req("", json!(5000), "aud", "x"), "invalid_client_ref"),
        (json!({"type": "payment.teleport"}), "bad_frame"),
        (json!({"type": "payment.request", "amount": 5000}), "bad_frame"),
    ];
    for (frame, code) in cases {
        doc.send(frame.clone()).await;
        let err = doc.until("error").await;
        assert_eq!(err["code"], code, "{frame}");
        assert!(err["message"].as_str().unwrap().len() > 5);
    }
}

#[tokio::test]
async fn malformed_and_binary_frames_get_bad_frame() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    doc.send_raw(Message::Text("{not json".into())).await;
    assert_eq!(doc.error_code().await, "bad_frame");
    doc.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(doc.error_code().await, "bad_frame");
    // Still usable afterwards.
    doc.request("ok", 5000, "Consult").await;
    doc.until("payment.requested").await;
    let n = hub.state.store.payments_for_call(&hub.info.call_id).await.unwrap().len();
    assert_eq!(n, 1, "only the valid request was stored");
}

#[tokio::test]
async fn roles_are_enforced() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    pat.request("p1", 5000, "I'd like to pay myself").await;
    assert_eq!(pat.error_code().await, "forbidden");
    doc.request("r1", 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    pat.send(json!({"type": "payment.cancel", "payment_id": payment["payment_id"]})).await;
    assert_eq!(pat.error_code().await, "forbidden");
    doc.send(json!({"type": "payment.progress", "payment_id": payment["payment_id"], "stage": "viewing"})).await;
    assert_eq!(doc.error_code().await, "forbidden");
    pat.send(json!({"type": "payment.progress", "payment_id": "pay_other", "stage": "viewing"})).await;
    assert_eq!(pat.error_code().await, "unknown_payment");
    // A payment of another call is unknown here.
    let other = hub.token_for("another-call", "clinician-bo", Role::Clinician);
    let mut doc_b = Client::connect(&hub.ws_url("another-call", &other)).await;
    doc_b.send(json!({"type": "payment.cancel", "payment_id": payment["payment_id"]})).await;
    assert_eq!(doc_b.error_code().await, "unknown_payment");
    assert_eq!(doc_b.welcome["payments"].as_array().unwrap().len(), 0, "calls do not see each other's payments");
}

#[tokio::test]
async fn clinic_not_enabled_or_not_linked() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let clinic = hub.state.store.clinic(callpay::demo::DEMO_CLINIC).await.unwrap().unwrap();
    let account = clinic.stripe_account.clone();
    set_clinic(&hub, callpay::demo::DEMO_CLINIC, false, account.as_deref()).await;
    doc.request("x1", 5000, "Consult").await;
    assert_eq!(doc.error_code().await, "app_not_enabled");
    set_clinic(&hub, callpay::demo::DEMO_CLINIC, true, None).await;
    doc.request("x2", 5000, "Consult").await;
    assert_eq!(doc.error_code().await, "stripe_not_connected");
    let fresh = hub.clinician().await;
    assert_eq!(fresh.welcome["payments_available"], false);
    // Why, as a code the page words in its language (the clinician used to read "…clinic:" and nothing).
    assert_eq!(fresh.welcome["unavailable_reason"], "stripe_not_connected");
    assert!(doc.welcome.get("unavailable_reason").is_none(), "nothing to explain while available");
    // A call whose clinic the hub has never heard of is not enabled either.
    let token =
        callpay::demo::join_token(&hub.info.platform_secret, "call-z", "clinic_unknown", "doc", "Doc", Role::Clinician);
    let mut stranger = Client::connect(&hub.ws_url("call-z", &token)).await;
    assert_eq!(stranger.welcome["unavailable_reason"], "app_not_enabled");
    stranger.request("z", 5000, "Consult").await;
    assert_eq!(stranger.error_code().await, "app_not_enabled");
}

#[tokio::test]
async fn stripe_outage_then_retry_with_the_same_client_ref() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    // More failures than the hub's attempts: the request fails cleanly...
    hub.sim_control("POST", "/_sim/faults", json!({"api_errors": 2, "api_error_status": 503})).await;
    doc.request("out-1", 5000, "Consult").await;
    let err = doc.until("error").await;
    assert_eq!(err["code"], "stripe_unavailable");
    assert_eq!(err["ref"], "out-1");
    // ...the patient saw nothing, and the retry completes the same payment.
    doc.request("out-1", 5000, "Consult").await;
    let requested = pat.until("payment.requested").await;
    let payments = hub.state.store.payments_for_call(&hub.info.call_id).await.unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(requested["payment"]["payment_id"], payments[0].id.as_str());
    // Within the hub's attempts, a transient error is invisible to the clinician.
    hub.sim_control("POST", "/_sim/faults", json!({"api_errors": 1, "api_error_status": 500})).await;
    doc.request("out-2", 5000, "Consult").await;
    doc.until_where("payment.requested", |f| f["payment"]["client_ref"] == "out-2").await;
    let intents = hub.sim.sim.with_world(|w| w.accounts.values().map(|a| a.payment_intents.len()).sum::<usize>());
    assert_eq!(intents, 2, "retries reused the idempotency key: one intent per payment");
}

#[tokio::test]
async fn flooding_is_rate_limited() {
    let hub = TestHub::start_with(|c| {
        c.server.rate_burst = 3;
        c.server.rate_per_sec = 1;
    })
    .await;
    let mut pat = hub.patient().await;
    for _ in 0..6 {
        pat.send(json!({"type": "payment.progress", "payment_id": "pay_x", "stage": "viewing"})).await;
    }
    // Three within the burst are handled (unknown payment); the other three are dropped with
    // one coalesced rate_limited.
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(pat.error_code().await);
    }
    codes.sort();
    assert_eq!(codes, ["rate_limited", "unknown_payment", "unknown_payment", "unknown_payment"]);
}

/// The contract: room events have strictly increasing `seq`; an `error` repeats the latest
/// room event's `seq` and never advances it.
#[tokio::test]
async fn error_frames_repeat_the_latest_seq_and_never_advance_it() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    doc.request("s1", 5000, "Consult").await;
    let event = doc.until("payment.requested").await["seq"].as_u64().unwrap();
    doc.request("s2", 1, "Too little").await;
    let error = doc.until("error").await;
    assert_eq!(error["seq"].as_u64(), Some(event), "{error}");
    doc.request("s3", 5000, "Next").await;
    let next = doc.until("payment.requested").await["seq"].as_u64().unwrap();
    assert!(next > event, "{next} > {event}");
    let seqs: Vec<u64> = doc
        .raw
        .iter()
        .map(|f| serde_json::from_str::<serde_json::Value>(f).unwrap())
        .filter(|f| f["type"] != "error")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "room events strictly increase: {seqs:?}");
}

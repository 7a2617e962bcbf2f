//! Money is never wrong: a webhook counts only for the PaymentIntent the hub created, a success
//! for another amount or currency is refused, and same-second events settle on Stripe's truth.

use crate::helpers::*;
use serde_json::{Value, json};

/// Calls the simulator's API as the clinic's own Stripe user would (secret key on its account).
async fn as_clinic(hub: &TestHub, account: &str, path: &str, form: &str) -> Value {
    let (status, body, _) = hub
        .http
        .send(
            "POST",
            &format!("{}{path}", hub.info.stripe_url),
            &[
                ("authorization", &format!("Bearer {}", hub.sim.secret_key())),
                ("stripe-account", account),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            form.to_owned(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the simulator has delivered `event_type` for `pi` and the hub answered it.
async fn delivered(hub: &TestHub, event_type: &str, pi: &str) {
    let sim = hub.sim.sim.clone();
    let ids: Vec<String> = eventually(async || {
        let ids = sim.with_world(|w| {
            w.accounts
                .values()
                .flat_map(|a| a.events.newest_first())
                .filter(|e| e["type"] == event_type && e["data"]["object"]["id"] == pi)
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        });
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    eventually(async || {
        sim.with_world(|w| w.deliveries.iter().any(|d| ids.contains(&d.event_id) && d.status == Some(200)))
            .then_some(())
    })
    .await;
}

/// Requests `amount` and returns (clinician, patient, the patient's copy of the payment).
async fn requested(hub: &TestHub, client_ref: &str, amount: i64) -> (Client, Client, Value) {
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request(client_ref, amount, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    (doc, pat, payment)
}

fn intent_id(payment: &Value) -> String {
    payment["stripe"]["client_secret"].as_str().unwrap().split("_secret_").next().unwrap().to_owned()
}

async fn assert_not_confirmed(hub: &TestHub, doc: &mut Client, payment: &Value) {
    let id = payment["payment_id"].as_str().unwrap();
    let stored = hub.state.store.payment(id).await.unwrap().unwrap();
    assert_eq!(stored.status, callpay_protocol::PaymentStatus::Requested, "the request stays unpaid");
    // A marker round trip proves nothing else reached the clinician before it.
    doc.request("marker", 5000, "Marker").await;
    doc.until_where("payment.requested", |f| f["payment"]["client_ref"] == "marker").await;
    assert!(!doc.raw.iter().any(|f| f.contains("\"payment.confirmed\"")), "no confirmation was shown");
}

async fn audit_actions(hub: &TestHub) -> Vec<String> {
    let rows = hub.state.store.audit_for_clinic(callpay::demo::DEMO_CLINIC, 100, None, true).await.unwrap();
    rows.into_iter().map(|r| format!("{} {}", r.action, r.outcome)).collect()
}

#[tokio::test]
async fn another_intent_carrying_our_metadata_cannot_pay_the_request() {
    let hub = TestHub::start().await;
    let (mut doc, _pat, payment) = requested(&hub, "m1", 5000).await;
    let account = payment["stripe"]["stripe_account"].as_str().unwrap().to_owned();
    let pid = payment["payment_id"].as_str().unwrap();
    // Someone with access to the clinic's Stripe account pays 0.60 AUD on a PaymentIntent of
    // their own that carries the request's metadata.
    let forged = as_clinic(
        &hub,
        &account,
        "/v1/payment_intents",
        &format!(
            "amount=60&currency=aud&payment_method_types[]=card&metadata[callpay_payment_id]={pid}&payment_method=pm_card_visa&confirm=true"
        ),
    )
    .await;
    assert_eq!(forged["status"], "succeeded");
    delivered(&hub, "payment_intent.succeeded", forged["id"].as_str().unwrap()).await;
    assert_not_confirmed(&hub, &mut doc, &payment).await;
}

#[tokio::test]
async fn a_success_for_another_amount_is_refused_recorded_and_audited() {
    let hub = TestHub::start().await;
    let (mut doc, _pat, payment) = requested(&hub, "m2", 5000).await;
    let account = payment["stripe"]["stripe_account"].as_str().unwrap().to_owned();
    let pi = intent_id(&payment);
    // The request's own PaymentIntent is re-priced to 0.55 AUD on Stripe before the patient pays.
    as_clinic(&hub, &account, &format!("/v1/payment_intents/{pi}"), "amount=55").await;
    let (status, _) = pay_like_stripe_js(&hub, &payment, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    delivered(&hub, "payment_intent.succeeded", &pi).await;
    assert_not_confirmed(&hub, &mut doc, &payment).await;
    let actions = audit_actions(&hub).await;
    assert!(actions.iter().any(|a| a == "payment.amount_mismatch refused"), "{actions:?}");
}

/// Posts a copy of one of the simulator's real events under a new id and `created` second.
async fn replay(hub: &TestHub, event: &Value, id: &str, created: u64) -> Value {
    let mut e = event.clone();
    e["id"] = json!(id);
    e["created"] = json!(created);
    let body = e.to_string();
    let secret = hub.state.config.stripe.webhook_secrets[0].expose().to_owned();
    let sig = sign_webhook(&body, &secret, None);
    let (status, resp, _) = hub
        .http
        .send(
            "POST",
            &format!("{}/v1/stripe/webhook", hub.info.hub_url),
            &[("content-type", "application/json"), ("stripe-signature", &sig)],
            body,
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    resp
}

fn newest_event(hub: &TestHub, event_type: &str, pi: &str) -> Value {
    hub.sim.sim.with_world(|w| {
        w.accounts
            .values()
            .flat_map(|a| a.events.newest_first())
            .find(|e| e["type"] == event_type && e["data"]["object"]["id"] == pi)
            .cloned()
            .unwrap_or_else(|| panic!("no {event_type} for {pi}"))
    })
}

/// Waits until every event the simulator sent so far was answered 2xx by the hub.
async fn settled(hub: &TestHub) {
    let sim = hub.sim.sim.clone();
    eventually(async || {
        sim.with_world(|w| {
            w.deliveries
                .iter()
                .all(|d| d.delivered || w.deliveries.iter().any(|o| o.event_id == d.event_id && o.delivered))
        })
        .then_some(())
    })
    .await;
}

/// Drives a payment on the simulator through a 3-D Secure attempt and a declined one, in the
/// order given, so the PaymentIntent's real status is the last step's, and lets the hub apply
/// the real events. Returns the hub's payment id and the two real events.
async fn same_second(hub: &TestHub, client_ref: &str, fail_last: bool) -> (String, Value, Value) {
    let (_doc, _pat, payment) = requested(hub, client_ref, 5000).await;
    let pi = intent_id(&payment);
    if fail_last {
        // 3-D Secure asked, then the patient failed it: the truth is requires_payment_method.
        let (status, _) = pay_like_stripe_js(hub, &payment, "4000002500003155", "sam@example.com").await;
        assert_eq!(status, 200);
        answer_3ds(hub, &payment, "fail").await;
    } else {
        // A decline, then a retry that asks for 3-D Secure: the truth is requires_action.
        let (status, _) = pay_like_stripe_js(hub, &payment, "4000000000000002", "sam@example.com").await;
        assert_eq!(status, 402);
        let (status, _) = pay_like_stripe_js(hub, &payment, "4000002500003155", "sam@example.com").await;
        assert_eq!(status, 200);
    }
    settled(hub).await;
    let action = newest_event(hub, "payment_intent.requires_action", &pi);
    let failed = newest_event(hub, "payment_intent.payment_failed", &pi);
    (payment["payment_id"].as_str().unwrap().to_owned(), action, failed)
}

#[tokio::test]
async fn same_second_events_settle_on_stripes_status_in_either_order() {
    use callpay_protocol::PaymentStatus as S;
    let hub = TestHub::start().await;
    // A second later than any real event, so the first replay applies and the second ties.
    let second = callpay::auth::now_secs() + 100;
    for (n, (fail_last, reversed)) in
        [(true, false), (true, true), (false, false), (false, true)].into_iter().enumerate()
    {
        let (pid, action, failed) = same_second(&hub, &format!("ss{n}"), fail_last).await;
        let (a, b) = if reversed { (&failed, &action) } else { (&action, &failed) };
        replay(&hub, a, &format!("evt_ss{n}_a"), second).await;
        replay(&hub, b, &format!("evt_ss{n}_b"), second).await;
        let stored = hub.state.store.payment(&pid).await.unwrap().unwrap();
        let truth = if fail_last { S::Failed } else { S::Authenticating };
        assert_eq!(stored.status, truth, "fail_last={fail_last} reversed={reversed}");
    }
}

//! Every object kind the simulator returns carries every field of Stripe's example object for
//! that resource, and async-stripe's generated types deserialize it.

use crate::helpers::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const FIELDS: &str = include_str!("../data/fixture-fields.json");

/// Paths in `fixture` the simulator must have, the way `fixture-fields.json` was made.
fn paths(v: &Value, prefix: &str, kind: &str, out: &mut Vec<String>) {
    let Some(map) = v.as_object() else { return };
    for (k, x) in map {
        let p = format!("{prefix}{k}");
        out.push(p.clone());
        if k == "metadata" || (kind == "event" && p == "data.object") {
            continue;
        }
        if x.is_object() {
            paths(x, &format!("{p}."), kind, out);
        }
    }
}

/// The missing paths: a path counts as present when the object has it, or when an ancestor is
/// null (Stripe nulls a whole sub-object that does not apply, e.g. `three_d_secure`).
fn missing(object: &Value, required: &[String]) -> Vec<String> {
    required
        .iter()
        .filter(|path| {
            let mut cur = object;
            for part in path.split('.') {
                if cur.is_null() {
                    return false;
                }
                match cur.get(part) {
                    Some(next) => cur = next,
                    None => return true,
                }
            }
            false
        })
        .cloned()
        .collect()
}

#[test]
fn checked_in_field_list_matches_the_shared_fixtures_when_present() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/stripe/fixtures3.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("{path} not present: relying on the checked-in field list");
        return;
    };
    let fixtures: Value = serde_json::from_str(&text).unwrap();
    let ours: BTreeMap<String, Vec<String>> = serde_json::from_str(FIELDS).unwrap();
    for (kind, listed) in &ours {
        let mut from_fixture = Vec::new();
        paths(&fixtures["resources"][kind], "", kind, &mut from_fixture);
        from_fixture.sort();
        assert_eq!(&from_fixture, listed, "{kind} fields drifted from the fixture file");
    }
}

#[tokio::test]
async fn every_object_kind_has_the_fixture_fields_and_parses_with_async_stripe() {
    let h = sim().await;
    let http = Http::new(&h);
    let (mut hook, secret) = Receiver::start("").await;
    let endpoint = http
        .post(
            h.secret_key(),
            "/v1/webhook_endpoints",
            &[],
            &format!("url={}&enabled_events[]=*&connect=true&description=hub", urlencode(&hook.url)),
        )
        .await
        .body;
    *secret.lock().unwrap() = endpoint["secret"].as_str().unwrap().to_owned();
    let acct = account(&h, &http).await;
    let hdr = [("stripe-account", acct.as_str())];
    let key = h.secret_key();
    let pm = http
        .send("POST", "/v1/payment_methods", &[], &format!("key={}&_stripe_account={acct}&type=card&card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2040&card[cvc]=123", h.publishable_key()))
        .await
        .body;
    let pi = http
        .post(key, "/v1/payment_intents", &hdr, &format!("amount=5000&currency=aud&description=Consult&receipt_email=p%40e.co&metadata[call_id]=c1&confirm=true&payment_method={}", pm["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(pi["status"], "succeeded");
    let charge = http.get(key, &format!("/v1/charges/{}", pi["latest_charge"].as_str().unwrap()), &hdr).await.body;
    let declined = http
        .post(
            key,
            "/v1/payment_intents",
            &hdr,
            "amount=5000&currency=aud&confirm=true&payment_method=pm_card_visa_chargeDeclined",
        )
        .await
        .body;
    let failed_charge =
        http.get(key, &format!("/v1/charges/{}", declined["error"]["charge"].as_str().unwrap()), &hdr).await.body;
    let refund = http
        .post(
            key,
            "/v1/refunds",
            &hdr,
            &format!("payment_intent={}&amount=100&reason=requested_by_customer", pi["id"].as_str().unwrap()),
        )
        .await
        .body;
    let account_obj = http.get(key, &format!("/v1/accounts/{acct}"), &[]).await.body;
    let event = hook.next().await.raw;
    http.post(key, "/oauth/deauthorize", &[], &format!("client_id={}&stripe_user_id={acct}", h.client_id())).await;
    let (deauth, _) = hook.until("account.application.deauthorized").await;
    let application = deauth.raw["data"]["object"].clone();

    let required: BTreeMap<String, Vec<String>> = serde_json::from_str(FIELDS).unwrap();
    let objects = [
        ("payment_intent", &pi),
        ("charge", &charge),
        ("charge", &failed_charge),
        ("refund", &refund),
        ("event", &event),
        ("account", &account_obj),
        ("webhook_endpoint", &endpoint),
        ("payment_method", &pm),
        ("application", &application),
    ];
    for (kind, object) in objects {
        assert_eq!(object["object"], json!(kind), "{object}");
        let gaps = missing(object, &required[kind]);
        assert!(gaps.is_empty(), "{kind} lacks fixture fields {gaps:?}");
    }

    // async-stripe's types take each of them.
    serde_json::from_value::<stripe_shared::PaymentIntent>(pi.clone()).expect("PaymentIntent");
    serde_json::from_value::<stripe_shared::Charge>(charge.clone()).expect("Charge");
    serde_json::from_value::<stripe_shared::Charge>(failed_charge.clone()).expect("failed Charge");
    serde_json::from_value::<stripe_shared::Refund>(refund.clone()).expect("Refund");
    serde_json::from_value::<stripe_shared::Account>(account_obj.clone()).expect("Account");
    serde_json::from_value::<stripe_shared::PaymentMethod>(pm.clone()).expect("PaymentMethod");
    serde_json::from_value::<stripe_shared::Application>(application.clone()).expect("Application");
    serde_json::from_value::<stripe_misc::WebhookEndpoint>(endpoint.clone()).expect("WebhookEndpoint");
    // Events as a webhook handler parses them (data.object typed by the event type).
    let payload = event.to_string();
    let header = stripe_webhook::Webhook::generate_test_header(&payload, "whsec_t", None);
    let parsed = stripe_webhook::Webhook::construct_event(&payload, &header, "whsec_t").expect("Event");
    assert!(matches!(parsed.data.object, stripe_webhook::EventObject::PaymentIntentCreated(_)));
    // And through the client, which parses with miniserde rather than serde.
    let client = stripe(&h);
    let list = stripe_core::event::ListEvent::new().send(&client).await;
    assert!(list.is_ok(), "platform events list parses: {list:?}");
}

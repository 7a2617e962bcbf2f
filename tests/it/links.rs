//! Pay by link: the clinician's link to an unpaid request, paid outside the call as Stripe.js
//! would (the same PaymentIntent, never a second charge), the confirmation reaching the
//! clinician's panel once; and each way a link leads nowhere: altered, expired, cancelled,
//! already paid, a clinic that no longer takes the payment. Plus who may make links, and the
//! patient's language for the receipt.

use crate::helpers::*;
use callpay::payments::link::LinkKey;
use callpay_protocol::Role;
use serde_json::{Value, json};

impl TestHub {
    /// `POST …/link` with `token` (a join token); (status, body).
    async fn make_link(&self, call_id: &str, payment_id: &str, token: &str) -> (u16, Value) {
        let url = format!("{}/v1/calls/{call_id}/payments/{payment_id}/link", self.info.hub_url);
        let (s, v, _) =
            self.http.send("POST", &url, &[("authorization", &format!("Bearer {token}"))], String::new()).await;
        (s, v)
    }

    /// The clinician's link to `payment_id` in the demo call: its token.
    async fn link_token(&self, payment_id: &str) -> String {
        let (s, v) = self.make_link(&self.info.call_id, payment_id, &self.info.clinician_token).await;
        assert_eq!(s, 201, "{v}");
        let url = v["url"].as_str().unwrap();
        url.split_once("#link=").expect("the token is in the fragment").1.to_owned()
    }

    /// A call to the link API with the link token as the bearer; (status, body).
    async fn link_api(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let url = format!("{}{path}", self.info.hub_url);
        let (s, v, _) = self.http.send(method, &url, &headers, body.map(|b| b.to_string()).unwrap_or_default()).await;
        (s, v)
    }

    async fn open_link(&self, token: &str) -> (u16, Value) {
        self.link_api("GET", "/v1/pay-link", token, None).await
    }

    /// PaymentIntents the hub asked Stripe to create.
    async fn intents_created(&self) -> usize {
        let log = self.sim_control("GET", "/_sim/requests", Value::Null).await;
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["secret_key"] == true && r["method"] == "POST" && r["path"] == "/v1/payment_intents")
            .count()
    }
}

/// The clinician requests `amount`; answers the clinician's copy of the payment.
async fn requested(doc: &mut Client, client_ref: &'static str, amount: i64, description: &str) -> Value {
    doc.request(client_ref, amount, description).await;
    doc.until_where("payment.requested", move |f| f["payment"]["client_ref"] == client_ref).await["payment"].clone()
}

#[tokio::test]
async fn a_link_pays_the_same_intent_outside_the_call_and_the_clinician_hears_it_once() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let p = requested(&mut doc, "r1", 5000, "Follow-up consultation").await;
    let pid = p["payment_id"].as_str().unwrap();

    let (s, made) = hub.make_link(&hub.info.call_id, pid, &hub.info.clinician_token).await;
    assert_eq!(s, 201, "{made}");
    let url = made["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/pay#link=", hub.info.hub_url)), "{url}");
    let expires = made["expires_at"].as_i64().unwrap();
    let now = callpay::auth::now_secs() as i64;
    assert!((expires - now - 72 * 3600).abs() < 60, "72 hours by default: {expires} vs {now}");
    // No personal data in clear: no names, clinic, call, amount or description.
    let token = url.split_once("#link=").unwrap().1;
    for private in ["Ada", "Lee", "Harbour", "Sam", hub.info.call_id.as_str(), "5000", "50.00", "Follow", "clinic_demo"]
    {
        assert!(!token.contains(private), "{private} in {token}");
    }

    let (s, view) = hub.open_link(token).await;
    assert_eq!(s, 200, "{view}");
    assert_eq!(view["state"], "payable");
    assert_eq!(view["clinic_name"], "Harbour Clinic");
    assert_eq!(view["payment"]["payment_id"], pid);
    assert_eq!(view["payment"]["amount"], 5000);
    assert_eq!(view["payment"]["reference"], p["reference"], "the request's own PaymentIntent");
    assert!(view["payment"]["stripe"]["client_secret"].as_str().unwrap().contains("_secret_"));

    let (s, _) = hub.link_api("PUT", "/v1/pay-link/language", token, Some(json!({"lang": "bn"}))).await;
    assert_eq!(s, 204);
    assert_eq!(hub.state.store.payment_lang(pid).await.unwrap().as_deref(), Some("bn"));
    let (s, bad) = hub.link_api("PUT", "/v1/pay-link/language", token, Some(json!({"lang": "fr"}))).await;
    assert_eq!((s, bad["code"].as_str()), (400, Some("invalid_lang")));

    // No webhook reaches the hub (the sweep's first check is 20 s away), so only the read that
    // `submitted` makes can tell the hub, and the answer, that the payment went through.
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_drop_all": true})).await;
    let (s, pi) =
        pay_on_sim(&hub.http, &hub.info.stripe_url, &view["payment"], "4242424242424242", "sam@example.com").await;
    assert_eq!((s, pi["status"].as_str()), (200, Some("succeeded")), "{pi}");
    let (s, before) = hub.open_link(token).await;
    assert_eq!((s, before["state"].as_str()), (200, Some("payable")), "the hub has not heard yet: {before}");
    let (s, after) = hub.link_api("POST", "/v1/pay-link/submitted", token, None).await;
    assert_eq!(s, 200, "{after}");
    assert_eq!(after["state"], "paid", "the hub read the PaymentIntent when the page said it finished: {after}");
    assert_eq!(after["payment"]["receipt_email"], "s•••@example.com");

    // The clinician's panel hears it once, through the room's usual payment.confirmed.
    let confirmed = doc.until("payment.confirmed").await;
    assert_eq!(confirmed["payment"]["payment_id"], pid);
    doc.drain_for(std::time::Duration::from_millis(500)).await;
    assert_eq!(doc.count("payment.confirmed", pid), 1);

    // Opened again: paid, and nothing to pay with.
    let (s, again) = hub.open_link(token).await;
    assert_eq!((s, again["state"].as_str()), (200, Some("paid")), "{again}");
    assert!(again["payment"]["stripe"].is_null(), "no client secret once paid: {again}");
    // Paying the same intent again (a second tab kept the old form) is refused by Stripe, and
    // no new link or intent comes of it.
    let (s, twice) =
        pay_on_sim(&hub.http, &hub.info.stripe_url, &view["payment"], "4242424242424242", "sam@example.com").await;
    assert_eq!(s, 400, "{twice}");
    assert_eq!(twice["error"]["code"], "payment_intent_unexpected_state");
    let (s, refused) = hub.make_link(&hub.info.call_id, pid, &hub.info.clinician_token).await;
    assert_eq!((s, refused["code"].as_str()), (409, Some("not_payable")), "{refused}");
    assert_eq!(hub.intents_created().await, 1, "one PaymentIntent, one charge");
    assert_hub_posts_are_idempotent(&hub).await;
    let (_, stored) = (0, hub.state.store.payment(pid).await.unwrap().unwrap());
    assert_eq!(stored.status, callpay_protocol::PaymentStatus::Succeeded);
    assert_eq!(stored.amount_received, Some(5000));
}

#[tokio::test]
async fn a_link_paid_in_the_call_meanwhile_says_already_paid() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    let p = requested(&mut doc, "r1", 2500, "Letter").await;
    let pid = p["payment_id"].as_str().unwrap();
    let token = hub.link_token(pid).await;
    let in_call = pat.until("payment.requested").await;
    let (s, _) = pay_like_stripe_js(&hub, &in_call["payment"], "4242424242424242", "sam@example.com").await;
    assert_eq!(s, 200);
    doc.until("payment.confirmed").await;
    let (s, view) = hub.open_link(&token).await;
    assert_eq!((s, view["state"].as_str()), (200, Some("paid")), "{view}");
    assert_eq!(view["payment"]["amount_received"], 2500);
    assert_eq!(hub.intents_created().await, 1);
}

#[tokio::test]
async fn a_changed_or_made_up_link_is_refused_as_not_valid() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let p = requested(&mut doc, "r1", 5000, "Consult").await;
    let other = requested(&mut doc, "r2", 100, "Other").await;
    let token = hub.link_token(p["payment_id"].as_str().unwrap()).await;
    let (id, rest) = token.split_once('.').unwrap();
    let (exp, sig) = rest.split_once('.').unwrap();
    let later = (exp.parse::<i64>().unwrap() + 86_400).to_string();
    let flipped: String = sig.chars().rev().collect();
    let cases = [
        ("another payment's id", format!("{}.{rest}", other["payment_id"].as_str().unwrap())),
        ("a later expiry", format!("{id}.{later}.{sig}")),
        ("a changed signature", format!("{id}.{exp}.{flipped}")),
        ("a cut signature", format!("{id}.{exp}.{}", &sig[..10])),
        ("no signature", format!("{id}.{exp}")),
        ("made up", "pay_x.1999999999.00".to_owned()),
        ("a signed link to no payment", hub.key().sign("pay_nosuch", 1_999_999_999)),
        ("another key's", LinkKey::new(b"not the hub's key, not the hub's key").sign(id, 1_999_999_999)),
    ];
    for (what, bad) in cases {
        let (s, v) = hub.open_link(&bad).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("link_invalid")), "{what}: {v}");
        assert!(v.get("payment").is_none(), "{what}: nothing of the payment: {v}");
        let (s, v) = hub.link_api("POST", "/v1/pay-link/submitted", &bad, None).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("link_invalid")), "{what}");
    }
    let (s, _, _) = hub.http.send("GET", &format!("{}/v1/pay-link", hub.info.hub_url), &[], String::new()).await;
    assert_eq!(s, 401, "no link at all");
    // The real one still works.
    assert_eq!(hub.open_link(&token).await.0, 200);
}

impl TestHub {
    /// The hub's own link key, as its configuration gives it.
    fn key(&self) -> LinkKey {
        LinkKey::from_config(&self.state.config.links, &self.state.config.auth).expect("the demo has a link key")
    }
}

#[tokio::test]
async fn an_expired_link_says_so_and_a_paid_one_says_paid_however_old() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let p = requested(&mut doc, "r1", 5000, "Consult").await;
    let pid = p["payment_id"].as_str().unwrap();
    let now = callpay::auth::now_secs() as i64;
    let expired = hub.key().sign(pid, now - 1);
    let (s, v) = hub.open_link(&expired).await;
    assert_eq!((s, v["code"].as_str()), (410, Some("link_expired")), "{v}");
    assert!(v.get("payment").is_none());
    let (s, _) = hub.link_api("PUT", "/v1/pay-link/language", &expired, Some(json!({"lang": "en"}))).await;
    assert_eq!(s, 410, "an expired link changes nothing");
    // A link set to expire shortly after it is made (links.ttl_hours is in hours; made here
    // with the hub's key) works until then.
    let (s, v) = hub.open_link(&hub.key().sign(pid, now + 60)).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("payable")), "{v}");
    // Paid through a fresh link, the expired one answers "paid".
    let (_, view) = hub.open_link(&hub.link_token(pid).await).await;
    let (s, _) =
        pay_on_sim(&hub.http, &hub.info.stripe_url, &view["payment"], "4242424242424242", "a@example.com").await;
    assert_eq!(s, 200);
    doc.until("payment.confirmed").await;
    let (s, v) = hub.open_link(&expired).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("paid")), "{v}");
}

#[tokio::test]
async fn a_cancelled_requests_link_says_cancelled() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let p = requested(&mut doc, "r1", 5000, "Consult").await;
    let pid = p["payment_id"].as_str().unwrap();
    let token = hub.link_token(pid).await;
    doc.send(json!({"type": "payment.cancel", "payment_id": pid})).await;
    doc.until_where("payment.updated", |f| f["payment"]["status"] == "canceled").await;
    let (s, v) = hub.open_link(&token).await;
    assert_eq!((s, v["code"].as_str()), (410, Some("link_canceled")), "{v}");
    assert!(v.get("payment").is_none());
    let (s, v) = hub.make_link(&hub.info.call_id, pid, &hub.info.clinician_token).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("not_payable")));
}

#[tokio::test]
async fn a_link_whose_clinic_no_longer_takes_the_payment_says_so() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let p = requested(&mut doc, "r1", 5000, "Consult").await;
    let pid = p["payment_id"].as_str().unwrap();
    let token = hub.link_token(pid).await;
    let account = hub.state.store.clinic(callpay::demo::DEMO_CLINIC).await.unwrap().unwrap().stripe_account.unwrap();
    // The app turned off; the Stripe account removed; the clinic re-linked to another account
    // (the payment's PaymentIntent lives on the old one): each is another clinic's link now.
    for (what, enabled, linked) in [
        ("app disabled", false, Some(account.as_str())),
        ("unlinked", true, None),
        ("another account", true, Some("acct_other")),
    ] {
        set_clinic(&hub, callpay::demo::DEMO_CLINIC, enabled, linked).await;
        let (s, v) = hub.open_link(&token).await;
        assert_eq!((s, v["code"].as_str()), (409, Some("clinic_unavailable")), "{what}: {v}");
        assert!(v.get("payment").is_none(), "{what}");
        let (s, v) = hub.make_link(&hub.info.call_id, pid, &hub.info.clinician_token).await;
        assert_eq!((s, v["code"].as_str()), (409, Some("clinic_unavailable")), "{what}: {v}");
    }
    set_clinic(&hub, callpay::demo::DEMO_CLINIC, true, Some(&account)).await;
    let (s, v) = hub.open_link(&token).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("payable")), "back on its account: {v}");
}

#[tokio::test]
async fn only_the_calls_clinician_makes_links() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let p = requested(&mut doc, "r1", 5000, "Consult").await;
    let pid = p["payment_id"].as_str().unwrap();
    let call = hub.info.call_id.clone();
    let (s, v) = hub.make_link(&call, pid, &hub.info.patient_token).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "a patient: {v}");
    let elsewhere = hub.token_for("call-elsewhere", "clinician-ada", Role::Clinician);
    assert_eq!(hub.make_link(&call, pid, &elsewhere).await.0, 401, "a token for another call");
    let (s, v) = hub.make_link("call-elsewhere", pid, &elsewhere).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")), "another call's payment: {v}");
    assert_eq!(hub.make_link(&call, "pay_nosuch", &hub.info.clinician_token).await.0, 404);
    assert_eq!(hub.make_link(&call, pid, "not-a-token").await.0, 401);
    // The link made is in the audit log (the payment's history), without the token.
    let token = hub.link_token(pid).await;
    let records = hub.state.store.audit_for_target(callpay::demo::DEMO_CLINIC, pid, 50).await.unwrap();
    let made = records.iter().find(|r| r.action == "payment.link_created").expect("audited");
    assert_eq!(made.actor_id, "clinician-ada");
    assert!(!made.detail.as_deref().unwrap_or_default().contains(token.rsplit('.').next().unwrap()));
}

#[tokio::test]
async fn the_patient_in_the_call_says_which_language_they_pay_in() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let p = requested(&mut doc, "r1", 5000, "Consult").await;
    let pid = p["payment_id"].as_str().unwrap();
    let url = format!("{}/v1/calls/{}/payments/{pid}/language", hub.info.hub_url, hub.info.call_id);
    let put = |token: String, lang: &'static str| {
        let (hub, url) = (&hub, url.clone());
        async move {
            let auth = format!("Bearer {token}");
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            hub.http.send("PUT", &url, &headers, json!({"lang": lang}).to_string()).await.0
        }
    };
    assert_eq!(put(hub.info.patient_token.clone(), "bn").await, 204);
    assert_eq!(hub.state.store.payment_lang(pid).await.unwrap().as_deref(), Some("bn"));
    assert_eq!(put(hub.info.clinician_token.clone(), "en").await, 403, "the clinician does not choose it");
    assert_eq!(put(hub.info.patient_token.clone(), "xx").await, 400);
    assert_eq!(hub.state.store.payment_lang(pid).await.unwrap().as_deref(), Some("bn"), "bad input changed nothing");
}

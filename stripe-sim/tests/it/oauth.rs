//! Connect OAuth for Standard accounts: authorize page, decision, code exchange, deauthorize.

use crate::helpers::*;
use std::collections::HashMap;

fn query_of(location: &str) -> HashMap<String, String> {
    let q = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

#[tokio::test]
async fn authorize_exchange_reuse_deny_and_deauthorize() {
    let h = sim().await;
    let http = Http::new(&h);
    let (mut hook, secret) = Receiver::start("").await;
    *secret.lock().unwrap() = connect_endpoint(&h, &http, &hook.url).await;
    let redirect = "http://127.0.0.1:9/v1/stripe/oauth/callback";
    let page = http
        .send(
            "GET",
            &format!(
                "/oauth/authorize?response_type=code&client_id={}&scope=read_write&state=st%3Cx&redirect_uri={}",
                h.client_id(),
                urlencode(redirect)
            ),
            &[],
            "",
        )
        .await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("st&lt;x"), "state is echoed escaped");
    assert!(page.text.contains("Connect my Stripe account"));

    let bad_client = http
        .send(
            "GET",
            &format!("/oauth/authorize?response_type=code&client_id=ca_other&redirect_uri={}", urlencode(redirect)),
            &[],
            "",
        )
        .await;
    assert_eq!(bad_client.status, 400);

    // The admin creates a new account on the consent page.
    let decide = |decision: &str| {
        format!(
            "decision={decision}&account=new&business_name=Harbour+Clinic&email=a%40b.co&client_id={}&redirect_uri={}&state=st%3Cx&scope=read_write",
            h.client_id(),
            urlencode(redirect)
        )
    };
    let r = http.send("POST", "/oauth/authorize", &[], &decide("allow")).await;
    assert_eq!(r.status, 303);
    let location = r.headers.get("location").unwrap().to_str().unwrap().to_owned();
    assert!(location.starts_with(redirect));
    let q = query_of(&location);
    assert_eq!(q["state"], "st<x", "state comes back untouched");
    assert_eq!(q["scope"], "read_write");
    let code = &q["code"];

    let token_body = format!("grant_type=authorization_code&code={code}");
    let t = http.post(h.secret_key(), "/oauth/token", &[], &token_body).await;
    assert_eq!(t.status, 200, "{}", t.text);
    let acct = t.body["stripe_user_id"].as_str().unwrap().to_owned();
    assert!(acct.starts_with("acct_"));
    assert!(t.body["stripe_publishable_key"].as_str().unwrap().starts_with("pk_test_"));
    assert_eq!(t.body["livemode"], false);
    assert_eq!(t.body["scope"], "read_write");

    // The code is single-use.
    let reuse = http.post(h.secret_key(), "/oauth/token", &[], &token_body).await;
    assert_eq!(reuse.status, 400);
    assert_eq!(reuse.body["error"], "invalid_grant");
    let wrong_secret =
        http.post("sk_test_not_ours", "/oauth/token", &[], "grant_type=authorization_code&code=ac_x").await;
    assert_eq!(wrong_secret.status, 401);

    // The platform can now charge on the account.
    let pi = http
        .post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], "amount=5000&currency=aud")
        .await;
    assert_eq!(pi.status, 200);

    // Deny sends access_denied with the state.
    let r = http.send("POST", "/oauth/authorize", &[], &decide("deny")).await;
    let q = query_of(r.headers.get("location").unwrap().to_str().unwrap());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st<x");
    assert!(!q.contains_key("code"));

    // Deauthorize: access ends and Connect endpoints hear about it.
    let d = http
        .post(h.secret_key(), "/oauth/deauthorize", &[], &format!("client_id={}&stripe_user_id={acct}", h.client_id()))
        .await;
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.body["stripe_user_id"], acct);
    let (ev, _) = hook.until("account.application.deauthorized").await;
    assert_eq!(ev.account.as_deref(), Some(acct.as_str()));
    assert_eq!(ev.raw["data"]["object"]["id"], h.client_id());
    let after = http
        .post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], "amount=5000&currency=aud")
        .await;
    assert_eq!(after.status, 403);
    let twice = http
        .post(h.secret_key(), "/oauth/deauthorize", &[], &format!("client_id={}&stripe_user_id={acct}", h.client_id()))
        .await;
    assert_eq!(twice.status, 400);
    assert_eq!(twice.body["error"], "invalid_client");
}

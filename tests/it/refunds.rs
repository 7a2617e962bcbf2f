//! Refunds from callpay: by a clinic admin through the admin API, by the clinician from the
//! call while the policy allows, through Stripe on the connected account with one idempotency
//! key per refund; never more than remains by our record or by Stripe's; refunds made on
//! Stripe's side (failed ones included) reach the record and the call.

use crate::helpers::*;
use serde_json::{Value, json};

/// A payment paid in the demo call with `card`: the clinician's and the patient's sockets, the
/// payment id, its PaymentIntent and connected account.
struct Paid {
    doc: Client,
    pat: Client,
    id: String,
    pi: String,
    acct: String,
}

async fn paid(hub: &TestHub, client_ref: &str, card: &str) -> Paid {
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request(client_ref, 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    assert_eq!(pay_like_stripe_js(hub, &payment, card, "sam@example.com").await.0, 200);
    let confirmed = doc.until("payment.confirmed").await;
    Paid {
        id: confirmed["payment"]["payment_id"].as_str().unwrap().to_owned(),
        pi: confirmed["payment"]["reference"].as_str().unwrap().to_owned(),
        acct: payment["stripe"]["stripe_account"].as_str().unwrap().to_owned(),
        doc,
        pat,
    }
}

async fn call(hub: &TestHub, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let url = format!("{}{path}", hub.info.hub_url);
    let (status, json, _) =
        hub.http.send(method, &url, &headers, body.map(|b| b.to_string()).unwrap_or_default()).await;
    (status, json)
}

async fn admin_refund(hub: &TestHub, payment_id: &str, body: Value) -> (u16, Value) {
    let token = hub.info.clinic_admin_token.clone();
    call(hub, &token, "POST", &format!("/v1/payments/{payment_id}/refunds"), Some(body)).await
}

/// The simulator's log of the hub's `POST /v1/refunds` calls.
async fn refund_posts(hub: &TestHub) -> Vec<Value> {
    let log = hub.sim_control("GET", "/_sim/requests", Value::Null).await;
    log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/v1/refunds" && r["secret_key"] == true)
        .cloned()
        .collect()
}

/// The refunds Stripe holds for a PaymentIntent.
async fn stripe_refunds(hub: &TestHub, acct: &str, pi: &str) -> Vec<Value> {
    let auth = format!("Bearer {}", hub.sim.secret_key());
    let headers = [("authorization", auth.as_str()), ("stripe-account", acct)];
    let url = format!("{}/v1/refunds?payment_intent={pi}&limit=100", hub.info.stripe_url);
    let (status, body, _) = hub.http.send("GET", &url, &headers, String::new()).await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// A refund made in the clinic's Stripe dashboard.
async fn refund_on_stripe(hub: &TestHub, acct: &str, pi: &str, amount: i64) -> (u16, Value) {
    let auth = format!("Bearer {}", hub.sim.secret_key());
    let headers = [
        ("authorization", auth.as_str()),
        ("stripe-account", acct),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let url = format!("{}/v1/refunds", hub.info.stripe_url);
    let (status, body, _) = hub.http.send("POST", &url, &headers, format!("payment_intent={pi}&amount={amount}")).await;
    (status, body)
}

#[tokio::test]
async fn an_admin_refunds_part_then_the_rest_and_the_call_sees_both() {
    let hub = TestHub::start().await;
    let mut p = paid(&hub, "r1", "4242424242424242").await;
    let (status, body) =
        admin_refund(&hub, &p.id, json!({"amount": 2000, "reason": "requested_by_customer", "note": "Short visit"}))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["refund"]["amount"].as_i64(), body["refund"]["status"].as_str()), (Some(2000), Some("succeeded")));
    assert!(body["refund"]["stripe_refund_id"].as_str().unwrap().starts_with("re_"), "{body}");
    let part = p.pat.until_where("payment.updated", |f| f["payment"]["status"] == "partially_refunded").await;
    assert_eq!(part["payment"]["amount_refunded"], 2000);
    p.doc.until_where("payment.updated", |f| f["payment"]["amount_refunded"] == 2000).await;
    // No amount: all that remains.
    let (status, body) = admin_refund(&hub, &p.id, json!({"reason": "duplicate"})).await;
    assert_eq!((status, body["refund"]["amount"].as_i64()), (200, Some(3000)), "{body}");
    let full = p.pat.until_where("payment.updated", |f| f["payment"]["status"] == "refunded").await;
    assert_eq!(full["payment"]["amount_refunded"], 5000);
    // The record lists both refunds, with who made them and why, and the history has them.
    let token = hub.info.clinic_admin_token.clone();
    let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
    assert_eq!(record["status"], "refunded");
    let refunds = record["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 2, "{record}");
    assert!(refunds.iter().all(|r| r["status"] == "succeeded" && r["requested_by_name"] == "Cam (clinic admin)"));
    assert!(refunds.iter().any(|r| r["note"] == "Short visit" && r["reason"] == "requested_by_customer"));
    assert!(record["history"].as_array().unwrap().iter().any(|h| h["action"] == "refund.created"), "{record}");
    // Each Stripe call was made on the connected account with a key derived from our refund id.
    let posts = refund_posts(&hub).await;
    assert_eq!(posts.len(), 2);
    for post in &posts {
        assert_eq!(post["account"], p.acct.as_str(), "{post}");
        assert!(post["idempotency_key"].as_str().unwrap().starts_with("callpay:ref_"), "{post}");
    }
    assert_eq!(p.doc.count("payment.confirmed", &p.id), 1, "a refund never re-confirms");
}

#[tokio::test]
async fn refunding_more_than_remains_is_refused_before_stripe_is_asked() {
    let hub = TestHub::start().await;
    let p = paid(&hub, "r2", "4242424242424242").await;
    let (status, body) = admin_refund(&hub, &p.id, json!({"amount": 5001, "reason": "duplicate"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("exceeds_remaining")), "{body}");
    assert_eq!(admin_refund(&hub, &p.id, json!({"amount": 4000, "reason": "duplicate"})).await.0, 200);
    let (status, body) = admin_refund(&hub, &p.id, json!({"amount": 1001, "reason": "duplicate"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("exceeds_remaining")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("10.00"), "says what remains: {body}");
    for bad in [json!({"amount": 0, "reason": "duplicate"}), json!({"amount": -5, "reason": "duplicate"})] {
        let (status, body) = admin_refund(&hub, &p.id, bad).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_amount")), "{body}");
    }
    let (status, body) = admin_refund(&hub, &p.id, json!({"amount": 100, "reason": "because"})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_reason")), "{body}");
    assert_eq!(refund_posts(&hub).await.len(), 1, "only the refund that fits reached Stripe");
    assert_eq!(stripe_refunds(&hub, &p.acct, &p.pi).await.len(), 1);
}

#[tokio::test]
async fn a_double_clicked_refund_makes_one_stripe_refund() {
    let hub = TestHub::start().await;
    let p = paid(&hub, "r3", "4242424242424242").await;
    let body = json!({"amount": 1500, "reason": "requested_by_customer", "request_key": "form-1"});
    let (a, b) = tokio::join!(admin_refund(&hub, &p.id, body.clone()), admin_refund(&hub, &p.id, body.clone()));
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1["refund"]["id"], b.1["refund"]["id"], "the same refund both times");
    // And a third click after it is done.
    let c = admin_refund(&hub, &p.id, body).await;
    assert_eq!(c.1["refund"]["id"], a.1["refund"]["id"]);
    let held = stripe_refunds(&hub, &p.acct, &p.pi).await;
    assert_eq!(held.len(), 1, "one refund at Stripe: {held:?}");
    assert_eq!(held[0]["amount"], 1500);
    let keys: std::collections::BTreeSet<String> =
        refund_posts(&hub).await.iter().map(|r| r["idempotency_key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys.len(), 1, "every POST carried the one refund's key: {keys:?}");
    let token = hub.info.clinic_admin_token.clone();
    let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
    assert_eq!((record["amount_refunded"].as_i64(), record["refunds"].as_array().unwrap().len()), (Some(1500), 1));
}

#[tokio::test]
async fn an_unpaid_payment_cannot_be_refunded() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    doc.request("r4", 5000, "Consult").await;
    let requested = doc.until("payment.requested").await;
    let id = requested["payment"]["payment_id"].as_str().unwrap();
    let (status, body) = admin_refund(&hub, id, json!({"amount": 100, "reason": "duplicate"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("not_refundable")), "{body}");
    assert!(refund_posts(&hub).await.is_empty());
}

#[tokio::test]
async fn another_clinics_payment_answers_exactly_like_a_missing_one() {
    let hub = TestHub::start().await;
    let p = paid(&hub, "r5", "4242424242424242").await;
    // An admin of another clinic of the same organisation.
    let stranger = callpay::demo::admin_token(
        &hub.info.platform_secret,
        "admin-x",
        "X",
        callpay::admin::authz::AdminRole::TeamAdmin,
        None,
        &["clinic_elsewhere"],
    );
    let body = json!({"amount": 100, "reason": "duplicate"});
    let theirs = call(&hub, &stranger, "POST", &format!("/v1/payments/{}/refunds", p.id), Some(body.clone())).await;
    let missing = call(&hub, &stranger, "POST", "/v1/payments/pay_nowhere/refunds", Some(body)).await;
    assert_eq!(theirs, missing);
    assert_eq!(theirs.0, 404);
    assert!(refund_posts(&hub).await.is_empty());
}

#[tokio::test]
async fn stripe_refusing_the_refund_is_a_clear_error_and_the_record_catches_up() {
    let hub = TestHub::start().await;
    let p = paid(&hub, "r6", "4242424242424242").await;
    // The clinic refunds 30.00 in its Stripe dashboard while our webhook endpoint is unreachable.
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_drop_all": true})).await;
    assert_eq!(refund_on_stripe(&hub, &p.acct, &p.pi, 3000).await.0, 200);
    // By our record 50.00 remain; Stripe knows only 20.00 do, and refuses.
    let (status, body) = admin_refund(&hub, &p.id, json!({"amount": 5000, "reason": "duplicate"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("exceeds_remaining")), "{body}");
    assert!(!body["message"].as_str().unwrap().contains("acct_"), "Stripe's own words stay out: {body}");
    // The refusal made the hub read Stripe's total: the record now says what Stripe says.
    let token = hub.info.clinic_admin_token.clone();
    let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
    assert_eq!(
        (record["status"].as_str(), record["amount_refunded"].as_i64()),
        (Some("partially_refunded"), Some(3000))
    );
    let refused = record["refunds"].as_array().unwrap().iter().find(|r| r["amount"] == 5000).cloned();
    assert_eq!(refused.map(|r| r["status"].clone()), Some(json!("refused")), "{record}");
    assert_eq!(stripe_refunds(&hub, &p.acct, &p.pi).await.len(), 1, "nothing refunded twice");
    // What remains by both counts goes through.
    let (status, body) = admin_refund(&hub, &p.id, json!({"amount": 2000, "reason": "duplicate"})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_refund_that_fails_at_the_bank_is_shown_and_the_money_counts_again() {
    let hub = TestHub::start().await;
    // Stripe's test card whose refunds fail after they were accepted.
    let mut p = paid(&hub, "r7", "4000000000005126").await;
    let (status, body) = admin_refund(&hub, &p.id, json!({"amount": 2000, "reason": "duplicate"})).await;
    assert_eq!(status, 200, "{body}");
    let refund_id = body["refund"]["id"].as_str().unwrap().to_owned();
    // refund.updated (failed) arrives: the payment is whole again, in the call too.
    let back = p
        .doc
        .until_where("payment.updated", |f| {
            f["payment"]["status"] == "succeeded" && f["payment"]["amount_refunded"] == 0
        })
        .await;
    assert_eq!(back["payment"]["payment_id"], p.id.as_str());
    let token = hub.info.clinic_admin_token.clone();
    let record = eventually(async || {
        let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
        let r = record["refunds"].as_array()?.iter().find(|r| r["id"] == refund_id.as_str())?.clone();
        (r["status"] == "failed").then_some(record)
    })
    .await;
    assert_eq!(record["amount_refunded"], 0);
    let failed = record["refunds"].as_array().unwrap().iter().find(|r| r["id"] == refund_id.as_str()).unwrap().clone();
    assert!(failed["failure_reason"].as_str().is_some(), "{failed}");
    p.pat.until_where("payment.updated", |f| f["payment"]["status"] == "succeeded").await;
}

#[tokio::test]
async fn refunds_made_in_the_dashboard_are_listed_on_the_record() {
    let hub = TestHub::start().await;
    let mut p = paid(&hub, "r8", "4242424242424242").await;
    assert_eq!(refund_on_stripe(&hub, &p.acct, &p.pi, 1200).await.0, 200);
    p.pat.until_where("payment.updated", |f| f["payment"]["amount_refunded"] == 1200).await;
    let token = hub.info.clinic_admin_token.clone();
    let record = eventually(async || {
        let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
        (record["refunds"].as_array()?.len() == 1).then_some(record)
    })
    .await;
    let r = &record["refunds"][0];
    assert_eq!(
        (r["amount"].as_i64(), r["status"].as_str(), r["source"].as_str()),
        (Some(1200), Some("succeeded"), Some("stripe"))
    );
}

#[tokio::test]
async fn the_clinician_refunds_from_the_call_while_the_policy_allows() {
    let hub = TestHub::start().await;
    let mut p = paid(&hub, "r9", "4242424242424242").await;
    let path = format!("/v1/calls/{}/payments/{}/refunds", hub.info.call_id, p.id);
    let body = json!({"amount": 1000, "reason": "requested_by_customer"});
    // The patient's token never refunds.
    let patient = hub.info.patient_token.clone();
    let (status, refused) = call(&hub, &patient, "POST", &path, Some(body.clone())).await;
    assert_eq!((status, refused["code"].as_str()), (403, Some("forbidden")), "{refused}");
    // A colleague in the same call (who sees the payment in the room anyway) did not request
    // it: refused.
    let colleague = hub.token_for(&hub.info.call_id, "clinician-bo", callpay_protocol::Role::Clinician);
    let (status, refused) = call(&hub, &colleague, "POST", &path, Some(body.clone())).await;
    assert_eq!((status, refused["code"].as_str()), (403, Some("forbidden")), "{refused}");
    let clinician = hub.info.clinician_token.clone();
    let (status, made) = call(&hub, &clinician, "POST", &path, Some(body.clone())).await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["refund"]["requested_by_name"], "Dr Ada Lee");
    p.pat.until_where("payment.updated", |f| f["payment"]["amount_refunded"] == 1000).await;
    p.doc.until_where("payment.updated", |f| f["payment"]["amount_refunded"] == 1000).await;
    // A token for another call cannot reach this call's payment.
    let other = hub.token_for("call_elsewhere", "clinician-ada", callpay_protocol::Role::Clinician);
    let (status, _) =
        call(&hub, &other, "POST", &format!("/v1/calls/call_elsewhere/payments/{}/refunds", p.id), Some(body)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_clinicians_refund_window_is_a_setting() {
    let hub = TestHub::start_with(|c| c.payments.clinician_refund_window_hours = 0).await;
    let p = paid(&hub, "r10", "4242424242424242").await;
    let path = format!("/v1/calls/{}/payments/{}/refunds", hub.info.call_id, p.id);
    let clinician = hub.info.clinician_token.clone();
    let (status, body) =
        call(&hub, &clinician, "POST", &path, Some(json!({"amount": 1000, "reason": "duplicate"}))).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("refund_window_closed")), "{body}");
    // The clinic's admin still can.
    assert_eq!(admin_refund(&hub, &p.id, json!({"amount": 1000, "reason": "duplicate"})).await.0, 200);
}

/// The refund writes and the report's read, on both databases: a refund fits only in what
/// remains, one row per form key, Stripe's news is matched by our id or Stripe's, a failure is
/// final, and a dashboard refund is a row of its own.
#[tokio::test]
async fn refunds_and_report_reads_behave_the_same_on_sqlite_and_postgresql() {
    use callpay::store::{Payment, Refund, SqlStore, Store, StoreResult, Write};
    use callpay_protocol::PaymentStatus;
    async fn run(store: &SqlStore) -> StoreResult<Vec<String>> {
        let p = Payment {
            id: "pay_1".into(),
            call_id: "call_1".into(),
            clinic_id: "clinic_a".into(),
            client_ref: "r1".into(),
            requested_by_id: "doc".into(),
            requested_by_name: "Doc".into(),
            amount: 5000,
            currency: "aud".into(),
            stripe_account: "acct_1".into(),
            status: PaymentStatus::Succeeded,
            amount_received: Some(5000),
            created_at: 1_000,
            updated_at: 1_000,
            ..Default::default()
        };
        store.insert_payment(&p).await?;
        let refund = |id: &str, amount: i64, key: Option<&str>| Refund {
            id: id.into(),
            payment_id: "pay_1".into(),
            clinic_id: "clinic_a".into(),
            amount,
            currency: "aud".into(),
            reason: "duplicate".into(),
            note: None,
            status: "pending".into(),
            stripe_refund_id: None,
            failure_reason: None,
            source: "callpay".into(),
            request_key: key.map(str::to_owned),
            requested_by_id: "a".into(),
            requested_by_name: "A".into(),
            requested_by_role: "team_admin".into(),
            created_at: 2_000,
            updated_at: 2_000,
        };
        let new = |r: Refund| [Write::NewRefund { refund: Box::new(r), limit: 5000 }];
        let mut out = vec![];
        out.push(format!("{:?}", store.commit(&new(refund("ref_1", 3000, Some("k1")))).await?));
        out.push(format!("{:?}", store.commit(&new(refund("ref_2", 3000, Some("k2")))).await?));
        out.push(format!("{:?}", store.commit(&new(refund("ref_3", 10, Some("k1")))).await?));
        out.push(format!("{:?}", store.commit(&new(refund("ref_4", 2000, None))).await?));
        // Stripe answers ref_1 (by our id), then its failure arrives by Stripe's id, then a late
        // "succeeded" cannot undo the failure.
        let seen = |id: &str, status: &str, source: &str| Refund {
            status: status.into(),
            stripe_refund_id: Some(format!("re_{id}")),
            source: source.into(),
            updated_at: 3_000,
            ..refund(id, 3000, None)
        };
        store.commit(&[Write::RefundSeen(Box::new(seen("ref_1", "succeeded", "callpay")))]).await?;
        store
            .commit(&[Write::RefundSeen(Box::new(Refund {
                id: "ref_other".into(),
                ..seen("ref_1", "failed", "stripe")
            }))])
            .await?;
        store.commit(&[Write::RefundSeen(Box::new(seen("ref_1", "succeeded", "callpay")))]).await?;
        // ref_4 succeeds; a late `pending` never takes it back, and news naming it for another
        // payment (metadata can say anything) never touches it.
        store.commit(&[Write::RefundSeen(Box::new(seen("ref_4", "succeeded", "callpay")))]).await?;
        store.commit(&[Write::RefundSeen(Box::new(seen("ref_4", "pending", "callpay")))]).await?;
        store
            .commit(&[Write::RefundSeen(Box::new(Refund {
                payment_id: "pay_2".into(),
                stripe_refund_id: Some("re_elsewhere".into()),
                ..seen("ref_4", "failed", "callpay")
            }))])
            .await?;
        store
            .commit(&[Write::RefundSeen(Box::new(Refund {
                payment_id: "pay_2".into(),
                ..seen("ref_4", "failed", "stripe")
            }))])
            .await?;
        // A kept refund given up as never sent: only while it is still pending and unsent (a
        // node that sent and stored it meanwhile wins).
        let give_up = |id: &str| Write::RefundNotSent { id: id.into(), at: 4_000 };
        out.push(format!("{:?}", store.commit(&[give_up("ref_4")]).await?));
        store.commit(&[Write::NewRefund { refund: Box::new(refund("ref_5", 10, Some("k5"))), limit: 99_999 }]).await?;
        out.push(format!("{:?}", store.commit(&[give_up("ref_5")]).await?));
        // A dashboard refund we never made.
        store
            .commit(&[Write::RefundSeen(Box::new(Refund { amount: 500, ..seen("ref_dash", "succeeded", "stripe") }))])
            .await?;
        for r in store.refunds_for_payment("pay_1").await? {
            out.push(format!("{} {} {} {:?} {:?}", r.id, r.amount, r.status, r.stripe_refund_id, r.request_key));
        }
        out.push(format!("{:?}", store.refund_by_key("pay_1", "k1").await?.map(|r| r.id)));
        let found = store.payments_created_between(&["clinic_a".into(), "clinic_b".into()], 1_000, 1_001).await?;
        out.push(format!("{:?}", found.iter().map(|p| p.id.clone()).collect::<Vec<_>>()));
        out.push(format!("{}", store.payments_created_between(&["clinic_a".into()], 1_001, 9_000).await?.len()));
        Ok(out)
    }
    let db = crate::services::TempDb::new();
    let sqlite = SqlStore::connect("sqlite::memory:").await.unwrap();
    let postgres = SqlStore::connect(&db.url).await.unwrap();
    let expected = vec![
        "Applied",
        "Conflict",
        "Conflict",
        "Applied",
        "Conflict",
        "Applied",
        "ref_1 3000 failed Some(\"re_ref_1\") Some(\"k1\")",
        "ref_4 2000 succeeded Some(\"re_ref_4\") None",
        "ref_5 10 canceled None Some(\"k5\")",
        "ref_dash 500 succeeded Some(\"re_ref_dash\") None",
        "Some(\"ref_1\")",
        "[\"pay_1\"]",
        "0",
    ];
    assert_eq!(run(&sqlite).await.unwrap(), expected, "SQLite");
    assert_eq!(run(&postgres).await.unwrap(), expected, "PostgreSQL");
    postgres.close().await;
}

/// A refused refund asked again with its form's key is the error it was, never a success; and
/// the key sent with another amount is refused, not answered with the old refund.
#[tokio::test]
async fn a_refused_refund_asked_again_with_its_key_is_never_answered_as_a_success() {
    let hub = TestHub::start().await;
    let p = paid(&hub, "r9", "4242424242424242").await;
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_drop_all": true})).await;
    assert_eq!(refund_on_stripe(&hub, &p.acct, &p.pi, 3000).await.0, 200);
    let ask = json!({"amount": 5000, "reason": "duplicate", "request_key": "form-1"});
    let (status, body) = admin_refund(&hub, &p.id, ask.clone()).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("exceeds_remaining")), "{body}");
    // The same request again (a retry of the page): the same answer, not 200.
    let (status, body) = admin_refund(&hub, &p.id, ask).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("exceeds_remaining")), "{body}");
    // The form changed its amount but kept its key: refused, nothing sent.
    let changed = json!({"amount": 2000, "reason": "duplicate", "request_key": "form-1"});
    let (status, body) = admin_refund(&hub, &p.id, changed).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("request_key_reused")), "{body}");
    assert_eq!(stripe_refunds(&hub, &p.acct, &p.pi).await.len(), 1, "only the dashboard's refund exists");
    // A new key for the new amount goes through.
    let fresh = json!({"amount": 2000, "reason": "duplicate", "request_key": "form-2"});
    assert_eq!(admin_refund(&hub, &p.id, fresh).await.0, 200);
}

/// Stripe refusing a refund for a reason other than the amount: a clear 502 in our words, the
/// refund recorded as refused, nothing refunded, and the same form's retry answered the same.
#[tokio::test]
async fn stripe_refusing_for_another_reason_is_a_clear_502_and_nothing_is_refunded() {
    let hub = TestHub::start().await;
    let p = paid(&hub, "r10", "4242424242424242").await;
    hub.sim_control("POST", "/_sim/faults", json!({"api_errors": 1, "api_error_status": 400})).await;
    let ask = json!({"amount": 1000, "reason": "duplicate", "request_key": "form-x"});
    let (status, body) = admin_refund(&hub, &p.id, ask.clone()).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("stripe_refused")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("nothing was refunded") && !message.contains("simulator"), "{message}");
    assert_eq!(admin_refund(&hub, &p.id, ask).await.0, 502, "the same form's retry: the same answer");
    assert!(stripe_refunds(&hub, &p.acct, &p.pi).await.is_empty());
    let token = hub.info.clinic_admin_token.clone();
    let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
    assert_eq!(record["refunds"][0]["status"], "refused", "{record}");
    assert_eq!((record["status"].as_str(), record["refundable"].as_i64()), (Some("succeeded"), Some(5000)));
}

/// A refund Stripe could not be reached for is kept, and callpay sends it again by itself under
/// the same Idempotency-Key once Stripe answers: one Stripe refund, the record and the call told.
#[tokio::test]
async fn a_refund_stripe_never_answered_is_sent_again_by_itself_once() {
    let hub = TestHub::start_with(|c| c.payments.verify_after_ms = 300).await;
    let mut p = paid(&hub, "r11", "4242424242424242").await;
    // More failures than the hub's attempts (two).
    hub.sim_control("POST", "/_sim/faults", json!({"api_errors": 2, "api_error_status": 503})).await;
    let (status, body) = admin_refund(&hub, &p.id, json!({"amount": 1500, "reason": "duplicate"})).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("stripe_unavailable")), "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let refunds = loop {
        let found = stripe_refunds(&hub, &p.acct, &p.pi).await;
        if !found.is_empty() {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "the kept refund was never sent again");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["amount"], 1500);
    p.pat
        .until_where("payment.updated", |f| {
            f["payment"]["payment_id"] == p.id.as_str() && f["payment"]["amount_refunded"] == 1500
        })
        .await;
    let token = hub.info.clinic_admin_token.clone();
    let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
    assert_eq!(record["refunds"][0]["status"], "succeeded", "{record}");
    assert_eq!(record["refunds"][0]["stripe_refund_id"], refunds[0]["id"]);
    // Every attempt carried the one key derived from the refund's id.
    let keys: std::collections::BTreeSet<String> =
        refund_posts(&hub).await.iter().filter_map(|r| r["idempotency_key"].as_str().map(str::to_owned)).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    // Later sweeps send nothing more: no further POST, whatever Stripe's key would absorb.
    let posts = refund_posts(&hub).await.len();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(refund_posts(&hub).await.len(), posts, "a refund Stripe answered was sent again");
    assert_eq!(stripe_refunds(&hub, &p.acct, &p.pi).await.len(), 1);
}

/// A refund kept `age_ms` ago for `p`, never sent, with the form key `form-old`.
async fn keep_old_refund(hub: &TestHub, p: &Paid, age_ms: i64) {
    use callpay::store::{Refund, Write, now_ms};
    let day_ago = now_ms() - age_ms;
    let kept = Refund {
        id: format!("ref_old_{}", p.id),
        payment_id: p.id.clone(),
        clinic_id: callpay::demo::DEMO_CLINIC.into(),
        amount: 2000,
        currency: "aud".into(),
        reason: "duplicate".into(),
        note: None,
        status: "pending".into(),
        stripe_refund_id: None,
        failure_reason: None,
        source: "callpay".into(),
        request_key: Some("form-old".into()),
        requested_by_id: "a".into(),
        requested_by_name: "A".into(),
        requested_by_role: "team_admin".into(),
        created_at: day_ago,
        updated_at: day_ago,
    };
    let stored = hub.state.store.commit(&[Write::NewRefund { refund: Box::new(kept), limit: 5000 }]).await.unwrap();
    assert_eq!(stored, callpay::store::Committed::Applied);
}

/// A kept refund that could not be sent within a day (Stripe's idempotency keys last 24 hours)
/// is cancelled, never sent late: nothing refunded, and what it held back is refundable again.
#[tokio::test]
async fn a_kept_refund_too_old_to_send_safely_is_cancelled_not_sent() {
    let hub = TestHub::start_with(|c| c.payments.verify_after_ms = 300).await;
    let p = paid(&hub, "r12", "4242424242424242").await;
    keep_old_refund(&hub, &p, 24 * 3_600_000).await;
    let token = hub.info.clinic_admin_token.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let record = loop {
        let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
        if record["refunds"][0]["status"] != "pending" {
            break record;
        }
        assert!(std::time::Instant::now() < deadline, "the old kept refund stayed pending");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        (record["refunds"][0]["status"].as_str(), record["refunds"][0]["failure_reason"].as_str()),
        (Some("canceled"), Some("not_sent")),
        "{record}"
    );
    assert_eq!(record["refundable"], 5000);
    assert!(stripe_refunds(&hub, &p.acct, &p.pi).await.is_empty(), "never sent late");
}

/// The clinician's window is counted from when the payment was paid: inside it they refund,
/// past it they get 403 `refund_window_closed` (the clinic's admins still can).
#[tokio::test]
async fn the_clinicians_refund_window_closes_when_its_hours_have_passed() {
    use callpay::store::{Write, now_ms};
    let hub = TestHub::start_with(|c| c.payments.clinician_refund_window_hours = 1).await;
    let p = paid(&hub, "r13", "4242424242424242").await;
    let path = format!("/v1/calls/{}/payments/{}/refunds", hub.info.call_id, p.id);
    let clinician = hub.info.clinician_token.clone();
    let ask = |amount: i64| Some(json!({"amount": amount, "reason": "duplicate"}));
    // Paid 59 minutes ago: inside the hour.
    let move_paid_at = |ago_ms: i64| {
        let store = hub.state.store.clone();
        let id = p.id.clone();
        async move {
            let now = store.payment(&id).await.unwrap().unwrap();
            let moved =
                callpay::store::Payment { paid_at: Some(now_ms() - ago_ms), version: now.version + 1, ..now.clone() };
            let write = Write::Payment { payment: Box::new(moved), expected_version: now.version };
            store.commit(&[write]).await.unwrap();
        }
    };
    move_paid_at(59 * 60_000).await;
    let (status, body) = call(&hub, &clinician, "POST", &path, ask(1000)).await;
    assert_eq!(status, 200, "{body}");
    // Paid 61 minutes ago: closed for the clinician, open for the clinic's admin.
    move_paid_at(61 * 60_000).await;
    let (status, body) = call(&hub, &clinician, "POST", &path, ask(1000)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("refund_window_closed")), "{body}");
    assert_eq!(admin_refund(&hub, &p.id, json!({"amount": 1000, "reason": "duplicate"})).await.0, 200);
}

/// The same form asked again for a refund kept too long is never sent: 409 `refund_expired`,
/// the refund cancelled, nothing refunded; a kept refund between 22 and 23 hours old is not
/// sent either (a send may still be in flight elsewhere): 409 `refund_expiring`, and it stays
/// for the sweep to cancel.
#[tokio::test]
async fn a_form_asking_again_for_a_refund_kept_too_long_is_told_it_expired() {
    // No sweep during the test: only the request decides.
    let hub = TestHub::start_with(|c| c.payments.verify_after_ms = 3_600_000).await;
    let p = paid(&hub, "r14", "4242424242424242").await;
    keep_old_refund(&hub, &p, 22 * 3_600_000 + 60_000).await;
    let ask = json!({"amount": 2000, "reason": "duplicate", "request_key": "form-old"});
    let (status, body) = admin_refund(&hub, &p.id, ask.clone()).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("refund_expiring")), "{body}");
    let token = hub.info.clinic_admin_token.clone();
    let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", p.id), None).await;
    assert_eq!(record["refunds"][0]["status"], "pending", "left for the sweep after 23 h: {record}");
    assert!(refund_posts(&hub).await.is_empty(), "nothing sent");

    let q = paid(&hub, "r15", "4242424242424242").await;
    keep_old_refund(&hub, &q, 24 * 3_600_000).await;
    let (status, body) = admin_refund(&hub, &q.id, ask).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("refund_expired")), "{body}");
    let (_, record) = call(&hub, &token, "GET", &format!("/v1/payments/{}", q.id), None).await;
    assert_eq!(record["refunds"][0]["status"], "canceled", "{record}");
    assert!(refund_posts(&hub).await.is_empty(), "nothing sent");
    assert!(stripe_refunds(&hub, &q.acct, &q.pi).await.is_empty());
}

/// A refund total stored but never announced (its node died between commit and publish, or the
/// publish was lost) still reaches the call: the sweep also brings rooms up to every payment
/// changed lately, not only those waiting on Stripe.
#[tokio::test]
async fn a_refund_stored_but_never_announced_still_reaches_the_call() {
    use callpay::store::Write;
    let hub = TestHub::start_with(|c| c.payments.verify_after_ms = 300).await;
    let mut p = paid(&hub, "r16", "4242424242424242").await;
    // Written straight to the store, as by a node that then died: nobody announced it.
    let now = hub.state.store.payment(&p.id).await.unwrap().unwrap();
    let refunded = callpay::store::Payment {
        status: callpay_protocol::PaymentStatus::PartiallyRefunded,
        amount_refunded: 1200,
        version: now.version + 1,
        updated_at: callpay::store::now_ms(),
        ..now.clone()
    };
    let write = Write::Payment { payment: Box::new(refunded), expected_version: now.version };
    assert_eq!(hub.state.store.commit(&[write]).await.unwrap(), callpay::store::Committed::Applied);
    let seen = p
        .pat
        .until_where("payment.updated", |f| {
            f["payment"]["payment_id"] == p.id.as_str() && f["payment"]["amount_refunded"] == 1200
        })
        .await;
    assert_eq!(seen["payment"]["status"], "partially_refunded");
    p.doc.until_where("payment.updated", |f| f["payment"]["amount_refunded"] == 1200).await;
}

/// While a kept refund waits to be sent, no other refund of the payment is made (a reopened
/// form with a new key would otherwise refund twice): 409 `refund_in_progress`, nothing sent;
/// the kept one's own form finishes it.
#[tokio::test]
async fn no_second_refund_while_one_is_kept_unsent() {
    let hub = TestHub::start_with(|c| c.payments.verify_after_ms = 3_600_000).await;
    let p = paid(&hub, "r17", "4242424242424242").await;
    hub.sim_control("POST", "/_sim/faults", json!({"api_errors": 2, "api_error_status": 503})).await;
    let first = json!({"amount": 2000, "reason": "duplicate", "request_key": "form-a"});
    assert_eq!(admin_refund(&hub, &p.id, first.clone()).await.0, 503);
    let other = json!({"amount": 2000, "reason": "duplicate", "request_key": "form-b"});
    let (status, body) = admin_refund(&hub, &p.id, other).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("refund_in_progress")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("20.00"), "{body}");
    let (status, body) = admin_refund(&hub, &p.id, first).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stripe_refunds(&hub, &p.acct, &p.pi).await.len(), 1, "one refund");
}

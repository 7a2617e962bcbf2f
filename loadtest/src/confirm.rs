//! `confirm` / `cluster-confirm`: webhook to pop-up. `--calls` calls each get a payment waiting
//! to be paid; then validly signed `payment_intent.succeeded` events, one per payment, are posted
//! to the hub's webhook endpoint open-loop at `--rate` per second, and each is timed from its
//! intended send time until the clinician's socket receives `payment.confirmed`. In the cluster
//! variant the webhooks go to the first instance and the clinicians sit on the second, so every
//! confirmation crosses Redis.
//!
//! The hub does on each event what it does for Stripe's: verifies the signature, deduplicates,
//! looks up the card on the (simulated) Stripe API, checks the amount, stores the change with
//! its audit record, then fans out.

use crate::{Hub, Samples, send, until, until_payable};
use anyhow::{Context, bail};
use bytes::Bytes;
use callpay_protocol::Role;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Calls set up at once.
const SETUP_CONCURRENCY: usize = 64;

/// `Stripe-Signature` for `payload` at `t`, as Stripe computes it.
fn signature(secret: &str, t: u64, payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `payment_intent.succeeded` event for a payment, shaped like Stripe's.
fn succeeded_event(n: usize, payment: &Value) -> Value {
    let s = &payment["stripe"];
    let account = s["stripe_account"].as_str().unwrap_or_default();
    let pi_id = s["client_secret"].as_str().unwrap_or_default().split("_secret_").next().unwrap_or_default();
    let amount = payment["amount"].as_i64().unwrap_or(0);
    let mut pi = stripe_sim::objects::payment_intent(&stripe_sim::objects::NewPaymentIntent {
        amount,
        currency: payment["currency"].as_str().unwrap_or("aud"),
        description: None,
        receipt_email: None,
        metadata: json!({"callpay_payment_id": payment["payment_id"]}),
        automatic_payment_methods: true,
        payment_method_types: vec!["card".into()],
        statement_descriptor_suffix: None,
        application_fee_amount: None,
        application: None,
    });
    pi["id"] = json!(pi_id);
    pi["status"] = json!("succeeded");
    pi["amount_received"] = json!(amount);
    json!({
        "id": format!("evt_load_{}_{n}", std::process::id()),
        "object": "event",
        "api_version": "2026-09-30.endive",
        "created": callpay::auth::now_secs(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "payment_intent.succeeded",
        "account": account,
        "data": {"object": pi},
    })
}

/// Runs the scenario against `hub` (webhooks to its first node, clinicians on its last).
pub async fn run(hub: &Hub, calls: usize, rate: u64) -> anyhow::Result<Value> {
    let secret = hub.info["webhook_secret"].as_str().context("the hub did not say its webhook secret")?.to_owned();
    let webhook_url = format!("{}/v1/stripe/webhook", hub.info["hub_url"].as_str().unwrap_or_default());
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let run = std::process::id();
    let mut setups = Vec::new();
    let last = hub.nodes.len() - 1;
    for i in 0..calls {
        let gate = gate.clone();
        let call = format!("load-confirm-{run}-{i}");
        let doc_url = hub.url(last, &call, "doc", Role::Clinician);
        let pat_url = hub.url(0, &call, "pat", Role::Patient);
        setups.push(tokio::spawn(async move {
            let _slot = gate.acquire().await?;
            let mut doc = crate::connect_ws(&doc_url).await?;
            let mut pat = crate::connect_ws(&pat_url).await?;
            send(&mut doc, json!({"type": "payment.request", "client_ref": "r1", "amount": 5000, "currency": "aud", "description": "Consult"})).await?;
            let payment = until_payable(&mut pat).await?;
            Ok::<_, anyhow::Error>((doc, pat, payment))
        }));
    }
    let mut open = Vec::with_capacity(calls);
    for s in setups {
        open.push(s.await??);
    }
    eprintln!("confirm: {calls} calls with a payment waiting");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http::<Full<Bytes>>();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let mut timings = Vec::with_capacity(calls);
    let mut posts = Vec::with_capacity(calls);
    for (n, (mut doc, pat, payment)) in open.into_iter().enumerate() {
        let intended = start + interval.mul_f64(n as f64);
        // The clinician waits for its pop-up from the moment the event is due.
        timings.push(tokio::spawn(async move {
            let _keep = pat;
            until(&mut doc, "payment.confirmed").await?;
            Ok::<Duration, anyhow::Error>(intended.elapsed())
        }));
        let payload = succeeded_event(n, &payment).to_string();
        let (client, url, secret) = (client.clone(), webhook_url.clone(), secret.clone());
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        posts.push(tokio::spawn(async move {
            let sig = signature(&secret, callpay::auth::now_secs(), &payload);
            let req = hyper::Request::post(url)
                .header("content-type", "application/json")
                .header("stripe-signature", sig)
                .body(Full::new(Bytes::from(payload)))?;
            let resp = client.request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            if status != 200 {
                bail!("webhook answered {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(())
        }));
    }
    let sent_in = start.elapsed();
    eprintln!("confirm: {calls} webhooks sent in {:.1} s", sent_in.as_secs_f64());
    let mut failed = 0;
    for p in posts {
        if let Err(e) = p.await? {
            failed += 1;
            eprintln!("webhook failed: {e}");
        }
    }
    let mut latency = Samples::default();
    for t in timings {
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(Ok(d))) => latency.add(d),
            _ => failed += 1,
        }
    }
    if failed > 0 {
        bail!("{failed} of {calls} confirmations failed or never reached the clinician");
    }
    Ok(json!({
        "scenario": if hub.nodes.len() > 1 { "cluster-confirm" } else { "confirm" },
        "calls": calls, "rate": rate, "achieved_rate": calls as f64 / sent_in.as_secs_f64(),
        "failed": failed, "webhook_to_clinician_confirmed": latency.summary(),
    }))
}

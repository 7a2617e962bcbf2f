//! Signed events for the platform, against a real HTTP receiver on loopback: signatures checked
//! by the README's own Python snippet (Python's `hmac`, not callpay's code), a receiver that
//! fails three times then answers, a hub restarted while a delivery waits for its retry, order
//! and duplicates per payment, replay, refused endpoint URLs, and changes made at once on three
//! instances numbered and delivered in the order they committed.

use crate::helpers::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use callpay::config::Config;
use callpay::demo::DEMO_CLINIC;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Got {
    signature: String,
    event_id_header: String,
    delivery_id: String,
    body: String,
    answered: u16,
    at: Instant,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    got: Arc<Mutex<Vec<Got>>>,
    /// Requests still to be answered 500.
    fail_next: Arc<AtomicUsize>,
    /// Answer every third request 500 instead.
    flaky: Arc<std::sync::atomic::AtomicBool>,
}

/// The platform's side: an HTTP server on loopback that keeps every request.
struct Receiver {
    url: String,
    state: ReceiverState,
}

impl Receiver {
    async fn start() -> Self {
        async fn hook(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
            let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            // One lock for counting and recording, so concurrent requests count one by one.
            let mut got = s.got.lock().unwrap();
            let fail = if s.flaky.load(Ordering::SeqCst) {
                got.len() % 3 == 2
            } else {
                s.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
            };
            got.push(Got {
                signature: header("callpay-signature"),
                event_id_header: header("callpay-event-id"),
                delivery_id: header("callpay-delivery-id"),
                body: String::from_utf8(body.to_vec()).unwrap(),
                answered: if fail { 500 } else { 200 },
                at: Instant::now(),
            });
            drop(got);
            if fail { (StatusCode::INTERNAL_SERVER_ERROR, "receiver down") } else { (StatusCode::OK, "ok") }
        }
        let state = ReceiverState::default();
        let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    fn got(&self) -> Vec<Got> {
        self.state.got.lock().unwrap().clone()
    }

    /// What arrived about `object_id` (a payment or clinic id), in order of arrival.
    fn about(&self, object_id: &str) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.json()["data"]["object"]["id"] == object_id).collect()
    }
}

/// Quick retries: a first retry after 100 to 200 ms, then at most 400 ms apart.
fn fast(c: &mut Config) {
    fast_events(&mut c.events);
}

fn fast_events(e: &mut callpay::config::EventsConfig) {
    e.poll_interval_ms = 50;
    e.retry_first_ms = 200;
    e.retry_max_interval_ms = 400;
    e.timeout_ms = 3_000;
}

async fn api(hub_url: &str, http: &Http, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let (status, json, _) =
        http.send(method, &format!("{hub_url}{path}"), &headers, body.map(|b| b.to_string()).unwrap_or_default()).await;
    (status, json)
}

async fn operator(hub: &TestHub, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api(&hub.info.hub_url, &hub.http, &hub.info.operator_token, method, path, body).await
}

/// Registers `url` for `events` (all if empty); returns (endpoint id, secret).
async fn register(hub: &TestHub, url: &str, events: &[&str]) -> (String, String) {
    let (s, e) = operator(hub, "POST", "/v1/event-endpoints", Some(json!({"url": url, "events": events}))).await;
    assert_eq!(s, 201, "{e}");
    (e["id"].as_str().unwrap().to_owned(), e["secret"].as_str().unwrap().to_owned())
}

/// The README's verification snippet, run by Python on the exact header and body received.
fn python_verifies(secret: &str, signature: &str, body: &[u8]) -> bool {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- events-verify-snippet -->").expect("the README has the snippet");
    let code = &readme[start..];
    let code = &code[code.find("```python\n").unwrap() + "```python\n".len()..];
    let code = &code[..code.find("```").unwrap()];
    let driver = "\nimport sys\nbody = open(sys.argv[3], 'rb').read()\nprint('ok' if verify(sys.argv[1], sys.argv[2], body) else 'bad')\n";
    let dir = std::env::temp_dir().join(format!("callpay-events-{}", callpay::ids::random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("verify.py"), format!("{code}{driver}")).unwrap();
    std::fs::write(dir.join("body"), body).unwrap();
    let out = std::process::Command::new("python3")
        .arg(dir.join("verify.py"))
        .args([secret, signature])
        .arg(dir.join("body"))
        .output()
        .expect("python3 runs");
    std::fs::remove_dir_all(&dir).ok();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(said == "ok" || said == "bad", "python said {said:?}: {}", String::from_utf8_lossy(&out.stderr));
    said == "ok"
}

async fn pay(hub: &TestHub, client_ref: &str) -> String {
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request(client_ref, 5000, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    assert_eq!(pay_like_stripe_js(hub, &payment, "4242424242424242", "sam@example.com").await.0, 200);
    doc.until("payment.confirmed").await["payment"]["payment_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn events_are_signed_so_that_pythons_hmac_verifies_them() {
    let hub = TestHub::start_with(fast).await;
    let receiver = Receiver::start().await;
    let (_, secret) = register(&hub, &receiver.url, &[]).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let payment_id = pay(&hub, "sig-1").await;
    let got = eventually(async || {
        let got = receiver.about(&payment_id);
        (got.len() >= 2).then_some(got)
    })
    .await;
    for g in &got {
        assert!(python_verifies(&secret, &g.signature, g.body.as_bytes()), "{} {}", g.signature, g.body);
        // The verifier can fail: another secret, a changed body or an old timestamp.
        assert!(!python_verifies("whsec_another", &g.signature, g.body.as_bytes()));
        assert!(!python_verifies(&secret, &g.signature, g.body.replace("5000", "5001").as_bytes()));
        let t: i64 = g.signature["t=".len()..g.signature.find(',').unwrap()].parse().unwrap();
        let old = g.signature.replacen(&format!("t={t}"), &format!("t={}", t - 301), 1);
        assert!(!python_verifies(&secret, &old, g.body.as_bytes()), "a timestamp changed breaks the signature");
        let e = g.json();
        assert_eq!(e["id"], g.event_id_header.as_str());
        assert!(e["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(e["object"], "event");
        assert_eq!(e["api_version"], callpay::events::catalogue::API_VERSION);
        assert!(e["created"].as_i64().unwrap() > 1_700_000_000);
        let p = &e["data"]["object"];
        assert_eq!(
            (p["object"].as_str(), p["amount"].as_i64(), p["currency"].as_str()),
            (Some("payment"), Some(5000), Some("aud"))
        );
        assert_eq!(p["clinic_id"], DEMO_CLINIC);
        assert!(!g.body.contains("_secret_") && !g.body.contains("sam@example.com") && !g.body.contains("4242"));
    }
    let types: Vec<Value> = got.iter().map(|g| g.json()["type"].clone()).collect();
    assert_eq!(types, [json!("payment.requested"), json!("payment.succeeded")]);
    assert_eq!(got[1].json()["data"]["object"]["status"], "succeeded");
}

#[tokio::test]
async fn a_receiver_that_fails_three_times_gets_the_event_on_the_fourth_attempt() {
    let hub = TestHub::start_with(fast).await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = register(&hub, &receiver.url, &["clinic.app_disabled"]).await;
    receiver.fail_next(3);
    let org_admin = hub.info.org_admin_token.clone();
    let (s, _) =
        api(&hub.info.hub_url, &hub.http, &org_admin, "POST", &format!("/v1/clinics/{DEMO_CLINIC}/disable"), None)
            .await;
    assert_eq!(s, 200);
    let got = eventually(async || {
        let got = receiver.about(DEMO_CLINIC);
        (got.iter().any(|g| g.answered == 200)).then_some(got)
    })
    .await;
    assert_eq!(got.iter().map(|g| g.answered).collect::<Vec<_>>(), [500, 500, 500, 200]);
    let ids: Vec<Value> = got.iter().map(|g| g.json()["id"].clone()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one event, the same id every time: {ids:?}");
    assert!(got.windows(2).all(|w| w[0].body == w[1].body), "the same body every time");
    assert_eq!(got[0].json()["type"], "clinic.app_disabled");
    assert_eq!(got[0].json()["data"]["object"]["app_enabled"], false);
    // Backing off: at least half of 200 ms, 400 ms, 400 ms between attempts.
    for (w, least) in got.windows(2).zip([100, 200, 200]) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(least), "retried after {gap:?}");
    }
    // Disabling it again changes nothing, and tells the platform nothing.
    api(&hub.info.hub_url, &hub.http, &org_admin, "POST", &format!("/v1/clinics/{DEMO_CLINIC}/disable"), None).await;

    // The attempts, as the API reads them (once the hub has recorded the answer the
    // receiver kept before sending it).
    let list = eventually(async || {
        let (s, list) = operator(&hub, "GET", &format!("/v1/event-endpoints/{endpoint}/deliveries"), None).await;
        assert_eq!(s, 200, "{list}");
        (list["data"][0]["status"] != "pending").then_some(list)
    })
    .await;
    let deliveries = list["data"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{list}");
    let d = &deliveries[0];
    assert_eq!(
        (d["status"].as_str(), d["attempts"].as_i64(), d["last_status"].as_i64()),
        (Some("delivered"), Some(4), Some(200))
    );
    assert_eq!(d["event_id"], ids[0]);
    let (s, detail) = operator(
        &hub,
        "GET",
        &format!("/v1/event-endpoints/{endpoint}/deliveries/{}", d["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(s, 200, "{detail}");
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{detail}");
    for a in &attempts[..3] {
        assert_eq!((a["http_status"].as_i64(), a["error"].as_str()), (Some(500), Some("answered HTTP 500")), "{a}");
        assert_eq!(a["response_excerpt"], "receiver down");
    }
    assert_eq!((attempts[3]["http_status"].as_i64(), attempts[3]["error"].as_str()), (Some(200), None));
    assert!(
        attempts.iter().all(|a| a["duration_ms"].as_i64().is_some_and(|d| d >= 0) && a["at"].as_i64().unwrap() > 0)
    );
    assert_eq!(detail["event"]["id"], ids[0], "the event exactly as sent");
    let (s, failed) =
        operator(&hub, "GET", &format!("/v1/event-endpoints/{endpoint}/deliveries?status=failed"), None).await;
    assert_eq!((s, failed["data"].as_array().map(Vec::len)), (200, Some(0)));
}

/// A hub on the SQLite file under `dir` (its own simulator and tokens), serving until stopped.
struct Running {
    info: callpay::demo::DemoInfo,
    _sim: stripe_sim::SimHandle,
    state: callpay::app::AppState,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: Http,
}

impl Running {
    async fn start(dir: &std::path::Path) -> Self {
        let listen = "127.0.0.1:0".parse().unwrap();
        let callpay::demo::Demo { app, sim, info, .. } =
            callpay::demo::start_with(Some(dir.to_owned()), listen, stripe_sim::SimConfig::for_tests(), fast)
                .await
                .unwrap();
        let state = app.state.clone();
        let run = tokio::spawn(app.run_until_stopped());
        Self { info, _sim: sim, state, run, http: Http::new() }
    }

    /// Stops it as SIGTERM does, and waits until it has.
    async fn stop(self) {
        self.state.shutdown.cancel();
        self.run.await.unwrap().unwrap();
    }

    async fn operator(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        api(&self.info.hub_url, &self.http, &self.info.operator_token, method, path, body).await
    }
}

#[tokio::test]
async fn a_delivery_waiting_for_its_retry_survives_a_hub_restart() {
    let dir = std::env::temp_dir().join(format!("callpay-events-restart-{}", callpay::ids::random_id()));
    let receiver = Receiver::start().await;
    receiver.fail_next(usize::MAX);
    let first = Running::start(&dir).await;
    let (s, e) = first
        .operator("POST", "/v1/event-endpoints", Some(json!({"url": receiver.url, "events": ["clinic.app_disabled"]})))
        .await;
    assert_eq!(s, 201, "{e}");
    let endpoint = e["id"].as_str().unwrap().to_owned();
    let org_admin = first.info.org_admin_token.clone();
    let (s, _) =
        api(&first.info.hub_url, &first.http, &org_admin, "POST", &format!("/v1/clinics/{DEMO_CLINIC}/disable"), None)
            .await;
    assert_eq!(s, 200);
    // Failing, and retried: then the hub stops between two attempts.
    let event_id = eventually(async || {
        let got = receiver.about(DEMO_CLINIC);
        (got.len() >= 2).then(|| got[0].json()["id"].clone())
    })
    .await;
    first.stop().await;
    let before_restart = receiver.about(DEMO_CLINIC).len();
    assert!(receiver.about(DEMO_CLINIC).iter().all(|g| g.answered == 500));
    receiver.fail_next(0);

    // A new hub on the same database sends it: the event is not lost, and is the same event.
    let second = Running::start(&dir).await;
    let delivered = eventually(async || {
        let got = receiver.about(DEMO_CLINIC);
        got.iter().find(|g| g.answered == 200).cloned()
    })
    .await;
    assert_eq!(delivered.json()["id"], event_id);
    assert_eq!(delivered.json()["type"], "clinic.app_disabled");
    let after = receiver.about(DEMO_CLINIC);
    assert!(after.len() > before_restart, "sent again after the restart");
    assert!(after.iter().all(|g| g.json()["id"] == event_id), "one event only: {after:?}");
    // The receiver keeps a request before it answers, so the hub may not have recorded the
    // answer yet when the test sees it.
    let list = eventually(async || {
        let (s, list) = second.operator("GET", &format!("/v1/event-endpoints/{endpoint}/deliveries"), None).await;
        assert_eq!(s, 200, "{list}");
        (list["data"][0]["status"] != "pending").then_some(list)
    })
    .await;
    let d = &list["data"][0];
    assert_eq!((d["status"].as_str(), d["event_id"].clone()), (Some("delivered"), event_id));
    assert_eq!(d["attempts"].as_u64(), Some(after.len() as u64), "every attempt, both hubs', recorded: {d}");
    second.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_payments_events_arrive_in_order_with_stable_ids_and_a_replay_resends_the_same_event() {
    let hub = TestHub::start_with(fast).await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) = register(&hub, &receiver.url, &[]).await;
    // The first two requests fail: `payment.requested` is retried while the payment is paid,
    // and `payment.succeeded` must wait for it.
    receiver.fail_next(2);
    let payment_id = pay(&hub, "order-1").await;
    let token = hub.info.clinic_admin_token.clone();
    let (s, r) = api(
        &hub.info.hub_url,
        &hub.http,
        &token,
        "POST",
        &format!("/v1/payments/{payment_id}/refunds"),
        Some(json!({"amount": 1000, "reason": "requested_by_customer"})),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let got = eventually(async || {
        let got = receiver.about(&payment_id);
        got.iter().any(|g| g.answered == 200 && g.json()["type"] == "payment.refunded").then_some(got)
    })
    .await;
    let seen: Vec<(String, u16)> =
        got.iter().map(|g| (g.json()["type"].as_str().unwrap().to_owned(), g.answered)).collect();
    let want = [
        ("payment.requested", 500),
        ("payment.requested", 500),
        ("payment.requested", 200),
        ("payment.succeeded", 200),
        ("payment.refunded", 200),
    ];
    assert_eq!(seen, want.map(|(t, s)| (t.to_owned(), s)), "in order, each retried until answered");
    let ids: Vec<String> = got.iter().map(|g| g.json()["id"].as_str().unwrap().to_owned()).collect();
    assert!(ids[0] == ids[1] && ids[1] == ids[2], "a retry is the same event: {ids:?}");
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3, "three events, deduplicated by id: {ids:?}");
    assert_eq!(got[4].json()["data"]["object"]["amount_refunded"], 1000);
    assert_eq!(got[4].json()["data"]["object"]["status"], "partially_refunded");

    // The operator replays the success: the same event (id and body), signed afresh.
    let (_, list) = operator(&hub, "GET", &format!("/v1/event-endpoints/{endpoint}/deliveries?limit=200"), None).await;
    let original = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_type"] == "payment.succeeded" && d["event_id"] == ids[3].as_str())
        .cloned()
        .expect("the success's delivery");
    let path = format!("/v1/event-endpoints/{endpoint}/deliveries/{}/replay", original["id"].as_str().unwrap());
    let (s, replay) = operator(&hub, "POST", &path, None).await;
    assert_eq!(s, 201, "{replay}");
    assert_eq!(
        (replay["replay_of"].clone(), replay["event_id"].clone()),
        (original["id"].clone(), original["event_id"].clone())
    );
    let again = eventually(async || {
        let got = receiver.about(&payment_id);
        (got.len() == 6).then(|| got[5].clone())
    })
    .await;
    assert_eq!(again.json()["id"], ids[3].as_str());
    assert_eq!(again.body, got[3].body, "the same event, byte for byte");
    assert!(python_verifies(&secret, &again.signature, again.body.as_bytes()));
    let d = eventually(async || {
        let path = format!("/v1/event-endpoints/{endpoint}/deliveries/{}", replay["id"].as_str().unwrap());
        let (s, d) = operator(&hub, "GET", &path, None).await;
        assert_eq!(s, 200, "{d}");
        (d["delivery"]["status"] != "pending").then_some(d)
    })
    .await;
    assert_eq!(d["delivery"]["status"], "delivered", "{d}");
    // Replaying what does not exist, or through another endpoint, finds nothing.
    let (s, e) =
        operator(&hub, "POST", &format!("/v1/event-endpoints/{endpoint}/deliveries/dlv_nope/replay"), None).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn refused_endpoint_urls_get_a_clear_error_and_store_nothing() {
    let hub = TestHub::start_with(fast).await;
    let own = hub.info.hub_url.clone();
    let port = own.rsplit(':').next().unwrap().to_owned();
    let cases = [
        (json!({"url": "ftp://billing.example.com/events"}), "url_scheme_not_allowed"),
        (json!({"url": "file:///etc/passwd"}), "url_scheme_not_allowed"),
        (json!({"url": format!("{own}/v1/stripe/webhook")}), "url_is_callpay"),
        (json!({"url": format!("http://localhost:{port}/x")}), "url_is_callpay"),
        (json!({"url": format!("http://[::1]:{port}/x")}), "url_is_callpay"),
        (json!({"url": "https://user:pass@billing.example.com/events"}), "url_has_credentials"),
        (json!({"url": "https://billing.example.com/events#top"}), "url_has_fragment"),
        (json!({"url": "http://billing.example.com/events"}), "url_not_https"),
        (json!({"url": "https://169.254.169.254/latest/meta-data"}), "url_address_not_allowed"),
        (json!({"url": "https://[::ffff:169.254.169.254]/latest/meta-data"}), "url_address_not_allowed"),
        (json!({"url": "https://10.0.0.8/events"}), "url_address_not_allowed"),
        (json!({"url": "https://192.168.1.20/events"}), "url_address_not_allowed"),
        (json!({"url": "https://100.64.0.1/events"}), "url_address_not_allowed"),
        (json!({"url": "https://[fd00::5]/events"}), "url_address_not_allowed"),
        (json!({"url": "not a url"}), "invalid_url"),
        (json!({"events": []}), "invalid_url"),
        (json!({"url": "https://billing.example.com/events", "events": ["payment.nope"]}), "unknown_event_type"),
        (json!({"url": "https://billing.example.com/events", "secret": "short"}), "invalid_secret"),
        (json!({"url": "https://billing.example.com/events", "description": "x".repeat(201)}), "invalid_description"),
    ];
    for (body, code) in cases {
        let (s, e) = operator(&hub, "POST", "/v1/event-endpoints", Some(body.clone())).await;
        assert_eq!((s, e["code"].as_str()), (400, Some(code)), "{body}: {e}");
        assert!(!e["message"].as_str().unwrap_or_default().is_empty());
    }
    let (s, e) =
        operator(&hub, "POST", "/v1/event-endpoints", Some(json!({"url": "https://a.example", "nope": 1}))).await;
    assert_eq!((s, e["code"].as_str()), (422, Some("invalid_body")), "unknown fields are refused: {e}");
    let (_, list) = operator(&hub, "GET", "/v1/event-endpoints", None).await;
    assert_eq!(list["data"], json!([]), "nothing stored");

    // A good one; a change to a refused URL leaves it as it was; the secret is never shown again.
    let (s, made) = operator(
        &hub,
        "POST",
        "/v1/event-endpoints",
        Some(json!({"url": "https://billing.example.com/events", "secret": "whsec_chosen_by_the_platform_0123"})),
    )
    .await;
    assert_eq!((s, made["secret"].as_str()), (201, Some("whsec_chosen_by_the_platform_0123")));
    let id = made["id"].as_str().unwrap();
    let (s, e) =
        operator(&hub, "PATCH", &format!("/v1/event-endpoints/{id}"), Some(json!({"url": format!("{own}/")}))).await;
    assert_eq!((s, e["code"].as_str()), (400, Some("url_is_callpay")));
    let (s, shown) = operator(&hub, "GET", &format!("/v1/event-endpoints/{id}"), None).await;
    assert_eq!((s, shown["url"].as_str()), (200, Some("https://billing.example.com/events")));
    assert!(shown.get("secret").is_none() && !shown.to_string().contains("whsec_"), "{shown}");
    let (s, changed) = operator(
        &hub,
        "PATCH",
        &format!("/v1/event-endpoints/{id}"),
        Some(json!({"enabled": false, "events": ["payment.succeeded"]})),
    )
    .await;
    assert_eq!(
        (s, changed["enabled"].as_bool(), changed["events"].clone()),
        (200, Some(false), json!(["payment.succeeded"]))
    );
    assert_eq!(changed["url"], "https://billing.example.com/events", "fields not given are kept");
    let (s, _) = operator(&hub, "DELETE", &format!("/v1/event-endpoints/{id}"), None).await;
    assert_eq!(s, 200);
    let (s, e) = operator(&hub, "GET", &format!("/v1/event-endpoints/{id}"), None).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));
}

/// Writers on every instance refund a payment one cent at a time.
const REFUNDS_PER_WRITER: i64 = 3;
/// Times each writer turns the clinic's app off or on.
const FLIPS_PER_WRITER: usize = 6;
/// Payments changed at once.
const PAYMENTS: usize = 4;
/// Longest wait for every delivery of the concurrency test (dozens of events, a third of
/// the attempts failing, each payment's events one after another).
const ALL_DELIVERED_WITHIN: Duration = Duration::from_secs(60);

/// A payment's change as the payment paths commit it: the versioned row, then its events.
fn payment_change(before: &callpay::store::Payment, after: &callpay::store::Payment) -> Vec<callpay::store::Write> {
    let mut writes =
        vec![callpay::store::Write::Payment { payment: Box::new(after.clone()), expected_version: before.version }];
    writes.extend(callpay::events::catalogue::payment_writes(before, after));
    writes
}

/// Refunds `cents` one cent at a time, each against the payment as last read: when another
/// writer's change landed first (a conflict), it reads the payment again and retries.
async fn refund_cents(store: Arc<callpay::store::SqlStore>, id: String, cents: i64) {
    use callpay::store::{Committed, Payment, Store};
    let mut done = 0;
    while done < cents {
        let before = store.payment(&id).await.unwrap().expect("the payment exists");
        let after = Payment {
            status: callpay_protocol::PaymentStatus::PartiallyRefunded,
            amount_refunded: before.amount_refunded + 1,
            version: before.version + 1,
            ..before.clone()
        };
        match store.commit(&payment_change(&before, &after)).await {
            Ok(Committed::Applied) => done += 1,
            Ok(Committed::Conflict) => {}
            other => panic!("{id}: a concurrent refund's commit failed: {other:?}"),
        }
    }
}

/// Turns the clinic's app off and on `times` times, starting with off if `off_first`, as
/// admins on several instances might at once. A change to the state the clinic already has
/// lands but announces nothing.
async fn flip_clinic(
    store: Arc<callpay::store::SqlStore>,
    clinic: callpay::store::Clinic,
    off_first: bool,
    times: usize,
) {
    use callpay::events::catalogue::{EventType, clinic_write};
    use callpay::store::{ClinicChange, Committed, Store, Write};
    for n in 0..times {
        let on = (n % 2 == 1) == off_first;
        let kind = if on { EventType::ClinicAppEnabled } else { EventType::ClinicAppDisabled };
        let after = callpay::store::Clinic { app_enabled: on, ..clinic.clone() };
        let writes =
            [Write::Clinic { id: clinic.id.clone(), change: ClinicChange::SetEnabled(on) }, clinic_write(kind, &after)];
        let outcome = store.commit(&writes).await;
        assert!(
            matches!(outcome, Ok(Committed::Applied)),
            "{}: a concurrent change's commit failed: {outcome:?}",
            clinic.id
        );
    }
}

/// Three instances on one PostgreSQL: writers on all three change the same payments (and the
/// same clinic) at once, while a worker on each delivers to a receiver that fails every third
/// request. Each change's event must take the next number of its payment or clinic inside the
/// change's transaction, after the change locked the row: then the numbers of one payment are
/// 1, 2, 3… with none twice, in the order the changes committed (the payment's version), and
/// the receiver gets each payment's events in that order, each attempt once. Numbering outside
/// the transaction (a number read before the row is locked) gives two concurrent changes the
/// same number, and one of the commits fails on the unique (order key, number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_on_three_instances_are_numbered_in_commit_order_and_each_attempt_is_sent_once() {
    use callpay::events::endpoints::UrlPolicy;
    use callpay::events::relay::Relay;
    use callpay::events::resolver::SystemResolver;
    use callpay::events::sender::HttpSender;
    use callpay::events::{EndpointRequest, Events};
    use callpay::store::outbox::Delivery;
    use callpay::store::{Clinic, Committed, Outbox, Payment, SqlStore, Store, Write};
    use callpay_protocol::PaymentStatus as S;
    crate::services::ensure_services();
    let db = crate::services::TempDb::new();
    let receiver = Receiver::start().await;
    receiver.state.flaky.store(true, Ordering::SeqCst);
    let mut cfg = Config::default().events;
    fast_events(&mut cfg);
    // The receiver is on this machine.
    cfg.allow_loopback = true;
    // Three instances: three pools on one database, a worker each.
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(Arc::new(SqlStore::connect(&db.url).await.unwrap()));
    }
    let events = Events::new(stores[0].clone(), cfg.clone(), Default::default());
    let request = EndpointRequest { url: Some(receiver.url.clone()), ..EndpointRequest::default() };
    let (endpoint, secret) = events.create_endpoint(request, "op").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for store in &stores {
        let policy = UrlPolicy::new(Default::default(), &cfg);
        let sender = HttpSender::new(&cfg, policy, Arc::new(SystemResolver));
        let relay = Arc::new(Relay::new(store.clone(), Arc::new(sender), cfg.clone()));
        workers.push(tokio::spawn(relay.run(stop.clone())));
    }
    let clinic = Clinic {
        id: "clinic_pg".into(),
        org_id: "org_pg".into(),
        name: "Concurrent Clinic".into(),
        app_enabled: true,
        ..Clinic::default()
    };
    assert_eq!(stores[0].commit(&[Write::UpsertClinic(clinic.clone())]).await.unwrap(), Committed::Applied);
    // Each payment requested and paid, then refunded by writers on every instance at once.
    let mut payment_ids = Vec::new();
    for i in 0..PAYMENTS {
        let creating = Payment {
            id: format!("pay_pg_{i}"),
            clinic_id: clinic.id.clone(),
            client_ref: format!("pg-{i}"),
            amount: 5000,
            ..Payment::default()
        };
        stores[0].insert_payment(&creating).await.unwrap();
        let mut before = creating;
        for status in [S::Requested, S::Succeeded] {
            let after = Payment { status, version: before.version + 1, ..before.clone() };
            assert_eq!(stores[i % 3].commit(&payment_change(&before, &after)).await.unwrap(), Committed::Applied);
            before = after;
        }
        payment_ids.push(before.id);
    }
    let mut writers = tokio::task::JoinSet::new();
    for (w, store) in stores.iter().enumerate() {
        for id in &payment_ids {
            writers.spawn(refund_cents(store.clone(), id.clone(), REFUNDS_PER_WRITER));
        }
        // Out of step with each other, so that their changes really change the clinic.
        writers.spawn(flip_clinic(store.clone(), clinic.clone(), w % 2 == 0, FLIPS_PER_WRITER));
    }
    while let Some(writer) = writers.join_next().await {
        writer.expect("every concurrent commit succeeded");
    }

    let outbox: &dyn Outbox = stores[1].as_ref();
    let deadline = Instant::now() + ALL_DELIVERED_WITHIN;
    let deliveries = loop {
        let list = outbox.deliveries(&endpoint.id, None, 500, None).await.unwrap();
        if list.iter().all(|d| d.status == "delivered") {
            break list;
        }
        assert!(Instant::now() < deadline, "not all delivered: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    let got = receiver.got();
    assert!(got.iter().filter(|g| g.answered == 500).count() >= 10, "every third request failed: {}", got.len());
    let refunds = 3 * REFUNDS_PER_WRITER;
    for key in payment_ids.iter().chain([&clinic.id]) {
        let mut mine: Vec<&Delivery> = deliveries.iter().filter(|d| &d.order_key == key).collect();
        mine.sort_by_key(|d| d.seq);
        let seqs: Vec<i64> = mine.iter().map(|d| d.seq).collect();
        let expected: Vec<i64> = (1..=i64::try_from(mine.len()).unwrap()).collect();
        assert_eq!(seqs, expected, "{key}: numbered 1, 2, 3… with none twice and none skipped");
        let mut objects = Vec::new();
        for d in &mine {
            let event = outbox.event(&d.event_id).await.unwrap().expect("the event is stored");
            let body: Value = serde_json::from_str(&event.body).unwrap();
            objects.push((body["type"].as_str().unwrap().to_owned(), body["data"]["object"].clone()));
        }
        if key == &clinic.id {
            assert!(objects.len() >= 2, "the writers changed the clinic: {objects:?}");
            for (n, (kind, object)) in objects.iter().enumerate() {
                // Enabled at first, so the changes in commit order are off, on, off…: two
                // alike in a row would be numbered out of the order they happened in.
                let on = n % 2 == 1;
                let want = if on { "clinic.app_enabled" } else { "clinic.app_disabled" };
                assert_eq!(
                    (kind.as_str(), object["app_enabled"].as_bool()),
                    (want, Some(on)),
                    "{key} #{n}: {objects:?}"
                );
            }
        } else {
            let kinds: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
            let mut want = vec!["payment.requested", "payment.succeeded"];
            want.extend(std::iter::repeat_n("payment.refunded", usize::try_from(refunds).unwrap()));
            assert_eq!(kinds, want, "{key}: one event per committed change");
            // In number order, the versions the changes wrote: 2, 3, 4…, and refunded 1, 2, 3…
            let versions: Vec<i64> = objects.iter().map(|(_, o)| o["version"].as_i64().unwrap()).collect();
            assert_eq!(versions, (2..2 + 2 + refunds).collect::<Vec<_>>(), "{key}: numbered in commit order");
            let refunded: Vec<i64> = objects[2..].iter().map(|(_, o)| o["amount_refunded"].as_i64().unwrap()).collect();
            assert_eq!(refunded, (1..=refunds).collect::<Vec<_>>(), "{key}");
        }
        // The receiver got them in number order: each event answered 200 once, and nothing of
        // a later event before the earlier one was answered.
        let numbered: Vec<&str> = mine.iter().map(|d| d.event_id.as_str()).collect();
        let arrived: Vec<&Got> = got.iter().filter(|g| g.json()["data"]["object"]["id"] == key.as_str()).collect();
        let answered: Vec<&str> =
            arrived.iter().filter(|g| g.answered == 200).map(|g| g.event_id_header.as_str()).collect();
        assert_eq!(answered, numbered, "{key}: delivered in number order");
        let mut runs: Vec<&str> = arrived.iter().map(|g| g.event_id_header.as_str()).collect();
        runs.dedup();
        assert_eq!(runs, numbered, "{key}: one event's attempts, then the next's");
        // Signed by whichever instance sent it (one per key: each check starts Python).
        assert!(python_verifies(&secret, &arrived[0].signature, arrived[0].body.as_bytes()), "{key}");
    }
    // Every request the receiver got is one recorded attempt of one delivery: no two
    // instances sent the same attempt, and nothing was sent unrecorded.
    assert_eq!(deliveries.len(), got.iter().filter(|g| g.answered == 200).count());
    for d in &deliveries {
        let received = got.iter().filter(|g| g.delivery_id == d.id).count();
        let attempts = outbox.attempts(&d.id).await.unwrap();
        assert_eq!(
            (d.status.as_str(), attempts.len(), d.attempts as usize),
            ("delivered", received, received),
            "{d:?}"
        );
        assert_eq!(got.iter().filter(|g| g.delivery_id == d.id && g.answered == 200).count(), 1, "{d:?}");
    }
    drop(db);
}

#[tokio::test]
async fn loopback_receivers_are_refused_unless_the_operator_allows_them() {
    let hub = TestHub::start_with(|c| {
        fast(c);
        c.events.allow_loopback = false;
    })
    .await;
    let receiver = Receiver::start().await;
    let port = receiver.url.rsplit(':').next().unwrap().split('/').next().unwrap().to_owned();
    for url in [
        receiver.url.clone(),
        format!("http://localhost:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
    ] {
        let (s, e) = operator(&hub, "POST", "/v1/event-endpoints", Some(json!({"url": url}))).await;
        assert_eq!((s, e["code"].as_str()), (400, Some("url_address_not_allowed")), "{url}: {e}");
        assert!(e["message"].as_str().unwrap().contains("loopback"), "{e}");
    }
    let (_, list) = operator(&hub, "GET", "/v1/event-endpoints", None).await;
    assert_eq!(list["data"], json!([]), "nothing stored");
    // The demo (and the tests' other hubs) allow them: the same URL is accepted there.
    let allowing = TestHub::start_with(fast).await;
    let (s, e) = operator(&allowing, "POST", "/v1/event-endpoints", Some(json!({"url": receiver.url}))).await;
    assert_eq!(s, 201, "{e}");
}

/// A worker with its own SQLite store, sending through the real HTTP sender with `resolver`.
struct Worker {
    store: Arc<callpay::store::SqlStore>,
    stop: tokio_util::sync::CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

impl Worker {
    fn start(
        store: Arc<callpay::store::SqlStore>,
        cfg: &callpay::config::EventsConfig,
        resolver: Arc<callpay::events::resolver::MemoryResolver>,
    ) -> Self {
        use callpay::events::endpoints::UrlPolicy;
        use callpay::events::relay::Relay;
        use callpay::events::sender::HttpSender;
        let sender = HttpSender::new(cfg, UrlPolicy::new(Default::default(), cfg), resolver);
        let relay = Arc::new(Relay::new(store.clone(), Arc::new(sender), cfg.clone()));
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(relay.run(stop.clone()));
        Self { store, stop, run }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.run.await.unwrap();
    }

    /// Queues one `payment.requested` event about payment `id`; answers its order key.
    async fn queue(&self, id: &str) -> String {
        use callpay::store::{Payment, Store};
        let before = Payment { id: id.into(), clinic_id: DEMO_CLINIC.into(), amount: 5000, ..Payment::default() };
        let after = Payment { status: callpay_protocol::PaymentStatus::Requested, version: 1, ..before.clone() };
        self.store.commit(&callpay::events::catalogue::payment_writes(&before, &after)).await.unwrap();
        id.to_owned()
    }

    /// The attempts of the delivery of payment `id`'s event, once it has at least `n`.
    async fn attempts(&self, endpoint: &str, id: &str, n: usize) -> Vec<callpay::store::outbox::Attempt> {
        use callpay::store::Outbox;
        eventually(async || {
            let deliveries = self.store.deliveries(endpoint, None, 100, None).await.unwrap();
            let d = deliveries.iter().find(|d| d.order_key == id)?;
            let attempts = self.store.attempts(&d.id).await.unwrap();
            (attempts.len() >= n).then_some(attempts)
        })
        .await
    }
}

/// DNS rebinding: a receiver's name that resolved to a good address may resolve to an internal
/// one at the next attempt. Each attempt resolves the name once, through the sender's resolver,
/// checks every address it got and connects only to those: no second lookup that could answer
/// differently. The name used here exists only in the test's resolver (`.test` never resolves
/// in DNS), so a delivery proves that the connection went where that one lookup said.
#[tokio::test]
async fn a_name_that_later_resolves_to_a_refused_address_is_not_sent_to() {
    use callpay::events::resolver::MemoryResolver;
    use callpay::events::{EndpointRequest, Events};
    use callpay::store::{Outbox, SqlStore};
    use std::net::IpAddr;
    let receiver = Receiver::start().await;
    let port = receiver.url.rsplit(':').next().unwrap().split('/').next().unwrap().to_owned();
    let name = "billing.platform.test";
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let resolver = Arc::new(MemoryResolver::default());
    resolver.set(name, [ip("127.0.0.1")]);
    let mut cfg = Config::default().events;
    fast_events(&mut cfg);
    // Plain http to a name (the receiver has no TLS), and loopback receivers (it is on this
    // machine): every other rule holds.
    cfg.allow_http = true;
    cfg.allow_loopback = true;
    let store = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
    let events = Events::new(store.clone(), cfg.clone(), Default::default());
    let request = EndpointRequest { url: Some(format!("http://{name}:{port}/hook")), ..EndpointRequest::default() };
    let (endpoint, _) = events.create_endpoint(request, "op").await.unwrap();
    let worker = Worker::start(store.clone(), &cfg, resolver.clone());

    // While the name is the receiver's: delivered, after one lookup.
    let first = worker.queue("pay_rebind_ok").await;
    let attempts = worker.attempts(&endpoint.id, &first, 1).await;
    assert_eq!((attempts[0].http_status, attempts[0].error.as_deref()), (Some(200), None), "{attempts:?}");
    assert_eq!(receiver.got().len(), 1);
    assert_eq!(resolver.lookups(name), 1, "resolved once for the attempt, and connected to what it said");

    // Then it resolves to the metadata service, to a private address beside the good one, to
    // the metadata service inside IPv6: each attempt is refused, nothing is sent, and the
    // attempt says why.
    let cases = [
        ("pay_rebind_metadata", vec![ip("169.254.169.254")], "169.254.169.254", "link-local"),
        ("pay_rebind_mixed", vec![ip("127.0.0.1"), ip("10.0.0.7")], "10.0.0.7", "private"),
        ("pay_rebind_mapped", vec![ip("::ffff:169.254.169.254")], "169.254.169.254", "link-local"),
        ("pay_rebind_ula", vec![ip("fd00::7")], "fd00::7", "unique local"),
    ];
    for (payment, answer, addr, kind) in &cases {
        resolver.set(name, answer.clone());
        let id = worker.queue(payment).await;
        let attempts = worker.attempts(&endpoint.id, &id, 1).await;
        let error = attempts[0].error.clone().unwrap_or_default();
        assert_eq!(attempts[0].http_status, None, "{attempts:?}");
        assert!(
            error.starts_with("refused: ") && error.contains(name) && error.contains(addr) && error.contains(kind),
            "a clear reason: {error}"
        );
        assert_eq!(receiver.got().len(), 1, "{payment}: nothing sent");
    }
    // Answering the receiver's address again: the refused deliveries were retried meanwhile,
    // and now arrive. Every attempt looked the name up exactly once.
    resolver.set(name, [ip("127.0.0.1")]);
    eventually(async || (receiver.got().len() == 1 + cases.len()).then_some(())).await;
    worker.stop().await;
    let mut made = 0;
    for d in store.deliveries(&endpoint.id, None, 100, None).await.unwrap() {
        assert_eq!(d.status, "delivered", "{d:?}");
        made += store.attempts(&d.id).await.unwrap().len();
    }
    assert!(made > 1 + cases.len(), "refused attempts were retried: {made}");
    assert_eq!(resolver.lookups(name), made, "one lookup per attempt");

    // The same endpoint under a configuration without loopback receivers: refused at send.
    cfg.allow_loopback = false;
    let worker = Worker::start(store.clone(), &cfg, resolver.clone());
    let id = worker.queue("pay_rebind_loopback").await;
    let attempts = worker.attempts(&endpoint.id, &id, 1).await;
    let error = attempts[0].error.clone().unwrap_or_default();
    assert!(error.starts_with("refused: ") && error.contains("127.0.0.1") && error.contains("loopback"), "{error}");
    assert_eq!(receiver.got().len(), 1 + cases.len(), "nothing more sent");
    worker.stop().await;
}

/// Queues one `payment.requested` event about payment `id` in `store`; answers the event's id.
async fn queue_event(store: &callpay::store::SqlStore, id: &str) -> String {
    use callpay::store::{Payment, Store, Write};
    let before = Payment { id: id.into(), clinic_id: DEMO_CLINIC.into(), amount: 5000, ..Payment::default() };
    let after = Payment { status: callpay_protocol::PaymentStatus::Requested, version: 1, ..before.clone() };
    let writes = callpay::events::catalogue::payment_writes(&before, &after);
    let Some(Write::Event { event, .. }) = writes.first() else { panic!("a request is an event") };
    let id = event.id.clone();
    store.commit(&writes).await.unwrap();
    id
}

/// Claims every due delivery and settles each as `outcome` says for its (order key, endpoint
/// id); `None` leaves it claimed and pending.
async fn settle_due(
    outbox: &dyn callpay::store::Outbox,
    outcome: impl Fn(&str, &str) -> Option<callpay::store::outbox::Settle>,
) {
    use callpay::store::outbox::Attempt;
    let now = callpay::store::now_ms();
    for c in outbox.claim(now, now + 60_000, 100).await.unwrap() {
        let d = &c.delivery;
        let Some(settle) = outcome(&d.order_key, &d.endpoint_id) else { continue };
        let attempt = Attempt {
            id: format!("att_{}", callpay::ids::random_id()),
            delivery_id: d.id.clone(),
            at: now,
            duration_ms: 1,
            http_status: Some(200),
            error: None,
            response_excerpt: None,
        };
        assert!(outbox.settle(&d.id, &c.lease_token, settle, &attempt).await.unwrap());
    }
}

/// The outbox's retention on SQLite and on PostgreSQL: what ended before the cut-off goes, with
/// its attempts, and so does an event with no delivery left; a pending delivery stays however
/// old (and so does its event), and so does everything that ended after the cut-off. Pruning
/// leaves each payment's order intact: a later event still waits behind a pending one.
async fn prune_scenario(url: &str) {
    use callpay::events::{EndpointRequest, Events};
    use callpay::store::outbox::{Pruned, Settle};
    use callpay::store::{Outbox, SqlStore, now_ms};
    let store = Arc::new(SqlStore::connect(url).await.unwrap());
    let outbox: &dyn Outbox = store.as_ref();
    let mut cfg = Config::default().events;
    cfg.allow_loopback = true;
    let events = Events::new(store.clone(), cfg, Default::default());
    let register = async |name: &str| {
        let request = EndpointRequest { url: Some(format!("http://127.0.0.1:9/{name}")), ..EndpointRequest::default() };
        events.create_endpoint(request, "op").await.unwrap().0.id
    };
    // Before any endpoint: an event nobody is sent.
    let nobody = queue_event(&store, "pay_nobody").await;
    let (a, b) = (register("a").await, register("b").await);
    let delivered = queue_event(&store, "pay_delivered").await;
    let gave_up = queue_event(&store, "pay_gave_up").await;
    let half = queue_event(&store, "pay_half").await;
    let waiting = queue_event(&store, "pay_waiting").await;
    let c = register("c").await;
    let canceled = queue_event(&store, "pay_canceled").await;
    let later = now_ms() + 3_600_000;
    settle_due(outbox, |key, endpoint| match key {
        "pay_delivered" => Some(Settle::Delivered),
        "pay_gave_up" if endpoint == a => Some(Settle::GiveUp),
        "pay_gave_up" => Some(Settle::Delivered),
        "pay_half" if endpoint == a => Some(Settle::Delivered),
        // Failed once, retried in an hour: pending, within its retry window.
        "pay_half" => Some(Settle::Retry(later)),
        "pay_canceled" if endpoint != c => Some(Settle::Delivered),
        _ => None,
    })
    .await;
    // Its endpoint deleted: the delivery to it is canceled.
    events.delete_endpoint(&c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let recent = queue_event(&store, "pay_recent").await;
    settle_due(outbox, |key, _| (key == "pay_recent").then_some(Settle::Delivered)).await;

    let pruned = outbox.prune(cut, 100).await.unwrap();
    // pay_delivered ×2, pay_gave_up ×2, pay_half to A, pay_canceled ×3 (to C without attempt).
    assert_eq!(pruned, Pruned { deliveries: 8, attempts: 7, events: 4 }, "{url}");
    for (id, kept) in
        [(&nobody, false), (&delivered, false), (&gave_up, false), (&canceled, false), (&half, true), (&waiting, true)]
    {
        assert_eq!(outbox.event(id).await.unwrap().is_some(), kept, "{url}: {id}");
    }
    assert!(outbox.event(&recent).await.unwrap().is_some(), "{url}: ended after the cut-off");
    let left = |list: Vec<callpay::store::outbox::Delivery>| {
        let mut left: Vec<(String, String)> = list.into_iter().map(|d| (d.order_key, d.status)).collect();
        left.sort();
        left
    };
    let pending = |k: &str| (k.to_owned(), "pending".to_owned());
    let done = |k: &str| (k.to_owned(), "delivered".to_owned());
    assert_eq!(
        left(outbox.deliveries(&a, None, 100, None).await.unwrap()),
        [done("pay_recent"), pending("pay_waiting")],
        "{url}"
    );
    let to_b = outbox.deliveries(&b, None, 100, None).await.unwrap();
    let half_b = to_b.iter().find(|d| d.order_key == "pay_half").unwrap().clone();
    assert_eq!(left(to_b), [pending("pay_half"), done("pay_recent"), pending("pay_waiting")], "{url}");
    assert_eq!(outbox.attempts(&half_b.id).await.unwrap().len(), 1, "{url}: a pending delivery keeps its attempts");
    assert!(outbox.deliveries(&c, None, 100, None).await.unwrap().is_empty(), "{url}");
    assert_eq!(outbox.prune(cut, 100).await.unwrap(), Pruned::default(), "{url}: nothing more before the cut-off");

    // A cut-off past everything, one row at a time: the recent deliveries go (oldest end
    // first), then their event; the pending ones stay.
    let all = now_ms() + 86_400_000;
    assert_eq!(outbox.prune(all, 1).await.unwrap(), Pruned { deliveries: 1, attempts: 1, events: 0 }, "{url}");
    assert_eq!(outbox.prune(all, 1).await.unwrap(), Pruned { deliveries: 1, attempts: 1, events: 1 }, "{url}");
    assert_eq!(outbox.prune(all, 100).await.unwrap(), Pruned::default(), "{url}: pending ones are never pruned");
    assert!(outbox.event(&half).await.unwrap().is_some() && outbox.event(&waiting).await.unwrap().is_some());

    // The payment's next event is numbered after the one still pending, and waits for it at B.
    let next = {
        use callpay::store::{Payment, Store};
        let before =
            Payment { id: "pay_half".into(), status: callpay_protocol::PaymentStatus::Succeeded, ..Payment::default() };
        let after = Payment { amount_refunded: 100, version: 3, ..before.clone() };
        store.commit(&callpay::events::catalogue::payment_writes(&before, &after)).await.unwrap();
        outbox
            .deliveries(&a, None, 100, None)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.event_type == "payment.refunded")
            .unwrap()
    };
    assert_eq!(next.seq, half_b.seq + 1, "{url}");
    let now = now_ms();
    let claimed: Vec<(String, String)> = outbox
        .claim(now, now + 60_000, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.delivery.order_key, c.delivery.endpoint_id))
        .collect();
    assert_eq!(claimed, [("pay_half".to_owned(), a.clone())], "{url}: at B it waits behind the pending one");
}

#[tokio::test]
async fn pruning_deletes_what_ended_past_the_retention_and_never_a_pending_delivery() {
    prune_scenario("sqlite::memory:").await;
    let db = crate::services::TempDb::new();
    prune_scenario(&db.url).await;
    drop(db);
}

//! Test plumbing: a hub + Stripe simulator per test (the demo's wiring, in memory), WebSocket
//! clients that record every raw frame, and a browser stand-in that pays the way Stripe.js does.

use bytes::Bytes;
use callpay::config::Config;
use callpay::demo::{Demo, DemoInfo, join_token};
use callpay_protocol::Role;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Longest wait for any expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running hub with its simulator.
pub struct TestHub {
    pub info: DemoInfo,
    pub sim: stripe_sim::SimHandle,
    pub state: callpay::app::AppState,
    pub http: Http,
    /// The demo's in-process mailbox (callpay's own receipts, unless an SMTP URL is set).
    pub mailbox: std::sync::Arc<callpay::mail::MemoryMailbox>,
}

impl TestHub {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_wrapped(tweak, |s| s).await
    }

    /// A hub whose store is wrapped by `wrap` (for fault injection).
    pub async fn start_wrapped(
        tweak: impl FnOnce(&mut Config),
        wrap: impl FnOnce(std::sync::Arc<dyn callpay::store::Store>) -> std::sync::Arc<dyn callpay::store::Store>,
    ) -> Self {
        Self::start_full(None, tweak, wrap).await
    }

    /// A hub whose SQLite database lives in `dir` (kept across a restart).
    pub async fn start_in(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_full(Some(dir.to_path_buf()), tweak, |s| s).await
    }

    async fn start_full(
        dir: Option<std::path::PathBuf>,
        tweak: impl FnOnce(&mut Config),
        wrap: impl FnOnce(std::sync::Arc<dyn callpay::store::Store>) -> std::sync::Arc<dyn callpay::store::Store>,
    ) -> Self {
        let settings = |c: &mut Config| {
            // Two attempts with a short timeout keep failure tests quick.
            c.stripe.max_attempts = 2;
            c.stripe.timeout_ms = 3_000;
            tweak(c);
        };
        let listen = "127.0.0.1:0".parse().unwrap();
        let demo: Demo = callpay::demo::start_wrapped(dir, listen, stripe_sim::SimConfig::for_tests(), settings, wrap)
            .await
            .expect("demo starts");
        let state = demo.app.state.clone();
        tokio::spawn(demo.app.run_until_stopped());
        Self { info: demo.info, sim: demo.sim, state, http: Http::new(), mailbox: demo.mailbox }
    }

    pub fn token_for(&self, call_id: &str, sub: &str, role: Role) -> String {
        join_token(&self.info.platform_secret, call_id, callpay::demo::DEMO_CLINIC, sub, sub, role)
    }

    pub fn ws_url(&self, call_id: &str, token: &str) -> String {
        format!("{}/v1/calls/{call_id}/ws?token={token}", self.info.hub_url.replace("http://", "ws://"))
    }

    pub async fn clinician(&self) -> Client {
        Client::connect(&self.ws_url(&self.info.call_id, &self.info.clinician_token)).await
    }

    pub async fn patient(&self) -> Client {
        Client::connect(&self.ws_url(&self.info.call_id, &self.info.patient_token)).await
    }

    /// Calls the simulator's control API.
    pub async fn sim_control(&self, method: &str, path: &str, body: Value) -> Value {
        let r = self
            .http
            .send(
                method,
                &format!("{}{path}", self.info.stripe_url),
                &[
                    ("authorization", &format!("Bearer {}", self.sim.secret_key())),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await;
        r.1
    }
}

/// A WebSocket client that keeps every raw text frame it received.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every text frame so far, raw.
    pub raw: Vec<String>,
    pub welcome: Value,
    pub closed: Option<(u16, String)>,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = open_ws(url).await.expect("upgrade");
        let mut c = Self { ws, raw: Vec::new(), welcome: Value::Null, closed: None };
        c.welcome = c.next().await;
        assert_eq!(c.welcome["type"], "welcome", "first frame is welcome: {}", c.welcome);
        c
    }

    /// The next text frame as JSON.
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within WAIT")
                .expect("stream open")
                .expect("no ws error");
            match msg {
                Message::Text(t) => {
                    self.raw.push(t.to_string());
                    return serde_json::from_str(&t).unwrap();
                }
                Message::Close(f) => {
                    self.closed = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    panic!("closed while waiting for a frame: {:?}", self.closed);
                }
                _ => {}
            }
        }
    }

    /// Reads until a frame of `kind` (optionally matching `pred`), returning it.
    pub async fn until(&mut self, kind: &str) -> Value {
        self.until_where(kind, |_| true).await
    }

    pub async fn until_where(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let f = self.next().await;
            if f["type"] == kind && pred(&f) {
                return f;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn until_closed(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("close within WAIT") {
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    self.closed = Some((code, reason));
                    return code;
                }
                Some(Ok(Message::Text(t))) => self.raw.push(t.to_string()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return 1006,
            }
        }
    }

    /// Reads (and keeps in `raw`) whatever arrives for `d`, or until the connection ends.
    pub async fn drain_for(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, self.ws.next()).await {
            if let Message::Text(t) = msg {
                self.raw.push(t.to_string());
            }
        }
    }

    /// How many frames of `kind` about `payment_id` arrived so far.
    pub fn count(&self, kind: &str, payment_id: &str) -> usize {
        self.raw
            .iter()
            .filter_map(|f| serde_json::from_str::<Value>(f).ok())
            .filter(|f| f["type"] == kind && f["payment"]["payment_id"] == payment_id)
            .count()
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    pub async fn request(&mut self, client_ref: &str, amount: i64, description: &str) {
        self.send(json!({"type": "payment.request", "client_ref": client_ref, "amount": amount, "currency": "aud", "description": description})).await;
    }

    /// Waits for an `error` frame and returns its code.
    pub async fn error_code(&mut self) -> String {
        self.until("error").await["code"].as_str().unwrap().to_owned()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The handshake a client makes for `url`: a `?token=` in it is sent the way clients must send
/// it, as the `callpay.bearer.<token>` subprotocol, not in the URL.
pub fn ws_request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (target, token) = callpay_protocol::split_token_url(url);
    let mut req = target.into_client_request().expect("a ws:// URL");
    if let Some(token) = token {
        let offered = callpay_protocol::offered_protocols(token).parse().expect("header value");
        req.headers_mut().insert("sec-websocket-protocol", offered);
    }
    req
}

/// Opens a WebSocket to `url` (see [`ws_request`]).
pub async fn open_ws(
    url: &str,
) -> Result<
    (WebSocketStream<MaybeTlsStream<TcpStream>>, tokio_tungstenite::tungstenite::handshake::client::Response),
    tokio_tungstenite::tungstenite::Error,
> {
    connect_async(ws_request(url)).await
}

/// Minimal HTTP client.
pub struct Http {
    client: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new() -> Self {
        Self { client: HttpClient::builder(TokioExecutor::new()).build_http() }
    }

    pub async fn send(&self, method: &str, url: &str, headers: &[(&str, &str)], body: String) -> (u16, Value, String) {
        let (status, _, json, text) = self.send_full(method, url, headers, body).await;
        (status, json, text)
    }

    /// Like `send`, with the response headers.
    pub async fn send_full(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> (u16, hyper::HeaderMap, Value, String) {
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self.client.request(req.body(Full::new(Bytes::from(body))).unwrap()).await.expect("http");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    pub async fn form(&self, url: &str, body: &str) -> (u16, Value) {
        let (s, v, _) =
            self.send("POST", url, &[("content-type", "application/x-www-form-urlencoded")], body.to_owned()).await;
        (s, v)
    }
}

/// What the patient's browser does with Stripe.js: create a card PaymentMethod with the
/// publishable key, then confirm the intent with the client secret and a receipt e-mail.
/// Returns (HTTP status, body) of the confirm call.
pub async fn pay_like_stripe_js(hub: &TestHub, payment: &Value, card: &str, email: &str) -> (u16, Value) {
    pay_on_sim(&hub.http, &hub.info.stripe_url, payment, card, email).await
}

/// [`pay_like_stripe_js`] against the simulator at `sim_url`.
pub async fn pay_on_sim(http: &Http, sim_url: &str, payment: &Value, card: &str, email: &str) -> (u16, Value) {
    let stripe = &payment["stripe"];
    let pk = stripe["publishable_key"].as_str().expect("patient copy has the publishable key");
    let acct = stripe["stripe_account"].as_str().unwrap();
    let secret = stripe["client_secret"].as_str().unwrap();
    let pi = secret.split("_secret_").next().unwrap();
    let base = sim_url.trim_end_matches('/');
    let (status, pm) = http
        .form(&format!("{base}/v1/payment_methods"), &format!("key={pk}&_stripe_account={acct}&type=card&card[number]={card}&card[exp_month]=12&card[exp_year]=2040&card[cvc]=123"))
        .await;
    assert_eq!(status, 200, "{pm}");
    let email = form_urlencoded::byte_serialize(email.as_bytes()).collect::<String>();
    http.form(
        &format!("{base}/v1/payment_intents/{pi}/confirm"),
        &format!(
            "key={pk}&_stripe_account={acct}&client_secret={secret}&payment_method={}&receipt_email={email}",
            pm["id"].as_str().unwrap()
        ),
    )
    .await
}

/// Answers the 3-D Secure challenge as the patient would.
pub async fn answer_3ds(hub: &TestHub, payment: &Value, outcome: &str) -> Value {
    let stripe = &payment["stripe"];
    let (pk, acct, secret) = (
        stripe["publishable_key"].as_str().unwrap(),
        stripe["stripe_account"].as_str().unwrap(),
        stripe["client_secret"].as_str().unwrap(),
    );
    let pi = secret.split("_secret_").next().unwrap();
    let (status, body) = hub
        .http
        .form(
            &format!("{}/_sim/3ds/{pi}", hub.info.stripe_url),
            &format!("key={pk}&_stripe_account={acct}&client_secret={secret}&outcome={outcome}"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Asserts every POST the hub made to Stripe (secret key) carried an Idempotency-Key, and returns
/// how many there were.
pub async fn assert_hub_posts_are_idempotent(hub: &TestHub) -> usize {
    let log = hub.sim_control("GET", "/_sim/requests", Value::Null).await;
    let posts: Vec<&Value> =
        log["data"].as_array().unwrap().iter().filter(|r| r["secret_key"] == true && r["method"] == "POST").collect();
    for r in &posts {
        assert!(r["idempotency_key"].as_str().is_some_and(|k| k.starts_with("callpay:")), "POST without our key: {r}");
    }
    posts.len()
}

/// Asserts no frame the clinician got carries a client secret.
pub fn assert_no_secret(frames: &[String]) {
    for f in frames {
        assert!(!f.contains("client_secret") && !f.contains("_secret_"), "clinician frame leaks a secret: {f}");
    }
}

/// Polls an observable condition (state written by another task) until it holds.
pub async fn eventually<T>(mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not reached within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sets a clinic's enablement and Stripe link directly in the store (what the admin flows do).
pub async fn set_clinic(hub: &TestHub, clinic_id: &str, enabled: bool, account: Option<&str>) {
    use callpay::store::{ClinicChange, StripeLink, Write};
    let current = hub.state.store.clinic(clinic_id).await.unwrap().expect("clinic exists");
    let mut writes = vec![Write::Clinic { id: clinic_id.into(), change: ClinicChange::SetEnabled(true) }];
    if let Some(old) = current.stripe_account {
        writes.push(Write::Clinic { id: clinic_id.into(), change: ClinicChange::Unlink { account: old } });
    }
    if let Some(acct) = account {
        let link = StripeLink {
            account: acct.into(),
            publishable_key: None,
            display_name: None,
            livemode: false,
            linked_by: "test".into(),
            linked_at: callpay::store::now_ms(),
        };
        writes.push(Write::Clinic { id: clinic_id.into(), change: ClinicChange::Link(link) });
    }
    writes.push(Write::Clinic { id: clinic_id.into(), change: ClinicChange::SetEnabled(enabled) });
    assert_eq!(hub.state.store.commit(&writes).await.unwrap(), callpay::store::Committed::Applied);
}

/// The clinic revokes callpay on Stripe's side (what its dashboard's "disconnect" does); Stripe
/// then sends `account.application.deauthorized`. Returns the HTTP status.
pub async fn deauthorize_on_stripe(hub: &TestHub, account: &str) -> u16 {
    let url = format!("{}/oauth/deauthorize", hub.info.stripe_url);
    let body =
        format!("client_secret={}&client_id={}&stripe_user_id={account}", hub.sim.secret_key(), hub.sim.client_id());
    hub.http.form(&url, &body).await.0
}

/// Lists enablement requests with `claims` signed by the platform as the bearer token; returns
/// the status (a cheap way to ask "is this an admin token?").
pub async fn admin_status_with_claims(hub: &TestHub, claims: &Value) -> u16 {
    let token = callpay::auth::sign_hs256(&hub.info.platform_secret, claims);
    let url = format!("{}/v1/enablement-requests", hub.info.hub_url);
    hub.http.send("GET", &url, &[("authorization", &format!("Bearer {token}"))], String::new()).await.0
}

/// A `Stripe-Signature` header for `payload`, signed now (or at `at`, Unix seconds) with
/// `secret`: the simulator's signer, which its own tests check against Stripe's crate.
pub fn sign_webhook(payload: &str, secret: &str, at: Option<i64>) -> String {
    let t = at.unwrap_or_else(|| callpay::auth::now_secs() as i64);
    stripe_sim::webhooks::signature_header(secret, t, payload)
}

//! Shared test plumbing: a simulator per test, a raw HTTP client for exact status/header checks,
//! an async-stripe client pointed at the simulator, and a webhook receiver that verifies
//! signatures with async-stripe's webhook crate.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use stripe_sim::{SimConfig, SimHandle};
use tokio::sync::mpsc;

/// Longest a test waits for anything asynchronous before failing.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn sim() -> SimHandle {
    stripe_sim::spawn(SimConfig::for_tests()).await.expect("sim starts")
}

/// A raw response.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

/// Minimal HTTP client so tests can send exactly what Stripe.js or curl would.
pub struct Http {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(h: &SimHandle) -> Self {
        Self {
            base: h.url.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let resp =
            self.client.request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, body, text }
    }

    /// POST form with the platform secret key and optional extra headers.
    pub async fn post(&self, key: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Resp {
        let auth = format!("Bearer {key}");
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.send("POST", path, &headers, body).await
    }

    pub async fn get(&self, key: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {key}");
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.send("GET", path, &headers, "").await
    }

    pub async fn json(&self, key: &str, method: &str, path: &str, body: Value) -> Resp {
        let auth = format!("Bearer {key}");
        self.send(method, path, &[("authorization", &auth), ("content-type", "application/json")], &body.to_string())
            .await
    }
}

/// A connected account made through the control API.
pub async fn account(h: &SimHandle, http: &Http) -> String {
    let r = http
        .json(h.secret_key(), "POST", "/_sim/accounts", serde_json::json!({"business_name": "Harbour Clinic"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

/// async-stripe's client against the simulator.
pub fn stripe(h: &SimHandle) -> stripe::Client {
    stripe::ClientBuilder::new(h.secret_key()).url(h.url.clone()).build().expect("client")
}

/// A verified webhook as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub kind: String,
    pub account: Option<String>,
    pub raw: Value,
}

/// Receives webhooks on a loopback port, verifying each with `stripe_webhook::Webhook`.
pub struct Receiver {
    pub url: String,
    pub rx: mpsc::UnboundedReceiver<Received>,
    /// Answer this many requests with 500 before answering 200.
    pub fail_first: Arc<AtomicU32>,
    pub rejected: Arc<AtomicU32>,
}

#[derive(Clone)]
struct RecvState {
    secret: Arc<std::sync::Mutex<String>>,
    tx: mpsc::UnboundedSender<Received>,
    fail_first: Arc<AtomicU32>,
    rejected: Arc<AtomicU32>,
}

impl Receiver {
    pub async fn start(secret: &str) -> (Self, Arc<std::sync::Mutex<String>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let fail_first = Arc::new(AtomicU32::new(0));
        let rejected = Arc::new(AtomicU32::new(0));
        let secret = Arc::new(std::sync::Mutex::new(secret.to_owned()));
        let state =
            RecvState { secret: secret.clone(), tx, fail_first: fail_first.clone(), rejected: rejected.clone() };
        let app = axum::Router::new().route("/hook", post(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (Self { url, rx, fail_first, rejected }, secret)
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("webhook within WAIT").expect("receiver alive")
    }

    /// Waits for an event of `kind`, returning it and everything seen before it.
    pub async fn until(&mut self, kind: &str) -> (Received, Vec<Received>) {
        let mut before = Vec::new();
        loop {
            let ev = self.next().await;
            if ev.kind == kind {
                return (ev, before);
            }
            before.push(ev);
        }
    }
}

async fn receive(State(s): State<RecvState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if s.fail_first.load(Ordering::SeqCst) > 0 {
        s.fail_first.fetch_sub(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let payload = std::str::from_utf8(&body).unwrap();
    let sig = headers.get("stripe-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let secret = s.secret.lock().unwrap().clone();
    match stripe_webhook::Webhook::construct_event(payload, sig, &secret) {
        Ok(event) => {
            let raw: Value = serde_json::from_str(payload).unwrap();
            let _ = s.tx.send(Received {
                id: event.id.as_str().to_owned(),
                kind: event.type_.as_str().to_owned(),
                account: event.account.clone(),
                raw,
            });
            StatusCode::OK
        }
        Err(_) => {
            s.rejected.fetch_add(1, Ordering::SeqCst);
            StatusCode::BAD_REQUEST
        }
    }
}

/// Registers a Connect endpoint for `url` and returns its signing secret.
pub async fn connect_endpoint(h: &SimHandle, http: &Http, url: &str) -> String {
    let body = format!("url={}&enabled_events[]=*&connect=true", urlencode(url));
    let r = http.post(h.secret_key(), "/v1/webhook_endpoints", &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["secret"].as_str().unwrap().to_owned()
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Polls `f` until it returns Some, for state the simulator records asynchronously.
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

//! The shared simulator handle: configuration, the locked world, and the two ways handlers touch
//! it — a read ([`Sim::read`]) or a write ([`Sim::write`]) that applies Idempotency-Key rules,
//! records events and hands them to webhook delivery once the lock is released.

use crate::config::SimConfig;
use crate::error::{ApiError, ApiResult};
use crate::objects;
use crate::state::{Endpoint, IdempotentResult, World};
use crate::webhooks;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Cheap-to-clone handle on one simulator.
#[derive(Clone)]
pub struct Sim(Arc<Inner>);

struct Inner {
    config: SimConfig,
    world: Mutex<World>,
    base_url: OnceLock<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A follow-up step run later outside the request (e.g. `processing` -> `succeeded`).
pub type Later = Box<dyn FnOnce(&mut Tx<'_>) + Send>;

/// One write operation's view of the world.
pub struct Tx<'a> {
    /// The world, locked.
    pub world: &'a mut World,
    /// The account the request acts on.
    pub account: String,
    /// Events recorded so far, delivered after the lock is released.
    pub emitted: Vec<Value>,
    /// Steps to run after a delay, each in its own later transaction.
    pub later: Vec<(Duration, Later)>,
    /// The simulator's public base URL (for receipt and 3DS links).
    pub base_url: String,
    /// `Idempotency-Key` of the request, recorded in events.
    pub idempotency_key: Option<String>,
    /// The platform's Connect client id.
    pub client_id: String,
}

impl Tx<'_> {
    /// Records an event of `kind` about `object` in the acting account.
    pub fn emit(&mut self, kind: &str, object: &Value, previous: Option<Value>) {
        let account = self.account.clone();
        self.emit_for(&account, kind, object, previous);
    }

    /// Records an event in `account` (which may differ from the caller's, e.g. deauthorization).
    pub fn emit_for(&mut self, account: &str, kind: &str, object: &Value, previous: Option<Value>) {
        let connected = account != self.world.platform;
        let pending = self.world.endpoints.iter().filter(|e| e.wants(kind, connected)).count();
        let req_id = crate::ids::new_id("req");
        let event = objects::event(
            kind,
            object,
            connected.then_some(account),
            previous,
            (Some(&req_id), self.idempotency_key.as_deref()),
            pending,
        );
        if let Some(acct) = self.world.accounts.get_mut(account) {
            acct.events.insert(event.clone());
        }
        self.emitted.push(event);
    }

    /// The acting account's data.
    pub fn acct(&mut self) -> &mut crate::state::AccountData {
        self.world.accounts.get_mut(&self.account).expect("caller's account was checked at authentication")
    }
}

impl Sim {
    /// A simulator with an empty world.
    pub fn new(config: SimConfig) -> Self {
        let mut world = World::new(&config.platform_name);
        for (i, target) in config.webhooks.iter().enumerate() {
            let id = format!("we_config_{i}");
            let all = vec!["*".to_owned()];
            world.endpoints.push(Endpoint {
                object: objects::webhook_endpoint(&id, &target.url, &all, Some("configured at start-up"), None),
                id,
                url: target.url.clone(),
                secret: target.secret.clone(),
                connect: true,
                from_config: true,
                enabled_events: all,
            });
        }
        // Webhooks are small and latency-bound: send them without Nagle's delay.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Self(Arc::new(Inner { config, world: Mutex::new(world), base_url: OnceLock::new(), http }))
    }

    /// Settings.
    pub fn config(&self) -> &SimConfig {
        &self.0.config
    }

    /// The HTTP client webhook deliveries use.
    pub fn http(&self) -> &Client<HttpConnector, Full<Bytes>> {
        &self.0.http
    }

    /// `http://host:port/`, known once the listener is bound.
    pub fn base_url(&self) -> String {
        self.0.base_url.get().cloned().unwrap_or_default()
    }

    pub(crate) fn set_base_url(&self, url: String) {
        let _ = self.0.base_url.set(url);
    }

    /// Runs `f` with the world locked. `f` must not block.
    pub fn with_world<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        // A panic in one handler must not take the whole simulator down with a poisoned lock.
        let mut guard = self.0.world.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// A read-only request.
    pub fn read(&self, f: impl FnOnce(&World) -> ApiResult<Value>) -> Response {
        match self.with_world(|w| f(w)) {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => e.into_response(),
        }
    }

    /// A write request on `account`. With an Idempotency-Key, a repeat with the same parameters
    /// replays the first response; with other parameters it is an `idempotency_error`.
    /// Only results of requests that executed (2xx, and card declines) are kept for replay,
    /// as Stripe does: a validation failure can be retried with the same key.
    pub fn write(
        &self,
        account: &str,
        idempotency_key: Option<&str>,
        fingerprint: String,
        op: impl FnOnce(&mut Tx<'_>) -> ApiResult<Value>,
    ) -> Response {
        let (result, emitted, later) = self.with_world(|world| {
            if let Some(key) = idempotency_key
                && let Some(saved) = world.idempotency.get(&(account.to_owned(), key.to_owned())) {
                    if saved.fingerprint != fingerprint {
                        let err = ApiError::idempotency(format!(
                            "Keys for idempotent requests can only be used with the same parameters they were first used with. \
                             Try using a key other than '{key}' if you meant to execute a different request."
                        ));
                        return (Err(err), vec![], vec![]);
                    }
                    let status = StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK);
                    return (Ok((status, saved.body.clone(), true)), vec![], vec![]);
                }
            let mut tx = Tx {
                world,
                account: account.to_owned(),
                emitted: Vec::new(),
                later: Vec::new(),
                base_url: self.base_url(),
                idempotency_key: idempotency_key.map(str::to_owned),
                client_id: self.config().client_id.clone(),
            };
            let outcome = op(&mut tx);
            let (emitted, later) = (std::mem::take(&mut tx.emitted), std::mem::take(&mut tx.later));
            let (status, body) = match outcome {
                Ok(v) => (StatusCode::OK, v),
                Err(e) => (e.status, e.body()),
            };
            if let Some(key) = idempotency_key
                && (status.is_success() || status == StatusCode::PAYMENT_REQUIRED) {
                    world.idempotency.insert(
                        (account.to_owned(), key.to_owned()),
                        IdempotentResult { fingerprint, status: status.as_u16(), body: body.clone() },
                    );
                }
            (Ok((status, body, false)), emitted, later)
        });
        self.deliver(emitted);
        self.schedule(account, later);
        match result {
            Err(e) => e.into_response(),
            Ok((status, body, replayed)) => {
                let mut resp = (status, axum::Json(body)).into_response();
                if status == StatusCode::PAYMENT_REQUIRED {
                    // Stripe marks card declines as final: retrying the same request will not help.
                    resp.headers_mut().insert("stripe-should-retry", "false".parse().expect("static"));
                }
                if let Some(key) = idempotency_key {
                    resp.headers_mut()
                        .insert("idempotency-key", key.parse().unwrap_or_else(|_| "invalid".parse().expect("static")));
                }
                if replayed {
                    resp.headers_mut().insert("idempotent-replayed", "true".parse().expect("static"));
                }
                resp
            }
        }
    }

    /// Hands recorded events to webhook delivery.
    pub fn deliver(&self, events: Vec<Value>) {
        if events.is_empty() {
            return;
        }
        let jobs = self.with_world(|w| webhooks::plan(w, events));
        for job in jobs {
            tokio::spawn(webhooks::run(self.clone(), job));
        }
    }

    fn schedule(&self, account: &str, later: Vec<(Duration, Later)>) {
        for (wait, step) in later {
            let sim = self.clone();
            let account = account.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let emitted = sim.with_world(|world| {
                    let mut tx = Tx {
                        world,
                        account,
                        emitted: Vec::new(),
                        later: Vec::new(),
                        base_url: sim.base_url(),
                        idempotency_key: None,
                        client_id: sim.config().client_id.clone(),
                    };
                    step(&mut tx);
                    tx.emitted
                });
                sim.deliver(emitted);
            });
        }
    }
}

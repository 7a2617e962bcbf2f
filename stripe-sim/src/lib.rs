//! stripe-sim: an offline, in-memory Stripe for callpay's demo, tests and load tests.
//!
//! It serves Stripe's REST shapes on a loopback port: PaymentIntents with Stripe's test cards,
//! charges and refunds, Connect accounts selected by `Stripe-Account`, Idempotency-Key replay,
//! Connect OAuth for Standard accounts, signed webhooks with retries, fault injection, a
//! Stripe.js stand-in and a dashboard.
//!
//! Modules: [`config`] settings; [`sim`] the shared handle and write/read discipline;
//! [`state`] the world; [`objects`] Stripe-shaped JSON; [`webhooks`] signing and delivery;
//! `api` the HTTP routes; [`form`], [`money`], [`cards`], [`ids`], [`error`] helpers.

#![recursion_limit = "256"]
#![warn(missing_docs)]

mod api;
pub mod cards;
pub mod config;
pub mod error;
pub mod form;
pub mod ids;
pub mod money;
pub mod objects;
pub mod sim;
pub mod state;
pub mod webhooks;

pub use config::{SimConfig, WebhookTarget};
pub use sim::Sim;

use serde_json::json;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    /// Base URL with a trailing slash, e.g. `http://127.0.0.1:41234/`.
    pub url: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// The shared state, for in-process inspection.
    pub sim: Sim,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The platform secret key.
    pub fn secret_key(&self) -> &str {
        &self.sim.config().secret_key
    }

    /// The platform publishable key.
    pub fn publishable_key(&self) -> &str {
        &self.sim.config().publishable_key
    }

    /// The Connect client id.
    pub fn client_id(&self) -> &str {
        &self.sim.config().client_id
    }

    /// The one-line JSON scripts read: url, keys, client id.
    pub fn ready_json(&self) -> serde_json::Value {
        json!({
            "url": self.url,
            "secret_key": self.secret_key(),
            "publishable_key": self.publishable_key(),
            "client_id": self.client_id(),
            "stripe_js": format!("{}{}", self.url.trim_end_matches('/'), self.sim.config().stripe_js_path),
        })
    }

    /// Stops accepting requests and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Binds `config.listen` and serves the simulator on the current Tokio runtime.
pub async fn spawn(config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}/");
    let sim = Sim::new(config);
    sim.set_base_url(url.clone());
    let app = api::router(sim.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Small request/response pairs: answer without waiting for Nagle's algorithm.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "stripe-sim server stopped");
        }
    });
    Ok(SimHandle { url, addr, sim, stop: Some(stop_tx), task: Some(task) })
}

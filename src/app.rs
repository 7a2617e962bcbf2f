//! Start-up: the shared [`AppState`], the router, binding the listener, and running until the
//! root cancellation token fires, then draining sessions and closing the store.

use crate::admin::connect::{ConnectApi, StripeConnect};
use crate::auth::Verifier;
use crate::bus::{Bus, MemoryBus, RedisBus};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::payments::Payments;
use crate::payments::stripe::{StripeApi, StripeGateway};
use crate::rooms::RoomRegistry;
use crate::store::{SqlStore, Store};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every handler and session shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub config: Arc<Config>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Fan-out.
    pub hub: Arc<Hub>,
    /// The payment service.
    pub payments: Arc<Payments>,
    /// Stripe's API (also used directly by the admin pages for account names).
    pub payments_stripe: Arc<dyn StripeApi>,
    /// Stripe Connect OAuth.
    pub connect: Arc<dyn ConnectApi>,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Every session and background task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// One permit per open WebSocket.
    pub connection_slots: Arc<Semaphore>,
    /// Demo page links (only in `callpay demo`).
    pub demo: Option<Arc<crate::http::web::DemoLinks>>,
    /// Where `/metrics` is served when `server.metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
}

/// External I/O the app runs on; tests and the demo pass their own.
pub struct Dependencies {
    /// Where state is kept.
    pub store: Arc<dyn Store>,
    /// Stripe.
    pub stripe: Arc<dyn StripeApi>,
    /// Cross-node fan-out.
    pub bus: Arc<dyn Bus>,
    /// Stripe Connect OAuth.
    pub connect: Arc<dyn ConnectApi>,
}

impl Dependencies {
    /// The production set: the configured database, Stripe, and the in-process bus.
    pub async fn from_config(config: &Config, node_id: &str) -> anyhow::Result<Self> {
        let store = SqlStore::connect(&config.database.url).await.context("opening the database")?;
        let stripe = StripeGateway::new(&config.stripe).context("configuring the Stripe client")?;
        let bus: Arc<dyn Bus> = match &config.bus.redis_url {
            Some(url) => Arc::new(RedisBus::connect(url, node_id.to_owned()).await.context("connecting to Redis")?),
            None => Arc::new(MemoryBus::new(node_id)),
        };
        Ok(Self {
            store: Arc::new(store),
            stripe: Arc::new(stripe),
            bus,
            connect: Arc::new(StripeConnect::new(&config.stripe)),
        })
    }
}

/// A bound, not yet running app.
pub struct App {
    /// Shared state (tests reach into it).
    pub state: AppState,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    addr: SocketAddr,
}

/// A random node id for bus envelopes.
pub fn node_id() -> String {
    format!("node_{}", crate::payments::random_id())
}

impl App {
    /// Binds `config.server.listen` and wires everything.
    pub async fn build(config: Config, deps: Dependencies, node_id: String) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        Self::build_on(listener, config, deps, node_id).await
    }

    /// Wires everything on an already bound listener (the demo binds first to learn its port).
    pub async fn build_on(
        listener: tokio::net::TcpListener,
        config: Config,
        deps: Dependencies,
        node_id: String,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let metrics_listener = match config.server.metrics_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} for metrics (server.metrics_listen)"))?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let verifier = Verifier::new(&config.auth).context("auth settings")?;
        let rooms = RoomRegistry::new(config.stripe.publishable_key.clone());
        rooms.set_max_per_participant(config.server.max_sockets_per_participant);
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::default());
        deps.bus.observe_with(metrics.clone());
        let stripe: Arc<dyn crate::payments::stripe::StripeApi> =
            Arc::new(crate::payments::stripe::Timed::new(deps.stripe, metrics.clone()));
        let hub = Hub::new(node_id, rooms, deps.bus, deps.store.clone(), tracker.clone());
        let payments = Payments::new(deps.store.clone(), stripe.clone(), hub.clone(), config.payments.clone());
        let shutdown = CancellationToken::new();
        hub.start(shutdown.clone());
        let payments = Arc::new(payments);
        tracker.spawn(payments.clone().run_sweeper(shutdown.clone()));
        let cap = crate::limits::connection_cap(config.server.max_connections);
        tracing::info!(max_connections = cap, "connection cap (server.max_connections; 0 = from the open-file limit)");
        let state = AppState {
            connection_slots: Arc::new(Semaphore::new(cap)),
            config: Arc::new(config),
            store: deps.store,
            hub,
            payments,
            payments_stripe: stripe,
            connect: deps.connect,
            verifier: Arc::new(verifier),
            metrics,
            tracker,
            shutdown,
            demo: None,
            metrics_addr,
        };
        Ok(Self { state, listener, metrics_listener, addr })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `state.shutdown` is cancelled, then waits (bounded) for sessions to close.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let state = self.state;
        let router = crate::http::router(state.clone());
        let stop = state.shutdown.clone();
        let limits = crate::http::serve::Limits {
            header_read_timeout: Duration::from_millis(state.config.server.header_read_timeout_ms.max(1)),
            max_connections: state.config.server.max_http_connections,
            grace: Duration::from_secs(state.config.server.shutdown_grace_secs),
        };
        if let Some(listener) = self.metrics_listener {
            let metrics = crate::http::metrics_router(state.clone());
            let serving = crate::http::serve::serve(listener, metrics, limits, stop.clone(), state.metrics.clone());
            state.tracker.spawn(serving);
        }
        crate::http::serve::serve(self.listener, router, limits, stop, state.metrics.clone()).await;
        // axum does not wait for upgraded sockets; sessions close themselves on the token.
        state.tracker.close();
        let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
        if tokio::time::timeout(grace, state.tracker.wait()).await.is_err() {
            tracing::warn!(?grace, "sessions still open after the grace period");
        }
        Ok(())
    }
}

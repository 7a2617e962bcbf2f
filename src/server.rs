//! The server: which routes exist, binding the listeners, and running until the root
//! cancellation token fires, then draining sessions. The top of the crate: it knows every
//! transport ([`crate::ws`], [`crate::admin`], [`crate::webhook`], [`crate::http`]); none of them
//! knows it.

use crate::app::{AppState, Dependencies};
use crate::config::Config;
use crate::http::web::DemoLinks;
use crate::http::{ApiError, health, web};
use anyhow::Context;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The internal listener's routes: `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(health::metrics)).with_state(state)
}

/// Every route. `/metrics` is here unless `server.metrics_listen` gives it an address of its own.
pub fn router(state: AppState) -> Router {
    let deadline = Duration::from_millis(state.config.server.request_timeout_ms.max(1));
    let public = Router::new()
        .route("/v1/calls/{call_id}/ws", get(crate::ws::upgrade))
        .route("/v1/stripe/webhook", post(crate::webhook::receive))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready));
    let public = if state.config.server.metrics_listen.is_none() {
        public.route("/metrics", get(health::metrics))
    } else {
        public
    };
    public
        .merge(crate::admin::router())
        .route("/", get(web::root))
        .route("/demo", get(web::demo))
        .route("/call/clinician", get(web::clinician))
        .route("/call/patient", get(web::patient))
        .route("/admin/client-payment", get(web::admin))
        .route("/web/{*path}", get(web::asset))
        .route("/v1/client-config", get(web::client_config))
        .route("/pay", get(web::pay))
        .route("/demo/mailbox", get(web::mailbox))
        .route("/v1/calls/{call_id}/payments/{payment_id}/link", post(crate::links::create))
        .route("/v1/calls/{call_id}/payments/{payment_id}/language", axum::routing::put(crate::links::call_language))
        .route("/v1/pay-link", get(crate::links::open))
        .route("/v1/pay-link/submitted", post(crate::links::submitted))
        .route("/v1/pay-link/language", axum::routing::put(crate::links::link_language))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such route.") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "This route does not take that method.")
        })
        .layer(axum::middleware::from_fn_with_state(deadline, within_deadline))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Least time background tasks get to stop after the sessions have closed (they stop on the
/// signal; the hub's upkeep on the last session's close).
const BACKGROUND_GRACE: Duration = Duration::from_millis(500);
/// Longest shutdown taken from the settings (a setting of days would only overflow the clock).
const SHUTDOWN_MAX: Duration = Duration::from_secs(7_200);

/// Largest request body: admin bodies are a few hundred bytes and Stripe's events a few KiB.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Answers 408 when a request (its body included) takes longer than the deadline, so a client
/// trickling a body cannot hold a connection and a handler indefinitely.
async fn within_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "The request took too long; send it again.")
                .into_response()
        }
    }
}

/// A bound, not yet running app.
pub struct App {
    /// Shared state (tests reach into it).
    pub state: AppState,
    /// Links for the `/demo` page (set by `callpay demo` only).
    pub demo: Option<DemoLinks>,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    addr: SocketAddr,
}

impl App {
    /// Binds `config.server.listen` and wires everything.
    pub async fn build(config: Config, deps: Dependencies, node_id: String) -> anyhow::Result<Self> {
        let listener = crate::http::serve::bind(config.server.listen)
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
                crate::http::serve::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} for metrics (server.metrics_listen)"))?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let state = AppState::new(config, deps, node_id, metrics_addr)?;
        Ok(Self { state, demo: None, listener, metrics_listener, addr })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `state.shutdown` is cancelled, then waits (bounded) for sessions to close.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let state = self.state;
        let mut router = router(state.clone());
        if let Some(demo) = self.demo {
            router = router.layer(Extension(Arc::new(demo)));
        }
        let stop = state.shutdown.clone();
        let limits = crate::http::serve::Limits {
            header_read_timeout: Duration::from_millis(state.config.server.header_read_timeout_ms.max(1)),
            max_connections: state.config.server.max_http_connections,
            grace: Duration::from_secs(state.config.server.shutdown_grace_secs),
        };
        state.tracker.spawn(crate::ws::drain::release(state.clone()));
        state.tracker.spawn(crate::ws::drain::report_turned_away(state.clone()));
        if let Some(listener) = self.metrics_listener {
            let metrics = metrics_router(state.clone());
            let closed = CancellationToken::new();
            let serving =
                crate::http::serve::serve(listener, metrics, limits, stop.clone(), state.metrics.clone(), closed);
            state.tracker.spawn(serving);
        }
        let signalled = async {
            stop.cancelled().await;
            tokio::time::Instant::now()
        };
        let serving = crate::http::serve::serve(
            self.listener,
            router,
            limits,
            stop.clone(),
            state.metrics.clone(),
            state.drain.clone(),
        );
        let ((), signalled) = tokio::join!(serving, signalled);
        // One deadline from the signal: the drain's window, then the grace for the last
        // sessions to close (requests in flight were finished meanwhile, within the grace).
        // axum does not wait for upgraded sockets; sessions close themselves when the drain
        // gives them their turn.
        let server = &state.config.server;
        let deadline = signalled
            + Duration::from_secs(server.drain_max_secs.saturating_add(server.shutdown_grace_secs)).min(SHUTDOWN_MAX);
        state.sessions.close();
        if tokio::time::timeout_at(deadline, state.sessions.wait()).await.is_err() {
            tracing::warn!(
                open = state.metrics.open_now(),
                tasks = state.sessions.len(),
                "sessions (or their commands) still running after the drain and the grace period"
            );
        }
        // Only now: sockets held by the drain heard other nodes until they went.
        state.hub_stop.cancel();
        state.tracker.close();
        let background = deadline.max(tokio::time::Instant::now() + BACKGROUND_GRACE);
        if tokio::time::timeout_at(background, state.tracker.wait()).await.is_err() {
            tracing::warn!("background tasks still running after the grace period");
        }
        state.hub.depart().await;
        Ok(())
    }
}

//! The services every handler and session shares ([`AppState`]), wired from their external I/O
//! ([`Dependencies`]). Serving them over HTTP is [`crate::server`]'s job.

use crate::auth::Verifier;
use crate::bus::{Bus, MemoryBus, PresenceStore, RedisBus};
use crate::config::Config;
use crate::connect::{ConnectApi, StripeConnect};
use crate::events::Events;
use crate::events::endpoints::{OwnAddresses, UrlPolicy};
use crate::events::relay::Relay;
use crate::events::resolver::SystemResolver;
use crate::events::retention::Retention;
use crate::events::sender::HttpSender;
use crate::hub::{Hub, HubIo};
use crate::metrics::Metrics;
use crate::payments::Payments;
use crate::payments::stripe::{StripeApi, StripeGateway};
use crate::rooms::RoomRegistry;
use crate::store::{Outbox, SqlStore, Store};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every handler and session shares: one pointer, so a clone is one count, not one per
/// service. axum clones the state for every request it routes, and each session keeps one;
/// with a count per field (and a lock for each cancellation token) clones and drops of the
/// state were 3.6 % of the hub's CPU in the join profile (README "The app state behind one
/// pointer").
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
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
    /// The platform's event endpoints and their deliveries.
    pub events: Arc<Events>,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Background tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Sessions and the work they start (payment commands, checks with Stripe): shutdown waits
    /// for them before it stops the hub's bus and presence upkeep.
    pub sessions: TaskTracker,
    /// Stops the hub's subscriptions to other nodes and its presence upkeep. Cancelled once
    /// every session has closed, not at the signal: the sockets a drain holds keep hearing
    /// other nodes and stay in the shared presence record until they go.
    pub hub_stop: CancellationToken,
    /// Cancelled on shutdown: the listener stops accepting, background tasks stop.
    pub shutdown: CancellationToken,
    /// Cancelled once the listener is closed after `shutdown`: sessions then close with
    /// "reconnect now" (4012).
    pub drain: CancellationToken,
    /// Cancelled by a second shutdown signal: the drain stops pacing and lets every socket
    /// still held go at once.
    pub drain_hurry: CancellationToken,
    /// One permit per open WebSocket.
    pub connection_slots: Arc<Semaphore>,
    /// Joins in progress, bounded by `server.max_joins_in_flight`.
    pub joins: Arc<crate::pacing::Gate>,
    /// Payment commands in progress, bounded by `payments.max_commands_in_flight`.
    pub commands: Arc<crate::pacing::Gate>,
    /// Signs the tickets of shed joins. Derived from the Stripe secret key: the one secret every
    /// instance of a deployment is sure to share whatever its token algorithm, and a one-way
    /// derivation, so a ticket says nothing about the key.
    pub join_tickets: Arc<crate::pacing::TicketKey>,
    /// Turns to close once the node drains: each session waits for one, handed out at the
    /// drain's pace ([`crate::ws::drain`]); closed once every session may go.
    pub drain_turns: Semaphore,
    /// The reconnect spread (ms) a session's `4012` tells its client: set when the drain begins,
    /// and again for the sockets let go at once when its window ends or a second signal hurries it.
    pub drain_spread_ms: std::sync::atomic::AtomicU64,
    /// Where `/metrics` is served when `server.metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The key pay-by-link tokens are signed with (`None`: links are off on this hub).
    pub link_key: Option<Arc<crate::payments::link::LinkKey>>,
    /// callpay's own receipts: the outbox sender (running as a background task).
    pub outbox: Arc<crate::mail::outbox::Outbox>,
}

/// External I/O the app runs on; tests and the demo pass their own.
pub struct Dependencies {
    /// Where state is kept.
    pub store: Arc<dyn Store>,
    /// Stripe.
    pub stripe: Arc<dyn StripeApi>,
    /// Cross-node fan-out.
    pub bus: Arc<dyn Bus>,
    /// The shared presence record (the bus's backend keeps it too).
    pub presence: Arc<dyn PresenceStore>,
    /// Stripe Connect OAuth.
    pub connect: Arc<dyn ConnectApi>,
    /// The delivery side of the event outbox (the same database as `store`).
    pub outbox: Arc<dyn Outbox>,
    /// Where callpay's own receipts are sent (`None`: no mail server, no own receipts).
    pub mailer: Option<Arc<dyn crate::mail::Mailer>>,
}

impl Dependencies {
    /// The production set: the configured database, Stripe, and the in-process bus.
    pub async fn from_config(config: &Config, node_id: &str) -> anyhow::Result<Self> {
        let store = Arc::new(
            SqlStore::connect_with(&config.database.url, config.database.max_connections)
                .await
                .context("opening the database")?,
        );
        let stripe = StripeGateway::new(&config.stripe).context("configuring the Stripe client")?;
        let (bus, presence): (Arc<dyn Bus>, Arc<dyn PresenceStore>) = match &config.bus.redis_url {
            Some(url) => {
                let redis = Arc::new(RedisBus::connect(url, node_id.to_owned()).await.context("connecting to Redis")?);
                (redis.clone(), redis)
            }
            None if !config.bus.redis_cluster_urls.is_empty() => {
                let redis = Arc::new(
                    RedisBus::connect_cluster(&config.bus.redis_cluster_urls, node_id.to_owned())
                        .await
                        .context("connecting to the Redis Cluster")?,
                );
                (redis.clone(), redis)
            }
            None => {
                let memory = Arc::new(MemoryBus::new(node_id));
                (memory.clone(), memory)
            }
        };
        Ok(Self {
            outbox: store.clone(),
            store,
            stripe: Arc::new(stripe),
            bus,
            presence,
            connect: Arc::new(StripeConnect::new(&config.stripe)),
            mailer: crate::mail::from_config(&config.receipts).context("receipts.smtp_url")?,
        })
    }
}

/// A random node id for bus envelopes.
pub fn node_id() -> String {
    format!("node_{}", crate::ids::random_id())
}

impl AppState {
    /// Wires the services on `deps` and starts their background tasks (bus watcher, payment
    /// sweeper), which stop when [`Services::shutdown`] is cancelled.
    pub fn new(
        config: Config,
        deps: Dependencies,
        node_id: String,
        metrics_addr: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let verifier = Verifier::new(&config.auth).context("auth settings")?;
        let rooms = RoomRegistry::new(config.stripe.publishable_key.clone());
        rooms.set_max_per_participant(config.server.max_sockets_per_participant);
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::default());
        deps.bus.observe_with(metrics.clone());
        let stripe: Arc<dyn StripeApi> = Arc::new(crate::payments::stripe::Timed::new(deps.stripe, metrics.clone()));
        let presence_ttl = std::time::Duration::from_millis(config.bus.presence_ttl_ms);
        let io = HubIo { bus: deps.bus, record: deps.presence, store: deps.store.clone(), tracker: tracker.clone() };
        let hub = Hub::new(node_id, rooms, io, presence_ttl, metrics.clone());
        let payments = Payments::new(deps.store.clone(), stripe.clone(), hub.clone(), config.payments.clone());
        let shutdown = CancellationToken::new();
        let hub_stop = CancellationToken::new();
        hub.start(hub_stop.clone());
        let payments = Arc::new(payments);
        // The sweeper checks with Stripe the payments of this node's calls, and repairs them from
        // the store: it serves the sockets a drain holds, so it stops with the hub, not at the
        // signal.
        tracker.spawn(payments.clone().run_sweeper(hub_stop.clone()));
        // Never a receiver: callpay's own listeners and public URL.
        let own = OwnAddresses {
            listen: Some(config.server.listen),
            metrics: metrics_addr.or(config.server.metrics_listen),
            public_url: Some(config.public_url()),
        };
        if config.events.deliver {
            let policy = UrlPolicy::new(own.clone(), &config.events);
            tracker.spawn(crate::events::endpoints::warn_refused_endpoints(deps.outbox.clone(), policy.clone()));
            let sender = HttpSender::new(&config.events, policy, Arc::new(SystemResolver));
            let relay = Arc::new(Relay::new(deps.outbox.clone(), Arc::new(sender), config.events.clone()));
            tracker.spawn(relay.run(shutdown.clone()));
            if let Some(retention) = Retention::new(deps.outbox.clone(), &config.events) {
                tracker.spawn(retention.run(shutdown.clone()));
            }
        }
        let events = Arc::new(Events::new(deps.outbox, config.events.clone(), own));
        let outbox = Arc::new(crate::mail::outbox::Outbox::new(
            deps.store.clone(),
            deps.mailer,
            config.receipts.clone(),
            payments.receipts_queued(),
        ));
        // Only an instance that can send takes receipts from the shared outbox: one without a
        // mail server would hold them from those that have one.
        if outbox.can_send() {
            tracker.spawn(outbox.clone().run(shutdown.clone()));
        } else {
            tracing::info!("no mail server (receipts.smtp_url): this instance sends no receipts of callpay's own");
        }
        let link_key = crate::payments::link::LinkKey::from_config(&config.links, &config.auth).map(Arc::new);
        let cap = crate::limits::connection_cap(config.server.max_connections);
        tracing::info!(max_connections = cap, "connection cap (server.max_connections; 0 = from the open-file limit)");
        Ok(Self(Arc::new(Services {
            connection_slots: Arc::new(Semaphore::new(cap)),
            joins: Arc::new(crate::pacing::Gate::for_joins(config.server.max_joins_in_flight)),
            commands: Arc::new(crate::pacing::Gate::for_commands(config.payments.max_commands_in_flight)),
            join_tickets: Arc::new(crate::pacing::TicketKey::derive(config.stripe.secret_key.expose().as_bytes())),
            drain_turns: Semaphore::new(0),
            drain_spread_ms: std::sync::atomic::AtomicU64::new(crate::pacing::drain::WAVE_SPREAD.as_millis() as u64),
            config: Arc::new(config),
            store: deps.store,
            hub,
            payments,
            payments_stripe: stripe,
            connect: deps.connect,
            events,
            verifier: Arc::new(verifier),
            metrics,
            tracker,
            sessions: TaskTracker::new(),
            hub_stop,
            shutdown,
            drain: CancellationToken::new(),
            drain_hurry: CancellationToken::new(),
            metrics_addr,
            link_key,
            outbox,
        })))
    }
}

//! What the hub measures, exposed at `/metrics` in Prometheus' text format through
//! `prometheus-client`: counters of connections, refusals and webhooks, and latency histograms
//! of the paths people wait on (a relayed event inside the hub, a webhook until the room hears
//! it, Stripe calls by operation and outcome, bus publishes) plus how deep outbound queues get.
//! Recording is a few atomic operations; nothing on the hot path allocates.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

/// Labels of a Stripe call: `operation`, `outcome`.
pub type StripeLabels = Vec<(&'static str, &'static str)>;

/// Label of an ended connection: `why`.
pub type EndLabels = Vec<(&'static str, &'static str)>;

fn seconds() -> Histogram {
    // 50 µs to ~26 s in factors of 2: a relay takes tens of µs, a Stripe call hundreds of ms.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric of one hub.
pub struct Metrics {
    registry: Registry,
    /// WebSocket connections accepted.
    pub connections_opened: Counter,
    /// WebSocket connections ended.
    pub connections_closed: Counter,
    /// WebSocket connections ended after their `welcome`, by why the hub ended them
    /// (`why`: peer closed, shutdown, heartbeat lost, slow consumer, ...).
    pub connections_ended: Family<EndLabels, Counter>,
    /// Join attempts refused (bad, expired or wrong-call token).
    pub joins_refused: Counter,
    /// Joins shed with `4013` because as many as the store can serve were in progress.
    pub joins_shed: Counter,
    /// Joins refused with 503 because the node held `server.max_connections` sockets.
    pub joins_at_capacity: Counter,
    /// Joins that came back after `4013` with a ticket due and valid, and were admitted.
    pub joins_ticketed: Counter,
    /// Welcomes sent before their node heard the call (`bus.subscribe_wait_ms` passed, or the
    /// node was cut off from Redis): frames other nodes sent to those sockets meanwhile are lost.
    pub welcomes_unheard: Counter,
    /// Payment commands (requests, cancels) answered `busy` because as many as the store can
    /// serve were in progress: nothing was done with them.
    pub commands_shed: Counter,
    /// Client frames answered with an `error`.
    pub frames_refused: Counter,
    /// Webhook deliveries with a bad or missing signature.
    pub webhooks_rejected: Counter,
    /// Webhook events applied to a payment.
    pub webhooks_applied: Counter,
    /// Webhook events already seen.
    pub webhooks_duplicate: Counter,
    /// A client's `payment.progress` from the frame read to every local recipient queued.
    pub relay_seconds: Histogram,
    /// A Stripe webhook from its request arriving to the room having been told.
    pub webhook_to_room_seconds: Histogram,
    /// Stripe API calls by operation and outcome.
    pub stripe_seconds: Family<StripeLabels, Histogram, fn() -> Histogram>,
    /// A pipelined batch of bus publishes, queue to Redis's answer.
    pub bus_publish_seconds: Histogram,
    /// Frames waiting in a connection's outbound queue when its writer drains it.
    pub outbound_queue_depth: Histogram,
    /// HTTP connections turned away because `server.max_http_connections` were open.
    pub http_refused: Counter,
    /// Node-wide repairs started (a bus reconnection or overflow: every local call compared
    /// with the store).
    pub repairs_node_wide: Counter,
    /// Calls compared with the store by any repair (node-wide, or one call after a lost
    /// message or a new subscription).
    pub repaired_calls: Counter,
    /// Store reads made by repairs (each covers up to a chunk of calls).
    pub repair_store_reads: Counter,
    /// Statements the store's batched welcome reads have taken (joins per statement shows how
    /// much a storm's welcomes share); kept up to date at each scrape.
    store_welcome_statements: Counter,
    /// The store's total at the last scrape, so each scrape adds only what is new.
    welcome_statements_seen: std::sync::atomic::AtomicU64,
    open_connections: Gauge,
    tasks_alive: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under `callpay_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("callpay");
        let m = Self {
            connections_opened: Counter::default(),
            connections_closed: Counter::default(),
            connections_ended: Family::default(),
            joins_refused: Counter::default(),
            joins_shed: Counter::default(),
            joins_at_capacity: Counter::default(),
            joins_ticketed: Counter::default(),
            welcomes_unheard: Counter::default(),
            commands_shed: Counter::default(),
            frames_refused: Counter::default(),
            webhooks_rejected: Counter::default(),
            webhooks_applied: Counter::default(),
            webhooks_duplicate: Counter::default(),
            relay_seconds: seconds(),
            webhook_to_room_seconds: seconds(),
            stripe_seconds: Family::new_with_constructor(seconds as fn() -> Histogram),
            bus_publish_seconds: seconds(),
            outbound_queue_depth: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            http_refused: Counter::default(),
            repairs_node_wide: Counter::default(),
            repaired_calls: Counter::default(),
            repair_store_reads: Counter::default(),
            store_welcome_statements: Counter::default(),
            welcome_statements_seen: std::sync::atomic::AtomicU64::new(0),
            open_connections: Gauge::default(),
            tasks_alive: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("ws_connections_opened", "WebSocket connections accepted", m.connections_opened.clone());
        r.register("ws_connections_closed", "WebSocket connections ended", m.connections_closed.clone());
        r.register(
            "ws_connections_ended",
            "Joined WebSocket connections ended, by why the hub ended them",
            m.connections_ended.clone(),
        );
        r.register(
            "ws_joins_refused",
            "Upgrades refused for a bad, expired or wrong-call token",
            m.joins_refused.clone(),
        );
        r.register(
            "ws_joins_shed",
            "Joins closed with 4013 (retry later) because the node was admitting as many as its store serves",
            m.joins_shed.clone(),
        );
        r.register(
            "ws_joins_at_capacity",
            "Upgrades refused with 503 because the node held as many sockets as server.max_connections allows",
            m.joins_at_capacity.clone(),
        );
        r.register(
            "payment_commands_shed",
            "Payment requests and cancels answered busy (retry later) because the node had as many in progress as its store serves",
            m.commands_shed.clone(),
        );
        r.register(
            "ws_joins_ticketed",
            "Joins admitted ahead of others because they came back after 4013 with their ticket",
            m.joins_ticketed.clone(),
        );
        r.register(
            "ws_welcomes_unheard",
            "Welcomes sent before this node heard the call on the bus (its subscription not yet confirmed, or Redis unreachable)",
            m.welcomes_unheard.clone(),
        );
        r.register("ws_frames_refused", "Client frames answered with an error frame", m.frames_refused.clone());
        r.register(
            "webhooks_rejected",
            "Webhook deliveries with a bad or missing signature",
            m.webhooks_rejected.clone(),
        );
        r.register("webhooks_applied", "Webhook events that changed a payment", m.webhooks_applied.clone());
        r.register("webhooks_duplicate", "Webhook events already processed", m.webhooks_duplicate.clone());
        r.register("ws_connections_open", "WebSocket connections open now", m.open_connections.clone());
        r.register("runtime_tasks_alive", "Tasks alive in the async runtime now", m.tasks_alive.clone());
        r.register(
            "store_welcome_statements",
            "Statements the batched welcome reads took (each answers every join that asked meanwhile)",
            m.store_welcome_statements.clone(),
        );
        r.register(
            "relay_seconds",
            "A payment.progress frame from being read to every local recipient's queue",
            m.relay_seconds.clone(),
        );
        r.register(
            "webhook_to_room_seconds",
            "A Stripe webhook from arrival to the call's room being told",
            m.webhook_to_room_seconds.clone(),
        );
        r.register("stripe_request_seconds", "Stripe API calls by operation and outcome", m.stripe_seconds.clone());
        r.register(
            "bus_publish_seconds",
            "A pipelined batch of bus publishes until Redis answered",
            m.bus_publish_seconds.clone(),
        );
        r.register(
            "ws_outbound_queue_depth",
            "Frames waiting in a connection's outbound queue when its writer drains it",
            m.outbound_queue_depth.clone(),
        );
        r.register(
            "http_connections_refused",
            "HTTP connections refused because server.max_http_connections were open (answered 503 once their request head was in, or closed unanswered)",
            m.http_refused.clone(),
        );
        r.register(
            "bus_repairs_node_wide",
            "Node-wide repairs from the store (after a bus reconnection or overflow)",
            m.repairs_node_wide.clone(),
        );
        r.register("bus_repaired_calls", "Calls compared with the store by a repair", m.repaired_calls.clone());
        r.register("bus_repair_store_reads", "Store reads made by repairs", m.repair_store_reads.clone());
        Self { registry, ..m }
    }

    /// Records the seconds since `start` in `histogram`.
    pub fn since(histogram: &Histogram, start: Instant) {
        histogram.observe(start.elapsed().as_secs_f64());
    }

    /// Counts a joined connection's end, by `why` (a fixed phrase from the session loop).
    pub fn ended(&self, why: &'static str) {
        self.connections_ended.get_or_create(&vec![("why", why)]).inc();
    }

    /// Joins this node turned away for its load so far: shed with a time to retry, or refused at
    /// its connection caps (HTTP or sockets). What a draining node paces its clients by.
    pub fn turned_away(&self) -> u64 {
        self.joins_shed.get() + self.joins_at_capacity.get() + self.http_refused.get()
    }

    /// WebSocket connections open now (opened less closed), without walking the rooms.
    pub fn open_now(&self) -> usize {
        self.connections_opened.get().saturating_sub(self.connections_closed.get()) as usize
    }

    /// Brings the welcome-statements counter up to the store's running `total`. Scrapes that
    /// race add each statement once: `fetch_max` hands every increase to exactly one of them,
    /// and a scrape that read an older total adds nothing.
    pub fn welcome_statements_at(&self, total: u64) {
        let before = self.welcome_statements_seen.fetch_max(total, std::sync::atomic::Ordering::Relaxed);
        self.store_welcome_statements.inc_by(total.saturating_sub(before));
    }

    /// Prometheus text exposition; `open_connections` and the runtime's live tasks are read at
    /// scrape time.
    pub fn render(&self, open_connections: usize) -> String {
        self.open_connections.set(open_connections as i64);
        // Tasks that never end are a leak no other metric shows until memory runs out: the
        // soak load test watches this stay flat.
        let tasks = tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        self.tasks_alive.set(tasks as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_welcome_statements_counter_adds_each_statement_once() {
        let m = Metrics::new();
        m.welcome_statements_at(5);
        m.welcome_statements_at(3); // a scrape that read an older total, late
        m.welcome_statements_at(5);
        m.welcome_statements_at(8);
        assert!(m.render(0).contains("callpay_store_welcome_statements_total 8\n"));
    }

    #[test]
    fn renders_counters_histograms_and_help() {
        let m = Metrics::new();
        m.webhooks_rejected.inc();
        m.relay_seconds.observe(0.000_2);
        m.stripe_seconds.get_or_create(&vec![("operation", "create_intent"), ("outcome", "ok")]).observe(0.3);
        let text = m.render(3);
        assert!(text.contains("callpay_webhooks_rejected_total 1"), "{text}");
        assert!(text.contains("callpay_ws_connections_open 3"), "{text}");
        assert!(text.contains("# HELP callpay_runtime_tasks_alive"), "{text}");
        assert!(text.contains("# HELP callpay_relay_seconds"), "{text}");
        assert!(text.contains("callpay_relay_seconds_count 1"), "{text}");
        assert!(
            text.contains(r#"callpay_stripe_request_seconds_count{operation="create_intent",outcome="ok"} 1"#),
            "{text}"
        );
    }

    fn tasks_in(text: &str) -> i64 {
        text.lines().find_map(|l| l.strip_prefix("callpay_runtime_tasks_alive ")).and_then(|v| v.parse().ok()).unwrap()
    }

    #[tokio::test]
    async fn counts_the_runtimes_live_tasks() {
        let m = Metrics::new();
        let before = tasks_in(&m.render(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let held = tokio::spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(tasks_in(&m.render(0)), before + 1);
        drop(tx);
        held.await.unwrap();
        assert_eq!(tasks_in(&m.render(0)), before);
    }
}

//! Process counters, exposed at `/metrics` in Prometheus' text format. Plain atomics: the hot
//! path pays one relaxed increment per event.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every counter the hub keeps.
#[derive(Default, Debug)]
pub struct Metrics {
    /// WebSocket connections accepted.
    pub connections_opened: Counter,
    /// WebSocket connections ended.
    pub connections_closed: Counter,
    /// Join attempts refused (bad, expired or wrong-call token).
    pub joins_refused: Counter,
    /// Client frames answered with an `error`.
    pub frames_refused: Counter,
    /// Webhook deliveries with a bad or missing signature.
    pub webhooks_rejected: Counter,
    /// Webhook events applied to a payment.
    pub webhooks_applied: Counter,
    /// Webhook events already seen.
    pub webhooks_duplicate: Counter,
}

impl Metrics {
    /// Prometheus text exposition; `open_connections` is a gauge read at scrape time.
    pub fn render(&self, open_connections: usize) -> String {
        let rows = [
            ("callpay_ws_connections_opened_total", "counter", self.connections_opened.get()),
            ("callpay_ws_connections_closed_total", "counter", self.connections_closed.get()),
            ("callpay_ws_joins_refused_total", "counter", self.joins_refused.get()),
            ("callpay_ws_frames_refused_total", "counter", self.frames_refused.get()),
            ("callpay_webhooks_rejected_total", "counter", self.webhooks_rejected.get()),
            ("callpay_webhooks_applied_total", "counter", self.webhooks_applied.get()),
            ("callpay_webhooks_duplicate_total", "counter", self.webhooks_duplicate.get()),
            ("callpay_ws_connections_open", "gauge", open_connections as u64),
        ];
        rows.iter().map(|(name, kind, v)| format!("# TYPE {name} {kind}\n{name} {v}\n")).collect()
    }
}

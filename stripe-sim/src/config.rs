//! The simulator's settings. Defaults are documented so scripts and tests can rely on them.

use std::net::SocketAddr;
use std::time::Duration;

/// Default platform secret key.
pub const DEFAULT_SECRET_KEY: &str = "sk_test_callpay_sim_secret";
/// Default platform publishable key.
pub const DEFAULT_PUBLISHABLE_KEY: &str = "pk_test_callpay_sim_publishable";
/// Default Connect OAuth client id.
pub const DEFAULT_CLIENT_ID: &str = "ca_callpay_sim";

/// A webhook endpoint set at start-up (like `stripe listen --forward-to`): it receives both the
/// platform's and connected accounts' events.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// `http://` URL to POST to.
    pub url: String,
    /// Signing secret (`whsec_…`).
    pub secret: String,
}

/// Settings for one simulator instance.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The platform's secret key (`Authorization: Bearer …`).
    pub secret_key: String,
    /// The platform's publishable key, for Stripe.js calls.
    pub publishable_key: String,
    /// The platform's Connect client id (`ca_…`).
    pub client_id: String,
    /// Name shown on the OAuth page and in `application` objects.
    pub platform_name: String,
    /// Endpoints configured at start-up.
    pub webhooks: Vec<WebhookTarget>,
    /// Waits between delivery attempts; its length is the number of retries after the first try.
    /// Stripe retries for days; tests shorten this to milliseconds.
    pub webhook_retry_schedule: Vec<Duration>,
    /// How long one delivery attempt may take before it counts as failed.
    pub webhook_timeout: Duration,
    /// Where the Stripe.js stand-in is served.
    pub stripe_js_path: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret_key: DEFAULT_SECRET_KEY.into(),
            publishable_key: DEFAULT_PUBLISHABLE_KEY.into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            platform_name: "callpay".into(),
            webhooks: Vec::new(),
            webhook_retry_schedule: [5, 30, 120, 600, 3600].into_iter().map(Duration::from_secs).collect(),
            webhook_timeout: Duration::from_secs(10),
            stripe_js_path: "/js/v3".into(),
        }
    }
}

impl SimConfig {
    /// Settings for tests: a fast retry schedule (50 ms, 100 ms, 200 ms) and a 2 s attempt timeout.
    pub fn for_tests() -> Self {
        Self {
            webhook_retry_schedule: [50, 100, 200].into_iter().map(Duration::from_millis).collect(),
            webhook_timeout: Duration::from_secs(2),
            ..Self::default()
        }
    }
}

//! Typed settings: built-in defaults, then an optional TOML file, then environment variables
//! named `CALLPAY__SECTION__KEY` (e.g. `CALLPAY__STRIPE__SECRET_KEY`). Secrets are wrapped so
//! they never appear in `Debug` output or logs. [`Config::validate_for_serve`] refuses to start
//! production with a missing or unsafe setting and says which one.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;

/// A secret string: usable, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "[empty]" } else { "[redacted]" })
    }
}

/// Configuration problems, each naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file or an environment value could not be parsed.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A required setting is missing or unsafe.
    #[error("{setting} (env CALLPAY__{env}): {problem}")]
    Invalid {
        /// Dotted setting name.
        setting: &'static str,
        /// The environment variable suffix.
        env: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// All settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener and WebSocket limits.
    pub server: ServerConfig,
    /// Join-token and admin-token verification.
    pub auth: AuthConfig,
    /// The store.
    pub database: DatabaseConfig,
    /// Stripe API, Connect and webhooks.
    pub stripe: StripeConfig,
    /// Payment request rules.
    pub payments: PaymentsConfig,
    /// Cross-instance fan-out.
    pub bus: BusConfig,
    /// Signed events for the platform (outbound webhooks).
    pub events: EventsConfig,
    /// Pay-by-link: signed, expiring links to a payment's page outside the call.
    pub links: LinksConfig,
    /// callpay's own receipt e-mails (per clinic, over SMTP).
    pub receipts: ReceiptsConfig,
}

/// Pay-by-link settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinksConfig {
    /// The key links are signed with (HMAC-SHA256), at least 32 bytes, the same on every
    /// instance. Empty: derived from `auth.secret` (HS256), so instances that share the
    /// platform secret share it too; with EdDSA/RS256 and no key, links are off.
    pub secret: Secret,
    /// How long a link stays valid, in hours (default 72).
    pub ttl_hours: u64,
}

impl Default for LinksConfig {
    fn default() -> Self {
        Self { secret: Secret::default(), ttl_hours: 72 }
    }
}

/// callpay's own receipt e-mails. Without `smtp_url` the hub sends none (and a clinic cannot
/// turn them on); Stripe's receipt is sent either way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiptsConfig {
    /// The mail server: `smtps://user:pass@host:465` (TLS from the start),
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS), or `smtp://127.0.0.1:25` (no TLS:
    /// refused for any host but a loopback one, e.g. a local relay); nothing else (see
    /// [`SmtpSecurity`]: `tls=opportunistic`, which may fall back to clear text, is refused).
    /// Secret: it may carry a password.
    pub smtp_url: Option<Secret>,
    /// The sender address; the clinic's name is its display name (`Harbour Clinic
    /// <receipts@…>`).
    pub from: String,
    /// First wait after a failed attempt, in ms; each next wait doubles (with jitter).
    pub retry_base_ms: u64,
    /// Longest wait between attempts, in ms.
    pub retry_max_ms: u64,
    /// Attempts before a receipt is given up (recorded as failed, and in the audit log).
    pub max_attempts: u32,
    /// How often the outbox is read for due receipts, in ms (a new receipt also wakes it).
    pub poll_ms: u64,
    /// Longest one attempt at a receipt may take, in ms: reading the payment, connecting and
    /// the whole SMTP session up to the server's last answer. A receipt's claim lasts twice
    /// this and 5 s more, so no other instance takes it over while an attempt can still run.
    pub timeout_ms: u64,
}

impl Default for ReceiptsConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "receipts@callpay.invalid".into(),
            retry_base_ms: 30_000,
            retry_max_ms: 3_600_000,
            max_attempts: 12,
            poll_ms: 5_000,
            timeout_ms: 30_000,
        }
    }
}

/// Signed events for the platform: how the delivery worker sends and retries them. Endpoints
/// themselves are registered through the admin API (`/v1/event-endpoints`), not here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Run the delivery worker on this instance. Several instances on one database share the
    /// deliveries (each is claimed by one at a time), so every instance may keep it on.
    pub deliver: bool,
    /// How often the worker looks for due deliveries when it is idle. Events wait in the
    /// database meanwhile; a second is a small delay for a billing system and one indexed query
    /// per instance per second for the database.
    pub poll_interval_ms: u64,
    /// Longest one attempt may take (connecting, sending, reading the start of the answer);
    /// past it the attempt counts as failed. Receivers should answer 2xx at once and work after.
    pub timeout_ms: u64,
    /// Longest a connection to a receiver may take to open (within `timeout_ms`).
    pub connect_timeout_ms: u64,
    /// Wait before the first retry; each further retry waits twice the one before (up to
    /// `retry_max_interval_ms`), minus a random part of up to half.
    pub retry_first_ms: u64,
    /// Longest wait between two attempts.
    pub retry_max_interval_ms: u64,
    /// How long after it was queued a delivery is retried before it is marked `failed`
    /// (default three days, as Stripe retries its own webhooks). The operator can replay it.
    pub retry_for_ms: u64,
    /// Attempts one instance makes at once (each holds a connection for up to `timeout_ms`).
    pub max_in_flight: usize,
    /// How long a delivery is kept after it ended (delivered, failed, canceled), with its
    /// attempts, and an event after its last delivery is gone (default 30 days: long enough
    /// to look into a month's disputes and to replay). 0: kept forever. A pending delivery is
    /// never deleted: it is retried until `retry_for_ms` and only then ends.
    pub retain_for_ms: u64,
    /// How often an instance running the worker deletes what its retention is over.
    pub prune_interval_ms: u64,
    /// Accept plain `http://` endpoints on hosts other than loopback. Off: event bodies carry
    /// payment details, which only travel over TLS.
    pub allow_http: bool,
    /// Accept receivers on loopback (`127.0.0.0/8`, `::1`, `localhost`): the demo and the
    /// tests run theirs on this machine. Off: a loopback receiver would be a request from
    /// callpay to whatever else listens on its machine. callpay's own ports stay refused.
    pub allow_loopback: bool,
    /// Most endpoints that may be registered.
    pub max_endpoints: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            deliver: true,
            poll_interval_ms: 1_000,
            timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            retry_first_ms: 10_000,
            retry_max_interval_ms: 3_600_000,
            retry_for_ms: 3 * 24 * 3_600_000,
            max_in_flight: 8,
            retain_for_ms: 30 * 24 * 3_600_000,
            prune_interval_ms: 3_600_000,
            allow_http: false,
            allow_loopback: false,
            max_endpoints: 16,
        }
    }
}

/// Cross-instance fan-out. Without a Redis URL the hub runs as a single instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `redis://host:6379/` to let several hub instances serve one call.
    pub redis_url: Option<String>,
    /// Instead of `redis_url`: seed nodes of a Redis Cluster (`redis://host:port/`, any few of
    /// its masters or replicas). Pub/sub is then sharded (`SPUBLISH`/`SSUBSCRIBE`, Redis 7).
    pub redis_cluster_urls: Vec<String>,
    /// How long a node's entry in a call's shared presence record lasts unless renewed. Nodes
    /// renew theirs every third of it, so a crashed node's participants disappear from the
    /// other nodes' calls within this time (plus one renewal period).
    pub presence_ttl_ms: u64,
    /// Longest a join waits for its node to hear the call (Redis confirming the subscription to
    /// its channel) before sending `welcome` anyway. Until then what other nodes publish on the
    /// call does not reach this node; a room repairs its payments from the store once it does
    /// hear, but live frames sent in between (a patient's progress) are gone. A node cut off
    /// from Redis does not wait.
    pub subscribe_wait_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { redis_url: None, redis_cluster_urls: Vec::new(), presence_ttl_ms: 15_000, subscribe_wait_ms: 1_000 }
    }
}

/// Listener and per-connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Public base URL (for OAuth redirects and links); defaults to `http://{listen}`.
    pub public_url: Option<String>,
    /// Most concurrent WebSocket connections; beyond it upgrades get 503. `0` (the default)
    /// means: as many as the process's open-file limit allows, less a reserve for the database,
    /// Redis, HTTP requests and files (see [`crate::limits`]).
    pub max_connections: usize,
    /// Connections one participant may hold in one call; a further one closes the oldest (4010).
    pub max_sockets_per_participant: usize,
    /// Connections one call may hold on one node; beyond it upgrades get 503.
    pub max_sockets_per_call: usize,
    /// Frames queued per connection before it is closed as a slow consumer. 64 frames is
    /// minutes of normal traffic for one call, yet bounds memory per socket to a few hundred KiB.
    pub outbound_queue: usize,
    /// Largest accepted client frame; real frames are under 1 KiB.
    pub max_message_bytes: usize,
    /// Milliseconds between server pings; a ping still unanswered (by a pong or any other frame)
    /// at the next one closes the connection (4009).
    pub ping_interval_ms: u64,
    /// Longest a single socket write (frame, flush, ping or close) may take. A peer that stops
    /// reading fills its TCP window and then every write blocks; past this deadline the socket is
    /// dropped so it cannot hold a connection slot or room membership.
    pub write_timeout_ms: u64,
    /// Client frames allowed per second per connection (sustained).
    pub rate_per_sec: u32,
    /// Client frames allowed in a burst.
    pub rate_burst: u32,
    /// Seconds to wait for connections to close on shutdown.
    pub shutdown_grace_secs: u64,
    /// Origins allowed to frame the pages (the video-call platform's), besides the hub's own
    /// (`frame-ancestors 'self' …`). Empty: only the hub itself may frame them.
    pub frame_ancestors: Vec<String>,
    /// When set, `/metrics` is served on this address only (keep it internal), not on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Longest a client may take to send a request's headers, and longest an idle keep-alive
    /// connection is held waiting for its next request. Bounds slowloris-style clients.
    pub header_read_timeout_ms: u64,
    /// Longest a request may take from its headers to the response (a body trickled in slowly
    /// included); past it the client gets 408. A WebSocket's life is not a request: it ends here
    /// at the upgrade.
    pub request_timeout_ms: u64,
    /// Accept a join token in the WebSocket URL (`?token=`) as well. Off by default: URLs end up
    /// in proxy logs; clients send the token as the `callpay.bearer.<token>` subprotocol (or an
    /// `Authorization` header). Only for old clients that cannot.
    pub query_token: bool,
    /// Most connections still speaking HTTP at once (WebSockets leave this pool once upgraded
    /// and count against `max_connections`). Further connections get 503 once their request
    /// head is in and are closed; one whose head does not come within `header_read_timeout_ms`,
    /// or past 256 such waiting at once, is closed unanswered.
    pub max_http_connections: usize,
    /// Most sockets a second a draining node lets go. On Redis (other nodes may be there) it
    /// closes them a wave at a time, from 500 a second (or this, if lower), growing to this
    /// while the rest of the fleet turns no join away and halving when it does (each `4012`
    /// told to reconnect within 1 s), though never slower than `drain_max_secs` allows. On the in-process bus it closes every socket at once,
    /// telling its clients to spread their reconnects over `sockets / this` seconds (a quarter
    /// of a second to 30).
    pub drain_reconnects_per_sec: u64,
    /// Longest a drain with other nodes holds its sockets: however much the fleet turns away,
    /// it lets them go at no less than `sockets / this` a second, and lets every socket still
    /// open go at the end. Shutdown takes up to this plus `shutdown_grace_secs` (and up to 3 s
    /// to hand over presence); give the
    /// orchestrator's grace period (Docker's `stop_grace_period`, Kubernetes'
    /// `terminationGracePeriodSeconds`) more than that.
    pub drain_max_secs: u64,
    /// Joins waiting on the store at once (binding the call, reading the welcome); a join past
    /// it is closed at once with `4013` and a time to retry, instead of queueing into the store
    /// pool's time-outs. 1,024 by default: a join is about one statement now, so that many
    /// take a 16-connection pool well under a second even at a few milliseconds a statement;
    /// with 256, a drain behind nginx shed so many joins that their retries' handshakes slowed
    /// everyone (README, "A drained node's clients": max 11.4-14.4 s in 6 runs at 256,
    /// 10.0-13.1 s in 7 at 1,024).
    pub max_joins_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            max_connections: 0,
            max_sockets_per_participant: 4,
            max_sockets_per_call: 32,
            outbound_queue: 64,
            max_message_bytes: 16 * 1024,
            ping_interval_ms: 15_000,
            write_timeout_ms: 10_000,
            rate_per_sec: 10,
            rate_burst: 20,
            shutdown_grace_secs: 10,
            frame_ancestors: Vec::new(),
            metrics_listen: None,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_http_connections: 1024,
            drain_reconnects_per_sec: 4_000,
            drain_max_secs: 30,
            max_joins_in_flight: 1024,
            query_token: false,
        }
    }
}

/// Token verification: the video-call platform signs join and admin tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `HS256` (shared secret), `EdDSA` or `RS256` (public key). Pinned: tokens in any other
    /// algorithm are rejected.
    pub algorithm: String,
    /// HS256 shared secret (at least 32 bytes).
    pub secret: Secret,
    /// PEM public key for EdDSA / RS256.
    pub public_key_pem: Option<String>,
    /// During a key rotation, the key being retired: tokens signed with it are still accepted
    /// (HS256: the old shared secret; EdDSA/RS256: the old PEM public key). Remove it once the
    /// platform signs only with the new key and the old tokens have expired.
    pub previous_secret: Option<Secret>,
    /// The retiring PEM public key (EdDSA / RS256), as `previous_secret` for HS256.
    pub previous_public_key_pem: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            secret: Secret::default(),
            public_key_pem: None,
            previous_secret: None,
            previous_public_key_pem: None,
            issuer: None,
            audience: None,
        }
    }
}

/// Store location.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/callpay.db`, `sqlite::memory:` or `postgres://…`.
    pub url: String,
    /// Most PostgreSQL connections one instance opens, 4 to 1,000 (SQLite always gets 4: it
    /// serialises writers anyway). Every instance of a deployment opens up to this many, so
    /// instances × this must stay below the server's `max_connections` (100 by default) with
    /// room for migrations and operators.
    pub max_connections: u32,
}

/// The default `database.max_connections`: enough for a node's concurrent calls, and five
/// instances fit PostgreSQL's default of 100.
pub const POSTGRES_POOL: u32 = 16;
/// The smallest `database.max_connections`: a quarter of the pool (at least one connection)
/// reads welcomes, the rest serves payments, webhooks and binding calls.
pub const POSTGRES_POOL_MIN: u32 = 4;
/// The largest `database.max_connections` taken: PostgreSQL forks a process per connection, so
/// a larger figure is a typo rather than a plan.
const POSTGRES_POOL_MAX: u32 = 1_000;

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: "sqlite://callpay.db".into(), max_connections: POSTGRES_POOL }
    }
}

/// Stripe settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// Platform secret key (`sk_live_…` / `sk_test_…`).
    pub secret_key: Secret,
    /// Platform publishable key, handed to patients' Stripe.js.
    pub publishable_key: String,
    /// Connect OAuth client id (`ca_…`).
    pub client_id: String,
    /// API base URL.
    pub api_base: String,
    /// Connect OAuth base URL.
    pub connect_base: String,
    /// Where patients' browsers load Stripe.js.
    pub js_url: String,
    /// The Stripe dashboard a clinic admin is sent to from *Edit*.
    pub dashboard_url: String,
    /// Connect webhook signing secrets; several are allowed during rotation.
    pub webhook_secrets: Vec<Secret>,
    /// Per-attempt timeout for Stripe calls.
    pub timeout_ms: u64,
    /// Attempts per Stripe POST (same idempotency key every time).
    pub max_attempts: u32,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            secret_key: Secret::default(),
            publishable_key: String::new(),
            client_id: String::new(),
            api_base: "https://api.stripe.com/".into(),
            connect_base: "https://connect.stripe.com/".into(),
            js_url: "https://js.stripe.com/v3".into(),
            dashboard_url: "https://dashboard.stripe.com/".into(),
            webhook_secrets: Vec::new(),
            timeout_ms: 10_000,
            max_attempts: 3,
        }
    }
}

/// What a payment request may be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Allowed lowercase currencies.
    pub currencies: Vec<String>,
    /// Largest amount in minor units (default 10,000.00).
    pub max_amount: i64,
    /// A payment waiting on Stripe (requested, authenticating, processing, or failed: the
    /// patient may retry) with no news for
    /// this long has its PaymentIntent read from Stripe, so a lost webhook cannot leave it
    /// waiting; later checks of the same payment back off.
    pub verify_after_ms: u64,
    /// How long after a payment was paid the clinician who requested it may refund it
    /// themselves, in hours (default 24: the day of the visit). 0: only clinic admins refund.
    pub clinician_refund_window_hours: u64,
    /// Payment commands (requests, cancels) a node handles at once; a further one is answered
    /// `busy` with a time to retry. Each reads and writes the store two to four times and waits
    /// on Stripe in between (holding no connection), so 128 keep a 16-connection pool busy
    /// without queueing into its time-out: 35,000 requests sent at once (a 70,000-socket load
    /// test's setup) timed out in the pool and were answered `internal` after 5 s each. A
    /// command keeps its place while it waits on Stripe too, so when Stripe is slow, commands
    /// past this are answered `busy` even though the store is idle: a bound on what one node
    /// has outstanding, whichever side is slow.
    pub max_commands_in_flight: usize,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            currencies: vec!["aud".into()],
            max_amount: 1_000_000,
            verify_after_ms: 20_000,
            clinician_refund_window_hours: 24,
            max_commands_in_flight: 128,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then `CALLPAY__…` variables from `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut tree = serde_json::to_value(Config::default()).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
            let from_file: Value =
                toml::from_str(&text).map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?;
            merge(&mut tree, from_file);
        }
        for (key, raw) in env {
            let Some(rest) = key.strip_prefix("CALLPAY__") else { continue };
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            let target = path.iter().try_fold(&tree, |node, part| node.get(part));
            let value = match target {
                Some(Value::Array(_)) if !raw.trim_start().starts_with('[') => Value::Array(
                    raw.split(',').map(|s| Value::String(s.trim().to_owned())).filter(|v| v != "").collect(),
                ),
                Some(Value::String(_)) | Some(Value::Null) => Value::String(raw),
                _ => serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
            };
            let mut patch = value;
            for part in path.iter().rev() {
                patch = serde_json::json!({ part: patch });
            }
            merge(&mut tree, patch);
        }
        serde_json::from_value(tree).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Checks what `callpay serve` needs; the error names the setting and its variable.
    pub fn validate_for_serve(&self) -> Result<(), ConfigError> {
        let invalid = |setting, env, problem: &str| Err(ConfigError::Invalid { setting, env, problem: problem.into() });
        match self.auth.algorithm.as_str() {
            "HS256" if self.auth.secret.expose().len() < 32 => {
                return invalid("auth.secret", "AUTH__SECRET", "HS256 needs a shared secret of at least 32 bytes");
            }
            "HS256" if self.auth.previous_secret.as_ref().is_some_and(|s| s.expose().len() < 32) => {
                return invalid("auth.previous_secret", "AUTH__PREVIOUS_SECRET", "at least 32 bytes, like auth.secret");
            }
            "HS256" => {}
            "EdDSA" | "RS256" if self.auth.public_key_pem.is_none() => {
                return invalid(
                    "auth.public_key_pem",
                    "AUTH__PUBLIC_KEY_PEM",
                    "EdDSA/RS256 need the platform's PEM public key",
                );
            }
            "EdDSA" | "RS256" => {}
            _ => return invalid("auth.algorithm", "AUTH__ALGORITHM", "must be HS256, EdDSA or RS256"),
        }
        let sk = self.stripe.secret_key.expose();
        if !(sk.starts_with("sk_live_") || sk.starts_with("sk_test_") || sk.starts_with("rk_")) {
            return invalid(
                "stripe.secret_key",
                "STRIPE__SECRET_KEY",
                "missing or not a Stripe secret key (sk_live_… / sk_test_…)",
            );
        }
        if !self.stripe.publishable_key.starts_with("pk_") {
            return invalid(
                "stripe.publishable_key",
                "STRIPE__PUBLISHABLE_KEY",
                "missing or not a publishable key (pk_…)",
            );
        }
        // Restricted keys (rk_live_/rk_test_) are as live as their sk_ twins.
        let live_secret = sk.starts_with("sk_live_") || sk.starts_with("rk_live_");
        if live_secret != self.stripe.publishable_key.starts_with("pk_live_") {
            return invalid("stripe.publishable_key", "STRIPE__PUBLISHABLE_KEY", "live and test keys are mixed");
        }
        if self.stripe.webhook_secrets.is_empty()
            || self.stripe.webhook_secrets.iter().any(|s| !s.expose().starts_with("whsec_"))
        {
            return invalid(
                "stripe.webhook_secrets",
                "STRIPE__WEBHOOK_SECRETS",
                "at least one whsec_… secret is required",
            );
        }
        if self.stripe.max_attempts == 0 || self.stripe.timeout_ms == 0 {
            return invalid("stripe.max_attempts", "STRIPE__MAX_ATTEMPTS", "attempts and timeout must be positive");
        }
        if self.payments.currencies.is_empty()
            || self.payments.currencies.iter().any(|c| c.len() != 3 || c.chars().any(|ch| !ch.is_ascii_lowercase()))
        {
            return invalid("payments.currencies", "PAYMENTS__CURRENCIES", "a list of lowercase ISO 4217 codes");
        }
        // SQLite's pool is fixed, so the setting only matters (and is only checked) on PostgreSQL:
        // any URL that is not SQLite's, as the store decides.
        if !self.database.url.starts_with("sqlite:")
            && !(POSTGRES_POOL_MIN..=POSTGRES_POOL_MAX).contains(&self.database.max_connections)
        {
            return invalid(
                "database.max_connections",
                "DATABASE__MAX_CONNECTIONS",
                "between 4 (a quarter of the pool reads welcomes, the rest serves payments, webhooks and binding calls) and 1000",
            );
        }
        if self.payments.max_amount <= 0 {
            return invalid("payments.max_amount", "PAYMENTS__MAX_AMOUNT", "must be positive");
        }
        if self.bus.redis_url.is_some() && !self.bus.redis_cluster_urls.is_empty() {
            return invalid(
                "bus.redis_cluster_urls",
                "BUS__REDIS_CLUSTER_URLS",
                "set either bus.redis_url (one Redis) or bus.redis_cluster_urls (a cluster), not both",
            );
        }
        if (self.bus.redis_url.is_some() || !self.bus.redis_cluster_urls.is_empty())
            && self.database.url.starts_with("sqlite:")
        {
            return invalid(
                "database.url",
                "DATABASE__URL",
                "several instances (bus.redis_url set) need a shared PostgreSQL database",
            );
        }
        if self.events.timeout_ms == 0 || self.events.connect_timeout_ms == 0 || self.events.retry_first_ms == 0 {
            return invalid(
                "events.timeout_ms",
                "EVENTS__TIMEOUT_MS",
                "events.timeout_ms, connect_timeout_ms and retry_first_ms must be positive",
            );
        }
        if self.events.prune_interval_ms == 0 {
            return invalid("events.prune_interval_ms", "EVENTS__PRUNE_INTERVAL_MS", "must be positive");
        }
        if !self.links.secret.is_empty() && self.links.secret.expose().len() < 32 {
            return invalid("links.secret", "LINKS__SECRET", "at least 32 bytes");
        }
        if self.links.ttl_hours == 0 {
            return invalid("links.ttl_hours", "LINKS__TTL_HOURS", "must be positive");
        }
        if let Some(url) = &self.receipts.smtp_url
            && let Err(problem) = smtp_security(url.expose())
        {
            return invalid("receipts.smtp_url", "RECEIPTS__SMTP_URL", &problem);
        }
        if self.receipts.smtp_url.is_some() && self.receipts.timeout_ms == 0 {
            return invalid("receipts.timeout_ms", "RECEIPTS__TIMEOUT_MS", "must be positive (it bounds each attempt)");
        }
        if self.receipts.smtp_url.is_some() && self.receipts.from.parse::<lettre::Address>().is_err() {
            return invalid("receipts.from", "RECEIPTS__FROM", "an e-mail address (receipts@example.com)");
        }
        if self.server.outbound_queue == 0 {
            return invalid("server.outbound_queue", "SERVER__OUTBOUND_QUEUE", "the outbound queue must be positive");
        }
        Ok(())
    }

    /// The public base URL without a trailing slash.
    pub fn public_url(&self) -> String {
        self.server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.server.listen))
            .trim_end_matches('/')
            .to_owned()
    }
}

/// How `receipts.smtp_url` secures the connection to the mail server, spelled as lettre reads
/// the URL. Each mode is explicit; lettre's `tls=opportunistic` is none of them, because it
/// sends in clear text whenever the server's greeting lacks STARTTLS, which anyone on the path
/// can arrange: it is refused, not counted as encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte.
    Tls,
    /// `smtp://…?tls=required`: STARTTLS, and nothing is sent if the server does not offer it.
    StartTls,
    /// `smtp://` without `tls`: clear text, allowed to a loopback host only.
    Plain,
}

impl SmtpSecurity {
    /// Whether mail and credentials cross the connection encrypted.
    pub fn encrypted(self) -> bool {
        !matches!(self, Self::Plain)
    }

    /// The mode's name in logs: `tls`, `starttls` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::StartTls => "starttls",
            Self::Plain => "none",
        }
    }
}

/// The security `url` asks for, or why it is refused: a scheme other than `smtp`/`smtps`, no
/// host, a query parameter other than one `tls`, a `tls` other than `required` on `smtp://`
/// (any on `smtps://`, which is TLS already), or mail in clear to a host that is not loopback
/// (passwords and receipts would cross the network unencrypted). The reason never quotes the
/// URL's user or password.
pub fn smtp_security(url: &str) -> Result<SmtpSecurity, String> {
    const USE: &str = "use smtps:// (TLS from the start) or smtp://…?tls=required (STARTTLS)";
    let parsed = url::Url::parse(url).map_err(|_| "an smtp:// or smtps:// URL".to_owned())?;
    let scheme = parsed.scheme();
    if scheme != "smtp" && scheme != "smtps" {
        return Err("an smtp:// or smtps:// URL".into());
    }
    let loopback = match parsed.host() {
        None | Some(url::Host::Domain("")) => return Err("the URL names no host".into()),
        // An smtp:// URL's host is opaque to the URL parser, an IPv4 address included.
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    };
    let mut tls = None;
    for (key, value) in parsed.query_pairs() {
        if key != "tls" {
            return Err(format!("unknown parameter {key} (the only one is tls=required, on smtp://)"));
        }
        if tls.replace(value.into_owned()).is_some() {
            return Err("tls is given more than once".into());
        }
    }
    match (scheme, tls.as_deref()) {
        ("smtps", None) => Ok(SmtpSecurity::Tls),
        ("smtps", Some(_)) => Err("smtps:// is TLS from the start: leave tls=… out (it would be ignored)".into()),
        ("smtp", Some("required")) => Ok(SmtpSecurity::StartTls),
        (_, Some("opportunistic")) => {
            Err(format!("tls=opportunistic sends in clear text whenever STARTTLS is missing, so it is refused; {USE}"))
        }
        (_, Some(other)) => Err(format!("tls={other} is not a mode; {USE}, or no tls to a loopback relay")),
        (_, None) if loopback => Ok(SmtpSecurity::Plain),
        (_, None) => {
            let host = parsed.host_str().unwrap_or_default();
            Err(format!("smtp:// without TLS is only allowed to a loopback host, not {host}; {USE}"))
        }
    }
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn good_env() -> Vec<(String, String)> {
        env(&[
            ("CALLPAY__AUTH__SECRET", "0123456789abcdef0123456789abcdef"),
            ("CALLPAY__STRIPE__SECRET_KEY", "sk_test_x"),
            ("CALLPAY__STRIPE__PUBLISHABLE_KEY", "pk_test_x"),
            ("CALLPAY__STRIPE__WEBHOOK_SECRETS", "whsec_a, whsec_b"),
            ("CALLPAY__SERVER__OUTBOUND_QUEUE", "8"),
            ("UNRELATED", "x"),
        ])
    }

    #[test]
    fn layers_defaults_file_env() {
        let dir = std::env::temp_dir().join(format!("callpay-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("callpay.toml");
        std::fs::write(
            &file,
            "[server]\noutbound_queue = 32\nmax_connections = 5\n[payments]\ncurrencies = [\"aud\", \"nzd\"]\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&file), good_env()).unwrap();
        assert_eq!(cfg.server.outbound_queue, 8, "env beats file");
        assert_eq!(cfg.server.max_connections, 5, "file beats default");
        assert_eq!(cfg.server.ping_interval_ms, 15_000, "default kept");
        assert_eq!(cfg.payments.currencies, vec!["aud", "nzd"]);
        assert_eq!(cfg.stripe.webhook_secrets.len(), 2);
        cfg.validate_for_serve().unwrap();
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_postgres_pool_is_set_per_instance_and_never_below_four() {
        assert_eq!(Config::load(None, good_env()).unwrap().database.max_connections, 16);
        let mut e = good_env();
        e.push(("CALLPAY__DATABASE__MAX_CONNECTIONS".into(), "12".into()));
        let cfg = Config::load(None, e).unwrap();
        assert_eq!(cfg.database.max_connections, 12);
        cfg.validate_for_serve().unwrap();
        for bad in ["3", "1001"] {
            let mut e = good_env();
            e.push(("CALLPAY__DATABASE__URL".into(), "postgres://db/callpay".into()));
            e.push(("CALLPAY__DATABASE__MAX_CONNECTIONS".into(), bad.into()));
            let err = Config::load(None, e).unwrap().validate_for_serve().unwrap_err().to_string();
            assert!(err.contains("DATABASE__MAX_CONNECTIONS") && err.contains("between 4"), "{bad}: {err}");
        }
        // SQLite's pool is fixed: the setting is not looked at.
        let mut e = good_env();
        e.push(("CALLPAY__DATABASE__MAX_CONNECTIONS".into(), "3".into()));
        Config::load(None, e).unwrap().validate_for_serve().unwrap();
    }

    #[test]
    fn mail_in_clear_only_to_loopback() {
        assert_eq!(smtp_security("smtp://127.0.0.1:2525"), Ok(SmtpSecurity::Plain));
        assert_eq!(smtp_security("smtp://localhost:25"), Ok(SmtpSecurity::Plain));
        assert_eq!(smtp_security("smtp://[::1]:25"), Ok(SmtpSecurity::Plain));
        assert_eq!(smtp_security("smtp://u:p@mail.example.com:587?tls=required"), Ok(SmtpSecurity::StartTls));
        assert_eq!(smtp_security("smtps://u:p@mail.example.com"), Ok(SmtpSecurity::Tls));
        let err = smtp_security("smtp://u:p@mail.example.com:25").unwrap_err();
        assert!(err.contains("mail.example.com") && !err.contains("u:p"), "{err}");
        assert!(smtp_security("http://mail.example.com").is_err());
        assert!(smtp_security("smtp://").is_err());
        let mut e = good_env();
        e.push(("CALLPAY__RECEIPTS__SMTP_URL".into(), "smtp://10.0.0.5:25".into()));
        let err = Config::load(None, e).unwrap().validate_for_serve().unwrap_err().to_string();
        assert!(err.contains("RECEIPTS__SMTP_URL"), "{err}");
        let mut e = good_env();
        e.push(("CALLPAY__LINKS__SECRET".into(), "short".into()));
        assert!(Config::load(None, e).unwrap().validate_for_serve().unwrap_err().to_string().contains("LINKS__SECRET"));
        let cfg = Config::load(None, good_env()).unwrap();
        assert_eq!(cfg.links.ttl_hours, 72);
        assert!(cfg.receipts.smtp_url.is_none());
    }

    #[test]
    fn smtp_tls_is_explicit_and_opportunistic_is_refused() {
        // Opportunistic STARTTLS sends in clear text when the server (or anyone on the path)
        // leaves STARTTLS out: not encryption, so not accepted, not even to loopback.
        let err = smtp_security("smtp://u:p@mail.example.com:587?tls=opportunistic").unwrap_err();
        assert!(err.contains("opportunistic") && err.contains("tls=required"), "{err}");
        assert!(smtp_security("smtp://127.0.0.1:25?tls=opportunistic").is_err());
        // Unknown, repeated or contradictory settings are refused rather than guessed at.
        let err = smtp_security("smtp://u:p@mail.example.com:587?tls=requried").unwrap_err();
        assert!(err.contains("requried") && !err.contains("u:p"), "{err}");
        assert!(smtp_security("smtp://mail.example.com:587?tls=required&tls=opportunistic").is_err());
        assert!(smtp_security("smtp://mail.example.com:587?tls=required&tls=required").is_err());
        assert!(smtp_security("smtps://mail.example.com?tls=opportunistic").is_err(), "smtps:// is TLS already");
        assert!(smtp_security("smtp://mail.example.com:587?tls=Required").is_err(), "lettre knows lower case only");
        assert!(smtp_security("smtp://mail.example.com:587?tls=required&auth=plain").is_err(), "unknown parameter");
        // `tls=required` counts as the URL's parameter only, not as text anywhere in it.
        assert!(smtp_security("smtp://u:tls=required@mail.example.com:25").is_err(), "a password is not a mode");
        assert!(smtp_security("smtp://mail.example.com:25?x=tls=required").is_err());
        assert!(smtp_security("smtp://mail.example.com:25/tls=required").is_err());
        // Each accepted mode says plainly whether it encrypts.
        assert!(SmtpSecurity::Tls.encrypted() && SmtpSecurity::StartTls.encrypted());
        assert!(!SmtpSecurity::Plain.encrypted());
        assert_eq!(smtp_security("smtp://u:p%40x@127.0.0.1:2525/ehlo.example"), Ok(SmtpSecurity::Plain));
        // At start the setting is named, its password never shown.
        let mut e = good_env();
        e.push(("CALLPAY__RECEIPTS__SMTP_URL".into(), "smtp://u:hunter2@mail.example.com?tls=opportunistic".into()));
        let err = Config::load(None, e).unwrap().validate_for_serve().unwrap_err().to_string();
        assert!(err.contains("RECEIPTS__SMTP_URL") && err.contains("opportunistic"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let cfg = Config::load(None, good_env()).unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk_test_x") && !shown.contains("whsec_a") && !shown.contains("0123456789abcdef"));
    }

    #[test]
    fn serve_refuses_missing_or_unsafe_settings() {
        let err = Config::load(None, vec![]).unwrap().validate_for_serve().unwrap_err().to_string();
        assert!(err.contains("CALLPAY__AUTH__SECRET"), "{err}");
        let mut e = good_env();
        e.retain(|(k, _)| k != "CALLPAY__STRIPE__WEBHOOK_SECRETS");
        let err = Config::load(None, e).unwrap().validate_for_serve().unwrap_err().to_string();
        assert!(err.contains("webhook_secrets"), "{err}");
        let mut e = good_env();
        e.push(("CALLPAY__STRIPE__PUBLISHABLE_KEY".into(), "pk_live_x".into()));
        assert!(Config::load(None, e).unwrap().validate_for_serve().unwrap_err().to_string().contains("mixed"));
        assert!(Config::load(None, env(&[("CALLPAY__SERVER__NOPE", "1")])).is_err(), "unknown settings are errors");
        // A retiring HS256 secret must be as long as a current one; the usual one is accepted.
        let mut e = good_env();
        e.push(("CALLPAY__AUTH__PREVIOUS_SECRET".into(), "short".into()));
        let err = Config::load(None, e).unwrap().validate_for_serve().unwrap_err().to_string();
        assert!(err.contains("AUTH__PREVIOUS_SECRET"), "{err}");
        let mut e = good_env();
        e.push(("CALLPAY__AUTH__PREVIOUS_SECRET".into(), "previous-secret-0123456789abcdef-xyz".into()));
        assert!(Config::load(None, e).unwrap().validate_for_serve().is_ok());
        // Restricted keys: live with live, test with test; mixed is refused.
        for (sk, pk, ok) in [
            ("rk_live_x", "pk_live_x", true),
            ("rk_test_x", "pk_test_x", true),
            ("rk_live_x", "pk_test_x", false),
            ("rk_test_x", "pk_live_x", false),
        ] {
            let mut e = good_env();
            e.push(("CALLPAY__STRIPE__SECRET_KEY".into(), sk.into()));
            e.push(("CALLPAY__STRIPE__PUBLISHABLE_KEY".into(), pk.into()));
            assert_eq!(Config::load(None, e).unwrap().validate_for_serve().is_ok(), ok, "{sk} with {pk}");
        }
    }
}

//! The simulator's in-memory world: the platform and its connected accounts, each with its own
//! objects, plus idempotency results, OAuth grants, injected faults and the delivery log.
//!
//! One `std::sync::Mutex` guards it all. Every operation is short and synchronous, and nothing
//! awaits while holding it; webhook delivery and delays happen after the lock is released.

use crate::error::{ApiError, ApiResult};
use crate::objects;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Most entries kept in the delivery log and the receipt outbox; older ones are dropped so a
/// long-running demo does not grow without bound.
pub const LOG_CAP: usize = 5_000;

/// Objects of one kind in one account, listed newest first like Stripe's list endpoints.
#[derive(Default)]
pub struct Collection {
    order: Vec<String>,
    items: HashMap<String, Value>,
}

impl Collection {
    /// Stores `object` under its `id`.
    pub fn insert(&mut self, object: Value) {
        let id = object["id"].as_str().expect("every object has an id").to_owned();
        if self.items.insert(id.clone(), object).is_none() {
            self.order.push(id);
        }
    }

    /// The object with `id`.
    pub fn get(&self, id: &str) -> Option<&Value> {
        self.items.get(id)
    }

    /// The object with `id`, for changing it.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.items.get_mut(id)
    }

    /// Newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &Value> {
        self.order.iter().rev().filter_map(|id| self.items.get(id))
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// A Stripe list page: `limit` (1..=100, default 10), `starting_after`, `ending_before`,
    /// over the objects `keep` accepts.
    pub fn page(&self, params: &Value, url: &str, keep: impl Fn(&Value) -> bool) -> ApiResult<Value> {
        let limit = match params.get("limit") {
            None => 10,
            Some(raw) => {
                let n = crate::money::integer(raw, "limit")?;
                if !(1..=100).contains(&n) {
                    return Err(ApiError::invalid(
                        "This value must be between 1 and 100 (it currently is out of range).",
                    )
                    .code("parameter_invalid_integer")
                    .param("limit"));
                }
                n as usize
            }
        };
        let all: Vec<&Value> = self.newest_first().filter(|v| keep(v)).collect();
        let cursor = |param: &str| -> ApiResult<Option<usize>> {
            match params.get(param).and_then(Value::as_str) {
                None => Ok(None),
                Some(id) => all
                    .iter()
                    .position(|v| v["id"] == id)
                    .map(Some)
                    .ok_or_else(|| ApiError::missing("object", id, param)),
            }
        };
        let (data, has_more): (Vec<Value>, bool) = if let Some(pos) = cursor("ending_before")? {
            let start = pos.saturating_sub(limit);
            (all[start..pos].iter().map(|v| (*v).clone()).collect(), start > 0)
        } else {
            let start = cursor("starting_after")?.map_or(0, |p| p + 1);
            let end = (start + limit).min(all.len());
            (all[start..end].iter().map(|v| (*v).clone()).collect(), end < all.len())
        };
        Ok(objects::list(url, data, has_more))
    }
}

/// One Stripe account as the simulator holds it.
pub struct AccountData {
    /// The `account` object.
    pub object: Value,
    /// Whether the platform is authorised on it (OAuth done and not deauthorised).
    pub connected: bool,
    /// The account's own publishable key.
    pub publishable_key: String,
    /// PaymentIntents on this account.
    pub payment_intents: Collection,
    /// Charges on this account.
    pub charges: Collection,
    /// Refunds on this account.
    pub refunds: Collection,
    /// PaymentMethods created on this account.
    pub payment_methods: Collection,
    /// Events about this account's objects.
    pub events: Collection,
    /// Which test card each of this account's PaymentMethods is (what confirm will do with it).
    pub pm_cards: HashMap<String, crate::cards::TestCard>,
}

impl AccountData {
    /// A new account around `object`.
    pub fn new(object: Value, connected: bool) -> Self {
        let id = object["id"].as_str().unwrap_or_default();
        let publishable_key = format!("pk_test_{}", id.trim_start_matches("acct_"));
        Self {
            object,
            connected,
            publishable_key,
            payment_intents: Collection::default(),
            charges: Collection::default(),
            refunds: Collection::default(),
            payment_methods: Collection::default(),
            events: Collection::default(),
            pm_cards: HashMap::new(),
        }
    }
}

/// A registered webhook endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `we_…`.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Signing secret, `whsec_…`.
    pub secret: String,
    /// Receives connected accounts' events (a Connect endpoint) rather than the platform's.
    pub connect: bool,
    /// Configured at start-up: receives both the platform's and connected accounts' events,
    /// like a `stripe listen` forwarder, and survives `/_sim/reset`.
    pub from_config: bool,
    /// Event types, or `*`.
    pub enabled_events: Vec<String>,
    /// The `webhook_endpoint` object.
    pub object: Value,
}

impl Endpoint {
    /// Whether an event of `kind` from a connected account (`connected`) goes here.
    pub fn wants(&self, kind: &str, connected: bool) -> bool {
        let scope = self.from_config || self.connect == connected;
        scope && self.enabled_events.iter().any(|e| e == "*" || e == kind)
    }
}

/// A saved result for an Idempotency-Key.
pub struct IdempotentResult {
    /// What the first request was (method, path, parameters), to detect reuse with others.
    pub fingerprint: String,
    /// Status of the first response.
    pub status: u16,
    /// Body of the first response.
    pub body: Value,
}

/// A pending OAuth authorization code.
pub struct OAuthGrant {
    /// The account the user picked.
    pub account: String,
    /// Granted scope.
    pub scope: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// Faults to inject, set through `/_sim/faults`. Counters count down as faults fire.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The next N `/v1` calls fail with `api_error_status` before doing anything.
    pub api_errors: u32,
    /// 500 (default) or 429.
    pub api_error_status: Option<u16>,
    /// The next N `/v1` calls are delayed by `api_delay_ms` first.
    pub api_delays: u32,
    /// Delay for `api_delays`.
    pub api_delay_ms: u64,
    /// The next N events are delivered twice to each endpoint.
    pub webhook_duplicate: u32,
    /// The next N events are held back and delivered after the event that follows them.
    pub webhook_reorder: u32,
    /// The next N events are delivered `webhook_delay_ms` late.
    pub webhook_delays: u32,
    /// Delay for `webhook_delays`.
    pub webhook_delay_ms: u64,
    /// For the next event, the first N delivery attempts are dropped (counted as failures and retried).
    pub webhook_drop_attempts: u32,
    /// While set, no event is delivered at all (the endpoint is unreachable and retries are
    /// given up): what a hub must survive without losing a confirmation.
    pub webhook_drop_all: bool,
    /// The next confirm declines with this decline code whatever the card
    /// (`generic_decline`, `insufficient_funds`, `expired_card`).
    pub decline_next_confirm: Option<String>,
    /// When set, successful card confirmations pass through `processing` for this long.
    pub processing_delay_ms: Option<u64>,
}

impl Faults {
    /// Adds `other`'s non-default settings to these.
    pub fn merge(&mut self, other: Faults) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f != Faults::default().$f { self.$f = other.$f; } )* };
        }
        take!(
            api_errors,
            api_error_status,
            api_delays,
            api_delay_ms,
            webhook_duplicate,
            webhook_reorder,
            webhook_delays,
            webhook_delay_ms,
            webhook_drop_attempts,
            webhook_drop_all,
            decline_next_confirm,
            processing_delay_ms
        );
    }
}

/// One webhook delivery attempt, for the dashboard and `/_sim/deliveries`.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    /// Unix seconds.
    pub at: i64,
    /// The event.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Connected account, if any.
    pub account: Option<String>,
    /// Endpoint id.
    pub endpoint_id: String,
    /// Endpoint URL.
    pub url: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// HTTP status, when a response came back.
    pub status: Option<u16>,
    /// What happened (`200`, `timeout`, `connection refused`, `dropped by fault`...).
    pub outcome: String,
    /// Whether this attempt counts as delivered (2xx).
    pub delivered: bool,
}

/// A receipt e-mail the simulator "sent" (kept in an outbox, since nothing leaves this machine).
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// Unix seconds.
    pub at: i64,
    /// Recipient.
    pub to: String,
    /// Account that took the payment.
    pub account: String,
    /// The charge.
    pub charge: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Link to the receipt page.
    pub receipt_url: String,
}

/// One API request as the simulator saw it, so tests can check what clients send.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Unix seconds.
    pub at: i64,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Whether it was authenticated with the platform secret key (a server, not Stripe.js).
    pub secret_key: bool,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<String>,
    /// The `Stripe-Account` header (the connected account acted on), if any.
    pub account: Option<String>,
}

/// Everything the simulator knows.
pub struct World {
    /// The platform's own account id.
    pub platform: String,
    /// Every account by id, the platform's included.
    pub accounts: BTreeMap<String, AccountData>,
    /// Webhook endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Saved idempotent results by (account, key).
    pub idempotency: HashMap<(String, String), IdempotentResult>,
    /// OAuth codes not yet exchanged.
    pub oauth_codes: HashMap<String, OAuthGrant>,
    /// OAuth access tokens, each a secret key for one account.
    pub access_tokens: HashMap<String, String>,
    /// Faults waiting to fire.
    pub faults: Faults,
    /// Events held back by `webhook_reorder`, waiting for the next event.
    pub held_events: Vec<(String, Value)>,
    /// Delivery attempts, oldest first.
    pub deliveries: Vec<DeliveryRecord>,
    /// Receipt e-mails, oldest first.
    pub receipts: Vec<Receipt>,
    /// API and OAuth requests, oldest first.
    pub requests: Vec<RequestRecord>,
    /// Bumped by reset, so deliveries of the old world stop retrying.
    pub generation: u64,
}

impl World {
    /// A world with only the platform account.
    pub fn new(platform_name: &str) -> Self {
        let platform = crate::ids::new_id("acct");
        let object = objects::account(&platform, Some("platform@callpay.test"), Some(platform_name), "AU", "aud");
        let mut accounts = BTreeMap::new();
        accounts.insert(platform.clone(), AccountData::new(object, true));
        Self {
            platform,
            accounts,
            endpoints: Vec::new(),
            idempotency: HashMap::new(),
            oauth_codes: HashMap::new(),
            access_tokens: HashMap::new(),
            faults: Faults::default(),
            held_events: Vec::new(),
            deliveries: Vec::new(),
            receipts: Vec::new(),
            requests: Vec::new(),
            generation: 0,
        }
    }

    /// The account `id`, which must exist.
    pub fn account(&self, id: &str) -> ApiResult<&AccountData> {
        self.accounts.get(id).ok_or_else(|| ApiError::missing("account", id, "account"))
    }

    /// The account `id`, for changing it.
    pub fn account_mut(&mut self, id: &str) -> ApiResult<&mut AccountData> {
        self.accounts.get_mut(id).ok_or_else(|| ApiError::missing("account", id, "account"))
    }

    /// Creates a test account; `connected` says whether the platform is already authorised on it.
    pub fn create_account(
        &mut self,
        email: Option<&str>,
        name: Option<&str>,
        country: &str,
        currency: &str,
        connected: bool,
    ) -> String {
        let id = crate::ids::new_id("acct");
        let object = objects::account(&id, email, name, country, currency);
        self.accounts.insert(id.clone(), AccountData::new(object, connected));
        id
    }

    /// Appends to a log, dropping the oldest entries past [`LOG_CAP`].
    pub fn push_capped<T>(log: &mut Vec<T>, item: T) {
        if log.len() >= LOG_CAP {
            log.drain(..LOG_CAP / 10);
        }
        log.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filled(n: usize) -> Collection {
        let mut c = Collection::default();
        for i in 0..n {
            c.insert(json!({"id": format!("x_{i}")}));
        }
        c
    }

    #[test]
    fn pages_newest_first_with_cursors() {
        let c = filled(5);
        let p = c.page(&json!({"limit": "2"}), "/v1/x", |_| true).unwrap();
        assert_eq!(p["data"][0]["id"], "x_4");
        assert_eq!(p["has_more"], true);
        let p = c.page(&json!({"limit": "2", "starting_after": "x_1"}), "/v1/x", |_| true).unwrap();
        assert_eq!(p["data"].as_array().unwrap().len(), 1);
        assert_eq!(p["data"][0]["id"], "x_0");
        assert_eq!(p["has_more"], false);
        let p = c.page(&json!({"limit": "1", "ending_before": "x_3"}), "/v1/x", |_| true).unwrap();
        assert_eq!(p["data"][0]["id"], "x_4");
        assert!(c.page(&json!({"limit": "0"}), "/v1/x", |_| true).is_err());
        assert!(c.page(&json!({"starting_after": "nope"}), "/v1/x", |_| true).is_err());
    }

    #[test]
    fn faults_merge_keeps_unset_fields() {
        let mut f = Faults { api_errors: 2, ..Default::default() };
        f.merge(Faults { webhook_duplicate: 1, ..Default::default() });
        assert_eq!((f.api_errors, f.webhook_duplicate), (2, 1));
    }
}

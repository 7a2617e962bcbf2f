//! Stripe behind the [`StripeApi`] trait. [`StripeGateway`] is the real implementation on
//! async-stripe 1.0; it talks to any base URL, so the same code runs against Stripe and against
//! stripe-sim. Every POST carries an Idempotency-Key derived from callpay's own payment id, and a
//! transient failure (timeout, 409, 429, 5xx) is retried with the same key, so a retry can never
//! create a second PaymentIntent or cancel twice.

use crate::config::StripeConfig;
use async_trait::async_trait;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;
use stripe::{RequestStrategy, StripeRequest};
use stripe_core::payment_intent::{
    CancelPaymentIntent, CreatePaymentIntent, CreatePaymentIntentAutomaticPaymentMethods, RetrievePaymentIntent,
};
use stripe_core::refund::{CreateRefund, CreateRefundReason};

/// First wait between attempts; doubles each time.
const BACKOFF_START: Duration = Duration::from_millis(200);

/// Stripe failures, sorted by what the caller can do about them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// Stripe could not be reached or asked us to retry, and the attempts ran out.
    #[error("stripe unavailable: {0}")]
    Unavailable(String),
    /// The platform lost access to the connected account (deauthorised or unknown).
    #[error("no access to the connected account: {0}")]
    AccountAccess(String),
    /// Stripe refused the request.
    #[error("stripe rejected the request ({status} {code:?}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Stripe's error code.
        code: Option<String>,
        /// Stripe's message.
        message: String,
    },
}

/// A new PaymentIntent, as a direct charge on a connected account.
#[derive(Debug, Clone)]
pub struct NewIntent {
    /// Connected account (`Stripe-Account`).
    pub account: String,
    /// Minor units.
    pub amount: i64,
    /// Lowercase currency.
    pub currency: String,
    /// Shown on the clinic's dashboard and the receipt.
    pub description: String,
    /// callpay ids only, never clinical data.
    pub metadata: HashMap<String, String>,
    /// Derived from callpay's payment id.
    pub idempotency_key: String,
}

/// What callpay needs to know about a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentInfo {
    /// `pi_…`.
    pub id: String,
    /// For the patient's Stripe.js.
    pub client_secret: Option<String>,
    /// Stripe's status string.
    pub status: String,
    /// Amount asked for.
    pub amount: i64,
    /// Amount received.
    pub amount_received: i64,
    /// Lowercase currency.
    pub currency: String,
    /// The last attempt's error: code, decline code, message.
    pub last_error: Option<(String, Option<String>, String)>,
    /// Receipt address.
    pub receipt_email: Option<String>,
    /// Brand and last four of the latest charge's card.
    pub card: Option<(String, String)>,
    /// What the latest charge has refunded so far (pending and succeeded refunds; a failed
    /// refund no longer counts).
    pub amount_refunded: i64,
}

/// A refund of a PaymentIntent's charge, made on the connected account.
#[derive(Debug, Clone)]
pub struct NewRefund {
    /// Connected account (`Stripe-Account`).
    pub account: String,
    /// The PaymentIntent refunded.
    pub payment_intent: String,
    /// Minor units.
    pub amount: i64,
    /// `requested_by_customer`, `duplicate` or `fraudulent`.
    pub reason: String,
    /// callpay ids only.
    pub metadata: HashMap<String, String>,
    /// Derived from callpay's refund id.
    pub idempotency_key: String,
}

/// What callpay needs to know about a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundInfo {
    /// `re_…`.
    pub id: String,
    /// Minor units.
    pub amount: i64,
    /// Stripe's status: `pending`, `requires_action`, `succeeded`, `failed`, `canceled`.
    pub status: String,
    /// Why it failed.
    pub failure_reason: Option<String>,
}

/// Stripe operations callpay performs.
#[async_trait]
pub trait StripeApi: Send + Sync + 'static {
    /// Creates a PaymentIntent on the connected account.
    async fn create_intent(&self, intent: &NewIntent) -> Result<IntentInfo, GatewayError>;
    /// Cancels a PaymentIntent.
    async fn cancel_intent(&self, account: &str, id: &str, idempotency_key: &str) -> Result<IntentInfo, GatewayError>;
    /// Reads a PaymentIntent with its latest charge.
    async fn intent(&self, account: &str, id: &str) -> Result<IntentInfo, GatewayError>;
    /// The connected account's business name, for admin pages (`None` if unknown/unreachable).
    async fn account_name(&self, account: &str) -> Option<String>;
    /// Refunds part or all of a PaymentIntent's charge.
    async fn create_refund(&self, refund: &NewRefund) -> Result<RefundInfo, GatewayError>;
}

/// The real Stripe client.
pub struct StripeGateway {
    client: stripe::Client,
    max_attempts: u32,
}

impl StripeGateway {
    /// A client for `cfg.api_base` with the platform secret key.
    pub fn new(cfg: &StripeConfig) -> Result<Self, GatewayError> {
        let base = if cfg.api_base.ends_with('/') { cfg.api_base.clone() } else { format!("{}/", cfg.api_base) };
        let client = stripe::ClientBuilder::new(cfg.secret_key.expose())
            .url(base)
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()
            .map_err(|e| GatewayError::Unavailable(format!("client configuration: {e}")))?;
        Ok(Self { client, max_attempts: cfg.max_attempts.max(1) })
    }

    /// Runs `send` up to `max_attempts` times while the failure is transient, waiting
    /// exponentially longer (with jitter, so hubs that failed together do not retry together)
    /// between attempts. Every attempt carries the same idempotency key. Stripe's own
    /// `Retry-After` cannot be honoured here: async-stripe's error carries no headers.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut send: F) -> Result<T, GatewayError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, stripe::StripeError>>,
    {
        use backon::{ExponentialBuilder, Retryable};
        let backoff = ExponentialBuilder::default()
            .with_min_delay(BACKOFF_START)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        (|| {
            let attempt = send();
            async move { attempt.await.map_err(classify) }
        })
        .retry(backoff)
        .when(|e| matches!(e, GatewayError::Unavailable(_)))
        .notify(|e, wait| {
            tracing::warn!(what, error = %e, ?wait, "stripe call failed; retrying with the same idempotency key");
        })
        .await
    }
}

fn classify(e: stripe::StripeError) -> GatewayError {
    match e {
        stripe::StripeError::Stripe(err, status) => {
            let code = err.code.as_ref().map(|c| c.as_str().to_owned());
            let message = err.message.clone().unwrap_or_default();
            match status {
                409 | 429 | 500..=599 => GatewayError::Unavailable(format!("{status}: {message}")),
                401 | 403 => GatewayError::AccountAccess(message),
                _ => GatewayError::Rejected { status, code, message },
            }
        }
        stripe::StripeError::ClientError(m) => GatewayError::Unavailable(m),
        stripe::StripeError::Timeout => GatewayError::Unavailable("timeout".into()),
        // An answer we could not read (Stripe may have acted on the request): not a refusal.
        // The caller keeps what it asked for and asks again under the same idempotency key.
        other => GatewayError::Unavailable(format!("unreadable answer: {other}")),
    }
}

fn account_id(account: &str) -> Result<stripe::AccountId, GatewayError> {
    stripe::AccountId::from_str(account).map_err(|_| GatewayError::AccountAccess(format!("bad account id {account}")))
}

fn key(k: &str) -> Result<RequestStrategy, GatewayError> {
    stripe::IdempotencyKey::new(k).map(RequestStrategy::Idempotent).map_err(|e| GatewayError::Rejected {
        status: 0,
        code: None,
        message: format!("idempotency key: {e}"),
    })
}

fn info(pi: stripe_shared::PaymentIntent) -> IntentInfo {
    let charge = match &pi.latest_charge {
        Some(stripe_types::Expandable::Object(charge)) => Some(charge),
        _ => None,
    };
    let card = charge
        .and_then(|c| c.payment_method_details.as_ref())
        .and_then(|d| d.card.as_ref())
        .and_then(|c| Some((c.brand.clone()?, c.last4.clone()?)));
    let amount_refunded = charge.map_or(0, |c| c.amount_refunded);
    IntentInfo {
        id: pi.id.as_str().to_owned(),
        client_secret: pi.client_secret,
        status: pi.status.as_str().to_owned(),
        amount: pi.amount,
        amount_received: pi.amount_received,
        currency: pi.currency.to_string(),
        last_error: pi.last_payment_error.as_deref().map(|e| {
            (
                e.code.as_ref().map(|c| c.as_str().to_owned()).unwrap_or_else(|| "payment_failed".into()),
                e.decline_code.clone(),
                e.message.clone().unwrap_or_else(|| "The payment failed.".into()),
            )
        }),
        receipt_email: pi.receipt_email,
        card,
        amount_refunded,
    }
}

/// A refund's id, amount, status and failure, as Stripe answered or sent it.
pub fn refund_info(r: &stripe_shared::Refund) -> RefundInfo {
    RefundInfo {
        id: r.id.as_str().to_owned(),
        amount: r.amount,
        status: r.status.clone().unwrap_or_else(|| "pending".into()),
        failure_reason: r.failure_reason.clone(),
    }
}

#[async_trait]
impl StripeApi for StripeGateway {
    async fn create_intent(&self, n: &NewIntent) -> Result<IntentInfo, GatewayError> {
        let currency = stripe_types::Currency::from_str(&n.currency).map_err(|_| GatewayError::Rejected {
            status: 0,
            code: None,
            message: format!("unknown currency {}", n.currency),
        })?;
        let account = account_id(&n.account)?;
        let strategy = key(&n.idempotency_key)?;
        let request = CreatePaymentIntent::new(n.amount, currency)
            .description(n.description.clone())
            .metadata(n.metadata.clone())
            .automatic_payment_methods(CreatePaymentIntentAutomaticPaymentMethods::new(true));
        self.with_retries("create payment intent", || {
            request.customize().account_id(account.clone()).request_strategy(strategy.clone()).send(&self.client)
        })
        .await
        .map(info)
    }

    async fn cancel_intent(&self, account: &str, id: &str, idempotency_key: &str) -> Result<IntentInfo, GatewayError> {
        let account = account_id(account)?;
        let strategy = key(idempotency_key)?;
        let request = CancelPaymentIntent::new(id);
        self.with_retries("cancel payment intent", || {
            request.customize().account_id(account.clone()).request_strategy(strategy.clone()).send(&self.client)
        })
        .await
        .map(info)
    }

    async fn intent(&self, account: &str, id: &str) -> Result<IntentInfo, GatewayError> {
        let account = account_id(account)?;
        let request = RetrievePaymentIntent::new(id).expand(vec!["latest_charge".to_owned()]);
        self.with_retries("retrieve payment intent", || {
            request.customize().account_id(account.clone()).send(&self.client)
        })
        .await
        .map(info)
    }

    async fn account_name(&self, account: &str) -> Option<String> {
        let request = stripe_connect::account::RetrieveAccount::new(account);
        let acct = self.with_retries("retrieve account", || request.customize().send(&self.client)).await.ok()?;
        let profile = acct.business_profile.and_then(|p| p.name);
        let dashboard = acct.settings.and_then(|s| s.dashboard.display_name);
        profile.or(dashboard)
    }

    async fn create_refund(&self, r: &NewRefund) -> Result<RefundInfo, GatewayError> {
        let account = account_id(&r.account)?;
        let strategy = key(&r.idempotency_key)?;
        let reason = CreateRefundReason::from_str(&r.reason).map_err(|_| GatewayError::Rejected {
            status: 0,
            code: None,
            message: format!("unknown refund reason {}", r.reason),
        })?;
        let request = CreateRefund::new()
            .payment_intent(r.payment_intent.clone())
            .amount(r.amount)
            .reason(reason)
            .metadata(r.metadata.clone());
        self.with_retries("create refund", || {
            request.customize().account_id(account.clone()).request_strategy(strategy.clone()).send(&self.client)
        })
        .await
        .map(|refund| refund_info(&refund))
    }
}

/// Times every call of the wrapped [`StripeApi`] into `callpay_stripe_request_seconds`, by
/// operation and outcome.
pub struct Timed {
    inner: std::sync::Arc<dyn StripeApi>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Timed {
    /// Wraps `inner`.
    pub fn new(inner: std::sync::Arc<dyn StripeApi>, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn record<T>(&self, operation: &'static str, start: std::time::Instant, result: &Result<T, GatewayError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(GatewayError::Unavailable(_)) => "unavailable",
            Err(GatewayError::AccountAccess(_)) => "no_access",
            Err(GatewayError::Rejected { .. }) => "rejected",
        };
        let labels = vec![("operation", operation), ("outcome", outcome)];
        self.metrics.stripe_seconds.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl StripeApi for Timed {
    async fn create_intent(&self, intent: &NewIntent) -> Result<IntentInfo, GatewayError> {
        let start = std::time::Instant::now();
        let r = self.inner.create_intent(intent).await;
        self.record("create_intent", start, &r);
        r
    }

    async fn cancel_intent(&self, account: &str, id: &str, idempotency_key: &str) -> Result<IntentInfo, GatewayError> {
        let start = std::time::Instant::now();
        let r = self.inner.cancel_intent(account, id, idempotency_key).await;
        self.record("cancel_intent", start, &r);
        r
    }

    async fn intent(&self, account: &str, id: &str) -> Result<IntentInfo, GatewayError> {
        let start = std::time::Instant::now();
        let r = self.inner.intent(account, id).await;
        self.record("retrieve_intent", start, &r);
        r
    }

    async fn account_name(&self, account: &str) -> Option<String> {
        let start = std::time::Instant::now();
        let r = self.inner.account_name(account).await;
        let outcome = if r.is_some() { "ok" } else { "unavailable" };
        let labels = vec![("operation", "retrieve_account"), ("outcome", outcome)];
        self.metrics.stripe_seconds.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
        r
    }

    async fn create_refund(&self, refund: &NewRefund) -> Result<RefundInfo, GatewayError> {
        let start = std::time::Instant::now();
        let r = self.inner.create_refund(refund).await;
        self.record("create_refund", start, &r);
        r
    }
}

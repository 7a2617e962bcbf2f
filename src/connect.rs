//! Stripe Connect OAuth for Standard accounts, which async-stripe does not cover: the authorize
//! URL, the code exchange (`POST /oauth/token`) and `POST /oauth/deauthorize`, as small form
//! POSTs to a configurable base URL (Stripe's `connect.stripe.com`, or stripe-sim).

use crate::config::StripeConfig;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sha2::Digest;
use std::time::Duration;

/// Connect failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// Stripe could not be reached.
    #[error("stripe connect unavailable: {0}")]
    Unavailable(String),
    /// Stripe refused (`invalid_grant`, `invalid_client`...).
    #[error("stripe connect refused: {error}: {description}")]
    Refused {
        /// OAuth error code.
        error: String,
        /// Explanation.
        description: String,
    },
}

/// A linked account, from the code exchange.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Linked {
    /// `acct_…`.
    pub stripe_user_id: String,
    /// The account's publishable key.
    pub stripe_publishable_key: Option<String>,
    /// Live or test mode.
    pub livemode: bool,
    /// Granted scope.
    pub scope: Option<String>,
}

/// A linked account as the admin page shows it (from `GET /v1/accounts/{id}`).
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct AccountDetails {
    /// `acct_…`.
    pub id: String,
    /// The business name the account gives.
    pub name: Option<String>,
    /// Its e-mail address.
    pub email: Option<String>,
    /// Two-letter country.
    pub country: Option<String>,
    /// Whether it can take charges now.
    pub charges_enabled: bool,
    /// Whether Stripe pays out to it now.
    pub payouts_enabled: bool,
}

impl AccountDetails {
    fn from_stripe(v: &serde_json::Value) -> Option<Self> {
        let text = |p: &str| v.pointer(p).and_then(|x| x.as_str()).map(str::to_owned);
        Some(Self {
            id: text("/id")?,
            name: text("/business_profile/name").or_else(|| text("/settings/dashboard/display_name")),
            email: text("/email").or_else(|| text("/business_profile/support_email")),
            country: text("/country"),
            charges_enabled: v["charges_enabled"].as_bool().unwrap_or(false),
            payouts_enabled: v["payouts_enabled"].as_bool().unwrap_or(false),
        })
    }
}

/// Connect OAuth operations.
#[async_trait]
pub trait ConnectApi: Send + Sync + 'static {
    /// Where to send the clinic admin's browser.
    fn authorize_url(&self, state: &str, redirect_uri: &str) -> String;
    /// Exchanges a single-use code for the account.
    async fn exchange(&self, code: &str) -> Result<Linked, ConnectError>;
    /// Revokes the platform's access to an account. `idempotency_key` identifies this removal.
    async fn deauthorize(&self, account: &str, idempotency_key: &str) -> Result<(), ConnectError>;
    /// A linked account's details (a read: no idempotency key needed).
    async fn account(&self, account: &str) -> Result<AccountDetails, ConnectError>;
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The real client.
pub struct StripeConnect {
    base: String,
    api: String,
    client_id: String,
    secret: String,
    timeout: Duration,
    http: Client<Https, Full<Bytes>>,
}

impl StripeConnect {
    /// A client for `cfg.connect_base`.
    pub fn new(cfg: &StripeConfig) -> Self {
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        Self {
            base: cfg.connect_base.trim_end_matches('/').to_owned(),
            api: cfg.api_base.trim_end_matches('/').to_owned(),
            client_id: cfg.client_id.clone(),
            secret: cfg.secret_key.expose().to_owned(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            http: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<serde_json::Value, ConnectError> {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let request = hyper::Request::post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("idempotency-key", idempotency_key)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ConnectError::Unavailable(e.to_string()))?;
        self.send(request).await
    }

    async fn send(&self, request: hyper::Request<Full<Bytes>>) -> Result<serde_json::Value, ConnectError> {
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| ConnectError::Unavailable("timeout".into()))?
            .map_err(|e| ConnectError::Unavailable(e.to_string()))?;
        let status = response.status();
        let bytes =
            response.into_body().collect().await.map_err(|e| ConnectError::Unavailable(e.to_string()))?.to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ConnectError::Unavailable(format!("{status}: {e}")))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(ConnectError::Unavailable(status.to_string()));
        }
        if !status.is_success() {
            return Err(ConnectError::Refused {
                error: json["error"].as_str().unwrap_or("unknown").to_owned(),
                description: json["error_description"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(json)
    }
}

#[async_trait]
impl ConnectApi for StripeConnect {
    fn authorize_url(&self, state: &str, redirect_uri: &str) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("scope", "read_write")
            .append_pair("state", state)
            .append_pair("redirect_uri", redirect_uri)
            .finish();
        format!("{}/oauth/authorize?{query}", self.base)
    }

    async fn exchange(&self, code: &str) -> Result<Linked, ConnectError> {
        // Keyed by the code itself: the same exchange, retried, is the same request.
        let key = format!("callpay:oauth-token:{}", hex::encode(&sha2::Sha256::digest(code.as_bytes())[..12]));
        let json = self.post("/oauth/token", &[("grant_type", "authorization_code"), ("code", code)], &key).await?;
        serde_json::from_value(json).map_err(|e| ConnectError::Unavailable(format!("unexpected token response: {e}")))
    }

    async fn deauthorize(&self, account: &str, idempotency_key: &str) -> Result<(), ConnectError> {
        self.post("/oauth/deauthorize", &[("client_id", &self.client_id), ("stripe_user_id", account)], idempotency_key)
            .await
            .map(|_| ())
    }

    async fn account(&self, account: &str) -> Result<AccountDetails, ConnectError> {
        let id: String = form_urlencoded::byte_serialize(account.as_bytes()).collect();
        let request = hyper::Request::get(format!("{}/v1/accounts/{id}", self.api))
            .header("authorization", format!("Bearer {}", self.secret))
            .body(Full::new(Bytes::new()))
            .map_err(|e| ConnectError::Unavailable(e.to_string()))?;
        let json = self.send(request).await?;
        AccountDetails::from_stripe(&json)
            .ok_or_else(|| ConnectError::Unavailable("unexpected account response".into()))
    }
}

//! Errors in Stripe's wire shape: `{"error":{"type","code","message","param","decline_code"}}`
//! with Stripe's HTTP statuses, so client libraries map them exactly as they map Stripe's.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One API failure. Built through the constructors so each kind keeps Stripe's status.
/// Boxed so that `Result<_, ApiError>` stays one pointer wide on the happy path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}", .0.kind, .0.message)]
pub struct ApiError(Box<ErrorDetail>);

/// What an [`ApiError`] says.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    /// HTTP status Stripe uses for this failure.
    pub status: StatusCode,
    /// Stripe's `type`: `invalid_request_error`, `card_error`, `idempotency_error`, `api_error`.
    pub kind: &'static str,
    /// Stripe's machine-readable `code`, when it has one.
    pub code: Option<String>,
    /// Human-readable explanation.
    pub message: String,
    /// The request parameter at fault.
    pub param: Option<String>,
    /// For card errors, the issuer's reason.
    pub decline_code: Option<String>,
    /// Extra fields Stripe embeds (e.g. `payment_intent` on a card decline).
    pub extra: Vec<(&'static str, Value)>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorDetail {
            status,
            kind,
            code: None,
            message: message.into(),
            param: None,
            decline_code: None,
            extra: Vec::new(),
        }))
    }

    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404 `resource_missing` for the named parameter.
    pub fn missing(kind: &str, id: &str, param: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("No such {kind}: '{id}'"))
            .code("resource_missing")
            .param(param)
    }

    /// 401: no key, or a key Stripe does not know.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
    }

    /// 403 `account_invalid` style permission failure (unknown or revoked connected account).
    pub fn permission(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "invalid_request_error", message).code("account_invalid")
    }

    /// 402 `card_error`.
    pub fn card(code: &str, decline_code: Option<&str>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::PAYMENT_REQUIRED, "card_error", message).code(code);
        e.decline_code = decline_code.map(str::to_owned);
        e
    }

    /// 400 `idempotency_error`: the key was used with other parameters.
    pub fn idempotency(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "idempotency_error", message)
    }

    /// A transient server-side failure (500 `api_error`) or rate limit (429), injected by faults.
    pub fn transient(status: StatusCode) -> Self {
        if status == StatusCode::TOO_MANY_REQUESTS {
            Self::new(status, "invalid_request_error", "Too many requests hit the API too quickly.").code("rate_limit")
        } else {
            Self::new(status, "api_error", "An unexpected error occurred inside the simulator (injected fault).")
        }
    }

    /// 404 for a route that does not exist.
    pub fn unknown_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unrecognized request URL ({method}: {path})."),
        )
    }

    /// 405-free variant Stripe uses for a missing required parameter.
    pub fn param_missing(param: &str) -> Self {
        Self::invalid(format!("Missing required param: {param}.")).code("parameter_missing").param(param)
    }

    /// A parameter the endpoint does not accept.
    pub fn param_unknown(param: &str) -> Self {
        Self::invalid(format!("Received unknown parameter: {param}")).code("parameter_unknown").param(param)
    }

    /// Sets `code`.
    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// Sets `param`.
    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// Adds an extra field inside `error` (e.g. `payment_intent`).
    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra.push((key, value));
        self
    }

    /// The JSON body Stripe would send.
    pub fn body(&self) -> Value {
        let mut error = json!({ "type": self.kind, "message": self.message });
        let obj = error.as_object_mut().expect("literal object");
        if let Some(code) = &self.code {
            obj.insert("code".into(), json!(code));
            obj.insert(
                "doc_url".into(),
                json!(format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-"))),
            );
        }
        if let Some(param) = &self.param {
            obj.insert("param".into(), json!(param));
        }
        if let Some(decline) = &self.decline_code {
            obj.insert("decline_code".into(), json!(decline));
        }
        for (k, v) in &self.extra {
            obj.insert((*k).into(), v.clone());
        }
        json!({ "error": error })
    }
}

impl std::ops::Deref for ApiError {
    type Target = ErrorDetail;

    fn deref(&self) -> &ErrorDetail {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorDetail {
        &mut self.0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error() {
            // Stripe tells clients a retry may help; async-stripe honours this header.
            resp.headers_mut().insert("stripe-should-retry", "true".parse().expect("static"));
        }
        resp
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

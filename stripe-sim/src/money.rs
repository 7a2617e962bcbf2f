//! Amount and currency rules as Stripe applies them to PaymentIntents: integer minor units,
//! a per-currency minimum, a global maximum, lowercase ISO codes, zero-decimal currencies.

use crate::error::ApiError;
use serde_json::Value;

/// Stripe's largest accepted amount, in minor units (999,999.99 in a two-decimal currency).
pub const MAX_AMOUNT: i64 = 99_999_999;

/// Currencies the simulator accepts, with Stripe's minimum charge in minor units.
/// Stripe's table has more; these cover every currency callpay's clinics are expected to use.
const CURRENCIES: &[(&str, i64)] = &[
    ("aud", 50),
    ("bdt", 50),
    ("cad", 50),
    ("chf", 50),
    ("eur", 50),
    ("gbp", 30),
    ("hkd", 400),
    ("inr", 50),
    ("jpy", 50),
    ("krw", 700),
    ("nzd", 50),
    ("sgd", 50),
    ("usd", 50),
];

/// Currencies whose amounts have no minor unit (1 JPY is `amount=1`).
const ZERO_DECIMAL: &[&str] = &["jpy", "krw"];

/// Whether `currency` has no minor unit.
pub fn is_zero_decimal(currency: &str) -> bool {
    ZERO_DECIMAL.contains(&currency)
}

/// Formats minor units for messages and pages: `50.00 AUD`, `500 JPY`.
pub fn display(amount: i64, currency: &str) -> String {
    if is_zero_decimal(currency) {
        format!("{amount} {}", currency.to_uppercase())
    } else {
        format!("{}.{:02} {}", amount / 100, amount % 100, currency.to_uppercase())
    }
}

/// Validates a lowercase supported currency code.
pub fn currency(raw: Option<&Value>) -> Result<String, ApiError> {
    let raw = raw.and_then(Value::as_str).ok_or_else(|| ApiError::param_missing("currency"))?;
    if CURRENCIES.iter().any(|(c, _)| *c == raw) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(format!(
            "Invalid currency: {raw}. Currencies are lowercase three-letter ISO codes; supported here: {}.",
            CURRENCIES.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
        ))
        .param("currency"))
    }
}

/// Parses an integer parameter the way Stripe does (`12.5` or `abc` is `parameter_invalid_integer`).
pub fn integer(raw: &Value, param: &str) -> Result<i64, ApiError> {
    raw.as_str().and_then(|s| s.parse::<i64>().ok()).or_else(|| raw.as_i64()).ok_or_else(|| {
        ApiError::invalid(format!("Invalid integer: {}", raw.as_str().unwrap_or_default()))
            .code("parameter_invalid_integer")
            .param(param)
    })
}

/// Validates a PaymentIntent amount for `currency`.
pub fn amount(raw: Option<&Value>, currency: &str) -> Result<i64, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::param_missing("amount"))?;
    let amount = integer(raw, "amount")?;
    let min = CURRENCIES.iter().find(|(c, _)| *c == currency).map_or(50, |(_, m)| *m);
    if amount < min {
        return Err(ApiError::invalid(format!("Amount must be at least {}", display(min, currency)))
            .code("amount_too_small")
            .param("amount"));
    }
    if amount > MAX_AMOUNT {
        return Err(ApiError::invalid(format!("Amount must be no more than {}", display(MAX_AMOUNT, currency)))
            .code("amount_too_large")
            .param("amount"));
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amount_bounds_per_currency() {
        assert_eq!(amount(Some(&json!("50")), "aud").unwrap(), 50);
        assert_eq!(amount(Some(&json!("49")), "aud").unwrap_err().code.as_deref(), Some("amount_too_small"));
        assert_eq!(amount(Some(&json!("30")), "gbp").unwrap(), 30);
        assert_eq!(amount(Some(&json!("99999999")), "aud").unwrap(), MAX_AMOUNT);
        assert_eq!(amount(Some(&json!("100000000")), "aud").unwrap_err().code.as_deref(), Some("amount_too_large"));
        assert_eq!(amount(Some(&json!("12.5")), "aud").unwrap_err().code.as_deref(), Some("parameter_invalid_integer"));
        assert_eq!(amount(None, "aud").unwrap_err().code.as_deref(), Some("parameter_missing"));
    }

    #[test]
    fn currency_must_be_supported_lowercase() {
        assert_eq!(currency(Some(&json!("aud"))).unwrap(), "aud");
        assert_eq!(currency(Some(&json!("AUD"))).unwrap_err().param.as_deref(), Some("currency"));
        assert!(currency(Some(&json!("xyz"))).is_err());
        assert_eq!(display(5000, "aud"), "50.00 AUD");
        assert_eq!(display(500, "jpy"), "500 JPY");
    }
}

//! Checks on a clinician's `payment.request`, with the error code each failure gets.

use crate::config::PaymentsConfig;
use callpay_protocol::ErrorCode;

/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 200;
/// Longest `client_ref`.
pub const MAX_CLIENT_REF: usize = 64;
// A well-formed client_ref is kept whole in the audit log; only a malformed one is cut.
const _: () = assert!(MAX_CLIENT_REF <= crate::store::MAX_AUDIT_TARGET);

/// A rejected request: code and message for the `error` frame.
pub type Rejection = (ErrorCode, String);

/// Stripe's minimum charge per currency, in minor units. Below it Stripe refuses the intent,
/// so the hub refuses first with a clearer message.
fn stripe_minimum(currency: &str) -> i64 {
    match currency {
        "gbp" => 30,
        "hkd" => 400,
        "krw" => 700,
        _ => 50,
    }
}

/// Whether the currency has no minor unit.
pub fn zero_decimal(currency: &str) -> bool {
    matches!(currency, "jpy" | "krw")
}

/// `5000, "aud"` -> `50.00 AUD`.
pub fn display_amount(amount: i64, currency: &str) -> String {
    if zero_decimal(currency) {
        format!("{amount} {}", currency.to_uppercase())
    } else {
        // The sign once, in front: `/` and `%` keep it on both parts ("-1.-50").
        let sign = if amount < 0 { "-" } else { "" };
        let magnitude = amount.unsigned_abs();
        format!("{sign}{}.{:02} {}", magnitude / 100, magnitude % 100, currency.to_uppercase())
    }
}

/// Unicode's directional formatting characters: they can make a description shown to a patient
/// (and printed on a receipt) read differently from what was typed.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Whether `client_ref` is well formed: 1 to [`MAX_CLIENT_REF`] printable characters. Only such a
/// reference is ever echoed back or stored.
pub fn client_ref_ok(client_ref: &str) -> bool {
    !client_ref.is_empty() && client_ref.chars().count() <= MAX_CLIENT_REF && !client_ref.chars().any(char::is_control)
}

/// Validates a request; returns the description trimmed.
pub fn request(
    cfg: &PaymentsConfig,
    client_ref: &str,
    amount: i64,
    currency: &str,
    description: &str,
) -> Result<String, Rejection> {
    if !client_ref_ok(client_ref) {
        return Err((
            ErrorCode::InvalidClientRef,
            format!("client_ref must be 1 to {MAX_CLIENT_REF} printable characters."),
        ));
    }
    if !cfg.currencies.iter().any(|c| c == currency) {
        return Err((
            ErrorCode::InvalidCurrency,
            format!("Currency {currency:?} is not accepted here; use one of: {}.", cfg.currencies.join(", ")),
        ));
    }
    let min = stripe_minimum(currency);
    if amount < min {
        return Err((ErrorCode::InvalidAmount, format!("Amount must be at least {}.", display_amount(min, currency))));
    }
    if amount > cfg.max_amount {
        return Err((
            ErrorCode::InvalidAmount,
            format!("Amount must be no more than {}.", display_amount(cfg.max_amount, currency)),
        ));
    }
    let trimmed = description.trim();
    if trimmed.is_empty() || trimmed.chars().count() > MAX_DESCRIPTION {
        return Err((ErrorCode::InvalidDescription, format!("Description must be 1 to {MAX_DESCRIPTION} characters.")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err((ErrorCode::InvalidDescription, "Description must not contain control characters.".into()));
    }
    if trimmed.chars().any(is_bidi_control) {
        return Err((
            ErrorCode::InvalidDescription,
            "Description must not contain text-direction control characters.".into(),
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn negative_amounts_read_as_written() {
        // Found by the `amount` fuzz target (fuzz/artifacts/amount/crash-4a88…): a negative
        // amount in a refused request was written "-1.-50 AUD" into the audit record.
        assert_eq!(display_amount(-150, "aud"), "-1.50 AUD");
        assert_eq!(display_amount(-5, "aud"), "-0.05 AUD");
        assert_eq!(display_amount(i64::MIN, "aud"), "-92233720368547758.08 AUD");
        assert_eq!(display_amount(-500, "jpy"), "-500 JPY");
        assert_eq!(display_amount(5, "aud"), "0.05 AUD");
    }

    use super::*;

    fn cfg() -> PaymentsConfig {
        PaymentsConfig {
            currencies: vec!["aud".into(), "jpy".into()],
            max_amount: 1_000_000,
            ..PaymentsConfig::default()
        }
    }

    #[test]
    fn bounds_and_codes() {
        let ok = |a, c: &str, d: &str| request(&cfg(), "r1", a, c, d);
        assert_eq!(ok(50, "aud", "  Consult ").unwrap(), "Consult");
        assert_eq!(ok(1_000_000, "aud", "x").unwrap(), "x");
        assert_eq!(ok(49, "aud", "x").unwrap_err().0, ErrorCode::InvalidAmount);
        assert_eq!(ok(0, "aud", "x").unwrap_err().0, ErrorCode::InvalidAmount);
        assert_eq!(ok(-5, "aud", "x").unwrap_err().0, ErrorCode::InvalidAmount);
        assert_eq!(ok(1_000_001, "aud", "x").unwrap_err().0, ErrorCode::InvalidAmount);
        assert_eq!(ok(5000, "usd", "x").unwrap_err().0, ErrorCode::InvalidCurrency);
        assert_eq!(ok(5000, "AUD", "x").unwrap_err().0, ErrorCode::InvalidCurrency);
        assert_eq!(ok(5000, "aud", "   ").unwrap_err().0, ErrorCode::InvalidDescription);
        assert_eq!(ok(5000, "aud", &"x".repeat(201)).unwrap_err().0, ErrorCode::InvalidDescription);
        assert!(ok(5000, "aud", &"é".repeat(200)).is_ok(), "characters, not bytes");
        assert_eq!(ok(5000, "aud", "a\u{7}b").unwrap_err().0, ErrorCode::InvalidDescription);
        for bidi in ['\u{202E}', '\u{2066}', '\u{200F}', '\u{061C}'] {
            assert_eq!(ok(5000, "aud", &format!("a{bidi}b")).unwrap_err().0, ErrorCode::InvalidDescription);
        }
        assert_eq!(request(&cfg(), "", 5000, "aud", "x").unwrap_err().0, ErrorCode::InvalidClientRef);
        assert_eq!(request(&cfg(), &"r".repeat(65), 5000, "aud", "x").unwrap_err().0, ErrorCode::InvalidClientRef);
        assert_eq!(display_amount(5000, "aud"), "50.00 AUD");
        assert_eq!(display_amount(50, "jpy"), "50 JPY");
    }
}

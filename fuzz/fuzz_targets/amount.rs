//! Payment-request validation and amount display: whatever a clinician sends, validation never
//! panics, what it accepts is within the configured bounds, and every amount is shown as text
//! that reads back as the same number of minor units.
#![no_main]

use callpay::config::PaymentsConfig;
use callpay::payments::validate::{display_amount, request};
use libfuzzer_sys::fuzz_target;

/// Reads "12.34 AUD" / "-0.05 AUD" / "500 JPY" back into minor units.
fn read_back(shown: &str, zero_decimal: bool) -> i64 {
    let number = shown.split(' ').next().unwrap();
    let (negative, digits) = number.strip_prefix('-').map_or((false, number), |d| (true, d));
    let magnitude: i128 = if zero_decimal {
        digits.parse().unwrap()
    } else {
        let (units, cents) = digits.split_once('.').expect("a decimal point");
        assert_eq!(cents.len(), 2, "two decimals in {shown:?}");
        units.parse::<i128>().unwrap() * 100 + cents.parse::<i128>().unwrap()
    };
    i64::try_from(if negative { -magnitude } else { magnitude }).unwrap()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let amount = i64::from_le_bytes(data[..8].try_into().unwrap());
    let currency = if data[8] % 2 == 0 { "aud" } else { "jpy" };
    let Ok(rest) = std::str::from_utf8(&data[9..]) else { return };
    let (client_ref, description) = rest.split_once('|').unwrap_or(("ref", rest));
    assert_eq!(read_back(&display_amount(amount, currency), currency == "jpy"), amount);
    let cfg = PaymentsConfig::default();
    if let Ok(kept) = request(&cfg, client_ref, amount, currency, description) {
        assert!(amount > 0 && amount <= cfg.max_amount, "accepted {amount}");
        assert!(cfg.currencies.iter().any(|c| c == currency));
        assert!(!kept.is_empty() && kept == kept.trim(), "description {kept:?}");
        assert!(!kept.chars().any(char::is_control), "control characters kept");
    }
});

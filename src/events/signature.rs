//! The `Callpay-Signature` header, as Stripe signs its own webhooks: `t=<unix seconds>,
//! v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the endpoint's whole secret>`. Pure.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "Callpay-Signature";
/// What a generated secret starts with (so it is recognised in a config file or a leak scan).
pub const SECRET_PREFIX: &str = "whsec_";
/// How far from now a receiver should accept a signature's timestamp (documented for
/// receivers; every attempt is signed afresh, so a retry is never older than this).
pub const TOLERANCE_SECS: i64 = 300;

/// The hex HMAC of `<t>.<body>` under `secret`.
fn mac(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail.
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

/// The header value for `body` signed at `t` (Unix seconds).
pub fn header(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", mac(secret, t, body))
}

/// Whether `header` signs `body` under `secret` within [`TOLERANCE_SECS`] of `now` (what a
/// receiver does; callpay's own tests use an independent implementation).
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > TOLERANCE_SECS {
        return false;
    }
    let Ok(expected) = hex::decode(mac(secret, t, body)) else { return false };
    v1.iter().filter_map(|v| hex::decode(v).ok()).any(|given| {
        // Constant time: the comparison must not tell an attacker how much of a guess matched.
        given.len() == expected.len() && given.iter().zip(&expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

/// A new random secret: `whsec_` and 32 random bytes in hex.
pub fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_time() {
        let body = br#"{"id":"evt_1"}"#;
        let h = header("whsec_a", 1_000, body);
        assert!(h.starts_with("t=1000,v1="));
        assert!(verify("whsec_a", &h, body, 1_000));
        assert!(verify("whsec_a", &h, body, 1_000 + TOLERANCE_SECS));
        assert!(!verify("whsec_a", &h, body, 1_000 + TOLERANCE_SECS + 1), "too old");
        assert!(!verify("whsec_b", &h, body, 1_000), "another secret");
        assert!(!verify("whsec_a", &h, br#"{"id":"evt_2"}"#, 1_000), "another body");
        assert!(!verify("whsec_a", &h.replace("t=1000", "t=1001"), body, 1_000), "another time");
        assert!(!verify("whsec_a", "v1=00", body, 1_000), "no time");
        // The vector Python's `hmac.new(b"whsec_a", b'1000.{"id":"evt_1"}', sha256)` gives.
        assert_eq!(h, "t=1000,v1=c3777be251225f11e003d9665bbebec06c706e71968823d744acb17c37b1e79d");
        let s = new_secret();
        assert!(s.starts_with("whsec_") && s.len() == 6 + 64 && s != new_secret());
    }
}

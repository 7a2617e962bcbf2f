//! Pay-by-link tokens: `{payment_id}.{expires_at}.{signature}`, where the signature is an
//! HMAC-SHA256 over the payment id and the expiry (Unix seconds) with a server key. The token
//! names only callpay's opaque payment id: no name, amount, e-mail or call in clear. Pure: no
//! I/O, no clock (the caller compares the expiry with its own time).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What the signature covers besides the payment id and expiry: a token of another kind (or a
/// later version of this one) signed with the same key can never pass for a pay link.
const DOMAIN: &[u8] = b"callpay.paylink.v1";
/// Label for deriving the link key from the platform's shared secret.
const DERIVE_LABEL: &[u8] = b"callpay pay-link key v1";
/// Longest token accepted (a payment id is at most 64 characters): anything longer is refused
/// before any work is done on it.
const MAX_TOKEN: usize = 160;

/// The key links are signed with. Never printed.
#[derive(Clone)]
pub struct LinkKey(Vec<u8>);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey([redacted])")
    }
}

/// An authentic link: which payment, and until when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaim {
    /// callpay's payment id.
    pub payment_id: String,
    /// Unix seconds after which the link is expired.
    pub expires_at: i64,
}

/// A link that is not one of ours: malformed, or its signature does not match (altered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the link is not valid (altered or incomplete)")]
pub struct Tampered;

impl LinkKey {
    /// The key from `links.secret`, or (when that is empty) derived from the platform's HS256
    /// secret, so every instance sharing the platform secret signs alike. `None` when neither
    /// is available (EdDSA/RS256 platforms without `links.secret`): links are off.
    pub fn from_config(links: &crate::config::LinksConfig, auth: &crate::config::AuthConfig) -> Option<Self> {
        if !links.secret.is_empty() {
            return Some(Self(links.secret.expose().as_bytes().to_vec()));
        }
        if auth.algorithm == "HS256" && !auth.secret.is_empty() {
            let mut mac = HmacSha256::new_from_slice(auth.secret.expose().as_bytes()).expect("HMAC takes any key");
            mac.update(DERIVE_LABEL);
            return Some(Self(mac.finalize().into_bytes().to_vec()));
        }
        None
    }

    /// A key from raw bytes (tests).
    pub fn new(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    fn mac(&self, payment_id: &str, expires_at: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(DOMAIN);
        mac.update(b"|");
        mac.update(payment_id.as_bytes());
        mac.update(b"|");
        mac.update(expires_at.to_string().as_bytes());
        mac
    }

    /// The token for `payment_id`, valid until `expires_at` (Unix seconds).
    pub fn sign(&self, payment_id: &str, expires_at: i64) -> String {
        let sig = hex::encode(self.mac(payment_id, expires_at).finalize().into_bytes());
        format!("{payment_id}.{expires_at}.{sig}")
    }

    /// Checks a token's shape and signature (in constant time); the expiry is the caller's to
    /// compare with its clock.
    pub fn verify(&self, token: &str) -> Result<LinkClaim, Tampered> {
        if token.len() > MAX_TOKEN {
            return Err(Tampered);
        }
        let mut parts = token.rsplitn(3, '.');
        let (Some(sig), Some(exp), Some(payment_id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Tampered);
        };
        let id_ok = !payment_id.is_empty()
            && payment_id.len() <= 64
            && payment_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let expires_at: i64 = exp.parse().map_err(|_| Tampered)?;
        // The number must be written as the signer writes it ("+5" or "05" would parse too).
        if !id_ok || expires_at.to_string() != exp {
            return Err(Tampered);
        }
        let sig = hex::decode(sig).map_err(|_| Tampered)?;
        self.mac(payment_id, expires_at).verify_slice(&sig).map_err(|_| Tampered)?;
        Ok(LinkClaim { payment_id: payment_id.to_owned(), expires_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_link_verifies_and_any_change_is_refused() {
        let key = LinkKey::new(b"0123456789abcdef0123456789abcdef");
        let token = key.sign("pay_abc", 1_900_000_000);
        assert_eq!(key.verify(&token), Ok(LinkClaim { payment_id: "pay_abc".into(), expires_at: 1_900_000_000 }));
        // Another payment, a later expiry, a flipped signature digit, another key: refused.
        assert_eq!(key.verify(&token.replace("pay_abc", "pay_abd")), Err(Tampered));
        assert_eq!(key.verify(&token.replace("1900000000", "1900000001")), Err(Tampered));
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.verify(&String::from_utf8(flipped).unwrap()), Err(Tampered));
        assert_eq!(LinkKey::new(b"another key, another key, another").verify(&token), Err(Tampered));
        // Malformed ones.
        for bad in ["", "pay_abc", "pay_abc.1", "pay_abc.x.00", "pay abc.1.00", ".1.00", "pay_abc.+1900000000.00"] {
            assert_eq!(key.verify(bad), Err(Tampered), "{bad:?}");
        }
        assert_eq!(key.verify(&"a".repeat(10_000)), Err(Tampered));
    }

    #[test]
    fn the_key_comes_from_the_setting_or_the_platform_secret() {
        use crate::config::{AuthConfig, LinksConfig, Secret};
        let auth = AuthConfig { secret: Secret::new("platform-secret-platform-secret-xx"), ..AuthConfig::default() };
        let derived = LinkKey::from_config(&LinksConfig::default(), &auth).unwrap();
        let again = LinkKey::from_config(&LinksConfig::default(), &auth).unwrap();
        assert_eq!(derived.verify(&again.sign("pay_1", 5)).unwrap().payment_id, "pay_1", "same secret, same key");
        assert_ne!(derived.0, auth.secret.expose().as_bytes(), "not the platform secret itself");
        let own = LinksConfig { secret: Secret::new("links-secret-links-secret-links-sec"), ..LinksConfig::default() };
        assert!(LinkKey::from_config(&own, &auth).unwrap().verify(&derived.sign("pay_1", 5)).is_err());
        let eddsa = AuthConfig { algorithm: "EdDSA".into(), ..AuthConfig::default() };
        assert!(LinkKey::from_config(&LinksConfig::default(), &eddsa).is_none(), "no key: links are off");
        assert!(format!("{derived:?}").contains("redacted"));
    }
}

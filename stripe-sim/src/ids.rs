//! Object ids and secrets in Stripe's formats (`pi_…`, `ch_…`, `whsec_…`): a prefix and random
//! base62, long enough that tests never collide and a guessed id never names a real object.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `prefix_` followed by 24 random base62 characters.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_token(24))
}

/// Random base62 text of `len` characters.
pub fn random_token(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Seconds since the Unix epoch, the unit of every Stripe timestamp.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_prefix_and_are_unique() {
        let a = super::new_id("pi");
        let b = super::new_id("pi");
        assert!(a.starts_with("pi_") && a.len() == 27);
        assert_ne!(a, b);
    }
}

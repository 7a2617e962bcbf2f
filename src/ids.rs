//! Random identifiers for records the hub creates (payments, audit rows, OAuth states, nodes).

/// 20 random base62 characters: about 119 bits, enough that ids never collide and cannot be
/// guessed.
pub fn random_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..20).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

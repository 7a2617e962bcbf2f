//! `Stripe-Signature` parsing and webhook verification. The first input byte picks the mode:
//! an arbitrary header (never panics, never verifies), or a correctly signed arbitrary payload
//! (must never be refused as a bad signature, only as a bad payload at worst).
#![no_main]

use callpay::config::Secret;
use callpay::http::verify_event;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_fuzz_secret";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let secrets = [Secret::new("whsec_other"), Secret::new(SECRET)];
    if mode % 2 == 0 {
        let (header, payload) = text.split_once('\n').unwrap_or((text, "{}"));
        assert!(verify_event(payload, header, &secrets).is_err(), "an unsigned delivery verified");
    } else {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{t}.{text}").as_bytes());
        let header = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
        if let Err(e) = verify_event(text, &header, &secrets) {
            assert_eq!(e.code(), "bad_payload", "a correctly signed delivery was refused as {}", e.code());
        }
    }
});

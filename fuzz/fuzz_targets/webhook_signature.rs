//! `Stripe-Signature` parsing and webhook verification. The first input byte picks the mode:
//! an arbitrary header (never panics, never verifies), or a correctly signed arbitrary payload
//! (must never be refused as a bad signature, only as a bad payload at worst).
#![no_main]

use callpay::payments::event::{DeliveryError, verify};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_fuzz_secret";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let secrets = ["whsec_other", SECRET];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    if mode % 2 == 0 {
        let (header, payload) = text.split_once('\n').unwrap_or((text, "{}"));
        assert!(verify(payload, header, &secrets, now).is_err(), "an unsigned delivery verified");
    } else {
        let t = now;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{t}.{text}").as_bytes());
        let header = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
        if let Err(e) = verify(text, &header, &secrets, now) {
            assert!(matches!(e, DeliveryError::BadPayload(_)), "a correctly signed delivery was refused as {e:?}");
        }
    }
});

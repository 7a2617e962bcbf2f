//! Token validation. The first input byte picks the mode: arbitrary bytes as a token (never
//! panics, never verifies: it is not signed with the platform's secret), or arbitrary JSON
//! claims correctly signed (accepted only when every claim means what a join token must).
#![no_main]

use callpay::auth::{JOIN_TYP, LEEWAY_SECS, Verifier, now_secs, sign_hs256};
use callpay::config::{AuthConfig, Secret};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-platform-secret-at-least-32-bytes-long";
const CALL: &str = "call_fuzz";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let verifier = Verifier::new(&AuthConfig { secret: Secret::new(SECRET), ..AuthConfig::default() }).unwrap();
    if mode % 2 == 0 {
        assert!(verifier.join(text, CALL).is_err(), "an unsigned join token verified");
        assert!(verifier.admin(text).is_err(), "an unsigned admin token verified");
        return;
    }
    let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) else { return };
    let token = sign_hs256(SECRET, &claims);
    if let Ok(join) = verifier.join(&token, CALL) {
        assert_eq!(join.typ, JOIN_TYP);
        assert_eq!(join.call_id, CALL);
        assert!(join.exp + LEEWAY_SECS >= now_secs(), "expired token accepted");
        assert!(!join.sub.is_empty() && !join.clinic_id.is_empty(), "empty scope accepted");
    }
    if let Ok(admin) = verifier.admin(&token) {
        assert!(admin.exp + LEEWAY_SECS >= now_secs(), "expired admin token accepted");
        assert!(admin.org_id.as_deref() != Some(""), "empty organisation accepted");
        assert!(admin.clinic_ids.iter().all(|c| !c.is_empty()), "empty clinic accepted");
    }
});

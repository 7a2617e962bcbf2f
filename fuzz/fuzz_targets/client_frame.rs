//! The client-frame decoder: whatever a socket sends, decoding never panics, a refusal stays
//! short and only echoes a well-formed reference, and anything accepted re-encodes to itself.
#![no_main]

use callpay::payments::validate::client_ref_ok;
use callpay::ws::decode_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match decode_frame(text) {
        Ok(msg) => {
            let again = serde_json::to_string(&msg).expect("a decoded frame encodes");
            assert_eq!(decode_frame(&again).ok(), Some(msg), "round trip");
        }
        Err(refusal) => {
            assert!(refusal.message.len() < 400, "refusal of {} bytes", refusal.message.len());
            if let Some(r) = &refusal.reference {
                assert!(client_ref_ok(r), "echoed a malformed reference");
            }
        }
    }
});

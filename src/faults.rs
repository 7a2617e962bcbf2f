//! Fault points for tests that must stop a real process at one exact line, the way a crash or a
//! SIGKILL would land there. A point is armed by naming it in the `CALLPAY_FAULT` environment
//! variable of that process (`CALLPAY_FAULT=abort_after_commit`); unarmed, each point costs one
//! read of a value fixed at start-up. Production never sets the variable.

use std::sync::OnceLock;

/// The armed point's name, read once.
fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED.get_or_init(|| std::env::var("CALLPAY_FAULT").ok().filter(|v| !v.is_empty())).as_deref()
}

/// Ends the process at once, with no unwinding, no shutdown and no flushing of anything queued,
/// if `point` is the armed fault point.
pub fn crash_here(point: &str) {
    if armed() == Some(point) {
        eprintln!("fault point {point}: aborting the process");
        std::process::abort();
    }
}

/// Milliseconds added to this process's idea of the wall clock where the bus reads it, from
/// `CALLPAY_FAULT_CLOCK_SKEW_MS` (0 unless set): a node whose clock runs fast or slow.
pub fn clock_skew_ms() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| std::env::var("CALLPAY_FAULT_CLOCK_SKEW_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0))
}

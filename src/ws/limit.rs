//! Rate limiting of one connection's client frames: governor's GCRA token bucket (the
//! `server.rate_per_sec` / `server.rate_burst` quota) behind a wrapper that coalesces
//! refusals: a flooding client is told `rate_limited` at most once per [`NOTICE_WINDOW`] (one
//! reply per refused frame would itself overflow the outbound queue of a client that reads
//! promptly), and closed with 1008 only after [`FLOOD_WINDOWS`] windows in a row each had
//! refused frames. No I/O.

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// At most one `rate_limited` reply per this long.
pub const NOTICE_WINDOW: Duration = Duration::from_secs(1);
/// Windows in a row with refused frames before the connection is closed as abusive.
pub const FLOOD_WINDOWS: u32 = 10;

/// What to do with a client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allow,
    /// Drop it; `notify`: tell the client `rate_limited` (first refusal of a window).
    Refuse {
        /// Whether this refusal is the first of its window.
        notify: bool,
    },
    /// The flood went on: close the connection with 1008.
    Close,
}

/// One connection's limiter. Generic over the clock so tests can move time themselves.
pub struct RateLimit<C: Clock = DefaultClock> {
    bucket: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    /// When the current notice window started, and whether it refused anything yet.
    window: C::Instant,
    refused_in_window: bool,
    /// Consecutive windows with refusals.
    flood_windows: u32,
}

impl RateLimit {
    /// `per_sec` frames a second on average, bursts of `burst` (each at least 1).
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self::with_clock(per_sec, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    /// [`RateLimit::new`] on `clock`.
    pub fn with_clock(per_sec: u32, burst: u32, clock: C) -> Self {
        let per_sec = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_sec).allow_burst(burst);
        let window = clock.now();
        Self {
            bucket: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            window,
            refused_in_window: false,
            flood_windows: 0,
        }
    }

    /// The verdict on a frame arriving now.
    pub fn check(&mut self) -> Verdict {
        let now = self.clock.now();
        if Duration::from(now.duration_since(self.window)) >= NOTICE_WINDOW {
            self.flood_windows = if self.refused_in_window { self.flood_windows + 1 } else { 0 };
            self.window = now;
            self.refused_in_window = false;
        }
        if self.bucket.check().is_ok() {
            return Verdict::Allow;
        }
        if self.flood_windows >= FLOOD_WINDOWS {
            return Verdict::Close;
        }
        let notify = !self.refused_in_window;
        self.refused_in_window = true;
        Verdict::Refuse { notify }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn refusals_are_coalesced_per_window_and_a_long_flood_closes() {
        let clock = FakeRelativeClock::default();
        let mut r = RateLimit::with_clock(1, 1, clock.clone());
        assert_eq!(r.check(), Verdict::Allow);
        assert_eq!(r.check(), Verdict::Refuse { notify: true });
        assert_eq!(r.check(), Verdict::Refuse { notify: false }, "one notice per window");
        // Flooding every window: the tenth window in a row closes.
        let mut verdict = Verdict::Allow;
        for _ in 1..=FLOOD_WINDOWS + 1 {
            clock.advance(NOTICE_WINDOW);
            let _ = r.check(); // a token refilled each second
            verdict = r.check();
            if verdict == Verdict::Close {
                break;
            }
        }
        assert_eq!(verdict, Verdict::Close);
        // A quiet window forgives.
        let clock = FakeRelativeClock::default();
        let mut q = RateLimit::with_clock(1, 1, clock.clone());
        assert_eq!(q.check(), Verdict::Allow);
        assert_eq!(q.check(), Verdict::Refuse { notify: true });
        clock.advance(NOTICE_WINDOW * 2);
        assert_eq!(q.check(), Verdict::Allow);
        assert_eq!(q.flood_windows, 1);
        clock.advance(NOTICE_WINDOW * 2);
        assert_eq!(q.check(), Verdict::Allow);
        assert_eq!(q.flood_windows, 0);
    }

    #[test]
    fn rate_limit_allows_a_burst_then_refuses() {
        let clock = FakeRelativeClock::default();
        let mut r = RateLimit::with_clock(1, 3, clock);
        for _ in 0..3 {
            assert_eq!(r.check(), Verdict::Allow);
        }
        assert!(matches!(r.check(), Verdict::Refuse { .. }));
    }
}

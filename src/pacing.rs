//! Pacing joins when many arrive at once (a drained node's clients, a deploy, a network blip):
//! a drained node tells its clients to spread their reconnects over a window it chooses from
//! its own load, and a node sheds joins past what its store can serve with a time to retry,
//! rather than queueing them into the pool's time-outs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Shortest and longest reconnect spread a draining node asks for.
const SPREAD_MIN: Duration = Duration::from_millis(250);
const SPREAD_MAX: Duration = Duration::from_secs(30);
/// Shortest retry a shed join is told; more joins waiting means a longer one.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Over how long a draining node holding `sockets` asks them to reconnect, so the rest of the
/// fleet takes them at about `per_sec` joins a second.
pub fn reconnect_spread(sockets: usize, per_sec: u64) -> Duration {
    let ms = (sockets as u64).saturating_mul(1000) / per_sec.max(1);
    Duration::from_millis(ms).clamp(SPREAD_MIN, SPREAD_MAX)
}

/// The close reason of a drain: the spread, in words a client also parses.
pub fn restarting_reason(spread: Duration) -> String {
    format!("hub node stopping; reconnect within {} ms", spread.as_millis())
}

/// The close reason of a shed join.
pub fn busy_reason(retry: Duration) -> String {
    format!("hub busy admitting joins; retry in {} ms", retry.as_millis())
}

/// Joins in progress (from the upgrade until `welcome` is sent), bounded.
#[derive(Debug)]
pub struct JoinGate {
    in_flight: Arc<AtomicUsize>,
    max: usize,
    /// Joins admitted and shed in the current second, and the rate admitted in the last one:
    /// a shed join is told to come back after the time the node needs, at the rate it has been
    /// admitting, for the joins shed before it this second.
    window: std::sync::Mutex<Window>,
}

/// One second's count of the gate.
#[derive(Debug)]
struct Window {
    started: std::time::Instant,
    admitted: u64,
    shed: u64,
    /// Joins admitted in the last whole second (0 before there was one).
    last_rate: u64,
}

impl Window {
    fn roll(&mut self) {
        let elapsed = self.started.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.last_rate = if elapsed < Duration::from_secs(2) { self.admitted } else { 0 };
            *self = Window { started: std::time::Instant::now(), admitted: 0, shed: 0, last_rate: self.last_rate };
        }
    }
}

/// One join's place at the gate, given back when dropped.
#[derive(Debug)]
pub struct JoinSlot(Arc<AtomicUsize>);

impl Drop for JoinSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl JoinGate {
    /// A gate admitting `max` joins at once (at least one).
    pub fn new(max: usize) -> Self {
        let window = Window { started: std::time::Instant::now(), admitted: 0, shed: 0, last_rate: 0 };
        Self { in_flight: Arc::default(), max: max.max(1), window: std::sync::Mutex::new(window) }
    }

    /// A place for one more join, or how long the join should wait before trying again: the
    /// time the node needs, at the rate it admitted joins in the last second (at least `max` a
    /// second), for the joins shed before this one this second; so a storm's shed joins come
    /// back spread over that time rather than together.
    pub fn enter(&self) -> Result<JoinSlot, Duration> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.roll();
        if now > self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            window.shed += 1;
            let rate = window.last_rate.max(self.max as u64);
            let ms = window.shed.saturating_mul(1000) / rate;
            return Err(Duration::from_millis(ms).clamp(RETRY_MIN, RETRY_MAX));
        }
        window.admitted += 1;
        Ok(JoinSlot(self.in_flight.clone()))
    }

    /// Joins in progress now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bigger_node_spreads_its_reconnects_wider_within_bounds() {
        assert_eq!(reconnect_spread(20_000, 4_000), Duration::from_secs(5));
        assert_eq!(reconnect_spread(10, 4_000), SPREAD_MIN, "a handful reconnect almost at once");
        assert_eq!(reconnect_spread(1_000_000, 4_000), SPREAD_MAX);
        assert_eq!(reconnect_spread(100, 0), Duration::from_millis(30_000).min(SPREAD_MAX), "no division by zero");
        assert_eq!(restarting_reason(Duration::from_millis(5000)), "hub node stopping; reconnect within 5000 ms");
        assert!(restarting_reason(SPREAD_MAX).len() <= 123, "fits a close frame");
        assert!(busy_reason(RETRY_MAX).len() <= 123);
    }

    #[test]
    fn the_gate_admits_its_max_and_tells_the_rest_when_to_retry() {
        let gate = JoinGate::new(2);
        let a = gate.enter().unwrap();
        let b = gate.enter().unwrap();
        let retry = gate.enter().unwrap_err();
        assert!(retry >= RETRY_MIN && retry <= RETRY_MAX, "{retry:?}");
        // The more are turned away, the later each later one is told to come back: 11 shed at
        // 2 a second (no whole second admitted yet) wait 5.5 s.
        let later = (0..10).map(|_| gate.enter().unwrap_err()).last().unwrap();
        assert!(later > retry, "{later:?} after {retry:?}");
        assert_eq!(later, Duration::from_millis(11 * 1000 / 2));
        assert_eq!(gate.in_flight(), 2, "a refused join holds no place");
        drop(a);
        let c = gate.enter().expect("a place came free");
        drop((b, c));
        assert_eq!(gate.in_flight(), 0);
    }
}

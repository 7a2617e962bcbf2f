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
    /// Joins shed in the current second (when it began, how many): the retry grows with them,
    /// so a storm's shed joins come back spread over the time the node needs for them.
    shed: std::sync::Mutex<(std::time::Instant, u64)>,
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
        Self { in_flight: Arc::default(), max: max.max(1), shed: std::sync::Mutex::new((std::time::Instant::now(), 0)) }
    }

    /// A place for one more join, or how long the join should wait before trying again: the
    /// longer the more joins were turned away this second (as if the node admitted `max` a
    /// second), so those of a storm come back spread out rather than together.
    pub fn enter(&self) -> Result<JoinSlot, Duration> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if now > self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let waiting = {
                let mut shed = self.shed.lock().unwrap_or_else(|p| p.into_inner());
                if shed.0.elapsed() >= Duration::from_secs(1) {
                    *shed = (std::time::Instant::now(), 0);
                }
                shed.1 += 1;
                shed.1
            };
            let ms = (self.max as u64 + waiting).saturating_mul(1000) / self.max as u64;
            return Err(Duration::from_millis(ms).clamp(RETRY_MIN, RETRY_MAX));
        }
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
        // The more are turned away, the later each later one is told to come back.
        let later = (0..10).map(|_| gate.enter().unwrap_err()).last().unwrap();
        assert!(later > retry, "{later:?} after {retry:?}");
        assert_eq!(later, RETRY_MAX.min(Duration::from_millis((2 + 11) * 1000 / 2)));
        assert_eq!(gate.in_flight(), 2, "a refused join holds no place");
        drop(a);
        let c = gate.enter().expect("a place came free");
        drop((b, c));
        assert_eq!(gate.in_flight(), 0);
    }
}

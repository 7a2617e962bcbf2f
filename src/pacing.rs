//! Pacing joins when many arrive at once (a drained node's clients, a deploy, a network blip):
//! a drained node tells its clients to spread their reconnects over a window it chooses from
//! its own load, and a node sheds joins past what its store can serve with a time to retry,
//! rather than queueing them into the pool's time-outs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Shortest and longest reconnect spread a draining node asks for.
const SPREAD_MIN: Duration = Duration::from_millis(250);
const SPREAD_MAX: Duration = Duration::from_secs(30);
/// Shortest retry a shed join is told; more joins waiting means a longer one.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// (A place later than this is told this and turned away again when it comes back: with the
/// client's jitter bounded to half a second, a lower cap brought every later place back at
/// once. The SDK honours up to a minute.)
const RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// The joins told to come back, and the rate this node admits: each shed join is given the
    /// next place in one queue that drains at that rate, so a storm's shed joins come back
    /// paced, in the order they were shed, however many seconds the storm lasts.
    queue: std::sync::Mutex<Queue>,
}

/// The gate's count of joins admitted per second and of joins owed a place.
#[derive(Debug)]
struct Queue {
    /// Start of the current second and the joins admitted in it.
    second: Instant,
    admitted: u64,
    /// Joins admitted in the last whole second (0 before there was one).
    last_rate: u64,
    /// Shed joins told to come back that are not yet due, as of `drained_at`.
    owed: f64,
    drained_at: Instant,
}

impl Queue {
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.second);
        if elapsed >= Duration::from_secs(1) {
            self.last_rate = if elapsed < Duration::from_secs(2) { self.admitted } else { 0 };
            (self.second, self.admitted) = (now, 0);
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
        let now = Instant::now();
        let queue = Queue { second: now, admitted: 0, last_rate: 0, owed: 0.0, drained_at: now };
        Self { in_flight: Arc::default(), max: max.max(1), queue: std::sync::Mutex::new(queue) }
    }

    /// A place for one more join, or how long the join should wait before trying again: its
    /// place in the queue of joins shed before it, at the rate the node admitted joins in the
    /// last second (at least `max` a second).
    pub fn enter(&self) -> Result<JoinSlot, Duration> {
        self.enter_at(Instant::now())
    }

    fn enter_at(&self, now: Instant) -> Result<JoinSlot, Duration> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.roll(now);
        let rate = q.last_rate.max(self.max as u64) as f64;
        // The places that came due since the last count: the queue drains at the current rate
        // (a rate measured later re-times the joins still owed, rather than keeping the times
        // a first, low estimate gave them).
        let drained = now.saturating_duration_since(q.drained_at).as_secs_f64() * rate;
        (q.owed, q.drained_at) = ((q.owed - drained).max(0.0), now);
        if in_flight > self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            q.owed += 1.0;
            let wait = Duration::from_secs_f64(q.owed / rate);
            return Err(wait.clamp(RETRY_MIN, RETRY_MAX));
        }
        q.admitted += 1;
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
        let t0 = Instant::now();
        let a = gate.enter_at(t0).unwrap();
        let b = gate.enter_at(t0).unwrap();
        let retry = gate.enter_at(t0).unwrap_err();
        assert!(retry >= RETRY_MIN && retry <= RETRY_MAX, "{retry:?}");
        // The more are turned away, the later each later one is told to come back: 11 shed at
        // 2 a second (no whole second admitted yet) wait 5.5 s.
        let later = (0..10).map(|_| gate.enter_at(t0).unwrap_err()).last().unwrap();
        assert!(later > retry, "{later:?} after {retry:?}");
        assert_eq!(later, Duration::from_millis(11 * 1000 / 2));
        assert_eq!(gate.in_flight(), 2, "a refused join holds no place");
        drop(a);
        let c = gate.enter().expect("a place came free");
        drop((b, c));
        assert_eq!(gate.in_flight(), 0);
    }

    /// A storm lasting several seconds: the joins shed in one second are still owed their
    /// places in the next, so a join shed just after a second boundary is not told to come
    /// back at once, ahead of (and together with) those shed before it.
    #[test]
    fn shed_joins_keep_their_place_in_line_across_seconds() {
        let gate = JoinGate::new(1);
        let t0 = Instant::now();
        let _held = gate.enter_at(t0).unwrap();
        // 100 shed at once, at the floor rate of 1 a second: the last waits its 100 places
        // (clamped to the longest retry).
        let waits: Vec<Duration> = (0..100).map(|_| gate.enter_at(t0).unwrap_err()).collect();
        assert_eq!(waits[3], Duration::from_secs(4));
        assert_eq!(waits[99], RETRY_MAX);
        // 1.5 s later (a new second): 1.5 places came due, 98.5 are still owed, so the next
        // join shed waits behind them.
        let later = gate.enter_at(t0 + Duration::from_millis(1500)).unwrap_err();
        assert_eq!(later, RETRY_MAX, "told {later:?}: ahead of the joins shed before it");
        // Once the line has drained, a shed join waits only the shortest retry.
        let drained = gate.enter_at(t0 + Duration::from_secs(200)).unwrap_err();
        assert_eq!(drained, Duration::from_secs(1), "its own place only, at 1 a second");
    }

    /// The rate the node admitted in its last whole second re-times the line: at 1,000
    /// admitted a second, 500 owed places take half a second.
    #[test]
    fn the_line_drains_at_the_rate_the_node_admits() {
        let gate = JoinGate::new(1);
        let t0 = Instant::now();
        for i in 0..1000 {
            drop(gate.enter_at(t0 + Duration::from_micros(i)).unwrap());
        }
        let t1 = t0 + Duration::from_millis(1001);
        let _held = gate.enter_at(t1).unwrap();
        let waits: Vec<Duration> = (0..2000).map(|_| gate.enter_at(t1).unwrap_err()).collect();
        assert_eq!(waits[499], RETRY_MIN, "500 places at 1,000 a second: half a second");
        assert_eq!(waits[1999], Duration::from_secs(2));
    }
}

//! Pacing joins when many arrive at once (a drained node's clients, a deploy, a network blip):
//! a drained node tells its clients to spread their reconnects over a window it chooses from
//! its own load, and a node sheds joins past what its store can serve with a time to retry,
//! rather than queueing them into the pool's time-outs. A shed join is given a ticket for its
//! place in line; back with it when its time has come, it goes ahead of joins that have not
//! waited, on whichever node of the deployment it reaches. The same gate, without tickets,
//! bounds a node's payment commands (requests and cancels) in flight. With other nodes to take
//! its clients, a draining node lets them go a wave at a time at a rate it adjusts from the
//! fleet's turned-away joins ([`drain`]).

pub mod drain;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Shortest and longest reconnect spread a draining node asks for.
const SPREAD_MIN: Duration = Duration::from_millis(250);
const SPREAD_MAX: Duration = Duration::from_secs(30);
/// Shortest retry told to a join back with its ticket that still found no place: it is given a
/// place in a front line, ahead of every join without a ticket (a place at the end of the line
/// was what sent a drain's slowest clients round two or three times).
const RETRY_FRONT: Duration = Duration::from_millis(250);
/// How early a ticket may come back (the SDK comes back within half a second either side of
/// its time; the rest is for clocks of the deployment's machines that differ a little).
const EARLY_MS: u64 = 1_000;
/// How long after its time a ticket is still honoured: longer than any retry the SDK waits.
const VALID_MS: u64 = 90_000;
/// What a ticket's signature covers besides its contents, so that no other token signed with
/// the same key can pass for one.
const TICKET_DOMAIN: &[u8] = b"callpay.join-ticket.v1";
/// Label for deriving the ticket key from the deployment's shared secret.
const TICKET_LABEL: &[u8] = b"callpay join-ticket key v1";
/// The line is timed at this many times the best rate measured. While a storm's fresh joins
/// keep arriving, the node spends much of its time answering their handshakes (and shedding
/// them), and admits about half what it admits once they stop: 600-1,000 a second per instance
/// during a drain behind nginx here, 1,250-1,600 after (README, "A drained node's clients").
/// Places timed at the storm's own rate left the nodes idle at its end while the last clients
/// waited out places of 7-10 s; a join that comes back too early costs one handshake and gets a
/// front-line place, spread at the node's rate.
const AFTER_STORM: f64 = 2.0;
/// How much of the best rate of the last seconds is kept from one second to the next.
const BEST_RATE_KEPT: f64 = 0.98;
/// Shortest retry a shed join is told; more joins waiting means a longer one.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// (A place later than this is told this; with the client's jitter bounded to half a second, a
/// lower cap brought every later place back at once. Such joins come back with their tickets
/// ahead of places told before them: a line longer than this at the node's rate is past what
/// pacing can order. The SDK honours up to a minute.)
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

/// The close reason of a shed join: when to retry, and the ticket to come back with.
pub fn busy_reason(retry: Duration, ticket: &str) -> String {
    format!("hub busy admitting joins; retry in {} ms; ticket {ticket}", retry.as_millis())
}

/// Signs and checks join tickets: `{due}.{signature}`, where `due` is the Unix time (ms) from
/// which the ticket's join is due and the signature is a truncated HMAC-SHA256 over it, the call
/// and the participant. Every node of a deployment derives the same key, so a join shed by one
/// node keeps its place on the node the balancer sends it to next. A forged or altered ticket
/// only costs its join the priority, so 64 bits of signature are plenty.
pub struct TicketKey(Vec<u8>);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey([redacted])")
    }
}

impl TicketKey {
    /// The key derived from a secret every node of the deployment shares.
    pub fn derive(shared_secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(shared_secret).expect("HMAC takes any key length");
        mac.update(TICKET_LABEL);
        Self(mac.finalize().into_bytes().to_vec())
    }

    fn mac(&self, call_id: &str, sub: &str, due_ms: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        // Lengths first, so that no call id and participant run together into another pair.
        for part in [TICKET_DOMAIN, call_id.as_bytes(), sub.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&due_ms.to_be_bytes());
        mac
    }

    /// A ticket for participant `sub` of `call_id`, due at `due_ms` (Unix ms).
    pub fn issue(&self, call_id: &str, sub: &str, due_ms: u64) -> String {
        let signature = self.mac(call_id, sub, due_ms).finalize().into_bytes();
        format!("{due_ms}.{}", hex::encode(&signature[..8]))
    }

    /// Whether `ticket` is one this deployment gave `sub` of `call_id` and it is due at `now_ms`
    /// (no more than [`EARLY_MS`] early, no more than [`VALID_MS`] late).
    pub fn honours(&self, ticket: &str, call_id: &str, sub: &str, now_ms: u64) -> bool {
        let Some((due, signature)) = ticket.split_once('.') else { return false };
        let (Ok(due_ms), Ok(signature)) = (due.parse::<u64>(), hex::decode(signature)) else { return false };
        let timely = now_ms.saturating_add(EARLY_MS) >= due_ms && now_ms <= due_ms.saturating_add(VALID_MS);
        timely && signature.len() == 8 && self.mac(call_id, sub, due_ms).verify_truncated_left(&signature).is_ok()
    }
}

/// Work in progress on the store, bounded: joins (from the upgrade until `welcome` is sent) or
/// payment commands (from the frame until its answer).
#[derive(Debug)]
pub struct Gate {
    in_flight: Arc<AtomicUsize>,
    max: usize,
    /// Places kept for ticket holders while a line is waiting (see [`Gate::enter`]).
    kept: usize,
    /// The line is timed at this many times the best rate measured ([`AFTER_STORM`] for joins).
    pace: f64,
    /// The joins (or commands) told to come back, and the rate this node admits them: each
    /// one shed is given the next place in a line that drains at that rate (a ticket holder
    /// that found no place, in a front line served first), so a storm's shed joins come back
    /// paced, in the order they were shed, however many seconds the storm lasts.
    queue: std::sync::Mutex<Queue>,
}

/// The gate's count of joins (or commands) admitted per second and of those owed a place.
#[derive(Debug)]
struct Queue {
    /// Start of the current second and the joins admitted in it.
    second: Instant,
    admitted: u64,
    /// The best of the last seconds' rates, fading by a fiftieth a second (a storm's best second
    /// still counts while the storm lasts; one a minute old counts for 30 %): what the node
    /// can admit. A second's count is the lesser of that and the joins that came, so after a storm's
    /// fresh joins end (only the line's, arriving at their times) the last second alone would
    /// time new places at a fraction of what the node admits, and its last clients came back
    /// seconds after it had gone quiet.
    best_rate: f64,
    /// Joins back with their tickets that found no place and were told to come back, not yet
    /// due, as of `drained_at`: the front line, served before `owed`.
    front: f64,
    /// Shed joins told to come back that are not yet due, as of `drained_at`.
    owed: f64,
    drained_at: Instant,
}

impl Queue {
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.second);
        if elapsed >= Duration::from_secs(1) {
            // The second just ended (none counts after a gap of whole seconds without joins).
            let last_rate = if elapsed < Duration::from_secs(2) { self.admitted } else { 0 };
            let faded = self.best_rate * BEST_RATE_KEPT.powi(elapsed.as_secs().min(10_000) as i32);
            self.best_rate = faded.max(last_rate as f64);
            (self.second, self.admitted) = (now, 0);
        }
    }

    /// Takes off the places that came due since the last count, the front line's first, at
    /// `rate` (a rate measured later re-times the joins still owed, rather than keeping the times
    /// a first, low estimate gave them).
    fn drain(&mut self, now: Instant, rate: f64) {
        let due = now.saturating_duration_since(self.drained_at).as_secs_f64() * rate;
        let from_front = due.min(self.front);
        self.front -= from_front;
        self.owed = (self.owed - (due - from_front)).max(0.0);
        self.drained_at = now;
    }

    /// Whether joins told to come back are still owed places: a line is waiting.
    fn waiting(&self) -> bool {
        self.front + self.owed >= 1.0
    }
}

/// One place at a [`Gate`], given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// A gate admitting `max` joins at once (at least one), its line timed at [`AFTER_STORM`]
    /// times the best rate, with a quarter of its places kept for ticket holders while a line
    /// is waiting.
    pub fn for_joins(max: usize) -> Self {
        let max = max.max(1);
        Self::with(max, max / 4, AFTER_STORM)
    }

    /// A gate admitting `max` payment commands at once (at least one). Commands have no
    /// tickets (a command sent again is simply the same command), so no place is kept. The
    /// line is timed at [`AFTER_STORM`] times the best rate, as for joins: the gate measures
    /// what it admits, and once a burst is over it admits only the line's returns, at the
    /// times it gave; timed at that rate itself, the line would never learn that the node
    /// could go faster (it would stay at the floor of `max` a second). A command back too
    /// early costs one small `busy` frame.
    pub fn for_commands(max: usize) -> Self {
        Self::with(max.max(1), 0, AFTER_STORM)
    }

    fn with(max: usize, kept: usize, pace: f64) -> Self {
        let now = Instant::now();
        let queue = Queue { second: now, admitted: 0, best_rate: 0.0, front: 0.0, owed: 0.0, drained_at: now };
        Self { in_flight: Arc::default(), max, kept, pace, queue: std::sync::Mutex::new(queue) }
    }

    /// A place for one more join or command, or how long it should wait before trying again:
    /// its place in the queue of those shed before it, at the gate's pace times the best rate
    /// the node admitted in the last seconds (at least `max` a second). `ticketed`: a join came
    /// back with a ticket that is due ([`TicketKey::honours`]), so it goes ahead of joins that
    /// have not waited.
    pub fn enter(&self, ticketed: bool) -> Result<Slot, Duration> {
        self.enter_at(Instant::now(), ticketed)
    }

    fn enter_at(&self, now: Instant, ticketed: bool) -> Result<Slot, Duration> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.roll(now);
        let rate = (self.pace * q.best_rate).max(self.max as f64);
        q.drain(now, rate);
        // While a line is waiting, a join gate keeps a quarter of its places (rounded down)
        // for the joins that come back with their tickets, so joins arriving fresh (a drain's
        // spread goes on) do not take every place that comes free and send the line's joins
        // round again. A command gate keeps none: commands have no tickets.
        let limit = if ticketed || !q.waiting() { self.max } else { self.max - self.kept };
        if in_flight > limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if ticketed {
                // A place in the front line: ahead of every join without a ticket, and spread
                // at the node's rate among the others that found no place, so that they do not
                // all come back together a quarter of a second later.
                q.front += 1.0;
                return Err(Duration::from_secs_f64(q.front / rate).clamp(RETRY_FRONT, RETRY_MAX));
            }
            q.owed += 1.0;
            let wait = Duration::from_secs_f64((q.front + q.owed) / rate);
            return Err(wait.clamp(RETRY_MIN, RETRY_MAX));
        }
        q.admitted += 1;
        Ok(Slot(self.in_flight.clone()))
    }

    /// Places in the front line and the line not yet due at `now`.
    #[cfg(test)]
    fn owed_at(&self, now: Instant) -> (f64, f64) {
        let mut q = self.queue.lock().unwrap();
        let rate = (self.pace * q.best_rate).max(self.max as f64);
        q.drain(now, rate);
        (q.front, q.owed)
    }

    /// Joins or commands in progress now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admits `n` joins one after the other from `from`, a microsecond apart.
    fn admit(gate: &Gate, from: Instant, n: u64) {
        for i in 0..n {
            drop(gate.enter_at(from + Duration::from_micros(i), false).unwrap());
        }
    }

    #[test]
    fn a_bigger_node_spreads_its_reconnects_wider_within_bounds() {
        assert_eq!(reconnect_spread(20_000, 4_000), Duration::from_secs(5));
        assert_eq!(reconnect_spread(10, 4_000), SPREAD_MIN, "a handful reconnect almost at once");
        assert_eq!(reconnect_spread(1_000_000, 4_000), SPREAD_MAX);
        assert_eq!(reconnect_spread(100, 0), Duration::from_millis(30_000).min(SPREAD_MAX), "no division by zero");
        assert_eq!(restarting_reason(Duration::from_millis(5000)), "hub node stopping; reconnect within 5000 ms");
        assert!(restarting_reason(SPREAD_MAX).len() <= 123, "fits a close frame");
    }

    #[test]
    fn the_gate_admits_its_max_and_tells_the_rest_when_to_retry() {
        let gate = Gate::for_joins(2);
        let t0 = Instant::now();
        let a = gate.enter_at(t0, false).unwrap();
        let b = gate.enter_at(t0, false).unwrap();
        let retry = gate.enter_at(t0, false).unwrap_err();
        assert!(retry >= RETRY_MIN && retry <= RETRY_MAX, "{retry:?}");
        // The more are turned away, the later each later one is told to come back: 11 shed at
        // 2 a second (no whole second admitted yet) wait 5.5 s.
        let later = (0..10).map(|_| gate.enter_at(t0, false).unwrap_err()).last().unwrap();
        assert!(later > retry, "{later:?} after {retry:?}");
        assert_eq!(later, Duration::from_millis(11 * 1000 / 2));
        assert_eq!(gate.in_flight(), 2, "a refused join holds no place");
        drop(a);
        let c = gate.enter(false).expect("a place came free");
        drop((b, c));
        assert_eq!(gate.in_flight(), 0);
    }

    /// A storm lasting several seconds: the joins shed in one second are still owed their
    /// places in the next, so a join shed just after a second boundary is not told to come
    /// back at once, ahead of (and together with) those shed before it.
    #[test]
    fn shed_joins_keep_their_place_in_line_across_seconds() {
        let gate = Gate::for_joins(1);
        let t0 = Instant::now();
        let _held = gate.enter_at(t0, false).unwrap();
        // 100 shed at once, at the floor rate of 1 a second: the last waits its 100 places
        // (clamped to the longest retry).
        let waits: Vec<Duration> = (0..100).map(|_| gate.enter_at(t0, false).unwrap_err()).collect();
        assert_eq!(waits[3], Duration::from_secs(4));
        assert_eq!(waits[99], RETRY_MAX);
        // 1.5 s later (a new second, one join admitted in the first: the line is timed at two
        // a second): 3 places came due, 97 are still owed, so the next join shed waits behind
        // them.
        let later = gate.enter_at(t0 + Duration::from_millis(1500), false).unwrap_err();
        assert_eq!(later, RETRY_MAX, "told {later:?}: ahead of the joins shed before it");
        // Once the line has drained, a shed join waits only its own place.
        let drained = gate.enter_at(t0 + Duration::from_secs(200), false).unwrap_err();
        assert_eq!(drained, Duration::from_secs(1), "its own place only, at 1 a second");
    }

    /// A join that comes back with its ticket when its time has come is admitted ahead of
    /// joins that have not waited: while the line is not empty, a quarter of the places are
    /// kept for ticket holders; and a ticket holder that still finds no place gets a place in
    /// a front line, ahead of every join without a ticket, rather than at the end of the line.
    #[test]
    fn a_join_back_with_its_ticket_goes_ahead_of_joins_that_have_not_waited() {
        let gate = Gate::for_joins(4);
        let t0 = Instant::now();
        let held: Vec<Slot> = (0..4).map(|_| gate.enter_at(t0, false).unwrap()).collect();
        let first_wait = gate.enter_at(t0, false).unwrap_err();
        assert!(first_wait >= RETRY_MIN, "{first_wait:?}");
        drop(held);
        // Three places are in use again; the line is not empty (its join is not due yet).
        let _three: Vec<Slot> = (0..3).map(|_| gate.enter_at(t0, false).unwrap()).collect();
        let newcomer = gate.enter_at(t0, false);
        assert!(newcomer.is_err(), "the fourth place is kept for the join that waited");
        let back = gate.enter_at(t0, true).expect("the ticket holder takes the kept place");
        assert_eq!(gate.owed_at(t0), (0.0, 2.0), "two joins without tickets are owed places");
        // Full: ticket holders get places in a front line, spread at the node's rate (4 a
        // second), ahead of the line; a join without a ticket waits behind both.
        assert_eq!(gate.enter_at(t0, true).unwrap_err(), RETRY_FRONT, "first in the front line");
        assert_eq!(gate.enter_at(t0, true).unwrap_err(), Duration::from_millis(500), "second in it");
        assert_eq!(gate.owed_at(t0), (2.0, 2.0), "the line did not grow for them");
        assert_eq!(
            gate.enter_at(t0, false).unwrap_err(),
            Duration::from_millis(1250),
            "the fifth place: behind the front line"
        );
        // The front line is served first: after a quarter of a second, one of its places.
        assert_eq!(gate.owed_at(t0 + Duration::from_millis(250)), (1.0, 3.0));
        drop(back);
        // Once the lines have drained, newcomers have every place again.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(gate.owed_at(later), (0.0, 0.0));
        let _fourth = gate.enter_at(later, false).expect("no line: no place is kept");
    }

    #[test]
    fn a_ticket_is_honoured_only_for_its_call_and_participant_from_its_time_until_it_expires() {
        let key = TicketKey::derive(b"a platform secret of thirty-two bytes!");
        let due = 1_700_000_000_000;
        let ticket = key.issue("call-1", "pat-1", due);
        assert!(ticket.len() <= 40, "{ticket}");
        assert!(busy_reason(RETRY_MAX, &ticket).len() <= 123, "fits a close frame");
        assert!(key.honours(&ticket, "call-1", "pat-1", due));
        assert!(key.honours(&ticket, "call-1", "pat-1", due - EARLY_MS), "the SDK's jitter may bring it early");
        assert!(!key.honours(&ticket, "call-1", "pat-1", due - EARLY_MS - 1), "too early: it did not wait");
        assert!(key.honours(&ticket, "call-1", "pat-1", due + VALID_MS));
        assert!(!key.honours(&ticket, "call-1", "pat-1", due + VALID_MS + 1), "expired");
        assert!(!key.honours(&ticket, "call-2", "pat-1", due), "another call");
        assert!(!key.honours(&ticket, "call-1", "pat-2", due), "another participant");
        let other_key = TicketKey::derive(b"another platform secret, 32 bytes long");
        assert!(!other_key.honours(&ticket, "call-1", "pat-1", due), "another deployment's key");
        let (_, mac) = ticket.split_once('.').unwrap();
        assert!(!key.honours(&format!("{}.{mac}", due - 5_000), "call-1", "pat-1", due), "an earlier time forged");
        for junk in ["", ".", "x.y", "1700000000000", "1700000000000.", "-1.00", &format!("{ticket}0")] {
            assert!(!key.honours(junk, "call-1", "pat-1", due), "{junk:?}");
        }
        // Two tickets for different times are different.
        assert_ne!(key.issue("call-1", "pat-1", due + 1), ticket);
    }

    /// The rate the node admitted in its last whole second re-times the line: at 1,000
    /// admitted a second, the line is timed at 2,000 a second ([`AFTER_STORM`]).
    #[test]
    fn the_line_drains_at_the_rate_the_node_admits() {
        let gate = Gate::for_joins(1);
        let t0 = Instant::now();
        admit(&gate, t0, 1000);
        let t1 = t0 + Duration::from_millis(1001);
        let _held = gate.enter_at(t1, false).unwrap();
        let waits: Vec<Duration> = (0..2000).map(|_| gate.enter_at(t1, false).unwrap_err()).collect();
        assert_eq!(waits[499], RETRY_MIN, "500 places at 2,000 a second: the shortest retry");
        assert_eq!(waits[1999], Duration::from_secs(1), "2,000 places: a second");
    }

    /// Payment commands have no tickets: no place is kept while a line waits. Their line is
    /// timed at twice the best rate, as joins' is, so that it can find out the node is faster.
    #[test]
    fn a_command_gate_keeps_no_places_and_times_its_line_at_twice_the_rate_it_admits() {
        let gate = Gate::for_commands(4);
        let t0 = Instant::now();
        let mut held: Vec<Slot> = (0..4).map(|_| gate.enter_at(t0, false).unwrap()).collect();
        gate.enter_at(t0, false).unwrap_err();
        held.pop();
        let _next = gate.enter_at(t0, false).expect("a line is waiting, but no place is kept for tickets");
        let gate = Gate::for_commands(1);
        let t0 = Instant::now();
        admit(&gate, t0, 1000);
        let t1 = t0 + Duration::from_millis(1001);
        let _held = gate.enter_at(t1, false).unwrap();
        let waits: Vec<Duration> = (0..3000).map(|_| gate.enter_at(t1, false).unwrap_err()).collect();
        assert_eq!(waits[1499], Duration::from_millis(750), "1,500 places at 2,000 a second");
        assert_eq!(waits[2999], Duration::from_millis(1500), "3,000 places");
    }

    /// A second in which fewer joins came (the storm's fresh joins are over; the line's are
    /// arriving at their times) says nothing of what the node can admit: the line is timed at
    /// the best rate of the last seconds, fading a fiftieth a second, not at the last second's.
    #[test]
    fn a_quiet_second_does_not_lengthen_the_line() {
        let gate = Gate::for_joins(1);
        let t0 = Instant::now();
        admit(&gate, t0, 1000);
        admit(&gate, t0 + Duration::from_millis(1001), 100);
        let t2 = t0 + Duration::from_millis(2002);
        let _held = gate.enter_at(t2, false).unwrap();
        let waits: Vec<Duration> = (0..1960).map(|_| gate.enter_at(t2, false).unwrap_err()).collect();
        let last = waits[1959].as_secs_f64();
        assert!(
            (last - 1.0).abs() < 0.001,
            "timed at twice 980 a second (1,000 a second ago, less a fiftieth): {last}"
        );
        // Long after, the node's best second is forgotten: the line drained, the floor is left.
        let later = t2 + Duration::from_secs(3_000);
        drop(_held);
        let _held = gate.enter_at(later, false).unwrap();
        assert_eq!(gate.enter_at(later, false).unwrap_err(), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..10).map(|_| gate.enter_at(later, false).unwrap_err()).collect();
        assert_eq!(waits[9], Duration::from_secs(11), "11 places at the floor of one a second");
    }
}

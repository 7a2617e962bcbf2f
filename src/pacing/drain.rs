//! How fast a draining node lets its clients go when other nodes are there to take them.
//!
//! Told all at once to reconnect over a window the node picked from its own socket count (its
//! sockets over `server.drain_reconnects_per_sec`), the clients of one instance of five sharing
//! two cores arrived faster than the other four could take them: they shed 40,000-70,000 joins
//! in a 70,000-socket rolling restart, and the retries' handshakes held relay frames of calls
//! that never moved past 10 s (README, "A national service's Monday morning", runs 9, 18 and 20).
//! What the fleet can take depends on its load at that moment, which the draining node cannot
//! know in advance. So it closes its sockets a wave at a time and adjusts the rate from what the
//! fleet reports: the running count of joins the other nodes turned away (shed with a time to
//! retry, or refused at their caps). The rate starts modest and grows while that count stands
//! still; when it moves, the rate halves, at most once per [`REACTION`] (a wave's clients show
//! at the other nodes only after their reconnect spread), and then grows gently. It never falls
//! below the rate that lets every socket go within the drain's longest window, so a drain under
//! sustained pressure is no slower than the old fixed spread over that window.
//!
//! Pure arithmetic on the caller's clock; `crate::ws::drain` reads the fleet and closes sockets.

use std::time::{Duration, Instant};

/// How often the draining node reads the fleet's count and lets a wave go (and how often a node
/// reports its own turned-away joins).
pub const TICK: Duration = Duration::from_millis(200);
/// The reconnect window each wave's clients are told: a wave's clients arrive over it rather
/// than in one instant, and the next waves overlap it.
pub const WAVE_SPREAD: Duration = Duration::from_secs(1);
/// Sockets a second at the start. 500 a second let 70,000 sockets roll through five instances on
/// two cores with nothing shed (runs 10-19); a fleet with room takes the faster rates the
/// growth reaches within two seconds.
const START_RATE: f64 = 500.0;
/// Growth per tick while the fleet has turned nobody away since the drain began: 2x a second,
/// so an idle fleet takes 20,000 sockets in under 7 s (goal: back within 10 s). At 3x a second
/// the rate had passed 3,500 before the first sheds of a 70,000-socket rolling restart were
/// counted (their reports come 1.5-2 s after the waves that caused them).
const GROWTH_FIRST: f64 = 1.15;
/// Growth per tick after the fleet has turned joins away once: about 1.3x a second, so the rate
/// comes back to what the fleet took without overshooting it at once.
const GROWTH_AFTER: f64 = 1.05;
/// The rate after the fleet turned joins away.
const CUT: f64 = 0.5;
/// At most one cut, and no growth, for this long after a cut: the waves let go before the cut
/// are still arriving and being counted (their spread of [`WAVE_SPREAD`], the handshake, a tick
/// of the other node's report and one of this node's read), and counting their sheds again
/// would cut for the same cause twice.
pub const REACTION: Duration = Duration::from_millis(2_500);
/// Longest window taken (a setting of days would only overflow the clock).
const WINDOW_MAX: Duration = Duration::from_secs(3_600);
/// Most time one tick counts. The ticks of a node closing thousands of sockets came 1-8 s apart
/// in a 70,000-socket rolling restart (its own runtime busy with the closes), and counting all
/// of it let thousands go at once (run 23 lost 945 frames): a late tick is itself a sign to go
/// slower. This applies to the floor's share too: counted in full, a tick 5 s late at the floor
/// of a 19,488-socket drain let 3,250 go at once, and the run that did so (26) lost 2,151
/// frames where the two before it (24, 25), counting at most this, lost none. So a busy node
/// may fall behind its floor; the window's end lets the rest go, told a spread at the rate
/// reached (`crate::ws::drain`).
const TICK_COUNTED_MAX: Duration = Duration::from_millis(400);

/// What the fleet said between two ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fleet {
    /// No node turned a join away.
    Calm,
    /// Some node turned joins away, or the count could not be read in time (Redis down or
    /// swamped, as a storm of joins swamps it).
    Pressed,
    /// No news (the first reading, or a count lower than before: Redis lost it): the rate is
    /// held.
    Unknown,
}

/// The release rate of one drain: see the module's doc.
#[derive(Debug)]
pub struct DrainPace {
    floor: f64,
    ceiling: f64,
    rate: f64,
    /// When the rate was last cut, if it ever was.
    cut_at: Option<Instant>,
    /// Sockets owed a release, not yet whole.
    credit: f64,
    last: Instant,
    /// When every socket still held is let go, whatever the fleet says.
    deadline: Instant,
}

impl DrainPace {
    /// A drain starting at `now` with `sockets` open, never faster than `ceiling` sockets a
    /// second (`server.drain_reconnects_per_sec`) and letting the last go within `window`.
    pub fn new(now: Instant, sockets: usize, ceiling: u64, window: Duration) -> Self {
        let ceiling = ceiling.max(1) as f64;
        let window = window.clamp(TICK, WINDOW_MAX);
        // The floor may exceed the ceiling: the window is the promise made to the operator
        // (their orchestrator's grace period), the ceiling a preference.
        let floor = sockets as f64 / window.as_secs_f64();
        let rate = START_RATE.min(ceiling).max(floor);
        Self { floor, ceiling: ceiling.max(floor), rate, cut_at: None, credit: 0.0, last: now, deadline: now + window }
    }

    /// Sockets a second now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How many more sockets to let go at `now`, given what the fleet said since the last
    /// tick; `None` once the window is over (let every socket still held go).
    pub fn tick(&mut self, now: Instant, fleet: Fleet) -> Option<usize> {
        if now >= self.deadline {
            return None;
        }
        let settled = self.cut_at.is_none_or(|at| now.saturating_duration_since(at) >= REACTION);
        match fleet {
            Fleet::Pressed if settled => {
                self.rate = (self.rate * CUT).max(self.floor);
                self.cut_at = Some(now);
            }
            Fleet::Calm if settled => {
                let growth = if self.cut_at.is_some() { GROWTH_AFTER } else { GROWTH_FIRST };
                self.rate = (self.rate * growth).min(self.ceiling);
            }
            Fleet::Pressed | Fleet::Calm | Fleet::Unknown => {}
        }
        // Released by the time elapsed (a tick a little late lets go what was due), up to
        // [`TICK_COUNTED_MAX`].
        self.credit += self.rate * now.saturating_duration_since(self.last).min(TICK_COUNTED_MAX).as_secs_f64();
        self.last = now;
        let whole = self.credit.floor();
        self.credit -= whole;
        Some(whole as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a drain of `sockets` tick by tick with the fleet's answers from `fleet(tick index)`;
    /// answers the released count after each tick, and how many were still held when the
    /// window ended (0 if the pace let every socket go in time).
    fn run(sockets: usize, ceiling: u64, window: Duration, fleet: impl Fn(usize) -> Fleet) -> (Vec<usize>, usize) {
        let t0 = Instant::now();
        let mut pace = DrainPace::new(t0, sockets, ceiling, window);
        let mut released = 0;
        let mut after = Vec::new();
        for i in 1.. {
            match pace.tick(t0 + TICK * i as u32, fleet(i)) {
                Some(n) => released += n,
                None => return (after, sockets - released),
            }
            after.push(released.min(sockets));
            if released >= sockets {
                break;
            }
        }
        (after, 0)
    }

    #[test]
    fn a_calm_fleet_takes_twenty_thousand_sockets_within_the_drain_goal() {
        let (after, held) = run(20_000, 4_000, Duration::from_secs(30), |_| Fleet::Calm);
        assert_eq!(held, 0);
        let took = TICK * after.len() as u32;
        // Slow start: 500 a second growing to the ceiling of 4,000 within three seconds.
        assert!(after[0] <= 200, "the first wave is modest: {}", after[0]);
        assert!(took <= Duration::from_secs(7), "took {took:?}");
        assert!(took >= Duration::from_secs(5), "never above the ceiling of 4,000 a second: {took:?}");
        assert!(after.windows(2).all(|w| w[1] - w[0] <= 801), "a tick let more than 4,000 a second go");
    }

    #[test]
    fn a_pressed_fleet_gets_the_floor_and_every_socket_goes_within_the_window() {
        let window = Duration::from_secs(30);
        let (after, held) = run(14_000, 4_000, window, |_| Fleet::Pressed);
        // At the floor (14,000 over 30 s) from the first cut on. The window's end lets go what
        // is still held; the floor leaves at most one tick's worth of sockets to it.
        let floor_tick = 14_000.0 / 30.0 * TICK.as_secs_f64();
        assert!(held as f64 <= floor_tick + 1.0, "{held} sockets left for the window's end");
        let took = TICK * (after.len() as u32 + 1);
        assert!(took >= window - Duration::from_secs(2), "the pressure slowed it to the floor: {took:?}");
        // Against the same drain with a calm fleet.
        let (calm, _) = run(14_000, 4_000, window, |_| Fleet::Calm);
        assert!(calm.len() * 4 < after.len(), "calm {} ticks, pressed {}", calm.len(), after.len());
    }

    #[test]
    fn the_rate_is_cut_once_per_reaction_time_and_regrows_gently() {
        let t0 = Instant::now();
        let mut pace = DrainPace::new(t0, 1_000, 4_000, Duration::from_secs(30));
        for i in 1..=4 {
            pace.tick(t0 + TICK * i, Fleet::Calm);
        }
        let grown = pace.rate();
        assert!((grown - 500.0 * GROWTH_FIRST.powi(4)).abs() < 1e-6, "{grown}");
        pace.tick(t0 + TICK * 5, Fleet::Pressed);
        assert_eq!(pace.rate(), grown / 2.0);
        // Pressure and calm within the reaction time change nothing.
        pace.tick(t0 + TICK * 6, Fleet::Pressed);
        pace.tick(t0 + TICK * 7, Fleet::Calm);
        assert_eq!(pace.rate(), grown / 2.0);
        pace.tick(t0 + TICK * 17, Fleet::Pressed);
        assert_eq!(pace.rate(), grown / 2.0, "{REACTION:?} after the cut, not yet");
        // Once it has passed, calm grows by the gentle step.
        pace.tick(t0 + TICK * 18, Fleet::Calm);
        assert!((pace.rate() - grown / 2.0 * GROWTH_AFTER).abs() < 1e-6, "{}", pace.rate());
        // An unknown fleet holds the rate.
        pace.tick(t0 + TICK * 19, Fleet::Unknown);
        assert!((pace.rate() - grown / 2.0 * GROWTH_AFTER).abs() < 1e-6, "{}", pace.rate());
    }

    #[test]
    fn a_late_tick_counts_at_most_400_ms_and_the_window_ends_the_drain() {
        let t0 = Instant::now();
        // 10,000 sockets over 10 s: a floor of 1,000 a second; the start rate of 500 is below it.
        let mut pace = DrainPace::new(t0, 10_000, 4_000, Duration::from_secs(10));
        assert_eq!(pace.rate(), 1_000.0);
        assert_eq!(pace.tick(t0 + Duration::from_millis(250), Fleet::Unknown), Some(250), "a little late: all due");
        // Growth to 1,150 a second; 4 s late: 400 ms of it.
        assert_eq!(pace.tick(t0 + Duration::from_millis(4_250), Fleet::Calm), Some(460));
        assert_eq!(pace.tick(t0 + Duration::from_secs(10), Fleet::Calm), None);
    }

    #[test]
    fn late_ticks_let_go_at_most_their_counted_time_and_the_window_takes_the_rest() {
        let t0 = Instant::now();
        let window = Duration::from_secs(30);
        let mut pace = DrainPace::new(t0, 14_000, 4_000, window);
        let mut released = 0;
        // Ticks a second apart, as on a node busy closing sockets, the fleet pressed throughout:
        // 400 ms of each second at the floor (14,000 over 30 s), never a second's worth at once.
        for s in 1..30 {
            let n = pace.tick(t0 + Duration::from_secs(s), Fleet::Pressed).unwrap();
            assert!(n <= 187, "{n} let go in one late tick");
            released += n;
        }
        assert!((5_400..=5_420).contains(&released), "{released}");
        assert_eq!(pace.tick(t0 + window, Fleet::Pressed), None, "the window's end lets the rest go");
    }
}

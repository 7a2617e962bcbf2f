//! A draining node letting its sockets go, and every node's report of the joins it turned away.
//!
//! Each session waits for a turn ([`crate::app::Services::drain_turns`]) once the node drains,
//! and keeps serving its call until it gets one. A lone node gives every session its turn at
//! once, with a reconnect spread from its own socket count: its clients can only come back to
//! its next process. A node with peers hands out turns at the rate [`DrainPace`] sets from the
//! fleet's count of turned-away joins, each wave told [`WAVE_SPREAD`]. A second shutdown signal
//! ([`crate::app::Services::drain_hurry`]) lets every socket still held go at once.

use crate::app::AppState;
use crate::pacing::drain::{DrainPace, Fleet, TICK, WAVE_SPREAD};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

/// Once the node drains, hands out the sessions' turns to close until none is left open or the
/// drain's window (`server.drain_max_secs`) is over or a second signal hurries it; then every
/// session still waiting gets its turn.
pub(crate) async fn release(app: AppState) {
    app.drain.cancelled().await;
    // Every session gets its turn however this ends (a panic included): a session left waiting
    // would be dropped at the deadline without its `4012`.
    let _every_turn = EveryTurnOnDrop(&app.drain_turns);
    let sockets = app.metrics.open_now();
    let ceiling = app.config.server.drain_reconnects_per_sec;
    let window = Duration::from_secs(app.config.server.drain_max_secs.max(1));
    if !app.hub.has_peers() {
        let spread = crate::pacing::reconnect_spread(sockets, ceiling);
        app.drain_spread_ms.store(spread.as_millis() as u64, Ordering::Release);
        app.drain_turns.close();
        return;
    }
    app.drain_spread_ms.store(WAVE_SPREAD.as_millis() as u64, Ordering::Release);
    let started = Instant::now();
    let mut pace = DrainPace::new(started, sockets, ceiling, window);
    // Within a tick, as every read below: the first wave must not wait for a Redis that is
    // swamped or stalled.
    let mut last = fleet_count_within_tick(&app).await.ok().flatten();
    let (mut cuts, mut unread) = (0u32, 0u32);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        // The hurry first: once asked for, no further wave or read is waited for.
        let count = tokio::select! {
            biased;
            _ = app.drain_hurry.cancelled() => None,
            // Within a tick: a read waiting out the bus's own 2 s time-out would hold back the
            // next waves, the window's last one included.
            count = async {
                ticks.tick().await;
                // Every socket gone: no read, the loop ends.
                if app.metrics.open_now() == 0 {
                    return None;
                }
                Some(fleet_count_within_tick(&app).await)
            } => Some(count),
        };
        let count = match count {
            None => {
                let_the_rest_go(&app, pace.rate(), "second shutdown signal");
                break;
            }
            Some(None) => break,
            Some(Some(count)) => count,
        };
        let fleet = match (last, count) {
            (Some(before), Ok(Some(now))) if now > before => Fleet::Pressed,
            (Some(before), Ok(Some(now))) if now == before => Fleet::Calm,
            // Not read in time: Redis is down or swamped, and a storm of joins swamps it. Slow
            // down (to the floor at worst) rather than push on blind.
            (_, Err(())) => Fleet::Pressed,
            // Lower than before (Redis restarted, a failover lost the key), or the first
            // reading: no news.
            _ => Fleet::Unknown,
        };
        if let Ok(count) = count {
            last = count;
        }
        let rate = pace.rate();
        let Some(n) = pace.tick(Instant::now(), fleet) else {
            let_the_rest_go(&app, pace.rate(), "drain window over");
            break;
        };
        tracing::debug!(?fleet, rate = pace.rate() as u64, released = n, open = app.metrics.open_now(), "drain tick");
        cuts += u32::from(pace.rate() < rate);
        unread += u32::from(count.is_err());
        // No more turns than sockets open: a long stall's credit could otherwise pass the
        // semaphore's limit.
        app.drain_turns.add_permits(n.min(app.metrics.open_now()));
    }
    app.drain_turns.close();
    tracing::info!(
        sockets,
        took_ms = started.elapsed().as_millis() as u64,
        cuts,
        ticks_unread = unread,
        "drain: every socket let go"
    );
}

/// Tells every session still waiting to spread its reconnect as a lone node's are, at `rate`
/// (the rate the drain reached); the semaphore's closing then lets them all go at once.
fn let_the_rest_go(app: &AppState, rate: f64, why: &'static str) {
    let open = app.metrics.open_now();
    let spread = crate::pacing::reconnect_spread(open, rate as u64);
    app.drain_spread_ms.store(spread.as_millis() as u64, Ordering::Release);
    tracing::warn!(open, ?spread, why, "letting every socket still open go");
}

/// Closes the turns' semaphore when dropped: every session still waiting may go.
struct EveryTurnOnDrop<'a>(&'a tokio::sync::Semaphore);

impl Drop for EveryTurnOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The fleet's count of turned-away joins (`None`: the bus keeps none), or `Err` if it could
/// not be read within a [`TICK`] (the bus's own time-out is 2 s).
async fn fleet_count_within_tick(app: &AppState) -> Result<Option<u64>, ()> {
    match tokio::time::timeout(TICK, app.hub.fleet_turned_away()).await {
        Ok(Ok(count)) => Ok(count),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "the fleet's turned-away joins not read");
            Err(())
        }
        Err(_) => {
            tracing::debug!("the fleet's turned-away joins not read within a tick");
            Err(())
        }
    }
}

/// Adds the joins this node turns away to the fleet's count, every [`TICK`], until shutdown.
/// Nothing is written while the node turns nobody away; a count not written (the bus is down)
/// is added with the next.
pub(crate) async fn report_turned_away(app: AppState) {
    let mut reported = app.metrics.turned_away();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = app.metrics.turned_away();
        if now > reported && app.hub.has_peers() {
            match app.hub.add_turned_away(now - reported).await {
                Ok(()) => reported = now,
                Err(e) => tracing::debug!(error = %e, "turned-away joins not reported; added to the next report"),
            }
        }
    }
}

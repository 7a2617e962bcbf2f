//! The subscribing side. Subscriptions are kept as desired state: [`Wanted`] is the set of calls
//! this node serves (with their clinics), changed synchronously by the room registry and never
//! dropped; one task compares the channels that set implies with the channels the connection
//! holds and subscribes or unsubscribes the difference in batches, retrying until Redis takes
//! it. A burst of rooms opening and closing, a Redis outage or a subscription Redis dropped on
//! its own (a cluster failover) all end the same way: the connection holds what is wanted.
//!
//! [`Receiver`] delivers what arrives. Each origin numbers its envelopes per channel; a skipped
//! number, or an explicit gap, repairs that call (or that clinic's calls) alone. A lost
//! connection or an overflowing buffer repairs every call of this node, in paced chunks.

use super::super::{Envelope, EnvelopeSink, RoomEvent};
use super::{GAP_CHANNEL, Link, RETRY_MAX, RETRY_START, call_channel, clinic_channel, wait_for_redis};
use redis::{PushInfo, PushKind};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Channels subscribed or unsubscribed in one command (one round trip on a single server).
const SUBSCRIBE_BATCH: usize = 1000;
/// A channel's numbering state is forgotten after this long without a message.
const STREAM_IDLE: Duration = Duration::from_secs(600);
/// How often idle numbering state is looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Channel -> the call and clinic it carries (for a call's channel; `None` for the others).
type WantedChannels = HashMap<String, Option<(String, String)>>;

/// The calls this node serves, and subscriptions Redis dropped on its own.
#[derive(Default)]
pub(super) struct Wanted {
    state: Mutex<WantedState>,
    changed: Notify,
}

#[derive(Default)]
struct WantedState {
    /// Call id -> clinic id.
    calls: HashMap<String, String>,
    /// Channels Redis said it no longer holds for us (to subscribe again if still wanted).
    dropped: HashSet<String>,
    /// Channels this node is unsubscribing: Redis's confirmation for them is ours, not a
    /// subscription lost on Redis's side.
    leaving: HashSet<String>,
}

impl Wanted {
    /// This node now serves `call_id`. Never blocks for long and never fails.
    pub(super) fn watch(&self, call_id: &str, clinic_id: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).calls.insert(call_id.to_owned(), clinic_id.to_owned());
        self.changed.notify_one();
    }

    /// This node no longer serves `call_id`.
    pub(super) fn unwatch(&self, call_id: &str, _clinic_id: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).calls.remove(call_id);
        self.changed.notify_one();
    }

    /// Redis says it no longer holds `channel` for us: the confirmation of our own unsubscribe
    /// (answered true, nothing to do), or a subscription Redis dropped on its own (to subscribe
    /// again if still wanted).
    pub(super) fn unsubscribed(&self, channel: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.leaving.remove(channel) {
            return true;
        }
        state.dropped.insert(channel.to_owned());
        drop(state);
        self.changed.notify_one();
        false
    }

    fn leaving(&self, channels: &[String]) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).leaving.extend(channels.iter().cloned());
    }

    /// The channels wanted now (the gap channel, each call's, each of their clinics'), with the
    /// call and clinic of each call channel; and the channels Redis dropped since last asked.
    fn snapshot(&self) -> (WantedChannels, HashSet<String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut channels = HashMap::with_capacity(state.calls.len() * 2 + 1);
        channels.insert(GAP_CHANNEL.to_owned(), None);
        for (call, clinic) in &state.calls {
            channels.insert(call_channel(call), Some((call.clone(), clinic.clone())));
            channels.entry(clinic_channel(clinic)).or_insert(None);
        }
        (channels, std::mem::take(&mut state.dropped))
    }

    /// The call and clinic behind a call channel, while that call is still wanted.
    fn call_of(&self, channel: &str) -> Option<(String, String)> {
        let call = channel.strip_prefix("callpay:call:")?;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.calls.get(call).map(|clinic| (call.to_owned(), clinic.clone()))
    }
}

/// Keeps the subscriptions equal to what is wanted until `stop`. A call channel that becomes
/// live is repaired from the store right after (what other nodes published before is lost to
/// this node), in one batch per round.
pub(super) async fn keep_subscribed(
    mut sub: Link,
    wanted: Arc<Wanted>,
    sink: Arc<dyn EnvelopeSink>,
    stop: CancellationToken,
) {
    let mut held: HashSet<String> = HashSet::new();
    // Channels whose SUBSCRIBE failed or timed out: Redis may have applied it anyway, so one no
    // longer wanted is unsubscribed rather than left behind.
    let mut maybe: HashSet<String> = HashSet::new();
    let mut wait = RETRY_START;
    loop {
        let (channels, dropped) = wanted.snapshot();
        for channel in dropped {
            if held.remove(&channel) && channels.contains_key(&channel) {
                tracing::warn!(channel, "redis dropped a subscription (failover?); subscribing again");
            }
        }
        let to_add: Vec<String> = channels.keys().filter(|c| !held.contains(*c)).cloned().collect();
        let to_drop: Vec<String> =
            held.iter().chain(maybe.iter()).filter(|c| !channels.contains_key(*c)).cloned().collect();
        let mut failed = false;
        for chunk in to_add.chunks(SUBSCRIBE_BATCH) {
            match sub.subscribe(chunk).await {
                Ok(()) => {
                    for c in chunk {
                        maybe.remove(c);
                    }
                    held.extend(chunk.iter().cloned());
                    let live: Vec<(String, String)> =
                        chunk.iter().filter_map(|c| channels.get(c).cloned().flatten()).collect();
                    if !live.is_empty() {
                        sink.clone().resync_calls(live);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, channels = chunk.len(), "redis subscribe failed; retrying");
                    maybe.extend(chunk.iter().cloned());
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            for chunk in to_drop.chunks(SUBSCRIBE_BATCH) {
                wanted.leaving(chunk);
                match sub.unsubscribe(chunk).await {
                    Ok(()) => {
                        for c in chunk {
                            held.remove(c);
                            maybe.remove(c);
                        }
                    }
                    Err(e) => {
                        // A stray subscription only brings events for a call not served
                        // here, which are dropped; it is tried again next round.
                        tracing::warn!(error = %e, channels = chunk.len(), "redis unsubscribe failed; retrying");
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RETRY_MAX);
            continue;
        }
        wait = RETRY_START;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wanted.changed.notified() => {}
        }
    }
}

/// Delivers other nodes' envelopes to the sink, and decides what must be repaired.
pub(super) struct Receiver {
    pub(super) node: String,
    pub(super) sub: Link,
    pub(super) pushes: mpsc::Receiver<PushInfo>,
    pub(super) lagged: Arc<AtomicBool>,
    pub(super) wanted: Arc<Wanted>,
    pub(super) sink: Arc<dyn EnvelopeSink>,
}

/// The last number seen from each origin on each channel.
#[derive(Default)]
struct Streams {
    last: HashMap<(String, String), (u64, Instant)>,
    pruned: Option<Instant>,
}

/// What a numbered envelope says about the messages before it.
#[derive(Debug, PartialEq, Eq)]
enum Continuity {
    /// The next number, a first message, or a restarted counter.
    Whole,
    /// Numbers were skipped: messages on this channel were lost.
    Hole,
}

impl Streams {
    fn check(&mut self, channel: &str, origin: &str, seq: u64) -> Continuity {
        if seq == 0 {
            return Continuity::Whole;
        }
        let now = Instant::now();
        if self.pruned.is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY) {
            self.pruned = Some(now);
            self.last.retain(|_, (_, at)| now.duration_since(*at) < STREAM_IDLE);
        }
        let key = (channel.to_owned(), origin.to_owned());
        match self.last.get_mut(&key) {
            Some((last, at)) if seq > *last + 1 => {
                (*last, *at) = (seq, now);
                Continuity::Hole
            }
            // Behind what was seen, but not a counter starting again (a gap notice overtook
            // messages still on their way): nothing is missing, and the newest stays.
            Some((last, at)) if seq <= *last && seq != 1 => {
                *at = now;
                Continuity::Whole
            }
            Some((last, at)) => {
                (*last, *at) = (seq, now);
                Continuity::Whole
            }
            None => {
                self.last.insert(key, (seq, now));
                Continuity::Whole
            }
        }
    }
}

impl Receiver {
    /// Runs until `stop`.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut streams = Streams::default();
        loop {
            if self.lagged.swap(false, Ordering::Relaxed) {
                tracing::warn!("redis messages were dropped here; repairing this node's calls");
                streams = Streams::default();
                self.sink.clone().resync();
            }
            let push = tokio::select! {
                _ = stop.cancelled() => return,
                push = self.pushes.recv() => match push { Some(p) => p, None => return },
            };
            match push.kind {
                PushKind::Message | PushKind::SMessage => self.message(&push, &mut streams),
                // Our own unsubscribes are confirmed this way too; the subscription task knows
                // which channels are still wanted.
                PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                    if let Some(redis::Value::BulkString(ch)) = push.data.first() {
                        self.wanted.unsubscribed(&String::from_utf8_lossy(ch));
                    }
                }
                PushKind::Disconnection => {
                    tracing::warn!("redis bus disconnected; this node's calls are repaired once it is back");
                    if !wait_for_redis(&self.sub, &stop).await {
                        return;
                    }
                    tracing::info!("redis bus reconnected; repairing this node's calls from the store");
                    // Everything from before is covered by the repair: numbering starts afresh.
                    streams = Streams::default();
                    self.sink.clone().resync();
                }
                _ => {}
            }
        }
    }

    fn message(&self, push: &PushInfo, streams: &mut Streams) {
        let Some(redis::Value::BulkString(channel)) = push.data.first() else { return };
        let Some(redis::Value::BulkString(bytes)) = push.data.get(1) else { return };
        if channel == GAP_CHANNEL.as_bytes() {
            if bytes != self.node.as_bytes() {
                tracing::warn!("another node lost track of its lost publishes; repairing this node's calls");
                self.sink.clone().resync();
            }
            return;
        }
        let env = match serde_json::from_slice::<Envelope>(bytes) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable envelope on the bus");
                return;
            }
        };
        if env.origin == self.node {
            return;
        }
        let channel = String::from_utf8_lossy(channel);
        let hole = streams.check(&channel, &env.origin, env.seq) == Continuity::Hole;
        if hole || env.event == RoomEvent::Gap {
            tracing::info!(channel = %channel, origin = env.origin, "messages lost on this channel; repairing it");
            self.repair(&env);
        }
        if env.event != RoomEvent::Gap {
            self.sink.deliver_remote(&env);
        }
    }

    /// Repairs what `env`'s channel carries: its call, or every local call of its clinic.
    fn repair(&self, env: &Envelope) {
        if env.call_id.is_empty() {
            self.sink.clone().resync_clinic(env.clinic_id.clone());
        } else if let Some((call, clinic)) = self.wanted.call_of(&call_channel(&env.call_id)) {
            self.sink.clone().resync_call(call, clinic);
        } else {
            self.sink.clone().resync_call(env.call_id.clone(), env.clinic_id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_number_is_a_hole_and_a_restart_is_not() {
        let mut s = Streams::default();
        assert_eq!(s.check("ch", "a", 1), Continuity::Whole);
        assert_eq!(s.check("ch", "a", 2), Continuity::Whole);
        assert_eq!(s.check("ch", "a", 4), Continuity::Hole);
        assert_eq!(s.check("ch", "a", 5), Continuity::Whole);
        assert_eq!(s.check("ch", "b", 9), Continuity::Whole, "first message of another origin");
        assert_eq!(s.check("other", "a", 3), Continuity::Whole, "numbers are per channel");
        assert_eq!(s.check("ch", "a", 3), Continuity::Whole, "a late message behind a gap notice");
        assert_eq!(s.check("ch", "a", 6), Continuity::Whole, "and the newest number was kept");
        assert_eq!(s.check("ch", "a", 1), Continuity::Whole, "a forgotten counter starts again");
        assert_eq!(s.check("ch", "a", 0), Continuity::Whole, "unnumbered");
    }
}

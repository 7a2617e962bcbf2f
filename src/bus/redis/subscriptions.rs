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

/// Whether a channel is wanted now, and for a call's channel the call and clinic it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want {
    No,
    Yes(Option<(String, String)>),
}

/// The calls this node serves, which of them it hears, and subscriptions Redis dropped on its
/// own.
#[derive(Default)]
pub(super) struct Wanted {
    state: Mutex<WantedState>,
    changed: Notify,
    /// Woken when calls come to be heard, or when the node is cut off from Redis.
    heard_changed: Notify,
}

#[derive(Default)]
struct WantedState {
    /// Call id -> clinic id.
    calls: HashMap<String, String>,
    /// Clinic id -> how many of `calls` are its: its channel is wanted while that is above 0.
    clinics: HashMap<String, usize>,
    /// Channels whose wanting may have changed since the subscribing task last looked. The
    /// task looks at these alone: comparing every channel of every call on each round made a
    /// reconnect storm quadratic (30 % of a receiving node's CPU went to it in the drain).
    dirty: HashSet<String>,
    /// Channels Redis said it no longer holds for us (to subscribe again if still wanted).
    dropped: HashSet<String>,
    /// Channels this node is unsubscribing: Redis's confirmation for them is ours, not a
    /// subscription lost on Redis's side.
    leaving: HashSet<String>,
    /// Wanted channels (of calls and of clinics) Redis confirmed holding since they were last
    /// wanted: what other nodes publish on them reaches this node. A call is heard when its
    /// channel and its clinic's are.
    heard: HashSet<String>,
    /// The subscribing connection is lost: nothing is heard until it is back.
    cut_off: bool,
}

impl WantedState {
    fn count_clinic(&mut self, clinic_id: &str, up: bool) {
        if up {
            *self.clinics.entry(clinic_id.to_owned()).or_default() += 1;
        } else if let Some(n) = self.clinics.get_mut(clinic_id) {
            *n -= 1;
            if *n == 0 {
                self.clinics.remove(clinic_id);
                self.heard.remove(&clinic_channel(clinic_id));
            }
        }
        self.dirty.insert(clinic_channel(clinic_id));
    }

    fn want(&self, channel: &str) -> Want {
        if channel == GAP_CHANNEL {
            return Want::Yes(None);
        }
        if let Some(call) = channel.strip_prefix(CALL_PREFIX) {
            return self.calls.get(call).map_or(Want::No, |clinic| Want::Yes(Some((call.to_owned(), clinic.clone()))));
        }
        match channel.strip_prefix(CLINIC_PREFIX) {
            Some(clinic) if self.clinics.contains_key(clinic) => Want::Yes(None),
            _ => Want::No,
        }
    }
}

/// The prefixes of [`call_channel`] and [`clinic_channel`].
const CALL_PREFIX: &str = "callpay:call:";
const CLINIC_PREFIX: &str = "callpay:clinic:";

impl Wanted {
    /// This node now serves `call_id`. Never blocks for long and never fails.
    pub(super) fn watch(&self, call_id: &str, clinic_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.calls.insert(call_id.to_owned(), clinic_id.to_owned()) {
            Some(old) if old == clinic_id => return,
            Some(old) => state.count_clinic(&old, false),
            None => {}
        }
        state.count_clinic(clinic_id, true);
        state.dirty.insert(call_channel(call_id));
        drop(state);
        self.changed.notify_one();
    }

    /// This node no longer serves `call_id`.
    pub(super) fn unwatch(&self, call_id: &str, _clinic_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(clinic) = state.calls.remove(call_id) else { return };
        state.heard.remove(&call_channel(call_id));
        state.count_clinic(&clinic, false);
        state.dirty.insert(call_channel(call_id));
        drop(state);
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
        state.heard.remove(channel);
        state.dropped.insert(channel.to_owned());
        state.dirty.insert(channel.to_owned());
        drop(state);
        self.changed.notify_one();
        false
    }

    fn leaving(&self, channels: &[String]) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).leaving.extend(channels.iter().cloned());
    }

    /// Redis confirmed a SUBSCRIBE of `channels`: an UNSUBSCRIBE of theirs that failed before
    /// Redis applied it will never be confirmed, so they are no longer being left, and a later
    /// drop of one of them by Redis is a drop, not our own unsubscribe. (On one connection the
    /// confirmation of an earlier UNSUBSCRIBE comes before the SUBSCRIBE's reply.)
    fn subscribed(&self, channels: &[String]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for c in channels {
            state.leaving.remove(c);
        }
        drop(state);
        self.heard(channels);
    }

    /// Redis holds `channels` for this node: those still wanted are heard. Not one Redis said
    /// it dropped since the round began (its notice came between the round's look and now):
    /// that one is subscribed again next round, and heard once confirmed then.
    fn heard(&self, channels: &[String]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for c in channels {
            if c != GAP_CHANNEL && state.want(c) != Want::No && !state.dropped.contains(c) {
                any |= state.heard.insert(c.clone());
            }
        }
        drop(state);
        if any {
            self.heard_changed.notify_waiters();
        }
    }

    /// The subscribing connection was lost (`true`) or is back (`false`).
    pub(super) fn cut_off(&self, lost: bool) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).cut_off = lost;
        self.heard_changed.notify_waiters();
    }

    /// Waits (at most `within`) until `call_id` is heard (its channel and its clinic's are held);
    /// false if it is not by then, if this node is cut off from Redis, or if the call is no
    /// longer served here when it looks.
    pub(super) async fn hears(&self, call_id: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before looking, so a change between the look and the wait still wakes.
            let changed = self.heard_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let Some(clinic) = state.calls.get(call_id) else { return false };
                if state.cut_off {
                    return false;
                }
                if state.heard.contains(&call_channel(call_id)) && state.heard.contains(&clinic_channel(clinic)) {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// The channels whose wanting may have changed since last asked, each with whether it is
    /// wanted now; and the channels Redis dropped since last asked.
    fn changes(&self) -> (Vec<(String, Want)>, HashSet<String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = std::mem::take(&mut state.dirty);
        let changes = dirty
            .into_iter()
            .map(|c| {
                let want = state.want(&c);
                (c, want)
            })
            .collect();
        (changes, std::mem::take(&mut state.dropped))
    }

    /// The call and clinic behind a call channel, while that call is still wanted.
    fn call_of(&self, channel: &str) -> Option<(String, String)> {
        let call = channel.strip_prefix(CALL_PREFIX)?;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.calls.get(call).map(|clinic| (call.to_owned(), clinic.clone()))
    }
}

/// Keeps the subscriptions equal to what is wanted until `stop`. A call channel that becomes
/// live is repaired from the store right after (what other nodes published before is lost to
/// this node), in one batch per round. Each round looks only at the channels that changed
/// since the last (and at those a failed round left undone).
pub(super) async fn keep_subscribed(
    mut sub: Link,
    wanted: Arc<Wanted>,
    sink: Arc<dyn EnvelopeSink>,
    stop: CancellationToken,
) {
    let mut ledger = Ledger::new();
    let mut wait = RETRY_START;
    loop {
        let (changes, dropped) = wanted.changes();
        let Plan { to_add, to_drop, held } = ledger.plan(changes, dropped);
        // Channels wanted again while still held: heard already.
        wanted.heard(&held);
        let mut failed = false;
        for chunk in to_add.chunks(SUBSCRIBE_BATCH) {
            match sub.subscribe(chunk).await {
                Ok(()) => {
                    wanted.subscribed(chunk);
                    let live = ledger.subscribed(chunk);
                    if !live.is_empty() {
                        sink.clone().resync_calls(live);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, channels = chunk.len(), "redis subscribe failed; retrying");
                    ledger.subscribe_failed(chunk);
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            for chunk in to_drop.chunks(SUBSCRIBE_BATCH) {
                wanted.leaving(chunk);
                match sub.unsubscribe(chunk).await {
                    Ok(()) => ledger.unsubscribed(chunk),
                    Err(e) => {
                        tracing::warn!(error = %e, channels = chunk.len(), "redis unsubscribe failed; retrying");
                        ledger.unsubscribe_failed(chunk);
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

/// One round's work: what to subscribe and unsubscribe, and the channels wanted again that
/// Redis still holds.
struct Plan {
    to_add: Vec<String>,
    to_drop: Vec<String>,
    held: Vec<String>,
}

/// What the subscribing task knows of its connection's subscriptions and what is left to do,
/// without I/O: the task asks it for a round, does the round, and reports each chunk's outcome.
struct Ledger {
    /// Channels Redis confirmed.
    held: HashSet<String>,
    /// Channels whose SUBSCRIBE or UNSUBSCRIBE failed or timed out: Redis may have applied it
    /// anyway, so one no longer wanted is unsubscribed rather than left behind, and one wanted
    /// is subscribed again rather than taken as held.
    maybe: HashSet<String>,
    /// Channels still to be settled, with what is wanted of each (the newest word wins).
    pending: HashMap<String, Want>,
}

impl Ledger {
    fn new() -> Self {
        let pending = HashMap::from([(GAP_CHANNEL.to_owned(), Want::Yes(None))]);
        Self { held: HashSet::new(), maybe: HashSet::new(), pending }
    }

    /// Takes in what changed since the last round and what Redis dropped; the channels to
    /// subscribe and to unsubscribe now, and the channels wanted that are held already.
    fn plan(&mut self, changes: Vec<(String, Want)>, dropped: HashSet<String>) -> Plan {
        let wanted: Vec<String> = changes.iter().filter(|(_, w)| *w != Want::No).map(|(c, _)| c.clone()).collect();
        self.pending.extend(changes);
        for channel in dropped {
            if self.held.remove(&channel) && self.pending.get(&channel).is_some_and(|w| *w != Want::No) {
                tracing::warn!(channel, "redis dropped a subscription (failover?); subscribing again");
            }
        }
        // What is already as wanted needs nothing.
        let (held, maybe) = (&self.held, &self.maybe);
        self.pending.retain(|c, w| match w {
            Want::Yes(_) => !held.contains(c),
            Want::No => held.contains(c) || maybe.contains(c),
        });
        let pick = |no: bool| -> Vec<String> {
            self.pending.iter().filter(|(_, w)| (**w == Want::No) == no).map(|(c, _)| c.clone()).collect()
        };
        let held = wanted.into_iter().filter(|c| self.held.contains(c) && !self.pending.contains_key(c)).collect();
        Plan { to_add: pick(false), to_drop: pick(true), held }
    }

    /// Redis confirmed a SUBSCRIBE of `chunk`: the calls whose channel is live now (to repair).
    fn subscribed(&mut self, chunk: &[String]) -> Vec<(String, String)> {
        let mut live = Vec::new();
        for c in chunk {
            self.maybe.remove(c);
            self.held.insert(c.clone());
            if let Some(Want::Yes(Some(call))) = self.pending.remove(c) {
                live.push(call);
            }
        }
        live
    }

    /// A SUBSCRIBE of `chunk` failed: tried again next round, and unsubscribed if no longer
    /// wanted by then.
    fn subscribe_failed(&mut self, chunk: &[String]) {
        self.maybe.extend(chunk.iter().cloned());
    }

    /// Redis confirmed an UNSUBSCRIBE of `chunk`.
    fn unsubscribed(&mut self, chunk: &[String]) {
        for c in chunk {
            self.held.remove(c);
            self.maybe.remove(c);
            self.pending.remove(c);
        }
    }

    /// An UNSUBSCRIBE of `chunk` failed. A stray subscription only brings events for a call not
    /// served here, which are dropped, and it is tried again next round. But Redis may have
    /// applied it (a time-out), and its confirmation is swallowed as ours, so the chunk no
    /// longer counts as held: if a call comes back before the retry, its channel is subscribed
    /// again rather than taken as still held (which left a served call deaf to other nodes).
    fn unsubscribe_failed(&mut self, chunk: &[String]) {
        for c in chunk {
            if self.held.remove(c) {
                self.maybe.insert(c.clone());
            }
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
                // The push callback (mod.rs) already told `Wanted` of this drop as it came in.
                // Telling it a second time here could mark a channel dropped after it was
                // subscribed again, and leave it subscribed for good if its call closed.
                PushKind::Unsubscribe | PushKind::SUnsubscribe => {}
                PushKind::Disconnection => {
                    tracing::warn!("redis bus disconnected; this node's calls are repaired once it is back");
                    // Joins meanwhile do not wait to hear their calls: nothing can be heard.
                    self.wanted.cut_off(true);
                    if !wait_for_redis(&self.sub, &stop).await {
                        return;
                    }
                    self.wanted.cut_off(false);
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

    fn sorted(changes: Vec<(String, Want)>) -> Vec<(String, Want)> {
        let mut c = changes;
        c.sort_by(|a, b| a.0.cmp(&b.0));
        c
    }

    #[test]
    fn a_clinic_channel_is_wanted_while_any_of_its_calls_is_served() {
        let w = Wanted::default();
        w.watch("c1", "k1");
        w.watch("c2", "k1");
        w.watch("c3", "k2");
        let yes = |call: &str, clinic: &str| Want::Yes(Some((call.to_owned(), clinic.to_owned())));
        assert_eq!(
            sorted(w.changes().0),
            vec![
                ("callpay:call:c1".into(), yes("c1", "k1")),
                ("callpay:call:c2".into(), yes("c2", "k1")),
                ("callpay:call:c3".into(), yes("c3", "k2")),
                ("callpay:clinic:k1".into(), Want::Yes(None)),
                ("callpay:clinic:k2".into(), Want::Yes(None)),
            ]
        );
        assert!(w.changes().0.is_empty(), "asked again with nothing changed: nothing");
        w.unwatch("c1", "k1");
        assert_eq!(
            sorted(w.changes().0),
            vec![("callpay:call:c1".into(), Want::No), ("callpay:clinic:k1".into(), Want::Yes(None))],
            "k1 still has c2"
        );
        w.unwatch("c2", "k1");
        w.unwatch("c2", "k1");
        assert_eq!(
            sorted(w.changes().0),
            vec![("callpay:call:c2".into(), Want::No), ("callpay:clinic:k1".into(), Want::No)],
            "an unwatch repeated counts once"
        );
        // A call served again under another clinic moves its clinic channel.
        w.watch("c3", "k3");
        assert_eq!(
            sorted(w.changes().0),
            vec![
                ("callpay:call:c3".into(), yes("c3", "k3")),
                ("callpay:clinic:k2".into(), Want::No),
                ("callpay:clinic:k3".into(), Want::Yes(None)),
            ]
        );
        // A subscription Redis dropped comes back as a change, with what is wanted of it.
        assert!(!w.unsubscribed("callpay:call:c3"));
        let (changes, dropped) = w.changes();
        assert_eq!(changes, vec![("callpay:call:c3".into(), yes("c3", "k3"))]);
        assert_eq!(dropped, HashSet::from(["callpay:call:c3".to_owned()]));
    }

    fn yes(call: &str, clinic: &str) -> Want {
        Want::Yes(Some((call.to_owned(), clinic.to_owned())))
    }

    fn settle_round(ledger: &mut Ledger, changes: Vec<(String, Want)>) -> (Vec<String>, Vec<String>) {
        let Plan { to_add: mut add, to_drop: mut drop, .. } = ledger.plan(changes, HashSet::new());
        add.sort();
        drop.sort();
        (add, drop)
    }

    #[test]
    fn a_round_subscribes_what_is_wanted_and_repairs_each_call_once_live() {
        let mut l = Ledger::new();
        let (add, drop) = settle_round(&mut l, vec![("callpay:call:c1".into(), yes("c1", "k1"))]);
        assert_eq!(add, ["callpay:call:c1", GAP_CHANNEL]);
        assert!(drop.is_empty());
        assert_eq!(l.subscribed(&add), vec![("c1".to_owned(), "k1".to_owned())], "the call is repaired");
        assert_eq!(settle_round(&mut l, vec![]), (vec![], vec![]), "nothing left to do");
        // A call asked for again while held needs nothing, and is not repaired again.
        assert_eq!(settle_round(&mut l, vec![("callpay:call:c1".into(), yes("c1", "k1"))]), (vec![], vec![]));
    }

    /// What a waiter answered. A waiter still waiting after 10 s fails the test (waiters here
    /// are given an hour, so one that is never let go shows as a failure, not a hung run).
    async fn settled(waiter: tokio::task::JoinHandle<bool>) -> bool {
        tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("the waiter was let go").unwrap()
    }

    /// A call is heard from Redis's confirmation of its channel until it closes here; watched
    /// again while its channel is still held, it is heard at once (no SUBSCRIBE is sent, so no
    /// confirmation would ever come); and nothing is heard while the connection is lost.
    #[tokio::test]
    async fn a_call_is_heard_from_its_subscription_until_it_closes() {
        use futures_util::FutureExt;
        let hour = Duration::from_secs(3600);
        let w = Arc::new(Wanted::default());
        let mut l = Ledger::new();
        w.watch("c1", "k1");
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.hears("c1", hour).await }
        });
        let (changes, dropped) = w.changes();
        let plan = l.plan(changes, dropped);
        assert!(plan.held.is_empty(), "not held yet");
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "not heard before Redis confirms");
        // The call's channel confirmed in one chunk, its clinic's in another: clinic-wide events
        // (a Stripe account unlinked) are not heard until the second.
        w.subscribed(&["callpay:call:c1".to_owned()]);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "its clinic's channel is not held yet");
        w.subscribed(&plan.to_add);
        l.subscribed(&plan.to_add);
        assert!(settled(waiting).await, "heard once confirmed");
        // Closed here: no longer heard, though Redis still holds the channel until the next round.
        w.unwatch("c1", "k1");
        assert_eq!(w.hears("c1", hour).now_or_never(), Some(false), "not served here");
        w.watch("c1", "k1");
        assert!(!w.hears("c1", Duration::ZERO).await, "watched again: not yet looked at");
        let (changes, dropped) = w.changes();
        let plan = l.plan(changes, dropped);
        assert_eq!((plan.to_add.len(), plan.to_drop.len()), (0, 0), "still held: nothing to send");
        let mut held = plan.held.clone();
        held.sort();
        assert_eq!(held, ["callpay:call:c1", "callpay:clinic:k1"]);
        w.heard(&plan.held);
        assert_eq!(w.hears("c1", hour).now_or_never(), Some(true), "held, so heard");
        // The connection is lost: nothing is heard, and a waiter is let go at once.
        w.watch("c2", "k1");
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.hears("c2", hour).await }
        });
        tokio::task::yield_now().await;
        w.cut_off(true);
        assert!(!settled(waiting).await, "cut off: the waiter goes on without");
        assert_eq!(w.hears("c1", hour).now_or_never(), Some(false), "nothing is heard while cut off");
        // Back: the connection subscribed again to what it held.
        w.cut_off(false);
        assert_eq!(w.hears("c1", hour).now_or_never(), Some(true));
        // Redis dropping a call's channel on its own: not heard until subscribed again, also
        // when its notice comes between a round's look and that round's confirmation.
        assert!(!w.unsubscribed("callpay:call:c1"));
        assert!(!w.hears("c1", Duration::ZERO).await);
        w.heard(&["callpay:call:c1".to_owned()]);
        assert!(!w.hears("c1", Duration::ZERO).await, "dropped since the round looked");
        let (changes, dropped) = w.changes();
        let plan = l.plan(changes, dropped);
        let mut again = plan.to_add.clone();
        again.sort();
        assert_eq!(again, ["callpay:call:c1", "callpay:call:c2"], "subscribed again (and c2, never confirmed)");
        w.subscribed(&plan.to_add);
        assert!(w.hears("c1", Duration::ZERO).await);
    }

    #[test]
    fn a_failed_subscribe_is_retried_or_undone_if_its_call_closed_meanwhile() {
        let mut l = Ledger::new();
        let (add, _) = settle_round(&mut l, vec![("callpay:call:c1".into(), yes("c1", "k1"))]);
        l.subscribe_failed(&add);
        let (again, _) = settle_round(&mut l, vec![]);
        assert_eq!(again, add, "tried again");
        l.subscribe_failed(&again);
        // The call closed before the retry: Redis may hold the channel, so it is unsubscribed.
        let (add, drop) = settle_round(&mut l, vec![("callpay:call:c1".into(), Want::No)]);
        assert_eq!((add, drop), (vec![GAP_CHANNEL.to_owned()], vec!["callpay:call:c1".to_owned()]));
    }

    /// An UNSUBSCRIBE that timed out may have been applied. If the call comes back before the
    /// retry, its channel must be subscribed again: taken as still held, the call would never
    /// hear other nodes (found by a read-only review; this test failed before the fix).
    #[test]
    fn a_call_back_after_a_failed_unsubscribe_is_subscribed_again() {
        let mut l = Ledger::new();
        let (add, _) = settle_round(&mut l, vec![("callpay:call:c1".into(), yes("c1", "k1"))]);
        l.subscribed(&add);
        let (_, drop) = settle_round(&mut l, vec![("callpay:call:c1".into(), Want::No)]);
        assert_eq!(drop, ["callpay:call:c1"]);
        l.unsubscribe_failed(&drop);
        let (add, drop) = settle_round(&mut l, vec![("callpay:call:c1".into(), yes("c1", "k1"))]);
        assert_eq!((add.clone(), drop), (vec!["callpay:call:c1".to_owned()], vec![]));
        assert_eq!(l.subscribed(&add), vec![("c1".to_owned(), "k1".to_owned())], "and repaired");
    }

    #[test]
    fn a_subscription_redis_dropped_is_subscribed_again_while_wanted() {
        let mut l = Ledger::new();
        let (add, _) = settle_round(&mut l, vec![("callpay:call:c1".into(), yes("c1", "k1"))]);
        l.subscribed(&add);
        let dropped = HashSet::from(["callpay:call:c1".to_owned()]);
        let plan = l.plan(vec![("callpay:call:c1".into(), yes("c1", "k1"))], dropped.clone());
        assert_eq!((plan.to_add, plan.to_drop, plan.held), (vec!["callpay:call:c1".to_owned()], vec![], vec![]));
        // Dropped after its call closed: nothing to subscribe or unsubscribe.
        let mut l = Ledger::new();
        let (add, _) = settle_round(&mut l, vec![("callpay:call:c1".into(), yes("c1", "k1"))]);
        l.subscribed(&add);
        let plan = l.plan(vec![("callpay:call:c1".into(), Want::No)], dropped);
        assert!(plan.to_add.is_empty() && plan.to_drop.is_empty() && plan.held.is_empty());
    }

    /// An UNSUBSCRIBE that failed before Redis applied it is never confirmed; once the channel
    /// is subscribed again, Redis dropping it later must count as a drop (to subscribe again),
    /// not be swallowed as the confirmation of that old unsubscribe (found by a read-only
    /// review; failed before the fix).
    #[test]
    fn a_drop_after_resubscribing_a_channel_whose_unsubscribe_failed_is_a_drop() {
        let w = Wanted::default();
        let ch = vec!["callpay:call:c1".to_owned()];
        w.leaving(&ch);
        w.subscribed(&ch);
        assert!(!w.unsubscribed(&ch[0]), "a drop by Redis, to subscribe again if wanted");
        assert_eq!(w.changes().1, HashSet::from([ch[0].clone()]));
        // Our own unsubscribe is still recognised as ours.
        w.leaving(&ch);
        assert!(w.unsubscribed(&ch[0]));
    }

    /// A storm opening rooms on a node that already serves many: each round is about the rooms
    /// that opened, not every room (the whole set was formatted and compared on each round).
    #[test]
    fn a_round_looks_only_at_what_changed() {
        let w = Wanted::default();
        for i in 0..10_000 {
            w.watch(&format!("c{i}"), &format!("k{}", i % 100));
        }
        assert_eq!(w.changes().0.len(), 10_100);
        w.watch("new", "k1");
        assert_eq!(
            sorted(w.changes().0).into_iter().map(|(c, _)| c).collect::<Vec<_>>(),
            ["callpay:call:new", "callpay:clinic:k1"]
        );
    }

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

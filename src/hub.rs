//! The hub's fan-out point: a room event goes to this node's members at once and to other nodes
//! over the bus. It is also the bus's sink: remote events are delivered locally, and a call
//! whose messages were lost (the bus says which) is repaired from the store: its room is told
//! each change it missed as the event it was. Only a bus reconnection repairs every local call,
//! in paced chunks.
//!
//! Presence across nodes: joins and leaves travel as bus events at once, and each node also
//! keeps its entry in the shared presence record ([`PresenceStore`]) for every call it
//! serves: written before a first connection's `welcome` and before its last leave is
//! announced, renewed
//! every third of `bus.presence_ttl_ms`. On each renewal the node reads the other nodes'
//! entries and its rooms adopt them, so a node that died (its entry expires) or a leave lost in
//! a bus gap is noticed within the expiry.

use crate::bus::{Bus, Envelope, EnvelopeSink, Presence, PresenceStore, RoomEvent};
use crate::metrics::Metrics;
use crate::rooms::RoomRegistry;
use crate::store::{Payment, Store};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Calls whose presence one renewal step writes and reads together. Each call is two Lua
/// scripts that hold single-threaded Redis, and every pub/sub message, while they run: steps of
/// 200 still stalled the cross-node relay 10-20 ms every quarter second at 2,000 calls.
const PRESENCE_CHUNK: usize = 50;
/// Longest a join waits on the presence record before going on without it (the renewal
/// repairs what it missed).
const PRESENCE_WAIT: Duration = Duration::from_millis(500);
/// Calls read from the store per repair query (two queries per chunk, one bind parameter per
/// call: far below PostgreSQL's 65,535).
const REPAIR_CHUNK: usize = 500;
/// Pause between chunks of a node-wide repair: 50,000 calls take 100 chunks, spread over about
/// two seconds instead of arriving at the store at once.
const REPAIR_PACE: Duration = Duration::from_millis(20);

/// Publishes room events locally and across nodes.
pub struct Hub {
    /// This node's id (random per process), stamped on envelopes.
    pub node_id: String,
    /// Local rooms.
    pub rooms: Arc<RoomRegistry>,
    bus: Arc<dyn Bus>,
    record: Arc<dyn PresenceStore>,
    store: Arc<dyn Store>,
    tracker: TaskTracker,
    resync: Arc<Resync>,
    /// Calls waiting for a repair of their own, drained in paced chunks by one task.
    pending: Mutex<PendingRepairs>,
    presence: SharedPresence,
    metrics: Arc<Metrics>,
}

/// What the hub talks to.
pub struct HubIo {
    /// Other nodes, for events.
    pub bus: Arc<dyn Bus>,
    /// The shared presence record.
    pub record: Arc<dyn PresenceStore>,
    /// Where repairs read payments and clinics.
    pub store: Arc<dyn Store>,
    /// Where repairs and the presence upkeep run (shutdown waits for them).
    pub tracker: TaskTracker,
}

/// This node's part in the shared presence record.
struct SharedPresence {
    ttl: Duration,
    /// Calls this node has an entry for, so a room that closed gets its entry removed.
    written: Mutex<HashSet<String>>,
}

/// Calls asked to be repaired one by one (a lost message, a subscription gone live, a failed
/// chunk), gathered so that a burst of them (every peer announcing its gaps after an outage)
/// becomes chunked, paced store reads instead of one pair of queries per call at once.
#[derive(Default)]
struct PendingRepairs {
    calls: HashMap<String, String>,
    draining: bool,
}

/// A failed chunk is tried again after this long (the store is down or overloaded).
const REPAIR_RETRY: Duration = Duration::from_secs(1);

/// At most one node-wide repair runs at a time; a request while one runs makes it go round once
/// more (so a gap that opens during a repair is still covered), never a second concurrent one.
/// One lock for both flags, so no request can fall between "nothing asked" and "not running".
#[derive(Default)]
struct Resync(Mutex<ResyncState>);

#[derive(Default)]
struct ResyncState {
    running: bool,
    again: bool,
}

impl Resync {
    /// A repair is asked for: true if the caller is to run it, false if one is running (which
    /// then goes round once more).
    fn begin(&self) -> bool {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.running {
            s.again = true;
            return false;
        }
        s.running = true;
        true
    }

    /// A round is over: true if the caller is to run another (asked for meanwhile).
    fn round_done(&self) -> bool {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::take(&mut s.again) {
            return true;
        }
        s.running = false;
        false
    }
}

impl Hub {
    /// A hub for this node, on `io`. Repairs run on `io.tracker`, so shutdown waits for them.
    /// `presence_ttl` is how long this node's presence entries last unless renewed; repairs
    /// are counted in `metrics`.
    pub fn new(
        node_id: String,
        rooms: Arc<RoomRegistry>,
        io: HubIo,
        presence_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let HubIo { bus, record, store, tracker } = io;
        rooms.set_observer(Arc::new(BusWatcher(bus.clone())));
        let presence = SharedPresence { ttl: presence_ttl.max(Duration::from_millis(30)), written: Mutex::default() };
        Arc::new(Self {
            node_id,
            rooms,
            bus,
            record,
            store,
            tracker,
            resync: Arc::default(),
            pending: Mutex::default(),
            presence,
            metrics,
        })
    }

    /// Delivers to local members, then queues for other nodes; never waits on the bus. A bus
    /// failure is logged: local members are already served and other nodes resync.
    pub fn publish(&self, call_id: &str, clinic_id: &str, event: RoomEvent) {
        self.rooms.deliver(call_id, &event);
        if !self.bus.has_peers() {
            return;
        }
        let envelope = Envelope::new(&self.node_id, call_id, clinic_id, event);
        if let Err(e) = self.bus.publish(envelope) {
            tracing::warn!(error = %e, call_id, "bus publish failed; other nodes repair this call");
        }
    }

    /// Delivers to every call of `clinic_id` on every node (e.g. the clinic was unlinked).
    /// On the bus, an empty `call_id` means "every call of the clinic".
    pub fn publish_clinic(&self, clinic_id: &str, event: RoomEvent) {
        self.rooms.deliver_clinic(clinic_id, &event);
        if !self.bus.has_peers() {
            return;
        }
        let envelope = Envelope::new(&self.node_id, "", clinic_id, event);
        if let Err(e) = self.bus.publish(envelope) {
            tracing::warn!(error = %e, clinic_id, "bus publish failed; other nodes repair its calls");
        }
    }

    /// Starts receiving other nodes' events and keeping this node's presence entries.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) {
        self.bus.start(self.clone(), stop.clone());
        self.tracker.spawn(self.clone().keep_presence(stop));
    }

    /// Whether other nodes may share this node's calls: it keeps a shared presence record, and
    /// when it drains there may be peers to take its clients. Checked before calling the
    /// presence methods, so a lone node never even builds their futures.
    pub fn has_peers(&self) -> bool {
        self.bus.has_peers()
    }

    /// Adds joins this node turned away to the deployment's running count ([`Bus::add_turned_away`]).
    pub async fn add_turned_away(&self, n: u64) -> Result<(), crate::bus::BusError> {
        self.bus.add_turned_away(n).await
    }

    /// The deployment's running count of turned-away joins ([`Bus::turned_away`]).
    pub async fn fleet_turned_away(&self) -> Result<Option<u64>, crate::bus::BusError> {
        self.bus.turned_away().await
    }

    /// Other nodes' participants in `call_id`, for a room about to open here (its `welcome`
    /// must list them). `None` on a lone node, or if the record cannot be read in time.
    pub async fn remote_presence(&self, call_id: &str) -> Option<Presence> {
        if !self.bus.has_peers() {
            return None;
        }
        let calls = [call_id.to_owned()];
        match tokio::time::timeout(PRESENCE_WAIT, self.record.read(&calls)).await {
            Ok(Ok(mut p)) => p.pop(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, call_id, "presence not read; the next renewal fills it in");
                None
            }
            Err(_) => None,
        }
    }

    /// Waits (at most `within`) until this node hears what other nodes publish on `call_id` and
    /// its clinic ([`Bus::hears`]): a `welcome` sent after it misses nothing live while the
    /// bus connection holds. False if it did not (the room's repair brings its payments once it
    /// does; live frames meanwhile are lost).
    pub async fn hears(&self, call_id: &str, within: Duration) -> bool {
        self.bus.hears(call_id, within).await
    }

    /// Writes this node's entry for `call_id` now: on a participant's first connection here, so
    /// that a participant joining on another node a moment later finds them in its `welcome`,
    /// and on their last leaving, so that the next renewal elsewhere does not bring them back.
    /// Answers the write's number, for the join's or leave's event to carry (also when the
    /// write is slow or failed: other nodes then keep what the event said until the record
    /// holds a write at least as new).
    pub async fn share_presence(&self, call_id: &str) -> u64 {
        if !self.bus.has_peers() {
            return 0;
        }
        // Numbered before the room is read: see `PresenceStore::next_write`.
        let write = self.record.next_write();
        let entry = [(call_id.to_owned(), self.rooms.participants(call_id))];
        self.presence.written.lock().unwrap_or_else(|p| p.into_inner()).insert(call_id.to_owned());
        match tokio::time::timeout(PRESENCE_WAIT, self.record.put(&entry, self.presence.ttl, write)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, call_id, "presence not written; the next renewal writes it"),
            Err(_) => tracing::warn!(call_id, "presence write slow; the next renewal writes it"),
        }
        write
    }

    /// Adopts other nodes' entries in `call_id`'s presence record, read from `read_at` on, into
    /// its room here. What the bus said since of a node's participants is kept while the record
    /// does not yet hold that node's write of it, for at most the presence expiry.
    pub fn adopt_presence(&self, call_id: &str, presence: Presence, read_at: std::time::Instant) -> usize {
        self.rooms.sync_remote(call_id, presence, read_at, self.presence.ttl)
    }

    /// Renews this node's entries every third of the expiry, adopting the other nodes' entries
    /// into the rooms on each renewal, until `stop` ([`Hub::depart`] then removes them).
    async fn keep_presence(self: Arc<Self>, stop: CancellationToken) {
        let every = self.presence.ttl / 3;
        let mut renew = tokio::time::interval(every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = renew.tick() => self.renew_presence().await,
            }
        }
    }

    /// The node is going away (its sessions have closed): sends what the bus still holds, then
    /// removes this node's presence entries, so other nodes drop its participants at their next
    /// renewal instead of after the expiry.
    pub async fn depart(&self) {
        self.bus.flush(PRESENCE_WAIT * 4).await;
        let write = self.record.next_write();
        let written: Vec<(String, Vec<callpay_protocol::Participant>)> =
            std::mem::take(&mut *self.presence.written.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .map(|call| (call, Vec::new()))
                .collect();
        match tokio::time::timeout(PRESENCE_WAIT, self.record.put(&written, self.presence.ttl, write)).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!("presence not cleared on shutdown; it expires instead"),
        }
    }

    /// This node's entries for the calls it serves now, and removals for calls it no longer
    /// serves.
    fn own_entries(
        &self,
        calls: impl IntoIterator<Item = String>,
    ) -> Vec<(String, Vec<callpay_protocol::Participant>)> {
        let mut written = self.presence.written.lock().unwrap_or_else(|p| p.into_inner());
        calls
            .into_iter()
            .map(|call| {
                let here = self.rooms.participants(&call);
                if here.is_empty() {
                    written.remove(&call);
                } else {
                    written.insert(call.clone());
                }
                (call, here)
            })
            .collect()
    }

    async fn renew_presence(&self) {
        if !self.bus.has_peers() {
            return;
        }
        let write = self.record.next_write();
        let serving: Vec<String> = self.rooms.calls().into_iter().map(|(call, _)| call).collect();
        let gone: Vec<String> = {
            let written = self.presence.written.lock().unwrap_or_else(|p| p.into_inner());
            written.iter().filter(|c| !self.rooms.has(c)).cloned().collect()
        };
        let entries = self.own_entries(serving.iter().cloned().chain(gone));
        // In chunks spread over the first half of the period: each call's write and read are
        // Lua scripts, and thousands of them in one pipeline keep Redis (single-threaded) busy
        // for tens of milliseconds, holding up every pub/sub message behind them (it showed as
        // the cross-node relay's p99 at low rates). Every call is still renewed once a period.
        let chunks = entries.len().div_ceil(PRESENCE_CHUNK).max(serving.len().div_ceil(PRESENCE_CHUNK)).max(1);
        let pause = (self.presence.ttl / 6) / chunks as u32;
        let mut first = true;
        for (own, calls) in
            entries.chunks(PRESENCE_CHUNK).zip(serving.chunks(PRESENCE_CHUNK).chain(std::iter::repeat(&[][..])))
        {
            if !first {
                tokio::time::sleep(pause).await;
            }
            first = false;
            if let Err(e) = self.record.put(own, self.presence.ttl, write).await {
                tracing::warn!(error = %e, "presence not renewed; other nodes may drop this node's participants");
            }
            if calls.is_empty() {
                continue;
            }
            let read_at = std::time::Instant::now();
            match self.record.read(calls).await {
                Ok(presence) => {
                    for (call, nodes) in calls.iter().zip(presence) {
                        self.adopt_presence(call, nodes, read_at);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "presence not read; keeping what the rooms know"),
            }
        }
    }

    /// Repairs every local room from the store (the bus reconnected, or this node cannot tell
    /// which messages it lost): each call is compared with the store and told what changed, as
    /// [`RoomRegistry::reconcile`] says. Calls are read in chunks of [`REPAIR_CHUNK`], one
    /// chunk every [`REPAIR_PACE`], so that tens of thousands of calls do not arrive at the
    /// store at once. Nothing is re-announced on the bus: a repair reads, it never publishes,
    /// so one repair can never cause another. Presence needs no repair here: its renewal
    /// already brings back joins lost in a gap.
    ///
    /// Returns when this request's repair is done, or at once when one is already running
    /// (that one goes round again to cover this request).
    pub async fn resync_rooms(self: &Arc<Self>) {
        if !self.resync.begin() {
            return;
        }
        loop {
            self.metrics.repairs_node_wide.inc();
            let calls = self.rooms.calls();
            for (i, chunk) in calls.chunks(REPAIR_CHUNK).enumerate() {
                if i > 0 {
                    tokio::time::sleep(REPAIR_PACE).await;
                }
                let failed = self.repair_calls(chunk).await;
                self.queue_repairs(failed);
            }
            if !self.resync.round_done() {
                return;
            }
        }
    }

    /// Repairs the given local rooms from the store: two reads per chunk of calls, whatever
    /// the number of payments. Answers the calls of chunks the store failed to read (logged),
    /// for the caller to try again.
    pub async fn repair_calls(&self, calls: &[(String, String)]) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for chunk in calls.chunks(REPAIR_CHUNK) {
            let call_ids: Vec<String> = chunk.iter().map(|(c, _)| c.clone()).collect();
            let mut clinic_ids: Vec<String> = chunk.iter().map(|(_, k)| k.clone()).collect();
            clinic_ids.sort();
            clinic_ids.dedup();
            self.metrics.repaired_calls.inc_by(chunk.len() as u64);
            self.metrics.repair_store_reads.inc_by(2);
            let (payments, clinics) =
                match tokio::try_join!(self.store.payments_for_calls(&call_ids), self.store.clinics(&clinic_ids)) {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::error!(error = %e, rooms = chunk.len(), "repair failed: store unavailable; retrying");
                        failed.extend_from_slice(chunk);
                        continue;
                    }
                };
            let mut by_call: HashMap<String, Vec<Payment>> = HashMap::new();
            for p in payments {
                by_call.entry(p.call_id.clone()).or_default().push(p);
            }
            for (call_id, payments) in &by_call {
                self.rooms.reconcile(call_id, payments);
            }
            for clinic in &clinics {
                let ready = clinic.payment_readiness();
                let event = RoomEvent::ClinicUpdated { payments_available: ready.is_ok(), reason: ready.err() };
                for (call_id, _) in chunk.iter().filter(|(_, k)| *k == clinic.id) {
                    self.rooms.deliver(call_id, &event);
                }
            }
        }
        failed
    }

    /// Adds calls to the pending repairs and makes sure one task drains them.
    fn queue_repairs(self: &Arc<Self>, calls: Vec<(String, String)>) {
        if calls.is_empty() {
            return;
        }
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.calls.extend(calls);
            !std::mem::replace(&mut pending.draining, true)
        };
        if start {
            let hub = self.clone();
            self.tracker.spawn(async move { hub.drain_repairs().await });
        }
    }

    /// Repairs pending calls a chunk at a time, paced, until none is left; a chunk the store
    /// failed goes back in line and is tried again after [`REPAIR_RETRY`].
    async fn drain_repairs(self: Arc<Self>) {
        loop {
            let chunk: Vec<(String, String)> = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let keys: Vec<String> = pending.calls.keys().take(REPAIR_CHUNK).cloned().collect();
                let chunk: Vec<(String, String)> =
                    keys.into_iter().filter_map(|k| pending.calls.remove_entry(&k)).collect();
                if chunk.is_empty() {
                    pending.draining = false;
                    return;
                }
                chunk
            };
            // A room may have closed since it asked.
            let chunk: Vec<(String, String)> = chunk.into_iter().filter(|(c, _)| self.rooms.has(c)).collect();
            let failed = self.repair_calls(&chunk).await;
            let wait = if failed.is_empty() { REPAIR_PACE } else { REPAIR_RETRY };
            if !failed.is_empty() {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).calls.extend(failed);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl EnvelopeSink for Hub {
    fn deliver_remote(&self, envelope: &Envelope) {
        match &envelope.event {
            // The bus turns a gap into a repair; it is nothing to show.
            RoomEvent::Gap => {}
            RoomEvent::Joined { participant, write } => {
                self.rooms.remote_joined(&envelope.call_id, &envelope.origin, participant, *write);
            }
            RoomEvent::Left { participant, write } => {
                self.rooms.remote_left(&envelope.call_id, &envelope.origin, participant, *write);
            }
            _ if envelope.call_id.is_empty() => {
                self.rooms.deliver_clinic(&envelope.clinic_id, &envelope.event);
            }
            _ => {
                self.rooms.deliver_remote(&envelope.call_id, &envelope.event);
            }
        }
    }

    fn resync(self: Arc<Self>) {
        let hub = self.clone();
        self.tracker.spawn(async move { hub.resync_rooms().await });
    }

    fn resync_call(self: Arc<Self>, call_id: String, clinic_id: String) {
        self.resync_calls(vec![(call_id, clinic_id)]);
    }

    fn resync_calls(self: Arc<Self>, calls: Vec<(String, String)>) {
        // Only calls that still have a room here: a subscription may go live after its room
        // closed again.
        let calls: Vec<(String, String)> = calls.into_iter().filter(|(c, _)| self.rooms.has(c)).collect();
        self.queue_repairs(calls);
    }

    fn resync_clinic(self: Arc<Self>, clinic_id: String) {
        let calls: Vec<(String, String)> = self.rooms.calls().into_iter().filter(|(_, k)| *k == clinic_id).collect();
        self.resync_calls(calls);
    }
}

/// Subscribes the bus to the calls this node serves.
struct BusWatcher(Arc<dyn Bus>);

impl crate::rooms::RoomObserver for BusWatcher {
    fn opened(&self, call_id: &str, clinic_id: &str) {
        self.0.watch(call_id, clinic_id);
    }

    fn closed(&self, call_id: &str, clinic_id: &str) {
        self.0.unwatch(call_id, clinic_id);
    }
}

#[cfg(test)]
mod tests {
    use super::Resync;

    #[test]
    fn repairs_asked_for_during_a_repair_make_exactly_one_more_round() {
        let r = Resync::default();
        assert!(r.begin(), "the first request runs");
        assert!(!r.begin(), "a second while it runs does not run alongside");
        assert!(!r.begin(), "nor a third");
        assert!(r.round_done(), "the requests made meanwhile are one more round");
        assert!(!r.round_done(), "and only one");
        assert!(r.begin(), "idle again: the next request runs");
        assert!(!r.round_done());
    }
}

//! The hub's fan-out point: a room event goes to this node's members at once and to other nodes
//! over the bus. It is also the bus's sink: remote events are delivered locally, and after a gap
//! every local room is resynced from the store.

use crate::bus::{Bus, Envelope, EnvelopeSink, RoomEvent};
use crate::rooms::RoomRegistry;
use crate::store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::task::TaskTracker;

/// Publishes room events locally and across nodes.
pub struct Hub {
    /// This node's id (random per process), stamped on envelopes.
    pub node_id: String,
    /// Local rooms.
    pub rooms: Arc<RoomRegistry>,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    tracker: TaskTracker,
    resync: Arc<Resync>,
}

/// At most one resync runs at a time; a request while one runs makes it go round once more
/// (so a gap that opens during a resync is still covered), never a second concurrent one.
#[derive(Default)]
struct Resync {
    running: AtomicBool,
    again: AtomicBool,
}

impl Hub {
    /// A hub for this node. Resyncs run on `tracker`, so shutdown waits for them.
    pub fn new(
        node_id: String,
        rooms: Arc<RoomRegistry>,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        rooms.set_observer(Arc::new(BusWatcher(bus.clone())));
        Arc::new(Self { node_id, rooms, bus, store, tracker, resync: Arc::default() })
    }

    /// Delivers to local members, then queues for other nodes; never waits on the bus. A bus
    /// failure is logged: local members are already served and other nodes resync.
    pub fn publish(&self, call_id: &str, clinic_id: &str, event: RoomEvent) {
        self.rooms.deliver(call_id, &event);
        if !self.bus.has_peers() {
            return;
        }
        let envelope =
            Envelope { origin: self.node_id.clone(), call_id: call_id.into(), clinic_id: clinic_id.into(), event };
        if let Err(e) = self.bus.publish(envelope) {
            tracing::warn!(error = %e, call_id, "bus publish failed; other nodes will resync");
        }
    }

    /// Delivers to every call of `clinic_id` on every node (e.g. the clinic was unlinked).
    /// On the bus, an empty `call_id` means "every call of the clinic".
    pub fn publish_clinic(&self, clinic_id: &str, event: RoomEvent) {
        self.rooms.deliver_clinic(clinic_id, &event);
        if !self.bus.has_peers() {
            return;
        }
        let envelope =
            Envelope { origin: self.node_id.clone(), call_id: String::new(), clinic_id: clinic_id.into(), event };
        if let Err(e) = self.bus.publish(envelope) {
            tracing::warn!(error = %e, clinic_id, "bus publish failed; other nodes will resync");
        }
    }

    /// Starts receiving other nodes' events.
    pub fn start(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        self.bus.start(self.clone(), stop);
    }

    /// Re-sends what every local room may have missed during a bus gap, from the store: each
    /// payment's state, the clinic's availability, and (to other nodes) who is here. Clients keep
    /// the highest version per payment and the latest availability, so repeats are harmless.
    /// Returns when this request's resync is done, or at once when one is already running
    /// (that one goes round again to cover this request).
    pub async fn resync_rooms(&self) {
        if self.resync.running.swap(true, Ordering::AcqRel) {
            self.resync.again.store(true, Ordering::Release);
            return;
        }
        loop {
            self.resync.again.store(false, Ordering::Release);
            self.resync_once().await;
            if !self.resync.again.load(Ordering::Acquire) {
                self.resync.running.store(false, Ordering::Release);
                // A request may have arrived between the check and the release: take it.
                if !self.resync.again.load(Ordering::Acquire) || self.resync.running.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }

    /// One pass over every local room: two queries in all, whatever the number of rooms.
    async fn resync_once(&self) {
        let calls = self.rooms.calls();
        self.resync_calls(&calls, true).await;
    }

    /// Re-sends stored state to the given local rooms; `announce` also re-announces presence.
    async fn resync_calls(&self, calls: &[(String, String)], announce: bool) {
        if calls.is_empty() {
            return;
        }
        let call_ids: Vec<String> = calls.iter().map(|(c, _)| c.clone()).collect();
        let mut clinic_ids: Vec<String> = calls.iter().map(|(_, k)| k.clone()).collect();
        clinic_ids.sort();
        clinic_ids.dedup();
        let (payments, clinics) =
            match tokio::try_join!(self.store.payments_for_calls(&call_ids), self.store.clinics(&clinic_ids)) {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(error = %e, rooms = calls.len(), "resync failed: store unavailable");
                    return;
                }
            };
        for p in payments {
            let call_id = p.call_id.clone();
            self.rooms.deliver(&call_id, &RoomEvent::PaymentUpdated { payment: Box::new(p) });
        }
        for clinic in &clinics {
            let ready = clinic.payment_readiness();
            let event = RoomEvent::ClinicUpdated { payments_available: ready.is_ok(), reason: ready.err() };
            for (call_id, _) in calls.iter().filter(|(_, k)| *k == clinic.id) {
                self.rooms.deliver(call_id, &event);
            }
        }
        // A join published while other nodes were cut off is lost to them: tell them again who
        // is here. (Leaves lost in a gap need shared presence with expiry: not in this node.)
        if !announce {
            return;
        }
        for (call_id, clinic_id) in calls {
            for participant in self.rooms.participants(call_id) {
                let envelope = Envelope {
                    origin: self.node_id.clone(),
                    call_id: call_id.clone(),
                    clinic_id: clinic_id.clone(),
                    event: RoomEvent::Joined { participant },
                };
                if let Err(e) = self.bus.publish(envelope) {
                    tracing::warn!(error = %e, call_id, "presence not re-announced; bus unavailable");
                    break;
                }
            }
        }
    }
}

impl EnvelopeSink for Hub {
    fn deliver_remote(&self, envelope: &Envelope) {
        if envelope.call_id.is_empty() {
            self.rooms.deliver_clinic(&envelope.clinic_id, &envelope.event);
        } else {
            self.rooms.deliver(&envelope.call_id, &envelope.event);
        }
    }

    fn resync(self: Arc<Self>) {
        let hub = self.clone();
        self.tracker.spawn(async move { hub.resync_rooms().await });
    }

    fn resync_call(self: Arc<Self>, call_id: String, clinic_id: String) {
        let hub = self.clone();
        self.tracker.spawn(async move { hub.resync_calls(&[(call_id, clinic_id)], false).await });
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

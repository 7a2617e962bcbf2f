//! The hub's fan-out point: a room event goes to this node's members at once and to other nodes
//! over the bus. It is also the bus's sink: remote events are delivered locally, and after a gap
//! every local room is resynced from the store.

use crate::bus::{Bus, Envelope, EnvelopeSink, RoomEvent};
use crate::rooms::RoomRegistry;
use crate::store::Store;
use std::sync::Arc;

/// Publishes room events locally and across nodes.
pub struct Hub {
    /// This node's id (random per process), stamped on envelopes.
    pub node_id: String,
    /// Local rooms.
    pub rooms: Arc<RoomRegistry>,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
}

impl Hub {
    /// A hub for this node.
    pub fn new(node_id: String, rooms: Arc<RoomRegistry>, bus: Arc<dyn Bus>, store: Arc<dyn Store>) -> Arc<Self> {
        rooms.set_observer(Arc::new(BusWatcher(bus.clone())));
        Arc::new(Self { node_id, rooms, bus, store })
    }

    /// Delivers to local members, then publishes to other nodes. A bus failure is logged: local
    /// members are already served and remote nodes resync when their bus comes back.
    pub async fn publish(&self, call_id: &str, clinic_id: &str, event: RoomEvent) {
        self.rooms.deliver(call_id, &event);
        let envelope =
            Envelope { origin: self.node_id.clone(), call_id: call_id.into(), clinic_id: clinic_id.into(), event };
        if let Err(e) = self.bus.publish(&envelope).await {
            tracing::warn!(error = %e, call_id, "bus publish failed; other nodes will resync");
        }
    }

    /// Delivers to every call of `clinic_id` on every node (e.g. the clinic was unlinked).
    /// On the bus, an empty `call_id` means "every call of the clinic".
    pub async fn publish_clinic(&self, clinic_id: &str, event: RoomEvent) {
        self.rooms.deliver_clinic(clinic_id, &event);
        let envelope =
            Envelope { origin: self.node_id.clone(), call_id: String::new(), clinic_id: clinic_id.into(), event };
        if let Err(e) = self.bus.publish(&envelope).await {
            tracing::warn!(error = %e, clinic_id, "bus publish failed; other nodes will resync");
        }
    }

    /// Starts receiving other nodes' events.
    pub fn start(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        self.bus.start(self.clone(), stop);
    }

    /// Re-sends the stored state of every payment in every local room as `payment.updated`.
    /// Clients keep the highest version per payment, so repeats are harmless.
    pub async fn resync_rooms(&self) {
        resync(self.rooms.clone(), self.store.clone()).await;
    }
}

async fn resync(rooms: Arc<RoomRegistry>, store: Arc<dyn Store>) {
    for (call_id, _) in rooms.calls() {
        match store.payments_for_call(&call_id).await {
            Ok(payments) => {
                for p in payments {
                    rooms.deliver(&call_id, &RoomEvent::PaymentUpdated { payment: Box::new(p) });
                }
            }
            Err(e) => tracing::error!(error = %e, call_id, "resync failed: store unavailable"),
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

    fn resync(&self) {
        tokio::spawn(resync(self.rooms.clone(), self.store.clone()));
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

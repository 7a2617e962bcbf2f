//! Fan-out between hub instances. A room event is delivered to this node's members directly and
//! published on the [`Bus`] as an [`Envelope`] stamped with the node id; every other node
//! delivers it to its own members and ignores its own echo.
//!
//! [`MemoryBus`] connects nodes inside one process (tests, the demo); [`RedisBus`] connects
//! processes through Redis pub/sub (one server, or a Redis Cluster with sharded pub/sub),
//! subscribing to a call's channel only while this node has members in that call.
//!
//! Beside the bus, [`PresenceStore`] keeps the shared presence record: per call, each node's
//! participants with an expiry that the node renews. Both backends implement both traits.

mod link;
mod memory;
mod redis;

pub use memory::MemoryBus;
pub use redis::RedisBus;

use crate::store::Payment;
use async_trait::async_trait;
use callpay_protocol::{Participant, ProgressStage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Who other nodes have in a call, by node id (a node's own entry is never included).
pub type Presence = BTreeMap<String, NodePresence>;

/// One other node's unexpired entry in a call's presence record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePresence {
    /// The number of the write that made it (see [`PresenceStore::next_write`]).
    pub write: u64,
    /// Its participants there; empty after its last one left.
    pub participants: Vec<Participant>,
}

/// Something that happened in a call, in role-neutral form: each node renders it per recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoomEvent {
    /// A participant's first connection opened.
    Joined {
        /// Who.
        participant: Participant,
        /// The number of the presence write that records it on the publishing node (0: none,
        /// or a node from before numbering). A node reading the record compares it with the
        /// entry's, so a slow write cannot undo the join it already heard of.
        #[serde(default, skip_serializing_if = "is_zero")]
        write: u64,
    },
    /// A participant's last connection closed.
    Left {
        /// Who.
        participant: Participant,
        /// As for [`RoomEvent::Joined`].
        #[serde(default, skip_serializing_if = "is_zero")]
        write: u64,
    },
    /// A new payment request (status `requested`, or `creating` for clinicians only).
    PaymentRequested {
        /// The payment.
        payment: Box<Payment>,
    },
    /// A payment changed.
    PaymentUpdated {
        /// The payment.
        payment: Box<Payment>,
    },
    /// A payment was confirmed by Stripe (once per payment).
    PaymentConfirmed {
        /// The payment.
        payment: Box<Payment>,
    },
    /// The patient's progress, for clinicians.
    Progress {
        /// Payment.
        payment_id: String,
        /// Stage.
        stage: ProgressStage,
        /// Patient.
        participant_id: String,
    },
    /// Not a change: the publisher lost events it had numbered for this channel (Redis was
    /// down, its queue overflowed). Receivers repair the call (or the clinic's calls) from the
    /// store; it is never shown to members.
    Gap,
    /// Whether the clinic can take new payments changed.
    ClinicUpdated {
        /// Available now?
        payments_available: bool,
        /// Why not, as a code the pages word in their language. Read leniently: nodes from
        /// before the code (a rolling deploy) send free text, which reads as no code rather than
        /// making the whole envelope unreadable.
        #[serde(default, deserialize_with = "lenient_code")]
        reason: Option<callpay_protocol::ErrorCode>,
    },
}

/// An error code, or `None` for anything that is not one (older nodes' free-text reasons).
fn lenient_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<callpay_protocol::ErrorCode>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    Ok(raw.and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok()))
}

/// A room event on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The node that published it. Node ids are random per process start, so the origin is
    /// also the epoch of its sequence numbers: a restarted node is a new origin counting anew.
    pub origin: String,
    /// The call.
    pub call_id: String,
    /// The clinic the call belongs to (lets nodes route clinic-wide changes).
    pub clinic_id: String,
    /// This origin's number for the envelope on its channel (the call's, or the clinic's for
    /// clinic-wide events), counting 1, 2, 3…: a receiver that sees a number skipped knows it
    /// lost that channel's messages, and repairs that call alone. 0: not numbered (the
    /// in-process bus, or a node from before numbering).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// What happened.
    pub event: RoomEvent,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Envelope {
    /// An unnumbered envelope (the bus numbers it when it publishes).
    pub fn new(origin: &str, call_id: &str, clinic_id: &str, event: RoomEvent) -> Self {
        Self { origin: origin.to_owned(), call_id: call_id.to_owned(), clinic_id: clinic_id.to_owned(), seq: 0, event }
    }
}

/// Bus failures. Local members have already been served when a publish fails; only other
/// nodes miss the event, and they resync from the store when their bus reconnects.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus backend is unreachable.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Receives envelopes published by other nodes.
pub trait EnvelopeSink: Send + Sync + 'static {
    /// Delivers a remote envelope to local members.
    fn deliver_remote(&self, envelope: &Envelope);
    /// Called after a gap in delivery (lag, reconnect): local rooms must resync from the store.
    fn resync(self: std::sync::Arc<Self>);
    /// Called once this node's subscription to `call_id` is live (events other nodes published
    /// before that are lost to it), or when a message for it was lost: that room must resync
    /// from the store.
    fn resync_call(self: std::sync::Arc<Self>, call_id: String, clinic_id: String);
    /// [`EnvelopeSink::resync_call`] for many calls at once (a batch of subscriptions went
    /// live): one repair, read from the store in chunks.
    fn resync_calls(self: std::sync::Arc<Self>, calls: Vec<(String, String)>) {
        for (call_id, clinic_id) in calls {
            self.clone().resync_call(call_id, clinic_id);
        }
    }
    /// A clinic-wide message was lost: every local call of `clinic_id` must resync.
    fn resync_clinic(self: std::sync::Arc<Self>, _clinic_id: String) {
        self.resync();
    }
}

/// Cross-node publish/subscribe.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands an envelope to other nodes without waiting for them: it is queued (bounded) and
    /// sent in the background, so a slow bus never stalls local delivery. An error means it
    /// was not queued; other nodes then learn of the gap and resync.
    fn publish(&self, envelope: Envelope) -> Result<(), BusError>;
    /// Whether any other node may be listening (false spares building envelopes on one node).
    fn has_peers(&self) -> bool {
        true
    }
    /// Where to record publish latency (a bus without a network has none to record).
    fn observe_with(&self, _metrics: std::sync::Arc<crate::metrics::Metrics>) {}
    /// Starts delivering other nodes' envelopes to `sink` until `stop` is cancelled.
    fn start(&self, sink: std::sync::Arc<dyn EnvelopeSink>, stop: tokio_util::sync::CancellationToken);
    /// This node now has members in `call_id` (of `clinic_id`): receive its events.
    /// Must not block: called from the room registry.
    fn watch(&self, _call_id: &str, _clinic_id: &str) {}
    /// This node no longer has members in `call_id`.
    fn unwatch(&self, _call_id: &str, _clinic_id: &str) {}
    /// Waits (at most `within`) until this node hears `call_id`: the bus has confirmed this
    /// node's subscriptions to the call's envelopes and its clinic's, so what another node
    /// publishes on them from then on reaches this node's sink (while the connection stays up;
    /// a lost connection is repaired from the store). False if not within `within`, or if
    /// the node knows it is cut off from the bus. A bus that delivers in-process always hears.
    async fn hears(&self, _call_id: &str, _within: Duration) -> bool {
        true
    }
    /// Waits (at most `within`) until what was handed to [`Bus::publish`] has been sent: a
    /// stopping node's last events (its participants leaving) are not lost with the process.
    async fn flush(&self, _within: Duration) {}
    /// Adds `n` joins this node turned away (shed with a time to retry, or refused at a cap) to
    /// the running count every node of the deployment shares. A draining node reads it to let
    /// its clients go no faster than the rest of the fleet takes them (`crate::pacing::drain`).
    async fn add_turned_away(&self, _n: u64) -> Result<(), BusError> {
        Ok(())
    }
    /// The deployment's running count of turned-away joins; `None` for a bus with no fleet.
    async fn turned_away(&self) -> Result<Option<u64>, BusError> {
        Ok(None)
    }
}

/// The shared presence record: per call, each node's participants, each entry valid until an
/// expiry judged by the record itself (not by any node's clock). Bus events say at once who
/// joined or left; the record repairs what events cannot, such as a node that died without
/// saying goodbye. Kept apart from [`Bus`] (pub/sub) as Centrifugo keeps its broker and its
/// presence manager apart: either can change without the other.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// A number for a write about to be made. Take it *before* reading the participants to
    /// write: the record refuses a write numbered lower than the one it holds for this node,
    /// so a renewal that read a room just before a leave can never bring the leaver back.
    fn next_write(&self) -> u64;
    /// Writes this node's participants in each call, valid for `ttl` unless written again. An
    /// empty list says this node has nobody there (kept until it expires, so an older write
    /// cannot undo it).
    async fn put(&self, calls: &[(String, Vec<Participant>)], ttl: Duration, write: u64) -> Result<(), BusError>;
    /// Other nodes' unexpired entries for each call, in the order asked.
    async fn read(&self, call_ids: &[String]) -> Result<Vec<Presence>, BusError>;
}

/// One node's entry in a call's presence record, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PresenceEntry {
    /// Unix milliseconds after which the entry no longer counts, by the record's own clock
    /// (Redis's `TIME`; the process's clock for the in-process record).
    expires_ms: u64,
    /// The writing node's write number (see [`PresenceStore::next_write`]).
    #[serde(default)]
    n: u64,
    participants: Vec<Participant>,
}

/// Now, in Unix milliseconds, by this machine's clock (shifted by the test-only
/// `CALLPAY_FAULT_CLOCK_SKEW_MS`, see [`crate::faults`]).
fn now_ms() -> u64 {
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    (wall + crate::faults::clock_skew_ms()).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use callpay_protocol::ErrorCode;

    fn clinic_updated(reason: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "origin": "node_old", "call_id": "", "clinic_id": "c1",
            "event": {"kind": "clinic_updated", "payments_available": false, "reason": reason}
        })
    }

    /// A rolling deploy mixes nodes from before presence write numbers with nodes after: each
    /// reads the other's join and leave events (an unnumbered one reads as write 0).
    #[test]
    fn join_events_are_read_across_the_numbering_change() {
        let pat = serde_json::json!({"id": "pat", "name": "Pat", "role": "patient"});
        let old: Envelope = serde_json::from_value(serde_json::json!({
            "origin": "node_old", "call_id": "c", "clinic_id": "k",
            "event": {"kind": "joined", "participant": pat}
        }))
        .expect("an older node's join is readable");
        let RoomEvent::Joined { write, .. } = old.event else { panic!("a join") };
        assert_eq!(write, 0);
        let participant: Participant = serde_json::from_value(pat).unwrap();
        let new = Envelope::new("n", "c", "k", RoomEvent::Left { participant, write: 7 });
        let sent = serde_json::to_value(&new).unwrap();
        assert_eq!(sent["event"]["write"], 7);
        // What an older node's type (no `write` field) makes of it: the participant, as before.
        #[derive(Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum OlderEvent {
            Left { participant: Participant },
        }
        let OlderEvent::Left { participant } = serde_json::from_value(sent["event"].clone()).unwrap();
        assert_eq!(participant.id, "pat");
    }

    #[test]
    fn a_clinic_update_from_a_node_older_than_reason_codes_is_still_read() {
        let old: Envelope =
            serde_json::from_value(clinic_updated("The clinic's Stripe account was disconnected.".into()))
                .expect("an older node's envelope is readable");
        assert_eq!(old.event, RoomEvent::ClinicUpdated { payments_available: false, reason: None });
        let new: Envelope = serde_json::from_value(clinic_updated("stripe_not_connected".into())).unwrap();
        assert_eq!(
            new.event,
            RoomEvent::ClinicUpdated { payments_available: false, reason: Some(ErrorCode::StripeNotConnected) }
        );
        let none: Envelope = serde_json::from_value(clinic_updated(serde_json::Value::Null)).unwrap();
        assert_eq!(none.event, RoomEvent::ClinicUpdated { payments_available: false, reason: None });
        // What this node sends, an older node (reason: String) reads as text.
        let sent = serde_json::to_value(&new).unwrap();
        assert_eq!(sent["event"]["reason"], "stripe_not_connected");
    }
}

//! Per-call rooms: who is connected to each call on this node, what a relay needs to know about
//! the call's payments, and fan-out of room events to them as shared encoded frames. Domain
//! state only: synchronous, no I/O, and no lock is ever held across an `.await` (the room's
//! mutex guards a member map, the payments' routing state and a counter; every critical section
//! is a loop of non-blocking `try_send`s).
//!
//! The routing state (each payment's status and version) is kept current by the same events
//! that are fanned out, and seeded from the store when a connection's snapshot is read, so a
//! relayed `payment.progress` is checked without touching the store or another thread.
//!
//! Presence spans nodes: a room also knows who other nodes have in the call (from their bus
//! events and the shared presence record, see [`crate::hub`]), so `welcome` lists everyone and
//! members hear `participant.joined`/`left` exactly when the set they see changes.

pub mod outbound;
pub mod view;

pub use outbound::{Next, Outbound, OutboundRx};

use crate::bus::{Presence, RoomEvent};
use crate::rooms::view::{encode, payment_view, visible_to};
use crate::store::Payment;
use bytes::Bytes;
use callpay_protocol::{Participant, PaymentStatus, ProgressStage, Role, ServerMsg};
use dashmap::DashMap;
use foldhash::fast::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Told when a call gains its first or loses its last member on this node (the bus uses it to
/// subscribe only to calls it serves). Called under the room map's shard lock, so calls for one
/// room arrive in order; implementations must not block.
pub trait RoomObserver: Send + Sync + 'static {
    /// The call now has members here.
    fn opened(&self, call_id: &str, clinic_id: &str);
    /// The call has no members here any more.
    fn closed(&self, call_id: &str, clinic_id: &str);
}

/// All rooms with members on this node.
pub struct RoomRegistry {
    /// Keyed with foldhash: SipHash showed in the relay profile, and call ids come from
    /// platform-signed tokens, not from anonymous clients.
    rooms: DashMap<String, Arc<Room>, RandomState>,
    next_conn: AtomicU64,
    publishable_key: String,
    observer: std::sync::OnceLock<Arc<dyn RoomObserver>>,
    /// Connections one participant may hold in one call; a further one replaces the oldest.
    max_per_participant: std::sync::atomic::AtomicUsize,
}

/// One call's members on this node.
pub struct Room {
    clinic_id: String,
    inner: Mutex<RoomInner>,
}

struct RoomInner {
    seq: u64,
    members: HashMap<u64, Member, RandomState>,
    /// What routing and authorising a relay needs about each known payment, and the patient's
    /// last reported stage (for the `welcome` of a page that reloads).
    payments: HashMap<String, Known, RandomState>,
    /// Who other nodes have in this call, by node id.
    remote: BTreeMap<String, Remote>,
}

/// What a room knows of one other node's participants in its call.
#[derive(Debug)]
struct Remote {
    participants: Vec<Participant>,
    /// When it was last learnt (from the bus, or a read of the presence record).
    learnt: Instant,
    /// The highest presence write number bus events about it carried since it was last read
    /// from the record (0: none, or only from nodes from before numbering).
    announced: u64,
}

/// A payment as a room knows it.
#[derive(Debug, Clone, Copy)]
struct Known {
    status: PaymentStatus,
    version: i64,
    /// The patient's last progress stage since the status last changed.
    stage: Option<ProgressStage>,
    /// Whether this room's members have been told it is paid (a `payment.confirmed`, or a
    /// snapshot that already showed it paid): the notice is given once per payment and room.
    confirmed: bool,
}

/// Statuses in which the patient may still be paying (a failed payment can be retried).
fn payable(status: PaymentStatus) -> bool {
    matches!(status, PaymentStatus::Requested | PaymentStatus::Authenticating | PaymentStatus::Failed)
}

/// Statuses a payment reaches only by having been paid.
fn paid(status: PaymentStatus) -> bool {
    matches!(status, PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded)
}

/// Changed payments a repair sends as individual events; more go as one `payment.sync` frame,
/// so a repair can never fill a client's outbound queue (64 frames by default) on its own.
const REPAIR_FRAMES: usize = 8;

/// What a room made of a copy of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Learnt {
    /// Not newer than what the room knew.
    Stale,
    /// Newer; `confirm`: it is paid and the room's members were never told so.
    Newer { confirm: bool },
}

impl RoomInner {
    /// Keeps the newest known state of a payment (versions only grow). A new status forgets
    /// the stage reported under the old one.
    fn remember(&mut self, p: &Payment) -> Learnt {
        let fresh = Known { status: p.status, version: p.version, stage: None, confirmed: paid(p.status) };
        match self.payments.get_mut(&p.id) {
            Some(known) if known.version >= p.version => Learnt::Stale,
            Some(known) => {
                let stage = if known.status == p.status { known.stage } else { None };
                // The notice is for a payment that became paid; one already refunded by the time
                // the room hears of it is an update (and is never confirmed later).
                let confirm = p.status == PaymentStatus::Succeeded && !known.confirmed;
                *known = Known { stage, confirmed: known.confirmed || fresh.confirmed, ..fresh };
                Learnt::Newer { confirm }
            }
            None => {
                // A payment the room never knew: its members were never shown it unpaid (a
                // room learns every payment from its first member's `welcome`, or live), so
                // there is no notice they missed. Seeding a room must not raise one either.
                self.payments.insert(p.id.clone(), fresh);
                Learnt::Newer { confirm: false }
            }
        }
    }
}

/// Why a patient's progress report cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressRefusal {
    /// No payment of that id in this call.
    UnknownPayment,
    /// The payment is not waiting to be paid.
    NotPayable,
}

struct Member {
    participant: Participant,
    out: Outbound,
}

/// What joining gives a connection.
pub struct Joined {
    /// Keeps the connection in the room until dropped or [`Membership::leave`] is called.
    pub membership: Membership,
    /// The room's counter at the moment of joining; later events have a larger `seq`.
    pub seq: u64,
    /// Everyone in the call as far as this node knows (here, or on other nodes), the new member
    /// included.
    pub participants: Vec<Participant>,
    /// Whether this is the participant's first connection on this node (others should hear they
    /// joined, and this node's presence record needs writing).
    pub first_connection: bool,
}

impl RoomRegistry {
    /// An empty registry. Patients' payment copies carry `publishable_key` for Stripe.js.
    pub fn new(publishable_key: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            rooms: DashMap::with_hasher(RandomState::default()),
            next_conn: AtomicU64::new(1),
            publishable_key: publishable_key.into(),
            observer: std::sync::OnceLock::new(),
            max_per_participant: std::sync::atomic::AtomicUsize::new(usize::MAX),
        })
    }

    /// Limits the connections one participant may hold in one call (set at start-up): joining
    /// beyond it closes that participant's oldest connection, so a reload always works but one
    /// token cannot fill the hub.
    pub fn set_max_per_participant(&self, max: usize) {
        self.max_per_participant.store(max.max(1), Ordering::Relaxed);
    }

    /// Connections in `call_id` on this node.
    pub fn members(&self, call_id: &str) -> usize {
        self.rooms.get(call_id).map_or(0, |r| r.inner.lock().unwrap_or_else(|p| p.into_inner()).members.len())
    }

    /// Sets the observer (once, at start-up).
    pub fn set_observer(&self, observer: Arc<dyn RoomObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Adds a connection to `call_id`'s room, creating the room if needed.
    pub fn join(self: &Arc<Self>, call_id: &str, clinic_id: &str, participant: Participant, out: Outbound) -> Joined {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        // The member is inserted while the map's shard lock is held (the entry guard), so it
        // cannot land in a room that a concurrent last `leave` removes: that removal re-checks
        // emptiness under the same shard lock (`remove_if`). Lock order: shard, then room.
        let entry = self.rooms.entry(call_id.to_owned()).or_insert_with(|| {
            if let Some(o) = self.observer.get() {
                o.opened(call_id, clinic_id);
            }
            Arc::new(Room {
                clinic_id: clinic_id.to_owned(),
                inner: Mutex::new(RoomInner {
                    seq: 0,
                    members: HashMap::default(),
                    payments: HashMap::default(),
                    remote: BTreeMap::new(),
                }),
            })
        });
        let mut inner = entry.inner.lock().unwrap_or_else(|p| p.into_inner());
        let first_connection = !inner.members.values().any(|m| m.participant.id == participant.id);
        let mut own: Vec<(u64, &Member)> =
            inner.members.iter().filter(|(_, m)| m.participant.id == participant.id).map(|(k, m)| (*k, m)).collect();
        if own.len() >= self.max_per_participant.load(Ordering::Relaxed) {
            own.sort_by_key(|(k, _)| *k);
            if let Some((_, oldest)) = own.first() {
                oldest.out.replace();
            }
        }
        inner.members.insert(conn, Member { participant: participant.clone(), out });
        let participants = inner.visible();
        let seq = inner.seq;
        drop(inner);
        drop(entry);
        Joined {
            membership: Membership {
                registry: self.clone(),
                call_id: call_id.to_owned(),
                conn,
                participant,
                left: false,
            },
            seq,
            participants,
            first_connection,
        }
    }

    /// Delivers a room event to this node's members of `call_id`; returns how many got it.
    pub fn deliver(&self, call_id: &str, event: &RoomEvent) -> usize {
        let Some(room) = self.rooms.get(call_id).map(|r| r.clone()) else { return 0 };
        room.broadcast(event, &self.publishable_key)
    }

    /// Delivers an event another node published to this node's members of `call_id`, as
    /// [`RoomRegistry::deliver`] does, except that a payment copy no newer than the room knows is
    /// dropped: the room has shown that version already (a repair got there first, or the origin
    /// retried its publish after a Redis outage), and versions only grow. Local events are not
    /// filtered that way: the answer to a retried request is the same version again, and the
    /// clinician who retried waits for it.
    pub fn deliver_remote(&self, call_id: &str, event: &RoomEvent) -> usize {
        let Some(room) = self.rooms.get(call_id).map(|r| r.clone()) else { return 0 };
        let mut inner = room.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let RoomEvent::PaymentRequested { payment } | RoomEvent::PaymentUpdated { payment } = event
            && inner.payments.get(&payment.id).is_some_and(|known| known.version >= payment.version)
        {
            return 0;
        }
        inner.broadcast(event, &self.publishable_key)
    }

    /// Delivers to every local room of `clinic_id`.
    pub fn deliver_clinic(&self, clinic_id: &str, event: &RoomEvent) -> usize {
        let rooms: Vec<Arc<Room>> = self.rooms.iter().filter(|r| r.clinic_id == clinic_id).map(|r| r.clone()).collect();
        rooms.iter().map(|room| room.broadcast(event, &self.publishable_key)).sum()
    }

    /// Brings a room up to the store: every payment in `payments` newer than the room knows is
    /// sent to its members as the event it was (`payment.requested` for a request the room never
    /// knew that is still unpaid and untouched, `payment.updated` otherwise, and
    /// `payment.confirmed` for one that became paid), or, past
    /// [`REPAIR_FRAMES`] changes, as one `payment.sync` frame.
    /// Older copies change nothing, so repeating a repair sends nothing twice. Answers how many
    /// frames were queued.
    pub fn reconcile(&self, call_id: &str, payments: &[Payment]) -> usize {
        let Some(room) = self.rooms.get(call_id).map(|r| r.clone()) else { return 0 };
        let mut inner = room.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.repair(payments, None, &self.publishable_key)
    }

    /// Seeds a room's routing state from the snapshot `membership`'s `welcome` is built from
    /// (newer versions win, so events that arrived meanwhile are kept). What the snapshot shows
    /// newer than the room knew is also news to the room's other members, who get it as
    /// [`RoomRegistry::reconcile`] sends it; the joining connection has it in its `welcome`.
    /// Answers the patient's last stage for each payment still payable, by id, and the room's
    /// sequence number once seeded: frames up to it were made before the room held the
    /// snapshot, and may be older than what the joining connection's `welcome` shows.
    pub fn remember_payments(
        &self,
        membership: &Membership,
        payments: &[Payment],
    ) -> (BTreeMap<String, ProgressStage>, u64) {
        let Some(room) = self.rooms.get(&membership.call_id).map(|r| r.clone()) else { return (BTreeMap::new(), 0) };
        let mut inner = room.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.repair(payments, Some(membership.conn), &self.publishable_key);
        let progress = inner
            .payments
            .iter()
            .filter(|(_, k)| payable(k.status))
            .filter_map(|(id, k)| Some((id.clone(), k.stage?)))
            .collect();
        (progress, inner.seq)
    }

    /// Whether a patient may report progress on `payment_id` in `call_id` now: the payment is
    /// this call's and waits to be paid. Answered from memory.
    pub fn check_progress(&self, call_id: &str, payment_id: &str) -> Result<(), ProgressRefusal> {
        let Some(room) = self.rooms.get(call_id).map(|r| r.clone()) else {
            return Err(ProgressRefusal::UnknownPayment);
        };
        let inner = room.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.payments.get(payment_id) {
            None => Err(ProgressRefusal::UnknownPayment),
            Some(k) if payable(k.status) => Ok(()),
            Some(_) => Err(ProgressRefusal::NotPayable),
        }
    }

    /// Calls on this node with a payment that waits on Stripe (requested, authenticating,
    /// processing, or failed and open to a retry), from the rooms' routing state: what the
    /// verify sweep needs to look at.
    pub fn calls_awaiting_stripe(&self) -> Vec<String> {
        // Failed counts: the patient may retry, and a retry can go straight to paid.
        let waits = |k: &Known| payable(k.status) || k.status == PaymentStatus::Processing;
        self.rooms
            .iter()
            .filter(|r| r.inner.lock().unwrap_or_else(|p| p.into_inner()).payments.values().any(waits))
            .map(|r| r.key().clone())
            .collect()
    }

    /// The current event counter of a room (0 if nobody is here).
    pub fn seq(&self, call_id: &str) -> u64 {
        self.rooms.get(call_id).map(|r| r.clone()).map_or(0, |r| r.inner.lock().unwrap_or_else(|p| p.into_inner()).seq)
    }

    /// Calls with members on this node, with their clinic.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.rooms.iter().map(|r| (r.key().clone(), r.clinic_id.clone())).collect()
    }

    /// The distinct participants connected to `call_id` on this node.
    pub fn participants(&self, call_id: &str) -> Vec<Participant> {
        let Some(room) = self.rooms.get(call_id).map(|r| r.clone()) else { return Vec::new() };
        let inner = room.inner.lock().unwrap_or_else(|p| p.into_inner());
        unique_participants(&inner.members)
    }

    /// Everyone in `call_id` as this node knows it: here, or on other nodes.
    pub fn visible(&self, call_id: &str) -> Vec<Participant> {
        let Some(room) = self.rooms.get(call_id).map(|r| r.clone()) else { return Vec::new() };
        room.inner.lock().unwrap_or_else(|p| p.into_inner()).visible()
    }

    /// Whether this node has a room for `call_id`.
    pub fn has(&self, call_id: &str) -> bool {
        self.rooms.contains_key(call_id)
    }

    /// The clinic of `call_id`'s room here, if it has one. A room is opened only by a join
    /// whose call was bound to that clinic in the store, and a binding never changes, so this
    /// is the call's binding without asking the store.
    pub fn clinic_of(&self, call_id: &str) -> Option<String> {
        self.rooms.get(call_id).map(|r| r.clinic_id.clone())
    }

    /// Another node says `participant` joined there.
    /// `write` is the number of the presence write that records it there (0: unknown).
    pub fn remote_joined(&self, call_id: &str, node: &str, participant: &Participant, write: u64) -> usize {
        self.change_remote(call_id, |remote| {
            let there = remote.entry(node.to_owned()).or_insert_with(|| Remote {
                participants: Vec::new(),
                learnt: Instant::now(),
                announced: 0,
            });
            there.learnt = Instant::now();
            there.announced = there.announced.max(write);
            if !there.participants.iter().any(|p| p.id == participant.id) {
                there.participants.push(participant.clone());
            }
        })
    }

    /// Another node says `participant` left there (its last connection there closed).
    /// `write` as for [`RoomRegistry::remote_joined`].
    pub fn remote_left(&self, call_id: &str, node: &str, participant: &Participant, write: u64) -> usize {
        self.change_remote(call_id, |remote| {
            // An emptied entry stays, as a record that the node has nobody here any more that is
            // newer than the presence record may be, for as long as `sync_remote` keeps bus news
            // (made empty if the room knew nothing of the node: a record read later may still
            // list the leaver).
            let there = remote.entry(node.to_owned()).or_insert_with(|| Remote {
                participants: Vec::new(),
                learnt: Instant::now(),
                announced: 0,
            });
            there.participants.retain(|p| p.id != participant.id);
            there.learnt = Instant::now();
            there.announced = there.announced.max(write);
        })
    }

    /// Adopts the shared presence record, read from `read_at` on, as what this room knows of
    /// other nodes (the periodic repair: a crashed node's entry has expired out of it, and a
    /// leave lost in a bus gap is no longer listed). What the bus said of a node is kept over
    /// its entry when it is newer:
    /// - it carries a write number above the entry's (the join's or leave's own presence write
    ///   has not landed when the record was read: it travels on another connection);
    /// - the record has no entry for the node, and the bus spoke of it after `read_at`, or
    ///   carried a write number less than `unwritten_for` (the presence expiry) ago: the write
    ///   may yet land, and an entry written then would not expire sooner;
    /// - it carries no number (a node from before numbering) and was learnt after `read_at`.
    pub fn sync_remote(&self, call_id: &str, presence: Presence, read_at: Instant, unwritten_for: Duration) -> usize {
        self.change_remote(call_id, move |remote| {
            let mut presence = presence;
            let mut kept = BTreeMap::new();
            for (node, known) in std::mem::take(remote) {
                let newer = match presence.get(&node) {
                    Some(entry) if known.announced > 0 => known.announced > entry.write,
                    Some(_) => known.learnt > read_at,
                    None => {
                        known.learnt > read_at
                            || (known.announced > 0 && read_at.saturating_duration_since(known.learnt) < unwritten_for)
                    }
                };
                if newer {
                    presence.remove(&node);
                    kept.insert(node, known);
                }
            }
            // Entries the record holds for nodes with nobody here say nothing the room needs;
            // kept bus entries stay even when empty, as a leave newer than the record.
            *remote = presence
                .into_iter()
                .filter(|(_, e)| !e.participants.is_empty())
                .map(|(node, e)| (node, Remote { participants: e.participants, learnt: read_at, announced: 0 }))
                .collect();
            remote.extend(kept);
        })
    }

    /// Applies `change` to a room's remote presence and tells its members who appeared or went.
    fn change_remote(&self, call_id: &str, change: impl FnOnce(&mut BTreeMap<String, Remote>)) -> usize {
        let Some(room) = self.rooms.get(call_id).map(|r| r.clone()) else { return 0 };
        let mut inner = room.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = inner.visible();
        change(&mut inner.remote);
        let after = inner.visible();
        let mut sent = 0;
        for p in after.iter().filter(|p| !before.iter().any(|b| b.id == p.id)) {
            sent += inner.fan_out(&RoomEvent::Joined { participant: p.clone(), write: 0 }, &self.publishable_key);
        }
        for p in before.iter().filter(|b| !after.iter().any(|p| p.id == b.id)) {
            sent += inner.fan_out(&RoomEvent::Left { participant: p.clone(), write: 0 }, &self.publishable_key);
        }
        sent
    }

    /// Open connections on this node.
    pub fn connections(&self) -> usize {
        self.rooms.iter().map(|r| r.inner.lock().unwrap_or_else(|p| p.into_inner()).members.len()).sum()
    }

    fn leave(&self, call_id: &str, conn: u64, participant_id: &str) -> bool {
        let Some(room) = self.rooms.get(call_id).map(|r| r.clone()) else { return false };
        let (empty, last_of_participant) = {
            let mut inner = room.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.members.remove(&conn);
            let last = !inner.members.values().any(|m| m.participant.id == participant_id);
            (inner.members.is_empty(), last)
        };
        if empty {
            // Re-checked under the map's shard lock, so a concurrent join is never dropped.
            self.rooms.remove_if(call_id, |_, r| {
                let empty = r.inner.lock().unwrap_or_else(|p| p.into_inner()).members.is_empty();
                if empty && let Some(o) = self.observer.get() {
                    o.closed(call_id, &r.clinic_id);
                }
                empty
            });
        }
        last_of_participant
    }
}

impl Room {
    fn broadcast(&self, event: &RoomEvent, publishable_key: &str) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).broadcast(event, publishable_key)
    }
}

impl RoomInner {
    /// Everyone in the call as this node knows it: local members first (in joining order), then
    /// other nodes' participants not also here.
    fn visible(&self) -> Vec<Participant> {
        let mut seen = unique_participants(&self.members);
        for p in self.remote.values().flat_map(|r| &r.participants) {
            if !seen.iter().any(|s| s.id == p.id) {
                seen.push(p.clone());
            }
        }
        seen
    }

    /// Fans out an event published on this node or another; see [`RoomInner::fan_out`].
    fn broadcast(&mut self, event: &RoomEvent, publishable_key: &str) -> usize {
        // A participant also present through another node was never gone, or was already here,
        // for the members: a join or leave of theirs on this node changes nothing they see.
        if let RoomEvent::Joined { participant, .. } | RoomEvent::Left { participant, .. } = event
            && self.remote.values().flat_map(|r| &r.participants).any(|p| p.id == participant.id)
        {
            return 0;
        }
        self.fan_out(event, publishable_key)
    }

    /// Updates the routing state from `event` and sends it to every member that may see it.
    ///
    /// `payment.confirmed` is given once per payment and room, however the room learns that
    /// the payment is paid: a newer copy that is paid and was never announced as such brings
    /// its own `payment.confirmed` after the update (a change that reached this room only
    /// through a repair is still the confirmation it was), and a `payment.confirmed` the room
    /// already gave is not given again (the bus's copy arriving after a repair).
    fn fan_out(&mut self, event: &RoomEvent, publishable_key: &str) -> usize {
        self.fan_out_except(event, None, publishable_key)
    }

    fn fan_out_except(&mut self, event: &RoomEvent, except: Option<u64>, publishable_key: &str) -> usize {
        match event {
            RoomEvent::PaymentRequested { payment } | RoomEvent::PaymentUpdated { payment } => {
                let learnt = self.remember(payment);
                let sent = self.send(event, except, publishable_key);
                if learnt == (Learnt::Newer { confirm: true }) {
                    let confirmed = RoomEvent::PaymentConfirmed { payment: payment.clone() };
                    return sent + self.send(&confirmed, except, publishable_key);
                }
                sent
            }
            RoomEvent::PaymentConfirmed { payment } => {
                let told = self.payments.get(&payment.id).is_some_and(|k| k.confirmed);
                self.remember(payment);
                if let Some(known) = self.payments.get_mut(&payment.id) {
                    known.confirmed = true;
                }
                if told { 0 } else { self.send(event, except, publishable_key) }
            }
            RoomEvent::Progress { payment_id, stage, .. } => {
                if let Some(known) = self.payments.get_mut(payment_id) {
                    known.stage = Some(*stage);
                }
                self.send(event, except, publishable_key)
            }
            _ => self.send(event, except, publishable_key),
        }
    }

    /// Sends `event` to every member but `except` that may see it, as the next frame of the
    /// room's sequence.
    fn send(&mut self, event: &RoomEvent, except: Option<u64>, publishable_key: &str) -> usize {
        self.seq += 1;
        let seq = self.seq;
        // Rendered at most once per role, then shared by every member of that role.
        let mut rendered: [Option<Option<Bytes>>; 2] = [None, None];
        let mut sent = 0;
        for (conn, member) in &self.members {
            if Some(*conn) == except {
                continue;
            }
            let role = member.participant.role;
            let slot = &mut rendered[role as usize];
            let frame = slot.get_or_insert_with(|| render(event, role, seq, publishable_key));
            if let Some(frame) = frame
                && member.out.push(frame.clone())
            {
                sent += 1;
            }
        }
        sent
    }

    /// Brings the room up to `payments` (see [`RoomRegistry::reconcile`]), telling every member
    /// but `except`.
    fn repair(&mut self, payments: &[Payment], except: Option<u64>, publishable_key: &str) -> usize {
        let newer: Vec<&Payment> =
            payments.iter().filter(|p| self.payments.get(&p.id).is_none_or(|k| k.version < p.version)).collect();
        let audience = self.members.keys().any(|conn| Some(*conn) != except);
        if !audience {
            // Nobody to tell: the copies only seed the routing state (a room's first member
            // has them all in its `welcome`).
            for p in newer {
                self.remember(p);
            }
            return 0;
        }
        if newer.len() <= REPAIR_FRAMES {
            return newer
                .into_iter()
                .map(|p| {
                    // A request the members never heard of, still waiting to be paid, is the
                    // request: the bus's late copy of it is then dropped as stale. (One still
                    // being created is an update: live, its request comes once it is payable.)
                    let payment = Box::new(p.clone());
                    let unheard = !self.payments.contains_key(&p.id);
                    let event = if unheard && p.status == PaymentStatus::Requested {
                        RoomEvent::PaymentRequested { payment }
                    } else {
                        RoomEvent::PaymentUpdated { payment }
                    };
                    self.fan_out_except(&event, except, publishable_key)
                })
                .sum();
        }
        let mut confirmed = Vec::new();
        for p in &newer {
            if let Learnt::Newer { confirm: true } = self.remember(p) {
                confirmed.push(p.id.clone());
            }
        }
        self.seq += 1;
        let seq = self.seq;
        let mut rendered: [Option<Bytes>; 2] = [None, None];
        let mut sent = 0;
        for (conn, member) in &self.members {
            if Some(*conn) == except {
                continue;
            }
            let role = member.participant.role;
            let frame = rendered[role as usize].get_or_insert_with(|| {
                let views =
                    newer.iter().filter(|p| visible_to(p, role)).map(|p| payment_view(p, role, publishable_key));
                encode(seq, ServerMsg::PaymentSync { payments: views.collect(), confirmed: confirmed.clone() })
            });
            if member.out.push(frame.clone()) {
                sent += 1;
            }
        }
        sent
    }
}

fn unique_participants(members: &HashMap<u64, Member, RandomState>) -> Vec<Participant> {
    let mut seen: Vec<Participant> = Vec::new();
    let mut sorted: Vec<(&u64, &Member)> = members.iter().collect();
    sorted.sort_by_key(|(id, _)| **id);
    for (_, m) in sorted {
        if !seen.iter().any(|p| p.id == m.participant.id) {
            seen.push(m.participant.clone());
        }
    }
    seen
}

/// The frame `role` gets for `event`, or `None` if that role does not see it.
fn render(event: &RoomEvent, role: Role, seq: u64, pk: &str) -> Option<Bytes> {
    let msg = match event {
        RoomEvent::Joined { participant, .. } => ServerMsg::ParticipantJoined { participant: participant.clone() },
        RoomEvent::Left { participant, .. } => ServerMsg::ParticipantLeft { participant: participant.clone() },
        RoomEvent::PaymentRequested { payment } => {
            if !visible_to(payment, role) {
                return None;
            }
            ServerMsg::PaymentRequested { payment: payment_view(payment, role, pk) }
        }
        RoomEvent::PaymentUpdated { payment } => {
            if !visible_to(payment, role) {
                return None;
            }
            ServerMsg::PaymentUpdated { payment: payment_view(payment, role, pk) }
        }
        RoomEvent::PaymentConfirmed { payment } => {
            ServerMsg::PaymentConfirmed { payment: payment_view(payment, role, pk) }
        }
        RoomEvent::Progress { payment_id, stage, participant_id } => {
            if role != Role::Clinician {
                return None;
            }
            ServerMsg::PaymentProgress {
                payment_id: payment_id.clone(),
                stage: *stage,
                participant_id: participant_id.clone(),
            }
        }
        RoomEvent::ClinicUpdated { payments_available, reason } => {
            ServerMsg::ClinicUpdated { payments_available: *payments_available, reason: *reason }
        }
        RoomEvent::Gap => return None,
    };
    Some(encode(seq, msg))
}

/// A connection's place in a room. Leaving happens on [`Membership::leave`] or on drop.
pub struct Membership {
    registry: Arc<RoomRegistry>,
    call_id: String,
    conn: u64,
    participant: Participant,
    left: bool,
}

impl Membership {
    /// Leaves the room; returns the participant if this was their last connection to the call.
    pub fn leave(mut self) -> Option<Participant> {
        self.left = true;
        self.registry.leave(&self.call_id, self.conn, &self.participant.id).then(|| self.participant.clone())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if !self.left {
            self.registry.leave(&self.call_id, self.conn, &self.participant.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Payment, now_ms};
    use callpay_protocol::{PaymentStatus, ServerFrame};

    fn person(id: &str, role: Role) -> Participant {
        Participant { id: id.into(), name: id.into(), role }
    }

    fn payment(status: PaymentStatus) -> Box<Payment> {
        Box::new(Payment {
            id: "pay_1".into(),
            call_id: "call".into(),
            requested_by_id: "doc".into(),
            requested_by_name: "Doc".into(),
            amount: 5000,
            currency: "aud".into(),
            description: "Consult".into(),
            status,
            version: 2,
            stripe_account: "acct_1".into(),
            payment_intent_id: Some("pi_1".into()),
            client_secret: Some("pi_1_secret_x".into()),
            created_at: now_ms(),
            ..Payment::default()
        })
    }

    fn frame(rx: &mut OutboundRx) -> ServerFrame {
        serde_json::from_slice(&rx.try_next().expect("a frame")).unwrap()
    }

    #[test]
    fn fan_out_renders_per_role_and_never_leaks_the_secret_to_clinicians() {
        let reg = RoomRegistry::new("pk_test_x");
        let (doc_out, mut doc_rx) = Outbound::new(8);
        let (pat_out, mut pat_rx) = Outbound::new(8);
        let doc = reg.join("call", "c", person("doc", Role::Clinician), doc_out);
        let pat = reg.join("call", "c", person("pat", Role::Patient), pat_out);
        assert_eq!(pat.participants.len(), 2);
        assert_eq!(reg.deliver("call", &RoomEvent::PaymentRequested { payment: payment(PaymentStatus::Requested) }), 2);
        let d = frame(&mut doc_rx);
        let p = frame(&mut pat_rx);
        assert_eq!(d.seq, 1);
        assert_eq!(p.seq, 1);
        let ServerMsg::PaymentRequested { payment: dv } = d.msg else { panic!() };
        let ServerMsg::PaymentRequested { payment: pv } = p.msg else { panic!() };
        assert!(dv.stripe.is_none());
        assert_eq!(pv.stripe.unwrap().client_secret, "pi_1_secret_x");
        // Progress goes to clinicians only; a creating payment to clinicians only.
        reg.deliver(
            "call",
            &RoomEvent::Progress {
                payment_id: "pay_1".into(),
                stage: callpay_protocol::ProgressStage::Viewing,
                participant_id: "pat".into(),
            },
        );
        reg.deliver("call", &RoomEvent::PaymentRequested { payment: payment(PaymentStatus::Creating) });
        assert_eq!(frame(&mut doc_rx).seq, 2);
        assert_eq!(frame(&mut doc_rx).seq, 3);
        assert!(pat_rx.try_next().is_none());
        drop((doc, pat));
        assert_eq!(reg.connections(), 0);
        assert!(reg.calls().is_empty(), "empty rooms are removed");
    }

    #[test]
    fn the_last_stage_survives_until_the_status_changes_and_waiting_calls_are_known() {
        let reg = RoomRegistry::new("pk");
        let p = reg.join("call", "c", person("pat", Role::Patient), Outbound::new(8).0);
        let m = &p.membership;
        assert!(reg.calls_awaiting_stripe().is_empty());
        assert!(reg.remember_payments(m, &[*payment(PaymentStatus::Requested)]).0.is_empty());
        assert_eq!(reg.calls_awaiting_stripe(), vec!["call".to_owned()]);
        let stage = ProgressStage::EnteringDetails;
        reg.deliver("call", &RoomEvent::Progress { payment_id: "pay_1".into(), stage, participant_id: "pat".into() });
        assert_eq!(reg.remember_payments(m, &[]).0.get("pay_1"), Some(&stage));
        let mut paid = payment(PaymentStatus::Succeeded);
        paid.version = 3;
        reg.deliver("call", &RoomEvent::PaymentUpdated { payment: paid });
        assert!(reg.remember_payments(m, &[]).0.is_empty(), "a paid payment has no stage to show");
        assert!(reg.calls_awaiting_stripe().is_empty());
    }

    /// The frames' types queued for `rx`.
    fn kinds(rx: &mut OutboundRx) -> Vec<String> {
        std::iter::from_fn(|| rx.try_next())
            .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap()["type"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_room_gives_one_confirmation_per_payment_however_it_learns_of_it() {
        let reg = RoomRegistry::new("pk");
        let (doc_out, mut doc_rx) = Outbound::new(16);
        let doc = reg.join("call", "c", person("doc", Role::Clinician), doc_out);
        reg.remember_payments(&doc.membership, &[*payment(PaymentStatus::Requested)]);
        let mut paid = payment(PaymentStatus::Succeeded);
        paid.version = 3;
        // Learnt by a repair: the update, then the confirmation it stands for.
        assert_eq!(reg.reconcile("call", &[*paid.clone()]), 2);
        assert_eq!(kinds(&mut doc_rx), ["payment.updated", "payment.confirmed"]);
        // The same state again (a second repair), then the bus's late copy of the live events.
        assert_eq!(reg.reconcile("call", &[*paid.clone()]), 0);
        reg.deliver("call", &RoomEvent::PaymentUpdated { payment: paid.clone() });
        reg.deliver("call", &RoomEvent::PaymentConfirmed { payment: paid.clone() });
        assert_eq!(kinds(&mut doc_rx), ["payment.updated"], "a stale update is harmless; no second notice");
        // A later refund is an update, not another confirmation.
        let mut refunded = paid.clone();
        refunded.version = 4;
        refunded.status = PaymentStatus::Refunded;
        reg.reconcile("call", &[*refunded]);
        assert_eq!(kinds(&mut doc_rx), ["payment.updated"]);
    }

    #[test]
    fn a_request_learnt_by_a_repair_is_shown_once_as_the_request() {
        let reg = RoomRegistry::new("pk");
        let (pat_out, mut pat_rx) = Outbound::new(16);
        let pat = reg.join("call", "c", person("pat", Role::Patient), pat_out);
        reg.remember_payments(&pat.membership, &[]);
        let requested = payment(PaymentStatus::Requested);
        // The repair gets there first (Redis was down when the request was published).
        assert_eq!(reg.reconcile("call", &[*requested.clone()]), 1);
        assert_eq!(kinds(&mut pat_rx), ["payment.requested"]);
        // The origin's publish, retried once Redis is back, is the same version: not shown again.
        assert_eq!(reg.deliver_remote("call", &RoomEvent::PaymentRequested { payment: requested.clone() }), 0);
        assert_eq!(reg.deliver_remote("call", &RoomEvent::PaymentUpdated { payment: requested.clone() }), 0);
        // A local answer to a retried request is the same version too, and is sent: the
        // clinician who retried waits for it.
        assert_eq!(reg.deliver("call", &RoomEvent::PaymentRequested { payment: requested.clone() }), 1);
        assert_eq!(kinds(&mut pat_rx), ["payment.requested"]);
        // Newer news from the bus still flows.
        let mut failed = requested;
        failed.version = 3;
        failed.status = PaymentStatus::Failed;
        assert_eq!(reg.deliver_remote("call", &RoomEvent::PaymentUpdated { payment: failed }), 1);
        assert_eq!(kinds(&mut pat_rx), ["payment.updated"]);
    }

    #[test]
    fn a_repair_before_a_new_rooms_first_welcome_raises_no_notice() {
        // A room opens; its subscription goes live and its repair reads the store before the
        // first member's welcome seeded it. The payment was paid long ago (the member saw that
        // on another node): no second notice on this connection.
        let reg = RoomRegistry::new("pk");
        let (pat_out, mut pat_rx) = Outbound::new(16);
        let pat = reg.join("call", "c", person("pat", Role::Patient), pat_out);
        let mut paid = payment(PaymentStatus::Succeeded);
        paid.version = 3;
        reg.reconcile("call", &[*paid.clone()]);
        reg.remember_payments(&pat.membership, &[*paid]);
        assert_eq!(kinds(&mut pat_rx), ["payment.updated"]);
    }

    #[test]
    fn a_welcome_snapshot_tells_the_rooms_other_members_what_it_shows_newer() {
        let reg = RoomRegistry::new("pk");
        let (doc_out, mut doc_rx) = Outbound::new(16);
        let doc = reg.join("call", "c", person("doc", Role::Clinician), doc_out);
        reg.remember_payments(&doc.membership, &[*payment(PaymentStatus::Requested)]);
        let _ = kinds(&mut doc_rx);
        let (pat_out, mut pat_rx) = Outbound::new(16);
        let pat = reg.join("call", "c", person("pat", Role::Patient), pat_out);
        let _ = kinds(&mut doc_rx);
        let mut paid = payment(PaymentStatus::Succeeded);
        paid.version = 3;
        // The patient's welcome shows it paid: the clinician, who saw it requested, is told.
        reg.remember_payments(&pat.membership, &[*paid]);
        assert_eq!(kinds(&mut doc_rx), ["payment.updated", "payment.confirmed"]);
        assert!(kinds(&mut pat_rx).is_empty(), "the joining patient has it in its welcome");
    }

    #[test]
    fn a_repair_of_many_changes_is_one_sync_frame() {
        let reg = RoomRegistry::new("pk");
        let (doc_out, mut doc_rx) = Outbound::new(4);
        let doc = reg.join("call", "c", person("doc", Role::Clinician), doc_out);
        let ids = |i: usize| format!("pay_{i}");
        let unpaid: Vec<Payment> = (0..100)
            .map(|i| {
                let mut p = *payment(PaymentStatus::Requested);
                p.id = ids(i);
                p
            })
            .collect();
        reg.remember_payments(&doc.membership, &unpaid);
        let many: Vec<Payment> = unpaid
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut p = p.clone();
                p.version += 1;
                if i % 2 == 0 {
                    p.status = PaymentStatus::Succeeded;
                }
                p
            })
            .collect();
        assert_eq!(reg.reconcile("call", &many), 1);
        let frame: serde_json::Value = serde_json::from_slice(&doc_rx.try_next().unwrap()).unwrap();
        assert_eq!(frame["type"], "payment.sync");
        assert_eq!(frame["payments"].as_array().unwrap().len(), 100);
        assert_eq!(frame["confirmed"].as_array().unwrap().len(), 50);
        assert!(doc_rx.try_next().is_none());
        assert_eq!(reg.reconcile("call", &many), 0, "nothing newer the second time");
        drop(doc);
    }

    #[test]
    fn progress_is_checked_against_routing_state_kept_by_events() {
        let reg = RoomRegistry::new("pk");
        let p = reg.join("call", "c", person("pat", Role::Patient), Outbound::new(8).0);
        assert_eq!(reg.check_progress("call", "pay_1"), Err(ProgressRefusal::UnknownPayment));
        // Seeded from a snapshot; then an older copy changes nothing, a newer event does.
        reg.remember_payments(&p.membership, &[*payment(PaymentStatus::Requested)]);
        assert_eq!(reg.check_progress("call", "pay_1"), Ok(()));
        let mut paid = payment(PaymentStatus::Succeeded);
        paid.version = 3;
        reg.deliver("call", &RoomEvent::PaymentUpdated { payment: paid });
        assert_eq!(reg.check_progress("call", "pay_1"), Err(ProgressRefusal::NotPayable));
        reg.remember_payments(&p.membership, &[*payment(PaymentStatus::Requested)]);
        assert_eq!(reg.check_progress("call", "pay_1"), Err(ProgressRefusal::NotPayable), "stale snapshot ignored");
        assert_eq!(reg.check_progress("other", "pay_1"), Err(ProgressRefusal::UnknownPayment));
    }

    #[test]
    fn a_participant_over_the_limit_replaces_its_oldest_connection() {
        let reg = RoomRegistry::new("pk");
        reg.set_max_per_participant(2);
        let (o1, mut r1) = Outbound::new(4);
        let (o2, mut r2) = Outbound::new(4);
        let (o3, _r3) = Outbound::new(4);
        let _a = reg.join("call", "c", person("a", Role::Patient), o1);
        let _b = reg.join("call", "c", person("a", Role::Patient), o2);
        let _other = reg.join("call", "c", person("b", Role::Patient), Outbound::new(4).0);
        assert!(r1.try_next().is_none());
        let _c = reg.join("call", "c", person("a", Role::Patient), o3);
        let next = futures_util::FutureExt::now_or_never(r1.next());
        assert_eq!(next, Some(Next::Replaced), "the oldest of a's connections is told to go");
        assert_eq!(futures_util::FutureExt::now_or_never(r2.next()), None, "the others stay");
        assert_eq!(reg.members("call"), 4, "it leaves when its task closes it");
    }

    #[test]
    fn presence_counts_connections_per_participant() {
        let reg = RoomRegistry::new("pk");
        let a1 = reg.join("call", "c", person("a", Role::Patient), Outbound::new(4).0);
        let a2 = reg.join("call", "c", person("a", Role::Patient), Outbound::new(4).0);
        assert!(a1.first_connection);
        assert!(!a2.first_connection);
        assert_eq!(a2.participants.len(), 1);
        assert_eq!(a1.membership.leave(), None, "another connection of a remains");
        assert_eq!(a2.membership.leave().map(|p| p.id), Some("a".into()));
    }

    /// The kinds and participant ids of the frames waiting in `rx`.
    fn presence_frames(rx: &mut OutboundRx) -> Vec<(String, String)> {
        std::iter::from_fn(|| rx.try_next())
            .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap())
            .map(|v| (v["type"].as_str().unwrap().to_owned(), v["participant"]["id"].as_str().unwrap_or("").to_owned()))
            .collect()
    }

    fn ids(ps: &[Participant]) -> Vec<&str> {
        ps.iter().map(|p| p.id.as_str()).collect()
    }

    /// A room with a clinician "doc" on this node, and what doc receives.
    fn room_with_doc() -> (Arc<RoomRegistry>, Joined, OutboundRx) {
        let reg = RoomRegistry::new("pk");
        let (out, rx) = Outbound::new(16);
        let doc = reg.join("call", "c", person("doc", Role::Clinician), out);
        (reg, doc, rx)
    }

    #[test]
    fn members_hear_of_other_nodes_participants_once_however_many_nodes_have_them() {
        let (reg, _doc, mut rx) = room_with_doc();
        let pat = person("pat", Role::Patient);
        reg.remote_joined("call", "node-b", &pat, 0);
        reg.remote_joined("call", "node-c", &pat, 0);
        assert_eq!(presence_frames(&mut rx), [("participant.joined".into(), "pat".into())]);
        assert_eq!(ids(&reg.visible("call")), ["doc", "pat"]);
        reg.remote_left("call", "node-b", &pat, 0);
        assert_eq!(presence_frames(&mut rx), [], "pat is still on node-c");
        reg.remote_left("call", "node-c", &pat, 0);
        assert_eq!(presence_frames(&mut rx), [("participant.left".into(), "pat".into())]);
        assert_eq!(ids(&reg.visible("call")), ["doc"]);
        // A join's own list includes other nodes' participants.
        reg.remote_joined("call", "node-b", &pat, 0);
        let doc2 = reg.join("call", "c", person("doc2", Role::Clinician), Outbound::new(4).0);
        assert_eq!(ids(&doc2.participants), ["doc", "doc2", "pat"]);
    }

    #[test]
    fn a_participant_on_two_nodes_neither_appears_twice_nor_leaves_early() {
        let (reg, _doc, mut rx) = room_with_doc();
        let pat = person("pat", Role::Patient);
        reg.remote_joined("call", "node-b", &pat, 0);
        presence_frames(&mut rx);
        // The patient opens a second tab, on this node: nothing new for the clinician...
        let here = reg.join("call", "c", pat.clone(), Outbound::new(4).0);
        assert_eq!(reg.deliver("call", &RoomEvent::Joined { participant: pat.clone(), write: 0 }), 0);
        // ...and closing it does not make them leave while node-b still has them.
        assert_eq!(here.membership.leave().map(|p| p.id), Some("pat".into()));
        assert_eq!(reg.deliver("call", &RoomEvent::Left { participant: pat.clone(), write: 0 }), 0);
        assert_eq!(presence_frames(&mut rx), []);
        // Node-b's entry going (expired: its node died) is a leave.
        reg.sync_remote("call", Presence::new(), Instant::now(), Duration::ZERO);
        assert_eq!(presence_frames(&mut rx), [("participant.left".into(), "pat".into())]);
    }

    #[test]
    fn a_presence_read_older_than_a_bus_event_does_not_undo_it() {
        let (reg, _doc, mut rx) = room_with_doc();
        let pat = person("pat", Role::Patient);
        // While the read is under way: node-b says pat joined, node-c says its patient left.
        let old = person("old", Role::Patient);
        reg.remote_joined("call", "node-c", &old, 0);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let read_at_2 = Instant::now();
        reg.remote_joined("call", "node-b", &pat, 0);
        reg.remote_left("call", "node-c", &old, 0);
        presence_frames(&mut rx);
        // The record, read before those events, has node-c with `old` and no node-b.
        let stale: Presence = [("node-c".to_owned(), entry(0, &[&old]))].into();
        reg.sync_remote("call", stale, read_at_2, Duration::ZERO);
        assert_eq!(presence_frames(&mut rx), [], "the events are newer than the read");
        assert_eq!(ids(&reg.visible("call")), ["doc", "pat"]);
        // A read taken after the events wins.
        let fresh: Presence = [("node-b".to_owned(), entry(0, &[&pat]))].into();
        reg.sync_remote("call", fresh, Instant::now(), Duration::ZERO);
        assert_eq!(presence_frames(&mut rx), []);
        reg.sync_remote("call", Presence::new(), Instant::now(), Duration::ZERO);
        assert_eq!(presence_frames(&mut rx), [("participant.left".into(), "pat".into())]);
    }

    /// A record entry numbered `write` listing `who`.
    fn entry(write: u64, who: &[&Participant]) -> crate::bus::NodePresence {
        crate::bus::NodePresence { write, participants: who.iter().map(|p| (*p).clone()).collect() }
    }

    const TTL: Duration = Duration::from_secs(15);

    /// Presence writes and bus events travel on different connections, so a join's event can
    /// arrive before its presence write lands. A renewal reading the record in between must not
    /// undo the join (a `participant.left`, then a `participant.joined` a renewal later), nor
    /// bring back a participant whose leave was heard; the write numbers the events carry say
    /// which is newer. Failed before the rule, which judged by the time of reading alone.
    #[test]
    fn a_presence_read_missing_a_write_the_bus_announced_does_not_undo_it() {
        let (reg, _doc, mut rx) = room_with_doc();
        let pat = person("pat", Role::Patient);
        let old = person("old", Role::Patient);
        // node-b's first participant here: its write (numbered 7) has not landed, and the record
        // has no entry for node-b yet.
        reg.remote_joined("call", "node-b", &pat, 7);
        // node-c's patient left (write 9); the record still has its entry numbered 4.
        reg.remote_joined("call", "node-c", &old, 4);
        reg.remote_left("call", "node-c", &old, 9);
        assert_eq!(
            presence_frames(&mut rx),
            [
                ("participant.joined".into(), "pat".into()),
                ("participant.joined".into(), "old".into()),
                ("participant.left".into(), "old".into())
            ]
        );
        std::thread::sleep(Duration::from_millis(2));
        let stale: Presence = [("node-c".to_owned(), entry(4, &[&old]))].into();
        reg.sync_remote("call", stale, Instant::now(), TTL);
        assert_eq!(presence_frames(&mut rx), [], "the events are newer than the record read after them");
        assert_eq!(ids(&reg.visible("call")), ["doc", "pat"]);
        // node-b's entry as written before the join (numbered 5, nobody): still older.
        let stale: Presence = [("node-b".to_owned(), entry(5, &[])), ("node-c".to_owned(), entry(4, &[&old]))].into();
        reg.sync_remote("call", stale, Instant::now(), TTL);
        assert_eq!(presence_frames(&mut rx), []);
        // The writes land: the record agrees, and from now on it is what counts.
        let landed: Presence = [("node-b".to_owned(), entry(7, &[&pat])), ("node-c".to_owned(), entry(9, &[]))].into();
        reg.sync_remote("call", landed, Instant::now(), TTL);
        assert_eq!(presence_frames(&mut rx), []);
        let later: Presence = [("node-b".to_owned(), entry(12, &[]))].into();
        reg.sync_remote("call", later, Instant::now(), TTL);
        assert_eq!(presence_frames(&mut rx), [("participant.left".into(), "pat".into())]);
    }

    /// A join heard on the bus whose write never lands (its node died right after) lasts no
    /// longer than an entry would: the presence expiry. And an event older than the record
    /// (a late copy) gives way to it at the next read.
    #[test]
    fn a_join_whose_write_never_lands_expires_like_an_entry_and_an_older_event_gives_way() {
        let (reg, _doc, mut rx) = room_with_doc();
        let pat = person("pat", Role::Patient);
        reg.remote_joined("call", "node-b", &pat, 7);
        presence_frames(&mut rx);
        std::thread::sleep(Duration::from_millis(5));
        reg.sync_remote("call", Presence::new(), Instant::now(), TTL);
        assert_eq!(ids(&reg.visible("call")), ["doc", "pat"], "within the expiry: the write may still land");
        reg.sync_remote("call", Presence::new(), Instant::now(), Duration::from_millis(1));
        assert_eq!(presence_frames(&mut rx), [("participant.left".into(), "pat".into())], "past it: gone");
        // The record says node-b's patient left (write 12); a late copy of the join (write 11).
        reg.remote_joined("call", "node-b", &pat, 11);
        presence_frames(&mut rx);
        reg.sync_remote("call", [("node-b".to_owned(), entry(12, &[]))].into(), Instant::now(), TTL);
        assert_eq!(presence_frames(&mut rx), [("participant.left".into(), "pat".into())]);
        assert_eq!(ids(&reg.visible("call")), ["doc"]);
    }

    /// A page reload: the new socket joins while the old one leaves. Whatever the interleaving,
    /// the new member must end up in a room that is in the map and gets delivered events.
    #[test]
    fn a_reload_never_strands_the_new_socket() {
        use std::sync::Barrier;
        const ROUNDS: usize = 50_000;
        let reg = RoomRegistry::new("pk");
        let go = Arc::new(Barrier::new(2));
        let (old_tx, old_rx) = std::sync::mpsc::channel::<Joined>();
        let leaver = {
            let go = go.clone();
            std::thread::spawn(move || {
                for old in old_rx {
                    go.wait();
                    drop(old.membership);
                    go.wait();
                }
            })
        };
        let mut stranded = 0;
        for _ in 0..ROUNDS {
            let old = reg.join("call", "c", person("p", Role::Patient), Outbound::new(4).0);
            old_tx.send(old).unwrap();
            let (out, mut rx) = Outbound::new(4);
            go.wait();
            let new = reg.join("call", "c", person("p", Role::Patient), out);
            // Let the leaver finish before checking.
            go.wait();
            reg.deliver("call", &RoomEvent::ClinicUpdated { payments_available: true, reason: None });
            if rx.try_next().is_none() {
                stranded += 1;
            }
            drop(new);
        }
        drop(old_tx);
        leaver.join().unwrap();
        assert_eq!(stranded, 0, "{stranded} of {ROUNDS} reloads left the new socket outside the room map");
        assert!(reg.calls().is_empty());
    }

    #[test]
    fn a_slow_member_is_flagged_and_others_still_served() {
        let reg = RoomRegistry::new("pk");
        let (slow, _slow_rx) = Outbound::new(1);
        let (fast, mut fast_rx) = Outbound::new(8);
        let _s = reg.join("call", "c", person("s", Role::Clinician), slow.clone());
        let _f = reg.join("call", "c", person("f", Role::Clinician), fast);
        for _ in 0..3 {
            reg.deliver("call", &RoomEvent::ClinicUpdated { payments_available: true, reason: None });
        }
        assert!(slow.is_slow());
        for seq in 1..=3 {
            assert_eq!(frame(&mut fast_rx).seq, seq);
        }
    }
}

//! In-process bus: every clone shares one broadcast channel, so several hub nodes in one
//! process (tests, the demo) behave like nodes on Redis.

use super::{Bus, BusError, Envelope, EnvelopeSink, NodePresence, Presence, PresenceEntry, PresenceStore, now_ms};
use async_trait::async_trait;
use callpay_protocol::Participant;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Envelopes buffered per subscriber; a node that falls further behind resyncs from the store.
const CAPACITY: usize = 4096;

/// The in-process bus. `clone_for(node)` gives another node a handle on the same channel.
#[derive(Clone)]
pub struct MemoryBus {
    node: String,
    tx: broadcast::Sender<Envelope>,
    /// call id -> node id -> entry: the presence record every handle shares.
    presence: Arc<Mutex<HashMap<String, HashMap<String, PresenceEntry>>>>,
    /// This handle's presence write numbers.
    writes: Arc<std::sync::atomic::AtomicU64>,
    /// The joins every handle turned away (see [`Bus::add_turned_away`]).
    turned_away: Arc<std::sync::atomic::AtomicU64>,
}

impl MemoryBus {
    /// A new channel with one node on it.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            tx: broadcast::channel(CAPACITY).0,
            presence: Arc::default(),
            writes: Arc::default(),
            turned_away: Arc::default(),
        }
    }

    /// Another node's handle on the same channel.
    pub fn clone_for(&self, node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            tx: self.tx.clone(),
            presence: self.presence.clone(),
            writes: Arc::default(),
            turned_away: self.turned_away.clone(),
        }
    }
}

/// The in-process record: one clock (this process's) for every node in it, so expiry needs no
/// outside clock; write numbers are honoured as Redis's record honours them.
#[async_trait]
impl PresenceStore for MemoryBus {
    fn next_write(&self) -> u64 {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1
    }

    async fn put(&self, calls: &[(String, Vec<Participant>)], ttl: Duration, write: u64) -> Result<(), BusError> {
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let mut record = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        for (call_id, participants) in calls {
            let nodes = record.entry(call_id.clone()).or_default();
            if nodes.get(&self.node).is_some_and(|e| e.n > write) {
                continue;
            }
            nodes.insert(self.node.clone(), PresenceEntry { expires_ms, n: write, participants: participants.clone() });
        }
        let now = now_ms();
        record.retain(|_, nodes| {
            nodes.retain(|_, e| e.expires_ms > now);
            !nodes.is_empty()
        });
        Ok(())
    }

    async fn read(&self, call_ids: &[String]) -> Result<Vec<Presence>, BusError> {
        let now = now_ms();
        let record = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        Ok(call_ids
            .iter()
            .map(|call_id| {
                record
                    .get(call_id)
                    .into_iter()
                    .flatten()
                    .filter(|(node, e)| **node != self.node && e.expires_ms > now)
                    .map(|(node, e)| (node.clone(), NodePresence { write: e.n, participants: e.participants.clone() }))
                    .collect()
            })
            .collect())
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        // No subscribers is fine: a single node has nobody else to tell.
        let _ = self.tx.send(envelope);
        Ok(())
    }

    /// A started node holds one receiver of its own: only more than that means other nodes.
    fn has_peers(&self) -> bool {
        self.tx.receiver_count() > 1
    }

    async fn add_turned_away(&self, n: u64) -> Result<(), BusError> {
        self.turned_away.fetch_add(n, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    async fn turned_away(&self) -> Result<Option<u64>, BusError> {
        Ok(Some(self.turned_away.load(std::sync::atomic::Ordering::Acquire)))
    }

    fn start(&self, sink: Arc<dyn EnvelopeSink>, stop: CancellationToken) {
        let mut rx = self.tx.subscribe();
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.recv() => r,
                };
                match received {
                    Ok(env) if env.origin != node => sink.deliver_remote(&env),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "memory bus lagged; resyncing rooms from the store");
                        sink.clone().resync();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

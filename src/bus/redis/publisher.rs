//! The publishing side: numbers every envelope per channel (1, 2, 3… for this node's process),
//! queues it without waiting on Redis, and sends the queue in pipelined batches.
//!
//! A publish that cannot be made (queue full, Redis down or slow) still used its number, and
//! the channel is remembered as lossy. Once a batch goes through again, each lossy channel gets
//! a numbered [`RoomEvent::Gap`]: receivers of that call see the hole (or the gap itself) and
//! repair that call from the store. Only if more channels were lost than it can remember does
//! the node fall back to a node-wide gap on [`super::GAP_CHANNEL`].

use super::super::{BusError, Envelope, RoomEvent};
use super::{GAP_CHANNEL, Link, REDIS_TIMEOUT, channel_of};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Envelopes waiting to be published. Publishing never waits on Redis: past this many queued
/// envelopes the node drops what does not fit (and announces the gaps), rather than stalling
/// local delivery or growing without bound.
const PUBLISH_QUEUE: usize = 65_536;
/// Envelopes sent in one pipelined round trip.
const PUBLISH_BATCH: usize = 512;
/// Lossy channels remembered for per-channel gap notices; past this the node announces one
/// node-wide gap instead (every node then repairs all its calls, paced).
const LOST_MAX: usize = 100_000;
/// A channel's counter is forgotten after this long without a publish (the call is over). If
/// it publishes again it counts from 1, which receivers take as a restart, not a hole.
const NUMBER_IDLE: Duration = Duration::from_secs(600);
/// How often owed gap notices are retried while nothing else is published.
const GAP_RETRY: Duration = Duration::from_secs(1);
/// How often idle counters are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// One queued publish.
struct Queued {
    channel: String,
    call_id: String,
    clinic_id: String,
    payload: Vec<u8>,
}

/// A call id and its clinic id: what a gap notice names.
type CallOf = (String, String);

/// Channels whose published numbers did not all reach Redis, with what a gap notice needs.
#[derive(Default)]
struct Lost {
    channels: HashMap<String, CallOf>,
    /// More channels were lost than [`LOST_MAX`]: the node must announce a node-wide gap.
    overflow: bool,
}

impl Lost {
    fn add(&mut self, channel: String, call_id: String, clinic_id: String) {
        if self.channels.len() >= LOST_MAX && !self.channels.contains_key(&channel) {
            self.overflow = true;
            return;
        }
        self.channels.insert(channel, (call_id, clinic_id));
    }
}

/// State the publishing handle and its task share.
struct Shared {
    node: String,
    /// Channel -> (last number used, when). Numbering and queueing happen under the channel's
    /// entry guard, so a channel's numbers enter the queue in order.
    numbers: DashMap<String, (u64, Instant)>,
    lost: Mutex<Lost>,
    /// Set while the task holds a batch it has not finished sending.
    sending: AtomicBool,
    metrics: OnceLock<Arc<crate::metrics::Metrics>>,
}

/// The publishing handle, owned by the bus.
pub(super) struct Publisher {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl Publisher {
    /// Starts the publishing task on `conn`.
    pub(super) fn start(conn: Link, node: String) -> Self {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let shared = Arc::new(Shared {
            node,
            numbers: DashMap::new(),
            lost: Mutex::default(),
            sending: AtomicBool::new(false),
            metrics: OnceLock::new(),
        });
        tokio::spawn(run(conn, rx, shared.clone()));
        Self { tx, shared }
    }

    /// Where publish latency is recorded.
    pub(super) fn observe_with(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// Numbers and queues `envelope`; an error means it was not queued (its number is then a
    /// hole the receivers will repair).
    pub(super) fn publish(&self, mut envelope: Envelope) -> Result<(), BusError> {
        let channel = channel_of(&envelope);
        let mut number = self.shared.numbers.entry(channel.clone()).or_insert((0, Instant::now()));
        number.0 += 1;
        number.1 = Instant::now();
        envelope.seq = number.0;
        let payload = serde_json::to_vec(&envelope).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let queued = Queued { channel, call_id: envelope.call_id, clinic_id: envelope.clinic_id, payload };
        let result = self.tx.try_send(queued).map_err(|e| {
            let Queued { channel, call_id, clinic_id, .. } = e.into_inner();
            self.shared.lost.lock().unwrap_or_else(|p| p.into_inner()).add(channel, call_id, clinic_id);
            BusError::Unavailable("publish queue full".into())
        });
        drop(number);
        result
    }

    /// Waits (at most `within`) until what was queued has been sent.
    pub(super) async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        // `sending` is cleared only once a batch is sent. The task takes a batch off the queue a
        // moment before it sets the flag, so "empty and not sending" must hold twice in a row.
        let idle = || self.tx.capacity() == self.tx.max_capacity() && !self.shared.sending.load(Ordering::Acquire);
        let mut idle_once = false;
        loop {
            if idle() {
                if idle_once {
                    return;
                }
                idle_once = true;
            } else {
                idle_once = false;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("bus publishes still queued at shutdown; other nodes repair those calls");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sends queued envelopes in pipelined batches, then the gap notices owed.
async fn run(conn: Link, mut rx: mpsc::Receiver<Queued>, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut pruned = Instant::now();
    loop {
        shared.sending.store(false, Ordering::Release);
        let owed = {
            let lost = shared.lost.lock().unwrap_or_else(|p| p.into_inner());
            !lost.channels.is_empty() || lost.overflow
        };
        let received = if owed {
            // Gaps are owed: announce them as soon as Redis takes publishes, even if nothing
            // else is published meanwhile.
            match tokio::time::timeout(GAP_RETRY, rx.recv_many(&mut batch, PUBLISH_BATCH)).await {
                Ok(n) => n,
                Err(_) => {
                    announce_gaps(&conn, &shared).await;
                    continue;
                }
            }
        } else {
            rx.recv_many(&mut batch, PUBLISH_BATCH).await
        };
        if received == 0 {
            return;
        }
        shared.sending.store(true, Ordering::Release);
        let publish = conn.publish_command();
        let cmds: Vec<redis::Cmd> =
            batch.iter().map(|q| redis::cmd(publish).arg(&q.channel).arg(&q.payload).to_owned()).collect();
        let start = Instant::now();
        if send(&conn, cmds).await {
            if let Some(m) = shared.metrics.get() {
                crate::metrics::Metrics::since(&m.bus_publish_seconds, start);
            }
            batch.clear();
            announce_gaps(&conn, &shared).await;
        } else {
            let mut lost = shared.lost.lock().unwrap_or_else(|p| p.into_inner());
            for q in batch.drain(..) {
                lost.add(q.channel, q.call_id, q.clinic_id);
            }
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            shared.numbers.retain(|_, (_, at)| at.elapsed() < NUMBER_IDLE);
        }
    }
}

/// Runs a pipeline of publishes; false (logged) if Redis did not take it in time.
async fn send(conn: &Link, cmds: Vec<redis::Cmd>) -> bool {
    match tokio::time::timeout(REDIS_TIMEOUT, conn.run(cmds)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "bus publish failed; the calls concerned are repaired by other nodes");
            false
        }
        Err(_) => {
            tracing::warn!("bus publish timed out; the calls concerned are repaired by other nodes");
            false
        }
    }
}

/// Publishes a numbered gap on every lossy channel (in batches), and the node-wide gap if the
/// lossy channels overflowed. What fails stays owed.
async fn announce_gaps(conn: &Link, shared: &Shared) {
    loop {
        let (owed, overflow): (Vec<(String, CallOf)>, bool) = {
            let mut lost = shared.lost.lock().unwrap_or_else(|p| p.into_inner());
            if lost.channels.is_empty() && !lost.overflow {
                return;
            }
            let take: Vec<String> = lost.channels.keys().take(PUBLISH_BATCH).cloned().collect();
            let owed = take.into_iter().filter_map(|c| lost.channels.remove_entry(&c)).collect();
            (owed, std::mem::take(&mut lost.overflow))
        };
        let publish = conn.publish_command();
        let mut cmds = Vec::with_capacity(owed.len() + 1);
        for (channel, (call_id, clinic_id)) in &owed {
            let mut gap = Envelope::new(&shared.node, call_id, clinic_id, RoomEvent::Gap);
            let mut number = shared.numbers.entry(channel.clone()).or_insert((0, Instant::now()));
            number.0 += 1;
            number.1 = Instant::now();
            gap.seq = number.0;
            drop(number);
            if let Ok(payload) = serde_json::to_vec(&gap) {
                cmds.push(redis::cmd(publish).arg(channel).arg(payload).to_owned());
            }
        }
        if overflow {
            cmds.push(redis::cmd(publish).arg(GAP_CHANNEL).arg(&shared.node).to_owned());
        }
        tracing::info!(channels = owed.len(), overflow, "announcing lost publishes so receivers repair those calls");
        if !send(conn, cmds).await {
            let mut lost = shared.lost.lock().unwrap_or_else(|p| p.into_inner());
            for (channel, (call_id, clinic_id)) in owed {
                lost.add(channel, call_id, clinic_id);
            }
            lost.overflow |= overflow;
            return;
        }
    }
}

//! Redis pub/sub bus. Envelopes are JSON on `callpay:call:{call_id}` (one call) or
//! `callpay:clinic:{clinic_id}` (every call of a clinic). A node subscribes to a call's channel
//! while it has members in that call, and to the clinic's channel while it has any of its calls.
//!
//! Presence is a hash per call, `callpay:presence:{call_id}`: field = node id, value = JSON
//! participants with an expiry. Each node writes only its own field, so nodes never race; the
//! key itself expires a while after the last write, so finished calls leave nothing behind.
//!
//! Subscriptions live on a dedicated RESP3 connection with automatic resubscription. Redis
//! drops messages published while a subscriber is disconnected, so after every disconnection
//! the node waits until Redis answers again and then resyncs its rooms from the store.

use super::link::Link;
use super::{Bus, BusError, Envelope, EnvelopeSink, Presence, PresenceEntry, now_ms};
use async_trait::async_trait;
use callpay_protocol::Participant;
use redis::{PushInfo, PushKind};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Pushed messages waiting for the subscriber task. Past this the node drops messages and
/// resyncs, rather than growing without bound behind a slow store or a burst.
const PUSH_BUFFER: usize = 8192;
/// Watch/unwatch commands waiting for the subscriber task (one per room opened or closed).
const COMMAND_BUFFER: usize = 65_536;
/// Envelopes waiting to be published. Publishing never waits on Redis: past this many queued
/// envelopes the node drops what does not fit and, once Redis takes publishes again, tells every
/// node to resync (a gap), rather than stalling local delivery or growing without bound.
const PUBLISH_QUEUE: usize = 65_536;
/// Envelopes sent in one pipelined round trip.
const PUBLISH_BATCH: usize = 512;
/// How long a pipelined publish may take before the bus counts as unavailable.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Where a node that lost publishes tells every node to resync.
const GAP_CHANNEL: &str = "callpay:gap";
/// Reconnection backoff bounds.
const RETRY_START: Duration = Duration::from_millis(100);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(5);

/// Membership changes, in the order the room registry made them. The subscriber task keeps
/// the clinic refcounts itself, so a count and its SUBSCRIBE/UNSUBSCRIBE can never be reordered.
enum Command {
    Watch {
        call_id: String,
        clinic_id: String,
    },
    Unwatch {
        call_id: String,
        clinic_id: String,
    },
    /// Redis dropped this subscription on its own (a cluster failover moved the channel's slot
    /// to another master): subscribe again if it is still wanted, and resync what it carried.
    Lost {
        channel: String,
    },
}

/// The Redis bus for one node.
pub struct RedisBus {
    node: String,
    publish_tx: mpsc::Sender<(String, Vec<u8>)>,
    /// Set when an envelope could not be queued; the publisher announces the gap.
    dropped: Arc<AtomicBool>,
    /// Set while the publisher holds a batch it has not finished sending.
    sending: Arc<AtomicBool>,
    /// Publish latency goes here once the app has its metrics.
    metrics: Arc<std::sync::OnceLock<Arc<crate::metrics::Metrics>>>,
    subscriber: Link,
    /// For presence reads and writes (multiplexed with the publisher's pipelines).
    conn: Link,
    commands_tx: mpsc::Sender<Command>,
    parts: std::sync::Mutex<Option<(mpsc::Receiver<Command>, mpsc::Receiver<PushInfo>)>>,
    lagged: Arc<AtomicBool>,
}

fn call_channel(call_id: &str) -> String {
    format!("callpay:call:{call_id}")
}

fn presence_key(call_id: &str) -> String {
    format!("callpay:presence:{call_id}")
}

fn clinic_channel(clinic_id: &str) -> String {
    format!("callpay:clinic:{clinic_id}")
}

impl RedisBus {
    /// Connects the publishing and the subscribing connection to one Redis.
    pub async fn connect(url: &str, node: String) -> Result<Self, BusError> {
        Self::connect_to(&[url.to_owned()], false, node).await
    }

    /// Connects to a Redis Cluster through any of its nodes (`urls`), with sharded pub/sub.
    pub async fn connect_cluster(urls: &[String], node: String) -> Result<Self, BusError> {
        Self::connect_to(urls, true, node).await
    }

    async fn connect_to(urls: &[String], cluster: bool, node: String) -> Result<Self, BusError> {
        let unavailable = |e: redis::RedisError| BusError::Unavailable(e.to_string());
        let publisher_conn = Link::connect(urls, cluster, None).await.map_err(unavailable)?;
        let (push_tx, push_rx) = mpsc::channel::<PushInfo>(PUSH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let lag_flag = lagged.clone();
        let pushes = Box::new(move |info: PushInfo| {
            if push_tx.try_send(info).is_err() {
                // Full (or closing): the message is lost, so the node must resync.
                lag_flag.store(true, Ordering::Relaxed);
            }
        });
        let subscriber = Link::connect(urls, cluster, Some(pushes)).await.map_err(unavailable)?;
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_BUFFER);
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(std::sync::OnceLock::new());
        let conn = publisher_conn.clone();
        let sending = Arc::new(AtomicBool::new(false));
        let queue = Publisher { rx: publish_rx, dropped: dropped.clone(), sending: sending.clone() };
        tokio::spawn(publisher(publisher_conn, queue, node.clone(), metrics.clone()));
        Ok(Self {
            node,
            publish_tx,
            dropped,
            sending,
            metrics,
            subscriber,
            conn,
            commands_tx,
            parts: std::sync::Mutex::new(Some((commands_rx, push_rx))),
            lagged,
        })
    }

    fn command(&self, cmd: Command) {
        match self.commands_tx.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::error!("redis bus command queue full; rooms may miss remote events until the next resync");
                self.lagged.store(true, Ordering::Relaxed);
            }
            // The bus is stopping (shutdown): subscriptions no longer matter.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        // `sending` is cleared only once a batch is sent. The publisher takes a batch off the
        // queue a moment before it sets the flag, so "empty and not sending" must hold twice.
        let idle =
            || self.publish_tx.capacity() == self.publish_tx.max_capacity() && !self.sending.load(Ordering::Acquire);
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
                tracing::warn!("bus publishes still queued at shutdown; other nodes resync or expire them");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn put_presence(&self, calls: &[(String, Vec<Participant>)], ttl: Duration) -> Result<(), BusError> {
        if calls.is_empty() {
            return Ok(());
        }
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        // The key outlives its entries: a call's record goes once no node has renewed it for
        // three expiries.
        let key_ttl = (ttl.as_millis() as u64).max(1) * 3;
        let mut cmds = Vec::with_capacity(calls.len() * 2);
        for (call_id, participants) in calls {
            let key = presence_key(call_id);
            if participants.is_empty() {
                cmds.push(redis::cmd("HDEL").arg(&key).arg(&self.node).to_owned());
            } else {
                let entry = PresenceEntry { expires_ms, participants: participants.clone() };
                let value = serde_json::to_string(&entry).map_err(|e| BusError::Unavailable(e.to_string()))?;
                cmds.push(redis::cmd("HSET").arg(&key).arg(&self.node).arg(value).to_owned());
                cmds.push(redis::cmd("PEXPIRE").arg(&key).arg(key_ttl).to_owned());
            }
        }
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.conn.run(cmds)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("presence write timed out".into())),
        }
    }

    async fn read_presence(&self, call_ids: &[String]) -> Result<Vec<Presence>, BusError> {
        if call_ids.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = call_ids.iter().map(|call_id| redis::cmd("HGETALL").arg(presence_key(call_id)).to_owned()).collect();
        let replies = match tokio::time::timeout(PUBLISH_TIMEOUT, self.conn.run(cmds)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(BusError::Unavailable(e.to_string())),
            Err(_) => return Err(BusError::Unavailable("presence read timed out".into())),
        };
        let records = replies
            .iter()
            .map(redis::from_redis_value_ref::<HashMap<String, String>>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let now = now_ms();
        let mut expired = Vec::new();
        let presence = call_ids
            .iter()
            .zip(records)
            .map(|(call_id, record)| {
                let mut nodes = Presence::new();
                for (node, value) in record {
                    match serde_json::from_str::<PresenceEntry>(&value) {
                        Ok(e) if e.expires_ms > now => {
                            if node != self.node {
                                nodes.insert(node, e.participants);
                            }
                        }
                        // Expired (its node died) or unreadable: tidy it away.
                        _ => expired.push(redis::cmd("HDEL").arg(presence_key(call_id)).arg(node).to_owned()),
                    }
                }
                nodes
            })
            .collect();
        if !expired.is_empty() {
            // Best effort: an entry left behind is ignored by every reader anyway.
            let _ = tokio::time::timeout(PUBLISH_TIMEOUT, self.conn.run(expired)).await;
        }
        Ok(presence)
    }

    fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let channel = if envelope.call_id.is_empty() {
            clinic_channel(&envelope.clinic_id)
        } else {
            call_channel(&envelope.call_id)
        };
        let payload = serde_json::to_vec(&envelope).map_err(|e| BusError::Unavailable(e.to_string()))?;
        self.publish_tx.try_send((channel, payload)).map_err(|_| {
            self.dropped.store(true, Ordering::Relaxed);
            BusError::Unavailable("publish queue full".into())
        })
    }

    fn start(&self, sink: Arc<dyn EnvelopeSink>, stop: CancellationToken) {
        let Some((commands, pushes)) = self.parts.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!("redis bus started twice");
            return;
        };
        // Two tasks, so a slow SUBSCRIBE never holds up delivering messages and a burst of
        // messages never holds up subscribing.
        tokio::spawn(subscriptions(self.subscriber.clone(), commands, sink.clone(), stop.clone()));
        let lost = self.commands_tx.clone();
        tokio::spawn(messages(
            self.node.clone(),
            self.subscriber.clone(),
            pushes,
            self.lagged.clone(),
            sink,
            stop,
            lost,
        ));
    }

    fn observe_with(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    fn watch(&self, call_id: &str, clinic_id: &str) {
        self.command(Command::Watch { call_id: call_id.to_owned(), clinic_id: clinic_id.to_owned() });
    }

    fn unwatch(&self, call_id: &str, clinic_id: &str) {
        self.command(Command::Unwatch { call_id: call_id.to_owned(), clinic_id: clinic_id.to_owned() });
    }
}

/// Applies membership changes in order: subscribes a call's channel (and its clinic's, on the
/// clinic's first call here), retrying until Redis takes it, then resyncs that room from the
/// store, since whatever other nodes published before the subscription was live is lost.
async fn subscriptions(
    mut sub: Link,
    mut commands: mpsc::Receiver<Command>,
    sink: Arc<dyn EnvelopeSink>,
    stop: CancellationToken,
) {
    let mut clinics: HashMap<String, usize> = HashMap::new();
    // Channels this node wants, and the clinic of each call it watches.
    let mut wanted: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut calls: HashMap<String, String> = HashMap::new();
    if !subscribe(&mut sub, GAP_CHANNEL, &stop).await {
        return;
    }
    wanted.insert(GAP_CHANNEL.to_owned());
    loop {
        let cmd = tokio::select! {
            _ = stop.cancelled() => return,
            cmd = commands.recv() => match cmd { Some(c) => c, None => return },
        };
        match cmd {
            Command::Watch { call_id, clinic_id } => {
                let n = clinics.entry(clinic_id.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    wanted.insert(clinic_channel(&clinic_id));
                    if !subscribe(&mut sub, &clinic_channel(&clinic_id), &stop).await {
                        return;
                    }
                }
                wanted.insert(call_channel(&call_id));
                calls.insert(call_id.clone(), clinic_id.clone());
                if !subscribe(&mut sub, &call_channel(&call_id), &stop).await {
                    return;
                }
                sink.clone().resync_call(call_id, clinic_id);
            }
            Command::Unwatch { call_id, clinic_id } => {
                wanted.remove(&call_channel(&call_id));
                calls.remove(&call_id);
                if let Err(e) = sub.unsubscribe(&call_channel(&call_id)).await {
                    // Harmless: a stray subscription only delivers events for a room that is
                    // not here, which are dropped.
                    tracing::warn!(error = %e, call_id, "redis unsubscribe failed");
                }
                let last = match clinics.get_mut(&clinic_id) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => {
                        clinics.remove(&clinic_id);
                        true
                    }
                    None => false,
                };
                if last {
                    wanted.remove(&clinic_channel(&clinic_id));
                    if let Err(e) = sub.unsubscribe(&clinic_channel(&clinic_id)).await {
                        tracing::warn!(error = %e, clinic_id, "redis unsubscribe failed");
                    }
                }
            }
            Command::Lost { channel } => {
                if !wanted.contains(&channel) {
                    continue;
                }
                tracing::warn!(channel, "redis dropped a subscription (failover?); subscribing again");
                if !subscribe(&mut sub, &channel, &stop).await {
                    return;
                }
                // What was published on it meanwhile is gone: resync what it carried.
                match channel.strip_prefix("callpay:call:").and_then(|c| calls.get(c).map(|k| (c, k))) {
                    Some((call_id, clinic_id)) => sink.clone().resync_call(call_id.to_owned(), clinic_id.clone()),
                    None => sink.clone().resync(),
                }
            }
        }
    }
}

/// Subscribes, retrying with backoff until Redis acknowledges; false only when stopping.
async fn subscribe(sub: &mut Link, channel: &str, stop: &CancellationToken) -> bool {
    let mut wait = RETRY_START;
    loop {
        match sub.subscribe(channel).await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, channel, "redis subscribe failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Delivers other nodes' envelopes, and resyncs every room after a lost message or a
/// disconnection.
async fn messages(
    node: String,
    sub: Link,
    mut pushes: mpsc::Receiver<PushInfo>,
    lagged: Arc<AtomicBool>,
    sink: Arc<dyn EnvelopeSink>,
    stop: CancellationToken,
    lost: mpsc::Sender<Command>,
) {
    loop {
        if lagged.swap(false, Ordering::Relaxed) {
            sink.clone().resync();
        }
        let push = tokio::select! {
            _ = stop.cancelled() => return,
            push = pushes.recv() => match push { Some(p) => p, None => return },
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(redis::Value::BulkString(ch)) = push.data.first()
                    && ch == GAP_CHANNEL.as_bytes()
                {
                    if push.data.get(1).is_none_or(|v| *v != redis::Value::BulkString(node.as_bytes().to_vec())) {
                        tracing::warn!("another node lost bus messages; resyncing rooms from the store");
                        sink.clone().resync();
                    }
                    continue;
                }
                let Some(redis::Value::BulkString(bytes)) = push.data.get(1) else { continue };
                match serde_json::from_slice::<Envelope>(bytes) {
                    Ok(env) if env.origin != node => sink.deliver_remote(&env),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "undecodable envelope on the bus"),
                }
            }
            // Our own unsubscribes are confirmed this way too; the subscription task knows which
            // channels are still wanted.
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                if let Some(redis::Value::BulkString(ch)) = push.data.first() {
                    let channel = String::from_utf8_lossy(ch).into_owned();
                    if lost.send(Command::Lost { channel }).await.is_err() {
                        return;
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("redis bus disconnected; will resync rooms once it is back");
                recover(&sub, &stop).await;
                tracing::info!("redis bus reconnected; resyncing rooms from the store");
                sink.clone().resync();
            }
            _ => {}
        }
    }
}

/// The publisher's side of the publish queue.
struct Publisher {
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    dropped: Arc<AtomicBool>,
    sending: Arc<AtomicBool>,
}

/// Sends queued envelopes in pipelined batches. Whatever could not be sent (Redis down, queue
/// overflow) is a gap for the other nodes: once a publish goes through again, a gap message makes
/// every node resync its rooms from the store.
async fn publisher(
    conn: Link,
    queue: Publisher,
    node: String,
    metrics: Arc<std::sync::OnceLock<Arc<crate::metrics::Metrics>>>,
) {
    let Publisher { mut rx, dropped, sending } = queue;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        sending.store(false, Ordering::Release);
        if rx.recv_many(&mut batch, PUBLISH_BATCH).await == 0 {
            return;
        }
        sending.store(true, Ordering::Release);
        let publish = conn.publish_command();
        let mut cmds: Vec<redis::Cmd> = batch
            .drain(..)
            .map(|(channel, payload)| redis::cmd(publish).arg(channel).arg(payload).to_owned())
            .collect();
        if dropped.swap(false, Ordering::Relaxed) {
            cmds.push(redis::cmd(publish).arg(GAP_CHANNEL).arg(&node).to_owned());
        }
        let start = std::time::Instant::now();
        match tokio::time::timeout(PUBLISH_TIMEOUT, conn.run(cmds)).await {
            Ok(Ok(_)) => {
                if let Some(m) = metrics.get() {
                    crate::metrics::Metrics::since(&m.bus_publish_seconds, start);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "bus publish failed; other nodes will resync");
                dropped.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                tracing::warn!("bus publish timed out; other nodes will resync");
                dropped.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Waits, with backoff, until Redis answers on the subscriber connection again (which also
/// re-establishes its subscriptions).
async fn recover(sub: &Link, stop: &CancellationToken) {
    let mut wait = RETRY_START;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if sub.ping().await.is_ok() {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

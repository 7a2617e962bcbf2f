//! Redis pub/sub bus. Envelopes are JSON on `callpay:call:{call_id}` (one call) or
//! `callpay:clinic:{clinic_id}` (every call of a clinic). Three parts with one job each:
//! - [`publisher`] numbers each envelope per channel and sends them in pipelined batches; what
//!   it could not send it announces as a gap on that channel, so receivers repair that call;
//! - [`subscriptions`] keeps the connection's subscriptions equal to the set of channels this
//!   node wants (its calls and their clinics), and delivers what arrives, repairing a call whose
//!   numbers skip;
//! - [`presence`] keeps the shared presence record, with expiry judged by Redis's clock.
//!
//! Publishing, presence and subscriptions each have a connection of their own (per node of a
//! Redis Cluster, each a connection to every node), so that a publish does not queue in the
//! client behind a burst of presence writes (Redis itself still runs one command at a time).
//! So a join's or leave's event can reach other nodes before its presence write, when that
//! write took longer than the join waits for it (`PRESENCE_WAIT`): the event carries the
//! write's number, and a node reading the record in between keeps what the event said until
//! the record holds a write at least as new (see `RoomRegistry::sync_remote`). Subscriptions
//! live on a RESP3 connection with automatic resubscription. Redis
//! drops messages published while a subscriber is disconnected, so after a disconnection the
//! node repairs its own calls from the store, in paced chunks.

mod presence;
mod publisher;
mod subscriptions;

use super::link::Link;
use super::{Bus, BusError, Envelope, EnvelopeSink, Presence, PresenceStore};
use async_trait::async_trait;
use callpay_protocol::Participant;
use redis::PushInfo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Pushed messages waiting for the receiving task. Past this the node drops messages and
/// repairs its calls, rather than growing without bound behind a slow store or a burst.
const PUSH_BUFFER: usize = 8192;
/// Where a node that lost track of which channels it failed to publish on tells every node to
/// repair all its calls (the last resort; per-channel gaps cover the usual case).
const GAP_CHANNEL: &str = "callpay:gap";
/// How long one round trip to Redis may take before the bus counts as unavailable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff bounds. The longest wait (up to twice it, with the jitter) is how long
/// after Redis is back relay across instances can still be cut off: capped at 5 s, relay
/// flowed again 4.8-12.1 s after a 3 s outage began in three `scale` runs of three instances;
/// at 1 s, 3.8-5.1 s in four (README, "A national service's Monday morning"). A ping every 1-2 s
/// from each instance costs little. The same cap bounds the connection manager's waits between
/// its reconnect attempts, so its attempts now span a shorter time.
const RETRY_START: Duration = Duration::from_millis(100);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(1);

/// The deployment's running count of turned-away joins (see [`Bus::add_turned_away`]). One key:
/// written only while some node turns joins away, read only while one drains.
const TURNED_AWAY_KEY: &str = "callpay:fleet:turned-away";

fn call_channel(call_id: &str) -> String {
    format!("callpay:call:{call_id}")
}

fn clinic_channel(clinic_id: &str) -> String {
    format!("callpay:clinic:{clinic_id}")
}

/// The channel an envelope travels on: its call's, or its clinic's for clinic-wide events.
fn channel_of(envelope: &Envelope) -> String {
    if envelope.call_id.is_empty() { clinic_channel(&envelope.clinic_id) } else { call_channel(&envelope.call_id) }
}

/// The Redis bus for one node.
pub struct RedisBus {
    node: String,
    publisher: publisher::Publisher,
    presence: presence::PresenceRecord,
    /// The publishing connection again, for the fleet's count of turned-away joins: a storm of
    /// joins queues thousands of presence writes on the presence connection, and on it the
    /// draining node's reads of the count timed out (2 s) in 4-6 of its ticks in each drain of a
    /// 70,000-socket rolling restart, just when the count mattered. Publishes are batched and
    /// short; the count is one small command a tick.
    fleet: Link,
    subscriber: Link,
    wanted: Arc<subscriptions::Wanted>,
    pushes: std::sync::Mutex<Option<mpsc::Receiver<PushInfo>>>,
    lagged: Arc<AtomicBool>,
}

impl RedisBus {
    /// Connects the publishing, the presence and the subscribing connection to one Redis.
    pub async fn connect(url: &str, node: String) -> Result<Self, BusError> {
        Self::connect_to(&[url.to_owned()], false, node).await
    }

    /// Connects to a Redis Cluster through any of its nodes (`urls`), with sharded pub/sub.
    pub async fn connect_cluster(urls: &[String], node: String) -> Result<Self, BusError> {
        Self::connect_to(urls, true, node).await
    }

    async fn connect_to(urls: &[String], cluster: bool, node: String) -> Result<Self, BusError> {
        let unavailable = |e: redis::RedisError| BusError::Unavailable(e.to_string());
        let conn = Link::connect(urls, cluster, None).await.map_err(unavailable)?;
        // Presence on a connection of its own: a node taking thousands of joins at once writes
        // presence for each, and a publish queued behind them on one connection waited past its
        // time-out, losing its batch's live frames (a 70,000-socket `scale` run's killed
        // instance; README, "A national service's Monday morning").
        let presence_conn = Link::connect(urls, cluster, None).await.map_err(unavailable)?;
        let (push_tx, push_rx) = mpsc::channel::<PushInfo>(PUSH_BUFFER);
        let wanted: Arc<subscriptions::Wanted> = Arc::default();
        let ours = wanted.clone();
        let lagged = Arc::new(AtomicBool::new(false));
        let lag_flag = lagged.clone();
        let pushes = Box::new(move |info: PushInfo| {
            // Confirmations of our own (re)subscriptions carry nothing to act on, and a
            // reconnection resubscribing 50,000 channels would otherwise fill the buffer and
            // count as lost messages (a second, needless repair of every call).
            if matches!(info.kind, redis::PushKind::Subscribe | redis::PushKind::SSubscribe) {
                return;
            }
            // Likewise the confirmations of our own unsubscribes (50,000 rooms closing at once).
            if matches!(info.kind, redis::PushKind::Unsubscribe | redis::PushKind::SUnsubscribe)
                && let Some(redis::Value::BulkString(ch)) = info.data.first()
                && ours.unsubscribed(&String::from_utf8_lossy(ch))
            {
                return;
            }
            if push_tx.try_send(info).is_err() {
                // Full (or closing): the message is lost, so the node must repair its calls.
                lag_flag.store(true, Ordering::Relaxed);
            }
        });
        let subscriber = Link::connect(urls, cluster, Some(pushes)).await.map_err(unavailable)?;
        Ok(Self {
            publisher: publisher::Publisher::start(conn.clone(), node.clone()),
            fleet: conn.clone(),
            presence: presence::PresenceRecord::new(presence_conn, node.clone()),
            node,
            subscriber,
            wanted,
            pushes: std::sync::Mutex::new(Some(push_rx)),
            lagged,
        })
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn flush(&self, within: Duration) {
        self.publisher.flush(within).await;
    }

    fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.publisher.publish(envelope)
    }

    fn start(&self, sink: Arc<dyn EnvelopeSink>, stop: CancellationToken) {
        let Some(pushes) = self.pushes.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!("redis bus started twice");
            return;
        };
        // Two tasks, so a slow SUBSCRIBE never holds up delivering messages and a burst of
        // messages never holds up subscribing.
        tokio::spawn(subscriptions::keep_subscribed(
            self.subscriber.clone(),
            self.wanted.clone(),
            sink.clone(),
            stop.clone(),
        ));
        let receiver = subscriptions::Receiver {
            node: self.node.clone(),
            sub: self.subscriber.clone(),
            pushes,
            lagged: self.lagged.clone(),
            wanted: self.wanted.clone(),
            sink,
        };
        tokio::spawn(receiver.run(stop));
    }

    fn observe_with(&self, metrics: Arc<crate::metrics::Metrics>) {
        self.publisher.observe_with(metrics);
    }

    fn watch(&self, call_id: &str, clinic_id: &str) {
        self.wanted.watch(call_id, clinic_id);
    }

    fn unwatch(&self, call_id: &str, clinic_id: &str) {
        self.wanted.unwatch(call_id, clinic_id);
    }

    async fn hears(&self, call_id: &str, within: Duration) -> bool {
        self.wanted.hears(call_id, within).await
    }

    async fn add_turned_away(&self, n: u64) -> Result<(), BusError> {
        let mut incr = redis::cmd("INCRBY");
        incr.arg(TURNED_AWAY_KEY).arg(n);
        self.fleet_command(incr).await.map(drop)
    }

    async fn turned_away(&self) -> Result<Option<u64>, BusError> {
        let mut get = redis::cmd("GET");
        get.arg(TURNED_AWAY_KEY);
        match self.fleet_command(get).await? {
            redis::Value::Nil => Ok(Some(0)),
            value => redis::from_redis_value::<u64>(value).map(Some).map_err(|e| BusError::Unavailable(e.to_string())),
        }
    }
}

impl RedisBus {
    /// One command on the fleet connection, bounded by [`REDIS_TIMEOUT`].
    async fn fleet_command(&self, cmd: redis::Cmd) -> Result<redis::Value, BusError> {
        match tokio::time::timeout(REDIS_TIMEOUT, self.fleet.run(vec![cmd])).await {
            Ok(Ok(mut values)) => Ok(values.pop().unwrap_or(redis::Value::Nil)),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("timed out".into())),
        }
    }
}

#[async_trait]
impl PresenceStore for RedisBus {
    fn next_write(&self) -> u64 {
        self.presence.next_write()
    }

    async fn put(&self, calls: &[(String, Vec<Participant>)], ttl: Duration, write: u64) -> Result<(), BusError> {
        self.presence.put(calls, ttl, write).await
    }

    async fn read(&self, call_ids: &[String]) -> Result<Vec<Presence>, BusError> {
        self.presence.read(call_ids).await
    }
}

/// Waits until Redis answers on `link` again, pinging with exponential backoff and jitter
/// (so nodes cut off together do not all ping at once) up to [`RETRY_MAX`] apart; false if
/// stopped first.
async fn wait_for_redis(link: &Link, stop: &CancellationToken) -> bool {
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(RETRY_START)
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times();
    let ping = || async {
        match tokio::time::timeout(REDIS_TIMEOUT, link.ping()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("ping timed out".to_owned()),
        }
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        answered = ping.retry(backoff) => answered.is_ok(),
    }
}

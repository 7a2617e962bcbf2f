//! Redis pub/sub bus. Envelopes are JSON on `callpay:call:{call_id}` (one call) or
//! `callpay:clinic:{clinic_id}` (every call of a clinic). A node subscribes to a call's channel
//! while it has members in that call, and to the clinic's channel while it has any of its calls.
//!
//! Subscriptions live on a dedicated RESP3 connection with automatic resubscription. Redis
//! drops messages published while a subscriber is disconnected, so after every disconnection
//! the node waits until Redis answers again and then resyncs its rooms from the store.

use super::{Bus, BusError, Envelope, EnvelopeSink};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
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
/// How long a publish may take before the bus counts as unavailable.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff bounds.
const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// The Redis bus for one node.
pub struct RedisBus {
    node: String,
    publisher: ConnectionManager,
    subscriber: ConnectionManager,
    commands_tx: mpsc::Sender<Command>,
    parts: std::sync::Mutex<Option<(mpsc::Receiver<Command>, mpsc::Receiver<PushInfo>)>>,
    lagged: Arc<AtomicBool>,
    /// Rooms per clinic on this node, to know when the clinic channel is still needed.
    clinics: std::sync::Mutex<HashMap<String, usize>>,
}

fn call_channel(call_id: &str) -> String {
    format!("callpay:call:{call_id}")
}

fn clinic_channel(clinic_id: &str) -> String {
    format!("callpay:clinic:{clinic_id}")
}

fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else {
        format!("{url}{}protocol=resp3", if url.contains('?') { '&' } else { '?' })
    }
}

impl RedisBus {
    /// Connects the publishing and the subscribing connection.
    pub async fn connect(url: &str, node: String) -> Result<Self, BusError> {
        let client = redis::Client::open(resp3(url)).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let settings = || {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_max_delay(RETRY_MAX)
        };
        let publisher = ConnectionManager::new_with_config(client.clone(), settings())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let (push_tx, push_rx) = mpsc::channel::<PushInfo>(PUSH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let lag_flag = lagged.clone();
        let sub_settings = settings().set_automatic_resubscription().set_push_sender(move |info: PushInfo| {
            if push_tx.try_send(info).is_err() {
                // Full (or closing): the message is lost, so the node must resync.
                lag_flag.store(true, Ordering::Relaxed);
            }
            Ok::<(), redis::aio::SendError>(())
        });
        let subscriber = ConnectionManager::new_with_config(client, sub_settings)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_BUFFER);
        Ok(Self {
            node,
            publisher,
            subscriber,
            commands_tx,
            parts: std::sync::Mutex::new(Some((commands_rx, push_rx))),
            lagged,
            clinics: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn command(&self, cmd: Command) {
        if self.commands_tx.try_send(cmd).is_err() {
            tracing::error!("redis bus command queue full; rooms may miss remote events until the next resync");
            self.lagged.store(true, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        let channel = if envelope.call_id.is_empty() {
            clinic_channel(&envelope.clinic_id)
        } else {
            call_channel(&envelope.call_id)
        };
        let payload = serde_json::to_string(envelope).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let mut conn = self.publisher.clone();
        let sent = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            redis::cmd("PUBLISH").arg(&channel).arg(payload).query_async::<i64>(&mut conn),
        )
        .await
        .map_err(|_| BusError::Unavailable("publish timed out".into()))?;
        sent.map(|_| ()).map_err(|e| BusError::Unavailable(e.to_string()))
    }

    fn start(&self, sink: Arc<dyn EnvelopeSink>, stop: CancellationToken) {
        let Some((mut commands, mut pushes)) = self.parts.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!("redis bus started twice");
            return;
        };
        let node = self.node.clone();
        let mut sub = self.subscriber.clone();
        let lagged = self.lagged.clone();
        tokio::spawn(async move {
            loop {
                if lagged.swap(false, Ordering::Relaxed) {
                    sink.clone().resync();
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    cmd = commands.recv() => {
                        let Some(cmd) = cmd else { return };
                        let result = match &cmd {
                            Command::Subscribe(ch) => sub.subscribe(ch).await,
                            Command::Unsubscribe(ch) => sub.unsubscribe(ch).await,
                        };
                        if let Err(e) = result {
                            // Automatic resubscription covers channels subscribed before a
                            // disconnection; one that failed now is retried on recovery.
                            tracing::warn!(error = %e, "redis subscribe/unsubscribe failed");
                            if let Command::Subscribe(ch) = cmd {
                                recover(&mut sub, &stop).await;
                                let _ = sub.subscribe(&ch).await;
                                sink.clone().resync();
                            }
                        }
                    }
                    push = pushes.recv() => {
                        let Some(push) = push else { return };
                        match push.kind {
                            PushKind::Message => {
                                let Some(redis::Value::BulkString(bytes)) = push.data.get(1) else { continue };
                                match serde_json::from_slice::<Envelope>(bytes) {
                                    Ok(env) if env.origin != node => sink.deliver_remote(&env),
                                    Ok(_) => {}
                                    Err(e) => tracing::warn!(error = %e, "undecodable envelope on the bus"),
                                }
                            }
                            PushKind::Disconnection => {
                                tracing::warn!("redis bus disconnected; will resync rooms once it is back");
                                recover(&mut sub, &stop).await;
                                tracing::info!("redis bus reconnected; resyncing rooms from the store");
                                sink.clone().resync();
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
    }

    fn watch(&self, call_id: &str, clinic_id: &str) {
        self.command(Command::Subscribe(call_channel(call_id)));
        let first = {
            let mut clinics = self.clinics.lock().unwrap_or_else(|p| p.into_inner());
            let n = clinics.entry(clinic_id.to_owned()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.command(Command::Subscribe(clinic_channel(clinic_id)));
        }
    }

    fn unwatch(&self, call_id: &str, clinic_id: &str) {
        self.command(Command::Unsubscribe(call_channel(call_id)));
        let last = {
            let mut clinics = self.clinics.lock().unwrap_or_else(|p| p.into_inner());
            match clinics.get_mut(clinic_id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    clinics.remove(clinic_id);
                    true
                }
                None => false,
            }
        };
        if last {
            self.command(Command::Unsubscribe(clinic_channel(clinic_id)));
        }
    }
}

/// Waits, with backoff, until Redis answers on the subscriber connection again (which also
/// re-establishes its subscriptions).
async fn recover(sub: &mut ConnectionManager, stop: &CancellationToken) {
    let mut wait = RETRY_START;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(sub).await;
        if pong.is_ok() {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

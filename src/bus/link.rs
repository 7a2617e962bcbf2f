//! The Redis the bus talks to: one server, or a Redis Cluster. The bus is written once against
//! [`Link`]; what differs is here.
//!
//! On a cluster, channels are sharded (`SPUBLISH`/`SSUBSCRIBE`, Redis 7): a message goes only to
//! the shard that owns its channel's slot, so pub/sub traffic divides across the masters instead
//! of every message reaching every node as classic pub/sub does in a cluster. Commands cannot be
//! pipelined across slots, so a batch is sent as concurrent single commands (multiplexed on each
//! master's connection, which is just as few round trips).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, PushInfo, RedisResult, Value};
use std::time::Duration;

/// A connection to one Redis or to a cluster. Cheap to clone (both are multiplexed handles).
#[derive(Clone)]
pub enum Link {
    /// One server, reconnecting on its own.
    Single(ConnectionManager),
    /// A cluster: routes each command to the master owning its key's (or channel's) slot and
    /// follows slot moves and failovers.
    Cluster(ClusterConnection),
}

/// Where pushed messages (pub/sub deliveries, disconnections) go.
pub type PushSink = Box<dyn Fn(PushInfo) + Send + Sync>;

impl Link {
    /// Connects to `urls`: one URL is a single server; several are a cluster's seed nodes (with
    /// `cluster` true, one URL is also taken as a seed). `pushes` receives pub/sub traffic: only
    /// the subscribing link has one.
    pub async fn connect(urls: &[String], cluster: bool, pushes: Option<PushSink>) -> RedisResult<Self> {
        let timeout = Duration::from_secs(2);
        if cluster {
            let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .connection_timeout(timeout)
                .response_timeout(timeout);
            if let Some(push) = pushes {
                builder = builder.push_sender(move |info: PushInfo| {
                    push(info);
                    Ok::<(), redis::aio::SendError>(())
                });
            }
            return Ok(Self::Cluster(builder.build()?.get_async_connection().await?));
        }
        let client = redis::Client::open(resp3(&urls[0]))?;
        let mut settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(super::redis::RETRY_MAX);
        if let Some(push) = pushes {
            settings = settings.set_automatic_resubscription().set_push_sender(move |info: PushInfo| {
                push(info);
                Ok::<(), redis::aio::SendError>(())
            });
        }
        Ok(Self::Single(ConnectionManager::new_with_config(client, settings).await?))
    }

    /// The publish command: sharded on a cluster.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }

    /// Subscribes to `channels` (sharded on a cluster); resubscribed after reconnections. One
    /// command for the lot on a single server; on a cluster one per channel (channels of
    /// different slots cannot share a command), concurrently.
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.subscribe(channels).await,
            Self::Cluster(c) => {
                let each = channels.iter().map(|ch| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(ch).await }
                });
                futures_util::future::join_all(each).await.into_iter().collect()
            }
        }
    }

    /// Unsubscribes from `channels`.
    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.unsubscribe(channels).await,
            Self::Cluster(c) => {
                let each = channels.iter().map(|ch| {
                    let mut c = c.clone();
                    async move { c.sunsubscribe(ch).await }
                });
                futures_util::future::join_all(each).await.into_iter().collect()
            }
        }
    }

    /// Runs `cmds` and answers their replies in order: one pipelined round trip on a single
    /// server, concurrent commands on a cluster. Fails if any command failed.
    pub async fn run(&self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(&mut c.clone()).await
            }
            Self::Cluster(c) => {
                let each = cmds.into_iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<Value>(&mut c).await }
                });
                futures_util::future::join_all(each).await.into_iter().collect()
            }
        }
    }

    /// Answers when Redis does.
    pub async fn ping(&self) -> RedisResult<()> {
        match self {
            Self::Single(c) => redis::cmd("PING").query_async::<String>(&mut c.clone()).await.map(drop),
            Self::Cluster(c) => redis::cmd("PING").query_async::<String>(&mut c.clone()).await.map(drop),
        }
    }
}

/// The URL with RESP3 asked for: pushes (pub/sub messages, disconnections) need it.
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else {
        format!("{url}{}protocol=resp3", if url.contains('?') { '&' } else { '?' })
    }
}

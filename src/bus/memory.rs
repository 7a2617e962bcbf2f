//! In-process bus: every clone shares one broadcast channel, so several hub nodes in one
//! process (tests, the demo) behave like nodes on Redis.

use super::{Bus, BusError, Envelope, EnvelopeSink};
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Envelopes buffered per subscriber; a node that falls further behind resyncs from the store.
const CAPACITY: usize = 4096;

/// The in-process bus. `clone_for(node)` gives another node a handle on the same channel.
#[derive(Clone)]
pub struct MemoryBus {
    node: String,
    tx: broadcast::Sender<Envelope>,
}

impl MemoryBus {
    /// A new channel with one node on it.
    pub fn new(node: impl Into<String>) -> Self {
        Self { node: node.into(), tx: broadcast::channel(CAPACITY).0 }
    }

    /// Another node's handle on the same channel.
    pub fn clone_for(&self, node: impl Into<String>) -> Self {
        Self { node: node.into(), tx: self.tx.clone() }
    }
}

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

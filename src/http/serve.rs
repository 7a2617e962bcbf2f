//! The accept loop. `axum::serve` has no deadline for a request's headers and no cap on
//! connections, so a client that opens connections and never finishes a request holds them
//! forever (slowloris). Here every connection is served by hyper's HTTP/1 server with a header
//! read deadline, which also bounds how long an idle keep-alive connection is kept, and only
//! `max_connections` connections may be speaking HTTP at once. A WebSocket leaves this pool
//! when its upgrade completes; the hub counts it against its own cap.

use crate::metrics::Metrics;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits for one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deadline for a request's headers, and for the next request on an idle keep-alive
    /// connection.
    pub header_read_timeout: Duration,
    /// Connections speaking HTTP at once.
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
}

/// What a connection over the cap gets before it is closed. Written without waiting: a new
/// socket's send buffer is empty, so this fits; if it does not, the client just sees the close.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 1\r\ncontent-length: 88\r\n\r\n\
{\"code\":\"overloaded\",\"message\":\"This hub has too many open connections; retry shortly.\"}";

/// Serves `router` on `listener` until `stop` is cancelled, then closes the listener, cancels
/// `closed` (upgraded sockets drain on it) and lets requests in flight finish (within
/// `limits.grace`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    closed: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors (or a similar transient failure): accepting again
                    // at once would spin; the condition clears as connections close.
                    tracing::warn!(error = %e, "accept failed; pausing accepts briefly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.http_refused.inc();
            let _ = tcp.try_write(BUSY);
            continue;
        };
        // Real-time frames must not wait for Nagle's algorithm to coalesce them.
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(tcp), service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    // Closed before draining: new connections are refused at once (a load balancer moves on to
    // the next node) instead of waiting in the kernel's backlog for an accept that never comes.
    drop(listener);
    closed.cancel();
    connections.close();
    if tokio::time::timeout(limits.grace, connections.wait()).await.is_err() {
        tracing::warn!("HTTP requests still in flight after the grace period");
    }
}

#[cfg(test)]
mod tests {
    use super::BUSY;

    #[test]
    fn the_busy_answer_is_well_formed_json_of_its_declared_length() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head.split("content-length: ").nth(1).unwrap().trim().parse().unwrap();
        assert_eq!(declared, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "overloaded");
    }
}

//! The accept loop. `axum::serve` has no deadline for a request's headers and no cap on
//! connections, so a client that opens connections and never finishes a request holds them
//! forever (slowloris). Here every connection is served by hyper's HTTP/1 server with a header
//! read deadline, which also bounds how long an idle keep-alive connection is kept, and only
//! `max_connections` connections may be speaking HTTP at once. Connections past that are
//! answered 503 once their request head is in (as many again may wait for it, within the same
//! deadline; past those a connection is closed unanswered). A WebSocket leaves this pool when its
//! upgrade completes; the hub counts it against its own cap.

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

/// What a connection over the cap gets before it is closed, once its request is in. Written
/// without waiting: a new socket's send buffer is empty, so this fits; if it does not, the
/// client just sees the close.
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
    let refusals = Arc::new(Semaphore::new(limits.max_connections.max(1)));
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
            // Answered once the request is in, never at accept: nginx 1.22, answered before it
            // has sent its request, reads the next instance's answer as a 503 as well and
            // abandons that connection after the instance has upgraded and joined it (a ghost
            // session; README, "Ghost sessions behind nginx"). Waiting is bounded in time and in
            // number; past that number a connection is closed unanswered.
            if let Ok(waiting) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _waiting = waiting;
                    refuse_after_request(tcp, limits.header_read_timeout).await;
                });
            }
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

/// Reads a refused connection's request head (up to its blank line, the peer's close, a few KiB
/// or `within`), then writes [`BUSY`] and closes it.
async fn refuse_after_request(mut tcp: tokio::net::TcpStream, within: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MOST: usize = 8 * 1024;
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while head.len() < MOST && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    let answer = async {
        tcp.write_all(BUSY).await?;
        tcp.shutdown().await
    };
    // A fresh socket's send buffer takes the answer at once; a peer that reads nothing does
    // not hold the task.
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
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

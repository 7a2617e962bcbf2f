//! The accept loop. `axum::serve` has no deadline for a request's headers and no cap on
//! connections, so a client that opens connections and never finishes a request holds them
//! forever (slowloris). Here every connection is served by hyper's HTTP/1 server with a header
//! read deadline, which also bounds how long an idle keep-alive connection is kept, and only
//! `max_connections` connections may be speaking HTTP at once. Connections past that are
//! answered 503 once their request head is in (up to [`REFUSALS_WAITING`] may wait for it,
//! within the same deadline; past those, or without a head by then, a connection is closed
//! unanswered). A WebSocket leaves this pool when its upgrade completes; the hub counts it
//! against its own cap.

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

/// How many connections the kernel may hold for the accept loop. `TcpListener::bind` asks for
/// 128, as Rust's standard library does, and a drained node's clients arriving behind nginx
/// overflowed that: past it the kernel drops the connection's SYN (or its last ACK), and the
/// client, or nginx, waits a retransmission timeout (1 s, then 2 s more) before trying again.
/// In the drain runs of 19,000 sockets that was 188-3,465 overflows a run (README, "A drained
/// node's clients behind nginx, measured stage by stage"). The kernel caps this at
/// `net.core.somaxconn` (4,096 by default since Linux 5.4). What a longer queue costs: a
/// connection waiting in it is not yet counted by `max_connections` (it is once accepted, and
/// refused then if over), and the connections still queued when a node drains are reset when
/// the listener closes, as the 128 were, so a balancer tries the next node.
pub const LISTEN_BACKLOG: u32 = 4_096;

/// Binds `addr` for [`serve`] with a [`LISTEN_BACKLOG`] accept queue. On Unix it reuses the
/// address, as `TcpListener::bind` does there (a restarted node binds its port while the last
/// one's connections are in TIME_WAIT); on Windows that would let another socket take the port.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a connection over the cap gets once its request head is in, before it is closed. A new
/// socket's send buffer takes it at once; a peer that reads nothing holds the write at most a
/// second.
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
    let refusals = Arc::new(Semaphore::new(limits.max_connections.clamp(1, REFUSALS_WAITING)));
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

/// Refused connections that may wait for their request head at once (and never more than the
/// cap). Each holds an open file for up to the header deadline, so a flood of silent connections
/// holds at most this many more files, not one per connection.
const REFUSALS_WAITING: usize = 256;
/// Bytes a refused connection may send before its request head ends; past this it is closed
/// unanswered.
const REFUSAL_HEAD_MOST: usize = 16 * 1024;

/// Waits for a refused connection's request head, then writes [`BUSY`] and closes it. A
/// connection whose head does not end within `within` (or that closes first, or sends more than
/// [`REFUSAL_HEAD_MOST`]) is closed unanswered: it asked nothing, and an answer before the
/// request is what misleads nginx.
async fn refuse_after_request(mut tcp: tokio::net::TcpStream, within: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !tokio::time::timeout(within, head_ends(&mut tcp)).await.unwrap_or(false) {
        return;
    }
    let answer = async {
        tcp.write_all(BUSY).await?;
        tcp.shutdown().await?;
        // Closing with unread bytes would reset the connection, and a reset can destroy the
        // answer before the peer reads it: read until the peer closes (within the second).
        let mut sink = [0u8; 1024];
        let mut read = 0;
        while read < REFUSAL_HEAD_MOST {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Reads until a request head's blank line (true), or the peer's close, an error or more than
/// [`REFUSAL_HEAD_MOST`] bytes (false). Looks only at what each read adds, plus the three bytes
/// before it, so a client trickling its head costs no rescans.
async fn head_ends(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let mut seen = Vec::with_capacity(buf.len() + 3);
    let mut total = 0;
    loop {
        let n = match io.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        total += n;
        seen.extend_from_slice(&buf[..n]);
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            // Where the head ends in the whole stream: within the most a head may be?
            return total - seen.len() + at + 4 <= REFUSAL_HEAD_MOST;
        }
        if total > REFUSAL_HEAD_MOST {
            return false;
        }
        seen.drain(..seen.len().saturating_sub(3));
    }
}

#[cfg(test)]
mod tests {
    use super::{BUSY, REFUSAL_HEAD_MOST, head_ends};
    use tokio::io::AsyncWriteExt;

    /// What `head_ends` says of `chunks` written one after another, then the writer closed.
    async fn ends(chunks: &[&[u8]]) -> bool {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        head_ends(&mut server).await
    }

    /// Connections the accept-queue test opens: well past the 128 of `TcpListener::bind`, and
    /// few enough for a test process's open-file limit.
    const BURST: usize = 300;
    /// Longest a connect into a queue with room may take: on loopback it takes microseconds,
    /// and a dropped SYN is sent again only after 1 s.
    const CONNECT_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue_rather_than_being_dropped() {
        // Nobody accepts: each connection completes its handshake into the kernel's accept queue
        // until that is full, and past it the kernel drops the SYN and the client waits a whole
        // retransmission timeout (1 s, then 2 s more) to try again. 128, Rust's and mio's
        // default, is what a storm of reconnects overflowed (README, "A drained node's clients").
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
        assert!(
            somaxconn > BURST,
            "net.core.somaxconn is {somaxconn}: the kernel caps every accept queue there, whatever callpay asks \
             (raise it, as the README's configuration notes say)"
        );
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for i in 0..BURST {
            match tokio::time::timeout(CONNECT_WITHIN, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("connection {i} failed: {e}"),
                Err(_) => panic!("connection {i} was dropped: the accept queue held only {i}"),
            }
        }
        drop(listener);
    }

    #[tokio::test]
    async fn a_request_head_ends_at_its_blank_line_even_split_across_reads() {
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await);
        // The blank line straddles two writes, after more than one read buffer of headers.
        let long = format!("GET / HTTP/1.1\r\nX-Pad: {}\r", "a".repeat(3000));
        let (mut client, mut server) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            client.write_all(long.as_bytes()).await.unwrap();
            client.write_all(b"\n\r\n").await.unwrap();
            client
        });
        let within = std::time::Duration::from_secs(5);
        assert_eq!(tokio::time::timeout(within, head_ends(&mut server)).await, Ok(true));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_head_may_end_exactly_at_the_most_with_a_body_read_along() {
        let head = |len: usize| {
            let mut h = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
            h.resize(len - 4, b'a');
            h.extend_from_slice(b"\r\n\r\n");
            h.extend_from_slice(&[b'b'; 2000]);
            h
        };
        assert!(ends(&[&head(REFUSAL_HEAD_MOST)]).await, "ends exactly at the most, body after");
        assert!(!ends(&[&head(REFUSAL_HEAD_MOST + 1)]).await, "ends one byte past the most");
    }

    #[tokio::test]
    async fn a_head_cut_short_or_too_long_does_not_end() {
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]).await, "closed before its blank line");
        assert!(!ends(&[]).await, "nothing sent");
        let endless = format!("GET / HTTP/1.1\r\nX-Pad: {}", "a".repeat(REFUSAL_HEAD_MOST + 1));
        assert!(!ends(&[endless.as_bytes(), b"\r\n\r\n"]).await, "past the most a head may be");
    }

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

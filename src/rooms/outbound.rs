//! A connection's bounded outbound queue of encoded frames. Frames are shared bytes: one
//! encoding of an event is handed to every member of the same role without copying. Fan-out
//! never waits for a peer: a full queue marks the connection as a slow consumer, and its writer
//! closes it so the client reconnects and resyncs.
//!
//! A small queue of its own rather than a tokio channel: an idle connection holds no buffer
//! (the deque allocates on the first frame and gives memory back when it drains after a burst),
//! and pushing is one short lock plus a wake, with no semaphore. Thousands of idle sockets are
//! the common case for a hub, so those bytes count.

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

/// Deque capacity kept after a burst drains; above it the memory is returned.
const KEEP_CAPACITY: usize = 8;

struct Shared {
    queue: Mutex<VecDeque<Bytes>>,
    capacity: usize,
    waker: AtomicWaker,
    slow: AtomicBool,
    replaced: AtomicBool,
    closed: AtomicBool,
}

/// The sending side, held by the room and the connection itself.
#[derive(Clone)]
pub struct Outbound {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("slow", &self.is_slow()).finish_non_exhaustive()
    }
}

/// The receiving side, owned by the connection's task.
pub struct OutboundRx {
    shared: Arc<Shared>,
}

/// What the connection's writer gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A frame to write.
    Frame(Bytes),
    /// The queue overflowed: close the connection as a slow consumer.
    Slow,
    /// The participant opened more connections than allowed and this is the oldest: close it.
    Replaced,
}

impl Outbound {
    /// A queue of at most `capacity` frames and its receiving end.
    pub fn new(capacity: usize) -> (Self, OutboundRx) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            waker: AtomicWaker::new(),
            slow: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        (Self { shared: shared.clone() }, OutboundRx { shared })
    }

    /// Queues a frame without waiting. On a full queue the connection is flagged slow and
    /// `false` is returned; on a closed or already slow one, `false` too.
    pub fn push(&self, frame: Bytes) -> bool {
        let s = &self.shared;
        if s.closed.load(Ordering::Acquire) || s.slow.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= s.capacity {
                drop(q);
                s.slow.store(true, Ordering::Release);
                s.waker.wake();
                return false;
            }
            q.push_back(frame);
        }
        s.waker.wake();
        true
    }

    /// Asks the connection to close because a newer one of the same participant replaced it.
    pub fn replace(&self) {
        self.shared.replaced.store(true, Ordering::Release);
        self.shared.waker.wake();
    }

    /// Whether the queue overflowed.
    pub fn is_slow(&self) -> bool {
        self.shared.slow.load(Ordering::Acquire)
    }
}

impl OutboundRx {
    /// Waits for the next frame, or for the slow-consumer flag (which wins over queued frames:
    /// the connection is closing and the client resyncs anyway).
    pub async fn next(&mut self) -> Next {
        std::future::poll_fn(|cx| {
            if let Some(next) = self.poll_now() {
                return Poll::Ready(next);
            }
            self.shared.waker.register(cx.waker());
            // Re-check after registering, so a push in between is not missed.
            match self.poll_now() {
                Some(next) => Poll::Ready(next),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// A queued frame, if there is one now.
    pub fn try_next(&mut self) -> Option<Bytes> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let frame = q.pop_front();
        if q.is_empty() && q.capacity() > KEEP_CAPACITY {
            q.shrink_to(KEEP_CAPACITY);
        }
        frame
    }

    fn poll_now(&mut self) -> Option<Next> {
        if self.shared.slow.load(Ordering::Acquire) {
            return Some(Next::Slow);
        }
        if self.shared.replaced.load(Ordering::Acquire) {
            return Some(Next::Replaced);
        }
        self.try_next().map(Next::Frame)
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_flags_the_connection_and_wins_over_queued_frames() {
        let (out, mut rx) = Outbound::new(2);
        assert!(out.push(Bytes::from_static(b"a")));
        assert!(out.push(Bytes::from_static(b"b")));
        assert!(!out.is_slow());
        assert_eq!(rx.next().await, Next::Frame(Bytes::from_static(b"a")));
        assert!(out.push(Bytes::from_static(b"c")));
        assert!(!out.push(Bytes::from_static(b"d")), "third queued frame does not fit");
        assert!(out.is_slow());
        assert_eq!(rx.next().await, Next::Slow);
    }

    #[tokio::test]
    async fn a_push_wakes_a_waiting_receiver_and_a_closed_queue_refuses() {
        let (out, mut rx) = Outbound::new(4);
        let waiting = tokio::spawn(async move {
            let first = rx.next().await;
            (first, rx)
        });
        tokio::task::yield_now().await;
        assert!(out.push(Bytes::from_static(b"x")));
        let (first, rx) = waiting.await.unwrap();
        assert_eq!(first, Next::Frame(Bytes::from_static(b"x")));
        drop(rx);
        assert!(!out.push(Bytes::from_static(b"y")), "nobody reads a closed queue");
        assert!(!out.is_slow());
    }

    #[test]
    fn memory_is_given_back_after_a_burst() {
        let (out, mut rx) = Outbound::new(1000);
        for _ in 0..500 {
            out.push(Bytes::from_static(b"f"));
        }
        while rx.try_next().is_some() {}
        assert!(rx.shared.queue.lock().unwrap().capacity() <= KEEP_CAPACITY);
    }
}

//! A connection's bounded outbound queue of encoded frames. Frames are shared bytes: one
//! encoding of an event is handed to every member of the same role without copying. Fan-out
//! never waits for a peer: a full queue marks the connection as a slow consumer, and its writer
//! closes it so the client reconnects and resyncs.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The sending side, held by the room and the connection's own tasks.
#[derive(Clone, Debug)]
pub struct Outbound {
    tx: mpsc::Sender<Bytes>,
    slow: CancellationToken,
}

impl Outbound {
    /// A queue of `capacity` frames and its receiving end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx, slow: CancellationToken::new() }, rx)
    }

    /// Queues a frame without waiting. On a full queue the connection is flagged slow and
    /// `false` is returned; on a closed one, `false` too.
    pub fn push(&self, frame: Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Cancelled when the queue overflowed.
    pub fn slow_consumer(&self) -> &CancellationToken {
        &self.slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_flags_the_connection() {
        let (out, mut rx) = Outbound::new(2);
        assert!(out.push(Bytes::from_static(b"a")));
        assert!(out.push(Bytes::from_static(b"b")));
        assert!(!out.slow_consumer().is_cancelled());
        assert!(!out.push(Bytes::from_static(b"c")), "third frame does not fit");
        assert!(out.slow_consumer().is_cancelled());
        assert_eq!(&rx.try_recv().unwrap()[..], b"a");
    }
}

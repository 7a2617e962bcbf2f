//! One connection's life in one task: join the room, send `welcome` from the store, then one
//! thin loop serves the socket until it ends: it drains the bounded outbound queue, pings,
//! reads client frames and closes on overflow, heartbeat loss or shutdown. What a frame means
//! is decided elsewhere: [`super::decode`] turns text into a message or a refusal,
//! [`super::limit`] rate-limits, [`super::dispatch`] acts.

use super::decode::{binary_refused, decode, refused_frame};
use super::dispatch::Dispatch;
use super::limit::{RateLimit, Verdict};
use crate::app::AppState;
use crate::auth::JoinClaims;
use crate::bus::RoomEvent;
use crate::payments::{Caller, Refusal};
use crate::rooms::view::{encode, payment_view, visible_to};
use crate::rooms::{Next, Outbound};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use callpay_protocol::{ErrorCode, PROTOCOL_VERSION, ServerMsg, close};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// What a client over its frame budget is told (once per notice window).
fn rate_limited() -> Refusal {
    Refusal::new(ErrorCode::RateLimited, "Too many messages; slow down. Further frames are dropped until you do.", None)
}

/// An `error` frame telling the client why its frame was refused.
pub(super) fn error_frame(app: &AppState, call_id: &str, r: Refusal) -> Bytes {
    let retry_after_ms = r.retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let msg = ServerMsg::Error { code: r.code, message: r.message, reference: r.reference, retry_after_ms };
    encode(app.hub.rooms.seq(call_id), msg)
}

/// A frame as a text message; frames are UTF-8 JSON, so the check never fails in practice.
fn text(frame: Bytes) -> Option<Message> {
    Utf8Bytes::try_from(frame).ok().map(Message::Text)
}

/// Keeps a new connection from getting, after its `welcome`, payment frames the welcome
/// already covers: those the room queued before the snapshot was read (their sequence is at
/// most `covered`), and, up to the room's sequence once it held the snapshot (`seeded`), those
/// about a payment at a version no newer than the welcome shows. Such a frame would say again
/// what the client has, and a `payment.confirmed` among them would be a second notice for a
/// payment the welcome shows paid. Checking ends at the first frame past `seeded` (a room
/// queues its frames in sequence order), and the versions are dropped then.
struct Stale {
    covered: u64,
    seeded: u64,
    // Boxed on purpose: `None` for almost every connection, and this lives as long as the
    // connection's task, where 8 bytes instead of 48 count per idle socket.
    #[allow(clippy::box_collection)]
    shown: Option<Box<std::collections::HashMap<String, i64>>>,
}

impl Stale {
    fn after(covered: u64, (seeded, shown): (u64, Vec<(String, i64)>)) -> Self {
        // Only a room that queued frames while the snapshot was read needs the versions.
        let shown = (seeded > covered).then(|| Box::new(shown.into_iter().collect()));
        Self { covered, seeded, shown }
    }

    fn skip(&mut self, frame: &[u8]) -> bool {
        if self.seeded == 0 {
            return false;
        }
        let Some((seq, kind)) = crate::rooms::view::frame_head(frame) else { return false };
        if kind == "error" {
            // Carries the current sequence without being a room event.
            return false;
        }
        if seq > self.seeded {
            *self = Self { covered: 0, seeded: 0, shown: None };
            return false;
        }
        if !crate::rooms::view::covered_by_snapshot(kind) {
            return false;
        }
        if seq <= self.covered {
            return true;
        }
        let Some(shown) = &self.shown else { return false };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else { return false };
        let newer = |p: &serde_json::Value| {
            let id = p["payment_id"].as_str().unwrap_or_default();
            shown.get(id).is_none_or(|have| p["version"].as_i64().unwrap_or(i64::MAX) > *have)
        };
        if kind == "payment.sync" {
            !v["payments"].as_array().is_some_and(|ps| ps.iter().any(newer))
        } else {
            !newer(&v["payment"])
        }
    }
}

/// Counts the connection as closed however `run` returns, early returns included.
struct ClosedOnDrop<'a>(&'a crate::metrics::Metrics);

impl Drop for ClosedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.connections_closed.inc();
    }
}

/// Sends one message within `deadline`; false if it failed or the peer did not take it in time.
async fn send_within(socket: &mut WebSocket, msg: Message, deadline: Duration) -> bool {
    matches!(tokio::time::timeout(deadline, socket.send(msg)).await, Ok(Ok(())))
}

fn close_with(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.to_owned().into() }))
}

/// Closes a join the hub shed with `4013`, when to retry and the ticket to retry with.
pub async fn shed(mut socket: WebSocket, retry: Duration, ticket: String) {
    let reason = crate::pacing::busy_reason(retry, &ticket);
    send_within(&mut socket, close_with(close::BUSY, &reason), Duration::from_secs(1)).await;
}

/// Runs a connection to completion.
///
/// One owner of the socket for both directions: split halves would take a lock on every read
/// and write. It is `mut` from the start: rebinding it after an `.await` (the presence read)
/// made the task keep two copies of the socket, ~0.4 KB more for every connection.
pub async fn run(
    mut socket: WebSocket,
    app: AppState,
    claims: JoinClaims,
    _permit: OwnedSemaphorePermit,
    join_slot: crate::pacing::Slot,
) {
    let participant = claims.participant();
    let call_id = claims.call_id.clone();
    let clinic_id = claims.clinic_id.clone();
    app.metrics.connections_opened.inc();
    let _closed = ClosedOnDrop(&app.metrics);
    // Every socket write is bounded: a peer that stops reading blocks writes once its TCP
    // window is full, and nothing else in this connection may wait on it for longer than this.
    let write_deadline = Duration::from_millis(app.config.server.write_timeout_ms.max(1));
    let (out, mut out_rx) = Outbound::new(app.config.server.outbound_queue);
    // A room opening here learns from the presence record who is on other nodes.
    let read_at = std::time::Instant::now();
    // The presence calls are skipped on a lone node (there is nobody to share with) and boxed
    // otherwise, so their timers and requests are not laid out in this long-lived task.
    let shared = app.hub.has_peers();
    let remote =
        if shared && !app.hub.rooms.has(&call_id) { Box::pin(app.hub.remote_presence(&call_id)).await } else { None };
    // Join before reading the snapshot: anything that happens meanwhile is queued behind
    // `welcome`, and clients drop what the snapshot already covers by version.
    let mut joined = app.hub.rooms.join(&call_id, &clinic_id, participant.clone(), out.clone());
    // Taken out of `joined`, which lives as long as the connection: the list is only needed
    // for `welcome`, and left in place it would stay allocated for the connection's life.
    let mut participants = std::mem::take(&mut joined.participants);
    if let Some(remote) = remote {
        app.hub.adopt_presence(&call_id, remote, read_at);
        participants = app.hub.rooms.visible(&call_id);
    }
    // The welcome waits until this node hears the call (other nodes' events on it and on its
    // clinic reach it), so that a frame sent to this socket after its welcome cannot be lost to
    // a subscription not yet live, and the snapshot below, read once it hears, misses nothing
    // committed elsewhere. A call this node already hears costs one lookup. The join keeps its
    // place at the gate meanwhile: reading the snapshot first would let a repair newer than the
    // welcome reach a room that has not seen the welcome's payments (no `payment.confirmed`).
    if shared {
        let within = Duration::from_millis(app.config.bus.subscribe_wait_ms);
        if !Box::pin(app.hub.hears(&call_id, within)).await {
            app.metrics.welcomes_unheard.inc();
            tracing::debug!(call_id, "welcome sent before this node hears the call; its repair follows");
        }
    }
    // Frames the room queued for this connection up to now come from changes committed before
    // the snapshot below is read: the welcome already shows their payments as they are or
    // newer, so they are not sent again (a `payment.confirmed` among them would be a second
    // notice for a payment the welcome shows paid).
    let covered = app.hub.rooms.seq(&call_id);
    let (welcome, mut stale) = match welcome(&app, &claims, &joined.membership, joined.seq, participants).await {
        Ok((w, seeded)) => (w, Stale::after(covered, seeded)),
        Err(e) => {
            tracing::error!(error = %e, call_id, "cannot build welcome: store unavailable");
            let frame = error_frame(
                &app,
                &call_id,
                Refusal::new(ErrorCode::Internal, "The hub cannot load this call right now; reconnect shortly.", None),
            );
            if let Some(m) = text(frame)
                && send_within(&mut socket, m, write_deadline).await
            {
                send_within(&mut socket, close_with(1011, "store unavailable"), write_deadline).await;
            }
            return;
        }
    };
    // The store's part of the join is done: the next join may take this place. The presence
    // write waits on Redis, not on the store; holding the place through the waits on Redis shed
    // more of a drained node's clients (README, "when a `welcome` waits to hear the call").
    drop(join_slot);
    // The number of the presence write that records this join here, for its event to carry.
    let presence_write =
        if shared && joined.first_connection { Box::pin(app.hub.share_presence(&call_id)).await } else { 0 };
    let Some(welcome) = text(welcome) else { return };
    if !send_within(&mut socket, welcome, write_deadline).await {
        tracing::debug!(call_id, sub = %participant.id, "welcome not written");
        return;
    }
    tracing::debug!(call_id, sub = %participant.id, "welcome written");
    if joined.first_connection {
        app.hub.publish(
            &call_id,
            &clinic_id,
            RoomEvent::Joined { participant: participant.clone(), write: presence_write },
        );
    }

    let caller = Caller { participant: participant.clone(), call_id: call_id.clone(), clinic_id: clinic_id.clone() };
    let mut dispatch = Dispatch::default();
    let ping_every = Duration::from_millis(app.config.server.ping_interval_ms.max(10));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    // A stalled session sends one ping when it wakes, not one per period it missed.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether a ping went out since the last frame the peer sent (pongs included). The
    // heartbeat is judged by it rather than by time since the last frame read: a session woken
    // late to its tick, as on a saturated machine, would count its own lateness against a peer
    // that answered every ping.
    let mut unanswered = false;
    let mut limit = RateLimit::new(app.config.server.rate_per_sec, app.config.server.rate_burst);
    // Created once and polled by reference: a `cancelled()` future made afresh on every turn of
    // the loop registers and unregisters a waiter each time (it showed in the relay profile).
    // `drain`, not `shutdown`: it fires once the listener is closed, so a client told to
    // reconnect cannot land on this node again. Then the session goes on serving its call until
    // the drain gives it its turn to close (a closed semaphore: every session may go).
    let shutdown = async {
        app.drain.cancelled().await;
        // Boxed: every idle socket holds this future, and unboxed its wait for a turn would
        // add its size to each of them for the whole session.
        if let Ok(turn) = Box::pin(app.drain_turns.acquire()).await {
            turn.forget();
        }
    };
    tokio::pin!(shutdown);
    // Each write is bounded by `write_deadline`, so the loop comes back to the slow-consumer
    // flag, shutdown and reading within that time whatever the peer does (and to the heartbeat
    // once nothing is waiting to be read: a peer whose frames keep coming is alive). A close
    // that cannot be written in time is abandoned: dropping the socket ends the TCP connection.
    let why = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                // Spread so that the fleet is not stampeded: a wave's window, or a lone node's
                // window sized to its own load.
                let spread = Duration::from_millis(app.drain_spread_ms.load(std::sync::atomic::Ordering::Acquire));
                let reason = crate::pacing::restarting_reason(spread);
                send_within(&mut socket, close_with(close::RESTARTING, &reason), write_deadline).await;
                break "shutdown";
            }
            next = out_rx.next() => {
                let frame = match next {
                    Next::Frame(frame) => frame,
                    Next::Slow => {
                        send_within(&mut socket, close_with(close::SLOW_CONSUMER, "outbound queue full; reconnect to resync"), write_deadline).await;
                        break "slow consumer";
                    }
                    Next::Replaced => {
                        send_within(&mut socket, close_with(close::REPLACED, "replaced by a newer connection of the same participant"), write_deadline).await;
                        break "replaced";
                    }
                };
                // Feed everything already queued, then flush once.
                let metrics = &app.metrics;
                let stale = &mut stale;
                let batch = async {
                    let mut depth = 1;
                    if !stale.skip(&frame) && let Some(m) = text(frame) {
                        socket.feed(m).await?;
                    }
                    while let Some(f) = out_rx.try_next() {
                        depth += 1;
                        if !stale.skip(&f) && let Some(m) = text(f) {
                            socket.feed(m).await?;
                        }
                    }
                    metrics.outbound_queue_depth.observe(f64::from(depth));
                    socket.flush().await
                };
                match tokio::time::timeout(write_deadline, batch).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        // The error says which: a reset, a broken pipe, or a write after the
                        // close handshake began (a close read while these frames were fed).
                        tracing::debug!(call_id, error = %e, "write failed");
                        break "write failed";
                    }
                    Err(_) => break "write deadline passed (peer not reading)",
                }
            }
            msg = socket.next() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        let Some((code, reason)) = refused_frame(e) else { break "connection lost" };
                        send_within(&mut socket, close_with(code, reason), write_deadline).await;
                        break reason;
                    }
                    None => break "peer closed",
                };
                let last_seen = Instant::now();
                unanswered = false;
                // Every frame from the client counts, binary and pings included.
                if !matches!(msg, Message::Close(_) | Message::Pong(_)) {
                    match limit.check() {
                        Verdict::Allow => {}
                        Verdict::Refuse { notify } => {
                            app.metrics.frames_refused.inc();
                            if notify {
                                out.push(error_frame(&app, &call_id, rate_limited()));
                            }
                            continue;
                        }
                        Verdict::Close => {
                            send_within(&mut socket, close_with(close::POLICY_VIOLATION, "flooding"), write_deadline).await;
                            break "flooding";
                        }
                    }
                }
                let refusal = match msg {
                    Message::Text(frame) => match decode(frame.as_str()) {
                        Ok(cmd) => dispatch.handle(&app, &caller, &out, cmd, last_seen),
                        Err(r) => Some(r),
                    },
                    Message::Binary(_) => Some(binary_refused()),
                    Message::Close(_) => break "peer closed",
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(r) = refusal {
                    app.metrics.frames_refused.inc();
                    out.push(error_frame(&app, &call_id, r));
                }
            }
            // After the read: a task woken late (a saturated machine) finds the tick and the
            // peer's pong ready together, and judged first the tick would close a peer that
            // answered. The tick stays ready until taken, so the next turn of the loop takes it.
            _ = ping.tick() => {
                // The last ping had a whole period (or more, if this tick is late) to be
                // answered, by a pong or any other frame.
                if unanswered {
                    send_within(&mut socket, close_with(close::HEARTBEAT_TIMEOUT, "no pong"), write_deadline).await;
                    break "heartbeat lost";
                }
                if !send_within(&mut socket, Message::Ping(Bytes::new()), write_deadline).await {
                    break "ping not written in time";
                }
                unanswered = true;
                // The peer gets a whole period from the ping being written, however long the
                // write took.
                ping.reset();
            }
        }
    };
    tracing::debug!(call_id, sub = %participant.id, why, "connection ended");
    app.metrics.ended(why);
    drop(dispatch);
    if let Some(left) = joined.membership.leave() {
        let write = if shared { Box::pin(app.hub.share_presence(&call_id)).await } else { 0 };
        app.hub.publish(&call_id, &clinic_id, RoomEvent::Left { participant: left, write });
    }
}

/// The `welcome` frame, and what it covers of the frames already queued: the payments' versions
/// it shows, and the room's sequence once the room holds them.
async fn welcome(
    app: &AppState,
    claims: &JoinClaims,
    membership: &crate::rooms::Membership,
    seq: u64,
    participants: Vec<callpay_protocol::Participant>,
) -> Result<(Bytes, (u64, Vec<(String, i64)>)), crate::store::StoreError> {
    // One read for both: a join's cost is mostly its round trips to the store.
    let crate::store::CallSnapshot { clinic, payments } =
        app.store.call_snapshot(&claims.call_id, &claims.clinic_id).await?;
    let (progress, seeded) = app.hub.rooms.remember_payments(membership, &payments);
    let shown: Vec<(String, i64)> = payments.iter().map(|p| (p.id.clone(), p.version)).collect();
    let role = claims.role;
    let pk = &app.config.stripe.publishable_key;
    let frame = encode(
        seq,
        ServerMsg::Welcome {
            protocol_version: PROTOCOL_VERSION,
            call_id: claims.call_id.clone(),
            clinic_name: clinic.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
            you: claims.participant(),
            participants,
            payments: payments.iter().filter(|p| visible_to(p, role)).map(|p| payment_view(p, role, pk)).collect(),
            payments_available: clinic.as_ref().is_some_and(|c| c.payment_readiness().is_ok()),
            progress,
            unavailable_reason: match clinic.as_ref().map(|c| c.payment_readiness()) {
                Some(Ok(_)) => None,
                Some(Err(code)) => Some(code),
                None => Some(ErrorCode::AppNotEnabled),
            },
        },
    );
    Ok((frame, (seeded, shown)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_frames_queued_before_the_snapshot_are_not_sent_twice() {
        use callpay_protocol::{ErrorCode, ServerMsg};
        let clinic = |seq| encode(seq, ServerMsg::ClinicUpdated { payments_available: true, reason: None });
        let confirmed = |seq, version: i64| {
            Bytes::from(format!(
                r#"{{"seq":{seq},"type":"payment.confirmed","payment":{{"payment_id":"pay_1","version":{version}}}}}"#
            ))
        };
        let error = |seq| {
            encode(
                seq,
                ServerMsg::Error {
                    code: ErrorCode::BadFrame,
                    message: "x".into(),
                    reference: None,
                    retry_after_ms: None,
                },
            )
        };
        let shown = vec![("pay_1".to_owned(), 4)];
        let mut stale = Stale::after(3, (6, shown.clone()));
        assert!(stale.skip(&confirmed(2, 9)), "queued before the snapshot was read: covered whatever it says");
        assert!(!stale.skip(&clinic(4)), "not a payment: the snapshot does not cover it");
        assert!(!stale.skip(&error(4)));
        assert!(stale.skip(&confirmed(5, 4)), "the welcome shows this version already");
        assert!(!stale.skip(&confirmed(6, 5)), "newer than the welcome: news");
        assert!(!stale.skip(&confirmed(7, 4)), "after the room held the snapshot: the room decides");
        assert!(!stale.skip(&confirmed(3, 1)), "checking stopped at the first later frame");
        assert!(
            !Stale::after(0, (0, shown)).skip(&confirmed(1, 1)),
            "nothing was queued before a fresh room's welcome"
        );
    }
}

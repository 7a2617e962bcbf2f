//! One connection's life in one task: join the room, send `welcome` from the store, then one
//! loop serves the socket until it ends: it reads and rate-limits client frames, relays
//! `payment.progress` on the spot (checked against the room's routing state, no store, no other
//! task), drains the bounded outbound queue, pings, and closes on overflow, heartbeat loss or
//! shutdown. Payment requests and cancels call Stripe and may take seconds, so a clinician's are
//! handed to a second task, started on the first one, which runs them in order; a patient never
//! has one.

use crate::app::AppState;
use crate::auth::JoinClaims;
use crate::bus::RoomEvent;
use crate::payments::{Caller, Refusal};
use crate::rooms::view::{encode, payment_view, visible_to};
use crate::rooms::{Next, Outbound};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use callpay_protocol::{ClientMsg, ErrorCode, PROTOCOL_VERSION, ProgressStage, ServerMsg, close};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Client commands waiting behind the one being handled. Beyond this the client is sending
/// faster than payments can be made and gets `rate_limited`.
const COMMAND_QUEUE: usize = 8;

/// Token bucket for client frames, with refusals coalesced: a flooding client is told
/// `rate_limited` at most once per [`NOTICE_WINDOW`] (one reply per refused frame would itself
/// overflow the outbound queue of a client that reads promptly), and closed with 1008 only
/// after [`FLOOD_WINDOWS`] windows in a row each had refused frames.
struct RateLimit {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
    /// When the current notice window started, and whether it refused anything yet.
    window: Instant,
    refused_in_window: bool,
    /// Consecutive windows with refusals.
    flood_windows: u32,
}

/// At most one `rate_limited` reply per this long.
const NOTICE_WINDOW: Duration = Duration::from_secs(1);
/// Windows in a row with refused frames before the connection is closed as abusive.
const FLOOD_WINDOWS: u32 = 10;

/// What to do with a client frame.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Handle it.
    Allow,
    /// Drop it; `notify`: tell the client `rate_limited` (first refusal of a window).
    Refuse { notify: bool },
    /// The flood went on: close the connection with 1008.
    Close,
}

impl RateLimit {
    fn new(per_sec: u32, burst: u32) -> Self {
        let now = Instant::now();
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            at: now,
            window: now,
            refused_in_window: false,
            flood_windows: 0,
        }
    }

    #[cfg(test)]
    fn allow(&mut self) -> bool {
        self.check_at(Instant::now()) == Verdict::Allow
    }

    fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Verdict {
        if now.duration_since(self.window) >= NOTICE_WINDOW {
            self.flood_windows = if self.refused_in_window { self.flood_windows + 1 } else { 0 };
            self.window = now;
            self.refused_in_window = false;
        }
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_sec).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if self.flood_windows >= FLOOD_WINDOWS {
            return Verdict::Close;
        }
        let notify = !self.refused_in_window;
        self.refused_in_window = true;
        Verdict::Refuse { notify }
    }
}

/// Whether a connection silent for `silent` has lost its heartbeat: no frame (pongs included)
/// for more than one and a half ping periods, so one late pong is tolerated but two are not.
fn heartbeat_lost(silent: Duration, ping_every: Duration) -> bool {
    silent > ping_every * 3 / 2
}

fn error_frame(app: &AppState, call_id: &str, r: Refusal) -> Bytes {
    encode(app.hub.rooms.seq(call_id), ServerMsg::Error { code: r.code, message: r.message, reference: r.reference })
}

/// A frame as a text message; frames are UTF-8 JSON, so the check never fails in practice.
fn text(frame: Bytes) -> Option<Message> {
    Utf8Bytes::try_from(frame).ok().map(Message::Text)
}

/// Longest explanation of a malformed frame sent back: the parser's message can quote the
/// client's own text (an unknown `type`, say), which must not come back unbounded.
const MAX_DECODE_MESSAGE: usize = 200;

/// Decodes a client frame; a non-integer amount on a request is `invalid_amount`, anything else
/// malformed is `bad_frame`. Whatever the input, a refusal's message is at most a few hundred
/// bytes and its reference a well-formed `client_ref`.
pub fn decode(text: &str) -> Result<ClientMsg, Refusal> {
    serde_json::from_str(text).map_err(|e| {
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        if value["type"] == "payment.request" && value.get("amount").is_some_and(|a| !a.is_i64()) {
            return Refusal::new(
                ErrorCode::InvalidAmount,
                "Amount must be a whole number of cents.",
                value["client_ref"].as_str(),
            );
        }
        let mut why = e.to_string();
        if why.len() > MAX_DECODE_MESSAGE {
            let cut = (0..=MAX_DECODE_MESSAGE).rev().find(|i| why.is_char_boundary(*i)).unwrap_or(0);
            why.truncate(cut);
            why.push('…');
        }
        Refusal { code: ErrorCode::BadFrame, message: format!("Not a valid protocol message: {why}"), reference: None }
    })
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
/// The close a frame the WebSocket layer refused deserves, so the client learns why instead of
/// seeing the connection vanish. `None` for transport failures, where nothing can be sent.
fn refused_frame(e: axum::Error) -> Option<(u16, &'static str)> {
    use tungstenite::Error;
    match *e.into_inner().downcast::<Error>().ok()? {
        Error::Capacity(_) => Some((close::MESSAGE_TOO_BIG, "frame larger than the hub accepts")),
        Error::Utf8(_) => Some((close::INVALID_PAYLOAD, "text frame is not valid UTF-8")),
        Error::Protocol(_) => Some((close::PROTOCOL_ERROR, "not a valid WebSocket frame")),
        _ => None,
    }
}

async fn send_within(socket: &mut WebSocket, msg: Message, deadline: Duration) -> bool {
    matches!(tokio::time::timeout(deadline, socket.send(msg)).await, Ok(Ok(())))
}

fn close_with(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// Runs a connection to completion.
///
/// One owner of the socket for both directions: split halves would take a lock on every read
/// and write. It is `mut` from the start: rebinding it after an `.await` (the presence read)
/// made the task keep two copies of the socket, ~0.4 KB more for every connection.
pub async fn run(mut socket: WebSocket, app: AppState, claims: JoinClaims, _permit: OwnedSemaphorePermit) {
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
    let shared = app.hub.shares_presence();
    let remote =
        if shared && !app.hub.rooms.has(&call_id) { Box::pin(app.hub.remote_presence(&call_id)).await } else { None };
    // Join before reading the snapshot: anything that happens meanwhile is queued behind
    // `welcome`, and clients drop what the snapshot already covers by version.
    let mut joined = app.hub.rooms.join(&call_id, &clinic_id, participant.clone(), out.clone());
    // Taken out of `joined`, which lives as long as the connection: the list is only needed
    // for `welcome`, and left in place it would stay allocated for the connection's life.
    let mut participants = std::mem::take(&mut joined.participants);
    if let Some(remote) = remote {
        app.hub.rooms.sync_remote(&call_id, remote, read_at);
        participants = app.hub.rooms.visible(&call_id);
    }
    if shared && joined.first_connection {
        Box::pin(app.hub.share_presence(&call_id)).await;
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
                Refusal {
                    code: ErrorCode::Internal,
                    message: "The hub cannot load this call right now; reconnect shortly.".into(),
                    reference: None,
                },
            );
            if let Some(m) = text(frame)
                && send_within(&mut socket, m, write_deadline).await
            {
                send_within(&mut socket, close_with(1011, "store unavailable"), write_deadline).await;
            }
            return;
        }
    };
    let Some(welcome) = text(welcome) else { return };
    if !send_within(&mut socket, welcome, write_deadline).await {
        return;
    }
    if joined.first_connection {
        app.hub.publish(&call_id, &clinic_id, RoomEvent::Joined { participant: participant.clone() });
    }

    let caller = Caller { participant: participant.clone(), call_id: call_id.clone(), clinic_id: clinic_id.clone() };
    let mut commands_tx: Option<mpsc::Sender<ClientMsg>> = None;
    let ping_every = Duration::from_millis(app.config.server.ping_interval_ms.max(10));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_seen = Instant::now();
    let mut limit = RateLimit::new(app.config.server.rate_per_sec, app.config.server.rate_burst);
    // Created once and polled by reference: a `cancelled()` future made afresh on every turn of
    // the loop registers and unregisters a waiter each time (it showed in the relay profile).
    // `drain`, not `shutdown`: it fires once the listener is closed, so a client told to
    // reconnect at once cannot land on this node again.
    let shutdown = app.drain.clone();
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    // Each write is bounded by `write_deadline`, so the loop comes back to the slow-consumer
    // flag, shutdown, the heartbeat and reading within that time whatever the peer does. A close
    // that cannot be written in time is abandoned: dropping the socket ends the TCP connection.
    let why = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                send_within(&mut socket, close_with(close::RESTARTING, "hub node stopping; reconnect now"), write_deadline).await;
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
                    Ok(Err(_)) => break "write failed",
                    Err(_) => break "write deadline passed (peer not reading)",
                }
            }
            _ = ping.tick() => {
                if heartbeat_lost(last_seen.elapsed(), ping_every) {
                    send_within(&mut socket, close_with(close::HEARTBEAT_TIMEOUT, "no pong"), write_deadline).await;
                    break "heartbeat lost";
                }
                if !send_within(&mut socket, Message::Ping(Bytes::new()), write_deadline).await {
                    break "ping not written in time";
                }
            }
            msg = socket.next() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        let Some((code, reason)) = refused_frame(e) else { break "read failed" };
                        send_within(&mut socket, close_with(code, reason), write_deadline).await;
                        break reason;
                    }
                    None => break "peer closed",
                };
                last_seen = Instant::now();
                // Every frame from the client counts, binary and pings included.
                if !matches!(msg, Message::Close(_) | Message::Pong(_)) {
                    match limit.check() {
                        Verdict::Allow => {}
                        Verdict::Refuse { notify } => {
                            app.metrics.frames_refused.inc();
                            if notify {
                                let r = Refusal {
                                    code: ErrorCode::RateLimited,
                                    message: "Too many messages; slow down. Further frames are dropped until you do.".into(),
                                    reference: None,
                                };
                                out.push(error_frame(&app, &call_id, r));
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
                        Ok(ClientMsg::PaymentProgress { payment_id, stage }) => {
                            let refused = app.payments.progress(&caller, &payment_id, stage).err();
                            if refused.is_none() {
                                crate::metrics::Metrics::since(&app.metrics.relay_seconds, last_seen);
                                // Stripe.js finished (or 3-D Secure opened): ask Stripe now
                                // rather than wait for the webhook.
                                if matches!(stage, ProgressStage::Submitted | ProgressStage::Authenticating) {
                                    let payments = app.payments.clone();
                                    app.tracker.spawn(async move {
                                        payments.verify(&payment_id, crate::payments::verify::Reason::PageAsked).await;
                                    });
                                }
                            }
                            refused
                        }
                        Ok(cmd) => {
                            let tx = commands_tx.get_or_insert_with(|| {
                                let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                                app.tracker.spawn(commands(app.clone(), caller.clone(), rx, out.clone()));
                                tx
                            });
                            tx.try_send(cmd).err().map(|_| Refusal {
                                code: ErrorCode::RateLimited,
                                message: "Too many requests in flight; wait for the earlier ones.".into(),
                                reference: None,
                            })
                        }
                        Err(r) => Some(r),
                    },
                    Message::Binary(_) => Some(Refusal {
                        code: ErrorCode::BadFrame,
                        message: "Binary frames are not part of the protocol.".into(),
                        reference: None,
                    }),
                    Message::Close(_) => break "peer closed",
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(r) = refusal {
                    app.metrics.frames_refused.inc();
                    out.push(error_frame(&app, &call_id, r));
                }
            }
        }
    };
    tracing::debug!(call_id, why, "connection ended");
    drop(commands_tx);
    if let Some(left) = joined.membership.leave() {
        if shared {
            Box::pin(app.hub.share_presence(&call_id)).await;
        }
        app.hub.publish(&call_id, &clinic_id, RoomEvent::Left { participant: left });
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
    let payments = app.payments.snapshot(&claims.call_id).await?;
    let (progress, seeded) = app.hub.rooms.remember_payments(membership, &payments);
    let shown: Vec<(String, i64)> = payments.iter().map(|p| (p.id.clone(), p.version)).collect();
    let clinic = app.store.clinic(&claims.clinic_id).await?;
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

async fn commands(app: AppState, caller: Caller, mut rx: mpsc::Receiver<ClientMsg>, out: Outbound) {
    while let Some(cmd) = rx.recv().await {
        let result = match cmd {
            ClientMsg::PaymentRequest { client_ref, amount, currency, description } => {
                app.payments.request(&caller, &client_ref, amount, &currency, &description).await
            }
            ClientMsg::PaymentCancel { payment_id } => app.payments.cancel(&caller, &payment_id).await,
            ClientMsg::PaymentProgress { payment_id, stage } => app.payments.progress(&caller, &payment_id, stage),
        };
        if let Err(r) = result {
            app.metrics.frames_refused.inc();
            out.push(error_frame(&app, &caller.call_id, r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_sorts_bad_frames() {
        assert!(decode(r#"{"type":"payment.cancel","payment_id":"p"}"#).is_ok());
        assert_eq!(decode("not json").unwrap_err().code, ErrorCode::BadFrame);
        assert_eq!(decode(r#"{"type":"nope"}"#).unwrap_err().code, ErrorCode::BadFrame);
        let r =
            decode(r#"{"type":"payment.request","client_ref":"r1","amount":12.5,"currency":"aud","description":"d"}"#)
                .unwrap_err();
        assert_eq!((r.code, r.reference.as_deref()), (ErrorCode::InvalidAmount, Some("r1")));
        assert_eq!(
            decode(r#"{"type":"payment.request","client_ref":"r1","amount":"50","currency":"aud","description":"d"}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidAmount
        );
    }

    #[test]
    fn a_refusal_never_quotes_the_client_at_length() {
        // serde names an unknown variant in its message, so an unbounded `type` used to come
        // straight back in the error frame.
        let huge = format!(r#"{{"type":"{}ü"}}"#, "x".repeat(20_000));
        let r = decode(&huge).unwrap_err();
        assert_eq!(r.code, ErrorCode::BadFrame);
        assert!(r.message.len() < 300, "{} bytes", r.message.len());
    }

    #[test]
    fn heartbeat_tolerates_one_late_pong_not_two() {
        let every = Duration::from_secs(15);
        assert!(!heartbeat_lost(Duration::from_secs(15), every), "just pinged, pong not due yet");
        assert!(!heartbeat_lost(Duration::from_millis(22_500), every));
        assert!(heartbeat_lost(Duration::from_millis(22_501), every));
        assert!(heartbeat_lost(Duration::from_secs(30), every));
    }

    #[test]
    fn refusals_are_coalesced_per_window_and_a_long_flood_closes() {
        let mut r = RateLimit::new(1, 1);
        let t0 = Instant::now();
        assert_eq!(r.check_at(t0), Verdict::Allow);
        assert_eq!(r.check_at(t0), Verdict::Refuse { notify: true });
        assert_eq!(r.check_at(t0), Verdict::Refuse { notify: false }, "one notice per window");
        // Flooding every window: the tenth window in a row closes.
        let mut verdict = Verdict::Allow;
        for w in 1..=FLOOD_WINDOWS + 1 {
            let at = t0 + NOTICE_WINDOW * w;
            let _ = r.check_at(at); // a token refilled each second
            verdict = r.check_at(at);
            if verdict == Verdict::Close {
                break;
            }
        }
        assert_eq!(verdict, Verdict::Close);
        // A quiet window forgives.
        let mut q = RateLimit::new(1, 1);
        assert_eq!(q.check_at(t0), Verdict::Allow);
        assert_eq!(q.check_at(t0), Verdict::Refuse { notify: true });
        assert_eq!(q.check_at(t0 + NOTICE_WINDOW * 2), Verdict::Allow);
        assert_eq!(q.flood_windows, 1);
        assert_eq!(q.check_at(t0 + NOTICE_WINDOW * 4), Verdict::Allow);
        assert_eq!(q.flood_windows, 0);
    }

    #[test]
    fn payment_frames_queued_before_the_snapshot_are_not_sent_twice() {
        use callpay_protocol::{ErrorCode, ServerMsg};
        let clinic = |seq| encode(seq, ServerMsg::ClinicUpdated { payments_available: true, reason: None });
        let confirmed = |seq, version: i64| {
            Bytes::from(format!(
                r#"{{"seq":{seq},"type":"payment.confirmed","payment":{{"payment_id":"pay_1","version":{version}}}}}"#
            ))
        };
        let error =
            |seq| encode(seq, ServerMsg::Error { code: ErrorCode::BadFrame, message: "x".into(), reference: None });
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

    #[test]
    fn rate_limit_allows_a_burst_then_refuses() {
        let mut r = RateLimit::new(1, 3);
        assert!(r.allow() && r.allow() && r.allow());
        assert!(!r.allow());
    }
}

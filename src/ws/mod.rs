//! WebSocket transport: the upgrade handler (authenticates before upgrading and enforces the
//! connection cap and frame limits) and one session task per connection.

mod decode;
mod dispatch;
pub(crate) mod drain;
mod limit;
mod session;

pub use decode::decode as decode_frame;

use crate::app::AppState;
use crate::http::{ApiError, Bearer, Path};
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};

/// Bytes read from the socket at a time. Client frames are well under this; a rare larger one
/// takes a few reads. Every idle socket holds this buffer, so it is kept small.
const READ_BUFFER: usize = 1024;
/// Bytes gathered before a write goes to the socket (a flush always writes everything).
const WRITE_BUFFER: usize = 8 * 1024;

/// `GET /v1/calls/{call_id}/ws` (`?ticket=` when coming back after `4013`).
pub async fn upgrade(
    State(app): State<AppState>,
    Path(call_id): Path<String>,
    uri: Uri,
    token: Result<Bearer, ApiError>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(r) => return ApiError::from(r).into_response(),
    };
    let Bearer(token) = match token {
        Ok(t) => t,
        Err(e) => {
            app.metrics.joins_refused.inc();
            return e.into_response();
        }
    };
    let claims = match app.verifier.join(&token, &call_id) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(call_id, error = %e, "join refused");
            app.metrics.joins_refused.inc();
            return ApiError::unauthorized("The join token is not valid for this call.").into_response();
        }
    };
    if app.hub.rooms.members(&call_id) >= app.config.server.max_sockets_per_call {
        tracing::debug!(call_id, "join refused: the call is at its socket cap here");
        return ApiError::overloaded("This call has as many connections as it may have on this hub.").into_response();
    }
    // Past what the store can serve, a join is told when to come back (a close code a browser
    // can read, unlike a refused upgrade's status) and costs the store nothing. It is given a
    // ticket for its place, so when it comes back it goes ahead of joins that have not waited.
    let now_ms = crate::store::now_ms().max(0) as u64;
    let ticketed = ticket_of(&uri).is_some_and(|t| app.join_tickets.honours(t, &call_id, &claims.sub, now_ms));
    let slot = match app.joins.enter(ticketed) {
        Ok(slot) => {
            if ticketed {
                app.metrics.joins_ticketed.inc();
            }
            slot
        }
        Err(retry) => {
            app.metrics.joins_shed.inc();
            let ticket = app.join_tickets.issue(&call_id, &claims.sub, now_ms + retry.as_millis() as u64);
            return ws
                .protocols([callpay_protocol::SUBPROTOCOL])
                .on_upgrade(move |socket| session::shed(socket, retry, ticket));
        }
    };
    // A call belongs to the clinic of its first join: a token naming another clinic for the same
    // call id would otherwise see (and cancel) the first clinic's payments. A call with a room
    // here was bound by the join that opened it.
    let bound = match app.hub.rooms.clinic_of(&call_id) {
        Some(clinic) => Ok(clinic),
        None => app.store.bind_call(&call_id, &claims.clinic_id).await,
    };
    match bound {
        Ok(bound) if bound == claims.clinic_id => {}
        Ok(_) => {
            tracing::warn!(call_id, clinic_id = claims.clinic_id, "join refused: the call belongs to another clinic");
            app.metrics.joins_refused.inc();
            return ApiError::unauthorized("The join token is not valid for this call.").into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, call_id, "cannot bind the call to its clinic: store unavailable");
            return ApiError::unavailable("The hub cannot admit you right now; retry shortly.").into_response();
        }
    }
    let Ok(permit) = app.connection_slots.clone().try_acquire_owned() else {
        tracing::debug!(call_id, "join refused: the hub is at its connection cap");
        app.metrics.joins_at_capacity.inc();
        return ApiError::overloaded("This hub is at its connection limit; retry shortly.").into_response();
    };
    let limit = app.config.server.max_message_bytes;
    // Buffers sized for a signalling hub whose frames are well under 16 KiB: tungstenite's
    // defaults (128 KiB read buffer, 128 KiB write target, unbounded write buffer) cost about
    // 150 KB of RSS per idle socket. The write buffer is bounded: a peer that stops reading
    // errors out instead of growing it.
    // Selects callpay.v1 when offered (browsers require an answer when they offer subprotocols);
    // the bearer entry is never selected, so the token is not echoed back.
    ws.protocols([callpay_protocol::SUBPROTOCOL])
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * limit)
        .on_upgrade(move |socket| {
            let sessions = app.sessions.clone();
            sessions.track_future(session::run(socket, app, claims, permit, slot))
        })
}

/// The `ticket` query parameter, if the join came back with one.
fn ticket_of(uri: &Uri) -> Option<&str> {
    uri.query()?.split('&').find_map(|pair| pair.strip_prefix("ticket="))
}

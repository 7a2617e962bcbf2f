//! Sockets that misbehave at the TCP level: a peer that stops reading (its TCP window fills and
//! every write to it blocks) and a peer that stops answering pings. Both must lose their socket,
//! connection slot and room membership within a bounded time while the rest of the call goes on.

use crate::helpers::*;
use callpay::bus::RoomEvent;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

/// Opens a WebSocket whose kernel receive buffer is as small as Linux allows, and never reads
/// from it: the hub's writes to it block as soon as a few KiB are in flight.
async fn non_reading_socket(hub: &TestHub, token: &str) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let addr: std::net::SocketAddr = hub.info.hub_url.trim_start_matches("http://").parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = hub.ws_url(&hub.info.call_id, token);
    tokio_tungstenite::client_async(ws_request(&url), stream).await.expect("upgrade").0
}

/// A made-up participant whose name carries the payload: presence frames go to every member.
fn visitor(name: &str) -> callpay_protocol::Participant {
    callpay_protocol::Participant { id: "load".into(), name: name.into(), role: callpay_protocol::Role::Patient }
}

fn open_connections(hub: &TestHub) -> usize {
    hub.state.hub.rooms.connections()
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_dropped_and_the_call_goes_on() {
    let hub = TestHub::start_with(|c| c.server.write_timeout_ms = 500).await;
    let stalled = non_reading_socket(&hub, &hub.info.clinician_token).await;
    let mut patient = hub.patient().await;
    assert_eq!(open_connections(&hub), 2);

    // The patient reads promptly and counts what it gets; the clinician's socket never reads.
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        loop {
            let f = patient.next().await;
            if f["type"] == "participant.joined" && f["participant"]["id"] == "load" {
                got += 1;
                if f["participant"]["name"] == "done" {
                    return (patient, got);
                }
            }
        }
    });
    // About 16 MB of room events, paced so a reading peer keeps up with its 64-frame queue.
    let (call, clinic) = (hub.info.call_id.clone(), callpay::demo::DEMO_CLINIC.to_owned());
    let big = "x".repeat(8 * 1024);
    for i in 0..2_000 {
        let event = RoomEvent::Joined { participant: visitor(&big), write: 0 };
        hub.state.hub.publish(&call, &clinic, event);
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // The stalled socket loses its slot and membership within a few seconds.
    eventually(async || (open_connections(&hub) == 1).then_some(())).await;
    let closed = hub.state.metrics.connections_closed.get();
    assert_eq!(closed, 1, "exactly the stalled connection ended");

    // The patient got every event, and still gets new ones.
    let event = RoomEvent::Joined { participant: visitor("done"), write: 0 };
    hub.state.hub.publish(&call, &clinic, event);
    let (_patient, got) = tokio::time::timeout(WAIT, reader).await.expect("patient keeps receiving").unwrap();
    assert_eq!(got, 2_001, "the reading member missed nothing");

    // Whatever the stalled peer reads now ends: a close frame or the end of the TCP stream.
    let mut stalled = stalled;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stalled.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the hub ended the stalled connection");
    assert!(matches!(ended, None | Some(4008)), "closed as a slow consumer or dropped: {ended:?}");
}

/// A client that vanishes without the closing handshake (a phone losing its network, a tab
/// killed) is a lost connection, not a peer sending a bad frame.
#[tokio::test]
async fn a_peer_gone_without_closing_is_counted_as_a_lost_connection() {
    let hub = TestHub::start().await;
    let patient = hub.patient().await;
    drop(patient);
    eventually(async || (open_connections(&hub) == 0).then_some(())).await;
    let text = hub.state.metrics.render(0);
    let ended: Vec<&str> = text.lines().filter(|l| l.starts_with("callpay_ws_connections_ended_total")).collect();
    assert_eq!(ended, ["callpay_ws_connections_ended_total{why=\"connection lost\"} 1"], "{text}");
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_with_4009() {
    let hub = TestHub::start_with(|c| c.server.ping_interval_ms = 200).await;
    let mut patient = hub.patient().await;
    // A client answers pings only while it reads; stop reading for a few ping periods.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(patient.until_closed().await, 4009);
    eventually(async || (open_connections(&hub) == 0).then_some(())).await;
    assert_eq!(hub.state.metrics.connections_closed.get(), 1);
    // The hub says why it ended each connection, so an operator can tell a storm of dead peers
    // from a storm of drains or slow readers.
    let text = hub.state.metrics.render(0);
    let ended: Vec<&str> = text.lines().filter(|l| l.starts_with("callpay_ws_connections_ended_total")).collect();
    assert_eq!(ended, ["callpay_ws_connections_ended_total{why=\"heartbeat lost\"} 1"], "{text}");
}

/// A hub whose runtime runs late, as on a saturated machine, wakes to its ping tick and to the
/// client's pong at once. The pong must count before the tick judges the heartbeat: judged
/// first, the tick would close a peer that answered.
#[tokio::test]
async fn a_pong_waiting_when_a_late_runtime_wakes_counts_before_the_heartbeat_is_judged() {
    let hub = TestHub::start_with(|c| c.server.ping_interval_ms = 500).await;
    let mut patient = hub.patient().await;
    // Not reading: the hub's first ping (at 500 ms) goes unanswered for now.
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The answer on the wire...
    patient.send_raw(Message::Pong(Default::default())).await;
    // ...and the whole runtime (hub and client alike) held past the next tick (1,000 ms), so
    // the hub wakes to the tick and the pong together.
    std::thread::sleep(Duration::from_millis(600));
    // Reading answers the pings that follow; the socket stays open.
    let end = tokio::time::Instant::now() + Duration::from_millis(1_500);
    while tokio::time::timeout_at(end, patient.next()).await.is_ok() {}
    assert_eq!(open_connections(&hub), 1, "the hub judged the heartbeat before reading the pong it had");
}

/// A hub that wakes to its ping tick late, with nothing to read: the peer answered the last
/// ping long ago, and no ping was sent while the hub was held. Time since the last frame read
/// says nothing about the peer then; only a ping left unanswered does.
#[tokio::test]
async fn a_ping_tick_woken_late_does_not_close_a_peer_that_answered() {
    let hub = TestHub::start_with(|c| c.server.ping_interval_ms = 500).await;
    let mut patient = hub.patient().await;
    // Reading answers the first ping (at 500 ms; a pong is written at the next read, before
    // it waits).
    let end = tokio::time::Instant::now() + Duration::from_millis(750);
    while tokio::time::timeout_at(end, patient.next()).await.is_ok() {}
    // The runtime held for more than two ping periods.
    std::thread::sleep(Duration::from_millis(1_100));
    let end = tokio::time::Instant::now() + Duration::from_millis(1_500);
    while tokio::time::timeout_at(end, patient.next()).await.is_ok() {}
    assert_eq!(open_connections(&hub), 1, "the hub counted its own lateness against a peer that answered");
}

#[tokio::test]
async fn a_peer_that_answers_pings_stays() {
    let hub = TestHub::start_with(|c| c.server.ping_interval_ms = 100).await;
    let mut patient = hub.patient().await;
    // Reading answers pings; ten ping periods later the socket is still open (a close would
    // panic in `next`) and usable.
    let end = tokio::time::Instant::now() + Duration::from_millis(1_000);
    while tokio::time::timeout_at(end, patient.next()).await.is_ok() {}
    assert_eq!(open_connections(&hub), 1);
    patient.request("nope", 5000, "Patients cannot request").await;
    assert_eq!(patient.error_code().await, "forbidden");
}

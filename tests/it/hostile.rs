//! What a hostile client found (the security issue), each answered: floods stay bounded and the
//! socket lives, every frame counts toward the rate limit, text that can mislead or bloat is
//! refused before it is echoed or stored, and token claims are held to their meaning.

use crate::helpers::*;
use callpay::auth::{now_secs, sign_hs256};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn progress(payment_id: &str) -> serde_json::Value {
    json!({"type": "payment.progress", "payment_id": payment_id, "stage": "viewing"})
}

#[tokio::test]
async fn a_flood_is_refused_without_closing_a_socket_that_reads() {
    let hub = TestHub::start().await;
    let mut pat = hub.patient().await;
    for _ in 0..200 {
        pat.send(progress("pay_x")).await;
    }
    // The socket stays open (a close would panic in `next`), and the refusals are coalesced:
    // far fewer rate_limited frames than refused frames.
    pat.send_raw(Message::Ping(Default::default())).await;
    let mut codes = Vec::new();
    let end = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
    while let Ok(f) = tokio::time::timeout_at(end, pat.next()).await {
        codes.push(f["code"].as_str().unwrap_or_default().to_owned());
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert!(limited >= 1, "the flood was told: {codes:?}");
    assert!(limited <= 3, "one rate_limited per window, not one per frame: {limited}");
    assert_eq!(hub.state.hub.rooms.connections(), 1, "still connected");
}

#[tokio::test]
async fn binary_frames_count_toward_the_rate_limit() {
    let hub = TestHub::start().await;
    let mut pat = hub.patient().await;
    for _ in 0..60 {
        pat.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    }
    let mut codes = Vec::new();
    let end = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
    while let Ok(f) = tokio::time::timeout_at(end, pat.next()).await {
        codes.push(f["code"].as_str().unwrap_or_default().to_owned());
    }
    assert!(codes.contains(&"rate_limited".to_owned()), "{codes:?}");
    assert!(codes.iter().filter(|c| *c == "bad_frame").count() <= 20, "only the burst got past: {codes:?}");
}

#[tokio::test]
async fn bidi_controls_in_a_description_are_refused() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    doc.request("b1", 5000, "Consult \u{202E}gnissap\u{202C}").await;
    assert_eq!(doc.error_code().await, "invalid_description");
    doc.request("b2", 5000, "Follow\u{2066}-up").await;
    assert_eq!(doc.error_code().await, "invalid_description");
    assert!(hub.state.store.payments_for_call(&hub.info.call_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_huge_client_ref_is_neither_echoed_nor_stored_in_full() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let huge = "r".repeat(12_000);
    doc.request(&huge, 5000, "Consult").await;
    let err = doc.until("error").await;
    assert_eq!(err["code"], "invalid_client_ref");
    assert!(err.to_string().len() < 1_000, "not echoed in full: {} bytes", err.to_string().len());
    doc.send(
        json!({"type": "payment.request", "client_ref": huge, "amount": 12.5, "currency": "aud", "description": "x"}),
    )
    .await;
    let err = doc.until("error").await;
    assert!(err.to_string().len() < 1_000, "not echoed in full: {} bytes", err.to_string().len());
    let rows = hub.state.store.audit_for_clinic(callpay::demo::DEMO_CLINIC, 100, None, true).await.unwrap();
    for r in rows {
        let stored = r.target.as_deref().unwrap_or_default().len() + r.detail.as_deref().unwrap_or_default().len();
        assert!(stored < 1_200, "audit row bounded: {} bytes", stored);
    }
}

#[tokio::test]
async fn empty_scope_claims_are_refused_not_read_as_everything() {
    let hub = TestHub::start().await;
    let claims = json!({
        "typ": callpay::auth::ADMIN_TYP, "sub": "a", "name": "A", "role": "org_admin", "org_id": "",
        "exp": now_secs() + 60,
    });
    assert_eq!(admin_status_with_claims(&hub, &claims).await, 401);
}

#[tokio::test]
async fn tokens_not_yet_valid_are_refused() {
    let hub = TestHub::start().await;
    let later = now_secs() + 3_600;
    for (claim, value) in [("nbf", later), ("iat", later)] {
        let mut admin = json!({
            "typ": callpay::auth::ADMIN_TYP, "sub": "a", "name": "A", "role": "platform_operator",
            "exp": later + 60,
        });
        admin[claim] = value.into();
        assert_eq!(admin_status_with_claims(&hub, &admin).await, 401, "admin token with a future {claim}");
        let mut join = json!({
            "typ": callpay::auth::JOIN_TYP, "sub": "x", "call_id": hub.info.call_id, "clinic_id": "clinic_demo",
            "role": "patient", "name": "X", "exp": later + 60,
        });
        join[claim] = value.into();
        let token = sign_hs256(&hub.info.platform_secret, &join);
        let refused = open_ws(&hub.ws_url(&hub.info.call_id, &token)).await;
        assert!(refused.is_err(), "join token with a future {claim}");
    }
}

#[tokio::test]
async fn a_call_belongs_to_the_clinic_of_its_first_join() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    doc.request("c1", 5000, "Consult").await;
    doc.until("payment.requested").await;
    // A valid token for the same call id that names another clinic is refused.
    let foreign = callpay::demo::join_token(
        &hub.info.platform_secret,
        &hub.info.call_id,
        "clinic_elsewhere",
        "intruder",
        "Intruder",
        callpay_protocol::Role::Clinician,
    );
    let refused = open_ws(&hub.ws_url(&hub.info.call_id, &foreign)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn one_token_cannot_hold_more_than_a_few_sockets() {
    let hub = TestHub::start().await;
    let mut first = hub.patient().await;
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(hub.patient().await);
    }
    // The fifth socket of the same participant closes the oldest with 4010; the rest stay.
    assert_eq!(first.until_closed().await, 4010);
    eventually(async || (hub.state.hub.rooms.members(&hub.info.call_id) == 4).then_some(())).await;
    // And a call cannot grow past its own cap either: another participant is refused with 503.
    let crowded = TestHub::start_with(|c| c.server.max_sockets_per_call = 2).await;
    let _a = crowded.clinician().await;
    let _b = crowded.patient().await;
    match open_ws(&crowded.ws_url(&crowded.info.call_id, &crowded.info.patient_token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    drop(others);
}

#[tokio::test]
async fn pages_cannot_be_framed_by_other_sites() {
    let hub = TestHub::start().await;
    for page in ["/call/clinician", "/call/patient", "/admin/client-payment"] {
        let (status, headers, _, _) =
            hub.http.send_full("GET", &format!("{}{page}", hub.info.hub_url), &[], String::new()).await;
        assert_eq!(status, 200);
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'self'"), "{page}: {csp}");
        assert_eq!(headers["x-frame-options"], "SAMEORIGIN", "{page}");
    }
    // The OAuth callback's page (here: a refusal) is framed by nobody and sniffed by nobody.
    let (status, headers, _, _) =
        hub.http.send_full("GET", &format!("{}/v1/stripe/oauth/callback", hub.info.hub_url), &[], String::new()).await;
    assert_eq!(status, 400);
    assert!(headers["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(
        (&headers["x-frame-options"], &headers["x-content-type-options"]),
        (&"DENY".parse().unwrap(), &"nosniff".parse().unwrap())
    );
    // The video-call platform's origin can be allowed to embed the pages.
    let embedded = TestHub::start_with(|c| c.server.frame_ancestors = vec!["https://video.example".into()]).await;
    let (_, headers, _, _) =
        embedded.http.send_full("GET", &format!("{}/call/patient", embedded.info.hub_url), &[], String::new()).await;
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'self' https://video.example"), "{csp}");
    assert!(headers.get("x-frame-options").is_none(), "X-Frame-Options cannot name the platform");
}

#[tokio::test]
async fn metrics_can_be_kept_off_the_public_listener() {
    let hub = TestHub::start_with(|c| c.server.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let (status, _, _) = hub.http.send("GET", &format!("{}/metrics", hub.info.hub_url), &[], String::new()).await;
    assert_eq!(status, 404, "not on the public address");
    let internal = hub.state.metrics_addr.expect("bound");
    let (status, _, text) = hub.http.send("GET", &format!("http://{internal}/metrics"), &[], String::new()).await;
    assert_eq!(status, 200);
    assert!(text.contains("callpay_ws_connections_open"), "{text}");
}

/// Reads from a raw connection until the server closes it; returns what it sent, or `None` if
/// it was still open after `within`.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, within: std::time::Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_http_connections_are_capped() {
    use tokio::io::AsyncWriteExt;
    let hub = TestHub::start_with(|c| {
        c.server.header_read_timeout_ms = 400;
        c.server.max_http_connections = 4;
    })
    .await;
    let addr = hub.info.hub_url.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(tcp);
    }
    // All four slots are held: a fifth connection is answered 503 once its request is in, and
    // closed (not before its request: see the next test).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut fifth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut fifth, std::time::Duration::from_secs(2)).await.expect("closed at once");
    assert!(answer.starts_with("HTTP/1.1 503"), "the fifth connection was not answered 503: {answer:?}");
    assert!(answer.contains("\"code\":\"overloaded\""), "{answer}");
    // One that never sends a request is closed unanswered at the header deadline.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let got = read_until_closed(&mut silent, std::time::Duration::from_secs(3)).await;
    assert_eq!(got.as_deref(), Some(""), "a refused connection that asked nothing was answered");
    // The unfinished headers are cut off after the deadline, freeing the slots.
    for tcp in &mut slow {
        let got = read_until_closed(tcp, std::time::Duration::from_secs(3)).await;
        assert!(got.is_some(), "a connection with unfinished headers was still held after 3 s");
    }
    let (status, _, _) = hub.http.send("GET", &format!("{}/healthz", hub.info.hub_url), &[], String::new()).await;
    assert_eq!(status, 200, "served again once the slow clients are gone");
    // An idle keep-alive connection is not held forever either.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let got = read_until_closed(&mut idle, std::time::Duration::from_secs(3)).await.expect("idle connection closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(hub.state.metrics.http_refused.get() >= 1);
}

/// A hub whose one HTTP connection slot is held by a client still sending its headers (with a
/// 30 s header deadline), its address, and that client's connection: the next is refused.
async fn hub_with_its_http_slot_held() -> (TestHub, String, tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let hub = TestHub::start_with(|c| {
        c.server.header_read_timeout_ms = 30_000;
        c.server.max_http_connections = 1;
    })
    .await;
    let addr = hub.info.hub_url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    (hub, addr, slow)
}

/// A connection past the cap is answered 503 once its request is in, never before: nginx 1.22,
/// answered before it has sent its request, takes the next instance's answer for a 503 too and
/// abandons that connection after the instance has upgraded and joined it (a "ghost" session:
/// README, "Ghost sessions behind nginx"). Such refusals wait only as many at once as the cap
/// (at most 256): past those a connection is closed unanswered, so a flood of silent
/// connections holds a bounded number of open files.
#[tokio::test]
async fn refused_connections_are_answered_after_their_request_and_bounded() {
    use tokio::io::AsyncWriteExt;
    let (hub, addr, _slow) = hub_with_its_http_slot_held().await;
    let mut waiting = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let early = read_until_closed(&mut waiting, std::time::Duration::from_millis(300)).await;
    assert_eq!(early, None, "answered before its request was sent");
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let got = read_until_closed(&mut third, std::time::Duration::from_secs(2)).await;
    assert_eq!(got.as_deref(), Some(""), "past the waiting refusals a connection is closed unanswered");
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut waiting, std::time::Duration::from_secs(2)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert_eq!(hub.state.metrics.http_refused.get(), 2);
    // A request whose body arrives with its head is answered too. (The hub then reads on until
    // the peer closes, so that its close is not a reset; on loopback the answer is read before
    // any reset, so this cannot show that part. The one refusal that may wait is held until its
    // peer closes: close it first.)
    drop(waiting);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut with_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut request = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 8000\r\n\r\n".to_vec();
    request.resize(request.len() + 8000, b'x');
    with_body.write_all(&request).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let answer = read_until_closed(&mut with_body, std::time::Duration::from_secs(3)).await;
    assert!(answer.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 503")), "{answer:?}");
}

#[tokio::test]
async fn oversized_and_invalid_utf8_frames_close_with_1009_and_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let hub = TestHub::start_with(|c| c.server.max_message_bytes = 4096).await;
    let mut big = hub.patient().await;
    big.send_raw(Message::Text("x".repeat(5000).into())).await;
    assert_eq!(big.until_closed().await, 1009);
    let mut garbled = hub.clinician().await;
    let invalid = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    garbled.send_raw(Message::Frame(invalid)).await;
    assert_eq!(garbled.until_closed().await, 1007);
    eventually(async || (hub.state.hub.rooms.connections() == 0).then_some(())).await;
}

#[tokio::test]
async fn framework_rejections_are_json_with_a_code() {
    let hub = TestHub::start().await;
    let op = format!("Bearer {}", hub.info.operator_token);
    let url = |p: &str| format!("{}{p}", hub.info.hub_url);
    let json_ct = ("content-type", "application/json");
    let auth = ("authorization", op.as_str());
    // (method, url, headers, body, status, code)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("PUT", url("/v1/orgs/o9"), vec![auth, json_ct], "{not json".into(), 400, "bad_request"),
        ("PUT", url("/v1/orgs/o9"), vec![auth], r#"{"name":"X"}"#.into(), 415, "unsupported_media_type"),
        ("PUT", url("/v1/orgs/o9"), vec![auth, json_ct], "{}".into(), 422, "invalid_body"),
        ("GET", url("/v1/enablement-requests?limit=abc"), vec![auth], String::new(), 400, "bad_request"),
        (
            "PUT",
            url("/v1/orgs/o9"),
            vec![auth, json_ct],
            format!(r#"{{"name":"{}"}}"#, "x".repeat(3 << 20)),
            413,
            "body_too_large",
        ),
        ("DELETE", url("/healthz"), vec![], String::new(), 405, "method_not_allowed"),
        ("GET", url(&format!("/v1/calls/{}/ws", hub.info.call_id)), vec![], String::new(), 400, "bad_request"),
        ("GET", url("/v1/orgs/o9/clinics"), vec![], String::new(), 401, "unauthorized"),
        (
            "POST",
            url("/v1/stripe/webhook"),
            vec![("stripe-signature", "t=1,v1=00")],
            "x".repeat(1 << 20),
            413,
            "body_too_large",
        ),
    ];
    for (method, url, headers, body, status, code) in cases {
        let (got, headers, json, text) = hub.http.send_full(method, &url, &headers, body).await;
        assert_eq!(got, status, "{method} {url}: {text}");
        assert_eq!(headers["content-type"], "application/json", "{method} {url}");
        assert_eq!(json["code"], code, "{method} {url}: {text}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {url}: {text}");
    }
    // A token in the query is for WebSocket upgrades only, not for the admin API.
    let q = url(&format!("/v1/orgs/o9/clinics?token={}", hub.info.operator_token));
    assert_eq!(hub.http.send("GET", &q, &[], String::new()).await.0, 401);
}

#[tokio::test]
async fn repeated_link_attempts_cannot_grow_state_without_bound() {
    let hub = TestHub::start().await;
    let admin = format!("Bearer {}", hub.info.clinic_admin_token);
    let url = format!("{}/v1/clinics/{}/stripe/connect", hub.info.hub_url, callpay::demo::DEMO_CLINIC);
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(hub.http.send("POST", &url, &[("authorization", &admin)], String::new()).await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    let audit = hub.state.store.audit_for_clinic(callpay::demo::DEMO_CLINIC, 100, None, true).await.unwrap();
    let started = audit.iter().filter(|a| a.action == "stripe.link_started").count();
    assert_eq!(started, 10, "refused attempts add nothing to the audit log");
}

#[tokio::test]
async fn nothing_is_kept_per_closed_connection_or_refused_frame() {
    let hub = TestHub::start().await;
    for round in 0..20 {
        let call = format!("call_churn_{round}");
        let token = hub.token_for(&call, "p", callpay_protocol::Role::Patient);
        let mut c = Client::connect(&hub.ws_url(&call, &token)).await;
        c.send_raw(Message::Text("{not json".into())).await;
        assert_eq!(c.error_code().await, "bad_frame");
        c.close().await;
    }
    eventually(async || (hub.state.hub.rooms.calls().is_empty()).then_some(())).await;
    assert_eq!(hub.state.hub.rooms.connections(), 0);
}

/// A join refused at the HTTP connection cap (503 once its request is in, then closed) never
/// becomes a session. Behind nginx in a scale run, instances ran sessions that nginx had abandoned, only
/// while this cap was refusing connections (README, "Ghost sessions"); this pins the direct path.
#[tokio::test]
async fn a_join_refused_at_the_http_connection_cap_never_becomes_a_session() {
    let (hub, _addr, _slow) = hub_with_its_http_slot_held().await;
    let url = hub.ws_url(&hub.info.call_id, &hub.info.patient_token);
    match open_ws(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected a 503 before the upgrade, got {:?}", other.map(|_| "an upgrade")),
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(hub.state.metrics.connections_opened.get(), 0, "a refused join became a session");
    assert_eq!(hub.state.hub.rooms.connections(), 0);
    assert!(hub.state.metrics.http_refused.get() >= 1);
}

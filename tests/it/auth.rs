//! Join tokens are checked before the upgrade: missing, forged, expired or other-call tokens
//! get HTTP 401 and never a socket.

use crate::helpers::*;
use callpay::auth::{JoinClaims, now_secs, sign_hs256};
use callpay_protocol::Role;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Error as WsError;

async fn refused_status(url: &str) -> u16 {
    match open_ws(url).await {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade should have been refused"),
    }
}

#[tokio::test]
async fn bad_tokens_get_401_before_upgrade() {
    let hub = TestHub::start().await;
    let call = hub.info.call_id.clone();
    let base = hub.info.hub_url.replace("http://", "ws://");
    assert_eq!(refused_status(&format!("{base}/v1/calls/{call}/ws")).await, 401);
    let forged = sign_hs256(
        "not-the-platform-secret-not-the-platform",
        &JoinClaims {
            typ: callpay::auth::JOIN_TYP.into(),
            sub: "x".into(),
            call_id: call.clone(),
            clinic_id: "clinic_demo".into(),
            role: Role::Clinician,
            name: "X".into(),
            exp: now_secs() + 60,
        },
    );
    assert_eq!(refused_status(&hub.ws_url(&call, &forged)).await, 401);
    let expired = sign_hs256(
        &hub.info.platform_secret,
        &JoinClaims {
            typ: callpay::auth::JOIN_TYP.into(),
            sub: "x".into(),
            call_id: call.clone(),
            clinic_id: "clinic_demo".into(),
            role: Role::Clinician,
            name: "X".into(),
            exp: now_secs() - 3600,
        },
    );
    assert_eq!(refused_status(&hub.ws_url(&call, &expired)).await, 401);
    // A valid token for call A cannot join call B.
    assert_eq!(refused_status(&hub.ws_url("some-other-call", &hub.info.clinician_token)).await, 401);
    // The header form works too.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "{base}/v1/calls/{call}/ws"
    ))
    .unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", hub.info.patient_token).parse().unwrap());
    let (mut ws, _) = connect_async(req).await.expect("header token accepted");
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"welcome\""));
    let metrics = hub.http.send("GET", &format!("{}/metrics", hub.info.hub_url), &[], String::new()).await.2;
    assert!(metrics.contains("callpay_ws_joins_refused_total 4"), "{metrics}");
    // The one welcome was read in one statement, and a second scrape does not count it again.
    assert!(metrics.contains("callpay_store_welcome_statements_total 1\n"), "{metrics}");
    let again = hub.http.send("GET", &format!("{}/metrics", hub.info.hub_url), &[], String::new()).await.2;
    assert!(again.contains("callpay_store_welcome_statements_total 1\n"), "{again}");
}

#[tokio::test]
async fn connection_cap_answers_503() {
    let hub = TestHub::start_with(|c| c.server.max_connections = 1).await;
    let _first = hub.clinician().await;
    assert_eq!(refused_status(&hub.ws_url(&hub.info.call_id, &hub.info.patient_token)).await, 503);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_reconnect_now() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    hub.state.shutdown.cancel();
    assert_eq!(doc.until_closed().await, callpay_protocol::close::RESTARTING);
    assert_eq!(pat.until_closed().await, callpay_protocol::close::RESTARTING);
    // Two sockets: the shortest spread. (The spread grows with the node's sockets: unit tests
    // in src/pacing/; the SDK's wait within it: tests/browser/sdk.test.mjs.)
    assert_eq!(doc.closed.map(|(_, reason)| reason).as_deref(), Some("hub node stopping; reconnect within 250 ms"));
}

#[tokio::test]
async fn join_and_admin_tokens_are_not_interchangeable() {
    let hub = TestHub::start().await;
    let call = hub.info.call_id.clone();
    // A join-shaped token of the wrong kind, or of no kind, does not open a socket.
    for typ in [Some(callpay::auth::ADMIN_TYP), Some("something-else"), None] {
        let mut claims = serde_json::json!({
            "sub": "x", "call_id": call, "clinic_id": "clinic_demo", "role": "clinician", "name": "X",
            "exp": now_secs() + 60,
        });
        if let Some(t) = typ {
            claims["typ"] = t.into();
        }
        let token = sign_hs256(&hub.info.platform_secret, &claims);
        assert_eq!(refused_status(&hub.ws_url(&call, &token)).await, 401, "typ {typ:?}");
    }
    // An admin-shaped token of the join kind is no admin token.
    let claims = serde_json::json!({
        "typ": callpay::auth::JOIN_TYP, "sub": "a", "name": "A", "role": "platform_operator", "exp": now_secs() + 60,
    });
    assert_eq!(admin_status_with_claims(&hub, &claims).await, 401);
}

#[tokio::test]
async fn a_token_in_the_url_is_refused_unless_allowed() {
    let hub = TestHub::start().await;
    let url = format!(
        "{}/v1/calls/{}/ws?token={}",
        hub.info.hub_url.replace("http://", "ws://"),
        hub.info.call_id,
        hub.info.patient_token
    );
    // Sent as a URL (what proxies log), not as the subprotocol.
    match connect_async(url.as_str()).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let legacy = TestHub::start_with(|c| c.server.query_token = true).await;
    let url =
        url.replace(&hub.info.hub_url.replace("http://", "ws://"), &legacy.info.hub_url.replace("http://", "ws://"));
    let url = url
        .replace(&hub.info.call_id, &legacy.info.call_id)
        .replace(&hub.info.patient_token, &legacy.info.patient_token);
    let (_ws, resp) = connect_async(url.as_str()).await.expect("allowed by server.query_token");
    assert_eq!(resp.status().as_u16(), 101);
    // The subprotocol form selects callpay.v1 and never echoes the token.
    let (_ws, resp) = open_ws(&hub.ws_url(&hub.info.call_id, &hub.info.patient_token)).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], callpay_protocol::SUBPROTOCOL);
}

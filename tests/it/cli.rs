//! The binary as an operator meets it: `serve` refuses a missing or unsafe configuration and
//! says which setting to fix; `demo` prints its machine-readable line.

use crate::helpers::open_ws;
use tokio::io::AsyncBufReadExt;

#[tokio::test]
async fn serve_refuses_to_start_without_required_settings() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_callpay"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start") && err.contains("CALLPAY__AUTH__SECRET"), "{err}");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_callpay"))
        .arg("serve")
        .env("CALLPAY__AUTH__SECRET", "0123456789abcdef0123456789abcdef")
        .env("CALLPAY__STRIPE__SECRET_KEY", "sk_test_x")
        .env("CALLPAY__STRIPE__PUBLISHABLE_KEY", "pk_test_x")
        .env("CALLPAY__STRIPE__WEBHOOK_SECRETS", "not-a-whsec")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CALLPAY__STRIPE__WEBHOOK_SECRETS"));
}

#[tokio::test]
async fn demo_prints_urls_and_the_machine_line() {
    let dir = std::env::temp_dir().join(format!("callpay-cli-{}", callpay::ids::random_id()));
    // The demo takes the server settings from the environment as `serve` does: a cap of one
    // socket, so a second upgrade is refused with 503.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_callpay"))
        .args(["demo", "--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("CALLPAY__SERVER__MAX_CONNECTIONS", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let info = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(json) = line.strip_prefix("CALLPAY_DEMO ") {
                return serde_json::from_str::<serde_json::Value>(json).unwrap();
            }
            seen.push(line);
        }
        panic!("no CALLPAY_DEMO line")
    })
    .await
    .unwrap();
    for key in ["hub_url", "stripe_url", "clinician_token", "patient_token", "call_id"] {
        assert!(info[key].as_str().is_some_and(|v| !v.is_empty()), "{key} in {info}");
    }
    let hub = info["hub_url"].as_str().unwrap();
    assert!(seen.iter().any(|l| l.contains(&format!("{hub}/demo"))), "prints the demo URL: {seen:?}");
    assert!(dir.join("callpay.db").exists(), "SQLite lives under the data directory");
    let ws = format!("{}/v1/calls/{}/ws?token=", hub.replace("http://", "ws://"), info["call_id"].as_str().unwrap());
    let first = open_ws(&format!("{ws}{}", info["clinician_token"].as_str().unwrap())).await;
    assert!(first.is_ok(), "the first socket fits");
    match open_ws(&format!("{ws}{}", info["patient_token"].as_str().unwrap())).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503 past the configured cap, got {:?}", other.map(|_| ())),
    }
    child.kill().await.ok();
    std::fs::remove_dir_all(dir).ok();
}

/// `callpay serve` configured only through the environment, against the simulator standing in
/// for Stripe: the platform registers the clinic, the service desk enables the app, the clinic
/// admin links Stripe through OAuth, and a payment goes through end to end.
#[tokio::test]
async fn serve_runs_the_whole_product_from_environment_settings() {
    use crate::helpers::{Client, Http, WAIT, eventually};
    use callpay::admin::authz::AdminRole;
    use callpay::demo::{admin_token, join_token};
    use callpay_protocol::Role;
    use serde_json::json;

    let port = crate::ports::reserve();
    let hub = format!("http://127.0.0.1:{port}");
    let sim = stripe_sim::spawn(stripe_sim::SimConfig {
        webhooks: vec![stripe_sim::WebhookTarget {
            url: format!("{hub}/v1/stripe/webhook"),
            secret: "whsec_serve_test".into(),
        }],
        ..stripe_sim::SimConfig::for_tests()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("callpay-serve-{}", callpay::ids::random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = "serve-test-platform-secret-0123456789";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_callpay"))
        .arg("serve")
        .env("CALLPAY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("CALLPAY__AUTH__SECRET", secret)
        .env("CALLPAY__DATABASE__URL", format!("sqlite://{}", dir.join("callpay.db").display()))
        .env("CALLPAY__STRIPE__SECRET_KEY", sim.secret_key())
        .env("CALLPAY__STRIPE__PUBLISHABLE_KEY", sim.publishable_key())
        .env("CALLPAY__STRIPE__CLIENT_ID", sim.client_id())
        .env("CALLPAY__STRIPE__API_BASE", &sim.url)
        .env("CALLPAY__STRIPE__CONNECT_BASE", &sim.url)
        .env("CALLPAY__STRIPE__WEBHOOK_SECRETS", "whsec_old_rotated_out,whsec_serve_test")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = Http::new();
    // Listening first (connection refused until then), then ready (the store answers).
    eventually(async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()).await;
    eventually(async || (http.send("GET", &format!("{hub}/readyz"), &[], String::new()).await.0 == 200).then_some(()))
        .await;

    let api = |token: String, method: &'static str, path: String, body: serde_json::Value| {
        let http = &http;
        let url = format!("{hub}{path}");
        async move {
            let auth = format!("Bearer {token}");
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            http.send(method, &url, &headers, body.to_string()).await
        }
    };
    let operator = admin_token(secret, "desk", "Desk", AdminRole::PlatformOperator, None, &[]);
    let org_admin = admin_token(secret, "olivia", "Olivia", AdminRole::OrgAdmin, Some("org_s"), &[]);
    let clinic_admin = admin_token(secret, "cam", "Cam", AdminRole::TeamAdmin, None, &["clinic_s"]);
    assert_eq!(api(operator.clone(), "PUT", "/v1/orgs/org_s".into(), json!({"name": "Serve Health"})).await.0, 200);
    assert_eq!(
        api(operator.clone(), "PUT", "/v1/orgs/org_s/clinics/clinic_s".into(), json!({"name": "Serve Clinic"})).await.0,
        200
    );
    let (s, made, _) = api(
        org_admin,
        "POST",
        "/v1/orgs/org_s/enablement-requests".into(),
        json!({"clinic_ids": ["clinic_s"], "ticket_ref": "SD-1"}),
    )
    .await;
    assert_eq!(s, 201);
    let id = made["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(api(operator, "POST", format!("/v1/enablement-requests/{id}/approve"), json!({})).await.0, 200);

    // The clinic admin links Stripe: start, consent on the simulator's page, come back.
    let (s, headers, started, _) = http
        .send_full(
            "POST",
            &format!("{hub}/v1/clinics/clinic_s/stripe/connect"),
            &[("authorization", &format!("Bearer {clinic_admin}"))],
            String::new(),
        )
        .await;
    assert_eq!(s, 200, "{started}");
    let cookie = headers.get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    let authorize = started["authorize_url"].as_str().unwrap();
    let q: std::collections::HashMap<String, String> =
        form_urlencoded::parse(authorize.split_once('?').unwrap().1.as_bytes()).into_owned().collect();
    let decision = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("decision", "allow"),
            ("account", "new"),
            ("business_name", "Serve Clinic Pty Ltd"),
            ("email", "a@b.co"),
        ])
        .extend_pairs(["client_id", "redirect_uri", "state", "scope"].iter().map(|k| (*k, q[*k].as_str())))
        .finish();
    let (s, headers, _, _) = http
        .send_full(
            "POST",
            &format!("{}oauth/authorize", sim.url),
            &[("content-type", "application/x-www-form-urlencoded")],
            decision,
        )
        .await;
    assert_eq!(s, 303);
    let back = headers.get("location").unwrap().to_str().unwrap().to_owned();
    let (s, _, _, page) = http.send_full("GET", &back, &[("cookie", &cookie)], String::new()).await;
    assert_eq!(s, 200, "{page}");

    // A call: request, pay, confirmed on both sides.
    let ws = |sub: &str, role| {
        let token = join_token(secret, "serve-call", "clinic_s", sub, sub, role);
        format!("ws://127.0.0.1:{port}/v1/calls/serve-call/ws?token={token}")
    };
    let mut doc = Client::connect(&ws("doc", Role::Clinician)).await;
    let mut pat = Client::connect(&ws("pat", Role::Patient)).await;
    assert_eq!(doc.welcome["payments_available"], true);
    assert_eq!(doc.welcome["clinic_name"], "Serve Clinic");
    doc.request("s1", 4200, "Consult").await;
    let payment = pat.until("payment.requested").await["payment"].clone();
    let s = &payment["stripe"];
    let (pk, acct, cs) = (
        s["publishable_key"].as_str().unwrap(),
        s["stripe_account"].as_str().unwrap(),
        s["client_secret"].as_str().unwrap(),
    );
    let pi = cs.split("_secret_").next().unwrap();
    let (_, pm) = http.form(&format!("{}v1/payment_methods", sim.url), &format!("key={pk}&_stripe_account={acct}&type=card&card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2040&card[cvc]=123")).await;
    let (status, _) = http
        .form(
            &format!("{}v1/payment_intents/{pi}/confirm", sim.url),
            &format!(
                "key={pk}&_stripe_account={acct}&client_secret={cs}&payment_method={}",
                pm["id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(status, 200);
    let confirmed = tokio::time::timeout(WAIT, doc.until("payment.confirmed")).await.unwrap();
    assert_eq!(confirmed["payment"]["amount_received"], 4200);
    pat.until("payment.confirmed").await;

    // SIGTERM: sockets are closed with "going away" and the process exits cleanly.
    let pid = child.id().unwrap();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert_eq!(doc.until_closed().await, callpay_protocol::close::RESTARTING);
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(dir).ok();
}

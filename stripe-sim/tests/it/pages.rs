//! Pages: the Stripe.js stand-in, the dashboard, receipts.

use crate::helpers::*;

#[tokio::test]
async fn stripe_js_dashboard_and_receipt_are_served() {
    let h = sim().await;
    let http = Http::new(&h);
    let js = http.send("GET", "/js/v3", &[], "").await;
    assert_eq!(js.status, 200);
    assert!(js.headers.get("content-type").unwrap().to_str().unwrap().starts_with("application/javascript"));
    for api in ["confirmPayment", "elements", "retrievePaymentIntent", "window.Stripe"] {
        assert!(js.text.contains(api), "stand-in offers {api}");
    }
    let acct = account(&h, &http).await;
    let pi = http
        .post(h.secret_key(), "/v1/payment_intents", &[("stripe-account", &acct)], "amount=5000&currency=aud&description=%3Cb%3EConsult&receipt_email=p%40e.co&confirm=true&payment_method=pm_card_visa")
        .await
        .body;
    let dash = http.send("GET", "/dashboard", &[], "").await;
    assert_eq!(dash.status, 200);
    assert!(dash.text.contains(pi["id"].as_str().unwrap()));
    assert!(dash.text.contains("Harbour Clinic"));
    assert!(dash.text.contains("&lt;b&gt;Consult") && !dash.text.contains("<b>Consult"), "descriptions are escaped");
    let receipt_url = pi["latest_charge"].as_str().map(|c| format!("/receipts/{c}")).unwrap();
    let receipt = http.send("GET", &receipt_url, &[], "").await;
    assert_eq!(receipt.status, 200);
    assert!(receipt.text.contains("50.00 AUD") && receipt.text.contains("4242"));
    // CORS lets Stripe.js call the API from the hub's origin.
    let pre = http
        .send(
            "OPTIONS",
            "/v1/payment_methods",
            &[("origin", "http://127.0.0.1:1"), ("access-control-request-method", "POST")],
            "",
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.headers.get("access-control-allow-origin").unwrap(), "*");
}

#[tokio::test]
async fn binary_prints_the_ready_line() {
    let exe = env!("CARGO_BIN_EXE_stripe-sim");
    let mut child = tokio::process::Command::new(exe)
        .args(["--listen", "127.0.0.1:0", "--secret-key", "sk_test_script"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_str(line.strip_prefix("STRIPE_SIM ").expect("prefix")).unwrap();
    assert_eq!(json["secret_key"], "sk_test_script");
    assert!(json["url"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    assert!(json["publishable_key"].as_str().unwrap().starts_with("pk_test_"));
    assert!(json["client_id"].as_str().unwrap().starts_with("ca_"));
    let bad = tokio::process::Command::new(exe).args(["--bogus"]).output().await.unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown argument"));
}

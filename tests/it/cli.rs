//! The binary as an operator meets it: `serve` refuses a missing or unsafe configuration and
//! says which setting to fix; `demo` prints its machine-readable line.

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
    let dir = std::env::temp_dir().join(format!("callpay-cli-{}", callpay::payments::random_id()));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_callpay"))
        .args(["demo", "--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
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
    child.kill().await.ok();
    std::fs::remove_dir_all(dir).ok();
}

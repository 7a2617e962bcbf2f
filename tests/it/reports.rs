//! Reports: totals and counts by status, refunds, net and average; by day in the chosen time
//! zone; by clinician; per clinic and per organisation; and the CSV export (UTF-8 with a BOM,
//! formulas neutralised).

use crate::helpers::*;
use callpay::demo::{DEMO_CLINIC, DEMO_ORG};
use callpay::store::Payment;
use callpay_protocol::PaymentStatus;
use serde_json::Value;

/// 2026-12-01T00:00:00Z in Unix ms.
const DEC_1_UTC: i64 = 1_796_083_200_000;
const HOUR: i64 = 3_600_000;

async fn seed(
    hub: &TestHub,
    clinic: &str,
    who: (&str, &str),
    at: i64,
    money: (i64, PaymentStatus, i64),
    description: &str,
) {
    seed_in(hub, clinic, who, at, money, description, "aud").await;
}

async fn seed_in(
    hub: &TestHub,
    clinic: &str,
    who: (&str, &str),
    at: i64,
    (amount, status, refunded): (i64, PaymentStatus, i64),
    description: &str,
    currency: &str,
) {
    let id = format!("pay_rep_{}", callpay::ids::random_id());
    let paid = matches!(status, PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded);
    let p = Payment {
        id: id.clone(),
        call_id: "call_rep".into(),
        clinic_id: clinic.into(),
        client_ref: id.clone(),
        requested_by_id: who.0.into(),
        requested_by_name: who.1.into(),
        amount,
        currency: currency.into(),
        description: description.into(),
        stripe_account: "acct_rep".into(),
        status,
        amount_received: paid.then_some(amount),
        amount_refunded: refunded,
        paid_at: paid.then_some(at + 60_000),
        created_at: at,
        updated_at: at,
        ..Default::default()
    };
    hub.state.store.insert_payment(&p).await.unwrap();
}

async fn get(hub: &TestHub, token: &str, path: &str) -> (u16, String, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, json, text) = hub
        .http
        .send_full("GET", &format!("{}{path}", hub.info.hub_url), &[("authorization", &auth)], String::new())
        .await;
    (status, text, json)
}

async fn seeded() -> TestHub {
    let hub = TestHub::start().await;
    let ada = ("clinician-ada", "Dr Ada Lee");
    let rumi = ("clinician-rumi", "ডাঃ রুমি");
    // Sydney is UTC+11 in December: 23:30 UTC on 30 Nov is 10:30 on 1 Dec there.
    seed(&hub, DEMO_CLINIC, ada, DEC_1_UTC - HOUR / 2, (5000, PaymentStatus::Succeeded, 0), "Consult").await;
    seed(
        &hub,
        DEMO_CLINIC,
        ada,
        DEC_1_UTC + 2 * HOUR,
        (3000, PaymentStatus::PartiallyRefunded, 1000),
        "=HYPERLINK(\"http://x\")",
    )
    .await;
    seed(&hub, DEMO_CLINIC, rumi, DEC_1_UTC + 20 * HOUR, (4000, PaymentStatus::Refunded, 4000), "+SUM(A1)").await;
    seed(&hub, DEMO_CLINIC, rumi, DEC_1_UTC + 21 * HOUR, (2000, PaymentStatus::Failed, 0), "-2+3").await;
    seed(&hub, DEMO_CLINIC, rumi, DEC_1_UTC + 22 * HOUR, (2500, PaymentStatus::Canceled, 0), "@cmd").await;
    // Outside the period.
    seed(&hub, DEMO_CLINIC, ada, DEC_1_UTC + 40 * 24 * HOUR, (9900, PaymentStatus::Succeeded, 0), "Later").await;
    hub
}

#[tokio::test]
async fn a_clinic_report_totals_by_status_day_and_clinician_in_the_chosen_zone() {
    let hub = seeded().await;
    let token = hub.info.clinic_admin_token.clone();
    let path = format!("/v1/clinics/{DEMO_CLINIC}/report?from=2026-12-01&to=2026-12-02&tz=Australia/Sydney");
    let (status, _, r) = get(&hub, &token, &path).await;
    assert_eq!(status, 200, "{r}");
    let t = &r["totals"];
    assert_eq!(t["count"], 5, "{r}");
    assert_eq!(t["paid_count"], 3);
    assert_eq!(t["gross"], 12000);
    assert_eq!(t["refunded"], 5000);
    assert_eq!(t["net"], 7000);
    assert_eq!(t["average"], 4000, "gross over paid payments");
    assert_eq!(t["refund_count"], 2);
    assert_eq!(r["by_status"]["succeeded"]["count"], 1);
    assert_eq!(r["by_status"]["failed"]["amount"], 2000);
    // By day in Sydney: the 23:30 UTC payment is on 1 Dec; 20:00 UTC on 1 Dec is 2 Dec there.
    let days: Vec<(String, i64)> = r["by_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["date"].as_str().unwrap().to_owned(), d["gross"].as_i64().unwrap()))
        .collect();
    assert_eq!(days, vec![("2026-12-01".to_owned(), 8000), ("2026-12-02".to_owned(), 4000)]);
    let by: Vec<(String, i64)> = r["by_clinician"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["net"].as_i64().unwrap()))
        .collect();
    assert_eq!(by, vec![("Dr Ada Lee".to_owned(), 7000), ("ডাঃ রুমি".to_owned(), 0)]);
    // In UTC the same payments fall on other days.
    let (_, _, utc) =
        get(&hub, &token, &format!("/v1/clinics/{DEMO_CLINIC}/report?from=2026-12-01&to=2026-12-02&tz=UTC")).await;
    assert_eq!(utc["totals"]["count"], 4, "{utc}");
    let (status, _, bad) =
        get(&hub, &token, &format!("/v1/clinics/{DEMO_CLINIC}/report?from=2026-12-01&to=2026-12-02&tz=Mars/Base"))
            .await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_time_zone")));
    let (status, _, bad) =
        get(&hub, &token, &format!("/v1/clinics/{DEMO_CLINIC}/report?from=2026-12-09&to=2026-12-02&tz=UTC")).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_period")));
}

#[tokio::test]
async fn the_organisation_report_covers_its_clinics() {
    let hub = seeded().await;
    let token = hub.info.org_admin_token.clone();
    let (status, _, r) =
        get(&hub, &token, &format!("/v1/orgs/{DEMO_ORG}/report?from=2026-12-01&to=2026-12-02&tz=Australia/Sydney"))
            .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["totals"]["gross"], 12000);
    assert!(
        r["by_clinic"].as_array().unwrap().iter().any(|c| c["clinic_id"] == DEMO_CLINIC && c["net"] == 7000),
        "{r}"
    );
    // A team admin has no organisation report.
    let team = hub.info.clinic_admin_token.clone();
    assert_eq!(
        get(&hub, &team, &format!("/v1/orgs/{DEMO_ORG}/report?from=2026-12-01&to=2026-12-02&tz=UTC")).await.0,
        403
    );
}

#[tokio::test]
async fn the_csv_export_opens_cleanly_and_neutralises_formulas() {
    let hub = seeded().await;
    let token = hub.info.clinic_admin_token.clone();
    let path = format!("/v1/clinics/{DEMO_CLINIC}/report?from=2026-12-01&to=2026-12-02&tz=Australia/Sydney&format=csv");
    let auth = format!("Bearer {token}");
    let (status, headers, _, text) = hub
        .http
        .send_full("GET", &format!("{}{path}", hub.info.hub_url), &[("authorization", &auth)], String::new())
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/csv; charset=utf-8"));
    assert!(headers["content-disposition"].to_str().unwrap().contains("attachment"));
    assert!(text.starts_with('\u{feff}'), "a byte-order mark first");
    let lines: Vec<&str> = text.trim_start_matches('\u{feff}').lines().collect();
    assert_eq!(lines.len(), 6, "a header and five payments: {text}");
    assert!(lines[0].starts_with("date,time,payment_id"), "{}", lines[0]);
    assert!(text.contains("ডাঃ রুমি"), "Bengali names as they are");
    for formula in ["=HYPERLINK", "+SUM", "-2+3", "@cmd"] {
        assert!(
            !text.contains(&format!(",{formula}")) && !text.contains(&format!(",\"{formula}")),
            "{formula} reaches a cell as a formula: {text}"
        );
        assert!(text.contains(&format!("'{formula}")), "{formula} is kept, neutralised: {text}");
    }
    assert!(text.contains("\"'=HYPERLINK(\"\"http://x\"\")\""), "quotes doubled inside a quoted cell: {text}");
}

/// Amounts in different currencies are never added together: a report sums one currency (the
/// most used, or the one asked for) and lists every currency the period holds.
#[tokio::test]
async fn a_report_never_adds_up_different_currencies() {
    let hub = seeded().await;
    let ada = ("clinician-ada", "Dr Ada Lee");
    let paid = |amount| (amount, PaymentStatus::Succeeded, 0);
    seed_in(&hub, DEMO_CLINIC, ada, DEC_1_UTC + HOUR, paid(10_000), "Consult", "usd").await;
    seed_in(&hub, DEMO_CLINIC, ada, DEC_1_UTC + 3 * HOUR, paid(20_000), "Consult", "usd").await;
    let token = hub.info.clinic_admin_token.clone();
    let base = format!("/v1/clinics/{DEMO_CLINIC}/report?from=2026-12-01&to=2026-12-02&tz=Australia/Sydney");
    let (status, _, r) = get(&hub, &token, &base).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["currency"], "aud", "the most used currency by default: {r}");
    assert_eq!((r["totals"]["count"].as_i64(), r["totals"]["gross"].as_i64()), (Some(5), Some(12000)));
    assert_eq!(r["currencies"], serde_json::json!([{"currency": "aud", "count": 5}, {"currency": "usd", "count": 2}]));
    let (_, _, usd) = get(&hub, &token, &format!("{base}&currency=USD")).await;
    assert_eq!(usd["currency"], "usd");
    assert_eq!((usd["totals"]["count"].as_i64(), usd["totals"]["gross"].as_i64()), (Some(2), Some(30000)), "{usd}");
    let days: i64 = usd["by_day"].as_array().unwrap().iter().map(|d| d["gross"].as_i64().unwrap()).sum();
    assert_eq!(days, 30000);
    let (status, _, bad) = get(&hub, &token, &format!("{base}&currency=dollars")).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("invalid_currency")));
    // The export keeps every payment, each with its currency.
    let (_, csv, _) = get(&hub, &token, &format!("{base}&format=csv")).await;
    assert_eq!(csv.lines().count(), 8, "a header and seven payments: {csv}");
    assert!(csv.contains(",USD,") && csv.contains(",AUD,"));
}

//! Golden files guard wire compatibility: each example frame in `fixtures/` must decode and
//! re-encode to the same JSON, and `schema/` must be what the types generate. A change to these
//! files is a protocol change. Set `CALLPAY_BLESS=1` to rewrite them after a deliberate change.

use callpay_protocol::*;
use serde_json::Value;
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn bless() -> bool {
    std::env::var("CALLPAY_BLESS").is_ok_and(|v| v == "1")
}

fn check(path: PathBuf, actual: &Value) {
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if bless() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with CALLPAY_BLESS=1", path.display()));
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(&stored, actual, "{} differs from the types", path.display());
}

fn clinician() -> Participant {
    Participant { id: "u_clin_1".into(), name: "Dr Ada Lee".into(), role: Role::Clinician }
}

fn patient() -> Participant {
    Participant { id: "u_pat_7".into(), name: "Sam Patient".into(), role: Role::Patient }
}

fn payment(status: PaymentStatus, for_patient: bool) -> PaymentView {
    let paid = matches!(status, PaymentStatus::Succeeded);
    PaymentView {
        payment_id: "pay_8Jd2kQ0aVw3n".into(),
        client_ref: "req-2f7c".into(),
        call_id: "call_42".into(),
        amount: 5000,
        currency: "aud".into(),
        description: "Follow-up consultation".into(),
        status,
        version: if paid { 3 } else { 1 },
        requested_by: clinician(),
        created_at: 1_795_000_000_000,
        updated_at: 1_795_000_060_000,
        amount_received: paid.then_some(5000),
        amount_refunded: 0,
        paid_at: paid.then_some(1_795_000_060_000),
        receipt_email: paid.then(|| "s•••@example.com".into()),
        card_brand: paid.then(|| "visa".into()),
        card_last4: paid.then(|| "4242".into()),
        failure: None,
        reference: Some("pi_3Qx1Zz2eZvKYlo2C0abc1234".into()),
        stripe: for_patient.then(|| StripeClientInfo {
            publishable_key: "pk_test_51ExamplePlatformKey".into(),
            stripe_account: "acct_1ExampleClinic".into(),
            client_secret: "pi_3Qx1Zz2eZvKYlo2C0abc1234_secret_Ex4mpl3".into(),
        }),
    }
}

fn client_examples() -> Vec<(&'static str, ClientMsg)> {
    vec![
        (
            "client.payment.request",
            ClientMsg::PaymentRequest {
                client_ref: "req-2f7c".into(),
                amount: 5000,
                currency: "aud".into(),
                description: "Follow-up consultation".into(),
            },
        ),
        ("client.payment.cancel", ClientMsg::PaymentCancel { payment_id: "pay_8Jd2kQ0aVw3n".into() }),
        (
            "client.payment.progress",
            ClientMsg::PaymentProgress { payment_id: "pay_8Jd2kQ0aVw3n".into(), stage: ProgressStage::EnteringDetails },
        ),
    ]
}

fn server_examples() -> Vec<(&'static str, ServerFrame)> {
    let f = |seq, msg| ServerFrame { seq, msg };
    let mut failed = payment(PaymentStatus::Failed, false);
    failed.version = 2;
    failed.failure = Some(Failure {
        code: "card_declined".into(),
        decline_code: Some("insufficient_funds".into()),
        message: "Your card has insufficient funds.".into(),
    });
    vec![
        (
            "server.welcome",
            f(
                4,
                ServerMsg::Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    call_id: "call_42".into(),
                    clinic_name: "Harbour Clinic".into(),
                    you: patient(),
                    participants: vec![clinician(), patient()],
                    payments: vec![payment(PaymentStatus::Requested, true)],
                    payments_available: true,
                    progress: [("pay_8Jd2kQ0aVw3n".to_owned(), ProgressStage::EnteringDetails)].into(),
                    unavailable_reason: None,
                },
            ),
        ),
        ("server.participant.joined", f(5, ServerMsg::ParticipantJoined { participant: patient() })),
        ("server.participant.left", f(6, ServerMsg::ParticipantLeft { participant: patient() })),
        (
            "server.payment.requested.patient",
            f(7, ServerMsg::PaymentRequested { payment: payment(PaymentStatus::Requested, true) }),
        ),
        (
            "server.payment.requested.clinician",
            f(7, ServerMsg::PaymentRequested { payment: payment(PaymentStatus::Requested, false) }),
        ),
        (
            "server.payment.progress",
            f(
                8,
                ServerMsg::PaymentProgress {
                    payment_id: "pay_8Jd2kQ0aVw3n".into(),
                    stage: ProgressStage::Authenticating,
                    participant_id: "u_pat_7".into(),
                },
            ),
        ),
        ("server.payment.updated", f(9, ServerMsg::PaymentUpdated { payment: failed })),
        (
            "server.payment.confirmed",
            f(10, ServerMsg::PaymentConfirmed { payment: payment(PaymentStatus::Succeeded, false) }),
        ),
        (
            "server.payment.sync",
            f(
                10,
                ServerMsg::PaymentSync {
                    payments: vec![payment(PaymentStatus::Succeeded, false)],
                    confirmed: vec!["pay_8Jd2kQ0aVw3n".into()],
                },
            ),
        ),
        (
            "server.clinic.updated",
            f(11, ServerMsg::ClinicUpdated { payments_available: false, reason: Some(ErrorCode::StripeNotConnected) }),
        ),
        (
            "server.error",
            f(
                11,
                ServerMsg::Error {
                    code: ErrorCode::InvalidAmount,
                    message: "Amount must be at least 0.50 AUD.".into(),
                    reference: Some("req-2f7c".into()),
                    retry_after_ms: None,
                },
            ),
        ),
        (
            "server.error.busy",
            f(
                11,
                ServerMsg::Error {
                    code: ErrorCode::Busy,
                    message: "The hub is busy; nothing was done. Send it again in 1.2 s.".into(),
                    reference: Some("req-2f7c".into()),
                    retry_after_ms: Some(1200),
                },
            ),
        ),
    ]
}

#[test]
fn fixtures_round_trip() {
    for (name, msg) in client_examples() {
        let value = serde_json::to_value(&msg).unwrap();
        check(dir("fixtures").join(format!("{name}.json")), &value);
        let back: ClientMsg = serde_json::from_value(value).unwrap();
        assert_eq!(back, msg);
    }
    for (name, frame) in server_examples() {
        let value = serde_json::to_value(&frame).unwrap();
        check(dir("fixtures").join(format!("{name}.json")), &value);
        let back: ServerFrame = serde_json::from_value(value).unwrap();
        assert_eq!(back, frame);
    }
}

#[test]
fn every_fixture_file_is_a_known_example() {
    let known: Vec<String> = client_examples()
        .iter()
        .map(|(n, _)| *n)
        .chain(server_examples().iter().map(|(n, _)| *n))
        .map(|n| format!("{n}.json"))
        .collect();
    for entry in std::fs::read_dir(dir("fixtures")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(known.contains(&name), "fixtures/{name} has no example in this test");
    }
}

#[test]
fn schema_is_generated_from_the_types() {
    check(dir("schema").join("client.json"), &serde_json::to_value(schemars::schema_for!(ClientMsg)).unwrap());
    check(dir("schema").join("server.json"), &serde_json::to_value(schemars::schema_for!(ServerFrame)).unwrap());
}

#[test]
fn wire_details_clients_rely_on() {
    let v = serde_json::to_value(ServerFrame {
        seq: 1,
        msg: ServerMsg::Error { code: ErrorCode::BadFrame, message: "x".into(), reference: None, retry_after_ms: None },
    })
    .unwrap();
    assert_eq!(v, serde_json::json!({"seq": 1, "type": "error", "code": "bad_frame", "message": "x"}));
    // A clinician's copy of a payment never has the `stripe` block.
    let clinician_copy = serde_json::to_string(&payment(PaymentStatus::Requested, false)).unwrap();
    assert!(!clinician_copy.contains("client_secret") && !clinician_copy.contains("\"stripe\""));
    // Unknown types and missing fields are rejected, not guessed.
    assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"payment.refund","payment_id":"x"}"#).is_err());
    assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"payment.request","amount":5000}"#).is_err());
    assert!(
        serde_json::from_str::<ClientMsg>(
            r#"{"type":"payment.request","client_ref":"a","amount":12.5,"currency":"aud","description":"d"}"#
        )
        .is_err()
    );
}

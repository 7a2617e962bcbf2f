//! What the payment service's unit tests share: the service over an in-memory store and bus
//! with a Stripe of the test's own, a paid payment, and a PaymentIntent as Stripe reads it.

use super::Payments;
use super::stripe::{IntentInfo, StripeApi};
use crate::store::{Payment, SqlStore, Store};
use callpay_protocol::PaymentStatus;
use std::sync::Arc;

/// The service over a fresh in-memory SQLite store, a memory bus and `stripe`.
pub async fn service(stripe: Arc<dyn StripeApi>) -> (Arc<Payments>, Arc<dyn Store>) {
    service_with(stripe, crate::config::PaymentsConfig::default()).await
}

/// [`service`] with settings of the test's own.
pub async fn service_with(
    stripe: Arc<dyn StripeApi>,
    cfg: crate::config::PaymentsConfig,
) -> (Arc<Payments>, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
    let bus = Arc::new(crate::bus::MemoryBus::new("n"));
    let io = crate::hub::HubIo {
        bus: bus.clone(),
        record: bus,
        store: store.clone(),
        tracker: tokio_util::task::TaskTracker::new(),
    };
    let rooms = crate::rooms::RoomRegistry::new("pk");
    let hub = crate::hub::Hub::new("n".into(), rooms, io, std::time::Duration::from_secs(15), Arc::default());
    let payments = Payments::new(store.clone(), stripe, hub, cfg);
    (Arc::new(payments), store)
}

/// `pay_1`: 50.00 AUD paid on `acct_1` through `pi_1`, at version 2.
pub fn paid() -> Payment {
    Payment {
        id: "pay_1".into(),
        call_id: "call".into(),
        clinic_id: "c".into(),
        client_ref: "r1".into(),
        amount: 5000,
        amount_received: Some(5000),
        currency: "aud".into(),
        status: PaymentStatus::Succeeded,
        version: 2,
        stripe_account: "acct_1".into(),
        payment_intent_id: Some("pi_1".into()),
        ..Payment::default()
    }
}

/// `id` as Stripe reads it: succeeded, 50.00 AUD received, `amount_refunded` of it refunded.
pub fn succeeded_intent(id: &str, amount_refunded: i64) -> IntentInfo {
    IntentInfo {
        id: id.into(),
        client_secret: None,
        status: "succeeded".into(),
        amount: 5000,
        amount_received: 5000,
        currency: "aud".into(),
        last_error: None,
        receipt_email: None,
        card: None,
        amount_refunded,
    }
}

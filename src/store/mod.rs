//! Persistence behind the [`Store`] trait: clinics, payments and processed Stripe webhook events.
//! [`SqlStore`] implements it on SQLite (embedded default, also in-memory for tests) and
//! PostgreSQL (for several hub instances) through one portable SQL dialect.

mod binder;
mod migrations;
pub mod outbox;
mod snapshots;
mod sql;

pub use outbox::{Outbox, OutboxEvent};
pub use sql::{PING_IF_IDLE, SqlStore, status_str};

use async_trait::async_trait;
use callpay_protocol::PaymentStatus;

/// Store failures. Callers treat every variant as "try again later": nothing was half-written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A row held a value the code does not know (e.g. an unknown status).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A batched write failed (its cause is logged once for the batch) or its writer stopped.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A clinic as the payment app knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Clinic {
    /// The platform's clinic id.
    pub id: String,
    /// The organisation it belongs to.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Whether the platform operator approved the payment app for it.
    pub app_enabled: bool,
    /// The linked Stripe Standard account, if any.
    pub stripe_account: Option<String>,
    /// That account's publishable key, from the OAuth exchange.
    pub stripe_publishable_key: Option<String>,
    /// The account's business name on Stripe, for the admin page.
    pub stripe_display_name: Option<String>,
    /// Whether the link is a live-mode one.
    pub stripe_livemode: bool,
    /// Who linked it.
    pub linked_by: Option<String>,
    /// When (Unix ms).
    pub linked_at: Option<i64>,
    /// Whether callpay sends its own receipt e-mail for the clinic's payments (besides
    /// Stripe's); a clinic admin's choice.
    pub own_receipts: bool,
}

impl Clinic {
    /// Whether a clinician can request payments now, and the error code if not.
    pub fn payment_readiness(&self) -> Result<&str, callpay_protocol::ErrorCode> {
        if !self.app_enabled {
            return Err(callpay_protocol::ErrorCode::AppNotEnabled);
        }
        self.stripe_account.as_deref().ok_or(callpay_protocol::ErrorCode::StripeNotConnected)
    }
}

/// A payment record: ours, kept alongside Stripe's so reports never depend on Stripe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    /// callpay's id (`pay_…`).
    pub id: String,
    /// The call it was requested in.
    pub call_id: String,
    /// The clinic that is paid.
    pub clinic_id: String,
    /// The clinician's idempotency reference.
    pub client_ref: String,
    /// Clinician's participant id.
    pub requested_by_id: String,
    /// Clinician's display name.
    pub requested_by_name: String,
    /// Minor units.
    pub amount: i64,
    /// Lowercase currency.
    pub currency: String,
    /// What it is for.
    pub description: String,
    /// State-machine status.
    pub status: PaymentStatus,
    /// Grows by one with every change.
    pub version: i64,
    /// The connected account the charge is made on (kept even if the clinic re-links).
    pub stripe_account: String,
    /// Whether the clinic's account was in live mode when the payment was made (its records
    /// link to the live or the test dashboard for good, whatever the clinic links later).
    pub livemode: bool,
    /// Stripe PaymentIntent id once created.
    pub payment_intent_id: Option<String>,
    /// The PaymentIntent's client secret (handed only to patients of this call).
    pub client_secret: Option<String>,
    /// Amount received once paid.
    pub amount_received: Option<i64>,
    /// Refunded so far.
    pub amount_refunded: i64,
    /// When it was paid (Unix ms).
    pub paid_at: Option<i64>,
    /// Where the receipt went.
    pub receipt_email: Option<String>,
    /// Card brand of the successful charge.
    pub card_brand: Option<String>,
    /// Last four digits of that card.
    pub card_last4: Option<String>,
    /// Stripe's code for the last failure.
    pub failure_code: Option<String>,
    /// Bank's decline code for the last failure.
    pub failure_decline_code: Option<String>,
    /// Message for the last failure.
    pub failure_message: Option<String>,
    /// `created` (Unix s) of the newest Stripe event applied, to spot stale events.
    pub last_event_at: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

impl Default for Payment {
    /// A payment being created: version 1, nothing from Stripe yet. Callers fill in the rest.
    fn default() -> Self {
        Self {
            id: String::new(),
            call_id: String::new(),
            clinic_id: String::new(),
            client_ref: String::new(),
            requested_by_id: String::new(),
            requested_by_name: String::new(),
            amount: 0,
            currency: String::new(),
            description: String::new(),
            status: PaymentStatus::Creating,
            version: 1,
            stripe_account: String::new(),
            livemode: false,
            payment_intent_id: None,
            client_secret: None,
            amount_received: None,
            amount_refunded: 0,
            paid_at: None,
            receipt_email: None,
            card_brand: None,
            card_last4: None,
            failure_code: None,
            failure_decline_code: None,
            failure_message: None,
            last_event_at: 0,
            created_at: 0,
            updated_at: 0,
        }
    }
}

/// Filters on a clinic's payment list. Each is absent or must match; together they all must.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentFilter {
    /// Created at or after (Unix ms).
    pub from_ms: Option<i64>,
    /// Created before (Unix ms).
    pub to_ms: Option<i64>,
    /// In this status.
    pub status: Option<PaymentStatus>,
    /// Requested by this clinician (participant id).
    pub requested_by_id: Option<String>,
    /// Requested in this call.
    pub call_id: Option<String>,
    /// Of this clinic (narrows an organisation's list).
    pub clinic_id: Option<String>,
}

/// Whose payment records a list covers.
#[derive(Debug, Clone, Copy)]
pub enum PaymentScope<'a> {
    /// One clinic's.
    Clinic(&'a str),
    /// Every clinic of an organisation (clinics added later included).
    Org(&'a str),
}

/// What inserting a payment found.
#[derive(Debug)]
pub enum Inserted {
    /// A new row.
    New,
    /// A payment with the same (call, client_ref) already existed.
    Existing(Box<Payment>),
}

/// One write of a [`Store::commit`] batch. A batch is one transaction: a change and the audit
/// record that describes it (and the webhook event that caused it) land together or not at all.
#[derive(Debug, Clone)]
pub enum Write {
    /// Records a Stripe event id. If it was recorded before, the whole batch is a no-op
    /// ([`Committed::Duplicate`]).
    Webhook(WebhookRecord),
    /// Writes the payment if its stored version is still `expected_version`; otherwise the
    /// whole batch is a no-op ([`Committed::Conflict`]).
    Payment {
        /// The new row.
        payment: Box<Payment>,
        /// The version it was computed from.
        expected_version: i64,
    },
    /// Changes only the named columns of one clinic, so concurrent changes to other columns
    /// are never reverted by a stale read.
    Clinic {
        /// Clinic id.
        id: String,
        /// What to change.
        change: ClinicChange,
    },
    /// Appends an audit record.
    Audit(AuditEntry),
    /// Inserts a clinic as given, or renames an existing one (its name only).
    UpsertClinic(Clinic),
    /// Creates or renames an organisation.
    UpsertOrg(Org),
    /// Stores a new enablement request.
    NewEnablement(Enablement),
    /// Records a decision on an enablement request; the whole batch is a
    /// [`Committed::Conflict`] if it was already decided.
    Decision(Enablement),
    /// Stores a refund before Stripe is asked for it, only if the refunds of its payment that
    /// are pending or succeeded, with this one, come to at most `limit` (what was received),
    /// and its `(payment_id, request_key)` is new; otherwise the whole batch is a
    /// [`Committed::Conflict`]. The payment's row is locked first, so two refunds of one
    /// payment are checked one after the other on every database.
    NewRefund {
        /// The refund, `pending`.
        refund: Box<Refund>,
        /// The most its payment's refunds may come to.
        limit: i64,
    },
    /// What Stripe said of a refund: found by callpay's id if given, else by Stripe's; a
    /// refund callpay did not make (the Stripe dashboard) is inserted as given. A `failed`,
    /// `canceled` or `refused` refund keeps that status whatever arrives later.
    RefundSeen(Box<Refund>),
    /// Cancels a refund that never reached Stripe (`failure_reason` `not_sent`), only if it is
    /// still `pending` with no Stripe id; otherwise (another node sent it meanwhile) the whole
    /// batch is a [`Committed::Conflict`].
    RefundNotSent {
        /// callpay's refund id.
        id: String,
        /// When (Unix ms).
        at: i64,
    },
    /// Records an outbound event for the platform (the transactional outbox) and queues one
    /// delivery of it to every enabled endpoint that takes its type, in the same transaction
    /// as the change it describes: an event is stored exactly when its change is.
    Event {
        /// The event.
        event: Box<OutboxEvent>,
        /// Only if the last write before it in the batch (events aside) changed a row: an
        /// unlink of a clinic no longer linked, or a disable of a disabled clinic, announces
        /// nothing.
        if_changed: bool,
    },
    /// Queues callpay's own receipt of a payment, due at once (written with the payment's
    /// success, so the receipt is sent after the confirmation is stored and a restart cannot
    /// lose it). A payment already queued keeps its row: one receipt per payment.
    QueueReceipt {
        /// The payment.
        payment_id: String,
        /// Its clinic.
        clinic_id: String,
    },
}

/// A receipt e-mail in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReceiptJob {
    /// The payment it is for (one receipt per payment).
    pub payment_id: String,
    /// The payment's clinic.
    pub clinic_id: String,
    /// `pending` (to send, maybe after a failed attempt), `sent`, `failed` (given up), or
    /// `skipped` (nothing to send: no address, or the clinic turned receipts off meanwhile).
    pub status: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// When the next attempt is due (Unix ms); while an attempt runs, when its claim lapses.
    pub next_attempt_at: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// When it was sent (Unix ms).
    pub sent_at: Option<i64>,
}

/// What became of one attempt at a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// The mail server took it.
    Sent,
    /// Try again at this time (Unix ms).
    Retry {
        /// When.
        at: i64,
        /// Why this attempt failed.
        error: String,
    },
    /// Given up (permanent refusal, or out of attempts).
    Failed(String),
    /// Nothing to send.
    Skipped(String),
}

/// A refund of a payment, callpay's or one made in the Stripe dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refund {
    /// `ref_…` (callpay's id; also for refunds first seen in a webhook).
    pub id: String,
    /// The payment refunded.
    pub payment_id: String,
    /// Its clinic.
    pub clinic_id: String,
    /// Minor units.
    pub amount: i64,
    /// Lowercase currency.
    pub currency: String,
    /// Stripe's reason: `requested_by_customer`, `duplicate`, `fraudulent` (empty if none).
    pub reason: String,
    /// The refunder's own words, kept by callpay only (never sent to Stripe).
    pub note: Option<String>,
    /// `pending` (stored, Stripe not answered yet), `succeeded`, `failed`, `canceled`,
    /// `refused` (Stripe declined to make it).
    pub status: String,
    /// Stripe's `re_…` once known.
    pub stripe_refund_id: Option<String>,
    /// Stripe's failure reason, or its error code for a refusal.
    pub failure_reason: Option<String>,
    /// `callpay` or `stripe` (made in the dashboard).
    pub source: String,
    /// The client's key for one refund form (a double click sends it twice).
    pub request_key: Option<String>,
    /// Who asked (admin or participant id; `stripe` for the dashboard).
    pub requested_by_id: String,
    /// Their name.
    pub requested_by_name: String,
    /// Their role.
    pub requested_by_role: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// A targeted clinic change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClinicChange {
    /// The operator approved (true) or disabled (false) the payment app.
    SetEnabled(bool),
    /// Links a Stripe account. Only while the app is enabled: on a disabled clinic the whole
    /// batch is a [`Committed::Conflict`] (the app was disabled while the admin was at Stripe).
    Link(StripeLink),
    /// Clears the Stripe link, but only if the clinic is still linked to `account` (a re-link
    /// to another account in the meantime is kept). No rows changed is not an error.
    Unlink {
        /// The account being removed.
        account: String,
    },
    /// Turns callpay's own receipt e-mail on or off.
    SetOwnReceipts(bool),
}

/// A Stripe account link, from the OAuth exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeLink {
    /// `acct_…`.
    pub account: String,
    /// Its publishable key.
    pub publishable_key: Option<String>,
    /// Its business name.
    pub display_name: Option<String>,
    /// Live mode?
    pub livemode: bool,
    /// Who linked it.
    pub linked_by: String,
    /// When (Unix ms).
    pub linked_at: i64,
}

/// What a [`Store::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Every write landed.
    Applied,
    /// The batch's webhook event was already recorded: nothing was written.
    Duplicate,
    /// A payment changed since it was read, or a clinic precondition failed: nothing was written.
    Conflict,
}

/// What a joining connection's `welcome` shows of its call, read together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallSnapshot {
    /// The call's clinic, if it exists.
    pub clinic: Option<Clinic>,
    /// Every payment of the call, oldest first.
    pub payments: Vec<Payment>,
}

/// Where callpay keeps its state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
    /// A clinic by id.
    async fn clinic(&self, id: &str) -> StoreResult<Option<Clinic>>;
    /// Clinics linked to a Stripe account.
    async fn clinics_by_account(&self, account: &str) -> StoreResult<Vec<Clinic>>;
    /// Inserts a payment unless (call_id, client_ref) exists.
    async fn insert_payment(&self, payment: &Payment) -> StoreResult<Inserted>;
    /// A payment by id.
    async fn payment(&self, id: &str) -> StoreResult<Option<Payment>>;
    /// A payment by its Stripe PaymentIntent id.
    async fn payment_by_intent(&self, payment_intent_id: &str) -> StoreResult<Option<Payment>>;
    /// Every payment of a call, oldest first.
    async fn payments_for_call(&self, call_id: &str) -> StoreResult<Vec<Payment>>;
    /// A call's payments and its clinic, for a `welcome`. A store that can reads both in one
    /// statement (most of a join's cost is its round trips to the store); this default reads
    /// them one after the other, through the two methods above.
    async fn call_snapshot(&self, call_id: &str, clinic_id: &str) -> StoreResult<CallSnapshot> {
        let payments = self.payments_for_call(call_id).await?;
        let clinic = self.clinic(clinic_id).await?;
        Ok(CallSnapshot { clinic, payments })
    }
    /// Statements the welcome reads have taken so far, for `/metrics`; 0 for a store that
    /// does not batch them.
    fn welcome_statements(&self) -> u64 {
        0
    }
    /// Whether a Stripe event id was already processed.
    async fn webhook_seen(&self, event_id: &str) -> StoreResult<bool>;
    /// Binds `call_id` to `clinic_id` if it is new, and returns the clinic it is bound to (the
    /// first join's, whoever asks later).
    async fn bind_call(&self, call_id: &str, clinic_id: &str) -> StoreResult<String>;
    /// Applies `writes` in one transaction (see [`Write`] for each write's precondition).
    async fn commit(&self, writes: &[Write]) -> StoreResult<Committed>;
    /// The clinics with these ids that exist, in one query.
    async fn clinics(&self, ids: &[String]) -> StoreResult<Vec<Clinic>>;
    /// Every payment of these calls (each asked once however often it is listed), oldest first,
    /// in one query per thousand calls.
    async fn payments_for_calls(&self, call_ids: &[String]) -> StoreResult<Vec<Payment>>;
    /// An organisation by id.
    async fn org(&self, id: &str) -> StoreResult<Option<Org>>;
    /// An organisation's clinics, by id.
    async fn clinics_for_org(&self, org_id: &str) -> StoreResult<Vec<Clinic>>;
    /// An enablement request by id.
    async fn enablement(&self, id: &str) -> StoreResult<Option<Enablement>>;
    /// Enablement requests, newest first, optionally for one organisation and/or status.
    async fn enablements(&self, org_id: Option<&str>, status: Option<&str>) -> StoreResult<Vec<Enablement>>;
    /// Stores a new OAuth state unless its clinic already has `max_live` unused, unexpired ones
    /// (answers `false` then). States long expired are deleted on the way, so the table holds
    /// at most a day's worth of attempts whatever admins do.
    async fn insert_oauth_state(&self, s: &OAuthState, max_live: usize) -> StoreResult<bool>;
    /// Marks a state used and returns it, atomically: a second take is `Reused`.
    async fn take_oauth_state(&self, state: &str) -> StoreResult<StateTaken>;
    /// The payments in `scope` matching `filter`, newest first (by `created_at`, then id),
    /// strictly older than `before` (Unix ms, id) if given; at most `limit`.
    async fn payment_records(
        &self,
        scope: PaymentScope<'_>,
        filter: &PaymentFilter,
        limit: i64,
        before: Option<(i64, String)>,
    ) -> StoreResult<Vec<Payment>>;
    /// The payments of these clinics created in `[from_ms, to_ms)`, oldest first (reports).
    async fn payments_created_between(
        &self,
        clinic_ids: &[String],
        from_ms: i64,
        to_ms: i64,
    ) -> StoreResult<Vec<Payment>>;
    /// A payment's refunds, oldest first.
    async fn refunds_for_payment(&self, payment_id: &str) -> StoreResult<Vec<Refund>>;
    /// The refund made with `request_key` for a payment, if any.
    async fn refund_by_key(&self, payment_id: &str, request_key: &str) -> StoreResult<Option<Refund>>;
    /// Payments changed after the change `(since_ms, after_id)` (by `updated_at`, then `id`):
    /// with `after_id` empty, every change at or after `since_ms`. Oldest change first, ties by
    /// id, at most `limit`, so a page's last row is where the next page goes on from.
    async fn payments_changed_since(&self, since_ms: i64, after_id: &str, limit: i64) -> StoreResult<Vec<Payment>>;
    /// Refunds stored `pending` that Stripe never answered (no Stripe id), last touched before
    /// `before_ms`, oldest first; at most `limit`.
    async fn unsent_refunds(&self, before_ms: i64, limit: i64) -> StoreResult<Vec<Refund>>;
    /// A clinic's audit records about `target` (an id), oldest first; at most `limit`.
    async fn audit_for_target(&self, clinic_id: &str, target: &str, limit: i64) -> StoreResult<Vec<AuditEntry>>;
    /// A clinic's audit records, newest first, strictly older than `before` (Unix ms, id) if
    /// given; without the payment and refund records unless `with_money`.
    async fn audit_for_clinic(
        &self,
        clinic_id: &str,
        limit: i64,
        before: Option<(i64, String)>,
        with_money: bool,
    ) -> StoreResult<Vec<AuditEntry>>;
    /// Records the language a patient pays a payment in (`en`, `bn`), for its receipt.
    async fn set_payment_lang(&self, payment_id: &str, lang: &str) -> StoreResult<()>;
    /// The language a patient paid a payment in, if a page said.
    async fn payment_lang(&self, payment_id: &str) -> StoreResult<Option<String>>;
    /// Receipts due at `now_ms` (pending, next attempt not later), oldest due first; at most
    /// `limit`.
    async fn due_receipts(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<ReceiptJob>>;
    /// Takes a due receipt for one attempt named `claim` (unique to the attempt): moves its
    /// next attempt to `lease_until`, counts the attempt and records the claim, only if it is
    /// still pending and due as `seen_next_at` (so one instance sends it, and an instance that
    /// dies mid-attempt only delays it until the lease ends). Answers whether it was taken.
    async fn claim_receipt(
        &self,
        payment_id: &str,
        seen_next_at: i64,
        lease_until: i64,
        claim: &str,
    ) -> StoreResult<bool>;
    /// Records what the attempt named `claim` came to, only if that claim still holds the
    /// receipt: once another attempt has taken it over (this one's lease lapsed), or this one
    /// already finished, it changes nothing. Answers whether it was recorded.
    async fn finish_receipt(
        &self,
        payment_id: &str,
        claim: &str,
        outcome: &ReceiptOutcome,
        at: i64,
    ) -> StoreResult<bool>;
    /// A payment's receipt in the outbox, if one was queued.
    async fn receipt(&self, payment_id: &str) -> StoreResult<Option<ReceiptJob>>;
}

/// An organisation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Org {
    /// The platform's organisation id.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// An organisation admin's request to enable the payment app on a clinic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Enablement {
    /// `enr_…`.
    pub id: String,
    /// Organisation.
    pub org_id: String,
    /// Clinic.
    pub clinic_id: String,
    /// The service-desk ticket of the authorised telehealth manager.
    pub ticket_ref: String,
    /// Who asked (admin id).
    pub requested_by: String,
    /// Their name, as the service desk reads it (empty for requests made before it was kept).
    pub requested_by_name: String,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The operator who decided.
    pub decided_by: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub decided_at: Option<i64>,
}

/// A pending Connect OAuth attempt: random, single-use, bound to a clinic and an admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthState {
    /// The random `state` sent to Stripe.
    pub state: String,
    /// The clinic being linked.
    pub clinic_id: String,
    /// The admin who started it.
    pub admin_id: String,
    /// Their name.
    pub admin_name: String,
    /// Their role.
    pub admin_role: String,
    /// Unix ms after which it is refused.
    pub expires_at: i64,
}

/// What taking an OAuth state found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateTaken {
    /// First use: here it is (now marked used).
    Fresh(OAuthState),
    /// It exists but was used before.
    Reused,
    /// No such state.
    Unknown,
}

/// One audit record. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// `aud_…`.
    pub id: String,
    /// Unix ms.
    pub at: i64,
    /// Organisation concerned.
    pub org_id: Option<String>,
    /// Clinic concerned.
    pub clinic_id: Option<String>,
    /// Who acted (`stripe` for webhooks).
    pub actor_id: String,
    /// Their name.
    pub actor_name: String,
    /// Their role.
    pub actor_role: String,
    /// What, e.g. `stripe.linked`, `payment.requested`.
    pub action: String,
    /// The id acted on.
    pub target: Option<String>,
    /// `ok`, `refused`, `failed`.
    pub outcome: String,
    /// Extra detail (amount, account, reason).
    pub detail: Option<String>,
}

/// Who did something, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// Id.
    pub id: &'a str,
    /// Name.
    pub name: &'a str,
    /// Role.
    pub role: &'a str,
}

/// Stripe, as an actor (webhooks and what the hub learns by asking Stripe).
pub const STRIPE: Actor<'static> = Actor { id: "stripe", name: "Stripe", role: "stripe" };

/// Longest audit `detail` kept, in bytes; anything longer is cut (the log is append-only, so it
/// must not grow by whatever a client chose to send).
const MAX_AUDIT_DETAIL: usize = 500;
/// Longest audit `target` kept, in characters: the longest id or `client_ref` the hub accepts
/// (a participant's refused request or cancel names its target in its own words).
pub const MAX_AUDIT_TARGET: usize = 64;

/// `text` cut to at most `max_chars` characters and `max_bytes` bytes on a character boundary,
/// with `…` marking a cut.
fn cut(text: &str, max_chars: usize, max_bytes: usize) -> String {
    let end = text.char_indices().nth(max_chars).map_or(text.len(), |(i, _)| i).min(max_bytes);
    let end = (0..=end).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    if end == text.len() { text.to_owned() } else { format!("{}…", &text[..end]) }
}

impl AuditEntry {
    /// A record of `action` by `actor` with `outcome`, stamped now with a fresh id; the other
    /// fields are empty and set with struct update syntax.
    pub fn new(actor: Actor<'_>, action: &str, outcome: &str) -> Self {
        Self {
            id: format!("aud_{}", crate::ids::random_id()),
            at: now_ms(),
            org_id: None,
            clinic_id: None,
            actor_id: actor.id.to_owned(),
            actor_name: actor.name.to_owned(),
            actor_role: actor.role.to_owned(),
            action: action.to_owned(),
            target: None,
            outcome: outcome.to_owned(),
            detail: None,
        }
    }

    /// Sets the detail, cut to a bounded length on a character boundary.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        let d = cut(&detail.into(), usize::MAX, MAX_AUDIT_DETAIL);
        self.detail = (!d.is_empty()).then_some(d);
        self
    }

    /// The record as it is stored: target and detail cut to their bounds, however the record
    /// was built (struct literals bypass [`Self::with_detail`]).
    pub fn bounded(&self) -> Self {
        Self {
            target: self.target.as_deref().map(|t| cut(t, MAX_AUDIT_TARGET, MAX_AUDIT_TARGET * 4)),
            detail: self.detail.as_deref().map(|d| cut(d, usize::MAX, MAX_AUDIT_DETAIL)),
            ..self.clone()
        }
    }
}

/// A processed Stripe event, for deduplication and audit.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    /// `evt_…`.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Connected account, if any.
    pub account: Option<String>,
    /// The payment it concerned, if known.
    pub payment_id: Option<String>,
    /// What the hub did (`applied`, `stale`, `unknown_payment`, `ignored`).
    pub outcome: String,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_records_are_stored_bounded() {
        let long = AuditEntry {
            target: Some("é".repeat(10_000)),
            detail: Some("x".repeat(10_000)),
            ..AuditEntry::new(STRIPE, "payment.canceled", "refused")
        }
        .bounded();
        assert_eq!(long.target.as_deref().unwrap().chars().count(), MAX_AUDIT_TARGET + 1);
        assert!(long.target.as_deref().unwrap().ends_with('…'));
        assert_eq!(long.detail.as_deref().unwrap().len(), MAX_AUDIT_DETAIL + '…'.len_utf8());
        let short = AuditEntry { target: Some("pay_1".into()), ..AuditEntry::new(STRIPE, "a", "ok") };
        assert_eq!(short.bounded(), short, "a short record is kept as it is");
        assert_eq!(cut("ab€", 10, 3), "ab…", "never inside a character");
    }
}

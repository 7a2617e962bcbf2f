//! callpay's WebSocket protocol, version 1: the frames a clinician's or patient's client and the
//! hub exchange during a call. Types only: no I/O, no async, so clients, the hub, load tests
//! and golden fixtures all share one definition. `README.md` beside this crate is the contract
//! in prose; `schema/` holds the JSON Schema generated from these types.
//!
//! Every frame is a JSON text message with a `type`. Server frames also carry `seq`, the room's
//! event counter on the hub the client is connected to: it strictly increases, so a client can
//! order events. It may skip numbers (events meant for the other role). Each payment also has a
//! `version`; a client keeps the highest version it has seen and drops older copies.

#![warn(missing_docs)]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The protocol version the hub speaks, sent in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol the hub speaks; it is the one it selects in the handshake.
pub const SUBPROTOCOL: &str = "callpay.v1";

/// Prefix of the subprotocol entry that carries the join token. Browsers cannot set headers on a
/// WebSocket, and a token in the URL ends up in proxy and server logs; `Sec-WebSocket-Protocol`
/// is a header that browsers can set. The hub never echoes this entry back.
pub const BEARER_PROTOCOL_PREFIX: &str = "callpay.bearer.";

/// The `Sec-WebSocket-Protocol` value a client offers to join with `token`.
pub fn offered_protocols(token: &str) -> String {
    format!("{SUBPROTOCOL}, {BEARER_PROTOCOL_PREFIX}{token}")
}

/// A test or load client's join URL (`…/ws?token=T`, perhaps `&ticket=…` after) split the way
/// a browser sends it: the URL without the token, and the token for the subprotocol entry
/// ([`offered_protocols`]). Other parameters stay in the URL.
pub fn split_token_url(url: &str) -> (String, Option<&str>) {
    let Some((base, tail)) = url.split_once("?token=") else { return (url.to_owned(), None) };
    match tail.split_once('&') {
        Some((token, rest)) => (format!("{base}?{rest}"), Some(token)),
        None => (base.to_owned(), Some(tail)),
    }
}

/// A participant's role in the call, from the join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The clinician (team member) who requests payments.
    Clinician,
    /// The patient who pays.
    Patient,
}

/// Someone in the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Participant {
    /// Stable participant id from the platform (`sub` of the join token).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Role in this call.
    pub role: Role,
}

/// How far the patient is with paying, relayed from the patient's client to the clinician.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProgressStage {
    /// The patient opened the payment.
    Viewing,
    /// The patient is typing an e-mail address and card details.
    EnteringDetails,
    /// The patient submitted and the card is being confirmed.
    Submitting,
    /// The bank's 3-D Secure challenge is open.
    Authenticating,
    /// Stripe.js has finished confirming on the patient's side. The hub then asks Stripe for the
    /// PaymentIntent itself, so a confirmation never waits on (or depends on) a webhook.
    Submitted,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum ClientMsg {
    /// Clinician: ask the patient to pay. A retried request with the same `client_ref` in the
    /// same call does not create a second payment.
    #[serde(rename = "payment.request")]
    PaymentRequest {
        /// Client-chosen id (1..=64 characters) that makes the request idempotent.
        client_ref: String,
        /// Amount in the currency's minor unit (cents for AUD).
        amount: i64,
        /// Lowercase ISO 4217 code, e.g. `aud`.
        currency: String,
        /// What the payment is for, shown to the patient (1..=200 characters, no control characters).
        description: String,
    },
    /// Clinician: withdraw a request the patient has not paid.
    #[serde(rename = "payment.cancel")]
    PaymentCancel {
        /// The payment to cancel.
        payment_id: String,
    },
    /// Patient: tell the clinician how far paying has got.
    #[serde(rename = "payment.progress")]
    PaymentProgress {
        /// The payment being paid.
        payment_id: String,
        /// Where the patient is.
        stage: ProgressStage,
    },
}

/// A payment's state, as the hub's state machine has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Stored; the Stripe PaymentIntent is not created yet (only the clinician sees this).
    Creating,
    /// Waiting for the patient to pay.
    Requested,
    /// The patient's bank asked for 3-D Secure authentication.
    Authenticating,
    /// Stripe is processing the payment.
    Processing,
    /// The last attempt failed (declined card, failed authentication); the patient may try again.
    Failed,
    /// Paid. Final, except for refunds.
    Succeeded,
    /// Withdrawn before it was paid. Final.
    Canceled,
    /// Part of a succeeded payment was refunded.
    PartiallyRefunded,
    /// All of a succeeded payment was refunded. Final.
    Refunded,
}

/// Why the last attempt failed, in words fit for the patient and clinician.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Failure {
    /// Stripe's code (`card_declined`, `expired_card`, `payment_intent_authentication_failure`...).
    pub code: String,
    /// Stripe's decline code, when the bank gave one (`insufficient_funds`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    /// Human-readable reason.
    pub message: String,
}

/// What the patient's browser needs to pay with Stripe.js. Never sent to clinicians.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StripeClientInfo {
    /// Publishable key for `Stripe(pk, {stripeAccount})`.
    pub publishable_key: String,
    /// The clinic's connected account (payments are direct charges on it).
    pub stripe_account: String,
    /// The PaymentIntent's client secret for `elements({clientSecret})`.
    pub client_secret: String,
}

/// A payment as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentView {
    /// callpay's id for the payment.
    pub payment_id: String,
    /// The clinician's `client_ref` from the request.
    pub client_ref: String,
    /// The call it belongs to.
    pub call_id: String,
    /// Amount in minor units.
    pub amount: i64,
    /// Lowercase currency code.
    pub currency: String,
    /// What it is for.
    pub description: String,
    /// Current state.
    pub status: PaymentStatus,
    /// Grows by one with every change; a client keeps the highest version it has seen.
    pub version: i64,
    /// The clinician who asked.
    pub requested_by: Participant,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last change.
    pub updated_at: i64,
    /// Amount received, once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_received: Option<i64>,
    /// Amount refunded so far.
    #[serde(default)]
    pub amount_refunded: i64,
    /// Unix milliseconds when it was paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<i64>,
    /// The receipt address, masked (`p•••@example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_email: Option<String>,
    /// Card brand, once paid (`visa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_brand: Option<String>,
    /// Last four digits of the card, once paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_last4: Option<String>,
    /// Why the last attempt failed, while `status` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Reference to quote to the clinic (Stripe's PaymentIntent id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Patients only, and only while the payment can be paid (`requested`, `authenticating`,
    /// `failed`): what Stripe.js needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<StripeClientInfo>,
}

/// Stable error codes in `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The sender's role may not do this (a patient requesting, a clinician reporting progress).
    Forbidden,
    /// Amount not an integer, below the currency's minimum or above the configured maximum.
    InvalidAmount,
    /// Currency not allowed for this hub.
    InvalidCurrency,
    /// Description empty, too long or with control characters.
    InvalidDescription,
    /// `client_ref` empty, too long, or reused for a different request.
    InvalidClientRef,
    /// The payment app is not enabled for the clinic.
    AppNotEnabled,
    /// The clinic has no linked Stripe account.
    StripeNotConnected,
    /// Stripe (or the hub's store) could not be reached; retry with the same `client_ref`.
    StripeUnavailable,
    /// No such payment in this call.
    UnknownPayment,
    /// The payment is not in a state that allows this (e.g. cancelling a paid payment).
    InvalidState,
    /// Too many frames; slow down.
    RateLimited,
    /// The frame is not valid JSON or not a known message.
    BadFrame,
    /// Something failed inside the hub; nothing was lost, retry.
    Internal,
    /// The hub is handling as many payment commands as its store can serve: nothing was done
    /// with this one. Send it again, unchanged (a request with the same `client_ref`), after
    /// `retry_after_ms`.
    Busy,
}

/// Frames the hub sends (inside [`ServerFrame`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum ServerMsg {
    /// First frame on every connection: everything a client needs to be whole.
    #[serde(rename = "welcome")]
    Welcome {
        /// [`PROTOCOL_VERSION`].
        protocol_version: u32,
        /// The call.
        call_id: String,
        /// The clinic's display name.
        clinic_name: String,
        /// Who this connection is.
        you: Participant,
        /// Everyone connected to this call right now (you included).
        participants: Vec<Participant>,
        /// Every payment in this call, from the store, oldest first.
        payments: Vec<PaymentView>,
        /// Whether new payment requests can be made (app enabled and Stripe linked).
        payments_available: bool,
        /// The patient's last reported stage for each payment still waiting to be paid, by
        /// payment id (so a reloaded clinician page shows "paying", not "requested").
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        progress: std::collections::BTreeMap<String, ProgressStage>,
        /// Why new requests cannot be made, when `payments_available` is false (as in
        /// `clinic.updated`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unavailable_reason: Option<ErrorCode>,
    },
    /// Someone connected.
    #[serde(rename = "participant.joined")]
    ParticipantJoined {
        /// Who.
        participant: Participant,
    },
    /// Someone's last connection closed.
    #[serde(rename = "participant.left")]
    ParticipantLeft {
        /// Who.
        participant: Participant,
    },
    /// A new payment request.
    #[serde(rename = "payment.requested")]
    PaymentRequested {
        /// The payment.
        payment: PaymentView,
    },
    /// A payment changed (status, failure, card details, refunds).
    #[serde(rename = "payment.updated")]
    PaymentUpdated {
        /// The payment after the change.
        payment: PaymentView,
    },
    /// Stripe confirmed the payment. Sent once per payment.
    #[serde(rename = "payment.confirmed")]
    PaymentConfirmed {
        /// The paid payment.
        payment: PaymentView,
    },
    /// Several payments changed while this connection's hub could not hear the others (a bus
    /// outage, a lost message), found when the hub compared its room with the store: one frame
    /// instead of one per change, so that a repair never overflows the client's queue. Apply
    /// each payment as a `payment.updated`; each id in `confirmed` became paid meanwhile and
    /// gets the notice a `payment.confirmed` would have given, once. A repair with only a few
    /// changes sends the individual `payment.updated` and `payment.confirmed` frames instead.
    #[serde(rename = "payment.sync")]
    PaymentSync {
        /// The payments that changed, as this role sees them.
        payments: Vec<PaymentView>,
        /// Ids of those that became paid (each named once per payment and connection).
        confirmed: Vec<String>,
    },
    /// The patient's progress with paying (to clinicians).
    #[serde(rename = "payment.progress")]
    PaymentProgress {
        /// The payment.
        payment_id: String,
        /// Where the patient is.
        stage: ProgressStage,
        /// The patient.
        participant_id: String,
    },
    /// The clinic's ability to take payments changed (e.g. Stripe was unlinked).
    #[serde(rename = "clinic.updated")]
    ClinicUpdated {
        /// Whether new payment requests can be made.
        payments_available: bool,
        /// Why not, when not: `app_not_enabled` or `stripe_not_connected`, a code the page
        /// words in its own language.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ErrorCode>,
    },
    /// A request from this connection failed.
    #[serde(rename = "error")]
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// The `client_ref` or `payment_id` the error is about.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// With `busy`: when to send the command again (ms from now), the sender's place in the
        /// line of commands turned away.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// A server frame on the wire: the message plus the room sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServerFrame {
    /// The room's event counter on this connection's hub: each room event increases it;
    /// `welcome` and `error` carry the current value without increasing it.
    pub seq: u64,
    /// The message.
    #[serde(flatten)]
    pub msg: ServerMsg,
}

/// WebSocket close codes the hub uses besides the standard ones.
pub mod close {
    /// The client did not keep up and its outbound queue filled: reconnect and resync.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// No pong within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4009;
    /// This hub node is stopping (deploy or drain) and no longer accepts connections: reconnect
    /// without backoff, at a random moment within the spread the reason gives
    /// (`reconnect within N ms`); another node takes the connection.
    pub const RESTARTING: u16 = 4012;
    /// The hub is admitting as many joins as its store can serve: retry after the time the
    /// reason gives (`retry in N ms`), plus jitter, with the reason's ticket (`ticket T`) as
    /// `?ticket=T`, which keeps the join's place in line. Nothing about the call changed.
    pub const BUSY: u16 = 4013;
    /// The client kept flooding after being told `rate_limited` (standard "policy violation").
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The same participant opened a newer connection to the call and this, its oldest, was
    /// closed to stay within the per-participant limit (a reload in another tab). Do not
    /// reconnect automatically.
    pub const REPLACED: u16 = 4010;
    /// A frame was not valid WebSocket (standard "protocol error").
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8 (standard "invalid frame payload data").
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame was larger than the hub accepts (standard "message too big").
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

#[cfg(test)]
mod tests {
    use super::split_token_url;

    #[test]
    fn a_join_url_gives_up_its_token_and_keeps_its_other_parameters() {
        assert_eq!(split_token_url("ws://h/v1/calls/c/ws?token=abc"), ("ws://h/v1/calls/c/ws".to_owned(), Some("abc")));
        assert_eq!(
            split_token_url("ws://h/v1/calls/c/ws?token=abc&ticket=1.ff"),
            ("ws://h/v1/calls/c/ws?ticket=1.ff".to_owned(), Some("abc"))
        );
        assert_eq!(split_token_url("ws://h/v1/calls/c/ws"), ("ws://h/v1/calls/c/ws".to_owned(), None));
    }
}

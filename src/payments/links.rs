//! Pay by link: the clinician of a call makes a signed, expiring link to an unpaid payment, and
//! the patient opens it outside the call. The link is only a way back to the same payment: it
//! hands out the PaymentIntent the request made (never a new one), so a payment can be paid
//! once whichever way the patient comes, and its confirmation takes the usual path (the hub
//! reads the PaymentIntent, or Stripe's webhook arrives) to the room and the records.

use super::link::{LinkClaim, LinkKey, Tampered};
use super::{Caller, Payments, Refusal};
use crate::store::{Clinic, Payment, StoreError, now_ms};
use callpay_protocol::{ErrorCode, PaymentStatus, Role};

/// What an authentic link leads to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting to be paid (requested, in 3-D Secure, or declined and open to another card).
    Payable,
    /// Paid, Stripe or the bank still deciding (`processing`): never offered again.
    Confirming,
    /// Paid (refunds included).
    Paid,
    /// The clinic cancelled the request.
    Canceled,
    /// Past its expiry (and not paid).
    Expired,
    /// The payment's clinic no longer takes it: the app was turned off, its Stripe account was
    /// removed, or the clinic now takes payments on another Stripe account than the one this
    /// payment's PaymentIntent lives on.
    ClinicUnavailable,
}

impl LinkState {
    /// The state's stable name (the pages word each in their language).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payable => "payable",
            Self::Confirming => "confirming",
            Self::Paid => "paid",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
            Self::ClinicUnavailable => "clinic_unavailable",
        }
    }
}

/// An authentic link's payment, its clinic's name and its state.
#[derive(Debug, Clone)]
pub struct LinkView {
    /// The payment.
    pub payment: Payment,
    /// Its clinic's display name.
    pub clinic_name: String,
    /// What the link leads to now.
    pub state: LinkState,
    /// When the link expires (Unix seconds).
    pub expires_at: i64,
}

/// Why a link leads nowhere.
#[derive(Debug, thiserror::Error)]
pub enum LinkRefusal {
    /// Not a link of ours (altered, incomplete), or signed for a payment that does not exist.
    #[error("the link is not valid")]
    Tampered,
    /// This hub has no link key (see `links.secret`).
    #[error("pay-by-link is not configured on this hub")]
    Off,
    /// The store failed: try again.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Tampered> for LinkRefusal {
    fn from(_: Tampered) -> Self {
        Self::Tampered
    }
}

/// The state a payment's link is in at `now_s` (Unix seconds). Paid and confirming come first:
/// a patient who paid and opens the link later sees that it is paid, not that it expired.
pub fn link_state(p: &Payment, clinic: Option<&Clinic>, expires_at: i64, now_s: i64) -> LinkState {
    match p.status {
        PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded => {
            return LinkState::Paid;
        }
        PaymentStatus::Processing => return LinkState::Confirming,
        PaymentStatus::Canceled => return LinkState::Canceled,
        PaymentStatus::Creating | PaymentStatus::Requested | PaymentStatus::Authenticating | PaymentStatus::Failed => {}
    }
    if now_s >= expires_at {
        return LinkState::Expired;
    }
    let takes_it = clinic.is_some_and(|c| c.payment_readiness().is_ok_and(|account| account == p.stripe_account));
    if !takes_it || p.client_secret.is_none() {
        return LinkState::ClinicUnavailable;
    }
    LinkState::Payable
}

impl Payments {
    /// A link to `payment_id` for the clinician `who` of its call, valid for `ttl_secs`: the
    /// token and its expiry (Unix seconds). Only a payment the patient could pay now gets one.
    /// Audited (the record names the payment and the expiry, never the token).
    pub async fn create_link(
        &self,
        who: &Caller,
        payment_id: &str,
        key: &LinkKey,
        ttl_secs: i64,
    ) -> Result<(String, i64), Refusal> {
        let reference = Some(payment_id);
        if who.participant.role != Role::Clinician {
            return Err(Refusal::new(ErrorCode::Forbidden, "Only the clinician can make a payment link.", reference));
        }
        let payment = self.payment_in_call(who, payment_id).await?;
        if payment.status == PaymentStatus::Creating {
            return Err(Refusal::new(
                ErrorCode::InvalidState,
                "This request is still being sent to Stripe; make its link in a moment.",
                reference,
            ));
        }
        let clinic = self.store.clinic(&payment.clinic_id).await.map_err(|e| Refusal::store(e, reference))?;
        let now_s = now_ms() / 1000;
        let expires_at = now_s + ttl_secs;
        match link_state(&payment, clinic.as_ref(), expires_at, now_s) {
            LinkState::Payable => {}
            LinkState::ClinicUnavailable => {
                return Err(Refusal::new(
                    ErrorCode::StripeNotConnected,
                    "This clinic cannot take this payment now, so no link was made.",
                    reference,
                ));
            }
            LinkState::Paid | LinkState::Confirming | LinkState::Canceled | LinkState::Expired => {
                return Err(Refusal::new(
                    ErrorCode::InvalidState,
                    format!(
                        "Only an unpaid request gets a link; this one is {}.",
                        super::commands::status_word(payment.status)
                    ),
                    reference,
                ));
            }
        }
        let token = key.sign(&payment.id, expires_at);
        let entry = who
            .audit("payment.link_created", Some(&payment.id), "ok")
            .with_detail(format!("pay-by-link valid until {expires_at} (Unix s)"));
        self.audit_only(entry).await;
        Ok((token, expires_at))
    }

    /// What a link leads to: its payment as it is now, and in which state.
    pub async fn open_link(&self, key: Option<&LinkKey>, token: &str) -> Result<LinkView, LinkRefusal> {
        let key = key.ok_or(LinkRefusal::Off)?;
        let LinkClaim { payment_id, expires_at } = key.verify(token)?;
        let payment = self.store.payment(&payment_id).await?.ok_or(LinkRefusal::Tampered)?;
        let clinic = self.store.clinic(&payment.clinic_id).await?;
        let state = link_state(&payment, clinic.as_ref(), expires_at, now_ms() / 1000);
        let clinic_name = clinic.map(|c| c.name).unwrap_or_default();
        Ok(LinkView { payment, clinic_name, state, expires_at })
    }

    /// The link's page says Stripe.js finished: read the PaymentIntent now (as the in-call page
    /// makes the hub do), so the confirmation reaches the clinician's panel and the records
    /// without waiting on the webhook. Only for a link that could still be paid a moment ago.
    pub async fn link_submitted(&self, key: Option<&LinkKey>, token: &str) -> Result<LinkView, LinkRefusal> {
        let view = self.open_link(key, token).await?;
        if matches!(view.state, LinkState::Payable | LinkState::Confirming) {
            self.verify(&view.payment.id, super::verify::Reason::PageAsked).await;
            return self.open_link(key, token).await;
        }
        Ok(view)
    }

    /// Records the language the patient pays in, for callpay's receipt. Only `en` and `bn`.
    pub async fn set_patient_language(&self, payment_id: &str, lang: &str) -> Result<(), StoreError> {
        let lang = if lang == "bn" { "bn" } else { "en" };
        self.store.set_payment_lang(payment_id, lang).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: PaymentStatus) -> Payment {
        Payment {
            id: "pay_1".into(),
            clinic_id: "c1".into(),
            stripe_account: "acct_1".into(),
            client_secret: Some("pi_1_secret_x".into()),
            status,
            ..Payment::default()
        }
    }

    fn clinic(enabled: bool, account: Option<&str>) -> Clinic {
        Clinic {
            id: "c1".into(),
            app_enabled: enabled,
            stripe_account: account.map(str::to_owned),
            ..Clinic::default()
        }
    }

    #[test]
    fn each_state_of_a_link() {
        let ok = clinic(true, Some("acct_1"));
        let p = |s| payment(s);
        assert_eq!(link_state(&p(PaymentStatus::Requested), Some(&ok), 100, 50), LinkState::Payable);
        assert_eq!(link_state(&p(PaymentStatus::Failed), Some(&ok), 100, 50), LinkState::Payable);
        assert_eq!(link_state(&p(PaymentStatus::Requested), Some(&ok), 100, 100), LinkState::Expired);
        assert_eq!(
            link_state(&p(PaymentStatus::Succeeded), Some(&ok), 100, 500),
            LinkState::Paid,
            "paid beats expired"
        );
        assert_eq!(link_state(&p(PaymentStatus::Refunded), None, 100, 50), LinkState::Paid);
        assert_eq!(link_state(&p(PaymentStatus::Processing), Some(&ok), 100, 50), LinkState::Confirming);
        assert_eq!(link_state(&p(PaymentStatus::Canceled), Some(&ok), 100, 50), LinkState::Canceled);
        for other in [clinic(false, Some("acct_1")), clinic(true, None), clinic(true, Some("acct_2"))] {
            assert_eq!(
                link_state(&p(PaymentStatus::Requested), Some(&other), 100, 50),
                LinkState::ClinicUnavailable,
                "{other:?}"
            );
        }
        assert_eq!(link_state(&p(PaymentStatus::Requested), None, 100, 50), LinkState::ClinicUnavailable);
        // Not yet at Stripe (no client secret): nothing a link could pay with.
        let creating = Payment { client_secret: None, ..p(PaymentStatus::Creating) };
        assert_eq!(link_state(&creating, Some(&ok), 100, 50), LinkState::ClinicUnavailable);
    }
}

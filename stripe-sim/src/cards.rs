//! Stripe's documented test cards and `pm_card_*` shortcuts, and what each does at confirm time.

/// What confirming a PaymentIntent with a card leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Charge succeeds.
    Succeed,
    /// 3-D Secure is required; the outcome is decided by the challenge.
    RequireAuthentication,
    /// The issuer declines with (`code`, `decline_code`, message).
    Decline(&'static str, &'static str, &'static str),
}

/// A test card as the simulator knows it.
#[derive(Debug, Clone, Copy)]
pub struct TestCard {
    /// Full card number.
    pub number: &'static str,
    /// Card brand as Stripe spells it.
    pub brand: &'static str,
    /// The `pm_card_*` shortcut id for this card.
    pub pm_id: &'static str,
    /// Funding type.
    pub funding: &'static str,
    /// What happens at confirm.
    pub behaviour: Behaviour,
}

const GENERIC: Behaviour = Behaviour::Decline("card_declined", "generic_decline", "Your card was declined.");
const FUNDS: Behaviour = Behaviour::Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.");
const EXPIRED: Behaviour = Behaviour::Decline("expired_card", "expired_card", "Your card has expired.");

/// The cards the simulator recognises; any other Luhn-valid number behaves like 4242.
pub const CARDS: &[TestCard] = &[
    TestCard {
        number: "4242424242424242",
        brand: "visa",
        pm_id: "pm_card_visa",
        funding: "credit",
        behaviour: Behaviour::Succeed,
    },
    TestCard {
        number: "5555555555554444",
        brand: "mastercard",
        pm_id: "pm_card_mastercard",
        funding: "credit",
        behaviour: Behaviour::Succeed,
    },
    TestCard {
        number: "378282246310005",
        brand: "amex",
        pm_id: "pm_card_amex",
        funding: "credit",
        behaviour: Behaviour::Succeed,
    },
    TestCard {
        number: "4000002500003155",
        brand: "visa",
        pm_id: "pm_card_authenticationRequiredOnSetup",
        funding: "credit",
        behaviour: Behaviour::RequireAuthentication,
    },
    TestCard {
        number: "4000002760003184",
        brand: "visa",
        pm_id: "pm_card_authenticationRequired",
        funding: "credit",
        behaviour: Behaviour::RequireAuthentication,
    },
    TestCard {
        number: "4000000000003220",
        brand: "visa",
        pm_id: "pm_card_threeDSecure2Required",
        funding: "credit",
        behaviour: Behaviour::RequireAuthentication,
    },
    TestCard {
        number: "4000000000000002",
        brand: "visa",
        pm_id: "pm_card_visa_chargeDeclined",
        funding: "credit",
        behaviour: GENERIC,
    },
    TestCard {
        number: "4000000000009995",
        brand: "visa",
        pm_id: "pm_card_visa_chargeDeclinedInsufficientFunds",
        funding: "credit",
        behaviour: FUNDS,
    },
    TestCard {
        number: "4000000000000069",
        brand: "visa",
        pm_id: "pm_card_chargeDeclinedExpiredCard",
        funding: "credit",
        behaviour: EXPIRED,
    },
    TestCard {
        number: "4000000000005126",
        brand: "visa",
        pm_id: "pm_card_refundFail",
        funding: "credit",
        behaviour: Behaviour::Succeed,
    },
];

/// Last four of Stripe's `refund_fail` test card: the charge succeeds, and a refund of it is
/// accepted (`succeeded`), then fails a little later (`refund.failed`).
pub const REFUND_FAIL_LAST4: &str = "5126";

/// Why a refund of the `refund_fail` card fails, as Stripe reports it.
pub const REFUND_FAILURE_REASON: &str = "expired_or_canceled_card";

/// Finds a test card by its `pm_card_*` id.
pub fn by_pm_id(id: &str) -> Option<&'static TestCard> {
    CARDS.iter().find(|c| c.pm_id == id)
}

/// Finds a test card by number, or describes an unlisted Luhn-valid number.
pub fn by_number(number: &str) -> Option<TestCard> {
    if let Some(card) = CARDS.iter().find(|c| c.number == number) {
        return Some(*card);
    }
    luhn_valid(number).then(|| TestCard {
        number: "",
        brand: brand_of(number),
        pm_id: "",
        funding: "credit",
        behaviour: Behaviour::Succeed,
    })
}

fn brand_of(number: &str) -> &'static str {
    match number.as_bytes().first() {
        Some(b'4') => "visa",
        Some(b'5') => "mastercard",
        Some(b'3') => "amex",
        _ => "unknown",
    }
}

/// The Luhn checksum every real card number satisfies.
pub fn luhn_valid(number: &str) -> bool {
    if !(12..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_card_passes_luhn_and_lookup() {
        for card in CARDS {
            assert!(luhn_valid(card.number), "{}", card.number);
            assert_eq!(by_pm_id(card.pm_id).unwrap().number, card.number);
        }
        assert!(!luhn_valid("4242424242424241"));
        assert_eq!(by_number("4000000000009995").unwrap().behaviour, FUNDS);
        assert!(by_number("1234").is_none());
    }
}

//! callpay's receipt for a paid payment, in the patient's language (English or Bengali): the
//! clinic's name, the amount with its currency, what it was for, when (UTC), the card and the
//! payment's reference. Pure: the caller sends it.

use super::Mail;
use crate::store::Payment;

/// The receipt of `payment` to its `receipt_email`, from `from_addr` in the clinic's name, in
/// `lang` (`bn` for Bengali, anything else English). `None` if the payment has no address.
pub fn compose(payment: &Payment, clinic_name: &str, from_addr: &str, lang: &str) -> Option<Mail> {
    let to = payment.receipt_email.clone()?;
    let bn = lang == "bn";
    let digits = |s: String| if bn { bengali_digits(&s) } else { s };
    let amount = digits(display_amount(payment.amount_received.unwrap_or(payment.amount), &payment.currency));
    let paid = payment.paid_at.unwrap_or(payment.updated_at);
    let date = digits(
        jiff::Timestamp::from_millisecond(paid)
            .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default(),
    );
    let card = match (&payment.card_brand, &payment.card_last4) {
        (Some(brand), Some(last4)) if bn => {
            Some(format!("{}, শেষ চার অঙ্ক {}", brand_name(brand), bengali_digits(last4)))
        }
        (Some(brand), Some(last4)) => Some(format!("{} ending {last4}", brand_name(brand))),
        _ => None,
    };
    let reference = payment.payment_intent_id.clone().unwrap_or_else(|| payment.id.clone());
    let description = &payment.description;
    let (subject, text) = if bn {
        let mut lines = vec![
            format!("{clinic_name}-কে পেমেন্ট করার জন্য ধন্যবাদ।"),
            String::new(),
            format!("পরিমাণ: {amount}"),
            format!("কিসের জন্য: {description}"),
            format!("তারিখ: {date}"),
        ];
        lines.extend(card.map(|c| format!("কার্ড: {c}")));
        lines.extend([
            format!("পেমেন্ট রেফারেন্স: {reference}"),
            String::new(),
            "ক্লিনিকের পেমেন্ট প্রসেসর Stripe আলাদাভাবে নিজের রসিদও পাঠায়।".to_owned(),
            format!("এই রসিদটি {clinic_name}-এর পক্ষে callpay পাঠিয়েছে।"),
        ]);
        (format!("{clinic_name} থেকে আপনার পেমেন্টের রসিদ: {amount}"), lines)
    } else {
        let mut lines = vec![
            format!("Thank you for your payment to {clinic_name}."),
            String::new(),
            format!("Amount: {amount}"),
            format!("For: {description}"),
            format!("Date: {date}"),
        ];
        lines.extend(card.map(|c| format!("Card: {c}")));
        lines.extend([
            format!("Payment reference: {reference}"),
            String::new(),
            "Stripe, the clinic's payment processor, also sends its own receipt.".to_owned(),
            format!("This receipt was sent by callpay on behalf of {clinic_name}."),
        ]);
        (format!("Your payment receipt from {clinic_name}: {amount}"), lines)
    };
    Some(Mail {
        from_name: clinic_name.to_owned(),
        from_addr: from_addr.to_owned(),
        to,
        subject,
        text: lines_to_text(&text),
    })
}

fn lines_to_text(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// `5000, "aud"` -> `50.00 AUD` (zero-decimal currencies without cents), as callpay's records
/// write amounts.
fn display_amount(amount: i64, currency: &str) -> String {
    crate::payments::validate::display_amount(amount, currency)
}

/// ASCII digits to Bengali ones: the Bengali pages write numbers this way too.
pub fn bengali_digits(s: &str) -> String {
    s.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) if c.is_ascii_digit() => char::from_u32(0x09E6 + d).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// A card network as people write it.
fn brand_name(brand: &str) -> String {
    match brand.to_ascii_lowercase().as_str() {
        "visa" => "Visa".into(),
        "mastercard" => "Mastercard".into(),
        "amex" => "American Express".into(),
        "discover" => "Discover".into(),
        "jcb" => "JCB".into(),
        "unionpay" => "UnionPay".into(),
        "eftpos_au" => "eftpos".into(),
        _ => brand.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paid() -> Payment {
        Payment {
            id: "pay_1".into(),
            amount: 5000,
            amount_received: Some(5000),
            currency: "aud".into(),
            description: "Follow-up consultation".into(),
            receipt_email: Some("sam@example.com".into()),
            paid_at: Some(1_796_000_000_000),
            card_brand: Some("visa".into()),
            card_last4: Some("4242".into()),
            payment_intent_id: Some("pi_123".into()),
            ..Payment::default()
        }
    }

    #[test]
    fn english_and_bengali_receipts() {
        let en = compose(&paid(), "Harbour Clinic", "receipts@example.com", "en").unwrap();
        assert_eq!(en.to, "sam@example.com");
        assert_eq!(en.from_name, "Harbour Clinic");
        assert_eq!(en.subject, "Your payment receipt from Harbour Clinic: 50.00 AUD");
        for part in
            ["Amount: 50.00 AUD", "For: Follow-up consultation", "Date: 2026-11-30", "Visa ending 4242", "pi_123"]
        {
            assert!(en.text.contains(part), "{part} in {}", en.text);
        }
        let bn = compose(&paid(), "Harbour Clinic", "receipts@example.com", "bn").unwrap();
        assert!(bn.subject.contains("৫০.০০ AUD"), "{}", bn.subject);
        for part in ["পরিমাণ: ৫০.০০ AUD", "তারিখ: ২০২৬-১১-৩০", "৪২৪২", "pi_123", "Follow-up consultation"]
        {
            assert!(bn.text.contains(part), "{part} in {}", bn.text);
        }
        assert!(compose(&Payment { receipt_email: None, ..paid() }, "C", "r@example.com", "en").is_none());
        let yen = Payment { amount: 500, amount_received: Some(500), currency: "jpy".into(), ..paid() };
        assert!(compose(&yen, "C", "r@example.com", "en").unwrap().text.contains("Amount: 500 JPY"));
    }
}

//! The OAuth callback's result pages, in English or Bengali: static HTML with no scripts, for
//! the admin's browser coming back from Stripe.

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// The OAuth callback page's sentences in Bengali, by their English text (the English is what
/// the handler writes; a sentence missing here is shown in English).
const CALLBACK_BN: &[(&str, &str)] = &[
    ("Stripe link failed", "Stripe যুক্ত করা যায়নি"),
    ("Stripe link expired", "Stripe যুক্ত করার লিংকের মেয়াদ শেষ"),
    ("Stripe account not linked", "Stripe অ্যাকাউন্ট যুক্ত হয়নি"),
    ("Stripe account linked", "Stripe অ্যাকাউন্ট যুক্ত হয়েছে"),
    ("Try again", "আবার চেষ্টা করুন"),
    (
        "The response from Stripe had no state. Start again from Configure > Client Payment.",
        "Stripe-এর উত্তরে প্রয়োজনীয় তথ্য ছিল না। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    (
        "This link was not started from this browser. Start again from Configure > Client Payment.",
        "এই লিংকটি এই ব্রাউজার থেকে শুরু হয়নি। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    (
        "callpay cannot save the link right now. Start again in a minute.",
        "callpay এখন লিংকটি সংরক্ষণ করতে পারছে না। এক মিনিট পরে আবার শুরু করুন।",
    ),
    (
        "This link is not one callpay started. Start again from Configure > Client Payment.",
        "এই লিংকটি callpay শুরু করেনি। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    (
        "This link was already used. Start again from Configure > Client Payment.",
        "এই লিংকটি আগেই ব্যবহার করা হয়েছে। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    ("callpay cannot load the clinic right now.", "callpay এখন ক্লিনিকের তথ্য আনতে পারছে না।"),
    (
        "This link expired. Start again from Configure > Client Payment.",
        "এই লিংকের মেয়াদ শেষ হয়ে গেছে। কনফিগার › ক্লায়েন্ট পেমেন্ট থেকে আবার শুরু করুন।",
    ),
    (
        "You cancelled on Stripe's page, so no account was linked. Nothing changed.",
        "আপনি Stripe-এর পাতায় বাতিল করেছেন, তাই কোনো অ্যাকাউন্ট যুক্ত হয়নি। কিছুই বদলায়নি।",
    ),
    (
        "Stripe did not link the account. Nothing changed; you can try again.",
        "Stripe অ্যাকাউন্টটি যুক্ত করেনি। কিছুই বদলায়নি; আবার চেষ্টা করতে পারেন।",
    ),
    ("Stripe's response had no authorization code.", "Stripe-এর উত্তরে অনুমোদনের কোড ছিল না।"),
    (
        "Stripe could not be reached. Nothing changed; try again in a minute.",
        "Stripe-এর সঙ্গে যোগাযোগ করা যায়নি। কিছুই বদলায়নি; এক মিনিট পরে আবার চেষ্টা করুন।",
    ),
    (
        "Stripe did not accept the authorization. Nothing changed; start again.",
        "Stripe অনুমোদনটি গ্রহণ করেনি। কিছুই বদলায়নি; আবার শুরু করুন।",
    ),
    ("Your role may not link this clinic's Stripe account.", "আপনার ভূমিকায় এই ক্লিনিকের Stripe অ্যাকাউন্ট যুক্ত করা যায় না।"),
    (
        "The payment app was disabled for this clinic while you were at Stripe, so nothing was linked.",
        "আপনি Stripe-এ থাকার সময় এই ক্লিনিকের পেমেন্ট অ্যাপ বন্ধ করা হয়েছে, তাই কিছুই যুক্ত হয়নি।",
    ),
    (
        "callpay could not save the link. Start again in a minute.",
        "callpay লিংকটি সংরক্ষণ করতে পারেনি। এক মিনিট পরে আবার শুরু করুন।",
    ),
    ("The account is linked.", "অ্যাকাউন্টটি যুক্ত হয়েছে।"),
    ("Back to Client Payment", "ক্লায়েন্ট পেমেন্টে ফিরে যান"),
];

/// `text` in Bengali when `bn` and the catalogue has it.
fn callback_words(bn: bool, text: &str) -> &str {
    if !bn {
        return text;
    }
    CALLBACK_BN.iter().find(|(en, _)| *en == text).map_or(text, |(_, b)| b)
}

/// The result page: `title` and `body` (English, worded in Bengali when `bn` and the catalogue
/// has them) and, for a known clinic, the way back to its Client Payment page.
pub fn page(bn: bool, status: StatusCode, title: &str, body: &str, clinic_id: Option<&str>) -> Response {
    let back = clinic_id
        .map(|c| {
            format!(
                "<p><a href=\"/admin/client-payment?clinic={}\">{}</a></p>",
                crate::http::escape(c),
                callback_words(bn, "Back to Client Payment")
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang={lang}><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>\
         <title>{t}</title><main style='font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem'>\
         <h1>{t}</h1><p role=status id=outcome>{b}</p>{back}</main></html>",
        lang = if bn { "bn" } else { "en" },
        t = crate::http::escape(callback_words(bn, title)),
        b = crate::http::escape(callback_words(bn, body)),
    );
    // A static page: no scripts, no framing, nothing sniffed or cached.
    let headers = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (status, headers, Html(html)).into_response()
}

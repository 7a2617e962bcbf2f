//! The web app, embedded in the binary from `web/`: the clinician and patient panels, the admin
//! page, the SDK, and (in demo mode only) the side-by-side demo call page.

use crate::app::AppState;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::json;
use std::sync::Arc;

/// (path under /web/, content type, body)
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.css", "text/css; charset=utf-8", include_str!("../../web/app.css")),
    ("i18n.js", "text/javascript; charset=utf-8", include_str!("../../web/i18n.js")),
    ("sdk/callpay.js", "text/javascript; charset=utf-8", include_str!("../../web/sdk/callpay.js")),
    ("clinician.js", "text/javascript; charset=utf-8", include_str!("../../web/clinician.js")),
    ("patient.js", "text/javascript; charset=utf-8", include_str!("../../web/patient.js")),
    ("admin.js", "text/javascript; charset=utf-8", include_str!("../../web/admin.js")),
    ("pay.js", "text/javascript; charset=utf-8", include_str!("../../web/pay.js")),
    ("cardform.js", "text/javascript; charset=utf-8", include_str!("../../web/cardform.js")),
];

const CLINICIAN: &str = include_str!("../../web/clinician.html");
const PATIENT: &str = include_str!("../../web/patient.html");
const ADMIN: &str = include_str!("../../web/admin.html");
const PAY: &str = include_str!("../../web/pay.html");

/// Links the demo page shows: `callpay demo` adds them to the router as an extension; without
/// them `/demo` is a 404.
#[derive(Debug, Clone)]
pub struct DemoLinks {
    /// The demo call.
    pub call_id: String,
    /// Clinician join token.
    pub clinician_token: String,
    /// Patient join token.
    pub patient_token: String,
    /// Clinic admin token.
    pub clinic_admin_token: String,
    /// The demo clinic.
    pub clinic_id: String,
    /// The simulator's dashboard.
    pub stripe_dashboard: String,
    /// The demo's in-process mailbox (callpay's own receipts), shown on `/demo/mailbox`.
    pub mailbox: Arc<crate::mail::MemoryMailbox>,
}

fn origin(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let scheme = url.split_once("://").map_or("https", |(s, _)| s);
    format!("{scheme}://{}", rest.split('/').next().unwrap_or_default())
}

/// Content-Security-Policy for the pages: our own scripts plus Stripe's origins, nothing inline.
fn csp(app: &AppState) -> HeaderValue {
    let js = origin(&app.config.stripe.js_url);
    let api = origin(&app.config.stripe.api_base);
    // Only origins without spaces or separators can be listed; anything else is dropped.
    let ancestors: String = app
        .config
        .server
        .frame_ancestors
        .iter()
        .filter(|o| !o.is_empty() && !o.contains([' ', ';', ',', '\'', '"']))
        .map(|o| format!(" {o}"))
        .collect();
    let policy = format!(
        "default-src 'self'; script-src 'self' {js}; connect-src 'self' {api} {js}; frame-src 'self' {js} https://hooks.stripe.com; \
         img-src 'self' data: {js}; style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'self'{ancestors}"
    );
    HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"))
}

fn page(app: &AppState, html: &'static str) -> Response {
    let mut resp = Html(html).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, csp(app));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // Browsers without frame-ancestors honour X-Frame-Options; it can name no other origin, so
    // it is only sent when no platform origin may frame the pages.
    if app.config.server.frame_ancestors.is_empty() {
        h.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
    }
    resp
}

/// `GET /call/clinician`.
pub async fn clinician(State(app): State<AppState>) -> Response {
    page(&app, CLINICIAN)
}

/// `GET /call/patient`.
pub async fn patient(State(app): State<AppState>) -> Response {
    page(&app, PATIENT)
}

/// `GET /admin/client-payment`.
pub async fn admin(State(app): State<AppState>) -> Response {
    page(&app, ADMIN)
}

/// `GET /pay`: the pay-by-link page (the link's token is in the URL fragment).
pub async fn pay(State(app): State<AppState>) -> Response {
    page(&app, PAY)
}

/// `GET /web/{*path}`.
pub async fn asset(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, kind, body)) => {
            ([(header::CONTENT_TYPE, *kind), (header::CACHE_CONTROL, "no-cache")], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `GET /v1/client-config`: what the pages need to know about this hub.
pub async fn client_config(State(app): State<AppState>) -> Response {
    axum::Json(json!({
        "stripe_js_url": app.config.stripe.js_url,
        "currencies": app.config.payments.currencies,
        "default_currency": app.config.payments.currencies.first().cloned().unwrap_or_else(|| "aud".into()),
        "max_amount": app.config.payments.max_amount,
    }))
    .into_response()
}

/// `GET /`: the demo in demo mode, otherwise a pointer to the docs.
pub async fn root(demo: Option<Extension<Arc<DemoLinks>>>) -> Response {
    if demo.is_some() {
        return Redirect::to("/demo").into_response();
    }
    axum::Json(json!({"service": "callpay", "health": "/healthz", "api": "/v1/openapi.json"})).into_response()
}

/// The demo page's words: language, title, admin link, dashboard link, how-to (HTML), panels.
const DEMO_EN: [&str; 8] = [
    "en",
    "callpay demo call",
    "Clinic admin: Configure › Client Payment",
    "Stripe simulator dashboard",
    "Left: the clinician's panel (what opens from <em>Apps &amp; Tools › Request Payment</em>). Right: the patient's. \
     Request $50.00 on the left, then pay on the right with card 4242 4242 4242 4242, any future expiry (e.g. 12/34) and any CVC. \
     Try 4000 0025 0000 3155 for 3-D Secure and 4000 0000 0000 9995 for a declined card.",
    "Clinician panel",
    "Patient panel",
    "Demo mailbox (callpay's receipts)",
];
const DEMO_BN: [&str; 8] = [
    "bn",
    "callpay ডেমো কল",
    "ক্লিনিক অ্যাডমিন: কনফিগার › ক্লায়েন্ট পেমেন্ট",
    "Stripe সিমুলেটরের ড্যাশবোর্ড",
    "বাঁয়ে চিকিৎসকের প্যানেল (<em>অ্যাপস ও টুলস › পেমেন্টের অনুরোধ</em> থেকে যা খোলে), ডানে রোগীর। \
     বাঁয়ে ৫০.০০ ডলারের অনুরোধ করুন, তারপর ডানে ৪২৪২ ৪২৪২ ৪২৪২ ৪২৪২ কার্ড, ভবিষ্যতের যেকোনো মেয়াদ (যেমন ১২/৩৪) ও যেকোনো CVC দিয়ে পরিশোধ করুন। \
     ৩-ডি সিকিউরের জন্য ৪০০০ ০০২৫ ০০০০ ৩১৫৫ এবং প্রত্যাখ্যাত কার্ডের জন্য ৪০০০ ০০০০ ০০০০ ৯৯৯৫ ব্যবহার করুন।",
    "চিকিৎসকের প্যানেল",
    "রোগীর প্যানেল",
    "ডেমো মেইলবক্স (callpay-এর রসিদ)",
];

/// `GET /demo`: clinician and patient side by side (demo mode only).
pub async fn demo(demo: Option<Extension<Arc<DemoLinks>>>, headers: axum::http::HeaderMap) -> Response {
    let Some(Extension(d)) = demo else {
        return (StatusCode::NOT_FOUND, "The demo page exists only in `callpay demo`.").into_response();
    };
    let e = super::escape;
    let w = if super::prefers_bengali(&headers) { DEMO_BN } else { DEMO_EN };
    let html = format!(
        r#"<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title><link rel="stylesheet" href="/web/app.css"></head><body>
<header><h1>{title}</h1><nav class="row"><a href="/admin/client-payment?clinic={clinic}#token={admin}">{admin_link}</a> · <a href="{dash}" target="_blank" rel="noopener">{dash_link}</a> · <a href="/demo/mailbox" target="_blank" rel="noopener">{mailbox_link}</a></nav></header>
<main style="max-width:none"><p>{how}</p></main>
<div class="demo-grid">
<iframe id="clinician" title="{doc_panel}" allow="payment *" src="/call/clinician#call={call}&amp;token={doc}"></iframe>
<iframe id="patient" title="{pat_panel}" allow="payment *" src="/call/patient#call={call}&amp;token={pat}"></iframe>
</div></body></html>"#,
        lang = w[0],
        title = w[1],
        admin_link = w[2],
        dash_link = w[3],
        how = w[4],
        doc_panel = w[5],
        pat_panel = w[6],
        mailbox_link = w[7],
        clinic = e(&d.clinic_id),
        admin = e(&d.clinic_admin_token),
        dash = e(&d.stripe_dashboard),
        call = e(&d.call_id),
        doc = e(&d.clinician_token),
        pat = e(&d.patient_token),
    );
    let mut resp = Html(html).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The mailbox page's words: language, title, intro, empty, from, to, subject, received.
const MAILBOX_EN: [&str; 8] = [
    "en",
    "Demo mailbox",
    "callpay's own receipt e-mails, as the demo sends them (in-process, nothing leaves this machine). Newest first; reload to see new ones. Stripe's receipts are on the simulator's dashboard.",
    "No e-mail yet. Pay a request in the demo call: the clinic sends its own receipt.",
    "From",
    "To",
    "Subject",
    "Received",
];
const MAILBOX_BN: [&str; 8] = [
    "bn",
    "ডেমো মেইলবক্স",
    "ডেমো যেভাবে পাঠায়, callpay-এর নিজের রসিদ ইমেইলগুলো (এই যন্ত্রের ভেতরেই, বাইরে কিছু যায় না)। নতুনগুলো আগে; নতুন দেখতে পাতাটি আবার লোড করুন। Stripe-এর রসিদ সিমুলেটরের ড্যাশবোর্ডে আছে।",
    "এখনো কোনো ইমেইল নেই। ডেমো কলে একটি অনুরোধ পরিশোধ করুন: ক্লিনিক নিজের রসিদ পাঠাবে।",
    "প্রেরক",
    "প্রাপক",
    "বিষয়",
    "পাওয়া গেছে",
];

/// `GET /demo/mailbox`: the demo's in-process mailbox, newest first (demo mode only).
pub async fn mailbox(demo: Option<Extension<Arc<DemoLinks>>>, headers: axum::http::HeaderMap) -> Response {
    let Some(Extension(d)) = demo else {
        return (StatusCode::NOT_FOUND, "The demo mailbox exists only in `callpay demo`.").into_response();
    };
    let e = super::escape;
    let w = if super::prefers_bengali(&headers) { MAILBOX_BN } else { MAILBOX_EN };
    let mut items = String::new();
    for (at, m) in d.mailbox.messages().iter().rev() {
        let when = jiff::Timestamp::from_millisecond(*at)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        items.push_str(&format!(
            r#"<article class="card" data-role="mail"><dl class="details"><dt>{from_l}</dt><dd>{from_name} &lt;{from_addr}&gt;</dd><dt>{to_l}</dt><dd>{to}</dd><dt>{subject_l}</dt><dd data-role="subject">{subject}</dd><dt>{at_l}</dt><dd>{when}</dd></dl><pre data-role="body" style="white-space:pre-wrap">{text}</pre></article>"#,
            from_l = w[4],
            to_l = w[5],
            subject_l = w[6],
            at_l = w[7],
            from_name = e(&m.from_name),
            from_addr = e(&m.from_addr),
            to = e(&m.to),
            subject = e(&m.subject),
            text = e(&m.text),
        ));
    }
    if items.is_empty() {
        items = format!(r#"<p class="muted" data-role="empty">{}</p>"#, w[3]);
    }
    let html = format!(
        r#"<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title} · callpay</title><link rel="stylesheet" href="/web/app.css"></head><body>
<header><h1>{title}</h1></header><main><p>{intro}</p>{items}</main></body></html>"#,
        lang = w[0],
        title = w[1],
        intro = w[2],
    );
    let mut resp = Html(html).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

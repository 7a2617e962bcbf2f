//! Pages a person sees: the 3-D Secure challenge, a receipt, the dashboard, and the Stripe.js
//! stand-in script. Server-rendered HTML; every value from a request is escaped.

use crate::money;
use crate::sim::Sim;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write;

/// The Stripe.js stand-in, served at the configured path.
const STRIPE_JS: &str = include_str!("../../assets/stripe.js");

/// Escapes text for HTML element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>\
         <title>{}</title><style>body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#1a1a1a}}\
         table{{border-collapse:collapse;margin-bottom:1.5rem}}td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.9rem}}\
         .ok{{color:#0a6b2f}}.bad{{color:#a3141b}}button{{font-size:1rem;padding:.5rem 1rem;margin:.25rem}}</style>{}</html>",
        escape(title),
        body
    ))
}

/// `GET /stripe.js` stand-in.
pub async fn stripe_js() -> Response {
    ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], STRIPE_JS).into_response()
}

/// `GET /3ds/{id}`: the issuer's challenge page. Buttons report the outcome to
/// `/_sim/3ds/{id}`, then tell the opener (Stripe.js stand-in) or follow `return_url`.
pub async fn three_ds_page(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let secret = q.get("client_secret").cloned().unwrap_or_default();
    let account = q.get("account").cloned().unwrap_or_default();
    let found = sim.with_world(|w| {
        let acct = if account.is_empty() { w.platform.clone() } else { account.clone() };
        w.accounts
            .get(&acct)
            .and_then(|a| a.payment_intents.get(&id))
            .filter(|pi| pi["client_secret"] == secret.as_str())
            .cloned()
    });
    let Some(pi) = found else {
        return (StatusCode::NOT_FOUND, page("Not found", "<p>No such payment to authenticate.</p>")).into_response();
    };
    let amount = money::display(pi["amount"].as_i64().unwrap_or(0), pi["currency"].as_str().unwrap_or("aud"));
    let return_url = pi["next_action"]["redirect_to_url"]["return_url"].as_str().unwrap_or_default();
    // The page speaks the language Stripe.js was created with (`locale`), as a bank's would.
    let w = ThreeDsWords::for_locale(q.get("locale").map(String::as_str).unwrap_or("en"));
    let body = format!(
        r#"<main lang={lang}><p><strong>{banner}</strong></p>
<h1>{heading} {amount}</h1>
<p>{explain}</p>
<button id=complete-auth onclick="answer('complete')">{complete}</button>
<button id=fail-auth onclick="answer('fail')">{fail}</button>
<p id=result role=status></p></main>
<script>
async function answer(outcome) {{
  const body = new URLSearchParams({{key: {pk}, client_secret: {secret}, outcome}});
  if ({account}) body.set('_stripe_account', {account});
  const r = await fetch('/_sim/3ds/' + encodeURIComponent({id}), {{method: 'POST', body}});
  const pi = await r.json();
  document.getElementById('result').textContent = outcome === 'complete' ? {done} : {failed};
  if (window.parent !== window) {{ window.parent.postMessage({{stripeSim3ds: outcome, paymentIntent: pi}}, '*'); return; }}
  const ret = {ret};
  if (ret) {{
    const u = new URL(ret);
    u.searchParams.set('payment_intent', {id});
    u.searchParams.set('payment_intent_client_secret', {secret});
    u.searchParams.set('redirect_status', pi.status === 'succeeded' || pi.status === 'processing' ? 'succeeded' : 'failed');
    location.href = u.toString();
  }}
}}
</script>"#,
        amount = escape(&amount),
        lang = w.lang,
        banner = w.banner,
        heading = w.heading,
        explain = w.explain,
        complete = w.complete,
        fail = w.fail,
        done = js(w.done),
        failed = js(w.failed),
        pk = js(&sim.config().publishable_key),
        secret = js(&secret),
        account = js(&account),
        id = js(&id),
        ret = js(return_url),
    );
    page(w.title, &body).into_response()
}

/// The 3-D Secure test page's words in English or Bengali.
struct ThreeDsWords {
    lang: &'static str,
    title: &'static str,
    banner: &'static str,
    heading: &'static str,
    explain: &'static str,
    complete: &'static str,
    fail: &'static str,
    done: &'static str,
    failed: &'static str,
}

impl ThreeDsWords {
    fn for_locale(locale: &str) -> Self {
        if locale.starts_with("bn") {
            Self {
                lang: "bn",
                title: "পেমেন্ট যাচাই",
                banner: "পরীক্ষামূলক মোড: ৩-ডি সিকিউর পরীক্ষার পাতা",
                heading: "আপনার পেমেন্ট নিশ্চিত করুন:",
                explain: "এখানে আপনার ব্যাংক পেমেন্টটি অনুমোদন করতে বলত।",
                complete: "যাচাই সম্পন্ন করুন",
                fail: "যাচাই ব্যর্থ করুন",
                done: "যাচাই হয়েছে।",
                failed: "যাচাই ব্যর্থ হয়েছে।",
            }
        } else {
            Self {
                lang: "en",
                title: "Authenticate payment",
                banner: "Stripe test mode: 3-D Secure 2 test page",
                heading: "Confirm your payment of",
                explain: "This is where your bank would ask you to approve the payment.",
                complete: "Complete authentication",
                fail: "Fail authentication",
                done: "Authenticated.",
                failed: "Authentication failed.",
            }
        }
    }
}

/// A JS string literal that is also safe inside an HTML `<script>` element.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default().replace('<', "\\u003c").replace('>', "\\u003e")
}

/// `GET /receipts/{charge}`: the receipt a customer's e-mail links to.
pub async fn receipt(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let found = sim.with_world(|w| {
        w.accounts.values().find_map(|a| {
            a.charges
                .get(&id)
                .map(|ch| (ch.clone(), a.object["business_profile"]["name"].as_str().unwrap_or("").to_owned()))
        })
    });
    let Some((ch, merchant)) = found else {
        return (StatusCode::NOT_FOUND, page("Not found", "<p>No such receipt.</p>")).into_response();
    };
    let amount = money::display(ch["amount"].as_i64().unwrap_or(0), ch["currency"].as_str().unwrap_or("aud"));
    let refunded = ch["amount_refunded"].as_i64().unwrap_or(0);
    let card = &ch["payment_method_details"]["card"];
    let mut body = format!(
        "<main><h1>Receipt from {}</h1><p>Amount paid: <strong>{}</strong></p><p>{}</p><p>Card: {} ending {}</p><p>Receipt for {}</p>",
        escape(&merchant),
        escape(&amount),
        escape(ch["description"].as_str().unwrap_or("")),
        escape(card["brand"].as_str().unwrap_or("")),
        escape(card["last4"].as_str().unwrap_or("")),
        escape(ch["receipt_email"].as_str().unwrap_or("")),
    );
    if refunded > 0 {
        let _ = write!(
            body,
            "<p>Refunded: {}</p>",
            escape(&money::display(refunded, ch["currency"].as_str().unwrap_or("aud")))
        );
    }
    body.push_str("</main>");
    page("Receipt", &body).into_response()
}

/// `GET /dashboard/{account}/test/payments/{pi}` (and without `/test`): one payment as the
/// clinic's Stripe dashboard shows it, at the path the real dashboard uses, so a link built for
/// dashboard.stripe.com works against the simulator too.
pub async fn dashboard_payment(State(sim): State<Sim>, Path((account, id)): Path<(String, String)>) -> Response {
    let found = sim.with_world(|w| {
        let a = w.accounts.get(&account)?;
        let pi = a.payment_intents.get(&id)?.clone();
        let charges: Vec<Value> =
            a.charges.newest_first().filter(|c| c["payment_intent"] == pi["id"]).cloned().collect();
        let name = a.object["business_profile"]["name"].as_str().unwrap_or("").to_owned();
        Some((pi, charges, name))
    });
    let Some((pi, charges, name)) = found else {
        return (StatusCode::NOT_FOUND, page("Not found", "<p>No such payment on this account.</p>")).into_response();
    };
    let currency = pi["currency"].as_str().unwrap_or("aud");
    let mut body = format!(
        "<main><h1>Payment {}</h1><p>Account <code>{}</code> ({})</p><table>\
         <tr><th>amount</th><td>{}</td></tr><tr><th>status</th><td id=status>{}</td></tr>\
         <tr><th>description</th><td>{}</td></tr><tr><th>created</th><td>{}</td></tr></table><h2>Charges</h2><table>\
         <tr><th>charge</th><th>status</th><th>refunded</th></tr>",
        escape(&id),
        escape(&account),
        escape(&name),
        escape(&money::display(pi["amount"].as_i64().unwrap_or(0), currency)),
        cell(&pi["status"]),
        cell(&pi["description"]),
        cell(&pi["created"]),
    );
    for c in &charges {
        let _ = write!(
            body,
            "<tr><td><a href='/receipts/{0}'>{0}</a></td><td>{1}</td><td>{2}</td></tr>",
            cell(&c["id"]),
            cell(&c["status"]),
            escape(&money::display(c["amount_refunded"].as_i64().unwrap_or(0), currency)),
        );
    }
    body.push_str("</table><p><a href='/dashboard'>All payments</a></p></main>");
    page(&format!("Payment {id}"), &body).into_response()
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

/// `GET /dashboard`: accounts, payments with charges and refunds, events, webhook deliveries and
/// receipts — what the Stripe dashboard would show a clinic and the platform.
pub async fn dashboard(State(sim): State<Sim>) -> Response {
    let html = sim.with_world(|w| {
        let mut out = String::from("<main><h1>Stripe simulator dashboard</h1>");
        let _ = write!(out, "<p>Platform account <code>{}</code>. Times are Unix seconds.</p>", escape(&w.platform));
        out.push_str("<h2>Accounts</h2><table><tr><th>id</th><th>name</th><th>connected</th><th>payments</th><th>events</th></tr>");
        for (id, a) in &w.accounts {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(id),
                cell(&a.object["business_profile"]["name"]),
                if a.connected { "yes" } else { "no" },
                a.payment_intents.len(),
                a.events.len()
            );
        }
        out.push_str("</table><h2>Payments</h2><table><tr><th>account</th><th>payment intent</th><th>amount</th><th>status</th><th>description</th><th>charges</th><th>refunded</th></tr>");
        for (id, a) in &w.accounts {
            for pi in a.payment_intents.newest_first() {
                let charges: Vec<String> = a
                    .charges
                    .newest_first()
                    .filter(|c| c["payment_intent"] == pi["id"])
                    .map(|c| format!("<a href='/receipts/{0}'>{0}</a> {1}", cell(&c["id"]), cell(&c["status"])))
                    .collect();
                let refunded: i64 = a
                    .charges
                    .newest_first()
                    .filter(|c| c["payment_intent"] == pi["id"])
                    .filter_map(|c| c["amount_refunded"].as_i64())
                    .sum();
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(id),
                    cell(&pi["id"]),
                    escape(&money::display(pi["amount"].as_i64().unwrap_or(0), pi["currency"].as_str().unwrap_or("aud"))),
                    cell(&pi["status"]),
                    cell(&pi["description"]),
                    charges.join("<br>"),
                    if refunded > 0 { escape(&money::display(refunded, pi["currency"].as_str().unwrap_or("aud"))) } else { String::new() },
                );
            }
        }
        out.push_str("</table><h2>Events</h2><table><tr><th>created</th><th>id</th><th>type</th><th>account</th><th>pending webhooks</th></tr>");
        let mut events: Vec<&Value> = w.accounts.values().flat_map(|a| a.events.newest_first()).collect();
        events.sort_by_key(|e| std::cmp::Reverse(e["created"].as_i64()));
        for e in events.iter().take(200) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                cell(&e["created"]),
                cell(&e["id"]),
                cell(&e["type"]),
                cell(&e["account"]),
                cell(&e["pending_webhooks"])
            );
        }
        out.push_str("</table><h2>Webhook deliveries</h2><table><tr><th>at</th><th>event</th><th>type</th><th>endpoint</th><th>attempt</th><th>response</th></tr>");
        for d in w.deliveries.iter().rev().take(200) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class={}>{}</td></tr>",
                d.at,
                escape(&d.event_id),
                escape(&d.event_type),
                escape(&d.url),
                d.attempt,
                if d.delivered { "ok" } else { "bad" },
                escape(&d.outcome)
            );
        }
        out.push_str("</table><h2>Receipt e-mails</h2><table><tr><th>at</th><th>to</th><th>amount</th><th>receipt</th></tr>");
        for r in w.receipts.iter().rev().take(200) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href='{}'>view</a></td></tr>",
                r.at,
                escape(&r.to),
                escape(&money::display(r.amount, &r.currency)),
                escape(&r.receipt_url)
            );
        }
        out.push_str("</table></main>");
        out
    });
    page("Stripe simulator dashboard", &html).into_response()
}

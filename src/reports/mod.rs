//! Reports over a clinic's (or an organisation's) payment records, pure and without I/O: totals
//! and counts by status, refunds, net and average amount; by day in the chosen time zone; by
//! clinician and by clinic; and the CSV export, which opens cleanly in a spreadsheet (UTF-8 with
//! a byte-order mark, and no cell a spreadsheet would run as a formula).
//!
//! A payment belongs to the day it was requested, in the report's zone. Money is counted from
//! our records: gross is what paid payments received, refunded what Stripe has refunded of them,
//! net the difference, and the average is gross over paid payments.

pub mod zone;

use crate::store::{Payment, status_str};
use callpay_protocol::PaymentStatus;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use zone::{Date, Zone};

/// Longest period a report covers, in days.
pub const MAX_DAYS: i64 = 366;

/// A report's period: whole local days `from..=to` in `zone`.
#[derive(Debug, Clone)]
pub struct Period {
    /// First day.
    pub from: Date,
    /// Last day (inclusive).
    pub to: Date,
    /// The zone days are counted in.
    pub zone: Zone,
}

impl Period {
    /// The period's bounds as Unix ms: `[start, end)`.
    pub fn bounds(&self) -> (i64, i64) {
        (self.zone.midnight(self.from), self.zone.midnight(self.to.next()))
    }
}

/// Sums over a set of payments.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    count: i64,
    paid_count: i64,
    gross: i64,
    refunded: i64,
    refund_count: i64,
}

impl Sums {
    fn add(&mut self, p: &Payment) {
        self.count += 1;
        if paid(p) {
            self.paid_count += 1;
            self.gross += p.amount_received.unwrap_or(p.amount);
            self.refunded += p.amount_refunded;
            self.refund_count += i64::from(p.amount_refunded > 0);
        }
    }

    fn json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("count".into(), json!(self.count));
        m.insert("paid_count".into(), json!(self.paid_count));
        m.insert("gross".into(), json!(self.gross));
        m.insert("refunded".into(), json!(self.refunded));
        m.insert("refund_count".into(), json!(self.refund_count));
        m.insert("net".into(), json!(self.gross - self.refunded));
        m.insert("average".into(), json!(if self.paid_count > 0 { self.gross / self.paid_count } else { 0 }));
        m
    }
}

fn paid(p: &Payment) -> bool {
    matches!(p.status, PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded)
}

/// The currencies of `payments` with how many payments each, most used first (then by code).
pub fn currencies(payments: &[Payment]) -> Vec<(String, i64)> {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for p in payments {
        *counts.entry(p.currency.as_str()).or_default() += 1;
    }
    let mut list: Vec<(String, i64)> = counts.into_iter().map(|(c, n)| (c.to_owned(), n)).collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list
}

/// The report over `payments` (those created in the period, all in `currency`), with each
/// clinic's name from `clinic_names` for the per-clinic rows, and every currency the period
/// holds (`all_currencies`, from [`currencies`]) so a page can offer the others.
pub fn build(
    payments: &[Payment],
    period: &Period,
    clinic_names: &BTreeMap<String, String>,
    currency: Option<&str>,
    all_currencies: &[(String, i64)],
) -> Value {
    debug_assert!(payments.iter().all(|p| Some(p.currency.as_str()) == currency), "one currency per report");
    let mut totals = Sums::default();
    let mut by_status: BTreeMap<&'static str, (i64, i64)> = BTreeMap::new();
    let mut by_day: BTreeMap<Date, Sums> = BTreeMap::new();
    let mut by_clinician: BTreeMap<(String, String), Sums> = BTreeMap::new();
    let mut by_clinic: BTreeMap<String, Sums> = BTreeMap::new();
    for p in payments {
        totals.add(p);
        let s = by_status.entry(status_str(p.status)).or_default();
        s.0 += 1;
        s.1 += p.amount;
        by_day.entry(period.zone.date_of(p.created_at)).or_default().add(p);
        by_clinician.entry((p.requested_by_id.clone(), p.requested_by_name.clone())).or_default().add(p);
        by_clinic.entry(p.clinic_id.clone()).or_default().add(p);
    }
    // Every day of the period, so a chart has no holes.
    let mut days = Vec::new();
    let mut day = period.from;
    while day <= period.to {
        let mut row = by_day.get(&day).copied().unwrap_or_default().json();
        row.insert("date".into(), json!(day.to_string()));
        days.push(Value::Object(row));
        day = day.next();
    }
    let clinicians: Vec<Value> = by_clinician
        .iter()
        .map(|((id, name), s)| {
            let mut row = s.json();
            row.insert("id".into(), json!(id));
            row.insert("name".into(), json!(name));
            Value::Object(row)
        })
        .collect();
    let clinics: Vec<Value> = by_clinic
        .iter()
        .map(|(id, s)| {
            let mut row = s.json();
            row.insert("clinic_id".into(), json!(id));
            row.insert("name".into(), json!(clinic_names.get(id).cloned().unwrap_or_else(|| id.clone())));
            Value::Object(row)
        })
        .collect();
    let statuses: Map<String, Value> = by_status
        .iter()
        .map(|(s, (count, amount))| ((*s).to_owned(), json!({"count": count, "amount": amount})))
        .collect();
    json!({
        "from": period.from.to_string(),
        "to": period.to.to_string(),
        "tz": period.zone.name,
        "currency": currency,
        "currencies": all_currencies.iter().map(|(c, n)| json!({"currency": c, "count": n})).collect::<Vec<_>>(),
        "totals": Value::Object(totals.json()),
        "by_status": statuses,
        "by_day": days,
        "by_clinician": clinicians,
        "by_clinic": clinics,
    })
}

/// The CSV export: one row per payment, oldest first, UTF-8 with a byte-order mark.
pub fn csv(payments: &[Payment], zone: &Zone, clinic_names: &BTreeMap<String, String>) -> String {
    let mut out = String::from('\u{feff}');
    let header = [
        "date",
        "time",
        "payment_id",
        "clinic",
        "clinician",
        "description",
        "status",
        "currency",
        "amount",
        "received",
        "refunded",
        "net",
    ];
    out.push_str(&header.join(","));
    out.push_str("\r\n");
    let mut sorted: Vec<&Payment> = payments.iter().collect();
    sorted.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    for p in sorted {
        let received = if paid(p) { p.amount_received.unwrap_or(p.amount) } else { 0 };
        let refunded = if paid(p) { p.amount_refunded } else { 0 };
        let money = |v: i64| {
            crate::payments::validate::display_amount(v, &p.currency).split(' ').next().unwrap_or_default().to_owned()
        };
        let clinic = clinic_names.get(&p.clinic_id).cloned().unwrap_or_else(|| p.clinic_id.clone());
        let cells = [
            zone.date_of(p.created_at).to_string(),
            zone.time_of(p.created_at),
            p.id.clone(),
            clinic,
            p.requested_by_name.clone(),
            p.description.clone(),
            status_str(p.status).to_owned(),
            p.currency.to_uppercase(),
            money(p.amount),
            money(received),
            money(refunded),
            money(received - refunded),
        ];
        let row: Vec<String> = cells.iter().map(|c| cell(c)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Characters that make a spreadsheet read a cell as a formula, full-width forms included.
const FORMULA_START: [char; 10] = ['=', '+', '-', '@', '\t', '\r', '＝', '＋', '－', '＠'];

/// One CSV cell: text a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`,
/// a tab or a carriage return, or their full-width forms, after any blanks a spreadsheet might
/// trim) gets a leading `'`, so it shows as text; then quoted if it holds a comma, a quote or a
/// line break, with quotes doubled (RFC 4180). Amounts are written by us and never start with
/// one of those (refunds are columns of their own).
pub fn cell(text: &str) -> String {
    let first = text.trim_start_matches(|c: char| c.is_whitespace() && c != '\t' && c != '\r').chars().next();
    let formula = text.starts_with(FORMULA_START) || first.is_some_and(|c| FORMULA_START.contains(&c));
    let neutral = if formula { format!("'{text}") } else { text.to_owned() };
    if neutral.contains([',', '"', '\n', '\r']) { format!("\"{}\"", neutral.replace('"', "\"\"")) } else { neutral }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_and_quotes_doubled() {
        assert_eq!(cell("Consult"), "Consult");
        assert_eq!(cell("=1+1"), "'=1+1");
        assert_eq!(cell("+SUM(A1)"), "'+SUM(A1)");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("@cmd"), "'@cmd");
        assert_eq!(cell("\t=x"), "'\t=x");
        assert_eq!(cell("=HYPERLINK(\"u\",\"x\")"), "\"'=HYPERLINK(\"\"u\"\",\"\"x\"\")\"");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("ডাঃ রুমি"), "ডাঃ রুমি");
        // Spreadsheets that trim leading blanks, or read full-width signs, still see a formula.
        assert_eq!(cell(" =1+1"), "' =1+1");
        assert_eq!(cell("\u{a0}\u{3000}@cmd"), "'\u{a0}\u{3000}@cmd");
        assert_eq!(cell("＝1+1"), "'＝1+1");
        assert_eq!(cell("  Consult"), "  Consult");
    }
}

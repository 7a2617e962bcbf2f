//! Reports of a clinic and of an organisation: the period and zone are read from the query,
//! the matrix decides who may, the store gives the period's payments, and [`crate::reports`]
//! does the sums (JSON) or writes the CSV export.

use super::{Result, check, clinic_for, store_err};
use crate::admin::Admin;
use crate::admin::authz::Action;
use crate::app::AppState;
use crate::http::{ApiError, Path, Query};
use crate::reports::zone::{Date, Zone};
use crate::reports::{self, MAX_DAYS, Period};
use crate::store::Clinic;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD&tz=Area/City&currency=aud&format=json|csv`.
#[derive(Debug, Default, Deserialize)]
pub struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
    tz: Option<String>,
    currency: Option<String>,
    format: Option<String>,
}

/// The currency asked for, lowercased; `None` when not given.
fn currency(q: &ReportQuery) -> Result<Option<String>> {
    let Some(c) = q.currency.as_deref().map(str::trim).filter(|c| !c.is_empty()) else { return Ok(None) };
    if c.len() != 3 || !c.chars().all(|ch| ch.is_ascii_alphabetic()) {
        return Err(ApiError::bad_request("invalid_currency", "currency is a three-letter ISO code, e.g. aud."));
    }
    Ok(Some(c.to_ascii_lowercase()))
}

fn period(q: &ReportQuery) -> Result<Period> {
    let bad = |m: &str| ApiError::bad_request("invalid_period", m);
    let date = |v: &Option<String>, name: &str| {
        v.as_deref().and_then(Date::parse).ok_or_else(|| bad(&format!("{name} is a date, YYYY-MM-DD.")))
    };
    let (from, to) = (date(&q.from, "from")?, date(&q.to, "to")?);
    if to < from || to.days() - from.days() >= MAX_DAYS {
        return Err(bad(&format!("The period runs from `from` to `to`, at most {MAX_DAYS} days.")));
    }
    let zone = Zone::named(q.tz.as_deref().unwrap_or("UTC"))
        .ok_or_else(|| ApiError::bad_request("invalid_time_zone", "tz is an IANA time zone, e.g. Australia/Sydney."))?;
    Ok(Period { from, to, zone })
}

async fn answer(app: &AppState, clinics: &[Clinic], q: &ReportQuery, name: &str) -> Result<Response> {
    let period = period(q)?;
    let asked = currency(q)?;
    let (start, end) = period.bounds();
    let ids: Vec<String> = clinics.iter().map(|c| c.id.clone()).collect();
    let mut payments = app.store.payments_created_between(&ids, start, end).await.map_err(store_err)?;
    let names: BTreeMap<String, String> = clinics.iter().map(|c| (c.id.clone(), c.name.clone())).collect();
    let currencies = reports::currencies(&payments);
    // Sums are of one currency: the one asked for, else the most used. The export lists every
    // payment with its own currency unless one is asked for.
    let summed = asked.clone().or_else(|| currencies.first().map(|(c, _)| c.clone()));
    let format = q.format.as_deref().unwrap_or("json");
    if format == "json" || asked.is_some() {
        payments.retain(|p| summed.as_deref() == Some(p.currency.as_str()));
    }
    match format {
        "json" => {
            Ok(axum::Json(reports::build(&payments, &period, &names, summed.as_deref(), &currencies)).into_response())
        }
        "csv" => {
            let file = format!("callpay-{name}-{}-{}.csv", period.from, period.to);
            let disposition = format!(
                "attachment; filename=\"{}\"",
                file.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.', "_")
            );
            let headers = [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, disposition),
            ];
            Ok((headers, reports::csv(&payments, &period.zone, &names)).into_response())
        }
        _ => Err(ApiError::bad_request("invalid_format", "format is json or csv.")),
    }
}

/// `GET /v1/clinics/{clinic_id}/report`.
pub async fn clinic(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(clinic_id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response> {
    let clinic = clinic_for(&app, &who, Action::ViewReports, &clinic_id).await?;
    answer(&app, std::slice::from_ref(&clinic), &q, &clinic.id).await
}

/// `GET /v1/orgs/{org_id}/report`: every clinic of the organisation.
pub async fn org(
    State(app): State<AppState>,
    Admin(who): Admin,
    Path(org_id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response> {
    check(&who, Action::ViewOrgReports, Some(&org_id), None)?;
    let clinics = app.store.clinics_for_org(&org_id).await.map_err(store_err)?;
    answer(&app, &clinics, &q, &org_id).await
}

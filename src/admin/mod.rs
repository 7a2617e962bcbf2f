//! The administrative half: organisations and clinics (registered by the platform), enabling the
//! payment app (org admin asks, operator decides), linking the clinic's Stripe account through
//! Connect OAuth, removing it, the append-only audit log, the clinic's payment records and refunds.
//! JSON under `/v1/`, stable error codes, cursor pagination on lists, and an OpenAPI document
//! built from the route table below.

pub mod authz;
mod handlers;
pub mod openapi;
mod pages;

use crate::app::AppState;
use crate::bus::RoomEvent;
use crate::http::{ApiError, Bearer};
use crate::store::{AuditEntry, Clinic, ClinicChange, Committed, Write};
use authz::{Action, AdminClaims};
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{delete, get, post, put};

/// A documented route: the router and the OpenAPI document are both made from this table.
pub struct RouteDoc {
    /// HTTP method.
    pub method: &'static str,
    /// Path with `{params}`.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// The authorization matrix row it is checked against (`None`: authorized by other means).
    pub action: Option<Action>,
}

/// Every admin route.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "put",
        path: "/v1/orgs/{org_id}",
        summary: "Register or rename an organisation",
        action: Some(Action::UpsertOrg),
    },
    RouteDoc {
        method: "put",
        path: "/v1/orgs/{org_id}/clinics/{clinic_id}",
        summary: "Register or rename a clinic",
        action: Some(Action::UpsertClinic),
    },
    RouteDoc {
        method: "get",
        path: "/v1/orgs/{org_id}/clinics",
        summary: "List an organisation's clinics (paginated)",
        action: Some(Action::ListClinics),
    },
    RouteDoc {
        method: "post",
        path: "/v1/orgs/{org_id}/enablement-requests",
        summary: "Ask for the payment app on clinics",
        action: Some(Action::RequestEnablement),
    },
    RouteDoc {
        method: "get",
        path: "/v1/enablement-requests",
        summary: "List enablement requests (paginated)",
        action: Some(Action::ListEnablements),
    },
    RouteDoc {
        method: "post",
        path: "/v1/enablement-requests/{request_id}/approve",
        summary: "Approve an enablement request",
        action: Some(Action::DecideEnablement),
    },
    RouteDoc {
        method: "post",
        path: "/v1/enablement-requests/{request_id}/reject",
        summary: "Reject an enablement request with a reason",
        action: Some(Action::DecideEnablement),
    },
    RouteDoc {
        method: "get",
        path: "/v1/clinics/{clinic_id}",
        summary: "A clinic's app and Stripe status",
        action: Some(Action::ViewClinic),
    },
    RouteDoc {
        method: "post",
        path: "/v1/clinics/{clinic_id}/disable",
        summary: "Disable the payment app for a clinic",
        action: Some(Action::DisableApp),
    },
    RouteDoc {
        method: "post",
        path: "/v1/clinics/{clinic_id}/stripe/connect",
        summary: "Start linking (or re-linking) the clinic's Stripe account",
        action: Some(Action::ManageStripe),
    },
    RouteDoc {
        method: "delete",
        path: "/v1/clinics/{clinic_id}/stripe",
        summary: "Remove the clinic's Stripe account",
        action: Some(Action::ManageStripe),
    },
    RouteDoc {
        method: "get",
        path: "/v1/clinics/{clinic_id}/stripe/account",
        summary: "The linked Stripe account's details, read from Stripe, and its dashboard",
        action: Some(Action::ManageStripe),
    },
    RouteDoc {
        method: "put",
        path: "/v1/clinics/{clinic_id}/receipts",
        summary: "Turn callpay's own receipt e-mail on or off for the clinic (body: enabled, true or false); 409 receipts_unavailable when this hub has no mail server",
        action: Some(Action::ManageReceipts),
    },
    RouteDoc {
        method: "get",
        path: "/v1/clinics/{clinic_id}/audit",
        summary: "The clinic's audit log (paginated)",
        action: Some(Action::ViewAudit),
    },
    RouteDoc {
        method: "get",
        path: "/v1/clinics/{clinic_id}/payments",
        summary: "The clinic's payment records, newest first (paginated); filters: from, to (Unix ms), status, clinician, call_id",
        action: Some(Action::ViewPayments),
    },
    RouteDoc {
        method: "get",
        path: "/v1/orgs/{org_id}/payments",
        summary: "Every clinic's payment records in the organisation, newest first (paginated); filters as for a clinic's, and clinic",
        action: Some(Action::ViewOrgPayments),
    },
    RouteDoc {
        method: "get",
        path: "/v1/payments/{payment_id}",
        summary: "A payment record with its whole history (every change, when and from where)",
        action: Some(Action::ViewPayments),
    },
    RouteDoc {
        method: "post",
        path: "/v1/payments/{payment_id}/refunds",
        summary: "Refund a paid payment in full or in part (body: amount in minor units, or none for all that remains; reason: requested_by_customer, duplicate or fraudulent; note; request_key: the same key answers with the same refund)",
        action: Some(Action::Refund),
    },
    RouteDoc {
        method: "post",
        path: "/v1/calls/{call_id}/payments/{payment_id}/refunds",
        summary: "The clinician's refund from the call (Bearer: their join token for the call; only what they requested, within payments.clinician_refund_window_hours; body as for an admin's refund)",
        action: None,
    },
    RouteDoc {
        method: "get",
        path: "/v1/clinics/{clinic_id}/report",
        summary: "The clinic's report: totals and counts by status, refunds, net, average; by day and by clinician; query: from, to (YYYY-MM-DD, inclusive), tz (IANA name), format=csv for the export",
        action: Some(Action::ViewReports),
    },
    RouteDoc {
        method: "get",
        path: "/v1/orgs/{org_id}/report",
        summary: "The organisation's report over all its clinics (also by clinic); query as for a clinic's",
        action: Some(Action::ViewOrgReports),
    },
    RouteDoc {
        method: "post",
        path: "/v1/calls/{call_id}/payments/{payment_id}/link",
        summary: "Pay by link: a signed link to an unpaid request of the call, valid for links.ttl_hours (Bearer: the clinician's join token for the call); answers 201 {url, expires_at}; 409 not_payable or clinic_unavailable",
        action: None,
    },
    RouteDoc {
        method: "get",
        path: "/v1/pay-link",
        summary: "The payment a pay link leads to (Bearer: the link token): state payable, confirming or paid, clinic_name, expires_at, payment; 400 link_invalid, 410 link_expired or link_canceled, 409 clinic_unavailable",
        action: None,
    },
    RouteDoc {
        method: "post",
        path: "/v1/pay-link/submitted",
        summary: "The link page's Stripe.js finished (Bearer: the link token): the hub reads the PaymentIntent now; answers as GET /v1/pay-link",
        action: None,
    },
    RouteDoc {
        method: "put",
        path: "/v1/pay-link/language",
        summary: "The language the patient pays in, for callpay's receipt (Bearer: the link token; body lang: en or bn); 204",
        action: None,
    },
    RouteDoc {
        method: "put",
        path: "/v1/calls/{call_id}/payments/{payment_id}/language",
        summary: "The same from the patient's page in the call (Bearer: the patient's join token); 204",
        action: None,
    },
    RouteDoc {
        method: "get",
        path: "/v1/stripe/oauth/callback",
        summary: "Stripe's OAuth redirect (authorized by the single-use state)",
        action: None,
    },
    RouteDoc {
        method: "post",
        path: "/v1/event-endpoints",
        summary: "Register an endpoint for the platform's signed events (body: url, events: types or none for all, description, enabled, secret: or none to have one generated); the answer carries the secret, shown this once",
        action: Some(Action::ManageEvents),
    },
    RouteDoc {
        method: "get",
        path: "/v1/event-endpoints",
        summary: "The event endpoints (paginated; never their secrets)",
        action: Some(Action::ManageEvents),
    },
    RouteDoc {
        method: "get",
        path: "/v1/event-endpoints/{endpoint_id}",
        summary: "An event endpoint",
        action: Some(Action::ManageEvents),
    },
    RouteDoc {
        method: "patch",
        path: "/v1/event-endpoints/{endpoint_id}",
        summary: "Change an event endpoint's url, events, description or enabled (only the fields given)",
        action: Some(Action::ManageEvents),
    },
    RouteDoc {
        method: "delete",
        path: "/v1/event-endpoints/{endpoint_id}",
        summary: "Delete an event endpoint; its pending deliveries are canceled",
        action: Some(Action::ManageEvents),
    },
    RouteDoc {
        method: "get",
        path: "/v1/event-endpoints/{endpoint_id}/deliveries",
        summary: "An endpoint's deliveries, newest first (paginated); filter: status (pending, delivered, failed, canceled)",
        action: Some(Action::ManageEvents),
    },
    RouteDoc {
        method: "get",
        path: "/v1/event-endpoints/{endpoint_id}/deliveries/{delivery_id}",
        summary: "A delivery with the event it sends and every attempt (time, HTTP status or error, the answer's start, duration)",
        action: Some(Action::ManageEvents),
    },
    RouteDoc {
        method: "post",
        path: "/v1/event-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay",
        summary: "Send a delivery's event again (same event id) as a new delivery, at once and outside the event's order",
        action: Some(Action::ManageEvents),
    },
    RouteDoc { method: "get", path: "/v1/openapi.json", summary: "This document", action: None },
];

/// The admin routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orgs/{org_id}", put(handlers::orgs::upsert_org))
        .route("/v1/orgs/{org_id}/clinics/{clinic_id}", put(handlers::orgs::upsert_clinic))
        .route("/v1/orgs/{org_id}/clinics", get(handlers::orgs::list_clinics))
        .route("/v1/orgs/{org_id}/enablement-requests", post(handlers::enablement::request_enablement))
        .route("/v1/enablement-requests", get(handlers::enablement::list_enablements))
        .route("/v1/enablement-requests/{request_id}/approve", post(handlers::enablement::approve))
        .route("/v1/enablement-requests/{request_id}/reject", post(handlers::enablement::reject))
        .route("/v1/clinics/{clinic_id}", get(handlers::orgs::view_clinic))
        .route("/v1/clinics/{clinic_id}/disable", post(handlers::orgs::disable))
        .route("/v1/clinics/{clinic_id}/stripe/connect", post(handlers::stripe::start_connect))
        .route("/v1/clinics/{clinic_id}/stripe", delete(handlers::stripe::remove_stripe))
        .route("/v1/clinics/{clinic_id}/stripe/account", get(handlers::stripe::stripe_account))
        .route("/v1/clinics/{clinic_id}/receipts", put(handlers::orgs::set_receipts))
        .route("/v1/clinics/{clinic_id}/audit", get(handlers::audit::audit_log))
        .route("/v1/clinics/{clinic_id}/payments", get(handlers::payments::list))
        .route("/v1/orgs/{org_id}/payments", get(handlers::payments::org_list))
        .route("/v1/payments/{payment_id}", get(handlers::payments::show))
        .route("/v1/payments/{payment_id}/refunds", post(handlers::refunds::create))
        .route("/v1/clinics/{clinic_id}/report", get(handlers::reports::clinic))
        .route("/v1/orgs/{org_id}/report", get(handlers::reports::org))
        .route("/v1/calls/{call_id}/payments/{payment_id}/refunds", post(handlers::refunds::create_in_call))
        .route("/v1/stripe/oauth/callback", get(handlers::stripe::oauth_callback))
        .route("/v1/event-endpoints", post(handlers::events::create).get(handlers::events::list))
        .route(
            "/v1/event-endpoints/{endpoint_id}",
            get(handlers::events::show).patch(handlers::events::change).delete(handlers::events::delete),
        )
        .route("/v1/event-endpoints/{endpoint_id}/deliveries", get(handlers::events::deliveries))
        .route("/v1/event-endpoints/{endpoint_id}/deliveries/{delivery_id}", get(handlers::events::delivery))
        .route("/v1/event-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay", post(handlers::events::replay))
        .route("/v1/openapi.json", get(openapi::serve))
}

/// An authenticated admin (from `Authorization: Bearer <platform admin token>`).
pub struct Admin(pub AdminClaims);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let Bearer(token) = Bearer::from_request_parts(parts, app).await?;
        app.verifier.admin(&token).map(Admin).map_err(|_| ApiError::unauthorized("The admin token is not valid."))
    }
}

pub use crate::store::{Actor, STRIPE};

impl<'a> From<&'a AdminClaims> for Actor<'a> {
    fn from(c: &'a AdminClaims) -> Self {
        Actor { id: &c.sub, name: &c.name, role: c.role.as_str() }
    }
}

/// An audit record of `actor` doing `action` on `clinic`.
pub fn clinic_audit(
    actor: Actor<'_>,
    clinic: &Clinic,
    action: &str,
    target: Option<&str>,
    outcome: &str,
) -> AuditEntry {
    AuditEntry {
        org_id: Some(clinic.org_id.clone()),
        clinic_id: Some(clinic.id.clone()),
        target: target.map(str::to_owned),
        ..AuditEntry::new(actor, action, outcome)
    }
}

/// Appends an audit record of something that changed nothing (a refusal, a failure, a link
/// started). A change is audited in the same transaction as the change itself, through
/// [`crate::store::Store::commit`]; this is only for records that stand alone, and a failure
/// to write one is logged.
pub async fn audit_only(app: &AppState, entry: AuditEntry) {
    if let Err(e) = app.store.commit(&[Write::Audit(entry.clone())]).await {
        tracing::error!(error = %e, action = entry.action, "AUDIT RECORD LOST: store unavailable");
    }
}

/// Tells every live call of the clinic whether it can take new payments now, and if not why
/// (as a code: the pages say it in their own language).
pub async fn announce_clinic(app: &AppState, clinic: &Clinic) {
    let ready = clinic.payment_readiness();
    let event = RoomEvent::ClinicUpdated { payments_available: ready.is_ok(), reason: ready.err() };
    app.hub.publish_clinic(&clinic.id, event);
}

/// Unlinks every clinic linked to `account` after Stripe told us access was revoked. The event
/// id, every unlink and their audit records are one transaction: a store failure leaves nothing
/// recorded, so Stripe's retry applies it in full.
pub async fn on_deauthorized(app: &AppState, event_id: &str, account: &str) -> Result<usize, crate::store::StoreError> {
    let record = crate::store::WebhookRecord {
        event_id: event_id.to_owned(),
        event_type: "account.application.deauthorized".into(),
        account: Some(account.to_owned()),
        payment_id: None,
        outcome: "deauthorized".into(),
    };
    let clinics = app.store.clinics_by_account(account).await?;
    let mut writes = vec![Write::Webhook(record)];
    for clinic in &clinics {
        writes.push(Write::Clinic {
            id: clinic.id.clone(),
            change: ClinicChange::Unlink { account: account.to_owned() },
        });
        let mut unlinked = clinic.clone();
        unlink(&mut unlinked);
        writes.push(crate::events::catalogue::clinic_write(
            crate::events::catalogue::EventType::ClinicStripeUnlinked,
            &unlinked,
        ));
        writes.push(Write::Audit(clinic_audit(STRIPE, clinic, "stripe.deauthorized", Some(account), "ok")));
    }
    if app.store.commit(&writes).await? == Committed::Duplicate {
        return Ok(0);
    }
    for mut clinic in clinics.iter().cloned() {
        unlink(&mut clinic);
        announce_clinic(app, &clinic).await;
    }
    Ok(clinics.len())
}

/// Clears a clinic's Stripe link.
pub fn unlink(clinic: &mut Clinic) {
    clinic.stripe_account = None;
    clinic.stripe_publishable_key = None;
    clinic.stripe_display_name = None;
    clinic.stripe_livemode = false;
    clinic.linked_by = None;
    clinic.linked_at = None;
}

//! The administrative half: the authorization matrix walked for every role and endpoint, the
//! Connect OAuth flow against stripe-sim (every bad-state case, denial, re-link, remove, and
//! the deauthorization webhook), and the audit log's record of it all.

use crate::helpers::*;
use callpay::admin::authz::AdminRole;
use callpay::auth::{now_secs, sign_hs256};
use callpay::demo::{DEMO_CLINIC, DEMO_ORG, admin_token};
use callpay::store::{OAuthState, now_ms};
use serde_json::{Value, json};

const OTHER_ORG: &str = "org_other";
const OTHER_CLINIC: &str = "clinic_other";

impl TestHub {
    async fn api(&self, token: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let (status, json, _) = self
            .http
            .send(
                method,
                &format!("{}{path}", self.info.hub_url),
                &headers,
                body.map(|b| b.to_string()).unwrap_or_default(),
            )
            .await;
        (status, json)
    }

    fn admin(&self, role: AdminRole, org: Option<&str>, clinics: &[&str]) -> String {
        admin_token(
            &self.info.platform_secret,
            &format!("u-{}", role.as_str()),
            &format!("{} user", role.as_str()),
            role,
            org,
            clinics,
        )
    }

    async fn seed_other_org(&self) {
        let op = self.info.operator_token.clone();
        assert_eq!(
            self.api(Some(&op), "PUT", &format!("/v1/orgs/{OTHER_ORG}"), Some(json!({"name": "Other Health"}))).await.0,
            200
        );
        let (s, c) = self
            .api(
                Some(&op),
                "PUT",
                &format!("/v1/orgs/{OTHER_ORG}/clinics/{OTHER_CLINIC}"),
                Some(json!({"name": "Other Clinic"})),
            )
            .await;
        assert_eq!(s, 200, "{c}");
    }

    /// Puts the demo clinic back to enabled + linked to a connected simulator account.
    async fn relink_demo(&self) {
        let account = self.sim.sim.with_world(|w| w.create_account(None, Some("Harbour Clinic"), "AU", "aud", true));
        set_clinic(self, DEMO_CLINIC, true, Some(&account)).await;
    }
}

/// Stores a payment of `clinic` requested by `clinician`, as the hub would have; returns its id.
async fn seed_payment(hub: &TestHub, clinic: &str, clinician: &str) -> String {
    let id = format!("pay_seed_{}", callpay::ids::random_id());
    let p = callpay::store::Payment {
        id: id.clone(),
        call_id: format!("call_{clinic}"),
        clinic_id: clinic.into(),
        client_ref: id.clone(),
        requested_by_id: clinician.into(),
        requested_by_name: clinician.into(),
        amount: 5000,
        currency: "aud".into(),
        description: "Consult".into(),
        stripe_account: "acct_seed".into(),
        payment_intent_id: Some(format!("pi_{id}")),
        client_secret: Some("pi_seed_secret_x".into()),
        status: callpay_protocol::PaymentStatus::Requested,
        created_at: now_ms(),
        updated_at: now_ms(),
        ..Default::default()
    };
    hub.state.store.insert_payment(&p).await.unwrap();
    id
}

#[derive(Clone, Copy, Debug)]
enum Who {
    OrgAdmin,
    TeamAdmin,
    TeamMember,
    Operator,
    NoToken,
    Expired,
    Forged,
}

/// Expected status for (endpoint, who, own resource?). The spec, written out independently
/// of the code's matrix. On a clinic's own endpoints a role that may act on some clinics but
/// not this one gets 404, exactly as for a clinic that does not exist (no existence oracle); a
/// role that may never do it gets 403.
fn expected(endpoint: &str, who: Who, own: bool) -> u16 {
    use Who::*;
    let ok = |yes: bool, code: u16| if yes { code } else { 403 };
    let per_clinic = |may_ever: bool, code: u16| match (may_ever, own || matches!(who, Operator)) {
        (false, _) => 403,
        (true, true) => code,
        (true, false) => 404,
    };
    match who {
        NoToken | Expired | Forged => 401,
        _ => match endpoint {
            "upsert_org" | "upsert_clinic" | "approve" | "reject" => ok(matches!(who, Operator), 200),
            "list_clinics" => ok(matches!(who, Operator) || (matches!(who, OrgAdmin) && own), 200),
            "view_clinic" => per_clinic(true, 200),
            "request_enablement" => match who {
                OrgAdmin => ok(own, 201),
                // A team admin asks for their own clinics; another clinic answers like a missing one.
                TeamAdmin => per_clinic(true, 201),
                _ => 403,
            },
            "list_enablements" => ok(matches!(who, Operator | OrgAdmin), 200),
            "disable" => per_clinic(matches!(who, Operator | OrgAdmin), 200),
            // callpay's own receipts: the clinic's admins and the organisation's.
            "receipts" => match who {
                OrgAdmin | TeamAdmin => per_clinic(true, 200),
                _ => 403,
            },
            "connect" | "remove" => match who {
                OrgAdmin | TeamAdmin => per_clinic(true, 200),
                _ => 403,
            },
            "audit" => per_clinic(matches!(who, Operator | OrgAdmin | TeamAdmin), 200),
            // Payments are the clinic's business: never the service desk's. A team member's own
            // clinic payment here is one they requested.
            "list_payments" | "show_payment" => per_clinic(!matches!(who, Operator), 200),
            // Refunds: the clinic's admins and the clinician who requested it. The seeded
            // payment is unpaid, so a caller who may refund it hears 409 not_refundable.
            "refund" => per_clinic(matches!(who, TeamAdmin | TeamMember), 409),
            // Reports are the clinic's admins' and the organisation's.
            "clinic_report" => per_clinic(matches!(who, OrgAdmin | TeamAdmin), 200),
            "org_report" | "org_payments" => ok(matches!(who, OrgAdmin) && own, 200),
            // A colleague's payment in a clinic of theirs: a team member neither sees nor
            // refunds it (404, as for a missing one); the clinic's admins do.
            "show_colleague" => match who {
                TeamMember => 404,
                _ => per_clinic(!matches!(who, Operator), 200),
            },
            "refund_colleague" => match who {
                TeamMember => 404,
                _ => per_clinic(matches!(who, TeamAdmin), 409),
            },
            // The platform's event endpoints: its operator's alone. A missing delivery or
            // endpoint is 404 to the operator, 403 to every other role (told nothing).
            "create_endpoint" => ok(matches!(who, Operator), 201),
            "list_endpoints" | "show_endpoint" | "change_endpoint" | "endpoint_deliveries" => {
                ok(matches!(who, Operator), 200)
            }
            "replay_delivery" | "delete_endpoint" => ok(matches!(who, Operator), 404),
            other => panic!("no expectation for {other}"),
        },
    }
}

#[tokio::test]
async fn every_role_against_every_endpoint() {
    let hub = TestHub::start().await;
    hub.seed_other_org().await;
    let token = |who: Who| -> Option<String> {
        match who {
            Who::OrgAdmin => Some(hub.admin(AdminRole::OrgAdmin, Some(DEMO_ORG), &[])),
            Who::TeamAdmin => Some(hub.admin(AdminRole::TeamAdmin, None, &[DEMO_CLINIC])),
            Who::TeamMember => Some(hub.admin(AdminRole::TeamMember, None, &[DEMO_CLINIC])),
            Who::Operator => Some(hub.admin(AdminRole::PlatformOperator, None, &[])),
            Who::NoToken => None,
            Who::Expired => Some(sign_hs256(
                &hub.info.platform_secret,
                &json!({"sub": "x", "name": "x", "role": "platform_operator", "exp": now_secs() - 3600}),
            )),
            Who::Forged => Some(sign_hs256(
                "forged-forged-forged-forged-forged-forged",
                &json!({"sub": "x", "name": "x", "role": "platform_operator", "exp": now_secs() + 600}),
            )),
        }
    };
    let everyone =
        [Who::OrgAdmin, Who::TeamAdmin, Who::TeamMember, Who::Operator, Who::NoToken, Who::Expired, Who::Forged];
    // A payment in each clinic; the demo clinic's was requested by the team member the matrix
    // signs in as (`u-team_member`).
    let own_payment = seed_payment(&hub, DEMO_CLINIC, "u-team_member").await;
    let other_payment = seed_payment(&hub, OTHER_CLINIC, "u-team_member").await;
    let colleague_payment = seed_payment(&hub, DEMO_CLINIC, "u-colleague").await;
    let colleague_elsewhere = seed_payment(&hub, OTHER_CLINIC, "u-colleague").await;
    // An event endpoint of the platform's (disabled: nobody listens at it).
    let (s, made) = hub
        .api(
            Some(&hub.info.operator_token),
            "POST",
            "/v1/event-endpoints",
            Some(json!({"url": "https://billing.example.com/events", "enabled": false})),
        )
        .await;
    assert_eq!(s, 201, "{made}");
    let endpoint = made["id"].as_str().unwrap().to_owned();
    let mut checked = 0;
    for who in everyone {
        for own in [true, false] {
            let (org, clinic) = if own { (DEMO_ORG, DEMO_CLINIC) } else { (OTHER_ORG, OTHER_CLINIC) };
            let t = token(who);
            let t = t.as_deref();
            // A pending request to decide, made by the owning org's admin.
            let requester = hub.admin(AdminRole::OrgAdmin, Some(org), &[]);
            let (s, made) = hub
                .api(
                    Some(&requester),
                    "POST",
                    &format!("/v1/orgs/{org}/enablement-requests"),
                    Some(json!({"clinic_ids": [clinic], "ticket_ref": "SD-1"})),
                )
                .await;
            assert_eq!(s, 201, "{made}");
            let pending = made["data"][0]["id"].as_str().unwrap().to_owned();
            let pending2 = {
                let (_, m) = hub
                    .api(
                        Some(&requester),
                        "POST",
                        &format!("/v1/orgs/{org}/enablement-requests"),
                        Some(json!({"clinic_ids": [clinic], "ticket_ref": "SD-2"})),
                    )
                    .await;
                m["data"][0]["id"].as_str().unwrap().to_owned()
            };
            let cases: Vec<(&str, &str, String, Option<Value>)> = vec![
                ("upsert_org", "PUT", format!("/v1/orgs/{org}"), Some(json!({"name": "Renamed"}))),
                (
                    "upsert_clinic",
                    "PUT",
                    format!("/v1/orgs/{org}/clinics/{clinic}"),
                    Some(json!({"name": "Renamed clinic"})),
                ),
                ("list_clinics", "GET", format!("/v1/orgs/{org}/clinics"), None),
                ("view_clinic", "GET", format!("/v1/clinics/{clinic}"), None),
                (
                    "request_enablement",
                    "POST",
                    format!("/v1/orgs/{org}/enablement-requests"),
                    Some(json!({"clinic_ids": [clinic], "ticket_ref": "SD-9"})),
                ),
                ("list_enablements", "GET", "/v1/enablement-requests".into(), None),
                ("approve", "POST", format!("/v1/enablement-requests/{pending}/approve"), None),
                (
                    "reject",
                    "POST",
                    format!("/v1/enablement-requests/{pending2}/reject"),
                    Some(json!({"reason": "no ticket"})),
                ),
                ("audit", "GET", format!("/v1/clinics/{clinic}/audit"), None),
                ("connect", "POST", format!("/v1/clinics/{clinic}/stripe/connect"), None),
                ("remove", "DELETE", format!("/v1/clinics/{clinic}/stripe"), None),
                ("list_payments", "GET", format!("/v1/clinics/{clinic}/payments"), None),
                ("org_payments", "GET", format!("/v1/orgs/{org}/payments"), None),
                (
                    "show_payment",
                    "GET",
                    format!("/v1/payments/{}", if own { &own_payment } else { &other_payment }),
                    None,
                ),
                (
                    "refund",
                    "POST",
                    format!("/v1/payments/{}/refunds", if own { &own_payment } else { &other_payment }),
                    Some(json!({"amount": 100, "reason": "duplicate"})),
                ),
                (
                    "show_colleague",
                    "GET",
                    format!("/v1/payments/{}", if own { &colleague_payment } else { &colleague_elsewhere }),
                    None,
                ),
                (
                    "refund_colleague",
                    "POST",
                    format!("/v1/payments/{}/refunds", if own { &colleague_payment } else { &colleague_elsewhere }),
                    Some(json!({"amount": 100, "reason": "duplicate"})),
                ),
                (
                    "clinic_report",
                    "GET",
                    format!("/v1/clinics/{clinic}/report?from=2026-12-01&to=2026-12-31&tz=UTC"),
                    None,
                ),
                ("org_report", "GET", format!("/v1/orgs/{org}/report?from=2026-12-01&to=2026-12-31&tz=UTC"), None),
                ("receipts", "PUT", format!("/v1/clinics/{clinic}/receipts"), Some(json!({"enabled": true}))),
                ("disable", "POST", format!("/v1/clinics/{clinic}/disable"), None),
                (
                    "create_endpoint",
                    "POST",
                    "/v1/event-endpoints".into(),
                    Some(json!({"url": "https://billing.example.com/more", "enabled": false})),
                ),
                ("list_endpoints", "GET", "/v1/event-endpoints".into(), None),
                ("show_endpoint", "GET", format!("/v1/event-endpoints/{endpoint}"), None),
                (
                    "change_endpoint",
                    "PATCH",
                    format!("/v1/event-endpoints/{endpoint}"),
                    Some(json!({"description": "billing"})),
                ),
                ("endpoint_deliveries", "GET", format!("/v1/event-endpoints/{endpoint}/deliveries"), None),
                (
                    "replay_delivery",
                    "POST",
                    format!("/v1/event-endpoints/{endpoint}/deliveries/dlv_missing/replay"),
                    None,
                ),
                ("delete_endpoint", "DELETE", "/v1/event-endpoints/we_missing".into(), None),
            ];
            for (name, method, path, body) in cases {
                if own {
                    hub.relink_demo().await;
                } else {
                    set_clinic(&hub, OTHER_CLINIC, true, Some("acct_other")).await;
                }
                let (status, body) = hub.api(t, method, &path, body).await;
                let want = expected(name, who, own);
                assert_eq!(
                    status,
                    want,
                    "{who:?} {} {name} {method} {path}: {body}",
                    if own { "own" } else { "other" }
                );
                if status >= 400 {
                    assert!(body["code"].is_string(), "errors carry a code: {body}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * 2 * 28);
    // Org admins only ever see their own organisation's requests.
    let org_admin = hub.admin(AdminRole::OrgAdmin, Some(DEMO_ORG), &[]);
    let (_, list) =
        hub.api(Some(&org_admin), "GET", &format!("/v1/enablement-requests?org_id={OTHER_ORG}&limit=500"), None).await;
    assert!(list["data"].as_array().unwrap().iter().all(|e| e["org_id"] == DEMO_ORG));
}

#[tokio::test]
async fn another_scopes_clinic_answers_exactly_like_a_missing_one() {
    let hub = TestHub::start().await;
    hub.seed_other_org().await;
    let callers =
        [hub.admin(AdminRole::OrgAdmin, Some(DEMO_ORG), &[]), hub.admin(AdminRole::TeamAdmin, None, &[DEMO_CLINIC])];
    for token in &callers {
        for (method, suffix) in [("GET", ""), ("GET", "/audit"), ("POST", "/stripe/connect"), ("DELETE", "/stripe")] {
            let theirs = hub.api(Some(token), method, &format!("/v1/clinics/{OTHER_CLINIC}{suffix}"), None).await;
            let missing = hub.api(Some(token), method, &format!("/v1/clinics/clinic_nowhere{suffix}"), None).await;
            assert_eq!(theirs, missing, "{method} {suffix}: an existing clinic must not be told apart");
            assert_eq!(theirs.0, 404, "{method} {suffix}");
        }
    }
    // Naming another organisation's clinic in an enablement request is the same as a missing one.
    let org_admin = &callers[0];
    let path = format!("/v1/orgs/{DEMO_ORG}/enablement-requests");
    let ask = |c: &str| json!({"clinic_ids": [c], "ticket_ref": "SD-9"});
    let theirs = hub.api(Some(org_admin), "POST", &path, Some(ask(OTHER_CLINIC))).await;
    let missing = hub.api(Some(org_admin), "POST", &path, Some(ask("clinic_nowhere"))).await;
    assert_eq!((theirs.0, &theirs.1), (404, &missing.1));
}

#[tokio::test]
async fn edit_shows_the_linked_account_as_stripe_has_it() {
    let hub = TestHub::start().await;
    let path = format!("/v1/clinics/{DEMO_CLINIC}/stripe/account");
    let admin = hub.admin(AdminRole::TeamAdmin, None, &[DEMO_CLINIC]);
    let (status, body) = hub.api(Some(&admin), "GET", &path, None).await;
    assert_eq!(status, 200, "{body}");
    let account = &body["account"];
    assert!(account["id"].as_str().unwrap().starts_with("acct_"));
    assert_eq!((account["name"].as_str(), account["country"].as_str()), (Some("Harbour Clinic"), Some("AU")));
    assert_eq!((account["charges_enabled"].as_bool(), account["payouts_enabled"].as_bool()), (Some(true), Some(true)));
    assert!(body["dashboard_url"].as_str().unwrap().ends_with("/dashboard"));
    let member = hub.admin(AdminRole::TeamMember, None, &[DEMO_CLINIC]);
    assert_eq!(hub.api(Some(&member), "GET", &path, None).await.0, 403);
    set_clinic(&hub, DEMO_CLINIC, true, None).await;
    let (status, body) = hub.api(Some(&admin), "GET", &path, None).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("not_linked")));
}

#[tokio::test]
async fn the_oauth_callback_page_speaks_the_browsers_language() {
    let hub = TestHub::start().await;
    let url = format!("{}/v1/stripe/oauth/callback", hub.info.hub_url);
    let (status, _, page) =
        hub.http.send("GET", &url, &[("accept-language", "bn-BD,bn;q=0.9,en;q=0.5")], String::new()).await;
    assert_eq!(status, 400);
    assert!(page.contains("<html lang=bn>") && page.contains("Stripe যুক্ত করা যায়নি"), "{page}");
    let visible = page.split("<main").nth(1).unwrap_or_default();
    let text: String = visible.split('<').map(|part| part.split_once('>').map_or("", |(_, t)| t)).collect();
    let latin: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| w.len() > 1 && !["Stripe", "callpay"].contains(w))
        .collect();
    assert!(latin.is_empty(), "stray English {latin:?} in {text}");
    let (_, _, english) = hub.http.send("GET", &url, &[("accept-language", "en-AU")], String::new()).await;
    assert!(english.contains("<html lang=en>") && english.contains("Stripe link failed"));
}

#[tokio::test]
async fn lists_paginate_and_openapi_matches_the_routes() {
    let hub = TestHub::start().await;
    let op = hub.info.operator_token.clone();
    for i in 0..5 {
        hub.api(
            Some(&op),
            "PUT",
            &format!("/v1/orgs/{DEMO_ORG}/clinics/clinic_{i}"),
            Some(json!({"name": format!("Clinic {i}")})),
        )
        .await;
    }
    let (_, first) = hub.api(Some(&op), "GET", &format!("/v1/orgs/{DEMO_ORG}/clinics?limit=4"), None).await;
    assert_eq!(first["data"].as_array().unwrap().len(), 4);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, second) =
        hub.api(Some(&op), "GET", &format!("/v1/orgs/{DEMO_ORG}/clinics?limit=4&cursor={cursor}"), None).await;
    assert_eq!(second["data"].as_array().unwrap().len(), 2, "6 clinics in all");
    assert!(second["next_cursor"].is_null());

    let (status, doc) = hub.api(None, "GET", "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>(), callpay::admin::ROUTES.len());
    assert_eq!(
        doc["paths"]["/v1/clinics/{clinic_id}/stripe/connect"]["post"]["x-callpay-roles"],
        json!(["org_admin (own organisation)", "team_admin (own clinics)"])
    );
    for path in ["/v1/clinics/{clinic_id}/payments", "/v1/payments/{payment_id}"] {
        assert_eq!(
            doc["paths"][path]["get"]["x-callpay-roles"],
            json!([
                "org_admin (own organisation)",
                "team_admin (own clinics)",
                "team_member (own clinics, what they requested)"
            ]),
            "{path}"
        );
    }
    assert_eq!(
        doc["paths"]["/v1/clinics/{clinic_id}/receipts"]["put"]["x-callpay-roles"],
        json!(["org_admin (own organisation)", "team_admin (own clinics)"])
    );
    assert!(doc["paths"]["/v1/pay-link"]["get"]["summary"].as_str().unwrap().contains("link token"));
    assert_eq!(
        doc["paths"]["/v1/clinics/{clinic_id}/report"]["get"]["x-callpay-roles"],
        json!(["org_admin (own organisation)", "team_admin (own clinics)"])
    );
    for path in ["/v1/orgs/{org_id}/report", "/v1/orgs/{org_id}/payments"] {
        assert_eq!(doc["paths"][path]["get"]["x-callpay-roles"], json!(["org_admin (own organisation)"]), "{path}");
    }
    assert_eq!(
        doc["paths"]["/v1/payments/{payment_id}/refunds"]["post"]["x-callpay-roles"],
        json!(["team_admin (own clinics)", "team_member (own clinics, what they requested)"])
    );
    // Every documented route exists: without a token it is 401 (or its own answer), never the 404 fallback.
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{org_id}", DEMO_ORG)
                .replace("{clinic_id}", DEMO_CLINIC)
                .replace("{request_id}", "enr_x")
                .replace("{payment_id}", "pay_x")
                .replace("{call_id}", "call_x");
            let (status, body) = hub.api(None, &method.to_uppercase(), &concrete, Some(json!({}))).await;
            assert_ne!(body["code"], "not_found", "{method} {path} is documented but not routed ({status})");
        }
    }
    // Bad input is a clear 4xx.
    let (s, b) = hub.api(Some(&op), "PUT", "/v1/orgs/bad%20id!", Some(json!({"name": "x"}))).await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_id")));
    let oa = hub.info.org_admin_token.clone();
    let (s, b) = hub
        .api(
            Some(&oa),
            "POST",
            &format!("/v1/orgs/{DEMO_ORG}/enablement-requests"),
            Some(json!({"clinic_ids": [DEMO_CLINIC], "ticket_ref": " "})),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_ticket_ref")));
}

/// Follows the simulator's consent page: posts the decision, returns the callback URL.
async fn consent(hub: &TestHub, authorize_url: &str, decision: &str, account: &str, name: &str) -> String {
    let (status, _, _, page) = hub.http.send_full("GET", authorize_url, &[], String::new()).await;
    assert_eq!(status, 200);
    assert!(page.contains("Connect my Stripe account"));
    let q: std::collections::HashMap<String, String> =
        form_urlencoded::parse(authorize_url.split_once('?').unwrap().1.as_bytes()).into_owned().collect();
    assert_eq!(q["scope"], "read_write");
    assert_eq!(q["client_id"], hub.sim.client_id());
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("decision", decision)
        .append_pair("account", account)
        .append_pair("business_name", name)
        .append_pair("email", "owner@clinic.example")
        .append_pair("client_id", &q["client_id"])
        .append_pair("redirect_uri", &q["redirect_uri"])
        .append_pair("state", &q["state"])
        .append_pair("scope", &q["scope"])
        .finish();
    let (status, headers, _, _) = hub
        .http
        .send_full(
            "POST",
            &format!("{}/oauth/authorize", hub.info.stripe_url),
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await;
    assert_eq!(status, 303);
    headers.get("location").unwrap().to_str().unwrap().to_owned()
}

/// Starts linking as `token`; returns (authorize_url, cookie header value).
async fn start_link(hub: &TestHub, token: &str) -> (String, String) {
    let (status, headers, body, _) = hub
        .http
        .send_full(
            "POST",
            &format!("{}/v1/clinics/{DEMO_CLINIC}/stripe/connect", hub.info.hub_url),
            &[("authorization", &format!("Bearer {token}"))],
            String::new(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let cookie = headers.get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_owned();
    (body["authorize_url"].as_str().unwrap().to_owned(), cookie)
}

async fn callback(hub: &TestHub, url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut headers = vec![];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    let (status, _, _, page) = hub.http.send_full("GET", url, &headers, String::new()).await;
    (status, page)
}

#[tokio::test]
async fn connect_oauth_end_to_end_with_every_bad_state() {
    let hub = TestHub::start().await;
    let admin = hub.info.clinic_admin_token.clone();
    // Start unlinked, as a new clinic would be.
    set_clinic(&hub, DEMO_CLINIC, true, None).await;
    let mut doc = hub.clinician().await;
    assert_eq!(doc.welcome["payments_available"], false);

    // Link a new account.
    let (url, cookie) = start_link(&hub, &admin).await;
    let back = consent(&hub, &url, "allow", "new", "Harbour Clinic Pty Ltd").await;
    assert!(back.starts_with(&format!("{}/v1/stripe/oauth/callback?", hub.info.hub_url)));
    let (status, page) = callback(&hub, &back, Some(&cookie)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Stripe account linked") && page.contains("Harbour Clinic Pty Ltd"));
    let (_, view) = hub.api(Some(&admin), "GET", &format!("/v1/clinics/{DEMO_CLINIC}"), None).await;
    let first_account = view["stripe"]["account"].as_str().unwrap().to_owned();
    assert_eq!(view["stripe"]["linked"], true);
    assert_eq!(view["stripe"]["display_name"], "Harbour Clinic Pty Ltd");
    assert_eq!(view["stripe"]["livemode"], false);
    assert_eq!(view["stripe"]["linked_by"], "Cam (clinic admin)");
    assert!(view["stripe"]["linked_at"].as_i64().unwrap() > 0);
    let update = doc.until("clinic.updated").await;
    assert_eq!(update["payments_available"], true);

    // The same callback again: the state is single-use.
    let (status, page) = callback(&hub, &back, Some(&cookie)).await;
    assert_eq!(status, 400);
    assert!(page.contains("already used"));
    // Missing state; a state without this browser's cookie; an unknown state; an expired one.
    assert_eq!(
        callback(&hub, &format!("{}/v1/stripe/oauth/callback?code=ac_x", hub.info.hub_url), Some(&cookie)).await.0,
        400
    );
    let (url2, cookie2) = start_link(&hub, &admin).await;
    let back2 = consent(&hub, &url2, "allow", "new", "Other Co").await;
    let (status, page) = callback(&hub, &back2, None).await;
    assert_eq!(status, 400);
    assert!(page.contains("not started from this browser"));
    let (status, page) = callback(
        &hub,
        &format!("{}/v1/stripe/oauth/callback?code=ac_x&state=forged", hub.info.hub_url),
        Some("callpay_oauth_state=forged"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("not one callpay started"));
    hub.state
        .store
        .insert_oauth_state(
            &OAuthState {
                state: "old-state".into(),
                clinic_id: DEMO_CLINIC.into(),
                admin_id: "admin-cam".into(),
                admin_name: "Cam".into(),
                admin_role: "team_admin".into(),
                expires_at: now_ms() - 1,
            },
            10,
        )
        .await
        .unwrap();
    let (status, page) = callback(
        &hub,
        &format!("{}/v1/stripe/oauth/callback?code=ac_x&state=old-state", hub.info.hub_url),
        Some("callpay_oauth_state=old-state"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("expired"));
    let _ = cookie2;

    // Denied on Stripe's page.
    let (url3, cookie3) = start_link(&hub, &admin).await;
    let back3 = consent(&hub, &url3, "deny", "new", "x").await;
    assert!(back3.contains("error=access_denied"));
    let (status, page) = callback(&hub, &back3, Some(&cookie3)).await;
    assert_eq!(status, 400);
    assert!(page.contains("You cancelled"));
    let (_, view) = hub.api(Some(&admin), "GET", &format!("/v1/clinics/{DEMO_CLINIC}"), None).await;
    assert_eq!(view["stripe"]["account"], first_account.as_str(), "denial changes nothing");

    // A payment on the first account, then re-link (as the org admin) to another account.
    doc.request("before-relink", 5000, "Consult").await;
    let before = doc.until("payment.requested").await["payment"]["payment_id"].as_str().unwrap().to_owned();
    let org_admin = hub.info.org_admin_token.clone();
    let (url4, cookie4) = start_link(&hub, &org_admin).await;
    let back4 = consent(&hub, &url4, "allow", "new", "Harbour Clinic New Entity").await;
    assert_eq!(callback(&hub, &back4, Some(&cookie4)).await.0, 200);
    let (_, view) = hub.api(Some(&admin), "GET", &format!("/v1/clinics/{DEMO_CLINIC}"), None).await;
    let second_account = view["stripe"]["account"].as_str().unwrap().to_owned();
    assert_ne!(second_account, first_account);
    assert_eq!(view["stripe"]["linked_by"], "Olivia (org admin)");
    let kept = hub.state.store.payment(&before).await.unwrap().unwrap();
    assert_eq!(kept.stripe_account, first_account, "payments already made keep their account");

    // Remove: Stripe access revoked, clinic unlinked, live calls told.
    let (status, view) = hub.api(Some(&admin), "DELETE", &format!("/v1/clinics/{DEMO_CLINIC}/stripe"), None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["stripe"]["linked"], false);
    // The room hears why as a code the page words in its own language.
    let unavailable = doc.until_where("clinic.updated", |f| f["payments_available"] == false).await;
    assert_eq!(unavailable["reason"], "stripe_not_connected");
    assert_eq!(unavailable["payments_available"], false);
    let connected = hub.sim.sim.with_world(|w| w.accounts[&second_account].connected);
    assert!(!connected, "callpay's access was revoked on Stripe");
    doc.request("after-remove", 5000, "Consult").await;
    assert_eq!(doc.error_code().await, "stripe_not_connected");
    let (status, body) = hub.api(Some(&admin), "DELETE", &format!("/v1/clinics/{DEMO_CLINIC}/stripe"), None).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("not_linked")));

    // Link again, then the clinic revokes callpay from Stripe's side: the webhook unlinks it.
    let (url5, cookie5) = start_link(&hub, &admin).await;
    let back5 = consent(&hub, &url5, "allow", &first_account, "").await;
    assert_eq!(callback(&hub, &back5, Some(&cookie5)).await.0, 200);
    doc.until_where("clinic.updated", |f| f["payments_available"] == true).await;
    assert_eq!(deauthorize_on_stripe(&hub, &first_account).await, 200);
    let revoked = doc.until_where("clinic.updated", |f| f["payments_available"] == false).await;
    assert_eq!(revoked["reason"], "stripe_not_connected");
    let (_, view) = hub.api(Some(&admin), "GET", &format!("/v1/clinics/{DEMO_CLINIC}"), None).await;
    assert_eq!(view["stripe"]["linked"], false);

    // The audit log tells the story with the right actors.
    let (status, log) = hub.api(Some(&admin), "GET", &format!("/v1/clinics/{DEMO_CLINIC}/audit?limit=200"), None).await;
    assert_eq!(status, 200);
    let rows = log["data"].as_array().unwrap();
    let has = |action: &str, actor: &str, outcome: &str| {
        rows.iter().any(|r| r["action"] == action && r["actor_name"] == actor && r["outcome"] == outcome)
    };
    assert!(has("stripe.link_started", "Cam (clinic admin)", "ok"));
    assert!(has("stripe.linked", "Cam (clinic admin)", "ok"));
    assert!(has("stripe.link", "Cam (clinic admin)", "refused"), "denial and expiry are recorded");
    assert!(has("stripe.relinked", "Olivia (org admin)", "ok"));
    assert!(has("stripe.removed", "Cam (clinic admin)", "ok"));
    assert!(has("stripe.deauthorized", "Stripe", "ok"));
    assert!(has("payment.requested", "Dr Ada Lee", "ok"));
    assert!(has("payment.requested", "Dr Ada Lee", "refused"));
    let times: Vec<i64> = rows.iter().map(|r| r["at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // Paging through the log visits every row once.
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/clinics/{DEMO_CLINIC}/audit?limit=3&cursor={c}"),
            None => format!("/v1/clinics/{DEMO_CLINIC}/audit?limit=3"),
        };
        let (_, page) = hub.api(Some(&admin), "GET", &path, None).await;
        seen += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, rows.len());
    // Token exchanges, the removal and the payment request all carried our idempotency keys.
    // Three code exchanges, one removal, one PaymentIntent.
    assert_eq!(assert_hub_posts_are_idempotent(&hub).await, 5);
}

#[tokio::test]
async fn enablement_flow_and_disable() {
    let hub = TestHub::start().await;
    let op = hub.info.operator_token.clone();
    let oa = hub.info.org_admin_token.clone();
    hub.api(Some(&op), "PUT", &format!("/v1/orgs/{DEMO_ORG}/clinics/clinic_new"), Some(json!({"name": "New Clinic"})))
        .await;
    let (status, made) = hub
        .api(
            Some(&oa),
            "POST",
            &format!("/v1/orgs/{DEMO_ORG}/enablement-requests"),
            Some(json!({"clinic_ids": ["clinic_new"], "ticket_ref": "SD-42"})),
        )
        .await;
    assert_eq!(status, 201);
    let id = made["data"][0]["id"].as_str().unwrap().to_owned();
    let (_, view) = hub.api(Some(&oa), "GET", "/v1/clinics/clinic_new", None).await;
    assert_eq!(view["app_enabled"], false);
    assert_eq!(view["enablement"]["status"], "pending");
    let (_, pending) = hub.api(Some(&op), "GET", "/v1/enablement-requests?status=pending", None).await;
    assert!(pending["data"].as_array().unwrap().iter().any(|e| e["id"] == id.as_str()));
    let (status, decided) = hub.api(Some(&op), "POST", &format!("/v1/enablement-requests/{id}/approve"), None).await;
    assert_eq!((status, decided["status"].as_str()), (200, Some("approved")));
    let (status, again) =
        hub.api(Some(&op), "POST", &format!("/v1/enablement-requests/{id}/reject"), Some(json!({"reason": "x"}))).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("already_decided")));
    let (_, view) = hub.api(Some(&oa), "GET", "/v1/clinics/clinic_new", None).await;
    assert_eq!(view["app_enabled"], true);
    assert_eq!(view["payments_available"], false, "enabled but not linked yet");
    // A rejection carries its reason; disabling tells live calls.
    let (_, made) = hub
        .api(
            Some(&oa),
            "POST",
            &format!("/v1/orgs/{DEMO_ORG}/enablement-requests"),
            Some(json!({"clinic_ids": [DEMO_CLINIC], "ticket_ref": "SD-43"})),
        )
        .await;
    let rid = made["data"][0]["id"].as_str().unwrap().to_owned();
    let (_, rejected) = hub
        .api(
            Some(&op),
            "POST",
            &format!("/v1/enablement-requests/{rid}/reject"),
            Some(json!({"reason": "Ticket not authorised"})),
        )
        .await;
    assert_eq!(rejected["reason"], "Ticket not authorised");
    let mut doc = hub.clinician().await;
    let (status, _) = hub.api(Some(&oa), "POST", &format!("/v1/clinics/{DEMO_CLINIC}/disable"), None).await;
    assert_eq!(status, 200);
    let f = doc.until("clinic.updated").await;
    assert_eq!(f["payments_available"], false);
    doc.request("x", 5000, "Consult").await;
    assert_eq!(doc.error_code().await, "app_not_enabled");
    let (_, log) = hub.api(Some(&op), "GET", &format!("/v1/clinics/{DEMO_CLINIC}/audit"), None).await;
    assert!(
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "app.disabled" && r["actor_name"] == "Olivia (org admin)")
    );
    assert!(
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "app.enable_rejected" && r["actor_role"] == "platform_operator")
    );
}

#[tokio::test]
async fn disabling_the_app_during_an_oauth_callback_is_not_undone() {
    let hub = TestHub::start().await;
    let admin = hub.info.clinic_admin_token.clone();
    let operator = hub.admin(AdminRole::PlatformOperator, None, &[]);
    let (url, cookie) = start_link(&hub, &admin).await;
    let back = consent(&hub, &url, "allow", "new", "Harbour Clinic Pty Ltd").await;
    // The callback's account lookup at Stripe is held for 1.5 s; the operator disables the app
    // while it waits.
    hub.sim_control("POST", "/_sim/faults", json!({"api_delays": 1, "api_delay_ms": 1500})).await;
    let link = {
        let (http, back, cookie) = (Http::new(), back.clone(), cookie.clone());
        tokio::spawn(async move { http.send_full("GET", &back, &[("cookie", &cookie)], String::new()).await })
    };
    eventually(async || {
        let log = hub.sim_control("GET", "/_sim/requests", Value::Null).await;
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"].as_str().unwrap().starts_with("/v1/accounts/"))
            .then_some(())
    })
    .await;
    let (status, _) = hub.api(Some(&operator), "POST", &format!("/v1/clinics/{DEMO_CLINIC}/disable"), None).await;
    assert_eq!(status, 200);
    let (status, _, _, page) = link.await.unwrap();
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("disabled"), "{page}");
    let clinic = hub.state.store.clinic(DEMO_CLINIC).await.unwrap().unwrap();
    assert!(!clinic.app_enabled, "the disable stands");
}

#[tokio::test]
async fn renaming_a_clinic_changes_only_its_name() {
    let hub = TestHub::start().await;
    let operator = hub.admin(AdminRole::PlatformOperator, None, &[]);
    let before = hub.state.store.clinic(DEMO_CLINIC).await.unwrap().unwrap();
    let (status, body) = hub
        .api(
            Some(&operator),
            "PUT",
            &format!("/v1/orgs/{}/clinics/{DEMO_CLINIC}", before.org_id),
            Some(json!({"name": "Harbour Clinic North"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after = hub.state.store.clinic(DEMO_CLINIC).await.unwrap().unwrap();
    assert_eq!(after.name, "Harbour Clinic North");
    assert_eq!((after.app_enabled, after.stripe_account), (before.app_enabled, before.stripe_account));
}

#[tokio::test]
async fn the_oauth_state_cookie_is_secure_behind_https() {
    let hub = TestHub::start_with(|c| c.server.public_url = Some("https://pay.clinic.example".into())).await;
    async fn state_cookie(hub: &TestHub) -> String {
        let (status, headers, body, _) = hub
            .http
            .send_full(
                "POST",
                &format!("{}/v1/clinics/{DEMO_CLINIC}/stripe/connect", hub.info.hub_url),
                &[("authorization", &format!("Bearer {}", hub.info.clinic_admin_token))],
                String::new(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        headers.get("set-cookie").unwrap().to_str().unwrap().to_owned()
    }
    let cookie = state_cookie(&hub).await;
    assert!(cookie.contains("; Secure"), "{cookie}");
    let plain = TestHub::start().await;
    let cookie = state_cookie(&plain).await;
    assert!(!cookie.contains("Secure"), "plain http keeps a cookie the browser will send back: {cookie}");
}

#[tokio::test]
async fn a_caller_who_may_never_decide_cannot_tell_a_request_from_a_missing_one() {
    let hub = TestHub::start().await;
    let (_, made) = hub
        .api(
            Some(&hub.info.org_admin_token),
            "POST",
            &format!("/v1/orgs/{DEMO_ORG}/enablement-requests"),
            Some(json!({"clinic_ids": [DEMO_CLINIC], "ticket_ref": "SD-5"})),
        )
        .await;
    let existing = made["data"][0]["id"].as_str().unwrap().to_owned();
    let callers = [
        hub.admin(AdminRole::OrgAdmin, Some(DEMO_ORG), &[]),
        hub.admin(AdminRole::TeamAdmin, None, &[DEMO_CLINIC]),
        hub.admin(AdminRole::TeamMember, None, &[DEMO_CLINIC]),
    ];
    for token in &callers {
        for (verb, body) in [("approve", None), ("reject", Some(json!({"reason": "no"})))] {
            let real =
                hub.api(Some(token), "POST", &format!("/v1/enablement-requests/{existing}/{verb}"), body.clone()).await;
            let missing =
                hub.api(Some(token), "POST", &format!("/v1/enablement-requests/enr_nowhere/{verb}"), body).await;
            assert_eq!(real, missing, "{verb}: an existing request must not be told apart from a missing one");
            assert_eq!(real.0, 403, "{verb}: {}", real.1);
        }
    }
    // The service desk still tells them apart.
    let op = hub.info.operator_token.clone();
    assert_eq!(hub.api(Some(&op), "POST", "/v1/enablement-requests/enr_nowhere/approve", None).await.0, 404);
    assert_eq!(hub.api(Some(&op), "POST", &format!("/v1/enablement-requests/{existing}/approve"), None).await.0, 200);
}

#[tokio::test]
async fn the_audit_keeps_a_bounded_cut_of_what_clients_send() {
    let hub = TestHub::start().await;
    let huge = "r".repeat(12_000);
    let mut pat = hub.patient().await;
    let mut doc = hub.clinician().await;
    // A patient may not request; a clinician may not cancel a payment that does not exist. Both
    // are refused and audited, and neither record keeps the 12,000 characters.
    pat.request(&huge, 5000, "Consult").await;
    assert_eq!(pat.error_code().await, "forbidden");
    doc.send(json!({"type": "payment.cancel", "payment_id": huge})).await;
    assert_eq!(doc.error_code().await, "unknown_payment");
    pat.send(json!({"type": "payment.cancel", "payment_id": format!("pay_{}", "é".repeat(6_000))})).await;
    assert_eq!(pat.error_code().await, "forbidden");
    let rows = hub.state.store.audit_for_clinic(DEMO_CLINIC, 100, None, true).await.unwrap();
    let refused: Vec<_> = rows.iter().filter(|r| r.outcome == "refused").collect();
    assert_eq!(refused.len(), 3, "every refusal is audited: {rows:?}");
    for r in refused {
        let target = r.target.as_deref().unwrap_or_default();
        let detail = r.detail.as_deref().unwrap_or_default();
        assert!(target.chars().count() <= 65, "{}: target kept {} characters", r.action, target.chars().count());
        assert!(detail.len() <= 503, "{}: detail kept {} bytes", r.action, detail.len());
        assert!(target.starts_with('r') || target.starts_with("pay_"), "the cut is the start: {target}");
    }
}

/// `GET` on the admin API as `token`, answering the JSON body after checking the status.
async fn get_ok(hub: &TestHub, token: &str, path: &str) -> Value {
    let (status, body) = hub.api(Some(token), "GET", path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The payment ids of a list answer, in order.
fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn payment_records_filter_page_and_link_to_the_clinics_dashboard() {
    let hub = TestHub::start().await;
    let admin = hub.info.clinic_admin_token.clone();
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    doc.request("rec-1", 5000, "Consult").await;
    let paid = pat.until_where("payment.requested", |f| f["payment"]["client_ref"] == "rec-1").await["payment"].clone();
    let (status, _) = pay_like_stripe_js(&hub, &paid, "4242424242424242", "sam@example.com").await;
    assert_eq!(status, 200);
    doc.until("payment.confirmed").await;
    doc.request("rec-2", 7000, "Follow-up").await;
    doc.until_where("payment.requested", |f| f["payment"]["client_ref"] == "rec-2").await;
    // Another clinician, in another call of the same clinic.
    let bo = hub.token_for("call_two", "clinician-bo", callpay_protocol::Role::Clinician);
    let mut other = Client::connect(&hub.ws_url("call_two", &bo)).await;
    other.request("rec-3", 9000, "Review").await;
    other.until("payment.requested").await;

    let path = format!("/v1/clinics/{DEMO_CLINIC}/payments");
    let all = get_ok(&hub, &admin, &path).await;
    let rows = all["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{all}");
    let created: Vec<i64> = rows.iter().map(|r| r["created_at"].as_i64().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert!(!all.to_string().contains("_secret_"), "no client secret in the admin API: {all}");
    let first = rows.iter().find(|r| r["client_ref"] == "rec-1").unwrap();
    assert_eq!((first["status"].as_str(), first["amount_received"].as_i64()), (Some("succeeded"), Some(5000)));
    assert_eq!((first["card_brand"].as_str(), first["card_last4"].as_str()), (Some("visa"), Some("4242")));
    // The record links to the payment on the clinic's (test-mode) dashboard: the simulator's here.
    let account = first["stripe_account"].as_str().unwrap();
    let pi = first["payment_intent_id"].as_str().unwrap();
    let link = first["dashboard_url"].as_str().unwrap();
    assert_eq!(link, format!("{}/dashboard/{account}/test/payments/{pi}", hub.info.stripe_url));
    let (status, _, _, page) = hub.http.send_full("GET", link, &[], String::new()).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(pi) && page.contains("succeeded"), "{page}");

    // Filters, alone and together.
    let only = |q: &str| format!("{path}?{q}");
    assert_eq!(ids(&get_ok(&hub, &admin, &only("status=succeeded")).await), vec![first["id"].as_str().unwrap()]);
    let by_bo = get_ok(&hub, &admin, &only("clinician=clinician-bo")).await;
    assert_eq!(by_bo["data"][0]["client_ref"], "rec-3");
    assert_eq!(by_bo["data"].as_array().unwrap().len(), 1);
    let in_call = get_ok(&hub, &admin, &only("call_id=call_two")).await;
    assert_eq!(ids(&in_call), ids(&by_bo));
    let ada_requested = get_ok(&hub, &admin, &only("clinician=clinician-ada&status=requested")).await;
    assert_eq!(ada_requested["data"].as_array().unwrap().len(), 1);
    assert_eq!(ada_requested["data"][0]["client_ref"], "rec-2");
    let now = now_ms();
    assert_eq!(get_ok(&hub, &admin, &only(&format!("from={}", now + 60_000))).await["data"], json!([]));
    assert_eq!(get_ok(&hub, &admin, &only(&format!("to={}", created[2]))).await["data"], json!([]));
    assert_eq!(ids(&get_ok(&hub, &admin, &only(&format!("from={}&to={}", created[2], now + 1))).await).len(), 3);
    assert_eq!(ids(&get_ok(&hub, &admin, &only("from=&status=")).await).len(), 3, "empty fields are no filter");
    for bad in ["from=yesterday", "to=1.5", "status=paid"] {
        let (status, body) = hub.api(Some(&admin), "GET", &only(bad), None).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_filter")), "{bad}");
    }
    let (status, body) = hub.api(Some(&admin), "GET", &only("cursor=nonsense"), None).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_cursor")));

    // The organisation's list: every clinic of it (not another organisation's), each record
    // naming its clinic, with the same filters and `clinic=` to narrow it to one.
    let op = hub.info.operator_token.clone();
    let north = hub
        .api(Some(&op), "PUT", &format!("/v1/orgs/{DEMO_ORG}/clinics/clinic_north"), Some(json!({"name": "North"})))
        .await;
    assert_eq!(north.0, 200, "{}", north.1);
    let in_north = seed_payment(&hub, "clinic_north", "clinician-cy").await;
    hub.seed_other_org().await;
    seed_payment(&hub, OTHER_CLINIC, "clinician-ada").await;
    let org_admin = hub.info.org_admin_token.clone();
    let org_path = format!("/v1/orgs/{DEMO_ORG}/payments");
    let whole = get_ok(&hub, &org_admin, &org_path).await;
    assert_eq!(ids(&whole), [vec![in_north.clone()], ids(&all)].concat(), "newest first, both clinics, no other org");
    assert_eq!(whole["data"][0]["clinic_name"], "North");
    assert_eq!(whole["data"][1]["clinic_id"], DEMO_CLINIC);
    let narrowed = get_ok(&hub, &org_admin, &format!("{org_path}?clinic=clinic_north")).await;
    assert_eq!(ids(&narrowed), vec![in_north.clone()]);
    assert_eq!(get_ok(&hub, &org_admin, &format!("{org_path}?clinic={OTHER_CLINIC}")).await["data"], json!([]));
    let org_paid = get_ok(&hub, &org_admin, &format!("{org_path}?status=succeeded")).await;
    assert_eq!(ids(&org_paid), vec![first["id"].as_str().unwrap()]);
    let org_page = get_ok(&hub, &org_admin, &format!("{org_path}?limit=3")).await;
    let org_cursor = org_page["next_cursor"].as_str().unwrap().to_owned();
    let org_rest = get_ok(&hub, &org_admin, &format!("{org_path}?limit=3&cursor={org_cursor}")).await;
    assert_eq!([ids(&org_page), ids(&org_rest)].concat(), ids(&whole));
    // A clinic's list with another clinic named finds nothing.
    assert_eq!(get_ok(&hub, &admin, &only("clinic=clinic_north")).await["data"], json!([]));

    // Pages of two, by cursor, visit every payment once, in order.
    let page1 = get_ok(&hub, &admin, &only("limit=2")).await;
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let page2 = get_ok(&hub, &admin, &only(&format!("limit=2&cursor={cursor}"))).await;
    assert!(page2["next_cursor"].is_null());
    assert_eq!([ids(&page1), ids(&page2)].concat(), ids(&all));

    // A team member sees only what they requested, whatever they ask for.
    let member =
        admin_token(&hub.info.platform_secret, "clinician-bo", "Dr Bo", AdminRole::TeamMember, None, &[DEMO_CLINIC]);
    assert_eq!(ids(&get_ok(&hub, &member, &path).await), ids(&by_bo));
    assert_eq!(get_ok(&hub, &member, &only("clinician=clinician-ada")).await["data"], json!([]));
    let theirs = format!("/v1/payments/{}", first["id"].as_str().unwrap());
    let missing = "/v1/payments/pay_nowhere";
    assert_eq!(hub.api(Some(&member), "GET", &theirs, None).await, hub.api(Some(&member), "GET", missing, None).await);
    assert_eq!(hub.api(Some(&member), "GET", &theirs, None).await.0, 404);
    let own = get_ok(&hub, &member, &format!("/v1/payments/{}", by_bo["data"][0]["id"].as_str().unwrap())).await;
    assert_eq!(own["client_ref"], "rec-3");

    // The service desk reads the clinic's audit log without its money: no payment or refund
    // entries (amounts, payment ids) for the operator; the clinic's admin sees them.
    let audit = format!("/v1/clinics/{DEMO_CLINIC}/audit?limit=200");
    let actions = |log: &Value| -> Vec<String> {
        log["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect()
    };
    let theirs_log = actions(&get_ok(&hub, &admin, &audit).await);
    assert!(theirs_log.iter().any(|a| a.starts_with("payment.")), "{theirs_log:?}");
    let desk_log = actions(&get_ok(&hub, &hub.info.operator_token.clone(), &audit).await);
    assert!(
        desk_log.iter().all(|a| !a.starts_with("payment.") && !a.starts_with("refund.")),
        "money in the service desk's audit view: {desk_log:?}"
    );

    // A clinic that goes live: its test-mode payments still link to the test dashboard, and
    // what it takes from then on links to the live one (no /test).
    let clinic = hub.state.store.clinic(DEMO_CLINIC).await.unwrap().unwrap();
    let live = callpay::store::StripeLink {
        account: clinic.stripe_account.clone().unwrap(),
        publishable_key: None,
        display_name: None,
        livemode: true,
        linked_by: "test".into(),
        linked_at: now_ms(),
    };
    let relink =
        callpay::store::Write::Clinic { id: DEMO_CLINIC.into(), change: callpay::store::ClinicChange::Link(live) };
    hub.state.store.commit(&[relink]).await.unwrap();
    let record = get_ok(&hub, &admin, &theirs).await;
    assert_eq!(record["dashboard_url"].as_str().unwrap(), link, "a test payment stays in the test dashboard");
    doc.request("rec-live", 8000, "Live consult").await;
    let live = doc.until_where("payment.requested", |f| f["payment"]["client_ref"] == "rec-live").await;
    let live_id = live["payment"]["payment_id"].as_str().unwrap();
    let record = get_ok(&hub, &admin, &format!("/v1/payments/{live_id}")).await;
    let live_pi = record["payment_intent_id"].as_str().unwrap();
    assert_eq!(
        record["dashboard_url"].as_str().unwrap(),
        format!("{}/dashboard/{account}/payments/{live_pi}", hub.info.stripe_url)
    );
}

#[tokio::test]
async fn a_payment_record_tells_every_change_with_its_time_and_source() {
    let hub = TestHub::start().await;
    let admin = hub.info.org_admin_token.clone();
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    // Paid, confirmed by webhook.
    doc.request("h-1", 5000, "Consult").await;
    let one = pat.until_where("payment.requested", |f| f["payment"]["client_ref"] == "h-1").await["payment"].clone();
    pay_like_stripe_js(&hub, &one, "4242424242424242", "sam@example.com").await;
    doc.until_where("payment.confirmed", |f| f["payment"]["client_ref"] == "h-1").await;
    // Paid with every webhook lost: the hub reads it from Stripe when the page says it is done.
    hub.sim_control("POST", "/_sim/faults", json!({"webhook_drop_all": true})).await;
    doc.request("h-2", 6000, "Consult").await;
    let two = pat.until_where("payment.requested", |f| f["payment"]["client_ref"] == "h-2").await["payment"].clone();
    pay_like_stripe_js(&hub, &two, "4242424242424242", "sam@example.com").await;
    pat.send(json!({"type": "payment.progress", "payment_id": two["payment_id"], "stage": "submitted"})).await;
    doc.until_where("payment.confirmed", |f| f["payment"]["client_ref"] == "h-2").await;
    // Cancelled by the clinician.
    doc.request("h-3", 7000, "Consult").await;
    let three = doc.until_where("payment.requested", |f| f["payment"]["client_ref"] == "h-3").await["payment"].clone();
    doc.send(json!({"type": "payment.cancel", "payment_id": three["payment_id"]})).await;
    doc.until_where("payment.updated", |f| f["payment"]["status"] == "canceled").await;
    // A refused cancel naming the paid payment is the clinician's mistake, not the payment's history.
    doc.send(json!({"type": "payment.cancel", "payment_id": one["payment_id"]})).await;
    assert_eq!(doc.error_code().await, "invalid_state");

    let history = |p: &Value| {
        let path = format!("/v1/payments/{}", p["payment_id"].as_str().unwrap());
        let (hub, admin) = (&hub, &admin);
        async move { get_ok(hub, admin, &path).await }
    };
    let h1 = history(&one).await;
    assert_eq!(h1["status"], "succeeded");
    assert!(!h1.to_string().contains("_secret_"));
    let steps = h1["history"].as_array().unwrap();
    assert_eq!(steps[0]["action"], "payment.requested");
    assert_eq!(steps[0]["status"], "requested");
    assert_eq!(steps[0]["source"], json!({"kind": "hub", "actor_id": "clinician-ada", "actor_name": "Dr Ada Lee"}));
    let paid = steps.iter().find(|s| s["status"] == "succeeded").expect("the success is in the history");
    assert_eq!(paid["source"]["kind"], "webhook");
    let event_id = paid["source"]["event_id"].as_str().unwrap();
    let deliveries = hub.sim_control("GET", "/_sim/deliveries", Value::Null).await;
    let delivered = deliveries["data"].as_array().unwrap();
    assert!(
        delivered.iter().any(|d| d["event_id"] == event_id && d["event_type"] == "payment_intent.succeeded"),
        "{event_id} is the Stripe event that confirmed it: {deliveries}"
    );
    assert!(steps.iter().all(|s| s["outcome"] == "ok"), "the refused cancel is not part of it: {steps:?}");
    let times: Vec<i64> = steps.iter().map(|s| s["at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]) && times[0] >= h1["created_at"].as_i64().unwrap(), "oldest first");

    let h2 = history(&two).await;
    let read = h2["history"].as_array().unwrap().iter().find(|s| s["status"] == "succeeded").unwrap().clone();
    assert_eq!(read["source"], json!({"kind": "stripe_read"}), "{h2}");
    assert!(read["detail"].as_str().unwrap().starts_with("read from Stripe"));

    let h3 = history(&three).await;
    let statuses: Vec<&str> = h3["history"].as_array().unwrap().iter().filter_map(|s| s["status"].as_str()).collect();
    assert_eq!(statuses, ["requested", "canceled"]);
    assert_eq!(h3["history"][1]["source"]["kind"], "hub");
}

#[tokio::test]
async fn payment_records_and_histories_read_the_same_on_sqlite_and_postgresql() {
    use callpay::store::{
        Actor, AuditEntry, Clinic, Payment, PaymentFilter, PaymentScope, STRIPE, SqlStore, Store, StoreResult, Write,
    };
    use callpay_protocol::PaymentStatus;
    let db = crate::services::TempDb::new();
    async fn run(store: &SqlStore) -> StoreResult<Vec<Vec<String>>> {
        let payment = |i: i64, who: &str, call: &str, status| Payment {
            id: format!("pay_{i}"),
            call_id: call.into(),
            clinic_id: "clinic_a".into(),
            client_ref: format!("r{i}"),
            requested_by_id: who.into(),
            amount: 5000,
            currency: "aud".into(),
            status,
            stripe_account: "acct_1".into(),
            // Two share a millisecond: the id orders them.
            created_at: 1_000 + i.min(3),
            updated_at: 1_000,
            ..Payment::default()
        };
        for (i, who, call, status) in [
            (1, "ada", "call_1", PaymentStatus::Succeeded),
            (2, "ada", "call_1", PaymentStatus::Requested),
            (3, "bo", "call_2", PaymentStatus::Succeeded),
            (4, "bo", "call_2", PaymentStatus::Failed),
        ] {
            store.insert_payment(&payment(i, who, call, status)).await?;
        }
        store
            .insert_payment(&Payment {
                clinic_id: "clinic_b".into(),
                ..payment(9, "ada", "call_9", PaymentStatus::Succeeded)
            })
            .await?;
        // clinic_a and clinic_b are one organisation's; clinic_c another's.
        store
            .insert_payment(&Payment {
                clinic_id: "clinic_c".into(),
                ..payment(8, "ada", "call_8", PaymentStatus::Succeeded)
            })
            .await?;
        let clinic = |id: &str, org: &str| {
            Write::UpsertClinic(Clinic { id: id.into(), org_id: org.into(), name: id.into(), ..Clinic::default() })
        };
        store.commit(&[clinic("clinic_a", "org_1"), clinic("clinic_b", "org_1"), clinic("clinic_c", "org_2")]).await?;
        let ada = Actor { id: "ada", name: "Ada", role: "clinician" };
        let audit = |actor, action: &str, target: &str, at| AuditEntry {
            clinic_id: Some("clinic_a".into()),
            target: Some(target.into()),
            at,
            ..AuditEntry::new(actor, action, "ok")
        };
        store
            .commit(&[
                Write::Audit(audit(STRIPE, "payment.succeeded", "pay_1", 30)),
                Write::Audit(audit(ada, "payment.requested", "pay_1", 10)),
                Write::Audit(audit(ada, "payment.requested", "pay_2", 20)),
                Write::Audit(AuditEntry {
                    clinic_id: Some("clinic_b".into()),
                    ..audit(ada, "payment.canceled", "pay_1", 40)
                }),
            ])
            .await?;
        let ids = |v: Vec<Payment>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        let all = PaymentFilter::default();
        let mut out = vec![
            ids(store.payment_records(PaymentScope::Clinic("clinic_a"), &all, 10, None).await?),
            ids(store.payment_records(PaymentScope::Clinic("clinic_a"), &all, 2, None).await?),
            ids(store
                .payment_records(PaymentScope::Clinic("clinic_a"), &all, 10, Some((1_003, "pay_4".into())))
                .await?),
            ids(store
                .payment_records(
                    PaymentScope::Clinic("clinic_a"),
                    &PaymentFilter { status: Some(PaymentStatus::Succeeded), ..all.clone() },
                    10,
                    None,
                )
                .await?),
            ids(store
                .payment_records(
                    PaymentScope::Clinic("clinic_a"),
                    &PaymentFilter {
                        requested_by_id: Some("bo".into()),
                        call_id: Some("call_2".into()),
                        ..all.clone()
                    },
                    10,
                    None,
                )
                .await?),
            ids(store
                .payment_records(
                    PaymentScope::Clinic("clinic_a"),
                    &PaymentFilter { from_ms: Some(1_002), to_ms: Some(1_003), ..all.clone() },
                    10,
                    None,
                )
                .await?),
            ids(store.payment_records(PaymentScope::Org("org_1"), &all, 10, None).await?),
            ids(store
                .payment_records(
                    PaymentScope::Org("org_1"),
                    &PaymentFilter { clinic_id: Some("clinic_b".into()), ..all.clone() },
                    10,
                    None,
                )
                .await?),
            // Another organisation's clinic named in the filter finds nothing.
            ids(store
                .payment_records(
                    PaymentScope::Org("org_1"),
                    &PaymentFilter { clinic_id: Some("clinic_c".into()), ..all.clone() },
                    10,
                    None,
                )
                .await?),
        ];
        out.push(store.audit_for_target("clinic_a", "pay_1", 10).await?.into_iter().map(|e| e.action).collect());
        Ok(out)
    }
    let sqlite = SqlStore::connect("sqlite::memory:").await.unwrap();
    let postgres = SqlStore::connect(&db.url).await.unwrap();
    let expected: Vec<Vec<String>> = [
        vec!["pay_4", "pay_3", "pay_2", "pay_1"],
        vec!["pay_4", "pay_3"],
        vec!["pay_3", "pay_2", "pay_1"],
        vec!["pay_3", "pay_1"],
        vec!["pay_4", "pay_3"],
        vec!["pay_2"],
        vec!["pay_9", "pay_4", "pay_3", "pay_2", "pay_1"],
        vec!["pay_9"],
        vec![],
        vec!["payment.requested", "payment.succeeded"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| (*s).to_owned()).collect())
    .collect();
    assert_eq!(run(&sqlite).await.unwrap(), expected, "SQLite");
    assert_eq!(run(&postgres).await.unwrap(), expected, "PostgreSQL");
    postgres.close().await;
}

#[tokio::test]
async fn a_repeated_request_is_audited_on_the_payment_it_repeats() {
    let hub = TestHub::start().await;
    let admin = hub.info.clinic_admin_token.clone();
    let mut doc = hub.clinician().await;
    doc.request("again-1", 5000, "Consult").await;
    let id = doc.until("payment.requested").await["payment"]["payment_id"].as_str().unwrap().to_owned();
    doc.request("again-1", 5000, "Consult").await;
    doc.until_where("payment.updated", |f| f["payment"]["payment_id"] == id.as_str()).await;
    let log = get_ok(&hub, &admin, &format!("/v1/clinics/{DEMO_CLINIC}/audit?limit=200")).await;
    let repeat = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["detail"].as_str().is_some_and(|d| d.contains("repeated request")))
        .cloned()
        .expect("the repeat is audited");
    assert_eq!(repeat["target"], id.as_str(), "it names the payment, not the client_ref: {repeat}");
    // And it is part of that payment's history, after its creation.
    let record = get_ok(&hub, &admin, &format!("/v1/payments/{id}")).await;
    let times: Vec<i64> = record["history"].as_array().unwrap().iter().map(|s| s["at"].as_i64().unwrap()).collect();
    assert!(times.len() >= 2 && times[0] >= record["created_at"].as_i64().unwrap(), "{record}");
}

#[tokio::test]
async fn refused_frames_are_audited_once_a_minute_per_participant_action_and_code() {
    let hub = TestHub::start().await;
    let admin = hub.info.clinic_admin_token.clone();
    let mut doc = hub.clinician().await;
    let mut pat = hub.patient().await;
    for i in 0..6 {
        doc.request(&format!("bad-{i}"), 1, "Too little").await;
        assert_eq!(doc.error_code().await, "invalid_amount");
        pat.request(&format!("p-{i}"), 5000, "Not theirs").await;
        assert_eq!(pat.error_code().await, "forbidden");
    }
    // Another code from the same clinician is its own first refusal.
    doc.send(json!({"type": "payment.request", "client_ref": "cur-1", "amount": 5000, "currency": "xyz", "description": "x"}))
        .await;
    assert_eq!(doc.error_code().await, "invalid_currency");
    let log = get_ok(&hub, &admin, &format!("/v1/clinics/{DEMO_CLINIC}/audit?limit=200")).await;
    let refused: Vec<&Value> = log["data"].as_array().unwrap().iter().filter(|e| e["outcome"] == "refused").collect();
    let by = |actor: &str, code: &str| {
        refused.iter().filter(|e| e["actor_id"] == actor && e["detail"].as_str().unwrap_or("").contains(code)).count()
    };
    assert_eq!(by("clinician-ada", "InvalidAmount"), 1, "{refused:?}");
    assert_eq!(by("patient-sam", "Forbidden"), 1, "{refused:?}");
    assert_eq!(by("clinician-ada", "InvalidCurrency"), 1, "{refused:?}");
}

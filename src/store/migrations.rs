//! Schema migrations, embedded in the binary and written in SQL that SQLite and PostgreSQL both
//! accept (TEXT, BIGINT, `$n` placeholders). Applied in order at start-up, each exactly once.

/// (version, name, statements). Never edit a released entry: add a new one.
pub const MIGRATIONS: &[(i64, &str, &[&str])] = &[
    (
        1,
        "clinics, payments, webhook events",
        &[
            "CREATE TABLE IF NOT EXISTS clinics (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            name TEXT NOT NULL,
            app_enabled BIGINT NOT NULL DEFAULT 0,
            stripe_account TEXT,
            stripe_publishable_key TEXT,
            stripe_livemode BIGINT NOT NULL DEFAULT 0,
            linked_by TEXT,
            linked_at BIGINT,
            updated_at BIGINT NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS clinics_stripe_account ON clinics (stripe_account)",
            "CREATE TABLE IF NOT EXISTS payments (
            id TEXT PRIMARY KEY,
            call_id TEXT NOT NULL,
            clinic_id TEXT NOT NULL,
            client_ref TEXT NOT NULL,
            requested_by_id TEXT NOT NULL,
            requested_by_name TEXT NOT NULL,
            amount BIGINT NOT NULL,
            currency TEXT NOT NULL,
            description TEXT NOT NULL,
            status TEXT NOT NULL,
            version BIGINT NOT NULL,
            stripe_account TEXT NOT NULL,
            payment_intent_id TEXT,
            client_secret TEXT,
            amount_received BIGINT,
            amount_refunded BIGINT NOT NULL DEFAULT 0,
            paid_at BIGINT,
            receipt_email TEXT,
            card_brand TEXT,
            card_last4 TEXT,
            failure_code TEXT,
            failure_decline_code TEXT,
            failure_message TEXT,
            last_event_at BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            UNIQUE (call_id, client_ref)
        )",
            "CREATE INDEX IF NOT EXISTS payments_intent ON payments (payment_intent_id)",
            "CREATE INDEX IF NOT EXISTS payments_call ON payments (call_id, created_at)",
            "CREATE INDEX IF NOT EXISTS payments_clinic ON payments (clinic_id, created_at)",
            "CREATE TABLE IF NOT EXISTS webhook_events (
            event_id TEXT PRIMARY KEY,
            event_type TEXT NOT NULL,
            account TEXT,
            payment_id TEXT,
            outcome TEXT NOT NULL,
            received_at BIGINT NOT NULL
        )",
        ],
    ),
    (
        2,
        "organisations, app enablement, OAuth states, audit log",
        &[
            "CREATE TABLE IF NOT EXISTS orgs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS clinics_org ON clinics (org_id)",
            "CREATE TABLE IF NOT EXISTS enablement_requests (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            clinic_id TEXT NOT NULL,
            ticket_ref TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            decided_by TEXT,
            created_at BIGINT NOT NULL,
            decided_at BIGINT
        )",
            "CREATE INDEX IF NOT EXISTS enablement_org ON enablement_requests (org_id, created_at)",
            "CREATE TABLE IF NOT EXISTS oauth_states (
            state TEXT PRIMARY KEY,
            clinic_id TEXT NOT NULL,
            admin_id TEXT NOT NULL,
            admin_name TEXT NOT NULL,
            admin_role TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT
        )",
            "CREATE TABLE IF NOT EXISTS audit_log (
            id TEXT PRIMARY KEY,
            at BIGINT NOT NULL,
            org_id TEXT,
            clinic_id TEXT,
            actor_id TEXT NOT NULL,
            actor_name TEXT NOT NULL,
            actor_role TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            outcome TEXT NOT NULL,
            detail TEXT
        )",
            "CREATE INDEX IF NOT EXISTS audit_clinic ON audit_log (clinic_id, at, id)",
            "ALTER TABLE clinics ADD COLUMN stripe_display_name TEXT",
        ],
    ),
    (
        3,
        "calls bound to the clinic of their first join",
        &["CREATE TABLE IF NOT EXISTS calls (
            call_id TEXT PRIMARY KEY,
            clinic_id TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )"],
    ),
    (
        4,
        "enablement requests keep the requester's name",
        &["ALTER TABLE enablement_requests ADD COLUMN requested_by_name TEXT NOT NULL DEFAULT ''"],
    ),
    (
        5,
        "a payment's history is read from the audit log by target",
        &["CREATE INDEX IF NOT EXISTS audit_target ON audit_log (target, at)"],
    ),
    (
        6,
        "refunds: stored before Stripe is asked, matched to Stripe's refund by id",
        &[
            "CREATE TABLE IF NOT EXISTS refunds (
            id TEXT PRIMARY KEY,
            payment_id TEXT NOT NULL,
            clinic_id TEXT NOT NULL,
            amount BIGINT NOT NULL,
            currency TEXT NOT NULL,
            reason TEXT NOT NULL,
            note TEXT,
            status TEXT NOT NULL,
            stripe_refund_id TEXT,
            failure_reason TEXT,
            source TEXT NOT NULL,
            request_key TEXT,
            requested_by_id TEXT NOT NULL,
            requested_by_name TEXT NOT NULL,
            requested_by_role TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            UNIQUE (payment_id, request_key)
        )",
            "CREATE UNIQUE INDEX IF NOT EXISTS refunds_stripe ON refunds (stripe_refund_id)",
            "CREATE INDEX IF NOT EXISTS refunds_payment ON refunds (payment_id, created_at)",
        ],
    ),
    (
        7,
        "refunds Stripe never answered are found by the sweep that sends them again",
        &["CREATE INDEX IF NOT EXISTS refunds_status ON refunds (status, updated_at)"],
    ),
    (
        8,
        "a payment keeps the mode (test or live) of the account it was made on",
        &[
            "ALTER TABLE payments ADD COLUMN livemode BIGINT NOT NULL DEFAULT 0",
            // Payments made before: live if made on the account the clinic has linked in live
            // mode since before the payment (test payments made before going live stay test).
            "UPDATE payments SET livemode = 1 WHERE EXISTS (SELECT 1 FROM clinics c WHERE c.id = payments.clinic_id \
             AND c.stripe_account = payments.stripe_account AND c.stripe_livemode = 1 \
             AND c.linked_at IS NOT NULL AND c.linked_at <= payments.created_at)",
        ],
    ),
    (
        9,
        "the sweep reads the payments changed lately, to bring rooms up to them",
        &["CREATE INDEX IF NOT EXISTS payments_updated ON payments (updated_at)"],
    ),
    (
        10,
        "outbound events for the platform: endpoints, the outbox, deliveries and their attempts",
        &[
            "CREATE TABLE IF NOT EXISTS event_endpoints (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            secret TEXT NOT NULL,
            description TEXT NOT NULL,
            enabled BIGINT NOT NULL,
            event_types TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
            "CREATE TABLE IF NOT EXISTS outbound_events (
            id TEXT PRIMARY KEY,
            event_type TEXT NOT NULL,
            order_key TEXT NOT NULL,
            seq BIGINT NOT NULL,
            clinic_id TEXT,
            body TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            UNIQUE (order_key, seq)
        )",
            "CREATE TABLE IF NOT EXISTS event_deliveries (
            id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL,
            endpoint_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            order_key TEXT NOT NULL,
            seq BIGINT NOT NULL,
            status TEXT NOT NULL,
            attempts BIGINT NOT NULL,
            next_attempt_at BIGINT NOT NULL,
            lease_until BIGINT,
            lease_token TEXT,
            last_status BIGINT,
            last_error TEXT,
            replay_of TEXT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            delivered_at BIGINT
        )",
            // The worker's claim: due pending deliveries, and the head of each order key.
            "CREATE INDEX IF NOT EXISTS event_deliveries_due ON event_deliveries (status, next_attempt_at)",
            "CREATE INDEX IF NOT EXISTS event_deliveries_order ON event_deliveries (endpoint_id, order_key, seq)",
            "CREATE INDEX IF NOT EXISTS event_deliveries_endpoint ON event_deliveries (endpoint_id, created_at, id)",
            "CREATE TABLE IF NOT EXISTS event_attempts (
            id TEXT PRIMARY KEY,
            delivery_id TEXT NOT NULL,
            at BIGINT NOT NULL,
            duration_ms BIGINT NOT NULL,
            http_status BIGINT,
            error TEXT,
            response_excerpt TEXT
        )",
            "CREATE INDEX IF NOT EXISTS event_attempts_delivery ON event_attempts (delivery_id, at)",
        ],
    ),
    (
        11,
        "pay by link (the patient's language for receipts) and callpay's own receipt e-mails",
        &[
            // A clinic that sends its own receipt (besides Stripe's), off by default.
            "ALTER TABLE clinics ADD COLUMN own_receipts BIGINT NOT NULL DEFAULT 0",
            // The language the patient paid in (the page tells the hub before paying), for the
            // receipt; kept apart from the payment row, whose updates are whole-row and versioned.
            "CREATE TABLE IF NOT EXISTS payment_langs (
            payment_id TEXT PRIMARY KEY,
            lang TEXT NOT NULL,
            updated_at BIGINT NOT NULL
        )",
            // The receipt outbox: a row is written in the same transaction as the payment's
            // success, and a background task sends it (retrying with backoff), so neither a
            // slow mail server nor a restart loses or delays the confirmation.
            "CREATE TABLE IF NOT EXISTS receipt_outbox (
            payment_id TEXT PRIMARY KEY,
            clinic_id TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts BIGINT NOT NULL DEFAULT 0,
            next_attempt_at BIGINT NOT NULL,
            last_error TEXT,
            created_at BIGINT NOT NULL,
            sent_at BIGINT
        )",
            "CREATE INDEX IF NOT EXISTS receipt_outbox_due ON receipt_outbox (status, next_attempt_at)",
        ],
    ),
    (
        12,
        "a receipt's claim names its attempt",
        &[
            // The attempt that holds a receipt: only it may record the outcome, so an instance
            // whose claim lapsed and was taken over cannot overwrite the newer attempt's.
            "ALTER TABLE receipt_outbox ADD COLUMN claim_token TEXT",
        ],
    ),
    (
        13,
        "retention of outbound events: indexes for the prune",
        &[
            // Deliveries that ended (delivered, failed, canceled), oldest end first.
            "CREATE INDEX IF NOT EXISTS event_deliveries_ended ON event_deliveries (status, updated_at)",
            // Whether an event still has a delivery (it is deleted only when none is left).
            "CREATE INDEX IF NOT EXISTS event_deliveries_event ON event_deliveries (event_id)",
            "CREATE INDEX IF NOT EXISTS outbound_events_created ON outbound_events (created_at)",
        ],
    ),
];

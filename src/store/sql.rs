//! [`Store`] on SQL through sqlx's `Any` driver: `sqlite:` URLs (a file, or `sqlite::memory:`)
//! and `postgres:` URLs run the same statements.

use super::binder::Binder;
use super::migrations::MIGRATIONS;
use super::snapshots::Snapshots;
use super::{
    AuditEntry, CallSnapshot, Clinic, ClinicChange, Committed, Enablement, Inserted, OAuthState, Org, Payment,
    PaymentFilter, PaymentScope, ReceiptJob, ReceiptOutcome, Refund, StateTaken, Store, StoreError, StoreResult, Write,
    now_ms,
};
use crate::config::{POSTGRES_POOL, POSTGRES_POOL_MIN};
use async_trait::async_trait;
use callpay_protocol::PaymentStatus;
use sqlx::any::{AnyPoolOptions, AnyRow};
// Every composed statement below is built from constants only; values are always bound.
use sqlx::{AnyPool, AssertSqlSafe, Connection, Row};
use std::collections::HashMap;
use std::time::Duration;

/// How long a SQLite writer waits for another writer before giving up; short enough that a
/// stuck database surfaces as an error to the caller rather than a hung request.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// SQLite's pool: it serialises writers anyway. PostgreSQL's is `database.max_connections`
/// ([`POSTGRES_POOL`] by default, never below [`POSTGRES_POOL_MIN`]).
const SQLITE_POOL: u32 = 4;
/// Longest wait for a pooled connection before a request fails with a store error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A PostgreSQL connection idle in the pool this long is pinged before it is used again.
pub const PING_IF_IDLE: Duration = Duration::from_secs(1);

/// A SQLite or PostgreSQL store.
#[derive(Clone)]
pub struct SqlStore {
    pub(super) pool: AnyPool,
    postgres: bool,
    /// Binds new calls in batches (one transaction for every call that arrived meanwhile).
    binder: Binder,
    /// Reads welcomes in batches (one statement for every join that asked meanwhile).
    snapshots: Snapshots,
}

const PAYMENT_COLUMNS: &str = "id, call_id, clinic_id, client_ref, requested_by_id, requested_by_name, amount, currency, \
    description, status, version, stripe_account, payment_intent_id, client_secret, amount_received, amount_refunded, \
    paid_at, receipt_email, card_brand, card_last4, failure_code, failure_decline_code, failure_message, last_event_at, \
    created_at, updated_at, livemode";

impl SqlStore {
    /// Connects and applies pending migrations. `sqlite::memory:` gives a private in-memory database.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, POSTGRES_POOL).await
    }

    /// As [`Self::connect`], opening at most `postgres_pool` connections to PostgreSQL
    /// (`database.max_connections`; taken as 4 if lower). SQLite's pool does not change.
    pub async fn connect_with(url: &str, postgres_pool: u32) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool_size = if sqlite { SQLITE_POOL } else { postgres_pool.max(POSTGRES_POOL_MIN) };
        let url = if url == "sqlite::memory:" {
            // One shared in-memory database per store, however many pooled connections use it.
            format!("sqlite:file:callpay_{}?mode=memory&cache=shared", rand::random::<u64>())
        } else if sqlite && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(if url.contains("mode=memory") { 1 } else { 0 })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx pings a connection each time it is taken from the pool. A SQLite connection
            // is a file handle on a worker thread that cannot drop; its ping was a second
            // thread hand-off on every query of a join (it showed in the join profile).
            // PostgreSQL connections can break (a restart, a failover, a proxy's idle
            // timeout), but one used within the last moment is alive as far as a ping could
            // tell; pinging every checkout was a second round trip for every statement
            // (7-9 % of all CPU in the drain's profile). So only a connection idle for
            // PING_IF_IDLE or longer is checked.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if !sqlite && meta.idle_for >= PING_IF_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .idle_timeout(None::<Duration>)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        sqlx::query(AssertSqlSafe(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")))
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await.ok();
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let binder = Binder::start(pool.clone());
        // A quarter of the pool: the rest stays free for payments, webhooks and the binder.
        let postgres = url.starts_with("postgres");
        let snapshots = Snapshots::start(pool.clone(), postgres, pool_size as usize / 4);
        let store = Self { pool, postgres, binder, snapshots };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7461)").execute(&mut *tx).await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS callpay_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for (version, name, statements) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            if self.postgres {
                // Instances starting together take turns: the second sees the version recorded.
                sqlx::query("SELECT pg_advisory_xact_lock(7461)").execute(&mut *tx).await?;
            }
            let done: Option<i64> = sqlx::query_scalar("SELECT version FROM callpay_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            for statement in *statements {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
            // ON CONFLICT: two instances starting together both try; the loser's insert is a no-op.
            sqlx::query(
                "INSERT INTO callpay_migrations (version, name, applied_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(*version)
            .bind(*name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Closes the pool, waiting for in-flight statements.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The stored (and wire) name of a status.
pub fn status_str(s: PaymentStatus) -> &'static str {
    match s {
        PaymentStatus::Creating => "creating",
        PaymentStatus::Requested => "requested",
        PaymentStatus::Authenticating => "authenticating",
        PaymentStatus::Processing => "processing",
        PaymentStatus::Failed => "failed",
        PaymentStatus::Succeeded => "succeeded",
        PaymentStatus::Canceled => "canceled",
        PaymentStatus::PartiallyRefunded => "partially_refunded",
        PaymentStatus::Refunded => "refunded",
    }
}

fn parse_status(s: &str) -> StoreResult<PaymentStatus> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("unknown payment status {s:?}")))
}

fn clinic_from(row: &AnyRow) -> StoreResult<Clinic> {
    clinic_from_prefixed(row, "")
}

/// A clinic from columns whose names carry `prefix` (a join names them apart from the
/// payments' own `id`).
fn clinic_from_prefixed(row: &AnyRow, prefix: &str) -> StoreResult<Clinic> {
    let col = |name: &str| format!("{prefix}{name}");
    Ok(Clinic {
        id: row.try_get(col("id").as_str())?,
        org_id: row.try_get(col("org_id").as_str())?,
        name: row.try_get(col("name").as_str())?,
        app_enabled: row.try_get::<i64, _>(col("app_enabled").as_str())? != 0,
        stripe_account: row.try_get(col("stripe_account").as_str())?,
        stripe_publishable_key: row.try_get(col("stripe_publishable_key").as_str())?,
        stripe_display_name: row.try_get(col("stripe_display_name").as_str())?,
        stripe_livemode: row.try_get::<i64, _>(col("stripe_livemode").as_str())? != 0,
        linked_by: row.try_get(col("linked_by").as_str())?,
        linked_at: row.try_get(col("linked_at").as_str())?,
        own_receipts: row.try_get::<i64, _>(col("own_receipts").as_str())? != 0,
    })
}

/// The clinic's columns, for a statement that also selects payments.
const CLINIC_COLUMNS: [&str; 11] = [
    "id",
    "org_id",
    "name",
    "app_enabled",
    "stripe_account",
    "stripe_publishable_key",
    "stripe_display_name",
    "stripe_livemode",
    "linked_by",
    "linked_at",
    "own_receipts",
];

/// Sizes the batched welcome read is prepared for. A batch is padded up to the next size, so
/// each pooled connection caches nine statements rather than one per batch size.
const SNAPSHOT_SIZES: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Most (call, clinic) pairs one welcome read takes.
pub(super) const SNAPSHOTS_MAX: usize = SNAPSHOT_SIZES[SNAPSHOT_SIZES.len() - 1];

/// The welcome read of [`SNAPSHOT_SIZES`]`[i]` calls at index `i`, for SQLite (`[0]`) and for
/// PostgreSQL (`[1]`).
static CALL_SNAPSHOTS_SQL: std::sync::LazyLock<[Vec<String>; 2]> = std::sync::LazyLock::new(|| {
    [false, true].map(|postgres| SNAPSHOT_SIZES.iter().map(|&calls| call_snapshots_sql(calls, postgres)).collect())
});

/// The payments of one call, as `p`, for a statement to join each call it asks about to:
/// `call` is the SQL expression naming the call.
///
/// On PostgreSQL a subquery per call, fenced with `OFFSET 0` so the planner cannot fold it into
/// one join over the whole table: each call is a lookup of its own, which the planner reads
/// through `payments_call` once the table is past a few pages, with or without statistics
/// (`tests/it/plans.rs` checks it at 40,000 rows). Without statistics on `payments` (autovacuum off, as on this machine, or a
/// table grown faster than autovacuum analyses it) it guessed hundreds of payments per call and
/// read the whole table for every welcome and every sweep or repair read, often with parallel
/// workers forked for each: a quarter of the machine's time in a 70,000-socket rolling restart
/// (README, "A national service's Monday morning"). SQLite uses the index for a plain join.
fn payments_of_call(call: &str, postgres: bool) -> String {
    if postgres {
        format!(
            "LATERAL (SELECT {PAYMENT_COLUMNS} FROM payments WHERE payments.call_id = {call} OFFSET 0) AS p ON TRUE"
        )
    } else {
        format!("payments p ON p.call_id = {call}")
    }
}

/// Several calls' clinics and payments in one statement: for each asked (call, clinic) pair,
/// one row per payment (the clinic's columns repeated, as `c_…`), or one row of NULL payment
/// columns when the call has none; the clinic's columns are NULL when it does not exist. Each
/// row names its pair (`q_call`, `q_clinic`), and a pair's payments come oldest first.
fn call_snapshots_sql(calls: usize, postgres: bool) -> String {
    let clinic: Vec<String> = CLINIC_COLUMNS.iter().map(|c| format!("c.{c} AS c_{c}")).collect();
    // Named explicitly: SQLite leaves a column's name unspecified without `AS`.
    let payment: Vec<String> = PAYMENT_COLUMNS.split(',').map(|c| format!("p.{c} AS {c}", c = c.trim())).collect();
    let asked: Vec<String> = (0..calls).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
    // `column1` and `column2` are the names PostgreSQL and SQLite both give a VALUES list's columns.
    format!(
        "SELECT q.column1 AS q_call, q.column2 AS q_clinic, {}, {} FROM (VALUES {}) AS q \
         LEFT JOIN clinics c ON c.id = q.column2 LEFT JOIN {} \
         ORDER BY q.column1, q.column2, p.created_at, p.id",
        clinic.join(", "),
        payment.join(", "),
        asked.join(", "),
        payments_of_call("q.column1", postgres)
    )
}

/// The snapshot of each asked (call, clinic) pair, in the order asked, read in one statement
/// (counted in `statements`). At most [`SNAPSHOTS_MAX`] pairs; a pair may be asked more than
/// once. The outer error is the statement's (every pair failed); an inner one is a pair whose
/// rows could not be read (a corrupt row fails its own call's welcome, not the batch's).
pub(super) async fn read_call_snapshots(
    pool: &AnyPool,
    postgres: bool,
    asked: &[(&str, &str)],
    statements: &std::sync::atomic::AtomicU64,
) -> StoreResult<Vec<StoreResult<CallSnapshot>>> {
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(asked.len());
    for pair in asked {
        if !pairs.contains(pair) {
            pairs.push(*pair);
        }
    }
    let size = SNAPSHOT_SIZES
        .iter()
        .position(|&n| n >= pairs.len())
        .ok_or_else(|| StoreError::Corrupt(format!("{} calls asked of one welcome read", pairs.len())))?;
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = sqlx::query(AssertSqlSafe(CALL_SNAPSHOTS_SQL[usize::from(postgres)][size].as_str()));
    for i in 0..SNAPSHOT_SIZES[size] {
        // The padding is NULL, which joins nothing; its rows are skipped below.
        let (call, clinic) = pairs.get(i).map_or((None, None), |&(call, clinic)| (Some(call), Some(clinic)));
        q = q.bind(call).bind(clinic);
    }
    statements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rows = q.fetch_all(pool).await?;
    let mut read: HashMap<(String, String), StoreResult<CallSnapshot>> = HashMap::with_capacity(pairs.len());
    for row in &rows {
        let (Some(call), Some(clinic)) =
            (row.try_get::<Option<String>, _>("q_call")?, row.try_get::<Option<String>, _>("q_clinic")?)
        else {
            continue;
        };
        let entry = read.entry((call, clinic)).or_insert_with(|| Ok(CallSnapshot::default()));
        if let Ok(snapshot) = &mut *entry
            && let Err(e) = add_snapshot_row(snapshot, row)
        {
            *entry = Err(e);
        }
    }
    Ok(asked
        .iter()
        .map(|&(call, clinic)| match read.get(&(call.to_owned(), clinic.to_owned())) {
            Some(Ok(snapshot)) => Ok(snapshot.clone()),
            Some(Err(e)) => Err(StoreError::Corrupt(e.to_string())),
            None => Err(StoreError::Corrupt(format!("no welcome row read for call {call}"))),
        })
        .collect())
}

/// Adds one row of [`call_snapshots_sql`] to its pair's snapshot.
fn add_snapshot_row(snapshot: &mut CallSnapshot, row: &AnyRow) -> StoreResult<()> {
    if snapshot.clinic.is_none() && row.try_get::<Option<String>, _>("c_id")?.is_some() {
        snapshot.clinic = Some(clinic_from_prefixed(row, "c_")?);
    }
    if row.try_get::<Option<String>, _>("id")?.is_some() {
        snapshot.payments.push(payment_from(row)?);
    }
    Ok(())
}

fn payment_from(row: &AnyRow) -> StoreResult<Payment> {
    Ok(Payment {
        id: row.try_get("id")?,
        call_id: row.try_get("call_id")?,
        clinic_id: row.try_get("clinic_id")?,
        client_ref: row.try_get("client_ref")?,
        requested_by_id: row.try_get("requested_by_id")?,
        requested_by_name: row.try_get("requested_by_name")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        description: row.try_get("description")?,
        status: parse_status(&row.try_get::<String, _>("status")?)?,
        version: row.try_get("version")?,
        stripe_account: row.try_get("stripe_account")?,
        payment_intent_id: row.try_get("payment_intent_id")?,
        client_secret: row.try_get("client_secret")?,
        amount_received: row.try_get("amount_received")?,
        amount_refunded: row.try_get("amount_refunded")?,
        paid_at: row.try_get("paid_at")?,
        receipt_email: row.try_get("receipt_email")?,
        card_brand: row.try_get("card_brand")?,
        card_last4: row.try_get("card_last4")?,
        failure_code: row.try_get("failure_code")?,
        failure_decline_code: row.try_get("failure_decline_code")?,
        failure_message: row.try_get("failure_message")?,
        last_event_at: row.try_get("last_event_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        livemode: row.try_get::<i64, _>("livemode")? != 0,
    })
}

/// Binds every payment column except `id` (used by UPDATE, whose WHERE binds id and version).
macro_rules! bind_payment_fields {
    ($q:expr, $p:expr) => {
        $q.bind(&$p.call_id)
            .bind(&$p.clinic_id)
            .bind(&$p.client_ref)
            .bind(&$p.requested_by_id)
            .bind(&$p.requested_by_name)
            .bind($p.amount)
            .bind(&$p.currency)
            .bind(&$p.description)
            .bind(status_str($p.status))
            .bind($p.version)
            .bind(&$p.stripe_account)
            .bind(&$p.payment_intent_id)
            .bind(&$p.client_secret)
            .bind($p.amount_received)
            .bind($p.amount_refunded)
            .bind($p.paid_at)
            .bind(&$p.receipt_email)
            .bind(&$p.card_brand)
            .bind(&$p.card_last4)
            .bind(&$p.failure_code)
            .bind(&$p.failure_decline_code)
            .bind(&$p.failure_message)
            .bind($p.last_event_at)
            .bind($p.created_at)
            .bind($p.updated_at)
            .bind(i64::from($p.livemode))
    };
}

const UPDATE_PAYMENT: &str = "UPDATE payments SET call_id = $1, clinic_id = $2, client_ref = $3, requested_by_id = $4, \
    requested_by_name = $5, amount = $6, currency = $7, description = $8, status = $9, version = $10, \
    stripe_account = $11, payment_intent_id = $12, client_secret = $13, amount_received = $14, amount_refunded = $15, \
    paid_at = $16, receipt_email = $17, card_brand = $18, card_last4 = $19, failure_code = $20, \
    failure_decline_code = $21, failure_message = $22, last_event_at = $23, created_at = $24, updated_at = $25, livemode = $26 \
    WHERE id = $27 AND version = $28";

/// Most values one `IN (…)` list binds. PostgreSQL refuses a statement with more than 65,535
/// parameters and SQLite's default limit is 32,766; lists longer than this are read in chunks.
pub const IN_LIST_MAX: usize = 1000;

/// `$1, $2, …, $n`.
pub(super) fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

pub(super) type Tx = sqlx::Transaction<'static, sqlx::Any>;

async fn insert_audit(tx: &mut Tx, e: &AuditEntry) -> StoreResult<()> {
    // Whatever a caller put in the record, what is kept is bounded.
    let e = &e.bounded();
    sqlx::query(
        "INSERT INTO audit_log (id, at, org_id, clinic_id, actor_id, actor_name, actor_role, action, target, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&e.id)
    .bind(e.at)
    .bind(&e.org_id)
    .bind(&e.clinic_id)
    .bind(&e.actor_id)
    .bind(&e.actor_name)
    .bind(&e.actor_role)
    .bind(&e.action)
    .bind(&e.target)
    .bind(&e.outcome)
    .bind(&e.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies a targeted clinic change: (whether its precondition held, whether a row changed).
async fn clinic_change(tx: &mut Tx, id: &str, change: &ClinicChange) -> StoreResult<(bool, bool)> {
    let done = match change {
        ClinicChange::SetEnabled(on) => {
            // Written only if it differs, so that "changed" says whether anything happened
            // (a disable of a disabled clinic announces nothing); the clinic must exist.
            let done = sqlx::query("UPDATE clinics SET app_enabled = $1, updated_at = $2 WHERE id = $3 AND app_enabled <> $1")
                .bind(i64::from(*on))
                .bind(now_ms())
                .bind(id)
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 1 {
                return Ok((true, true));
            }
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM clinics WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
            return Ok((exists.is_some(), false));
        }
        ClinicChange::Link(l) => {
            sqlx::query(
                "UPDATE clinics SET stripe_account = $1, stripe_publishable_key = $2, stripe_display_name = $3, \
                 stripe_livemode = $4, linked_by = $5, linked_at = $6, updated_at = $7 WHERE id = $8 AND app_enabled = 1",
            )
            .bind(&l.account)
            .bind(&l.publishable_key)
            .bind(&l.display_name)
            .bind(i64::from(l.livemode))
            .bind(&l.linked_by)
            .bind(l.linked_at)
            .bind(now_ms())
            .bind(id)
            .execute(&mut **tx)
            .await?
        }
        ClinicChange::Unlink { account } => {
            let done = sqlx::query(
                "UPDATE clinics SET stripe_account = NULL, stripe_publishable_key = NULL, stripe_display_name = NULL, \
                 stripe_livemode = 0, linked_by = NULL, linked_at = NULL, updated_at = $1 \
                 WHERE id = $2 AND stripe_account = $3",
            )
            .bind(now_ms())
            .bind(id)
            .bind(account)
            .execute(&mut **tx)
            .await?;
            return Ok((true, done.rows_affected() == 1));
        }
        ClinicChange::SetOwnReceipts(on) => {
            sqlx::query("UPDATE clinics SET own_receipts = $1, updated_at = $2 WHERE id = $3")
                .bind(i64::from(*on))
                .bind(now_ms())
                .bind(id)
                .execute(&mut **tx)
                .await?
        }
    };
    let landed = done.rows_affected() == 1;
    Ok((landed, landed))
}

/// Inserts a clinic as given, or renames an existing one: a rename never touches enablement
/// or the Stripe link, which change only through targeted [`ClinicChange`]s.
async fn upsert_clinic(tx: &mut Tx, c: &Clinic) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO clinics (id, org_id, name, app_enabled, stripe_account, stripe_publishable_key, stripe_livemode, \
         linked_by, linked_at, updated_at, stripe_display_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
    )
    .bind(&c.id)
    .bind(&c.org_id)
    .bind(&c.name)
    .bind(i64::from(c.app_enabled))
    .bind(&c.stripe_account)
    .bind(&c.stripe_publishable_key)
    .bind(i64::from(c.stripe_livemode))
    .bind(&c.linked_by)
    .bind(c.linked_at)
    .bind(now_ms())
    .bind(&c.stripe_display_name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_org(tx: &mut Tx, org: &Org) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO orgs (id, name, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
    )
    .bind(&org.id)
    .bind(&org.name)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_enablement(tx: &mut Tx, e: &Enablement) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO enablement_requests (id, org_id, clinic_id, ticket_ref, requested_by, status, reason, decided_by, \
         created_at, decided_at, requested_by_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&e.id)
    .bind(&e.org_id)
    .bind(&e.clinic_id)
    .bind(&e.ticket_ref)
    .bind(&e.requested_by)
    .bind(&e.status)
    .bind(&e.reason)
    .bind(&e.decided_by)
    .bind(e.created_at)
    .bind(e.decided_at)
    .bind(&e.requested_by_name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a decision if the request is still pending; false if it was already decided.
async fn decide_enablement(tx: &mut Tx, e: &Enablement) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE enablement_requests SET status = $1, reason = $2, decided_by = $3, decided_at = $4 \
         WHERE id = $5 AND status = 'pending'",
    )
    .bind(&e.status)
    .bind(&e.reason)
    .bind(&e.decided_by)
    .bind(e.decided_at)
    .bind(&e.id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How long an expired OAuth state is kept (so a late callback is told "expired", not
/// "unknown") before it is deleted.
const OAUTH_STATE_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn clinic(&self, id: &str) -> StoreResult<Option<Clinic>> {
        let row = sqlx::query("SELECT * FROM clinics WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(clinic_from).transpose()
    }

    async fn clinics_by_account(&self, account: &str) -> StoreResult<Vec<Clinic>> {
        let rows =
            sqlx::query("SELECT * FROM clinics WHERE stripe_account = $1").bind(account).fetch_all(&self.pool).await?;
        rows.iter().map(clinic_from).collect()
    }

    async fn insert_payment(&self, p: &Payment) -> StoreResult<Inserted> {
        let sql = format!(
            "INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27) ON CONFLICT (call_id, client_ref) DO NOTHING"
        );
        let q = sqlx::query(AssertSqlSafe(sql)).bind(&p.id);
        let done = bind_payment_fields!(q, p).execute(&self.pool).await?;
        if done.rows_affected() == 1 {
            return Ok(Inserted::New);
        }
        let existing = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE call_id = $1 AND client_ref = $2"
        )))
        .bind(&p.call_id)
        .bind(&p.client_ref)
        .fetch_one(&self.pool)
        .await?;
        Ok(Inserted::Existing(Box::new(payment_from(&existing)?)))
    }

    async fn payment(&self, id: &str) -> StoreResult<Option<Payment>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(payment_from).transpose()
    }

    async fn payment_by_intent(&self, pi: &str) -> StoreResult<Option<Payment>> {
        let row =
            sqlx::query(AssertSqlSafe(format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_intent_id = $1")))
                .bind(pi)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(payment_from).transpose()
    }

    async fn payments_for_call(&self, call_id: &str) -> StoreResult<Vec<Payment>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE call_id = $1 ORDER BY created_at, id"
        )))
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(payment_from).collect()
    }

    async fn call_snapshot(&self, call_id: &str, clinic_id: &str) -> StoreResult<CallSnapshot> {
        // Read in one statement with every other welcome asked for meanwhile.
        self.snapshots.read(call_id, clinic_id).await
    }

    fn welcome_statements(&self) -> u64 {
        // Each reads every join that asked while the readers were busy.
        self.snapshots.statements()
    }

    async fn webhook_seen(&self, event_id: &str) -> StoreResult<bool> {
        let row: Option<String> = sqlx::query_scalar("SELECT event_id FROM webhook_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn bind_call(&self, call_id: &str, clinic_id: &str) -> StoreResult<String> {
        // Bound (or read back, if any instance bound it first) together with every other call
        // joining meanwhile: one transaction per batch.
        self.binder.bind(call_id, clinic_id).await
    }

    async fn commit(&self, writes: &[Write]) -> StoreResult<Committed> {
        let mut tx = self.pool.begin().await?;
        // Whether the last write before an event changed a row (for `Write::Event { if_changed }`).
        let mut changed = false;
        for write in writes {
            let mut did_change = None;
            let landed = match write {
                Write::Webhook(e) => {
                    let inserted = sqlx::query(
                        "INSERT INTO webhook_events (event_id, event_type, account, payment_id, outcome, received_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
                    )
                    .bind(&e.event_id)
                    .bind(&e.event_type)
                    .bind(&e.account)
                    .bind(&e.payment_id)
                    .bind(&e.outcome)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                    if inserted.rows_affected() == 0 {
                        tx.rollback().await?;
                        return Ok(Committed::Duplicate);
                    }
                    true
                }
                Write::Payment { payment: p, expected_version } => {
                    let q = sqlx::query(UPDATE_PAYMENT);
                    let done = bind_payment_fields!(q, p).bind(&p.id).bind(*expected_version).execute(&mut *tx).await?;
                    done.rows_affected() == 1
                }
                Write::Clinic { id, change } => {
                    let (landed, did) = clinic_change(&mut tx, id, change).await?;
                    did_change = Some(did);
                    landed
                }
                Write::Event { event, if_changed } => {
                    if changed || !*if_changed {
                        super::outbox::insert_event(&mut tx, event).await?;
                    }
                    // Several events may describe one change.
                    did_change = Some(changed);
                    true
                }
                Write::UpsertClinic(c) => {
                    upsert_clinic(&mut tx, c).await?;
                    true
                }
                Write::UpsertOrg(o) => {
                    upsert_org(&mut tx, o).await?;
                    true
                }
                Write::NewEnablement(e) => {
                    insert_enablement(&mut tx, e).await?;
                    true
                }
                Write::Decision(e) => decide_enablement(&mut tx, e).await?,
                Write::NewRefund { refund, limit } => insert_refund(&mut tx, refund, *limit).await?,
                Write::RefundSeen(r) => {
                    refund_seen(&mut tx, r).await?;
                    true
                }
                Write::RefundNotSent { id, at } => {
                    let done = sqlx::query(
                        "UPDATE refunds SET status = 'canceled', failure_reason = 'not_sent', updated_at = $1 \
                         WHERE id = $2 AND status = 'pending' AND stripe_refund_id IS NULL",
                    )
                    .bind(at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    done.rows_affected() == 1
                }
                Write::Audit(e) => {
                    insert_audit(&mut tx, e).await?;
                    true
                }
                Write::QueueReceipt { payment_id, clinic_id } => {
                    let at = now_ms();
                    sqlx::query(
                        "INSERT INTO receipt_outbox (payment_id, clinic_id, status, attempts, next_attempt_at, created_at) \
                         VALUES ($1, $2, 'pending', 0, $3, $3) ON CONFLICT (payment_id) DO NOTHING",
                    )
                    .bind(payment_id)
                    .bind(clinic_id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                    true
                }
            };
            if !landed {
                tx.rollback().await?;
                return Ok(Committed::Conflict);
            }
            changed = did_change.unwrap_or(true);
        }
        tx.commit().await?;
        Ok(Committed::Applied)
    }

    async fn clinics(&self, ids: &[String]) -> StoreResult<Vec<Clinic>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_LIST_MAX) {
            let sql = format!("SELECT * FROM clinics WHERE id IN ({})", placeholders(chunk.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await? {
                found.push(clinic_from(&row)?);
            }
        }
        Ok(found)
    }

    async fn payments_for_calls(&self, call_ids: &[String]) -> StoreResult<Vec<Payment>> {
        let mut found = Vec::new();
        // Each call once: the lateral form would read a call asked twice twice.
        let mut seen = std::collections::HashSet::with_capacity(call_ids.len());
        let call_ids: Vec<&String> = call_ids.iter().filter(|c| seen.insert(c.as_str())).collect();
        for chunk in call_ids.chunks(IN_LIST_MAX) {
            let sql = if self.postgres {
                let asked: Vec<String> = (1..=chunk.len()).map(|i| format!("(${i})")).collect();
                format!(
                    "SELECT p.* FROM (VALUES {}) AS q JOIN {} ORDER BY p.created_at, p.id",
                    asked.join(", "),
                    payments_of_call("q.column1", true)
                )
            } else {
                format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE call_id IN ({}) ORDER BY created_at, id",
                    placeholders(chunk.len())
                )
            };
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await? {
                found.push(payment_from(&row)?);
            }
        }
        // Each chunk is in order; so is their concatenation per call, which is what callers use.
        Ok(found)
    }

    async fn org(&self, id: &str) -> StoreResult<Option<Org>> {
        let row = sqlx::query("SELECT id, name FROM orgs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        Ok(match row {
            Some(r) => Some(Org { id: r.try_get("id")?, name: r.try_get("name")? }),
            None => None,
        })
    }

    async fn clinics_for_org(&self, org_id: &str) -> StoreResult<Vec<Clinic>> {
        let rows = sqlx::query("SELECT * FROM clinics WHERE org_id = $1 ORDER BY id")
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(clinic_from).collect()
    }

    async fn enablement(&self, id: &str) -> StoreResult<Option<Enablement>> {
        let row =
            sqlx::query("SELECT * FROM enablement_requests WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(enablement_from).transpose()
    }

    async fn enablements(&self, org_id: Option<&str>, status: Option<&str>) -> StoreResult<Vec<Enablement>> {
        // Each filter is either absent or an exact match: an empty string matches nothing
        // rather than meaning "every organisation".
        let mut sql = String::from("SELECT * FROM enablement_requests WHERE 1 = 1");
        let mut binds = Vec::new();
        if let Some(org) = org_id {
            binds.push(org);
            sql.push_str(&format!(" AND org_id = ${}", binds.len()));
        }
        if let Some(st) = status {
            binds.push(st);
            sql.push_str(&format!(" AND status = ${}", binds.len()));
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(enablement_from).collect()
    }

    async fn insert_oauth_state(&self, s: &OAuthState, max_live: usize) -> StoreResult<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
            .bind(now - OAUTH_STATE_RETENTION_MS)
            .execute(&mut *tx)
            .await?;
        let live: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM oauth_states WHERE clinic_id = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(&s.clinic_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if live >= max_live as i64 {
            tx.commit().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO oauth_states (state, clinic_id, admin_id, admin_name, admin_role, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.state)
        .bind(&s.clinic_id)
        .bind(&s.admin_id)
        .bind(&s.admin_name)
        .bind(&s.admin_role)
        .bind(s.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn take_oauth_state(&self, state: &str) -> StoreResult<StateTaken> {
        // The conditional UPDATE is the single-use guarantee: of two concurrent callbacks with
        // the same state, exactly one changes the row.
        let claimed = sqlx::query("UPDATE oauth_states SET used_at = $1 WHERE state = $2 AND used_at IS NULL")
            .bind(now_ms())
            .bind(state)
            .execute(&self.pool)
            .await?;
        let row =
            sqlx::query("SELECT * FROM oauth_states WHERE state = $1").bind(state).fetch_optional(&self.pool).await?;
        Ok(match (row, claimed.rows_affected()) {
            (None, _) => StateTaken::Unknown,
            (Some(_), 0) => StateTaken::Reused,
            (Some(r), _) => StateTaken::Fresh(OAuthState {
                state: r.try_get("state")?,
                clinic_id: r.try_get("clinic_id")?,
                admin_id: r.try_get("admin_id")?,
                admin_name: r.try_get("admin_name")?,
                admin_role: r.try_get("admin_role")?,
                expires_at: r.try_get("expires_at")?,
            }),
        })
    }

    async fn payment_records(
        &self,
        scope: PaymentScope<'_>,
        filter: &PaymentFilter,
        limit: i64,
        before: Option<(i64, String)>,
    ) -> StoreResult<Vec<Payment>> {
        // Every filter is a bound value; the statement is composed from constants only.
        enum Bind<'a> {
            Int(i64),
            Text(&'a str),
        }
        let (owner, mut sql) = match scope {
            PaymentScope::Clinic(id) => (id, format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE clinic_id = $1")),
            // A sub-select, not an IN-list: an organisation's clinics are never bound one by one.
            PaymentScope::Org(id) => (
                id,
                format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE clinic_id IN (SELECT id FROM clinics WHERE org_id = $1)"
                ),
            ),
        };
        let mut binds = vec![Bind::Text(owner)];
        // `$?` in a clause becomes the placeholder of the value just pushed.
        let push = |sql: &mut String, clause: &str, n: usize| sql.push_str(&clause.replace("$?", &format!("${n}")));
        if let Some(from) = filter.from_ms {
            binds.push(Bind::Int(from));
            push(&mut sql, " AND created_at >= $?", binds.len());
        }
        if let Some(to) = filter.to_ms {
            binds.push(Bind::Int(to));
            push(&mut sql, " AND created_at < $?", binds.len());
        }
        if let Some(status) = filter.status {
            binds.push(Bind::Text(status_str(status)));
            push(&mut sql, " AND status = $?", binds.len());
        }
        if let Some(who) = filter.requested_by_id.as_deref() {
            binds.push(Bind::Text(who));
            push(&mut sql, " AND requested_by_id = $?", binds.len());
        }
        if let Some(call) = filter.call_id.as_deref() {
            binds.push(Bind::Text(call));
            push(&mut sql, " AND call_id = $?", binds.len());
        }
        if let Some(clinic) = filter.clinic_id.as_deref() {
            binds.push(Bind::Text(clinic));
            push(&mut sql, " AND clinic_id = $?", binds.len());
        }
        // Keyset pagination on (created_at, id), as the audit log pages on (at, id).
        if let Some((at, id)) = &before {
            binds.push(Bind::Int(*at));
            let n = binds.len();
            binds.push(Bind::Text(id));
            sql.push_str(&format!(" AND (created_at < ${n} OR (created_at = ${n} AND id < ${}))", n + 1));
        }
        binds.push(Bind::Int(limit));
        sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${}", binds.len()));
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            q = match b {
                Bind::Int(v) => q.bind(v),
                Bind::Text(v) => q.bind(v),
            };
        }
        q.fetch_all(&self.pool).await?.iter().map(payment_from).collect()
    }

    async fn payments_created_between(
        &self,
        clinic_ids: &[String],
        from_ms: i64,
        to_ms: i64,
    ) -> StoreResult<Vec<Payment>> {
        let mut found = Vec::new();
        for chunk in clinic_ids.chunks(IN_LIST_MAX) {
            // The clinic ids take $3 onwards; the statement is composed from constants only.
            let list = (3..3 + chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE created_at >= $1 AND created_at < $2 AND clinic_id IN ({list}) \
                 ORDER BY created_at, id"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(from_ms).bind(to_ms);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await? {
                found.push(payment_from(&row)?);
            }
        }
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(found)
    }

    async fn refunds_for_payment(&self, payment_id: &str) -> StoreResult<Vec<Refund>> {
        let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY created_at, id");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(payment_id).fetch_all(&self.pool).await?;
        rows.iter().map(refund_from).collect()
    }

    async fn refund_by_key(&self, payment_id: &str, request_key: &str) -> StoreResult<Option<Refund>> {
        let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 AND request_key = $2");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(payment_id).bind(request_key).fetch_optional(&self.pool).await?;
        row.as_ref().map(refund_from).transpose()
    }

    async fn payments_changed_since(&self, since_ms: i64, after_id: &str, limit: i64) -> StoreResult<Vec<Payment>> {
        // `updated_at >= $1` on its own, so the index on `updated_at` bounds the read; the tie
        // on `since_ms` is settled by id.
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE updated_at >= $1 AND (updated_at > $1 OR id > $2) \
             ORDER BY updated_at, id LIMIT $3"
        );
        let rows =
            sqlx::query(AssertSqlSafe(sql)).bind(since_ms).bind(after_id).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(payment_from).collect()
    }

    async fn unsent_refunds(&self, before_ms: i64, limit: i64) -> StoreResult<Vec<Refund>> {
        let sql = format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE status = 'pending' AND stripe_refund_id IS NULL \
             AND updated_at < $1 ORDER BY updated_at, id LIMIT $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(before_ms).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(refund_from).collect()
    }

    async fn audit_for_target(&self, clinic_id: &str, target: &str, limit: i64) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE target = $1 AND clinic_id = $2 ORDER BY at, id LIMIT $3")
            .bind(target)
            .bind(clinic_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from).collect()
    }

    async fn audit_for_clinic(
        &self,
        clinic_id: &str,
        limit: i64,
        before: Option<(i64, String)>,
        with_money: bool,
    ) -> StoreResult<Vec<AuditEntry>> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        // Keyset pagination on (at, id): stable under concurrent appends.
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE clinic_id = $1 AND (at < $2 OR (at = $2 AND id < $3) OR ($3 = '' AND at <= $2)) \
             AND ($5 = 1 OR (action NOT LIKE 'payment.%' AND action NOT LIKE 'refund.%')) \
             ORDER BY at DESC, id DESC LIMIT $4",
        )
        .bind(clinic_id)
        .bind(at)
        .bind(&id)
        .bind(limit)
        .bind(i64::from(with_money))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from).collect()
    }

    async fn set_payment_lang(&self, payment_id: &str, lang: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO payment_langs (payment_id, lang, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (payment_id) DO UPDATE SET lang = excluded.lang, updated_at = excluded.updated_at",
        )
        .bind(payment_id)
        .bind(lang)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn payment_lang(&self, payment_id: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT lang FROM payment_langs WHERE payment_id = $1")
            .bind(payment_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn due_receipts(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<ReceiptJob>> {
        let rows = sqlx::query(
            "SELECT * FROM receipt_outbox WHERE status = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, payment_id LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(receipt_from).collect()
    }

    async fn claim_receipt(
        &self,
        payment_id: &str,
        seen_next_at: i64,
        lease_until: i64,
        claim: &str,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE receipt_outbox SET next_attempt_at = $1, attempts = attempts + 1, claim_token = $2 \
             WHERE payment_id = $3 AND status = 'pending' AND next_attempt_at = $4",
        )
        .bind(lease_until)
        .bind(claim)
        .bind(payment_id)
        .bind(seen_next_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_receipt(
        &self,
        payment_id: &str,
        claim: &str,
        outcome: &ReceiptOutcome,
        at: i64,
    ) -> StoreResult<bool> {
        let (status, next, error, sent) = match outcome {
            ReceiptOutcome::Sent => ("sent", at, None, Some(at)),
            ReceiptOutcome::Retry { at: next, error } => ("pending", *next, Some(error.as_str()), None),
            ReceiptOutcome::Failed(error) => ("failed", at, Some(error.as_str()), None),
            ReceiptOutcome::Skipped(why) => ("skipped", at, Some(why.as_str()), None),
        };
        // The claim ends with its finish (NULL never equals a token), so a finish lands once.
        let done = sqlx::query(
            "UPDATE receipt_outbox SET status = $1, next_attempt_at = $2, last_error = $3, sent_at = $4, \
             claim_token = NULL WHERE payment_id = $5 AND status = 'pending' AND claim_token = $6",
        )
        .bind(status)
        .bind(next)
        .bind(error)
        .bind(sent)
        .bind(payment_id)
        .bind(claim)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn receipt(&self, payment_id: &str) -> StoreResult<Option<ReceiptJob>> {
        let row = sqlx::query("SELECT * FROM receipt_outbox WHERE payment_id = $1")
            .bind(payment_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(receipt_from).transpose()
    }
}

fn receipt_from(r: &AnyRow) -> StoreResult<ReceiptJob> {
    Ok(ReceiptJob {
        payment_id: r.try_get("payment_id")?,
        clinic_id: r.try_get("clinic_id")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        sent_at: r.try_get("sent_at")?,
    })
}

const REFUND_COLUMNS: &str = "id, payment_id, clinic_id, amount, currency, reason, note, status, stripe_refund_id, \
    failure_reason, source, request_key, requested_by_id, requested_by_name, requested_by_role, created_at, updated_at";

/// Statuses a refund never leaves.
const REFUND_FINAL: &str = "('failed', 'canceled', 'refused')";

fn refund_from(r: &AnyRow) -> StoreResult<Refund> {
    Ok(Refund {
        id: r.try_get("id")?,
        payment_id: r.try_get("payment_id")?,
        clinic_id: r.try_get("clinic_id")?,
        amount: r.try_get("amount")?,
        currency: r.try_get("currency")?,
        reason: r.try_get("reason")?,
        note: r.try_get("note")?,
        status: r.try_get("status")?,
        stripe_refund_id: r.try_get("stripe_refund_id")?,
        failure_reason: r.try_get("failure_reason")?,
        source: r.try_get("source")?,
        request_key: r.try_get("request_key")?,
        requested_by_id: r.try_get("requested_by_id")?,
        requested_by_name: r.try_get("requested_by_name")?,
        requested_by_role: r.try_get("requested_by_role")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

async fn insert_refund_row(tx: &mut Tx, r: &Refund, limit: Option<i64>) -> StoreResult<bool> {
    // Only when what is pending or refunded, with this one, fits; never a second row for one
    // form's key (ON CONFLICT DO NOTHING: a double click inserts nothing the second time).
    let sql = format!(
        "INSERT INTO refunds ({REFUND_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 \
         WHERE $18 < 0 OR (SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE payment_id = $2 AND status IN ('pending', 'succeeded')) + $4 <= $18 \
         ON CONFLICT DO NOTHING"
    );
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(&r.id)
        .bind(&r.payment_id)
        .bind(&r.clinic_id)
        .bind(r.amount)
        .bind(&r.currency)
        .bind(&r.reason)
        .bind(&r.note)
        .bind(&r.status)
        .bind(&r.stripe_refund_id)
        .bind(&r.failure_reason)
        .bind(&r.source)
        .bind(&r.request_key)
        .bind(&r.requested_by_id)
        .bind(&r.requested_by_name)
        .bind(&r.requested_by_role)
        .bind(r.created_at)
        .bind(r.updated_at)
        .bind(limit.unwrap_or(-1))
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn insert_refund(tx: &mut Tx, r: &Refund, limit: i64) -> StoreResult<bool> {
    // Locks the payment's row (PostgreSQL) or the database (SQLite) for the rest of the
    // transaction: a concurrent refund of the same payment waits, then sees this one in the sum.
    sqlx::query("UPDATE payments SET version = version WHERE id = $1").bind(&r.payment_id).execute(&mut **tx).await?;
    insert_refund_row(tx, r, Some(limit)).await
}

async fn refund_seen(tx: &mut Tx, r: &Refund) -> StoreResult<()> {
    // A final status stays; a succeeded refund only moves on to a final one (Stripe can fail a
    // refund after it succeeded), never back to pending by a late event. Only a refund of the
    // same payment matches: ids named in metadata are never trusted across payments.
    let update = |by: &'static str| {
        format!(
            "UPDATE refunds SET stripe_refund_id = COALESCE(stripe_refund_id, $1), \
             status = CASE WHEN status IN {REFUND_FINAL} THEN status \
                 WHEN status = 'succeeded' AND $2 NOT IN {REFUND_FINAL} THEN status ELSE $2 END, \
             failure_reason = CASE WHEN status IN {REFUND_FINAL} THEN failure_reason \
                 WHEN status = 'succeeded' AND $2 NOT IN {REFUND_FINAL} THEN failure_reason ELSE $3 END, \
             updated_at = $4 WHERE {by} = $5 AND payment_id = $6"
        )
    };
    let mut found = false;
    if r.source == "callpay" {
        let done = sqlx::query(AssertSqlSafe(update("id")))
            .bind(&r.stripe_refund_id)
            .bind(&r.status)
            .bind(&r.failure_reason)
            .bind(r.updated_at)
            .bind(&r.id)
            .bind(&r.payment_id)
            .execute(&mut **tx)
            .await?;
        found = done.rows_affected() > 0;
    }
    if !found && let Some(stripe_id) = &r.stripe_refund_id {
        let done = sqlx::query(AssertSqlSafe(update("stripe_refund_id")))
            .bind(stripe_id)
            .bind(&r.status)
            .bind(&r.failure_reason)
            .bind(r.updated_at)
            .bind(stripe_id)
            .bind(&r.payment_id)
            .execute(&mut **tx)
            .await?;
        found = done.rows_affected() > 0;
    }
    if !found {
        insert_refund_row(tx, r, None).await?;
    }
    Ok(())
}

fn audit_from(r: &AnyRow) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        org_id: r.try_get("org_id")?,
        clinic_id: r.try_get("clinic_id")?,
        actor_id: r.try_get("actor_id")?,
        actor_name: r.try_get("actor_name")?,
        actor_role: r.try_get("actor_role")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        outcome: r.try_get("outcome")?,
        detail: r.try_get("detail")?,
    })
}

fn enablement_from(r: &AnyRow) -> StoreResult<Enablement> {
    Ok(Enablement {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        clinic_id: r.try_get("clinic_id")?,
        ticket_ref: r.try_get("ticket_ref")?,
        requested_by: r.try_get("requested_by")?,
        requested_by_name: r.try_get("requested_by_name")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        decided_by: r.try_get("decided_by")?,
        created_at: r.try_get("created_at")?,
        decided_at: r.try_get("decided_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WebhookRecord;

    pub(crate) fn sample(id: &str, call: &str, client_ref: &str) -> Payment {
        Payment {
            id: id.into(),
            call_id: call.into(),
            clinic_id: "clinic_1".into(),
            client_ref: client_ref.into(),
            amount: 5000,
            currency: "aud".into(),
            stripe_account: "acct_1".into(),
            created_at: now_ms(),
            updated_at: now_ms(),
            ..Payment::default()
        }
    }

    #[tokio::test]
    async fn payments_are_unique_per_call_and_ref_and_updates_are_versioned() {
        let store = SqlStore::connect("sqlite::memory:").await.unwrap();
        let p = sample("pay_1", "call_1", "ref_1");
        assert!(matches!(store.insert_payment(&p).await.unwrap(), Inserted::New));
        let again = sample("pay_2", "call_1", "ref_1");
        match store.insert_payment(&again).await.unwrap() {
            Inserted::Existing(existing) => assert_eq!(existing.id, "pay_1"),
            Inserted::New => panic!("duplicate client_ref inserted"),
        }
        let mut next = p.clone();
        next.status = PaymentStatus::Requested;
        next.version = 2;
        next.payment_intent_id = Some("pi_1".into());
        let write = [Write::Payment { payment: Box::new(next.clone()), expected_version: 1 }];
        assert_eq!(store.commit(&write).await.unwrap(), Committed::Applied);
        assert_eq!(store.commit(&write).await.unwrap(), Committed::Conflict, "stale version is refused");
        let loaded = store.payment_by_intent("pi_1").await.unwrap().unwrap();
        assert_eq!(loaded, next);
        assert_eq!(store.payments_for_call("call_1").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn webhook_events_are_recorded_once_with_their_update() {
        let store = SqlStore::connect("sqlite::memory:").await.unwrap();
        let p = sample("pay_1", "call_1", "ref_1");
        store.insert_payment(&p).await.unwrap();
        let mut paid = p.clone();
        paid.status = PaymentStatus::Succeeded;
        paid.version = 2;
        let rec = WebhookRecord {
            event_id: "evt_1".into(),
            event_type: "payment_intent.succeeded".into(),
            account: Some("acct_1".into()),
            payment_id: Some("pay_1".into()),
            outcome: "applied".into(),
        };
        let batch = |rec: &WebhookRecord, expected_version| {
            [Write::Webhook(rec.clone()), Write::Payment { payment: Box::new(paid.clone()), expected_version }]
        };
        assert_eq!(store.commit(&batch(&rec, 1)).await.unwrap(), Committed::Applied);
        assert_eq!(store.commit(&batch(&rec, 2)).await.unwrap(), Committed::Duplicate);
        assert!(store.webhook_seen("evt_1").await.unwrap());
        // A conflicting version writes nothing, not even the event id, so a retry can apply it.
        let rec2 = WebhookRecord { event_id: "evt_2".into(), ..rec.clone() };
        assert_eq!(store.commit(&batch(&rec2, 1)).await.unwrap(), Committed::Conflict);
        assert!(!store.webhook_seen("evt_2").await.unwrap());
        assert_eq!(store.payment("pay_1").await.unwrap().unwrap().status, PaymentStatus::Succeeded);
    }

    #[tokio::test]
    async fn a_file_database_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("callpay-store-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("callpay.db").display());
        {
            let store = SqlStore::connect(&url).await.unwrap();
            store.insert_payment(&sample("pay_1", "call_1", "r")).await.unwrap();
            store.close().await;
        }
        let store = SqlStore::connect(&url).await.unwrap();
        assert!(store.payment("pay_1").await.unwrap().is_some());
        std::fs::remove_dir_all(&dir).ok();
    }
}

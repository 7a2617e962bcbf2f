//! `callpay demo`: the whole product on one machine with nothing to install. It starts the
//! Stripe simulator in-process, the hub on SQLite under a data directory, seeds a demo
//! organisation and clinic (app enabled, linked to a simulated Stripe account), mints a
//! clinician and a patient join token for a fresh call, and prints what to open plus one
//! `CALLPAY_DEMO {json}` line for scripts.

use crate::admin::authz::AdminRole;
use crate::app::{Dependencies, node_id};
use crate::auth::{JoinClaims, now_secs, sign_hs256};
use crate::bus::{MemoryBus, RedisBus};
use crate::config::{Config, Secret};
use crate::ids::random_id;
use crate::payments::stripe::StripeGateway;
use crate::server::App;
use crate::store::{Clinic, ClinicChange, SqlStore, Store, StripeLink, Write, now_ms};
use anyhow::Context;
use callpay_protocol::Role;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Demo join tokens last a working day.
const TOKEN_TTL_SECS: u64 = 12 * 3600;
/// The seeded clinic.
pub const DEMO_CLINIC: &str = "clinic_demo";
/// The seeded organisation.
pub const DEMO_ORG: &str = "org_demo";

/// What a running demo exposes, for tests and the printed line.
pub struct DemoInfo {
    /// The hub's base URL.
    pub hub_url: String,
    /// The simulator's base URL.
    pub stripe_url: String,
    /// The call the tokens are for.
    pub call_id: String,
    /// Clinician join token.
    pub clinician_token: String,
    /// Patient join token.
    pub patient_token: String,
    /// HS256 secret the demo "platform" signs tokens with.
    pub platform_secret: String,
    /// The demo's random webhook signing secret (load tests sign their own events with it).
    pub webhook_secret: String,
    /// The simulator's platform secret key (its `/_sim/faults` control takes it).
    pub stripe_secret_key: String,
    /// Admin token of the demo organisation's admin.
    pub org_admin_token: String,
    /// Admin token of the demo clinic's admin.
    pub clinic_admin_token: String,
    /// Admin token of the platform operator (service desk).
    pub operator_token: String,
}

/// Signs an admin token the way the platform would.
pub fn admin_token(
    secret: &str,
    sub: &str,
    name: &str,
    role: crate::admin::authz::AdminRole,
    org_id: Option<&str>,
    clinic_ids: &[&str],
) -> String {
    let claims = crate::admin::authz::AdminClaims {
        typ: crate::auth::ADMIN_TYP.into(),
        sub: sub.into(),
        name: name.into(),
        role,
        org_id: org_id.map(str::to_owned),
        clinic_ids: clinic_ids.iter().map(|c| (*c).to_owned()).collect(),
        exp: now_secs() + TOKEN_TTL_SECS,
    };
    sign_hs256(secret, &claims)
}

/// A started demo: the app (not yet running), the simulator handle and what to print.
pub struct Demo {
    /// The hub, bound.
    pub app: App,
    /// The simulator (kept alive by holding it).
    pub sim: stripe_sim::SimHandle,
    /// URLs and tokens.
    pub info: DemoInfo,
    /// Where callpay's own receipts go in the demo (shown on `/demo/mailbox`).
    pub mailbox: Arc<crate::mail::MemoryMailbox>,
}

/// Points the Stripe settings at a running simulator: its keys, API, Connect OAuth and Stripe.js
/// stand-in, and the webhook secret it signs with.
pub fn use_simulator(config: &mut Config, sim: &stripe_sim::SimHandle, webhook_secret: &str) {
    config.stripe.secret_key = Secret::new(sim.secret_key());
    config.stripe.publishable_key = sim.publishable_key().to_owned();
    config.stripe.client_id = sim.client_id().to_owned();
    config.stripe.api_base = sim.url.clone();
    config.stripe.connect_base = sim.url.clone();
    config.stripe.js_url = format!("{}{}", sim.url.trim_end_matches('/'), sim.sim.config().stripe_js_path);
    config.stripe.dashboard_url = format!("{}/dashboard", sim.url.trim_end_matches('/'));
    config.stripe.webhook_secrets = vec![Secret::new(webhook_secret)];
}

/// Seeds the demo organisation and clinic: the app enabled and linked to a new simulated Stripe
/// account (as if a clinic admin had done it). Returns the account id.
pub async fn seed(store: &dyn Store, sim: &stripe_sim::SimHandle) -> Result<String, crate::store::StoreError> {
    let account = sim
        .sim
        .with_world(|w| w.create_account(Some("reception@harbour.example"), Some("Harbour Clinic"), "AU", "aud", true));
    let clinic =
        Clinic { id: DEMO_CLINIC.into(), org_id: DEMO_ORG.into(), name: "Harbour Clinic".into(), ..Clinic::default() };
    // Enable and link explicitly: on a store kept from an earlier run the clinic exists, and
    // this run's simulator has a new account.
    let link = StripeLink {
        account: account.clone(),
        publishable_key: None,
        display_name: Some("Harbour Clinic".into()),
        livemode: false,
        linked_by: "demo seed".into(),
        linked_at: now_ms(),
    };
    store
        .commit(&[
            Write::UpsertOrg(crate::store::Org { id: DEMO_ORG.into(), name: "Harbour Health".into() }),
            Write::UpsertClinic(clinic),
            Write::Clinic { id: DEMO_CLINIC.into(), change: ClinicChange::SetEnabled(true) },
            Write::Clinic { id: DEMO_CLINIC.into(), change: ClinicChange::Link(link) },
        ])
        .await?;
    Ok(account)
}

/// Signs a join token the way the video-call platform would.
pub fn join_token(secret: &str, call_id: &str, clinic_id: &str, sub: &str, name: &str, role: Role) -> String {
    let claims = JoinClaims {
        typ: crate::auth::JOIN_TYP.into(),
        sub: sub.into(),
        call_id: call_id.into(),
        clinic_id: clinic_id.into(),
        role,
        name: name.into(),
        exp: now_secs() + TOKEN_TTL_SECS,
    };
    sign_hs256(secret, &claims)
}

/// Builds the demo: simulator, store under `data_dir` (or in memory when `None`), seeded clinic.
pub async fn start(data_dir: Option<PathBuf>, listen: SocketAddr) -> anyhow::Result<Demo> {
    start_with(data_dir, listen, stripe_sim::SimConfig::default(), |_| {}).await
}

/// [`start`] with simulator settings and a last word on the hub's configuration (tests use it
/// for fast webhook retries, small queues and short timeouts).
pub async fn start_with(
    data_dir: Option<PathBuf>,
    listen: SocketAddr,
    sim_config: stripe_sim::SimConfig,
    tweak: impl FnOnce(&mut Config),
) -> anyhow::Result<Demo> {
    start_wrapped(data_dir, listen, sim_config, tweak, |s| s).await
}

/// [`start_with`] with the store wrapped (tests inject store faults this way).
pub async fn start_wrapped(
    data_dir: Option<PathBuf>,
    listen: SocketAddr,
    sim_config: stripe_sim::SimConfig,
    tweak: impl FnOnce(&mut Config),
    wrap_store: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> anyhow::Result<Demo> {
    start_inner(data_dir, listen, sim_config, tweak, wrap_store, None).await
}

/// The demo as several hub instances in one process, one listener each, sharing the demo's
/// store and simulator and talking through the Redis at `redis_url`, as separate processes on
/// PostgreSQL would (Stripe's webhooks reach the first). Shows, and lets a browser test, what
/// crosses instances: a clinician on one and a patient on another, a Redis outage between them.
pub async fn start_several(
    data_dir: Option<PathBuf>,
    listen: SocketAddr,
    nodes: usize,
    redis_url: &str,
    tweak: impl Fn(&mut Config),
) -> anyhow::Result<(Demo, Vec<App>)> {
    let demo = start_inner(data_dir, listen, stripe_sim::SimConfig::default(), &tweak, |s| s, Some(redis_url)).await?;
    let mut more = Vec::new();
    for _ in 1..nodes.max(1) {
        let listener = crate::http::serve::bind(SocketAddr::new(listen.ip(), 0)).await?;
        let addr = listener.local_addr()?;
        let mut config = demo.app.state.config.as_ref().clone();
        config.server.listen = addr;
        config.server.public_url = Some(format!("http://{addr}"));
        tweak(&mut config);
        let node = node_id();
        let bus = Arc::new(RedisBus::connect(redis_url, node.clone()).await.context("connecting to Redis")?);
        let deps = Dependencies {
            outbox: demo.app.state.events.outbox(),
            store: demo.app.state.store.clone(),
            stripe: Arc::new(StripeGateway::new(&config.stripe)?),
            bus: bus.clone(),
            presence: bus,
            connect: Arc::new(crate::connect::StripeConnect::new(&config.stripe)),
            mailer: Some(demo.mailbox.clone()),
        };
        let mut app = App::build_on(listener, config, deps, node).await?;
        app.demo = demo.app.demo.clone();
        more.push(app);
    }
    Ok((demo, more))
}

async fn start_inner(
    data_dir: Option<PathBuf>,
    listen: SocketAddr,
    sim_config: stripe_sim::SimConfig,
    tweak: impl FnOnce(&mut Config),
    wrap_store: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    redis_url: Option<&str>,
) -> anyhow::Result<Demo> {
    let listener = crate::http::serve::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; choose another address with --listen 127.0.0.1:PORT"))?;
    let addr = listener.local_addr()?;
    let hub_url = format!("http://{addr}");
    let webhook_secret = format!("whsec_demo_{}", random_id());
    let sim = stripe_sim::spawn(stripe_sim::SimConfig {
        webhooks: vec![stripe_sim::WebhookTarget {
            url: format!("{hub_url}/v1/stripe/webhook"),
            secret: webhook_secret.clone(),
        }],
        platform_name: "callpay demo platform".into(),
        ..sim_config
    })
    .await
    .context("starting the Stripe simulator")?;

    let platform_secret = format!("demo-platform-secret-{}", random_id());
    let mut config = Config::default();
    config.server.listen = addr;
    config.server.public_url = Some(hub_url.clone());
    config.auth.secret = Secret::new(platform_secret.clone());
    config.database.url = match &data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            format!("sqlite://{}", dir.join("callpay.db").display())
        }
        None => "sqlite::memory:".into(),
    };
    use_simulator(&mut config, &sim, &webhook_secret);
    // The demo's event receivers (and the tests') run on this machine.
    config.events.allow_loopback = true;
    tweak(&mut config);
    config.validate_for_serve().context("demo configuration")?;

    let store = Arc::new(
        SqlStore::connect_with(&config.database.url, config.database.max_connections)
            .await
            .context("opening the demo database")?,
    );
    seed(store.as_ref(), &sim).await?;
    let node = node_id();
    let (bus, presence): (Arc<dyn crate::bus::Bus>, Arc<dyn crate::bus::PresenceStore>) = match redis_url {
        Some(url) => {
            let redis = Arc::new(RedisBus::connect(url, node.clone()).await.context("connecting to Redis")?);
            (redis.clone(), redis)
        }
        None => {
            let memory = Arc::new(MemoryBus::new(node.clone()));
            (memory.clone(), memory)
        }
    };
    let mailbox = Arc::new(crate::mail::MemoryMailbox::new());
    let deps = Dependencies {
        outbox: store.clone(),
        store: wrap_store(store),
        stripe: Arc::new(StripeGateway::new(&config.stripe)?),
        bus,
        presence,
        connect: Arc::new(crate::connect::StripeConnect::new(&config.stripe)),
        // A mail server set in the configuration (receipts.smtp_url) takes the receipts;
        // otherwise the demo mailbox does.
        mailer: Some(
            crate::mail::from_config(&config.receipts).context("receipts.smtp_url")?.unwrap_or(mailbox.clone()),
        ),
    };
    let call_id = format!("demo-call-{}", &random_id()[..8]);
    let info = DemoInfo {
        clinician_token: join_token(
            &platform_secret,
            &call_id,
            DEMO_CLINIC,
            "clinician-ada",
            "Dr Ada Lee",
            Role::Clinician,
        ),
        patient_token: join_token(&platform_secret, &call_id, DEMO_CLINIC, "patient-sam", "Sam Taylor", Role::Patient),
        hub_url,
        stripe_url: sim.url.trim_end_matches('/').to_owned(),
        call_id,
        webhook_secret: webhook_secret.clone(),
        stripe_secret_key: sim.secret_key().to_owned(),
        org_admin_token: admin_token(
            &platform_secret,
            "admin-olivia",
            "Olivia (org admin)",
            AdminRole::OrgAdmin,
            Some(DEMO_ORG),
            &[],
        ),
        clinic_admin_token: admin_token(
            &platform_secret,
            "admin-cam",
            "Cam (clinic admin)",
            AdminRole::TeamAdmin,
            None,
            &[DEMO_CLINIC],
        ),
        operator_token: admin_token(
            &platform_secret,
            "desk-pat",
            "Pat (service desk)",
            AdminRole::PlatformOperator,
            None,
            &[],
        ),
        platform_secret,
    };
    let mut app = App::build_on(listener, config, deps, node).await?;
    app.demo = Some(crate::http::web::DemoLinks {
        call_id: info.call_id.clone(),
        clinician_token: info.clinician_token.clone(),
        patient_token: info.patient_token.clone(),
        clinic_admin_token: info.clinic_admin_token.clone(),
        clinic_id: DEMO_CLINIC.into(),
        stripe_dashboard: format!("{}/dashboard", info.stripe_url),
        mailbox: mailbox.clone(),
    });
    Ok(Demo { app, sim, info, mailbox })
}

/// `callpay demo`: starts, prints, runs until Ctrl-C. `settings` come from `--config` and the
/// environment as for `serve`; the demo keeps its own auth, database, Stripe and bus, and takes
/// the server (limits, timeouts) and payments settings from them. With `several` (instances and
/// a Redis URL) it runs that many hub instances over that Redis ([`start_several`]).
pub async fn run(
    data_dir: PathBuf,
    listen: Option<SocketAddr>,
    settings: Config,
    several: Option<(usize, String)>,
) -> anyhow::Result<()> {
    let listen = listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let tweak = |c: &mut Config| {
        c.server = crate::config::ServerConfig {
            listen: c.server.listen,
            public_url: c.server.public_url.clone(),
            ..settings.server.clone()
        };
        c.payments = settings.payments.clone();
    };
    let (demo, more) = match &several {
        Some((nodes, redis)) => start_several(Some(data_dir), listen, *nodes, redis, tweak).await?,
        None => (start_with(Some(data_dir), listen, stripe_sim::SimConfig::default(), tweak).await?, Vec::new()),
    };
    // The demo clinic sends callpay's own receipt too, into the demo mailbox (`/demo/mailbox`).
    demo.app
        .state
        .store
        .commit(&[Write::Clinic { id: DEMO_CLINIC.into(), change: ClinicChange::SetOwnReceipts(true) }])
        .await
        .context("turning on the demo clinic's own receipts")?;
    let hub_urls: Vec<String> =
        std::iter::once(demo.info.hub_url.clone()).chain(more.iter().map(|a| format!("http://{}", a.addr()))).collect();
    let i = &demo.info;
    println!("callpay demo is running (Ctrl-C to stop)");
    println!("  open the demo call: {}/demo", i.hub_url);
    println!(
        "  clinic admin page:  {}/admin/client-payment?clinic={DEMO_CLINIC}#token={}",
        i.hub_url, i.clinic_admin_token
    );
    println!("  hub:                {}", hub_urls.join(", "));
    println!("  stripe simulator:   {}/dashboard", i.stripe_url);
    println!("  demo mailbox:       {}/demo/mailbox", i.hub_url);
    println!("  call:               {}", i.call_id);
    println!("  clinician token:    {}", i.clinician_token);
    println!("  patient token:      {}", i.patient_token);
    println!("  clinic admin token: {}", i.clinic_admin_token);
    println!("  org admin token:    {}", i.org_admin_token);
    println!("  operator token:     {}", i.operator_token);
    println!(
        "CALLPAY_DEMO {}",
        json!({
            "hub_url": i.hub_url,
            "hub_urls": hub_urls,
            "stripe_url": i.stripe_url,
            "clinician_token": i.clinician_token,
            "patient_token": i.patient_token,
            "call_id": i.call_id,
            "clinic_id": DEMO_CLINIC,
            "clinic_admin_token": i.clinic_admin_token,
            "org_admin_token": i.org_admin_token,
            "operator_token": i.operator_token,
            // Demo-only random secrets: load tests mint join tokens and sign webhook events.
            "platform_secret": i.platform_secret,
            "webhook_secret": i.webhook_secret,
            "stripe_secret_key": i.stripe_secret_key,
        })
    );
    crate::shutdown::on_signal(demo.app.state.shutdown.clone(), demo.app.state.drain_hurry.clone());
    for app in &more {
        crate::shutdown::on_signal(app.state.shutdown.clone(), app.state.drain_hurry.clone());
    }
    let _sim = demo.sim;
    let runs = std::iter::once(demo.app).chain(more).map(App::run_until_stopped);
    futures_util::future::try_join_all(runs).await.map(drop)
}

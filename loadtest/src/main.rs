//! callpay load tests. Each scenario starts `callpay demo` as a separate process on loopback
//! (so the hub and the load generator do not share a file-descriptor limit), drives it, stops by
//! itself after a bounded number of operations, and prints a human summary plus one
//! `LOADTEST {json}` line.
//!
//! Scenarios:
//! - `relay`: N calls, each a clinician and a patient with one open payment; every patient sends
//!   `payment.progress` at a fixed rate and we time until its clinician receives it.
//! - `payments`: N calls run the whole flow concurrently: request -> patient sees it -> pay with
//!   4242 through the simulator's API (as Stripe.js would) -> both sides get `payment.confirmed`.
//! - `connections`: opens N idle sockets to one hub (in one call per 10 sockets) and measures how
//!   long the upgrades take and how long a clinic-wide event takes to reach all of them.
//! - `cluster-relay` / `cluster-payments`: the same as `relay` / `payments`, but against two
//!   `callpay serve` processes sharing a fresh PostgreSQL database and Redis (127.0.0.1:5432 and
//!   :6379), with every clinician on node 0 and every patient on node 1, so every event crosses
//!   Redis. The Stripe simulator runs inside the load generator; its webhooks go to node 0.
//! - `confirm` / `cluster-confirm`: webhook to pop-up latency (see [`confirm`]).
//! - `abuse`: rounds of hostile sockets (junk, binary and oversized frames, floods) that then
//!   close, reporting the hub's RSS after each round: memory must level off, not grow per round.
//! - `drain`: a drained instance's clients moving to the others (see [`drain`]).
//! - `scale` / `soak`: many instances behind nginx with clients in worker processes, under
//!   faults or churn, with a timeline (see [`scale`]).
//! - `compare relay|cluster-relay|idle`: callpay and a Socket.IO 4.8 relay side by side under
//!   the same open-loop load (see [`compare`]).

mod chart;
mod cluster;
mod compare;
mod confirm;
mod drain;
mod fleet;
mod netstat;
mod scale;

use anyhow::{Context, bail};
use bytes::Bytes;
use callpay::demo::join_token;
use callpay_protocol::Role;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const USAGE: &str = "usage: callpay-loadtest SCENARIO [--calls N] [--rounds N] [--hub BIN]
  relay             patient -> clinician relay latency (default 200 calls x 20 rounds at 4/s)
  payments          full payment flow latency (default 50 calls); --lost-webhooks: no webhook is
                    delivered and the patient reports `submitted` (the hub's verify path)
  connections       idle sockets and a clinic-wide broadcast (default 2000 sockets)
  cluster-relay     relay across two instances over Redis + PostgreSQL
  cluster-payments  payments across two instances over Redis + PostgreSQL
  confirm           signed payment_intent.succeeded webhooks at --rate/s (default 500) until the
                    clinician's payment.confirmed (default 2000 calls)
  cluster-confirm   the same across two instances (webhooks to one, clinicians on the other)
  abuse             --rounds of --calls hostile sockets each (defaults 10 x 1000); hub RSS per round
  drain             --sockets N (default 19000) on instance 0 of --nodes K (default 3) serve
                    instances; SIGTERM to instance 0; time until every client is back elsewhere;
                    --nginx: every client through nginx (as in scale), the others started once
                    all are on instance 0
  scale             --sockets N (default 100000) over --nodes K (default 5) serve instances behind
                    nginx: --relay events/s (2000) and --pays a minute (100); after --steady
                    seconds (30), a rolling restart, Redis stopped for --outage seconds (10) and
                    one instance killed, each followed by --steady seconds
  soak              --seconds S (1800) of --churn leaves and joins a second (200), --relay (2000),
                    --pays (60) on --nodes K (1) with --sockets N (10000); growth after --warmup
                    seconds (300) must stay within bounds
  compare relay|cluster-relay|idle
                    callpay and Socket.IO 4.8 back to back under the same open-loop load
    --calls N         calls (2 sockets each; default 2000)
    --rates A,B,..    aggregate events/s (default 1000,2000,5000,10000,15000,20000)
    --seconds S       measured seconds per rate (default 5)
    --sockets A,B,..  idle socket counts (default 1000,10000,19000)
    --peers a,b       default callpay,socketio
    --out DIR         write DIR/<date>-<scenario>.json and .svg (default loadtest/results)
    --strict          fail if any event is lost (smoke runs)
  --hub BIN         the callpay binary (default target/release/callpay)
  -h, --help        this text (a flag no scenario reads is refused before anything starts)
environment: CALLPAY_LOADTEST_INSTANCE_LOG=<filter> (scale, soak) keeps each instance's log at
  that filter (e.g. warn,callpay::ws=debug), nginx's info log and an access line per connection,
  in a temporary folder whose path is printed";

/// Latency samples.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn add(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i].as_secs_f64() * 1000.0
    }

    fn summary(&mut self) -> Value {
        json!({"n": self.0.len(), "p50_ms": self.pct(0.5), "p95_ms": self.pct(0.95), "p99_ms": self.pct(0.99), "max_ms": self.pct(1.0)})
    }
}

struct Hub {
    info: Value,
    /// WebSocket base URLs of the instances (one for the demo).
    nodes: Vec<String>,
    children: Vec<tokio::process::Child>,
    /// Kept alive for cluster runs (the simulator serves from this process).
    _sim: Option<stripe_sim::SimHandle>,
    db: Option<String>,
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";

fn psql(sql: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("psql").args([PG_ADMIN, "-q", "-c", sql]).status()?.success();
    if !ok {
        bail!("psql failed: {sql}");
    }
    Ok(())
}

/// PostgreSQL transactions ended in `db` so far (`xact_commit + xact_rollback` of
/// `pg_stat_database`): each statement outside an explicit transaction is one, and so is each
/// explicit transaction. Backends report their counts when idle, at most once a second, so a
/// reading taken within a second or two of the work undercounts it.
fn pg_transactions(db: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("psql")
        .args([PG_ADMIN, "-At", "-c"])
        .arg(format!("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{db}'"))
        .output()?;
    anyhow::ensure!(out.status.success(), "psql failed reading pg_stat_database");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

impl Drop for Hub {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        if let Some(db) = &self.db {
            let _ = psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

impl Hub {
    async fn start(bin: &str) -> anyhow::Result<Self> {
        Self::start_with(bin, &[]).await
    }

    /// [`Hub::start`] with extra `CALLPAY__…` settings for the demo.
    async fn start_with(bin: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("callpay-load-{}", std::process::id()));
        let mut child = tokio::process::Command::new(bin)
            .args(["demo", "--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin} (build it with cargo build --release)"))?;
        let info = ready_line(&mut child, "CALLPAY_DEMO ", Duration::from_secs(60)).await?;
        let node = info["hub_url"].as_str().unwrap_or_default().replace("http", "ws");
        Ok(Self { info, nodes: vec![node], children: vec![child], _sim: None, db: None })
    }

    /// Two (or `n`) `callpay serve` instances on a fresh PostgreSQL database and Redis.
    async fn start_cluster(bin: &str, n: usize) -> anyhow::Result<Self> {
        Self::start_cluster_with(bin, n, &[]).await
    }

    /// [`Hub::start_cluster`] with extra `CALLPAY__…` settings for every instance.
    async fn start_cluster_with(bin: &str, n: usize, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let pool = cluster::pool_per_instance(n)?.to_string();
        let db = format!("callpay_load_{}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))?;
        psql(&format!("CREATE DATABASE {db}"))?;
        let db_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let webhook_secret = "whsec_loadtest";
        let sim = stripe_sim::spawn(stripe_sim::SimConfig {
            webhooks: vec![stripe_sim::WebhookTarget {
                url: format!("http://127.0.0.1:{}/v1/stripe/webhook", ports[0]),
                secret: webhook_secret.into(),
            }],
            ..stripe_sim::SimConfig::default()
        })
        .await?;
        let secret = "loadtest-platform-secret-0123456789abcdef".to_owned();
        let mut children = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            children.push(
                tokio::process::Command::new(bin)
                    .arg("serve")
                    .env("RUST_LOG", "warn")
                    .env("CALLPAY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
                    .env("CALLPAY__AUTH__SECRET", &secret)
                    .env("CALLPAY__DATABASE__URL", &db_url)
                    .env("CALLPAY__DATABASE__MAX_CONNECTIONS", &pool)
                    .env("CALLPAY__BUS__REDIS_URL", "redis://127.0.0.1:6379/")
                    .env("CALLPAY__STRIPE__SECRET_KEY", sim.secret_key())
                    .env("CALLPAY__STRIPE__PUBLISHABLE_KEY", sim.publishable_key())
                    .env("CALLPAY__STRIPE__CLIENT_ID", sim.client_id())
                    .env("CALLPAY__STRIPE__API_BASE", &sim.url)
                    .env("CALLPAY__STRIPE__CONNECT_BASE", &sim.url)
                    .env("CALLPAY__STRIPE__WEBHOOK_SECRETS", webhook_secret)
                    .envs(env.iter().copied())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting instance {i} from {bin}"))?,
            );
        }
        let mut hub = Self {
            info: Value::Null,
            nodes: ports.iter().map(|p| format!("ws://127.0.0.1:{p}")).collect(),
            children,
            _sim: None,
            db: Some(db),
        };
        for port in &ports {
            let deadline = Instant::now() + Duration::from_secs(60);
            while TcpStream::connect(("127.0.0.1", *port)).await.is_err() {
                if Instant::now() > deadline {
                    bail!("instance on port {port} did not start");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let store = callpay::store::SqlStore::connect(&db_url).await?;
        callpay::demo::seed(&store, &sim).await?;
        hub.info = json!({
            "hub_url": format!("http://127.0.0.1:{}", ports[0]),
            "stripe_url": sim.url.trim_end_matches('/'),
            "platform_secret": secret,
            "webhook_secret": webhook_secret,
        });
        hub._sim = Some(sim);
        Ok(hub)
    }

    fn token(&self, call: &str, sub: &str, role: Role) -> String {
        join_token(self.info["platform_secret"].as_str().unwrap(), call, "clinic_demo", sub, sub, role)
    }

    /// The WebSocket URL of `call` on instance `node` for participant `sub`.
    fn url(&self, node: usize, call: &str, sub: &str, role: Role) -> String {
        format!("{}/v1/calls/{call}/ws?token={}", self.nodes[node % self.nodes.len()], self.token(call, sub, role))
    }

    async fn connect(&self, call: &str, sub: &str, role: Role) -> anyhow::Result<(Ws, Value)> {
        let url = format!(
            "{}/v1/calls/{call}/ws?token={}",
            self.info["hub_url"].as_str().unwrap().replace("http", "ws"),
            self.token(call, sub, role)
        );
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(ws_request(&url)?, Some(client_config()), false).await?;
        let welcome = next(&mut ws).await?;
        Ok((ws, welcome))
    }
}

/// The generator's client socket buffers, sized for the small frames the hub and its peers
/// send. tungstenite's default 128 KiB read buffer is a fresh allocation of the kernel's zeroed
/// pages for every socket opened: in the join profile that was about a quarter of the
/// generator's CPU, and in a drain behind nginx 53 % of it (page clearing and `memset`), so the
/// clients read the drain's close seconds late and the run measured the generator. Every client
/// the generator opens uses this.
fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
}

/// Opens the WebSocket `url` with [`client_config`].
async fn connect_ws(url: &str) -> anyhow::Result<Ws> {
    Ok(tokio_tungstenite::connect_async_with_config(ws_request(url)?, Some(client_config()), false).await?.0)
}

/// The handshake for `url`; a `?token=` in it travels as the `callpay.bearer.<token>`
/// subprotocol, as real clients send it (the hub refuses tokens in URLs by default).
fn ws_request(url: &str) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (target, token) = callpay_protocol::split_token_url(url);
    let mut req = target.into_client_request()?;
    if let Some(token) = token {
        req.headers_mut().insert("sec-websocket-protocol", callpay_protocol::offered_protocols(token).parse()?);
    }
    Ok(req)
}

async fn next(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.context("no frame in 30 s")? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("stream ended"),
        }
    }
}

async fn until(ws: &mut Ws, kind: &str) -> anyhow::Result<Value> {
    loop {
        let f = next(ws).await?;
        if f["type"] == kind {
            return Ok(f);
        }
        if f["type"] == "error" {
            bail!("error frame: {f}");
        }
    }
}

/// Waits until `ws` hears of a payment waiting to be paid: `payment.requested`, or the same
/// state as `payment.updated` (what a resync sends when the request was published on another
/// instance before this one's subscription to the call was live).
async fn until_payable(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let f = next(ws).await?;
        let kind = f["type"].as_str().unwrap_or_default();
        if (kind == "payment.requested" || kind == "payment.updated") && f["payment"]["status"] == "requested" {
            return Ok(f["payment"].clone());
        }
        // A request stored before this connection's snapshot was read is in its welcome, and
        // the hub does not send it again after.
        if kind == "welcome"
            && let Some(p) = f["payments"].as_array().and_then(|ps| ps.iter().find(|p| p["status"] == "requested"))
        {
            return Ok(p.clone());
        }
        if kind == "error" {
            bail!("error frame: {f}");
        }
    }
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

/// Opens a call with a requested payment; returns (clinician, patient, payment).
async fn open_call(hub: &Hub, call: &str) -> anyhow::Result<(Ws, Ws, Value)> {
    let (mut doc, _) = hub.connect(call, "doc", Role::Clinician).await?;
    let (mut pat, _) = hub.connect(call, "pat", Role::Patient).await?;
    send(&mut doc, json!({"type": "payment.request", "client_ref": "r1", "amount": 5000, "currency": "aud", "description": "Consult"})).await?;
    let payment = until(&mut pat, "payment.requested").await?["payment"].clone();
    Ok((doc, pat, payment))
}

async fn relay(hub: &Hub, calls: usize, rounds: usize) -> anyhow::Result<Value> {
    let per_round = Duration::from_millis(250);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..calls {
        let (mut doc, mut pat, payment) = open_call(hub, &format!("load-relay-{i}-{}", std::process::id())).await?;
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let id = payment["payment_id"].clone();
            // Spread calls over the round so sends are not synchronised.
            tokio::time::sleep(per_round.mul_f64(i as f64 / calls as f64)).await;
            let mut tick = tokio::time::interval(per_round);
            for _ in 0..rounds {
                tick.tick().await;
                let sent = Instant::now();
                send(&mut pat, json!({"type": "payment.progress", "payment_id": id, "stage": "entering_details"}))
                    .await?;
                until(&mut doc, "payment.progress").await?;
                samples.add(sent.elapsed());
            }
            Ok::<Samples, anyhow::Error>(samples)
        }));
    }
    let setup = start.elapsed();
    let mut all = Samples::default();
    for t in tasks {
        all.0.extend(t.await??.0);
    }
    Ok(
        json!({"scenario": "relay", "calls": calls, "rounds": rounds, "rate_per_patient_hz": 4, "setup_s": setup.as_secs_f64(), "latency": all.summary()}),
    )
}

async fn http_form(url: &str, body: String) -> anyhow::Result<(u16, Value)> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// The whole flow for `calls` calls. With `lost_webhooks` the simulator delivers no webhook at
/// all and the patient reports `submitted` once Stripe.js would have finished, so the clinician's
/// confirmation can only come from the hub reading the PaymentIntent itself (the verify path).
async fn payments(hub: &Hub, calls: usize, lost_webhooks: bool) -> anyhow::Result<Value> {
    let stripe = hub.info["stripe_url"].as_str().unwrap().to_owned();
    if lost_webhooks {
        let key = hub.info["stripe_secret_key"].as_str().context("--lost-webhooks needs the demo (single node)")?;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let req = hyper::Request::post(format!("{stripe}/_sim/faults"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(r#"{"webhook_drop_all": true}"#)))?;
        let status = client.request(req).await?.status();
        if !status.is_success() {
            bail!("setting the simulator fault answered {status}");
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..calls {
        let call = format!("load-pay-{i}-{}", std::process::id());
        let (mut doc, _) = hub.connect(&call, "doc", Role::Clinician).await?;
        let (mut pat, _) = hub.connect(&call, "pat", Role::Patient).await?;
        let stripe = stripe.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            send(&mut doc, json!({"type": "payment.request", "client_ref": "r1", "amount": 5000, "currency": "aud", "description": "Consult"})).await?;
            let p = until(&mut pat, "payment.requested").await?["payment"].clone();
            let requested = t0.elapsed();
            let s = &p["stripe"];
            let (pk, acct, secret) = (s["publishable_key"].as_str().unwrap(), s["stripe_account"].as_str().unwrap(), s["client_secret"].as_str().unwrap());
            let pi = secret.split("_secret_").next().unwrap();
            let (_, pm) = http_form(&format!("{stripe}/v1/payment_methods"), format!("key={pk}&_stripe_account={acct}&type=card&card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2040&card[cvc]=123")).await?;
            let t1 = Instant::now();
            let (status, _) = http_form(&format!("{stripe}/v1/payment_intents/{pi}/confirm"), format!("key={pk}&_stripe_account={acct}&client_secret={secret}&payment_method={}", pm["id"].as_str().unwrap_or_default())).await?;
            if status != 200 {
                bail!("confirm answered {status}");
            }
            if lost_webhooks {
                let id = p["payment_id"].clone();
                send(&mut pat, json!({"type": "payment.progress", "payment_id": id, "stage": "submitted"})).await?;
            }
            until(&mut doc, "payment.confirmed").await?;
            let confirmed = t1.elapsed();
            until(&mut pat, "payment.confirmed").await?;
            Ok::<(Duration, Duration), anyhow::Error>((requested, confirmed))
        }));
    }
    let (mut req, mut conf) = (Samples::default(), Samples::default());
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok((r, c)) => {
                req.add(r);
                conf.add(c);
            }
            Err(e) => {
                failed += 1;
                eprintln!("payment failed: {e}");
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if failed > 0 {
        bail!("{failed} of {calls} payments failed");
    }
    Ok(json!({"scenario": "payments", "calls": calls, "failed": failed, "wall_s": wall, "lost_webhooks": lost_webhooks,
        "request_to_patient": req.summary(), "confirm_to_clinician_confirmed": conf.summary()}))
}

/// Open sockets on the hub now, from its `/metrics`.
async fn open_sockets(hub: &Hub) -> anyhow::Result<u64> {
    let url = format!("{}/metrics", hub.info["hub_url"].as_str().unwrap_or_default());
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = client.get(url.parse()?).await?.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix("callpay_ws_connections_open "))
        .and_then(|v| v.trim().parse().ok())
        .context("no callpay_ws_connections_open in /metrics")
}

/// Rounds of `sockets` hostile connections: each sends junk, binary frames and a flood, and the
/// last of every ten an oversized frame (closed with 1009); then all close. After each round,
/// once the hub reports no open sockets, its RSS is read: what a closed connection or refused
/// frame leaves behind shows up as growth from round to round.
async fn abuse(hub: &Hub, sockets: usize, rounds: usize) -> anyhow::Result<Value> {
    let pid = hub.children.first().and_then(tokio::process::Child::id).context("hub pid")?;
    let mut rss = Vec::new();
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for i in 0..sockets {
            let call = format!("abuse-{round}-{}-{}", i / 10, std::process::id());
            let (mut ws, _) = hub.connect(&call, &format!("p{i}"), Role::Patient).await?;
            tasks.push(tokio::spawn(async move {
                for _ in 0..30 {
                    ws.send(Message::Text("{not json".into())).await?;
                    ws.send(Message::Binary(vec![0u8; 64].into())).await?;
                }
                if i % 10 == 9 {
                    ws.send(Message::Text("x".repeat(20_000).into())).await?;
                }
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
                Ok::<(), anyhow::Error>(())
            }));
        }
        for t in tasks {
            // A socket the hub closed first (1009, 1008) may fail its last sends; that is the point.
            let _ = t.await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while open_sockets(hub).await? > 0 {
            if Instant::now() > deadline {
                bail!("sockets still open 30 s after round {round}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = compare::rss_bytes(pid);
        println!("round {round}: hub RSS {:.1} MB", now as f64 / 1e6);
        rss.push(now);
    }
    let first = rss.first().copied().unwrap_or_default();
    let last = rss.last().copied().unwrap_or_default();
    Ok(json!({"scenario": "abuse", "sockets_per_round": sockets, "rounds": rounds, "rss_bytes": rss,
        "growth_after_first_round_bytes": last as i64 - first as i64}))
}

async fn connections(hub: &Hub, sockets: usize) -> anyhow::Result<Value> {
    let start = Instant::now();
    let mut all = Vec::with_capacity(sockets);
    let mut connect = Samples::default();
    for i in 0..sockets {
        let call = format!("load-conn-{}-{}", i / 10, std::process::id());
        let t = Instant::now();
        let (ws, _) = hub.connect(&call, &format!("p{i}"), Role::Patient).await?;
        connect.add(t.elapsed());
        all.push(ws);
    }
    let open_s = start.elapsed().as_secs_f64();
    // A clinic-wide event (the operator disables, then the test re-enables) reaches every socket.
    let hub_url = hub.info["hub_url"].as_str().unwrap();
    let op = hub.info["operator_token"].as_str().unwrap();
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::post(format!("{hub_url}/v1/clinics/clinic_demo/disable"))
        .header("authorization", format!("Bearer {op}"))
        .body(Full::new(Bytes::new()))?;
    let t = Instant::now();
    let status = client.request(req).await?.status();
    if !status.is_success() {
        bail!("disable answered {status}");
    }
    let mut reach = Samples::default();
    let mut handles = Vec::new();
    for mut ws in all {
        handles.push(tokio::spawn(async move {
            loop {
                let f = next(&mut ws).await?;
                if f["type"] == "clinic.updated" {
                    return Ok::<Duration, anyhow::Error>(t.elapsed());
                }
            }
        }));
    }
    for h in handles {
        reach.add(h.await??);
    }
    Ok(
        json!({"scenario": "connections", "sockets": sockets, "open_s": open_s, "connect": connect.summary(), "broadcast_reach": reach.summary()}),
    )
}

/// Reads `child`'s stdout until the line starting with `prefix` and returns the JSON after it;
/// keeps draining stdout afterwards so the child never blocks on a full pipe.
async fn ready_line(child: &mut tokio::process::Child, prefix: &str, wait: Duration) -> anyhow::Result<Value> {
    let mut lines = BufReader::new(child.stdout.take().context("stdout is piped")?).lines();
    let found = tokio::time::timeout(wait, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(json) = line.strip_prefix(prefix) {
                return Ok::<Value, anyhow::Error>(serde_json::from_str(json)?);
            }
        }
        bail!("the process exited before printing {prefix}")
    })
    .await
    .with_context(|| format!("no {prefix}line within {wait:?}"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(found)
}

/// Raises the soft open-file limit to the hard one (each socket is a file); children inherit it.
fn raise_open_files() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Flags some scenario reads; a value follows each except `--lost-webhooks`, `--nginx` and
/// `--strict`.
const FLAGS: [&str; 19] = [
    "--calls",
    "--churn",
    "--hub",
    "--lost-webhooks",
    "--nginx",
    "--nodes",
    "--out",
    "--outage",
    "--pays",
    "--peers",
    "--rate",
    "--rates",
    "--relay",
    "--rounds",
    "--seconds",
    "--sockets",
    "--steady",
    "--strict",
    "--warmup",
];

/// What the command line asks for before any scenario starts: the usage, or an error naming a
/// flag no scenario reads. A scenario's defaults are large (`scale` starts 100,000 sockets), so
/// `--help` or a misspelt `--socket 60` must not quietly start one.
fn check_args(args: &[String]) -> Result<bool, String> {
    if args.is_empty() || args.iter().any(|a| matches!(a.as_str(), "-h" | "--help" | "help")) {
        return Ok(true);
    }
    match args.iter().find(|a| a.starts_with('-') && !FLAGS.contains(&a.as_str())) {
        Some(unknown) => Err(format!("unknown flag {unknown}\n{USAGE}")),
        None => Ok(false),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if check_args(&args).map_err(anyhow::Error::msg)? {
        println!("{USAGE}");
        return Ok(());
    }
    let scenario = args[0].clone();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let number = |name: &str, default: usize| {
        flag(name).map_or(Ok(default), |v| v.parse().context(format!("{name} takes a number")))
    };
    let bin = flag("--hub").unwrap_or_else(|| "target/release/callpay".into());
    if scenario == "compare" {
        raise_open_files();
        let list = |name: &str, default: &str| -> anyhow::Result<Vec<u64>> {
            flag(name)
                .unwrap_or_else(|| default.into())
                .split(',')
                .map(|v| v.trim().parse().context(format!("{name} takes numbers")))
                .collect()
        };
        let plan = compare::Plan {
            scenario: args.get(1).cloned().unwrap_or_else(|| "relay".into()),
            calls: number("--calls", 2000)?,
            rates: list("--rates", "1000,2000,5000,10000,15000,20000")?,
            seconds: flag("--seconds").map_or(Ok(5.0), |v| v.parse().context("--seconds takes a number"))?,
            sockets: list("--sockets", "1000,10000,19000")?.into_iter().map(|n| n as usize).collect(),
            hub_bin: bin,
            out_dir: Some(flag("--out").map_or_else(|| PathBuf::from("loadtest/results"), PathBuf::from)),
            peers: flag("--peers").unwrap_or_else(|| "callpay,socketio".into()).split(',').map(str::to_owned).collect(),
            strict: args.iter().any(|a| a == "--strict"),
        };
        let report = tokio::time::timeout(Duration::from_secs(1800), compare::run(plan))
            .await
            .context("compare did not finish within 30 minutes")??;
        println!("{}", serde_json::to_string_pretty(&report["ratios"])?);
        println!("LOADTEST {report}");
        return Ok(());
    }
    if scenario == "fleet-worker" {
        return fleet::worker().await;
    }
    if scenario == "scale" || scenario == "soak" {
        raise_open_files();
        let soak = scenario == "soak";
        let float = |name: &str, default: f64| {
            flag(name).map_or(Ok(default), |v| v.parse::<f64>().context(format!("{name} takes a number")))
        };
        let seconds = number("--seconds", 1800)? as u64;
        let plan = scale::Plan {
            scenario: scenario.clone(),
            sockets: number("--sockets", if soak { 10_000 } else { 100_000 })?,
            nodes: number("--nodes", if soak { 1 } else { 5 })?,
            relay_per_sec: float("--relay", 2000.0)?,
            pays_per_min: float("--pays", if soak { 60.0 } else { 100.0 })?,
            churn_per_sec: float("--churn", if soak { 200.0 } else { 0.0 })?,
            steady_secs: number("--steady", 30)? as u64,
            outage_secs: number("--outage", 10)? as u64,
            seconds,
            warmup_secs: number("--warmup", (seconds / 6).min(300) as usize)? as u64,
            hub_bin: bin,
            out_dir: flag("--out").map_or_else(|| PathBuf::from("loadtest/results"), PathBuf::from),
        };
        let report = tokio::time::timeout(Duration::from_secs(seconds + 3600), scale::run(plan))
            .await
            .context("the scenario did not finish within an hour of its planned time")??;
        let mut summary = report.clone();
        if let Some(o) = summary.as_object_mut() {
            o.remove("timeline");
        }
        println!("{}", serde_json::to_string_pretty(&summary)?);
        println!("LOADTEST {summary}");
        return Ok(());
    }
    if scenario == "drain" {
        raise_open_files();
        let report = tokio::time::timeout(
            Duration::from_secs(600),
            drain::run(&bin, number("--sockets", 19_000)?, number("--nodes", 3)?, args.iter().any(|a| a == "--nginx")),
        )
        .await
        .context("drain did not finish within 10 minutes")??;
        println!("{}", serde_json::to_string_pretty(&report)?);
        println!("LOADTEST {report}");
        return Ok(());
    }
    let hub =
        if scenario.starts_with("cluster-") { Hub::start_cluster(&bin, 2).await? } else { Hub::start(&bin).await? };
    let result = tokio::time::timeout(Duration::from_secs(600), async {
        match scenario.as_str() {
            "relay" | "cluster-relay" => relay(&hub, number("--calls", 200)?, number("--rounds", 20)?).await,
            "payments" | "cluster-payments" => {
                payments(&hub, number("--calls", 50)?, args.iter().any(|a| a == "--lost-webhooks")).await
            }
            "connections" => connections(&hub, number("--calls", 2000)?).await,
            "abuse" => abuse(&hub, number("--calls", 1000)?, number("--rounds", 10)?).await,
            "confirm" | "cluster-confirm" => {
                confirm::run(&hub, number("--calls", 2000)?, number("--rate", 500)? as u64).await
            }
            other => bail!("unknown scenario {other}\n{USAGE}"),
        }
    })
    .await
    .context("scenario did not finish within 10 minutes")??;
    println!("{}", serde_json::to_string_pretty(&result)?);
    let mut result = result;
    result["instances"] = json!(hub.nodes.len());
    println!("LOADTEST {result}");
    drop(hub);
    Ok(())
}

/// Lowest port handed to a process this run starts.
const PORT_FLOOR: u16 = 10_000;

/// A loopback port for a process this run starts (an instance, nginx, a private Redis): free
/// when asked, below the kernel's range for ports it picks itself, and never handed out twice
/// by this run. A port from the kernel's own range (what binding port 0 gives) could be taken,
/// between its choice and the process binding it, by anything else binding port 0 (the Stripe
/// simulator in this process) or by any outgoing connection.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let kernels_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32_768);
    anyhow::ensure!(kernels_low > PORT_FLOOR + 1_000, "the kernel's port range starts at {kernels_low}");
    let span = u64::from(kernels_low - PORT_FLOOR);
    // A random start (processes of several runs at once pick apart), then upwards.
    let start = std::collections::hash_map::RandomState::new().build_hasher().finish() % span;
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..span {
        let port = PORT_FLOOR + ((start + i) % span) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port below {kernels_low}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's range for ports it picks itself, from `/proc`.
    fn ephemeral_range() -> (u16, u16) {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let mut bounds = range.split_whitespace().map(|p| p.parse::<u16>().unwrap());
        (bounds.next().unwrap(), bounds.next().unwrap())
    }

    /// A port handed to a process this run starts is never one the kernel gives out by itself
    /// (to a listener on port 0, such as the in-process Stripe simulator, or to an outgoing
    /// connection), and never the same twice: either could take an instance's port between
    /// its choice and the instance binding it. A smoke run of `cluster-confirm` failed so:
    /// "binding 127.0.0.1:33971: Address already in use", and its client, sent to that port,
    /// got the simulator's 404.
    #[test]
    fn ports_for_started_processes_are_outside_the_kernels_range_and_never_repeat() {
        let (low, _) = ephemeral_range();
        let ports: Vec<u16> = (0..300).map(|_| free_port().unwrap()).collect();
        assert!(ports.iter().all(|p| *p < low), "a port from the kernel's own range: {ports:?}");
        let unique: std::collections::HashSet<&u16> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len(), "a port handed out twice");
    }

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn help_and_unknown_flags_start_no_scenario() {
        assert_eq!(check_args(&args("")), Ok(true));
        assert_eq!(check_args(&args("drain --help")), Ok(true));
        assert_eq!(check_args(&args("scale -h")), Ok(true));
        assert_eq!(check_args(&args("help")), Ok(true));
        let typo = check_args(&args("scale --socket 60")).unwrap_err();
        assert!(typo.starts_with("unknown flag --socket\n"), "{typo}");
        assert_eq!(check_args(&args("drain --sockets 40 --nodes 2 --nginx --hub target/debug/callpay")), Ok(false));
        assert_eq!(check_args(&args("compare relay --rates 5000,20000 --strict")), Ok(false));
        assert_eq!(check_args(&args("fleet-worker")), Ok(false));
    }
}

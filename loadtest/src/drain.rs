//! `drain`: a node's clients moving to the others when it is drained. `--nodes` `callpay serve`
//! instances on a fresh PostgreSQL database and Redis; `--sockets` clients (half clinicians,
//! half patients, one call per pair) all on instance 0; instance 0 gets SIGTERM. Each client
//! does what the SDK does (`web/sdk/callpay.js`): after `4012` it waits a random moment within
//! the spread the reason names, after `4013` at the retry time give or take half a second with its ticket, after a
//! refused connection the SDK's backoff; then joins the next live instance (a balancer's round
//! robin), or, with `--nginx`, goes through nginx as every `scale` client does. Reported: how long until each client has its `welcome` again (p50, p99, max), the
//! joins shed with `4013`, the connections refused, and the spread the node asked for; how each
//! attempt's time split between the TCP connect, the upgrade and the join (over every attempt,
//! and attempt by attempt for the slowest clients); and the kernel's TCP counters over the storm
//! ([`crate::netstat`]). No traffic besides the joins; loopback only; stops by itself.

use crate::fleet::{is_failure, ticket_of, wait_after, with_ticket};
use crate::{Hub, ws_request};
use anyhow::Context;
use callpay_protocol::Role;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Source addresses 127.0.0.2 to .9, so no single one runs out of ports.
const SOURCE_ADDRS: usize = 8;
/// Sockets opening at once during setup.
const SETUP_CONCURRENCY: usize = 64;
/// Longest the scenario waits for every client to be back.
const BACK_WITHIN: Duration = Duration::from_secs(90);
/// How many of the slowest clients the report describes, with the path each took.
const SLOWEST: usize = 10;

/// What the clients counted.
#[derive(Default)]
struct Counts {
    shed: AtomicU64,
    /// Attempts that came back with a ticket.
    ticketed: AtomicU64,
    refused: AtomicU64,
    attempts: AtomicU64,
}

/// A TCP connection to `url`'s host from client `n`'s source address.
async fn connect(url: &str, n: usize) -> anyhow::Result<tokio::net::TcpStream> {
    let authority = url.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_owned();
    let socket = TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::new(127, 0, 0, 2 + (n % SOURCE_ADDRS) as u8), 0).into())?;
    Ok(socket.connect(authority.parse()?).await?)
}

/// The WebSocket upgrade of `url` over `stream` (until its `101`, or the refusal).
async fn upgrade(url: &str, stream: tokio::net::TcpStream) -> anyhow::Result<crate::Ws> {
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        ws_request(url)?,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(crate::client_config()),
    )
    .await?;
    Ok(ws)
}

async fn open(url: &str, n: usize) -> anyhow::Result<crate::Ws> {
    upgrade(url, connect(url, n).await?).await
}

/// A stage of a join attempt.
#[derive(Clone, Copy)]
enum Stage {
    /// The TCP connect (to nginx, or to the instance without a balancer).
    Tcp,
    /// The HTTP upgrade: the request out until its `101` (or a refusal).
    Upgrade,
    /// From the `101` until the `welcome` or a close (`4013` when shed).
    Answer,
    /// From the storm's start (SIGTERM, see `signal_sent_after_ms`) until the drained instance's
    /// close reached the client: once per client (failed: not a `4012`, or none within 30 s).
    Close,
}

/// How long each stage of the storm's attempts took (and each client's wait for the drain's
/// close), and how many failed: failed ones are in the percentiles too.
struct Split(std::sync::Mutex<[(hdrhistogram::Histogram<u64>, u64); 4]>);

/// A connect or upgrade that took this long probably waited for a packet of the handshake to be
/// sent again (Linux's first retransmission timeout is 1 s), though a starved generator reading
/// its answer late looks the same: the kernel counters tell which.
const SYN_RETRANSMITTED: Duration = Duration::from_millis(950);

impl Split {
    fn new() -> anyhow::Result<Self> {
        let histogram = || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3);
        Ok(Self(std::sync::Mutex::new([(histogram()?, 0), (histogram()?, 0), (histogram()?, 0), (histogram()?, 0)])))
    }

    /// Records the stage begun at `since`, whether it went through, and gives its milliseconds.
    fn record(&self, stage: Stage, since: Instant, ok: bool) -> u128 {
        let took = since.elapsed();
        let mut stages = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (histogram, failed) = &mut stages[stage as usize];
        histogram.saturating_record(took.as_micros().max(1) as u64);
        *failed += u64::from(!ok);
        took.as_millis()
    }

    fn report(&self) -> Value {
        let stages = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let one = |stage: Stage, what: &str| {
            let (h, failed) = &stages[stage as usize];
            let ms = |v: u64| (v as f64 / 100.0).round() / 10.0;
            let mut figures = json!({
                "what": what, "count": h.len(), "failed": failed,
                "p50_ms": ms(h.value_at_quantile(0.5)), "p90_ms": ms(h.value_at_quantile(0.9)),
                "p99_ms": ms(h.value_at_quantile(0.99)), "max_ms": ms(h.max()),
            });
            // Only a handshake's stages wait on retransmissions.
            if matches!(stage, Stage::Tcp | Stage::Upgrade) {
                figures["over_950ms"] = json!(h.len() - h.count_between(0, SYN_RETRANSMITTED.as_micros() as u64 - 1));
            }
            figures
        };
        json!({
            "tcp_connect": one(Stage::Tcp, "the client's TCP connect; over 950 ms: probably a SYN sent again"),
            "upgrade": one(Stage::Upgrade, "request to 101 or refusal, through the proxy if any; over 950 ms: probably a packet of nginx's connect sent again"),
            "answer": one(Stage::Answer, "101 to welcome, or to a close (failed)"),
            "drain_close": one(Stage::Close, "storm start to the drained instance's close at the client (failed: not 4012)"),
        })
    }
}

/// Reads until `welcome` (Ok) or a close (its code and reason).
async fn until_welcome(ws: &mut crate::Ws) -> Result<(), (u16, String)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"welcome\"") => return Ok(()),
            Ok(Some(Ok(Message::Close(f)))) => {
                return Err(f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string())));
            }
            Ok(Some(Ok(_))) => {}
            _ => return Err((1006, String::new())),
        }
    }
}

/// Opens `urls` (client `i` at `urls[i]`), 64 at a time, each until its `welcome`.
async fn open_all(urls: Vec<String>) -> anyhow::Result<Vec<crate::Ws>> {
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut opening = Vec::with_capacity(urls.len());
    for (i, u) in urls.into_iter().enumerate() {
        let gate = gate.clone();
        opening.push(tokio::spawn(async move {
            let _slot = gate.acquire().await?;
            let mut ws = open(&u, i).await?;
            until_welcome(&mut ws).await.map_err(|(c, r)| anyhow::anyhow!("closed {c} {r}"))?;
            anyhow::Ok(ws)
        }));
    }
    let mut clients = Vec::with_capacity(opening.len());
    for o in opening {
        clients.push(o.await??);
    }
    Ok(clients)
}

/// The call, subject and role of client `i` (half clinicians, half patients, one call a pair).
fn client(i: usize) -> (String, String, Role) {
    let role = if i.is_multiple_of(2) { Role::Clinician } else { Role::Patient };
    let sub = format!("{}-{}", if i.is_multiple_of(2) { "doc" } else { "pat" }, i / 2);
    (format!("drain-{}", i / 2), sub, role)
}

/// Runs the scenario. With `nginx`, every client connects through the balancer `scale` uses
/// (least connections, a stopped instance skipped per request): the others are started only
/// once every client is on instance 0, and every reconnect goes to the balancer.
pub async fn run(bin: &str, sockets: usize, nodes: usize, nginx: bool) -> anyhow::Result<Value> {
    anyhow::ensure!(nodes >= 2, "--nodes must be at least 2 (one is drained)");
    if nginx {
        let mut cluster = crate::cluster::Cluster::start(bin, nodes, sockets).await?;
        for i in 1..nodes {
            cluster.stop_node(i, libc::SIGTERM).await?;
        }
        let url = |i: usize| {
            let (call, sub, role) = client(i);
            let token = callpay::demo::join_token(&cluster.secret, &call, callpay::demo::DEMO_CLINIC, &sub, &sub, role);
            format!("{}/v1/calls/{call}/ws?token={token}", cluster.ws_url())
        };
        let urls: Vec<String> = (0..sockets).map(url).collect();
        let clients = open_all(urls.clone()).await?;
        for i in 1..nodes {
            cluster.start_node(i).await?;
        }
        let pid = cluster.nodes[0].1.as_ref().and_then(|c| c.id()).context("instance 0 has no pid")?;
        let db = cluster.db().to_owned();
        let mut report = storm(clients, vec![urls], pid, &db, nodes, sockets).await?;
        report["balancer"] = json!("nginx (least_conn), as in `scale`");
        let receiving: Vec<u16> = cluster.nodes[1..].iter().map(|(port, _)| *port).collect();
        report["welcome_statements"] = welcome_statements(&receiving, sockets).await;
        return Ok(report);
    }
    let hub = Hub::start_cluster_with(bin, nodes, &[]).await?;
    let url = |node: usize, i: usize| {
        let (call, sub, role) = client(i);
        hub.url(node, &call, &sub, role)
    };
    // Everyone on instance 0.
    let clients = open_all((0..sockets).map(|i| url(0, i)).collect()).await?;
    let urls: Vec<Vec<String>> = (1..nodes).map(|node| (0..sockets).map(|i| url(node, i)).collect()).collect();
    let pid = hub.children[0].id().context("instance 0 has no pid")?;
    let db = hub.db.clone().context("a cluster has a database")?;
    let mut report = storm(clients, urls, pid, &db, nodes, sockets).await?;
    report["balancer"] = json!("none: each client tries the live instances in turn");
    let receiving: Vec<u16> =
        hub.nodes[1..].iter().filter_map(|url| url.rsplit(':').next()?.trim_end_matches('/').parse().ok()).collect();
    report["welcome_statements"] = welcome_statements(&receiving, sockets).await;
    Ok(report)
}

/// The statements the receiving instances' welcome reads took for the storm (they joined
/// nobody before it), and per client brought back.
async fn welcome_statements(receiving: &[u16], sockets: usize) -> Value {
    match crate::cluster::welcome_statements(receiving).await {
        Some(n) => {
            json!({"receiving_instances": n, "per_join": (n as f64 / sockets.max(1) as f64 * 1000.0).round() / 1000.0})
        }
        None => Value::Null,
    }
}

/// SIGTERM to `pid` (instance 0, holding `clients`), then every client back through `urls`
/// (client `i` tries `urls[(i + attempt) % urls.len()][i]`).
async fn storm(
    clients: Vec<crate::Ws>,
    urls: Vec<Vec<String>>,
    pid: u32,
    db: &str,
    nodes: usize,
    sockets: usize,
) -> anyhow::Result<Value> {
    // The store's background rate with every socket settled (presence upkeep, the verify
    // sweep), so the storm's own transactions can be told from it.
    let (quiet, quiet_for) = (crate::pg_transactions(db)?, Duration::from_secs(4));
    tokio::time::sleep(quiet_for).await;
    let before = crate::pg_transactions(db)?;
    let background_per_sec = before.saturating_sub(quiet) as f64 / quiet_for.as_secs_f64();
    eprintln!("drain: {sockets} sockets on instance 0 of {nodes}; sending SIGTERM");
    let counts = Arc::new(Counts::default());
    let spread_said = Arc::new(std::sync::Mutex::new(None::<String>));
    let urls = Arc::new(urls);
    let split = Arc::new(Split::new()?);
    let kernel_before = crate::netstat::read();
    let drained_at = Instant::now();
    let mut back = Vec::with_capacity(sockets);
    for (i, mut ws) in clients.into_iter().enumerate() {
        let (counts, urls, spread_said, split) = (counts.clone(), urls.clone(), spread_said.clone(), split.clone());
        back.push(tokio::spawn(async move {
            // The drain's close.
            let (mut code, mut reason) = match until_welcome(&mut ws).await {
                Err(close) => close,
                Ok(()) => (1000, String::new()),
            };
            // When the close came: the spread starts from it, so a close sent (or read) late
            // brings its client back late whatever the spread.
            let closed_at = split.record(Stage::Close, drained_at, code == 4012);
            if code == 4012 {
                spread_said.lock().unwrap().get_or_insert(reason.clone());
            }
            drop(ws);
            // Attempts made (which instance is next without a balancer), and the failed ones
            // among them (the SDK's backoff).
            let (mut attempt, mut failures) = (0u32, 0u32);
            // The ticket of the last shed, kept until a welcome, as the SDK does.
            let mut ticket: Option<String> = None;
            // What this client went through: each close (or refusal) and the wait it took after.
            let mut path = Vec::new();
            loop {
                let wait = wait_after(code, &reason, failures);
                if path.is_empty() {
                    path.push(format!("{code} @{closed_at}ms +{}ms", wait.as_millis()));
                } else {
                    path.push(format!("{code} +{}ms", wait.as_millis()));
                }
                tokio::time::sleep(wait).await;
                attempt += 1;
                if is_failure(code) {
                    failures += 1;
                }
                counts.attempts.fetch_add(1, Ordering::Relaxed);
                let target = with_ticket(&urls[(i + attempt as usize) % urls.len()][i], ticket.as_deref());
                if ticket.is_some() {
                    counts.ticketed.fetch_add(1, Ordering::Relaxed);
                }
                // Each stage timed on its own: where an attempt's time goes (the kernel's
                // connect, the proxy and the instance's upgrade, the instance's join).
                let at = drained_at.elapsed().as_millis();
                let stage = Instant::now();
                let attempted = match connect(&target, i).await {
                    Err(_) => Err(format!("@{at}ms tcp failed after {}ms", split.record(Stage::Tcp, stage, false))),
                    Ok(stream) => {
                        let tcp = split.record(Stage::Tcp, stage, true);
                        let stage = Instant::now();
                        match upgrade(&target, stream).await {
                            Err(_) => Err(format!(
                                "@{at}ms tcp {tcp}ms, upgrade refused after {}ms",
                                split.record(Stage::Upgrade, stage, false)
                            )),
                            Ok(ws) => {
                                let up = split.record(Stage::Upgrade, stage, true);
                                Ok((ws, format!("@{at}ms tcp {tcp}ms, upgrade {up}ms, answer in")))
                            }
                        }
                    }
                };
                match attempted {
                    Ok((mut ws, timings)) => {
                        let stage = Instant::now();
                        let answer = until_welcome(&mut ws).await;
                        path.push(format!("{timings} {}ms", split.record(Stage::Answer, stage, answer.is_ok())));
                        match answer {
                            Ok(()) => return Some((drained_at.elapsed(), ws, path)),
                            Err((c, r)) => {
                                if c == 4013 {
                                    counts.shed.fetch_add(1, Ordering::Relaxed);
                                    ticket = ticket_of(c, &r);
                                }
                                (code, reason) = (c, r);
                            }
                        }
                    }
                    Err(timings) => {
                        path.push(timings);
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                        (code, reason) = (1006, String::new());
                    }
                }
                if drained_at.elapsed() > BACK_WITHIN {
                    return None;
                }
            }
        }));
    }
    // Times count from before the clients' tasks were spawned; the report says how much later
    // the signal went.
    let signal_sent_after = drained_at.elapsed();
    // SAFETY: kill(2) with a pid of our own child and a plain signal number.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let mut times = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let mut lost = 0usize;
    let mut kept = Vec::with_capacity(sockets);
    // The slowest clients' paths: what the tail is made of.
    let mut slowest: Vec<(Duration, Vec<String>)> = Vec::new();
    for b in back {
        match b.await? {
            Some((t, ws, path)) => {
                times.record(t.as_millis().max(1) as u64)?;
                kept.push(ws);
                slowest.push((t, path));
                if slowest.len() > 2 * SLOWEST {
                    slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
                    slowest.truncate(SLOWEST);
                }
            }
            None => lost += 1,
        }
    }
    let kernel = crate::netstat::growth(&kernel_before, &crate::netstat::read());
    slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
    slowest.truncate(SLOWEST);
    let slowest: Vec<Value> =
        slowest.into_iter().map(|(t, path)| json!({"back_ms": t.as_millis() as u64, "path": path})).collect();
    // Let the backends report their last counts (at most once a second, when idle).
    let storm = drained_at.elapsed() + Duration::from_secs(2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = crate::pg_transactions(db)?.saturating_sub(before);
    let joins = kept.len().max(1) as f64;
    let storm_transactions = (during as f64 - background_per_sec * storm.as_secs_f64()).max(0.0);
    let ms = |q: f64| times.value_at_quantile(q);
    let report = json!({
        "store_transactions": {
            "during_storm": during, "background_per_sec": background_per_sec.round(),
            "per_join": (storm_transactions / joins * 100.0).round() / 100.0,
            "per_join_attempt": (storm_transactions / counts.attempts.load(Ordering::Relaxed).max(1) as f64 * 100.0).round() / 100.0,
            "how": "pg_stat_database xact_commit + xact_rollback: one per statement outside a transaction, one per transaction; the background rate before SIGTERM taken off",
        },
        "scenario": "drain",
        "nodes": nodes,
        "sockets": sockets,
        "spread_asked": spread_said.lock().unwrap().clone(),
        "back": kept.len(),
        "not_back_within_90s": lost,
        "back_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": times.max()},
        "joins_shed_4013": counts.shed.load(Ordering::Relaxed),
        "attempts_with_ticket": counts.ticketed.load(Ordering::Relaxed),
        "connections_refused": counts.refused.load(Ordering::Relaxed),
        "join_attempts": counts.attempts.load(Ordering::Relaxed),
        "attempt_stages": split.report(),
        "signal_sent_after_ms": signal_sent_after.as_millis() as u64,
        "kernel_tcp_during_storm": kernel,
        "slowest": slowest,
    });
    drop(kept);
    // Every client must get back: one left out is a failure, not a figure.
    anyhow::ensure!(lost == 0, "{lost} clients were not back within {BACK_WITHIN:?}: {report}");
    Ok(report)
}

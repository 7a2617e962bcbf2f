//! Side by side: callpay against a Socket.IO 4.8 relay (`loadtest/peers/socketio/`) under the
//! same load, driven by this one generator speaking each protocol.
//!
//! - `relay`: `--calls` calls, each a clinician and a patient socket. Patients send
//!   `payment.progress` open-loop at a fixed aggregate rate (each message has an intended send
//!   time on a fixed schedule, and latency is measured from that time, so a generator or server
//!   that falls behind shows up as latency rather than as a slower schedule: no coordinated
//!   omission). For each rate: a warm-up, then a measured window. Latency goes into an HDR
//!   histogram; the server's CPU time (every process of the peer, from `/proc/PID/stat`) over the
//!   window is divided by the events delivered in it.
//! - `cluster-relay`: the same with two server processes on Redis (clinicians on the first,
//!   patients on the second): callpay as two `callpay serve` on PostgreSQL + Redis, Socket.IO as
//!   two servers on `@socket.io/redis-adapter`. Redis's own CPU is counted for both.
//! - `idle`: for each socket count, a fresh server; RSS growth divided by the sockets opened.
//!
//! Sockets come from several 127.0.0.x source addresses, so the generator is not bound by one
//! address's ephemeral ports. Everything runs on loopback, bounded in count and time. A run
//! writes `loadtest/results/<date>-<scenario>.json` and an SVG chart beside it.

use crate::{Hub, Ws};
use anyhow::{Context, bail};
use callpay::demo::join_token;
use callpay_protocol::Role;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// Source addresses the generator's sockets are spread over.
const SOURCE_ADDRS: u8 = 8;
/// Calls set up at once.
const SETUP_CONCURRENCY: usize = 64;
/// Messages waiting to be written per patient socket before the generator counts a send as lost.
const SEND_QUEUE: usize = 256;
/// How long after a window ends stragglers are still counted.
const DRAIN: Duration = Duration::from_secs(2);
/// Latency recorded up to this (µs); slower is clamped and still counted.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What `compare` was asked to do.
pub struct Plan {
    /// `relay`, `cluster-relay` or `idle`.
    pub scenario: String,
    /// Calls (two sockets each) for the relay scenarios.
    pub calls: usize,
    /// Aggregate rates, events per second.
    pub rates: Vec<u64>,
    /// Measured seconds per rate (after one warm-up second).
    pub seconds: f64,
    /// Socket counts for `idle`.
    pub sockets: Vec<usize>,
    /// The callpay binary.
    pub hub_bin: String,
    /// Where results go (`None`: print only).
    pub out_dir: Option<PathBuf>,
    /// Which peers (`callpay`, `socketio`).
    pub peers: Vec<String>,
    /// Fail the run if any relayed event was lost or any idle socket did not open (smoke runs).
    pub strict: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Callpay,
    SocketIo,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Callpay => "callpay",
            Proto::SocketIo => "socketio",
        }
    }
}

/// A running peer: its processes (for CPU and RSS) and where to connect.
struct Server {
    proto: Proto,
    /// WebSocket base URLs, one per node.
    nodes: Vec<String>,
    /// Processes whose CPU is counted (the nodes, and Redis in cluster runs).
    pids: Vec<u32>,
    /// Redis, also in `pids`, reported on its own too.
    redis: Option<u32>,
    secret: String,
    _hub: Option<Hub>,
    _children: Vec<tokio::process::Child>,
}

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/socketio")
}

async fn start_socketio(redis: bool) -> anyhow::Result<(tokio::process::Child, u16, u32)> {
    let dir = peer_dir();
    if !dir.join("node_modules/socket.io").exists() {
        bail!("the Socket.IO peer is not installed: run `npm ci` in {}", dir.display());
    }
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("server.js").current_dir(&dir).env("PORT", "0").stdout(std::process::Stdio::piped()).kill_on_drop(true);
    if redis {
        cmd.env("REDIS_URL", "redis://127.0.0.1:6379/");
    }
    let mut child = cmd.spawn().context("starting node (Node.js 20 is required)")?;
    let ready = crate::ready_line(&mut child, "SOCKETIO_PEER ", Duration::from_secs(30)).await?;
    Ok((child, ready["port"].as_u64().unwrap_or(0) as u16, ready["pid"].as_u64().unwrap_or(0) as u32))
}

/// The PID of the Redis on 127.0.0.1:6379 (its CPU counts in cluster runs).
async fn redis_pid() -> anyhow::Result<u32> {
    let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no process_id in INFO server")
}

impl Server {
    async fn start(proto: Proto, nodes: usize, hub_bin: &str) -> anyhow::Result<Self> {
        match proto {
            Proto::Callpay => {
                // The peer has no per-socket rate limit; lift callpay's (10/s by default) above
                // what one patient sends here, so both relay every event they are given.
                let env = [("CALLPAY__SERVER__RATE_PER_SEC", "1000"), ("CALLPAY__SERVER__RATE_BURST", "1000")];
                let hub = if nodes > 1 {
                    Hub::start_cluster_with(hub_bin, nodes, &env).await?
                } else {
                    Hub::start_with(hub_bin, &env).await?
                };
                let mut pids: Vec<u32> = hub.children.iter().filter_map(|c| c.id()).collect();
                let redis = if nodes > 1 { Some(redis_pid().await?) } else { None };
                pids.extend(redis);
                let secret = hub.info["platform_secret"].as_str().unwrap_or_default().to_owned();
                Ok(Self {
                    proto,
                    nodes: hub.nodes.clone(),
                    pids,
                    redis,
                    secret,
                    _hub: Some(hub),
                    _children: Vec::new(),
                })
            }
            Proto::SocketIo => {
                let mut children = Vec::new();
                let mut urls = Vec::new();
                let mut pids = Vec::new();
                for _ in 0..nodes {
                    let (child, port, pid) = start_socketio(nodes > 1).await?;
                    children.push(child);
                    urls.push(format!("ws://127.0.0.1:{port}"));
                    pids.push(pid);
                }
                let redis = if nodes > 1 { Some(redis_pid().await?) } else { None };
                pids.extend(redis);
                Ok(Self { proto, nodes: urls, pids, redis, secret: String::new(), _hub: None, _children: children })
            }
        }
    }

    fn url(&self, node: usize, call: &str, role: Role) -> String {
        let base = &self.nodes[node % self.nodes.len()];
        match self.proto {
            Proto::Callpay => {
                let sub = if role == Role::Clinician { "doc" } else { "pat" };
                let token = join_token(&self.secret, call, "clinic_demo", sub, sub, role);
                format!("{base}/v1/calls/{call}/ws?token={token}")
            }
            Proto::SocketIo => {
                let role = if role == Role::Clinician { "clinician" } else { "patient" };
                format!("{base}/socket.io/?EIO=4&transport=websocket&call={call}&role={role}")
            }
        }
    }

    /// Opens a socket from source address 127.0.0.`2 + n % SOURCE_ADDRS` and completes the
    /// protocol's handshake.
    async fn open(&self, n: usize, node: usize, call: &str, role: Role) -> anyhow::Result<Ws> {
        let url = self.url(node, call, role);
        let authority = url.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_owned();
        let addr: std::net::SocketAddr = authority.parse()?;
        let socket = TcpSocket::new_v4()?;
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (n % SOURCE_ADDRS as usize) as u8);
        socket.bind((source, 0).into())?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            crate::ws_request(&url)?,
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
            Some(crate::client_config()),
        )
        .await?;
        match self.proto {
            Proto::Callpay => {
                let welcome = text(&mut ws).await?;
                if !welcome.contains("\"welcome\"") {
                    bail!("expected welcome, got {welcome}");
                }
            }
            Proto::SocketIo => {
                let open = text(&mut ws).await?;
                if !open.starts_with('0') {
                    bail!("expected engine.io open, got {open}");
                }
                ws.send(Message::Text("40".into())).await?;
                loop {
                    let t = text(&mut ws).await?;
                    if t.starts_with("40") {
                        break;
                    }
                    if t.starts_with("44") {
                        bail!("socket.io refused the connection: {t}");
                    }
                }
            }
        }
        Ok(ws)
    }
}

async fn text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.context("no frame in 30 s")? {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("stream ended"),
        }
    }
}

/// CPU time (user + system) of `pid` so far, in microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (ticks(11) + ticks(12)) * 1_000_000 / hz
}

pub fn total_cpu_us(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_us(*p)).sum()
}

/// Resident memory of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// What the connection tasks share with the sender and the report.
struct Shared {
    /// Intended send times of messages in flight, per call (FIFO: one patient per call, and
    /// each socket delivers in order).
    pending: Vec<Mutex<VecDeque<Instant>>>,
    hist: Mutex<Histogram<u64>>,
    recording: AtomicBool,
    delivered: AtomicU64,
    stop: AtomicBool,
    /// When the calls were open: slow events are placed on a clock from here, so a tail can be
    /// lined up with the hub's periodic work (presence renewal, the verify sweep).
    opened: OnceLock<Instant>,
    /// Recorded events slower than [`SLOW_MS`]: (intended send time in ms since `opened`,
    /// latency in ms), the first [`SLOW_KEPT`].
    slow: Mutex<Vec<(f64, f64)>>,
}

/// An event slower than this is kept with its send time.
const SLOW_MS: f64 = 10.0;
/// Slow events kept per run at most.
const SLOW_KEPT: usize = 2_000;

fn progress_message(proto: Proto, payment_id: &str) -> Message {
    let body = match proto {
        Proto::Callpay => json!({"type": "payment.progress", "payment_id": payment_id, "stage": "viewing"}).to_string(),
        Proto::SocketIo => format!("42{}", json!(["payment.progress", {"payment_id": payment_id, "stage": "viewing"}])),
    };
    Message::Text(body.into())
}

fn is_progress(proto: Proto, frame: &str) -> bool {
    match proto {
        Proto::Callpay => frame.contains("\"payment.progress\""),
        Proto::SocketIo => frame.starts_with("42[\"payment.progress\""),
    }
}

/// One socket's task: writes what the sender queues, answers Socket.IO's pings, and on a
/// clinician times each relayed event against its intended send time.
async fn connection(
    mut ws: Ws,
    proto: Proto,
    call: usize,
    clinician: bool,
    mut outgoing: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
) {
    loop {
        tokio::select! {
            m = outgoing.recv() => {
                let Some(m) = m else { break };
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            f = ws.next() => {
                let Some(Ok(msg)) = f else { break };
                let Message::Text(t) = msg else { continue };
                if proto == Proto::SocketIo && t.as_str() == "2" {
                    if ws.send(Message::Text("3".into())).await.is_err() {
                        break;
                    }
                    continue;
                }
                if clinician && is_progress(proto, t.as_str()) {
                    let sent = shared.pending[call].lock().unwrap().pop_front();
                    if let Some(sent) = sent {
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        if shared.recording.load(Ordering::Relaxed) {
                            let us = (sent.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
                            let _ = shared.hist.lock().unwrap().record(us);
                            let ms = us as f64 / 1000.0;
                            if ms > SLOW_MS && let Some(opened) = shared.opened.get() {
                                let mut slow = shared.slow.lock().unwrap();
                                if slow.len() < SLOW_KEPT {
                                    slow.push((sent.saturating_duration_since(*opened).as_secs_f64() * 1000.0, ms));
                                }
                            }
                        }
                    }
                }
            }
        }
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
    }
}

/// Opens `calls` calls (clinician on node 0, patient on the last node) with one payment each
/// waiting to be paid, and starts their connection tasks. Returns the patients' send queues and
/// the payment ids.
async fn open_calls(
    server: &Arc<Server>,
    calls: usize,
    shared: &Arc<Shared>,
) -> anyhow::Result<(Vec<mpsc::Sender<Message>>, Vec<String>)> {
    let run = callpay::ids::random_id();
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut setups = Vec::new();
    for i in 0..calls {
        let (server, gate, shared, run) = (server.clone(), gate.clone(), shared.clone(), run.clone());
        setups.push(tokio::spawn(async move {
            let _slot = gate.acquire().await?;
            let call = format!("cmp-{run}-{i}");
            let last = server.nodes.len() - 1;
            let mut doc = server.open(2 * i, 0, &call, Role::Clinician).await?;
            let mut pat = server.open(2 * i + 1, last, &call, Role::Patient).await?;
            let payment_id = match server.proto {
                Proto::Callpay => {
                    let request = json!({"type": "payment.request", "client_ref": "r1", "amount": 5000, "currency": "aud", "description": "Consult"});
                    doc.send(Message::Text(request.to_string().into())).await?;
                    // `payment.updated` too: a resync's copy when the request beat this
                    // instance's subscription to the call.
                    loop {
                        let f: Value = serde_json::from_str(&text(&mut pat).await?)?;
                        let kind = f["type"].as_str().unwrap_or_default();
                        if (kind == "payment.requested" || kind == "payment.updated") && f["payment"]["status"] == "requested" {
                            break f["payment"]["payment_id"].as_str().unwrap_or_default().to_owned();
                        }
                        if kind == "error" {
                            bail!("payment request refused: {f}");
                        }
                    }
                }
                Proto::SocketIo => format!("pay_{i}"),
            };
            let (doc_tx, doc_rx) = mpsc::channel(SEND_QUEUE);
            let (pat_tx, pat_rx) = mpsc::channel(SEND_QUEUE);
            tokio::spawn(connection(doc, server.proto, i, true, doc_rx, shared.clone()));
            tokio::spawn(connection(pat, server.proto, i, false, pat_rx, shared));
            // The clinician's queue is never written to; dropping it would end its task.
            std::mem::forget(doc_tx);
            Ok::<_, anyhow::Error>((pat_tx, payment_id))
        }));
    }
    let mut senders = Vec::with_capacity(calls);
    let mut payments = Vec::with_capacity(calls);
    for s in setups {
        let (tx, id) = s.await??;
        senders.push(tx);
        payments.push(id);
    }
    Ok((senders, payments))
}

/// One rate: a warm-up second, then `seconds` measured, then stragglers for up to [`DRAIN`].
async fn run_rate(
    server: &Server,
    shared: &Arc<Shared>,
    senders: &[mpsc::Sender<Message>],
    payments: &[String],
    rate: u64,
    seconds: f64,
) -> Value {
    let calls = senders.len();
    let messages: Vec<Message> = payments.iter().map(|p| progress_message(server.proto, p)).collect();
    let warmup = rate as usize;
    let measured = (rate as f64 * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let (mut cpu_start, mut delivered_start, mut window_start) = (0, 0, start);
    let mut redis_start = 0;
    let mut lost = 0u64;
    for k in 0..warmup + measured {
        if k == warmup {
            shared.hist.lock().unwrap().reset();
            shared.recording.store(true, Ordering::Relaxed);
            cpu_start = total_cpu_us(&server.pids);
            redis_start = server.redis.map_or(0, cpu_us);
            delivered_start = shared.delivered.load(Ordering::Relaxed);
            window_start = Instant::now();
        }
        let intended = start + interval.mul_f64(k as f64);
        let now = Instant::now();
        if intended > now {
            tokio::time::sleep_until(intended.into()).await;
        }
        let call = k % calls;
        shared.pending[call].lock().unwrap().push_back(intended);
        if senders[call].try_send(messages[call].clone()).is_err() {
            shared.pending[call].lock().unwrap().pop_back();
            if k >= warmup {
                lost += 1;
            }
        }
    }
    let sent_window = Instant::now().duration_since(window_start);
    // Stragglers: wait until every message in flight arrived, or DRAIN passed.
    let drain_end = Instant::now() + DRAIN;
    while Instant::now() < drain_end && shared.pending.iter().any(|p| !p.lock().unwrap().is_empty()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.recording.store(false, Ordering::Relaxed);
    let cpu = total_cpu_us(&server.pids).saturating_sub(cpu_start);
    let redis_cpu = server.redis.map(|pid| cpu_us(pid).saturating_sub(redis_start));
    let delivered = shared.delivered.load(Ordering::Relaxed) - delivered_start;
    let undelivered: usize = shared.pending.iter().map(|p| std::mem::take(&mut *p.lock().unwrap()).len()).sum();
    let h = shared.hist.lock().unwrap().clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let slow: Vec<[f64; 2]> = std::mem::take(&mut *shared.slow.lock().unwrap())
        .into_iter()
        .map(|(t, l)| [(t * 10.0).round() / 10.0, (l * 100.0).round() / 100.0])
        .collect();
    json!({
        "rate": rate,
        "sent": measured,
        "delivered": delivered,
        "lost": lost + undelivered as u64,
        "achieved_rate": measured as f64 / sent_window.as_secs_f64().max(1e-9),
        "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0,
        "cpu_ms": cpu as f64 / 1000.0,
        "cpu_us_per_event": if delivered > 0 { cpu as f64 / delivered as f64 } else { f64::NAN },
        // Redis's share (already inside cpu_us_per_event): what sizes one Redis's capacity.
        "redis_cpu_us_per_event": redis_cpu.map(|c| if delivered > 0 { c as f64 / delivered as f64 } else { f64::NAN }),
        // [ms since the calls opened, latency ms] of recorded events over SLOW_MS.
        "slow_events": slow,
    })
}

async fn relay(proto: Proto, plan: &Plan, nodes: usize) -> anyhow::Result<Value> {
    let server = Arc::new(Server::start(proto, nodes, &plan.hub_bin).await?);
    let shared = Arc::new(Shared {
        pending: (0..plan.calls).map(|_| Mutex::new(VecDeque::new())).collect(),
        hist: Mutex::new(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?),
        recording: AtomicBool::new(false),
        delivered: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        opened: OnceLock::new(),
        slow: Mutex::new(Vec::new()),
    });
    let setup = Instant::now();
    let (senders, payments) = open_calls(&server, plan.calls, &shared).await?;
    let _ = shared.opened.set(Instant::now());
    eprintln!("{}: {} calls open in {:.1} s", proto.name(), plan.calls, setup.elapsed().as_secs_f64());
    let mut rows = Vec::new();
    for rate in &plan.rates {
        let row = run_rate(&server, &shared, &senders, &payments, *rate, plan.seconds).await;
        eprintln!("{}: {row}", proto.name());
        rows.push(row);
    }
    shared.stop.store(true, Ordering::Relaxed);
    let best = rows
        .iter()
        .filter(|r| r["p99_ms"].as_f64().is_some_and(|p| p < 10.0) && r["lost"] == 0)
        .filter_map(|r| r["rate"].as_u64())
        .max();
    Ok(
        json!({"peer": proto.name(), "calls": plan.calls, "sockets": plan.calls * 2, "nodes": nodes, "rates": rows, "highest_rate_p99_under_10ms": best}),
    )
}

/// TCP sockets in TIME_WAIT on this machine, from the `tw` figure of `/proc/net/sockstat` (one
/// count for IPv4 and IPv6 together).
fn time_wait_sockets() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp = text.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let words: Vec<&str> = tcp.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == "tw").and_then(|w| w[1].parse().ok()).unwrap_or(0)
}

/// Before opening `sockets`, waits (at most 75 s: the kernel keeps TIME_WAIT for 60 s) until
/// fewer than a tenth as many (at least 1,000) closed sockets are left in TIME_WAIT. Tens of
/// thousands of them slow every connect and accept that follows (seen here: a third
/// back-to-back run of 19,000 joins at 2,200/s instead of 5,500), so without this whichever
/// peer runs second pays for the first. Runs of under 5,000 sockets (smoke runs) do not wait.
/// Answers how many were left.
async fn settle_time_wait(sockets: usize) -> u64 {
    let few = (sockets as u64 / 10).max(1_000);
    let until = Instant::now() + Duration::from_secs(75);
    while sockets >= 5_000 && time_wait_sockets() > few && Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    time_wait_sockets()
}

async fn idle(proto: Proto, plan: &Plan) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for &n in &plan.sockets {
        let time_wait_at_start = settle_time_wait(n).await;
        let server = Arc::new(Server::start(proto, 1, &plan.hub_bin).await?);
        let pid = server.pids[0];
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_bytes(pid);
        let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
        let mut opens = Vec::new();
        let run = callpay::ids::random_id();
        // Joins: every socket opened and welcomed (or the peer's connect acknowledged), 64 at a
        // time (a call's two sockets in either order); wall time and server CPU.
        let joins_started = Instant::now();
        let cpu_before = cpu_us(pid);
        for i in 0..n {
            let (server, gate, run) = (server.clone(), gate.clone(), run.clone());
            opens.push(tokio::spawn(async move {
                let _slot = gate.acquire().await?;
                let role = if i % 2 == 0 { Role::Clinician } else { Role::Patient };
                server.open(i, 0, &format!("idle-{run}-{}", i / 2), role).await
            }));
        }
        let mut sockets = Vec::with_capacity(n);
        for o in opens {
            sockets.push(o.await??);
        }
        let join_secs = joins_started.elapsed().as_secs_f64();
        let join_cpu_us = cpu_us(pid).saturating_sub(cpu_before);
        // Let allocations settle (welcome frames written, buffers trimmed).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_bytes(pid);
        let per_socket = after.saturating_sub(before) as f64 / n as f64;
        let row = json!({
            "sockets": n,
            "rss_before_mb": before as f64 / 1e6,
            "rss_after_mb": after as f64 / 1e6,
            "rss_per_socket_bytes": per_socket,
            "join_secs": join_secs,
            "joins_per_sec": n as f64 / join_secs,
            "server_cpu_us_per_join": join_cpu_us as f64 / n as f64,
            "time_wait_at_start": time_wait_at_start,
        });
        eprintln!("{}: {row}", proto.name());
        rows.push(row);
        drop(sockets);
    }
    Ok(json!({"peer": proto.name(), "idle": rows}))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    }
}

/// Ratios that answer "by how much": other / callpay for costs (higher is better for callpay),
/// callpay / other for throughput.
fn ratios(scenario: &str, results: &[Value]) -> Value {
    let (Some(c), Some(s)) =
        (results.iter().find(|r| r["peer"] == "callpay"), results.iter().find(|r| r["peer"] == "socketio"))
    else {
        return Value::Null;
    };
    if scenario == "idle" {
        let rows: Vec<Value> = c["idle"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(s["idle"].as_array().into_iter().flatten())
            .map(|(a, b)| {
                json!({
                    "sockets": a["sockets"],
                    "rss_per_socket_socketio_over_callpay": ratio(b["rss_per_socket_bytes"].as_f64(), a["rss_per_socket_bytes"].as_f64()),
                    "join_rate_callpay_over_socketio": ratio(a["joins_per_sec"].as_f64(), b["joins_per_sec"].as_f64()),
                })
            })
            .collect();
        return json!(rows);
    }
    let per_rate: Vec<Value> = c["rates"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(s["rates"].as_array().into_iter().flatten())
        .map(|(a, b)| {
            json!({
                "rate": a["rate"],
                "cpu_per_event_socketio_over_callpay": ratio(b["cpu_us_per_event"].as_f64(), a["cpu_us_per_event"].as_f64()),
                "p99_socketio_over_callpay": ratio(b["p99_ms"].as_f64(), a["p99_ms"].as_f64()),
            })
        })
        .collect();
    json!({
        "per_rate": per_rate,
        "highest_rate_p99_under_10ms_callpay_over_socketio": ratio(
            c["highest_rate_p99_under_10ms"].as_f64(),
            s["highest_rate_p99_under_10ms"].as_f64()
        ),
    })
}

/// Runs every peer back to back and reports.
pub async fn run(plan: Plan) -> anyhow::Result<Value> {
    let mut results = Vec::new();
    for peer in &plan.peers {
        let proto = match peer.as_str() {
            "callpay" => Proto::Callpay,
            "socketio" => Proto::SocketIo,
            other => bail!("unknown peer {other} (callpay, socketio)"),
        };
        let result = match plan.scenario.as_str() {
            "relay" => relay(proto, &plan, 1).await?,
            "cluster-relay" => relay(proto, &plan, 2).await?,
            "idle" => idle(proto, &plan).await?,
            other => bail!("unknown compare scenario {other} (relay, cluster-relay, idle)"),
        };
        if plan.strict {
            for row in result["rates"].as_array().into_iter().flatten() {
                if row["lost"] != 0 || row["delivered"].as_u64().unwrap_or(0) < row["sent"].as_u64().unwrap_or(1) {
                    bail!("{peer} lost relayed events: {row}");
                }
            }
        }
        results.push(result);
    }
    let report = json!({
        "scenario": plan.scenario,
        "date": today(),
        "machine": machine(),
        "results": results,
        "ratios": ratios(&plan.scenario, &results),
    });
    if let Some(dir) = &plan.out_dir {
        std::fs::create_dir_all(dir)?;
        let stem = format!("{}-{}", today(), plan.scenario);
        std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&report)?)?;
        std::fs::write(dir.join(format!("{stem}.svg")), crate::chart::svg(&report))?;
        eprintln!("wrote {}/{stem}.json and .svg", dir.display());
    }
    Ok(report)
}

pub fn today() -> String {
    let out = std::process::Command::new("date").arg("+%Y-%m-%d").output();
    out.ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_else(|| "undated".into())
}

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({"cpu": cpu, "cores": cores, "note": "servers and load generator share these cores over loopback"})
}

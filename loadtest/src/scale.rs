//! `scale` and `soak`: a fleet of instances behind nginx ([`crate::cluster`]) and a fleet of
//! clients in worker processes ([`crate::fleet`]), with a per-second timeline of what the
//! clients saw and what the processes used.
//!
//! - `scale`: `--sockets` clients (one call per two) over `--nodes` instances, cross-node relay
//!   at `--relay` events/s and `--pays` payments a minute; after `--steady` seconds, three faults
//!   in turn, each followed by `--steady` seconds: a rolling restart of every instance (SIGTERM,
//!   wait, start again, next once every client is back), Redis stopped for `--outage` seconds,
//!   and the instance holding the most sockets killed with SIGKILL (started again once its
//!   clients are back elsewhere).
//!   Reported: RSS per socket, the join rate, relay p50/p99 before, during and after each fault,
//!   events and confirmations lost or duplicated, time to converge, and the CPU of the
//!   instances, Redis, PostgreSQL and nginx.
//! - `soak`: the same fleet with `--churn` leaves and joins a second for `--seconds`, sampling
//!   every instance's RSS, open files and live tasks and Redis's memory; the growth after
//!   `--warmup` seconds is fitted to a line and checked against bounds (see [`growth_bounds`]).
//!
//! Both write `<out>/<date>-<scenario>.json` and an SVG timeline, and fail (after writing) if an
//! event or a confirmation was lost or duplicated. A `scale` run whose faults do not converge
//! writes `<date>-scale-failed.json` and `.svg` instead, with everything up to the failure.
//! Each window and second also says how sockets ended: by close code as the clients saw them
//! (joined sockets, and joins turned away before `welcome`), and by why, as the instances
//! report it (`callpay_ws_connections_ended_total`, read every five seconds).

use crate::cluster::Cluster;
use crate::fleet::MAX_SOCKETS_PER_WORKER;
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// What to run.
pub struct Plan {
    /// `scale` or `soak`.
    pub scenario: String,
    pub sockets: usize,
    pub nodes: usize,
    pub relay_per_sec: f64,
    pub pays_per_min: f64,
    pub churn_per_sec: f64,
    /// `scale`: seconds of steady load before the first fault and after each.
    pub steady_secs: u64,
    /// `scale`: how long Redis stays down.
    pub outage_secs: u64,
    /// `soak`: how long it runs, and the seconds left out of the fit as warm-up.
    pub seconds: u64,
    pub warmup_secs: u64,
    pub hub_bin: String,
    pub out_dir: PathBuf,
}

/// Children of `pid` (nginx's workers), from `/proc`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Every PostgreSQL server process (the postmaster and its backends), from `/proc`.
fn postgres_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .collect()
}

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// What an instance reports on `/metrics`: live tasks, open sockets, and its joined connections
/// ended so far by why it ended them.
struct Scraped {
    tasks: u64,
    open: u64,
    ended: BTreeMap<String, u64>,
}

/// `callpay_ws_connections_ended_total{why="..."} N` lines, by `why`.
fn ended_by_why(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("callpay_ws_connections_ended_total{why=\""))
        .filter_map(|l| {
            let (why, n) = l.split_once("\"} ")?;
            Some((why.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

/// The ends counted between two scrapes of one instance. A count below the last one read means
/// the instance was started again in between: everything it has counted is new.
fn ended_since(last: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let restarted = last.iter().any(|(why, n)| now.get(why).is_none_or(|m| m < n));
    now.iter()
        .map(|(why, m)| (why.clone(), m - if restarted { 0 } else { last.get(why).copied().unwrap_or(0) }))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Whether every worker reported since the last call, and starts the next second's record.
fn every_worker_reported(reported: &mut [bool]) -> bool {
    let all = reported.iter().all(|r| *r);
    reported.iter_mut().for_each(|r| *r = false);
    all
}

/// Adds a JSON object of counts (`{"4009": 3}`) into `into`.
fn add_counts(into: &mut BTreeMap<String, u64>, counts: &Value) {
    for (k, n) in counts.as_object().into_iter().flatten() {
        *into.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
    }
}

/// The live tasks and open sockets an instance reports on `/metrics`.
async fn scrape(port: u16) -> Option<Scraped> {
    let text = crate::cluster::metrics_text(port).await?;
    let read = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok());
    Some(Scraped {
        tasks: read("callpay_runtime_tasks_alive ")?,
        open: read("callpay_ws_connections_open ")?,
        ended: ended_by_why(&text),
    })
}

async fn redis_used_memory(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn =
        tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await.ok()?.ok()?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok())
}

/// One worker process and the end of its stdin.
struct Worker {
    _child: Child,
    stdin: ChildStdin,
}

enum Report {
    Ready(Value),
    Tick(Value),
    Done(Value),
}

async fn start_workers(
    plan: &Plan,
    cluster: &Cluster,
    tx: mpsc::UnboundedSender<Report>,
) -> anyhow::Result<Vec<Worker>> {
    let calls = plan.sockets / 2;
    let n = (plan.sockets.div_ceil(MAX_SOCKETS_PER_WORKER)).max(1);
    let per = calls.div_ceil(n);
    let run = callpay::ids::random_id();
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for w in 0..n {
        let first = w * per;
        let count = per.min(calls.saturating_sub(first));
        let share = count as f64 / calls as f64;
        let mut child = Command::new(&exe)
            .arg("fleet-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a fleet worker")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let worker_plan = json!({
            "worker": w, "first_call": first, "calls": count, "run": run,
            "url": cluster.ws_url(), "secret": cluster.secret, "stripe_url": cluster.stripe_url,
            "relay_per_sec": plan.relay_per_sec * share, "pays_per_min": plan.pays_per_min * share,
            "churn_per_sec": plan.churn_per_sec * share,
        });
        stdin.write_all(format!("{worker_plan}\n").as_bytes()).await?;
        let mut lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let (kind, rest) = line.split_once(' ').unwrap_or((&line, ""));
                let Ok(v) = serde_json::from_str::<Value>(rest) else { continue };
                let report = match kind {
                    "READY" => Report::Ready(v),
                    "TICK" => Report::Tick(v),
                    "DONE" => Report::Done(v),
                    _ => continue,
                };
                if tx.send(report).is_err() {
                    break;
                }
            }
        });
        workers.push(Worker { _child: child, stdin });
    }
    Ok(workers)
}

/// One second of the run, as the coordinator saw it.
#[derive(Default, Clone)]
struct Second {
    t: f64,
    connected: u64,
    counts: [u64; COUNTS.len()],
    latencies: Vec<u32>,
    rss: u64,
    files: u64,
    tasks: Option<u64>,
    /// Sockets open on each instance (every fifth second), as it reports them.
    per_node: Vec<Option<u64>>,
    redis_memory: Option<u64>,
    cpu_us: [u64; 4],
    /// The time `cpu_us` covers: since the previous second closed, which is more than a second
    /// when a starved coordinator closed none for a while.
    cpu_span_s: f64,
    /// Joined sockets' ends by close code, and join attempts turned away before `welcome` by
    /// close code, as the clients saw them.
    ended_by_code: BTreeMap<String, u64>,
    turned_away_by_code: BTreeMap<String, u64>,
    /// The instances' own account of why they ended connections, since their last scrape.
    hub_ended: BTreeMap<String, u64>,
    /// Calls with a frame in flight for over a second, as the workers last reported them.
    stalled_calls: u64,
    /// Every worker reported during this second: its counts are current.
    all_reported: bool,
    /// The most any worker's runtime woke past its time in the reports of this second (ms):
    /// how much of a late relay was the load generator's own.
    generator_lag_ms: u64,
}

const COUNTS: [&str; 17] = [
    "joins",
    "closes",
    "shed",
    "refused",
    "sent",
    "delivered",
    "cut",
    "lost",
    "unexpected",
    "skipped",
    "errors",
    "rejected",
    "withdrawn",
    "lost_bus_down",
    "held",
    "busy",
    "crossed",
];

/// A named stretch of the run (a fault, or the steady load around it).
struct Mark {
    name: String,
    start: f64,
    end: f64,
}

/// Everything the coordinator keeps while the run goes on.
struct Run {
    started: Instant,
    rx: mpsc::UnboundedReceiver<Report>,
    workers: usize,
    connected_by_worker: Vec<u64>,
    /// Which workers have reported since the last second closed. A saturated worker's reports
    /// come late; its last count may be stale by tens of seconds (a rolling restart once moved
    /// on to the next instance on a count of 70,000 that four workers had not updated).
    reported: Vec<bool>,
    seconds: Vec<Second>,
    current: Second,
    cpu_last: [u64; 4],
    /// When `cpu_last` was read, in seconds since the start.
    cpu_at: f64,
    last_sample: Instant,
    done: Vec<Value>,
    marks: Vec<Mark>,
    total_sockets: usize,
    /// Each instance's process id and ended-by-why counters at its last scrape (they start
    /// from zero with each process; the ends after its last scrape before a stop, a drain's
    /// among them, are not seen here but in the clients' close codes).
    hub_ended_last: Vec<(Option<u32>, BTreeMap<String, u64>)>,
    stalled_by_worker: Vec<u64>,
}

impl Run {
    /// A run of `workers` fleet workers holding `total_sockets`, starting now.
    fn new(rx: mpsc::UnboundedReceiver<Report>, workers: usize, total_sockets: usize) -> Self {
        Self {
            started: Instant::now(),
            rx,
            workers,
            connected_by_worker: vec![0; workers],
            reported: vec![false; workers],
            seconds: Vec::new(),
            current: Second::default(),
            cpu_last: [0; 4],
            cpu_at: 0.0,
            last_sample: Instant::now(),
            done: Vec::new(),
            marks: Vec::new(),
            total_sockets,
            hub_ended_last: Vec::new(),
            stalled_by_worker: Vec::new(),
        }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn connected(&self) -> u64 {
        self.connected_by_worker.iter().sum()
    }

    fn take_report(&mut self, r: Report) {
        match r {
            Report::Tick(v) => {
                let w = v["worker"].as_u64().unwrap_or(0) as usize;
                if let Some(r) = self.reported.get_mut(w) {
                    *r = true;
                }
                if let Some(c) = self.connected_by_worker.get_mut(w) {
                    *c = v["connected"].as_u64().unwrap_or(0);
                }
                for (i, name) in COUNTS.iter().enumerate() {
                    self.current.counts[i] += v[*name].as_u64().unwrap_or(0);
                }
                // A gauge: the worker's latest report stands for it (its ticks are a second apart).
                self.stalled_by_worker.resize(self.workers, 0);
                if let Some(n) = self.stalled_by_worker.get_mut(w) {
                    *n = v["stalled_calls"].as_u64().unwrap_or(0);
                }
                self.current.generator_lag_ms = self.current.generator_lag_ms.max(v["lag_ms"].as_u64().unwrap_or(0));
                add_counts(&mut self.current.ended_by_code, &v["ended_by_code"]);
                add_counts(&mut self.current.turned_away_by_code, &v["turned_away_by_code"]);
                self.current.latencies.extend(
                    v["latency_us"].as_array().into_iter().flatten().filter_map(|l| l.as_u64()).map(|l| l as u32),
                );
            }
            Report::Done(v) => self.done.push(v),
            Report::Ready(_) => {}
        }
    }

    /// Takes reports for `d`, closing a second every second with the processes' figures.
    async fn run_for(&mut self, cluster: &Cluster, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let next = (self.last_sample + Duration::from_secs(1)).min(until);
            match tokio::time::timeout_at(next.into(), self.rx.recv()).await {
                Ok(Some(r)) => self.take_report(r),
                Ok(None) => tokio::time::sleep_until(next.into()).await,
                Err(_) => {}
            }
            if self.last_sample.elapsed() >= Duration::from_secs(1) {
                self.close_second(cluster).await;
            }
        }
    }

    async fn close_second(&mut self, cluster: &Cluster) {
        self.last_sample = Instant::now();
        let nodes = cluster.node_pids();
        let mut s = std::mem::take(&mut self.current);
        s.t = self.now();
        s.connected = self.connected();
        s.all_reported = every_worker_reported(&mut self.reported);
        s.stalled_calls = self.stalled_by_worker.iter().sum();
        s.rss = nodes.iter().map(|p| crate::compare::rss_bytes(*p)).sum();
        s.files = nodes.iter().map(|p| open_files(*p)).sum();
        let redis = cluster.redis_pid();
        let cpu = [
            crate::compare::total_cpu_us(&nodes),
            redis.map_or(0, crate::compare::cpu_us),
            crate::compare::total_cpu_us(&postgres_pids()),
            crate::compare::total_cpu_us(&cluster.nginx_pids()),
        ];
        // Differences of cumulative counters; a restarted process starts again from zero.
        for ((used, now), last) in s.cpu_us.iter_mut().zip(cpu).zip(self.cpu_last) {
            *used = now.saturating_sub(last);
        }
        self.cpu_last = cpu;
        s.cpu_span_s = s.t - self.cpu_at;
        self.cpu_at = s.t;
        if self.seconds.len().is_multiple_of(5) {
            let mut tasks = 0;
            let mut all = true;
            self.hub_ended_last.resize(cluster.nodes.len(), (None, BTreeMap::new()));
            for (i, (port, child)) in cluster.nodes.iter().enumerate() {
                let read = if child.is_some() { scrape(*port).await } else { None };
                match read {
                    Some(read) => {
                        tasks += read.tasks;
                        s.per_node.push(Some(read.open));
                        let (pid, last) = &mut self.hub_ended_last[i];
                        // Another process on the port: all it has counted is new.
                        let now_pid = child.as_ref().and_then(Child::id);
                        if *pid != now_pid {
                            (*pid, *last) = (now_pid, BTreeMap::new());
                        }
                        for (why, n) in ended_since(last, &read.ended) {
                            *s.hub_ended.entry(why).or_default() += n;
                        }
                        *last = read.ended;
                    }
                    None => {
                        all = false;
                        s.per_node.push(None);
                    }
                }
            }
            s.tasks = all.then_some(tasks);
            s.redis_memory = redis_used_memory(&cluster.redis_url()).await;
        }
        self.seconds.push(s);
    }

    /// Runs until every socket is connected (or `within` passes); returns the seconds it took.
    async fn until_all_connected(&mut self, cluster: &Cluster, within: Duration) -> anyhow::Result<f64> {
        let from = self.now();
        let deadline = Instant::now() + within;
        // A tick reflects the second before it: wait for two in a row at the full count.
        let mut full = 0;
        while full < 2 {
            if Instant::now() > deadline {
                bail!("only {} of {} sockets connected after {within:?}", self.connected(), self.total_sockets);
            }
            let before = self.seconds.len();
            self.run_for(cluster, Duration::from_millis(250)).await;
            if self.seconds.len() > before {
                let fresh = self.seconds.last().is_some_and(|s| s.all_reported);
                full = if fresh && self.connected() as usize >= self.total_sockets { full + 1 } else { 0 };
            }
        }
        Ok(self.now() - from)
    }

    fn mark(&mut self, name: &str, start: f64) {
        let end = self.now();
        eprintln!("{name}: {start:.1} s to {end:.1} s");
        self.marks.push(Mark { name: name.into(), start, end });
    }

    fn window(&self, from: f64, to: f64) -> Value {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        let mut counts = [0u64; COUNTS.len()];
        let mut cpu = [0u64; 4];
        let mut secs = 0.0;
        let (mut lag_max, mut stalled_s) = (0u64, 0u64);
        let (mut ended, mut turned_away, mut hub_ended) =
            (BTreeMap::<String, u64>::new(), BTreeMap::<String, u64>::new(), BTreeMap::<String, u64>::new());
        for s in self.seconds.iter().filter(|s| s.t > from && s.t <= to + 0.999) {
            for (into, from) in [
                (&mut ended, &s.ended_by_code),
                (&mut turned_away, &s.turned_away_by_code),
                (&mut hub_ended, &s.hub_ended),
            ] {
                from.iter().for_each(|(k, n)| *into.entry(k.clone()).or_default() += n);
            }
            for l in &s.latencies {
                let _ = h.record(u64::from(*l));
            }
            counts.iter_mut().zip(s.counts).for_each(|(c, n)| *c += n);
            lag_max = lag_max.max(s.generator_lag_ms);
            // Whole seconds of each stall: a worker stalled 5 s reports once, after it, and the
            // seconds it sent nothing show no lag of their own.
            stalled_s += s.generator_lag_ms / 1000;
            cpu.iter_mut().zip(s.cpu_us).for_each(|(c, n)| *c += n);
            // Over the time the readings cover, not the seconds closed: a starved coordinator
            // closes fewer seconds than pass, and each of its readings spans the gap.
            secs += s.cpu_span_s;
        }
        let ms = |q: f64| if h.is_empty() { Value::Null } else { json!(h.value_at_quantile(q) as f64 / 1000.0) };
        let pct =
            |us: u64| if secs > 0.0 { json!((us as f64 / (secs * 1e6) * 1000.0).round() / 10.0) } else { Value::Null };
        let mut v = json!({
            "from_s": (from * 10.0).round() / 10.0, "to_s": (to * 10.0).round() / 10.0,
            "relay_p50_ms": ms(0.5), "relay_p99_ms": ms(0.99), "relay_max_ms": if h.is_empty() { Value::Null } else { json!(h.max() as f64 / 1000.0) },
            "cpu_percent_of_a_core": {"instances": pct(cpu[0]), "redis": pct(cpu[1]), "postgres": pct(cpu[2]), "nginx": pct(cpu[3])},
            "clients_ended_by_code": ended, "clients_turned_away_by_code": turned_away,
            "instances_ended_by_why": hub_ended,
            "generator_lag_max_ms": lag_max, "generator_stalled_s": stalled_s,
        });
        for (i, name) in COUNTS.iter().enumerate() {
            v[*name] = json!(counts[i]);
        }
        v
    }

    fn totals(&self) -> Value {
        self.window(0.0, self.seconds.last().map_or(0.0, |s| s.t))
    }
}

/// Runs `scale` or `soak`.
pub async fn run(plan: Plan) -> anyhow::Result<Value> {
    anyhow::ensure!(plan.sockets >= 2 && plan.nodes >= 1, "--sockets must be at least 2 and --nodes at least 1");
    anyhow::ensure!(plan.scenario != "scale" || plan.nodes >= 2, "scale needs at least two nodes (one is killed)");
    let cluster = Cluster::start(&plan.hub_bin, plan.nodes, plan.sockets).await?;
    let mut cluster = cluster;
    let (tx, rx) = mpsc::unbounded_channel();
    let calls = plan.sockets / 2;
    let mut workers = start_workers(&plan, &cluster, tx).await?;
    let mut run = Run::new(rx, workers.len(), calls * 2);
    // Setup: every socket joined once.
    let mut ready = Vec::new();
    let setup_deadline = Instant::now() + Duration::from_secs(900);
    while ready.len() < run.workers {
        let r = tokio::time::timeout_at(setup_deadline.into(), run.rx.recv())
            .await
            .context("the fleet did not join within 15 minutes")?
            .context("a fleet worker exited during setup")?;
        match r {
            Report::Ready(v) => ready.push(v),
            other => run.take_report(other),
        }
    }
    let setup_s = ready.iter().filter_map(|r| r["setup_ms"].as_u64()).max().unwrap_or(0) as f64 / 1000.0;
    let joins_per_sec = run.total_sockets as f64 / setup_s.max(1e-3);
    eprintln!("{}: {} sockets joined in {setup_s:.1} s ({joins_per_sec:.0}/s)", plan.scenario, run.total_sockets);
    run.cpu_last = [0; 4];
    run.close_second(&cluster).await;
    run.seconds.clear();
    let mut faults = Vec::new();
    if plan.scenario == "scale" {
        let t = run.now();
        run.run_for(&cluster, Duration::from_secs(plan.steady_secs)).await;
        run.mark("steady", t);
        let per_socket = run.seconds.last().map_or(0, |s| s.rss) as f64 / run.total_sockets as f64;
        if let Err(e) = faults_in_turn(&plan, &mut run, &mut cluster, &mut workers, &mut faults).await {
            // What happened up to the failure is the evidence of why: kept, then the error.
            let since = run.marks.last().map_or(0.0, |m| m.end);
            let extra = json!({
                "failed": format!("{e:#}"), "since_last_fault": run.window(since, run.now()),
                "rss_per_socket_bytes": per_socket.round(), "joins_per_sec": joins_per_sec.round(), "setup_s": setup_s,
                "faults": faults, "nginx_errors": cluster.nginx_errors(),
            });
            run.mark("failed", since);
            if let Err(w) = write_report(&plan, "scale-failed", &report_base(&plan, Value::Null, extra, &run)) {
                eprintln!("could not write the failed run's report: {w:#}");
            }
            return Err(e);
        }
        faults.iter_mut().for_each(|f| fill_after(&run, f, plan.steady_secs));
        let report = finish(&mut run, &mut workers, &cluster, &plan).await?;
        return conclude(
            plan,
            report,
            json!({
                "rss_per_socket_bytes": per_socket.round(),
                "joins_per_sec": joins_per_sec.round(), "setup_s": setup_s,
                "faults": faults, "nginx_errors": cluster.nginx_errors(),
            }),
            &run,
        );
    }
    // Soak: steady churn for the whole time.
    let t = run.now();
    run.run_for(&cluster, Duration::from_secs(plan.seconds)).await;
    run.mark("churn", t);
    let growth = growth(&run, plan.warmup_secs as f64);
    let report = finish(&mut run, &mut workers, &cluster, &plan).await?;
    let verdicts = growth_bounds(&plan, &growth);
    let ok = verdicts.iter().all(|v| v["ok"] == true);
    let result = conclude(
        plan,
        report,
        json!({"joins_per_sec": joins_per_sec.round(), "setup_s": setup_s, "growth": growth, "bounds": verdicts}),
        &run,
    )?;
    anyhow::ensure!(ok, "growth beyond its bound: {}", result["bounds"]);
    Ok(result)
}

/// The faults of `scale` in turn, each with `--steady` seconds of load after it; each fault's
/// report is pushed to `faults` as it ends, so a failure keeps the ones before it.
async fn faults_in_turn(
    plan: &Plan,
    run: &mut Run,
    cluster: &mut Cluster,
    workers: &mut [Worker],
    faults: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let steady = Duration::from_secs(plan.steady_secs);
    // A rolling restart: each instance drained and started again once its clients are back.
    let t = run.now();
    for i in 0..plan.nodes {
        cluster.stop_node(i, libc::SIGTERM).await?;
        cluster.start_node(i).await?;
        run.until_all_connected(cluster, Duration::from_secs(180)).await?;
    }
    let converge = run.now() - t;
    run.mark("rolling restart", t);
    faults.push(fault_report(run, "rolling restart", t, converge, plan.steady_secs));
    run.run_for(cluster, steady).await;
    // Redis down. Frames sent from its stop until relay flows again are counted apart if
    // they never arrive: between instances there is no bus to carry them.
    let t = run.now();
    tell(workers, "bus down").await;
    cluster.stop_redis().await?;
    run.run_for(cluster, Duration::from_secs(plan.outage_secs)).await;
    cluster.start_redis().await?;
    tell(workers, "bus back").await;
    let converge = until_relay_flows(run, cluster, t).await?;
    tell(workers, "bus up").await;
    run.mark("redis stopped", t);
    faults.push(fault_report(run, "redis stopped", t, converge, plan.steady_secs));
    run.run_for(cluster, steady).await;
    // One instance killed.
    let t = run.now();
    let (victim, held) = match kill_victim(&run.seconds) {
        Some((victim, held)) => (victim, Some(held)),
        None => (plan.nodes - 1, None),
    };
    cluster.stop_node(victim, libc::SIGKILL).await?;
    let back = run.until_all_connected(cluster, Duration::from_secs(180)).await?;
    run.mark("instance killed", t);
    let mut report = fault_report(run, "instance killed", t, back, plan.steady_secs);
    report["victim"] = json!({ "instance": victim, "sockets": held });
    faults.push(report);
    cluster.start_node(victim).await?;
    run.run_for(cluster, steady).await;
    Ok(())
}

/// The instance to kill and the sockets it held: the one holding the most in the last second
/// that read them. (The last instance was killed before: after a rolling restart with fast
/// reconnects it held none, its clients all back elsewhere before it started again, and the
/// kill tested nothing; run 18 at 70,000 sockets.)
fn kill_victim(seconds: &[Second]) -> Option<(usize, u64)> {
    let last = seconds.iter().rev().find(|s| !s.per_node.is_empty())?;
    last.per_node
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((i, (*n)?)))
        .max_by_key(|(i, n)| (*n, std::cmp::Reverse(*i)))
}

/// After Redis is back: the seconds from `t` until a second relays at least 95 % of what was
/// sent in it with every socket connected and no call stalled. The share alone is not enough:
/// with most calls on one instance it is met while the calls across instances still wait for
/// their links to Redis, and frames they lose then are not lost with the bus down.
async fn until_relay_flows(run: &mut Run, cluster: &Cluster, t: f64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let before = run.seconds.len();
        run.run_for(cluster, Duration::from_millis(250)).await;
        if run.seconds.len() > before
            && let Some(s) = run.seconds.last()
        {
            let (sent, delivered) = (s.counts[4], s.counts[5]);
            let flowing = sent > 0 && delivered * 100 >= sent * 95 && s.stalled_calls == 0;
            if flowing && s.all_reported && s.connected as usize >= run.total_sockets {
                return Ok(run.now() - t);
            }
        }
        if Instant::now() > deadline {
            bail!("relay did not recover within 120 s of Redis coming back");
        }
    }
}

fn fault_report(run: &Run, name: &str, t: f64, converge: f64, steady: u64) -> Value {
    json!({
        "fault": name,
        "converged_after_s": (converge * 10.0).round() / 10.0,
        "before": run.window(t - steady as f64, t),
        "during": run.window(t, t + converge),
    })
}

fn fill_after(run: &Run, fault: &mut Value, steady: u64) {
    let end = fault["during"]["to_s"].as_f64().unwrap_or(0.0);
    fault["after"] = run.window(end, end + steady as f64);
}

/// Sends every worker one line of its protocol.
async fn tell(workers: &mut [Worker], line: &str) {
    for w in workers.iter_mut() {
        let _ = w.stdin.write_all(format!("{line}\n").as_bytes()).await;
    }
}

/// Stops the workers and gathers their final accounting.
async fn finish(run: &mut Run, workers: &mut [Worker], cluster: &Cluster, plan: &Plan) -> anyhow::Result<Value> {
    tell(workers, "stop").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while run.done.len() < workers.len() {
        if Instant::now() > deadline {
            bail!("workers did not report within 120 s of stop");
        }
        run.run_for(cluster, Duration::from_millis(200)).await;
    }
    // The last ticks came with the reports.
    run.close_second(cluster).await;
    let sum = |k: &str| run.done.iter().map(|d| d[k].as_u64().unwrap_or(0)).sum::<u64>();
    let payments = json!({
        "per_minute_asked": plan.pays_per_min,
        "requested": sum("payments_requested"), "paid": sum("payments_paid"), "refused_by_hub": sum("payments_refused"),
        "not_paid": sum("payments_not_paid"),
        "notices_missing": sum("notices_missing"), "notices_twice": sum("notices_twice"),
        "confirmations_twice": sum("confirmations_twice"),
        "not_paid_examples": run.done.iter().flat_map(|d| d["payments_not_paid_examples"].as_array().cloned().unwrap_or_default()).take(5).collect::<Vec<_>>(),
        "notices_missing_examples": run.done.iter().flat_map(|d| d["notices_missing_examples"].as_array().cloned().unwrap_or_default()).take(5).collect::<Vec<_>>(),
    });
    Ok(payments)
}

/// Fits `y = a + b t` over the samples after warm-up; the slope per minute and the fitted
/// growth over the fitted span.
fn fit(points: &[(f64, f64)]) -> Value {
    let n = points.len() as f64;
    if points.len() < 3 {
        return json!({"samples": points.len()});
    }
    let (mt, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let span = points.last().unwrap().0 - points[0].0;
    json!({
        "samples": points.len(), "mean": my.round(),
        "first": points[0].1, "last": points.last().unwrap().1,
        "min": points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        "max": points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        "slope_per_min": (slope * 60.0 * 100.0).round() / 100.0,
        "slope_per_hour": (slope * 3600.0).round(),
        "fitted_growth": (slope * span).round(), "span_s": span.round(),
    })
}

fn growth(run: &Run, warmup: f64) -> Value {
    let after: Vec<&Second> = run.seconds.iter().filter(|s| s.t >= warmup).collect();
    let series = |f: &dyn Fn(&Second) -> Option<f64>| -> Vec<(f64, f64)> {
        after.iter().filter_map(|s| f(s).map(|y| (s.t, y))).collect()
    };
    json!({
        "warmup_s": warmup,
        "rss_bytes": fit(&series(&|s| Some(s.rss as f64))),
        "open_files": fit(&series(&|s| Some(s.files as f64))),
        "tasks": fit(&series(&|s| s.tasks.map(|t| t as f64))),
        "redis_used_memory_bytes": fit(&series(&|s| s.redis_memory.map(|m| m as f64))),
    })
}

/// The soak's bounds on growth after warm-up, as fitted over the run, each with why.
///
/// - Open files and live tasks: a leak of one per leave (`--churn` a second) would add
///   `churn x span` of them; sockets in the middle of a reconnect make the count wobble by about
///   `churn x 1 s`. Bound: 1 % of the leaves in the span, and at least 2 s of churn.
/// - RSS: a leak of one socket's state (about 7 KB) per leave would add `7 KB x leaves`; the
///   allocator keeps freed pages for reuse and grows in steps of its arenas. Bound: 1 KB per
///   leave in the span, and at least 8 MB.
/// - Redis memory: presence records expire and pub/sub keeps nothing: a leak of one 100-byte
///   key per leave. Bound: 10 bytes per leave, and at least 1 MB.
fn growth_bounds(plan: &Plan, growth: &Value) -> Vec<Value> {
    let leaves = |m: &str| plan.churn_per_sec * growth[m]["span_s"].as_f64().unwrap_or(0.0);
    let check = |m: &str, bound: f64, why: &str| {
        let g = growth[m]["fitted_growth"].as_f64();
        json!({"measure": m, "fitted_growth": g, "bound": bound.round(), "ok": g.is_none_or(|g| g <= bound), "why": why})
    };
    vec![
        check(
            "open_files",
            (0.01 * leaves("open_files")).max(2.0 * plan.churn_per_sec).max(20.0),
            "1 % of the leaves, at least 2 s of churn",
        ),
        check(
            "tasks",
            (0.01 * leaves("tasks")).max(2.0 * plan.churn_per_sec).max(20.0),
            "1 % of the leaves, at least 2 s of churn",
        ),
        check("rss_bytes", (1024.0 * leaves("rss_bytes")).max(8.0 * 1024.0 * 1024.0), "1 KB per leave, at least 8 MB"),
        check(
            "redis_used_memory_bytes",
            (10.0 * leaves("redis_used_memory_bytes")).max(1024.0 * 1024.0),
            "10 bytes per leave, at least 1 MB",
        ),
    ]
}

/// The run's report: the plan, `payments`, the timeline and totals, and `extra`.
fn report_base(plan: &Plan, payments: Value, extra: Value, run: &Run) -> Value {
    let timeline: Vec<Value> = run
        .seconds
        .iter()
        .map(|s| {
            let mut l = s.latencies.clone();
            l.sort_unstable();
            let q = |p: f64| l.get(((l.len() as f64 - 1.0) * p).round() as usize).map(|v| f64::from(*v) / 1000.0);
            let mut second = json!({
                "t": (s.t * 10.0).round() / 10.0, "connected": s.connected, "all_reported": s.all_reported, "stalled_calls": s.stalled_calls,
                "joins": s.counts[0], "sent": s.counts[4], "delivered": s.counts[5], "cut": s.counts[6], "lost": s.counts[7], "lost_bus_down": s.counts[13],
                "p50_ms": q(0.5), "p99_ms": q(0.99), "generator_lag_ms": s.generator_lag_ms,
                "rss_bytes": s.rss, "open_files": s.files, "tasks": s.tasks,
                "sockets_per_instance": if s.per_node.is_empty() { Value::Null } else { json!(s.per_node) }, "redis_used_memory_bytes": s.redis_memory,
            });
            // Ends and refusals only in the seconds that had them: the file stays readable.
            for (key, counts) in [("ended_by_code", &s.ended_by_code), ("turned_away_by_code", &s.turned_away_by_code), ("instances_ended_by_why", &s.hub_ended)] {
                if !counts.is_empty() {
                    second[key] = json!(counts);
                }
            }
            second
        })
        .collect();
    let mut report = json!({
        "scenario": plan.scenario,
        "date": crate::compare::today(),
        "machine": crate::compare::machine(),
        "nodes": plan.nodes, "sockets": run.total_sockets, "calls": run.total_sockets / 2, "fleet_workers": run.workers,
        "relay_per_sec_asked": plan.relay_per_sec, "churn_per_sec_asked": plan.churn_per_sec,
        "balancer": "nginx (least_conn, one zone shared by its workers)",
        "payments": payments,
        "totals": run.totals(),
        "marks": run.marks.iter().map(|m| json!({"name": m.name, "start_s": m.start, "end_s": m.end})).collect::<Vec<_>>(),
        "timeline": timeline,
    });
    if let (Some(r), Some(e)) = (report.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    report
}

/// Writes `report` as `<date>-<name>.json` and its chart as `.svg` under `--out`.
fn write_report(plan: &Plan, name: &str, report: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plan.out_dir)?;
    let base = plan.out_dir.join(format!("{}-{name}", crate::compare::today()));
    std::fs::write(base.with_extension("json"), serde_json::to_string_pretty(report)?)?;
    std::fs::write(base.with_extension("svg"), crate::chart::timeline_svg(report))?;
    eprintln!("wrote {}.json and .svg", base.display());
    Ok(())
}

/// Writes the report with its timeline and totals, and fails on anything lost or doubled.
fn conclude(plan: Plan, payments: Value, extra: Value, run: &Run) -> anyhow::Result<Value> {
    let report = report_base(&plan, payments, extra, run);
    write_report(&plan, &plan.scenario, &report)?;
    let totals = &report["totals"];
    let p = &report["payments"];
    let faults = [
        ("relay events lost", totals["lost"].as_u64()),
        ("relay events delivered twice or unsent", totals["unexpected"].as_u64()),
        ("payment notices missing", p["notices_missing"].as_u64()),
        ("payment notices given twice", p["notices_twice"].as_u64()),
        ("payments confirmed twice to one client", p["confirmations_twice"].as_u64()),
    ];
    let bad: Vec<String> = faults
        .iter()
        .filter(|(_, n)| n.unwrap_or(0) > 0)
        .map(|(what, n)| format!("{}: {}", what, n.unwrap_or(0)))
        .collect();
    if !bad.is_empty() {
        bail!("{}: {} (examples: {})", plan.scenario, bad.join(", "), p["notices_missing_examples"]);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_a_window_is_a_share_of_the_time_its_readings_cover() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let mut run = Run::new(rx, 1, 2);
        // Instances at one core throughout; the coordinator closed no second from 2 s to 32 s.
        for (t, span) in [(1.0, 1.0), (2.0, 1.0), (32.0, 30.0)] {
            let us = (span * 1e6) as u64;
            run.seconds.push(Second { t, cpu_span_s: span, cpu_us: [us, 0, us / 2, 0], ..Second::default() });
        }
        let w = run.window(0.0, 32.0);
        assert_eq!(w["cpu_percent_of_a_core"]["instances"], 100.0, "{w}");
        assert_eq!(w["cpu_percent_of_a_core"]["postgres"], 50.0);
    }

    #[test]
    fn the_instance_killed_is_the_one_holding_the_most_sockets_when_last_read() {
        let read = |per_node: Vec<Option<u64>>| Second { per_node, ..Second::default() };
        // As after run 18's rolling restart: the last instance empty, one not answering.
        let seconds = [
            read(vec![Some(5), Some(5), Some(5), Some(5), Some(5)]),
            read(vec![Some(19_488), None, Some(19_488), Some(11_536), Some(0)]),
            Second::default(),
        ];
        assert_eq!(kill_victim(&seconds), Some((0, 19_488)), "the first of the fullest, from the last reading");
        assert_eq!(kill_victim(&seconds[..1]), Some((0, 5)));
        assert_eq!(kill_victim(&[Second::default()]), None, "nothing read yet");
    }

    #[test]
    fn a_second_counts_only_if_every_worker_reported_in_it() {
        let mut reported = vec![true, false, true];
        assert!(!every_worker_reported(&mut reported), "one worker's count is stale");
        assert_eq!(reported, [false, false, false], "the next second starts afresh");
        reported.iter_mut().for_each(|r| *r = true);
        assert!(every_worker_reported(&mut reported));
    }

    #[test]
    fn an_instances_ends_are_read_from_its_metrics_and_counted_once_across_scrapes_and_restarts() {
        let metrics = callpay::metrics::Metrics::new();
        metrics.ended("heartbeat lost");
        metrics.ended("heartbeat lost");
        metrics.ended("peer closed");
        let first = ended_by_why(&metrics.render(0));
        assert_eq!(first, BTreeMap::from([("heartbeat lost".into(), 2), ("peer closed".into(), 1)]));

        metrics.ended("peer closed");
        let second = ended_by_why(&metrics.render(0));
        assert_eq!(ended_since(&first, &second), BTreeMap::from([("peer closed".into(), 1)]), "only what is new");
        assert!(ended_since(&second, &second).is_empty());

        // Started again: its counters begin at zero, and all it counts since is new.
        let again = callpay::metrics::Metrics::new();
        again.ended("heartbeat lost");
        let restarted = ended_by_why(&again.render(0));
        assert_eq!(ended_since(&second, &restarted), BTreeMap::from([("heartbeat lost".into(), 1)]));
    }
}

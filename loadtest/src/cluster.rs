//! The processes a `scale` or `soak` run puts on this machine, and what the run does to them:
//! `nodes` `callpay serve` instances on a fresh PostgreSQL database and a private Redis (so
//! stopping it touches nobody else), behind nginx (least connections, WebSocket upgrade), with
//! the Stripe simulator in this process sending its webhooks through nginx too. Each instance
//! keeps its port across restarts, as a deployment's would.

use crate::free_port;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Seconds a drained instance waits for its sockets before it stops (the hub's setting).
const SHUTDOWN_GRACE_SECS: u64 = 20;
/// Longest a drained instance holds its sockets while the others take them (the hub's default
/// `server.drain_max_secs`).
const DRAIN_MAX_SECS: u64 = 30;

/// The instances' `server.drain_max_secs`: they inherit this process's environment, so a run
/// may set `CALLPAY__SERVER__DRAIN_MAX_SECS`; otherwise the hub's default.
fn drain_max_secs() -> u64 {
    std::env::var("CALLPAY__SERVER__DRAIN_MAX_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(DRAIN_MAX_SECS)
}
/// PostgreSQL connections the instances may open between them: the machine's server allows
/// 100, and the run and the operator need a few.
const POSTGRES_CONNECTIONS: usize = 90;

/// Each instance's PostgreSQL pool (`database.max_connections`): the hub's default of 16 up to
/// five instances, smaller past that so that the fleet stays within [`POSTGRES_CONNECTIONS`];
/// an error past 22 instances, where even the hub's least (4) would not fit.
pub(crate) fn pool_per_instance(nodes: usize) -> anyhow::Result<usize> {
    let pool = (POSTGRES_CONNECTIONS / nodes.max(1)).min(16);
    if pool < 4 {
        bail!("{nodes} instances of at least 4 PostgreSQL connections each do not fit in {POSTGRES_CONNECTIONS}");
    }
    Ok(pool)
}

async fn wait_listening(port: u16, what: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("{what} on port {port} did not start within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The running cluster; dropping it stops every process and drops the database.
pub struct Cluster {
    bin: String,
    /// Where each instance's log is appended (`instance-<i>.log`), when one was asked for.
    logs: Option<PathBuf>,
    dir: PathBuf,
    db: String,
    env: Vec<(String, String)>,
    /// Port and process of each instance (`None` while stopped).
    pub nodes: Vec<(u16, Option<Child>)>,
    redis: Option<Child>,
    redis_port: u16,
    nginx: Option<Child>,
    /// The balancer's port: every client and webhook goes through it.
    pub lb_port: u16,
    /// The platform secret join tokens are signed with.
    pub secret: String,
    /// The simulator's base URL.
    pub stripe_url: String,
    _sim: stripe_sim::SimHandle,
}

impl Cluster {
    /// Starts Redis, the instances, nginx for `sockets` client sockets, and seeds the demo clinic.
    pub async fn start(bin: &str, nodes: usize, sockets: usize) -> anyhow::Result<Self> {
        let pool = pool_per_instance(nodes)?;
        let dir = std::env::temp_dir().join(format!("callpay-scale-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let db = format!("callpay_scale_{}", std::process::id());
        crate::psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))?;
        crate::psql(&format!("CREATE DATABASE {db}"))?;
        let db_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
        let lb_port = free_port()?;
        let webhook_secret = "whsec_scale";
        let sim = stripe_sim::spawn(stripe_sim::SimConfig {
            webhooks: vec![stripe_sim::WebhookTarget {
                url: format!("http://127.0.0.1:{lb_port}/v1/stripe/webhook"),
                secret: webhook_secret.into(),
            }],
            ..stripe_sim::SimConfig::default()
        })
        .await?;
        let redis_port = free_port()?;
        let secret = "scale-platform-secret-0123456789abcdef".to_owned();
        // For a diagnosis, `CALLPAY_LOADTEST_INSTANCE_LOG=<filter>` sets the instances' log
        // filter and keeps what they log (see `start_node`); otherwise warnings only, dropped.
        let log_filter = std::env::var("CALLPAY_LOADTEST_INSTANCE_LOG").ok().filter(|f| !f.is_empty());
        let env = vec![
            ("RUST_LOG", log_filter.clone().unwrap_or_else(|| "warn".to_owned())),
            ("CALLPAY__AUTH__SECRET", secret.clone()),
            ("CALLPAY__DATABASE__URL", db_url.clone()),
            ("CALLPAY__DATABASE__MAX_CONNECTIONS", pool.to_string()),
            ("CALLPAY__BUS__REDIS_URL", format!("redis://127.0.0.1:{redis_port}/")),
            ("CALLPAY__STRIPE__SECRET_KEY", sim.secret_key().to_owned()),
            ("CALLPAY__STRIPE__PUBLISHABLE_KEY", sim.publishable_key().to_owned()),
            ("CALLPAY__STRIPE__CLIENT_ID", sim.client_id().to_owned()),
            ("CALLPAY__STRIPE__API_BASE", sim.url.clone()),
            ("CALLPAY__STRIPE__CONNECT_BASE", sim.url.clone()),
            ("CALLPAY__STRIPE__WEBHOOK_SECRETS", webhook_secret.to_owned()),
            ("CALLPAY__SERVER__SHUTDOWN_GRACE_SECS", SHUTDOWN_GRACE_SECS.to_string()),
            // Kept logs are for grep: no colour codes around the fields.
            ("NO_COLOR", "1".to_owned()),
        ];
        let logs =
            log_filter.map(|_| std::env::temp_dir().join(format!("callpay-instance-logs-{}", std::process::id())));
        if let Some(logs) = &logs {
            std::fs::create_dir_all(logs)?;
            eprintln!("instance logs: {}", logs.display());
        }
        let mut cluster = Self {
            bin: bin.to_owned(),
            logs,
            dir,
            db,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            nodes: Vec::new(),
            redis: None,
            redis_port,
            nginx: None,
            lb_port,
            secret,
            stripe_url: sim.url.trim_end_matches('/').to_owned(),
            _sim: sim,
        };
        cluster.start_redis().await?;
        for _ in 0..nodes {
            cluster.nodes.push((free_port()?, None));
        }
        for i in 0..nodes {
            cluster.start_node(i).await?;
        }
        let store = callpay::store::SqlStore::connect(&db_url).await?;
        callpay::demo::seed(&store, &cluster._sim).await?;
        cluster.start_nginx(sockets).await?;
        Ok(cluster)
    }

    /// The PostgreSQL database's name.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// The balancer's WebSocket base URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.lb_port)
    }

    /// Process ids of the running instances.
    pub fn node_pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|(_, c)| c.as_ref().and_then(Child::id)).collect()
    }

    /// Process id of Redis, while it runs.
    pub fn redis_pid(&self) -> Option<u32> {
        self.redis.as_ref().and_then(Child::id)
    }

    /// Process ids of nginx's master and workers.
    pub fn nginx_pids(&self) -> Vec<u32> {
        let Some(master) = self.nginx.as_ref().and_then(Child::id) else { return Vec::new() };
        let mut pids = vec![master];
        pids.extend(crate::scale::children_of(master));
        pids
    }

    /// Redis's URL.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port)
    }

    /// Starts (or restarts) instance `i` on its port and waits until it listens.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.nodes[i].0;
        let stdout = match &self.logs {
            Some(dir) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("instance-{i}.log")))?;
                Stdio::from(file)
            }
            None => Stdio::null(),
        };
        let child = Command::new(&self.bin)
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("CALLPAY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(stdout)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting instance {i} from {}", self.bin))?;
        self.nodes[i].1 = Some(child);
        wait_listening(port, "instance", Duration::from_secs(60)).await
    }

    /// Sends `signal` to instance `i` and waits until it has exited.
    pub async fn stop_node(&mut self, i: usize, signal: i32) -> anyhow::Result<()> {
        let Some(mut child) = self.nodes[i].1.take() else { return Ok(()) };
        let pid = child.id().context("instance has no pid")?;
        // SAFETY: kill(2) with the pid of our own child and a plain signal number.
        unsafe {
            libc::kill(pid as i32, signal);
        }
        tokio::time::timeout(Duration::from_secs(SHUTDOWN_GRACE_SECS + drain_max_secs() + 15), child.wait())
            .await
            .with_context(|| format!("instance {i} did not exit after signal {signal}"))??;
        Ok(())
    }

    /// Starts Redis on its port (nothing kept on disk, like the machine's own).
    pub async fn start_redis(&mut self) -> anyhow::Result<()> {
        let port = self.redis_port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--maxclients", "10000"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        self.redis = Some(child);
        wait_listening(self.redis_port, "Redis", Duration::from_secs(10)).await
    }

    /// Stops Redis at once (SIGKILL: an outage, not a maintenance window).
    pub async fn stop_redis(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.redis.take() {
            child.kill().await?;
        }
        Ok(())
    }

    async fn start_nginx(&mut self, sockets: usize) -> anyhow::Result<()> {
        // Each proxied socket is two connections in a worker, and a worker holds at most this
        // machine's 20,000 open files: enough workers that one holds under 7,000 sockets.
        let workers = sockets.div_ceil(7_000).max(2);
        // max_fails=0, as deploy/nginx/nginx.conf: a stopped node is skipped per request
        // (proxy_next_upstream), never taken out of rotation for a while. Marking nodes down
        // could take both out at once in a rolling restart, and a local `scale` smoke run then
        // took 25 s rather than 4 s to rejoin 40 sockets (174 connections refused).
        let upstreams: String =
            self.nodes.iter().map(|(port, _)| format!("    server 127.0.0.1:{port} max_fails=0;\n")).collect();
        let d = self.dir.display();
        // With diagnostic logs asked for, nginx also logs at `info` beside the instances: each
        // connection a client or an upstream closed, with its request line (the call) and
        // upstream (the instance), to pair with what the instances logged.
        // And an access log line as each connection ends: which upstreams it was offered to,
        // what each answered, and when and how long.
        let (info_log, access_log) = match &self.logs {
            Some(logs) => (
                format!("error_log {}/nginx-info.log info;\n", logs.display()),
                format!(
                    "log_format ends '$msec $connection $remote_addr:$remote_port \"$request\" $status $request_time \
                     up=$upstream_addr ups=$upstream_status uct=$upstream_connect_time uht=$upstream_header_time \
                     sent=$bytes_sent';\n  access_log {}/nginx-access.log ends;",
                    logs.display()
                ),
            ),
            None => (String::new(), "access_log off;".to_owned()),
        };
        let conf = format!(
            "daemon off;
worker_processes {workers};
worker_rlimit_nofile 19500;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log error;
{info_log}events {{ worker_connections 19000; multi_accept on; }}
http {{
  {access_log}
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream callpay {{
    least_conn;
    zone callpay 256k;
{upstreams}  }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=65535;
    location / {{
      proxy_pass http://callpay;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_connect_timeout 2s;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      proxy_buffering off;
      proxy_next_upstream error timeout http_502 http_503;
      # From the client's own loopback address (127.0.0.2-9): from 127.0.0.1 alone, nginx runs
      # out of source ports (EADDRNOTAVAIL, a 502) with some 19,000 sockets on one instance.
      proxy_bind $remote_addr;
    }}
  }}
}}
",
            port = self.lb_port
        );
        let path = self.dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("nginx")
            .args(["-p", &self.dir.display().to_string(), "-c", &path.display().to_string()])
            .spawn()
            .context("starting nginx (apt-get install nginx-light)")?;
        self.nginx = Some(child);
        wait_listening(self.lb_port, "nginx", Duration::from_secs(10)).await
    }
}

impl Cluster {
    /// nginx's error log so far, by kind of message (the text after the connection number, up
    /// to the first `, client:`, with digits left out), so a run can say what the proxy saw.
    pub fn nginx_errors(&self) -> std::collections::BTreeMap<String, u64> {
        match std::fs::read(self.dir.join("nginx-error.log")) {
            Ok(bytes) => nginx_error_kinds(&String::from_utf8_lossy(&bytes)),
            Err(e) => std::collections::BTreeMap::from([(format!("(log not read: {e})"), 0)]),
        }
    }
}

/// The text of an instance's `/metrics`, if it answers within 2 s.
pub async fn metrics_text(port: u16) -> Option<String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let url = format!("http://127.0.0.1:{port}/metrics").parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.get(url)).await.ok()?.ok()?;
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// Welcome-read statements the instances on `ports` report (`None` if one does not answer).
pub async fn welcome_statements(ports: &[u16]) -> Option<u64> {
    let mut total = 0;
    for port in ports {
        let text = metrics_text(*port).await?;
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("callpay_store_welcome_statements_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())?;
    }
    Some(total)
}

/// Counts nginx error-log lines by kind: `upstream prematurely closed connection while reading
/// upstream`, `connect() failed (111: Connection refused) while connecting to upstream`, ...
pub fn nginx_error_kinds(text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut kinds = std::collections::BTreeMap::new();
    for line in text.lines() {
        // `2026/12/05 02:00:00 [error] 123#0: *456 what happened, client: ...`
        let what = line.split_once("] ").map_or(line, |(_, rest)| rest);
        let what = what.split_once(": ").map_or(what, |(_, rest)| rest);
        let what = what.strip_prefix('*').and_then(|w| w.split_once(' ')).map_or(what, |(_, rest)| rest);
        let what = what.split(", client:").next().unwrap_or(what);
        let kind: String = what.chars().filter(|c| !c.is_ascii_digit()).collect();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // nginx's workers outlive a killed master: ask for its fast shutdown and give it a
        // moment to pass it on.
        if let Some(mut nginx) = self.nginx.take() {
            if let Some(pid) = nginx.id() {
                // SAFETY: kill(2) with the pid of our own child and a plain signal number.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(nginx.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (_, child) in &mut self.nodes {
            if let Some(c) = child {
                let _ = c.start_kill();
            }
        }
        if let Some(r) = &mut self.redis {
            let _ = r.start_kill();
        }
        let _ = crate::psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instances_pools_fit_in_the_servers_connections() {
        assert_eq!(pool_per_instance(5).unwrap(), 16, "five instances keep the hub's default");
        assert_eq!(pool_per_instance(7).unwrap(), 12);
        assert_eq!(pool_per_instance(22).unwrap(), 4);
        assert!(pool_per_instance(23).is_err(), "below the hub's least");
        for nodes in 1..=22 {
            assert!(nodes * pool_per_instance(nodes).unwrap() <= POSTGRES_CONNECTIONS, "{nodes} instances");
        }
    }

    #[test]
    fn nginx_errors_are_counted_by_kind() {
        let log = "2026/12/05 02:00:00 [error] 123#0: *456 upstream prematurely closed connection while reading upstream, client: 127.0.0.2, server: , request: \"GET /v1/calls/c/ws HTTP/1.1\", upstream: \"http://127.0.0.1:4101/v1/calls/c/ws\"\n\
2026/12/05 02:00:01 [error] 124#0: *9 upstream prematurely closed connection while reading upstream, client: 127.0.0.3, server: \n\
2026/12/05 02:00:02 [crit] 124#0: *10 connect() to 127.0.0.1:4102 failed (99: Cannot assign requested address) while connecting to upstream, client: 127.0.0.4\n";
        let kinds = nginx_error_kinds(log);
        assert_eq!(kinds.get("upstream prematurely closed connection while reading upstream"), Some(&2));
        assert_eq!(
            kinds.get("connect() to ...: failed (: Cannot assign requested address) while connecting to upstream"),
            Some(&1),
            "{kinds:?}"
        );
        assert_eq!(kinds.len(), 2);
    }
}

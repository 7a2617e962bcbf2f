//! The machine's PostgreSQL and Redis, started if they are down (with the commands the machine
//! documents), plus throwaway databases and private Redis servers for tests that break them.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

fn up(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

fn wait_up(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !up(port) {
        assert!(Instant::now() < deadline, "{what} did not come up on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts PostgreSQL and Redis if they are not listening.
pub fn ensure_services() {
    if !up(5432) {
        let versions = std::fs::read_dir("/etc/postgresql").expect("PostgreSQL is installed");
        for v in versions.flatten() {
            let _ = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &v.file_name().to_string_lossy(), "main", "start"])
                .status();
        }
        wait_up(5432, "PostgreSQL");
    }
    if !up(6379) {
        let _ = Command::new("redis-server")
            .args([
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "-::1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/var/lib/redis",
                "--logfile",
                "/var/log/redis/ci.log",
            ])
            .status();
        wait_up(6379, "Redis");
    }
}

/// A fresh PostgreSQL database, dropped when this is dropped.
pub struct TempDb {
    pub url: String,
    name: String,
}

impl TempDb {
    pub fn new() -> Self {
        ensure_services();
        let name = format!("callpay_t_{}", callpay::ids::random_id().to_lowercase());
        psql(&format!("CREATE DATABASE {name}"));
        Self { url: format!("postgres://postgres@127.0.0.1:5432/{name}"), name }
    }
}

impl TempDb {
    /// How many connections this database has open now (its server's `pg_stat_activity`).
    pub fn connections(&self) -> usize {
        let out = Command::new("psql")
            .args([
                PG_ADMIN_URL,
                "-Atc",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'", self.name),
            ])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
    }

    /// Ends every connection to this database, as a PostgreSQL restart or failover would.
    pub fn end_connections(&self) {
        psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            self.name
        ));
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .args([PG_ADMIN_URL, "-q", "-c", sql])
        .stdout(Stdio::null())
        .status()
        .expect("psql runs")
        .success();
    assert!(ok, "psql failed: {sql}");
}

/// A Redis server of this test's own, on a free port, that the test may stop and restart.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = crate::ports::reserve();
        let mut r = Self { port, child: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        wait_up(self.port, "private Redis");
    }

    /// Stops the server with SIGSTOP: connections stay open and nothing is answered, as with a
    /// Redis swamped or stalled, rather than refused.
    pub fn pause(&self) {
        self.send("-STOP");
    }

    /// Lets a [`Self::pause`]d server go on.
    pub fn resume(&self) {
        self.send("-CONT");
    }

    fn send(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().expect("kill runs").success());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while up(self.port) {
            assert!(Instant::now() < deadline, "private Redis did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of this test's own on loopback: three masters, each with one replica, so a
/// replica can take over its master's slots (`CLUSTER FAILOVER`).
pub struct PrivateRedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl PrivateRedisCluster {
    pub fn start() -> Self {
        // Each node also listens on its port + 10000 for the cluster's bus.
        let ports: Vec<u16> = (0..6).map(|_| crate::ports::reserve_with(&[10_000])).collect();
        // Never an earlier run's directory: a node finding an old `nodes-*.conf` would rejoin
        // that run's cluster.
        let dir = std::env::temp_dir().join(format!("callpay-redis-cluster-{}", callpay::ids::random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let children = ports
            .iter()
            .map(|p| {
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .args(["--cluster-config-file", &dir.join(format!("nodes-{p}.conf")).display().to_string()])
                    .args(["--dir", &dir.display().to_string()])
                    .args(["--logfile", &dir.join(format!("{p}.log")).display().to_string()])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server starts")
            })
            .collect();
        for p in &ports {
            wait_up(*p, "cluster Redis");
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let ok = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs")
            .success();
        assert!(ok, "redis-cli --cluster create failed");
        let cluster = Self { ports, children, dir };
        cluster.wait_ok();
        cluster
    }

    /// `redis://…` of every node (a client learns the topology from any of them).
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect()
    }

    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until every node reports the cluster healthy, sees a replica for each master and
    /// agrees on who serves every slot.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = self.ports.iter().all(|p| {
                let replicas = self
                    .cli(*p, &["CLUSTER", "NODES"])
                    .lines()
                    .filter(|l| l.contains("slave") && !l.contains("fail"))
                    .count();
                replicas == 3 && self.cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
            let views: Vec<String> = self.ports.iter().map(|p| self.masters(*p)).collect();
            if healthy && views.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis cluster did not settle: {views:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Masters with slots as node `port` sees them, sorted (for comparing views).
    fn masters(&self, port: u16) -> String {
        let mut m: Vec<String> = self
            .cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
            .map(|l| l.split(' ').nth(1).unwrap_or("").to_owned())
            .collect();
        m.sort();
        m.join(",")
    }

    /// Makes the replica of the master that serves `channel`'s slot take over (a manual,
    /// coordinated failover), and waits until every node agrees. Returns (old, new) master ports.
    pub fn fail_over(&self, channel: &str) -> (u16, u16) {
        let slot: u16 = self.cli(self.ports[0], &["CLUSTER", "KEYSLOT", channel]).trim().parse().unwrap();
        let nodes = self.cli(self.ports[0], &["CLUSTER", "NODES"]);
        let port_of =
            |line: &str| -> u16 { line.split(' ').nth(1).unwrap().split([':', '@']).nth(1).unwrap().parse().unwrap() };
        let master = nodes
            .lines()
            .find(|l| {
                l.contains("master")
                    && l.split(' ').skip(8).any(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        a.parse::<u16>().is_ok_and(|a| b.parse::<u16>().is_ok_and(|b| (a..=b).contains(&slot)))
                    })
            })
            .expect("a master serves the slot");
        let master_id = master.split(' ').next().unwrap();
        let replica = nodes
            .lines()
            .find(|l| l.contains("slave") && l.split(' ').nth(3) == Some(master_id))
            .expect("it has a replica");
        let (old, new) = (port_of(master), port_of(replica));
        // A manual failover needs the replica in sync with its master.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.cli(new, &["INFO", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica on {new} never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(self.cli(new, &["CLUSTER", "FAILOVER"]).contains("OK"), "CLUSTER FAILOVER refused");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.cli(new, &["ROLE"]).starts_with("master") {
            assert!(
                Instant::now() < deadline,
                "the replica on {new} did not take over from {old}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_ok();
        (old, new)
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

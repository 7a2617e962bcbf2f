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
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
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

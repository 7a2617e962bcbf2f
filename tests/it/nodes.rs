//! Hub instances as real processes (`callpay serve`) on one PostgreSQL and one Redis, so that a
//! node can be killed with SIGKILL or stopped with SIGTERM the way an orchestrator does it.

use crate::helpers::*;
use crate::services::{REDIS_URL, TempDb, ensure_services};
use callpay::demo::{DEMO_CLINIC, join_token};
use callpay_protocol::Role;
use std::time::{Duration, Instant};

/// Presence entries last this long in these tests (the default is 15 s).
const PRESENCE_TTL: Duration = Duration::from_millis(1500);

/// Several `callpay serve` processes and the simulator standing in for Stripe.
pub struct Fleet {
    /// Kept alive for the nodes; tests pay through it.
    pub _sim: stripe_sim::SimHandle,
    pub secret: String,
    pub call_id: String,
    pub ports: Vec<u16>,
    children: Vec<Option<tokio::process::Child>>,
    env: Vec<(String, String)>,
    logs: std::path::PathBuf,
    _db: TempDb,
}

/// A free loopback port (bound and released: the process that gets it binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Fleet {
    /// `n` nodes; Stripe's webhooks go to `webhook_url(ports)`.
    pub async fn start(n: usize, webhook_url: impl FnOnce(&[u16]) -> String) -> Self {
        ensure_services();
        let db = TempDb::new();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let webhook_secret = "whsec_fleet_test";
        let sim = stripe_sim::spawn(stripe_sim::SimConfig {
            webhooks: vec![stripe_sim::WebhookTarget { url: webhook_url(&ports), secret: webhook_secret.into() }],
            ..stripe_sim::SimConfig::for_tests()
        })
        .await
        .unwrap();
        let store = callpay::store::SqlStore::connect(&db.url).await.unwrap();
        callpay::demo::seed(&store, &sim).await.unwrap();
        let secret = "fleet-platform-secret-0123456789abcdef".to_owned();
        let env: Vec<(String, String)> = [
            ("CALLPAY__AUTH__SECRET", secret.clone()),
            ("CALLPAY__DATABASE__URL", db.url.clone()),
            ("CALLPAY__BUS__REDIS_URL", REDIS_URL.to_owned()),
            ("CALLPAY__BUS__PRESENCE_TTL_MS", PRESENCE_TTL.as_millis().to_string()),
            ("CALLPAY__STRIPE__SECRET_KEY", sim.secret_key().to_owned()),
            ("CALLPAY__STRIPE__PUBLISHABLE_KEY", sim.publishable_key().to_owned()),
            ("CALLPAY__STRIPE__CLIENT_ID", sim.client_id().to_owned()),
            ("CALLPAY__STRIPE__API_BASE", sim.url.clone()),
            ("CALLPAY__STRIPE__CONNECT_BASE", sim.url.clone()),
            ("CALLPAY__STRIPE__WEBHOOK_SECRETS", webhook_secret.to_owned()),
            ("CALLPAY__SERVER__SHUTDOWN_GRACE_SECS", "5".to_owned()),
            ("RUST_LOG", "info,sqlx=warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let logs = std::env::temp_dir().join(format!("callpay-fleet-{}", callpay::ids::random_id()));
        std::fs::create_dir_all(&logs).unwrap();
        let call_id = format!("fleet-{}", callpay::ids::random_id());
        let mut fleet = Self { _sim: sim, secret, call_id, ports, children: Vec::new(), env, logs, _db: db };
        for i in 0..n {
            let child = fleet.spawn(i);
            fleet.children.push(Some(child));
        }
        for i in 0..n {
            fleet.wait_ready(i).await;
        }
        fleet
    }

    fn spawn(&self, i: usize) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("node-{i}.log")))
            .unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_callpay"))
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("CALLPAY__SERVER__LISTEN", format!("127.0.0.1:{}", self.ports[i]))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Waits until node `i` answers `/readyz`.
    pub async fn wait_ready(&self, i: usize) {
        let http = Http::new();
        let url = format!("http://127.0.0.1:{}/readyz", self.ports[i]);
        eventually(async || {
            tokio::net::TcpStream::connect(("127.0.0.1", self.ports[i])).await.ok()?;
            (http.send("GET", &url, &[], String::new()).await.0 == 200).then_some(())
        })
        .await;
    }

    /// The WebSocket URL of node `i` for `sub` in the fleet's call.
    pub fn ws_url(&self, base: &str, sub: &str, role: Role) -> String {
        let token = join_token(&self.secret, &self.call_id, DEMO_CLINIC, sub, sub, role);
        format!("{base}/v1/calls/{}/ws?token={token}", self.call_id)
    }

    /// Connects `sub` to node `i`.
    pub async fn join(&self, i: usize, sub: &str, role: Role) -> Client {
        Client::connect(&self.ws_url(&format!("ws://127.0.0.1:{}", self.ports[i]), sub, role)).await
    }

    /// SIGKILL: the node dies without closing anything or telling anyone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().await.unwrap();
        }
    }

    /// SIGTERM, then waits for the node to drain and exit; returns how long that took.
    pub async fn terminate(&mut self, i: usize) -> Duration {
        let started = Instant::now();
        if let Some(mut child) = self.children[i].take() {
            let pid = child.id().expect("running") as i32;
            // SAFETY: signalling a child process this test started and still owns.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exits").unwrap();
            assert!(status.success(), "node {i} exited with {status} after SIGTERM; log in {}", self.logs.display());
        }
        started.elapsed()
    }
}

fn participant_ids(welcome: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> =
        welcome["participants"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

/// Issue 12, item 1: `welcome` and `participant.joined/left` cover every node, and a node killed
/// with SIGKILL takes its participants out of everyone's view within the presence expiry.
#[tokio::test]
async fn presence_spans_nodes_and_a_killed_nodes_participants_leave_within_the_expiry() {
    let mut fleet = Fleet::start(2, |p| format!("http://127.0.0.1:{}/v1/stripe/webhook", p[0])).await;
    let mut doc = fleet.join(0, "doc", Role::Clinician).await;
    assert_eq!(participant_ids(&doc.welcome), ["doc"]);
    let pat = fleet.join(1, "pat", Role::Patient).await;
    assert_eq!(participant_ids(&pat.welcome), ["doc", "pat"], "the patient's node lists the clinician on the other");
    doc.until_where("participant.joined", |f| f["participant"]["id"] == "pat").await;
    // A later connection on the clinician's node lists the patient on the other node.
    let nurse = fleet.join(0, "nurse", Role::Clinician).await;
    assert_eq!(participant_ids(&nurse.welcome), ["doc", "nurse", "pat"]);
    // Presence is renewed, not just announced: after several expiries the patient is still
    // there (a participant.left now would be a false leave).
    tokio::time::sleep(PRESENCE_TTL * 2).await;
    let still = fleet.join(0, "doc2", Role::Clinician).await;
    assert_eq!(participant_ids(&still.welcome), ["doc", "doc2", "nurse", "pat"]);

    fleet.kill(1).await;
    let killed = Instant::now();
    let left = doc.until_where("participant.left", |f| f["participant"]["id"] == "pat").await;
    let took = killed.elapsed();
    assert_eq!(left["participant"]["role"], "patient");
    // Expiry plus one renewal period, with room for a loaded machine.
    assert!(took < PRESENCE_TTL * 2 + Duration::from_secs(2), "the dead node's patient left after {took:?}");
    let after = fleet.join(0, "doc3", Role::Clinician).await;
    assert!(!participant_ids(&after.welcome).contains(&"pat".to_owned()));
    // Nobody said participant.left for anyone else on the way.
    assert!(!doc.raw.iter().any(|f| f.contains("participant.left") && !f.contains("\"pat\"")), "{:?}", doc.raw);
    drop((pat, nurse, still));
}

/// A node stopped with SIGTERM removes its presence at once: nobody waits for the expiry.
#[tokio::test]
async fn a_node_that_stops_cleanly_takes_its_participants_out_at_once() {
    let mut fleet = Fleet::start(2, |p| format!("http://127.0.0.1:{}/v1/stripe/webhook", p[0])).await;
    let mut doc = fleet.join(0, "doc", Role::Clinician).await;
    let _pat = fleet.join(1, "pat", Role::Patient).await;
    doc.until_where("participant.joined", |f| f["participant"]["id"] == "pat").await;
    fleet.terminate(1).await;
    let stopped = Instant::now();
    doc.until_where("participant.left", |f| f["participant"]["id"] == "pat").await;
    assert!(stopped.elapsed() < PRESENCE_TTL, "left after {:?}: waited for the expiry", stopped.elapsed());
}

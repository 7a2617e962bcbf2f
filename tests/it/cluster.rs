//! Several hub instances serving one call: a shared PostgreSQL store and the Redis bus. A
//! clinician on one node and a patient on another see each other's events; when Redis restarts,
//! nodes resync their rooms from the store, so nothing published meanwhile is lost to clients.

use crate::helpers::*;
use crate::recovery::Recorder;
use crate::services::{PrivateRedis, REDIS_URL, TempDb, ensure_services};
use callpay::app::{AppState, Dependencies};
use callpay::bus::RedisBus;
use callpay::config::{Config, Secret};
use callpay::demo::{DEMO_CLINIC, join_token};
use callpay::server::App;
use callpay::store::{Inserted, SqlStore, Store};
use callpay_protocol::Role;
use serde_json::json;
use std::sync::Arc;

pub(crate) struct Cluster {
    sim: stripe_sim::SimHandle,
    pub(crate) nodes: Vec<(AppState, String)>,
    /// Each node's bus, to reach below its rooms.
    buses: Vec<Arc<RedisBus>>,
    secret: String,
    call_id: String,
    _db: TempDb,
}

impl Cluster {
    /// `n` nodes on one database and one Redis; Stripe's webhooks go to node 0.
    pub(crate) async fn start(n: usize, redis_url: &str) -> Self {
        Self::start_with(n, redis_url, |_| {}).await
    }

    /// As [`Cluster::start`], with every node's settings changed by `tweak`.
    async fn start_with(n: usize, redis_url: &str, tweak: impl Fn(&mut Config)) -> Self {
        ensure_services();
        let db = TempDb::new();
        let listeners: Vec<tokio::net::TcpListener> =
            futures_util::future::join_all((0..n).map(|_| tokio::net::TcpListener::bind("127.0.0.1:0")))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let first = listeners[0].local_addr().unwrap();
        let webhook_secret = "whsec_cluster_test".to_owned();
        let sim = stripe_sim::spawn(stripe_sim::SimConfig {
            webhooks: vec![stripe_sim::WebhookTarget {
                url: format!("http://{first}/v1/stripe/webhook"),
                secret: webhook_secret.clone(),
            }],
            ..stripe_sim::SimConfig::for_tests()
        })
        .await
        .unwrap();
        let secret = "cluster-platform-secret-0123456789abcdef".to_owned();
        let mut nodes = Vec::new();
        let mut buses = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let addr = listener.local_addr().unwrap();
            let mut config = Config::default();
            config.server.listen = addr;
            config.auth.secret = Secret::new(secret.clone());
            config.database.url = db.url.clone();
            config.bus.redis_url = Some(redis_url.to_owned());
            callpay::demo::use_simulator(&mut config, &sim, &webhook_secret);
            config.stripe.max_attempts = 2;
            tweak(&mut config);
            config.validate_for_serve().unwrap();
            let node = format!("node-{i}");
            let bus = Arc::new(RedisBus::connect(redis_url, node.clone()).await.unwrap());
            buses.push(bus.clone());
            let store = Arc::new(SqlStore::connect(&db.url).await.unwrap());
            let deps = Dependencies {
                outbox: store.clone(),
                store,
                stripe: Arc::new(callpay::payments::stripe::StripeGateway::new(&config.stripe).unwrap()),
                bus: bus.clone(),
                presence: bus,
                connect: Arc::new(callpay::connect::StripeConnect::new(&config.stripe)),
                mailer: None,
            };
            let app = App::build_on(listener, config, deps, node).await.unwrap();
            let state = app.state.clone();
            tokio::spawn(app.run_until_stopped());
            nodes.push((state, format!("ws://{addr}")));
        }
        let store = &nodes[0].0.store;
        callpay::demo::seed(store.as_ref(), &sim).await.unwrap();
        let call_id = format!("cluster-{}", callpay::ids::random_id());
        Self { sim, nodes, buses, secret, call_id, _db: db }
    }

    async fn join(&self, node: usize, sub: &str, role: Role) -> Client {
        let token = join_token(&self.secret, &self.call_id, DEMO_CLINIC, sub, sub, role);
        Client::connect(&format!("{}/v1/calls/{}/ws?token={token}", self.nodes[node].1, self.call_id)).await
    }
}

/// Pays as Stripe.js would, against the cluster's simulator.
async fn pay(cluster: &Cluster, payment: &serde_json::Value, card: &str) -> u16 {
    pay_on_sim(&Http::new(), &cluster.sim.url, payment, card, "s@e.co").await.0
}

#[tokio::test]
async fn clinician_and_patient_on_different_nodes() {
    let cluster = Cluster::start(2, REDIS_URL).await;
    let mut doc = cluster.join(0, "doc", Role::Clinician).await;
    let mut pat = cluster.join(1, "pat", Role::Patient).await;
    doc.until_where("participant.joined", |f| f["participant"]["id"] == "pat").await;
    doc.request("x1", 5000, "Consult").await;
    let requested = pat.until("payment.requested").await;
    assert!(
        requested["payment"]["stripe"]["client_secret"].is_string(),
        "the patient's node renders the patient's copy"
    );
    pat.send(json!({"type": "payment.progress", "payment_id": requested["payment"]["payment_id"], "stage": "viewing"}))
        .await;
    doc.until("payment.progress").await;
    assert_eq!(pay(&cluster, &requested["payment"], "4242424242424242").await, 200);
    // The webhook lands on node 0; node 1's patient hears it through Redis.
    let confirmed = pat.until("payment.confirmed").await;
    assert_eq!(confirmed["payment"]["card_last4"], "4242");
    doc.until("payment.confirmed").await;
    assert_no_secret(&doc.raw);
    // A third node joining late gets the whole state from the shared store.
    drop(pat);
}

#[tokio::test]
async fn redis_restart_loses_nothing_clients_can_see() {
    let mut redis = PrivateRedis::start();
    let cluster = Cluster::start(2, &redis.url()).await;
    let mut doc = cluster.join(0, "doc", Role::Clinician).await;
    let mut pat = cluster.join(1, "pat", Role::Patient).await;
    doc.request("before", 5000, "Before the outage").await;
    pat.until_where("payment.requested", |f| f["payment"]["client_ref"] == "before").await;

    redis.stop();
    // While Redis is down the clinician's own node still serves them...
    doc.request("during", 6000, "During the outage").await;
    let during = doc.until_where("payment.requested", |f| f["payment"]["client_ref"] == "during").await;
    let id = during["payment"]["payment_id"].as_str().unwrap().to_owned();

    redis.restart();
    // ...and once Redis is back, the patient's node repairs the call from the store: as soon
    // as its subscriber connection is back (the Redis client's reconnect backoff), within the
    // 30 s the issue allows, however loaded the machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let resynced = loop {
        pat.drain_for(std::time::Duration::from_millis(200)).await;
        let found = pat
            .raw
            .iter()
            .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
            // Live (`payment.requested`, when Redis was back within the publish's timeout) or by
            // the repair (`payment.updated`): once either way, never not at all.
            .find(|f| {
                (f["type"] == "payment.updated" || f["type"] == "payment.requested")
                    && f["payment"]["payment_id"] == id.as_str()
            });
        if let Some(f) = found {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "the patient's node never repaired the call: {:?}", pat.raw);
    };
    assert_eq!(resynced["payment"]["status"], "requested");
    assert_eq!(resynced["payment"]["amount"], 6000);
    // Live traffic flows again.
    doc.send(json!({"type": "payment.cancel", "payment_id": id})).await;
    pat.until_where("payment.updated", |f| {
        f["payment"]["payment_id"] == id.as_str() && f["payment"]["status"] == "canceled"
    })
    .await;
    let copies = pat
        .raw
        .iter()
        .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
        .filter(|f| f["payment"]["payment_id"] == id.as_str() && f["payment"]["status"] == "requested")
        .count();
    assert_eq!(copies, 1, "the request reached the patient once, live or repaired: {:?}", pat.raw);
}

#[tokio::test]
async fn the_store_behaves_the_same_on_postgres() {
    let db = TempDb::new();
    let store = SqlStore::connect(&db.url).await.unwrap();
    a_call_snapshot_is_what_the_two_reads_give(&store).await;
    // Connecting again (a second instance starting) finds the schema in place.
    let again = SqlStore::connect(&db.url).await.unwrap();
    let payment = callpay::store::Payment {
        id: "pay_pg".into(),
        call_id: "call".into(),
        client_ref: "r".into(),
        amount: 5000,
        currency: "aud".into(),
        ..Default::default()
    };
    assert!(matches!(store.insert_payment(&payment).await.unwrap(), Inserted::New));
    assert!(matches!(
        again.insert_payment(&callpay::store::Payment { id: "pay_other".into(), ..payment.clone() }).await.unwrap(),
        Inserted::Existing(_)
    ));
    let mut next = payment.clone();
    next.version = 2;
    next.status = callpay_protocol::PaymentStatus::Requested;
    next.payment_intent_id = Some("pi_pg".into());
    use callpay::store::{Committed, Write};
    let write = [Write::Payment { payment: Box::new(next.clone()), expected_version: 1 }];
    assert_eq!(store.commit(&write).await.unwrap(), Committed::Applied);
    assert_eq!(again.commit(&write).await.unwrap(), Committed::Conflict);
    assert_eq!(again.payment_by_intent("pi_pg").await.unwrap().unwrap(), next);
    let rec = callpay::store::WebhookRecord {
        event_id: "evt_pg".into(),
        event_type: "t".into(),
        account: None,
        payment_id: None,
        outcome: "x".into(),
    };
    assert_eq!(store.commit(&[Write::Webhook(rec.clone())]).await.unwrap(), Committed::Applied);
    assert_eq!(again.commit(&[Write::Webhook(rec)]).await.unwrap(), Committed::Duplicate);
    let state = callpay::store::OAuthState {
        state: "s".into(),
        clinic_id: "c".into(),
        admin_id: "a".into(),
        admin_name: "A".into(),
        admin_role: "team_admin".into(),
        expires_at: 9,
    };
    assert!(store.insert_oauth_state(&state, 10).await.unwrap());
    assert_eq!(again.take_oauth_state("s").await.unwrap(), callpay::store::StateTaken::Fresh(state));
    assert_eq!(store.take_oauth_state("s").await.unwrap(), callpay::store::StateTaken::Reused);
    store.ping().await.unwrap();
}

/// A `clinic.updated` lost in a bus gap is repaired by the resync that follows the gap, not
/// only the payments.
#[tokio::test]
async fn a_resync_repairs_availability_lost_in_a_gap() {
    let hub = TestHub::start().await;
    let mut doc = hub.clinician().await;
    assert_eq!(doc.welcome["payments_available"], true);
    // Another node disabled the app; its announcement never reached this node.
    let account = hub.state.store.clinic(callpay::demo::DEMO_CLINIC).await.unwrap().unwrap().stripe_account;
    set_clinic(&hub, callpay::demo::DEMO_CLINIC, false, account.as_deref()).await;
    // Two gaps reported at once run one repair at a time (the coalescing itself is a unit test
    // in hub.rs); the change is repaired.
    tokio::join!(hub.state.hub.resync_rooms(), hub.state.hub.resync_rooms());
    let update = doc.until("clinic.updated").await;
    assert_eq!(update["payments_available"], false, "{update}");
}

async fn numsub(channel: &str) -> i64 {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, n): (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut conn).await.unwrap();
    n
}

#[tokio::test]
async fn a_call_is_resynced_once_its_subscription_is_live_and_clinic_channels_follow_their_calls() {
    use callpay::bus::{Bus, Envelope, RoomEvent};
    ensure_services();
    let run = callpay::ids::random_id();
    let (call, clinic) = (format!("call_{run}"), format!("clinic_{run}"));
    let a = RedisBus::connect(REDIS_URL, "a".into()).await.unwrap();
    let b = RedisBus::connect(REDIS_URL, "b".into()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let seen = Arc::new(Recorder::default());
    b.start(seen.clone(), stop.clone());
    b.watch(&call, &clinic);
    // The room resyncs only after Redis acknowledged the subscription: from then on nothing
    // another node publishes is lost.
    eventually(async || seen.resynced_calls.lock().unwrap().contains(&call).then_some(())).await;
    let event = RoomEvent::ClinicUpdated { payments_available: false, reason: None };
    let envelope = Envelope::new("a", &call, &clinic, event);
    a.publish(envelope.clone()).unwrap();
    // Delivered as published, numbered by the publisher: the first on this channel.
    let numbered = Envelope { seq: 1, ..envelope };
    eventually(async || seen.delivered.lock().unwrap().contains(&numbered).then_some(())).await;

    // Rooms of one clinic opening and closing in quick succession: the clinic channel stays
    // subscribed exactly while a call of the clinic is here.
    for i in 0..200 {
        b.watch(&format!("{call}-{i}"), &clinic);
        b.unwatch(&format!("{call}-{i}"), &clinic);
    }
    let marker = format!("{call}-marker");
    b.watch(&marker, &clinic);
    eventually(async || seen.resynced_calls.lock().unwrap().contains(&marker).then_some(())).await;
    assert_eq!(numsub(&format!("callpay:clinic:{clinic}")).await, 1, "clinic channel still subscribed");
    b.unwatch(&call, &clinic);
    b.unwatch(&marker, &clinic);
    eventually(async || (numsub(&format!("callpay:clinic:{clinic}")).await == 0).then_some(())).await;
    stop.cancel();
}

#[tokio::test]
async fn a_subscribe_made_while_redis_is_down_is_retried_until_it_succeeds() {
    use callpay::bus::Bus;
    ensure_services();
    let mut redis = PrivateRedis::start();
    let bus = RedisBus::connect(&redis.url(), "b".into()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let seen = Arc::new(Recorder::default());
    bus.start(seen.clone(), stop.clone());
    redis.stop();
    bus.watch("call_down", "clinic_down");
    // Still down: however long the task has to act, the room is not repaired, since nothing
    // can be subscribed yet (a repair before the subscription is live would miss events).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(seen.resynced_calls.lock().unwrap().is_empty(), "repaired before its subscription was live");
    redis.restart();
    eventually(async || seen.resynced_calls.lock().unwrap().iter().any(|c| c == "call_down").then_some(())).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, n): (String, i64) =
        redis::cmd("PUBSUB").arg("NUMSUB").arg("callpay:call:call_down").query_async(&mut conn).await.unwrap();
    assert_eq!(n, 1, "subscribed once Redis came back");
    stop.cancel();
}

/// A `welcome` means its node hears the call: whatever another node publishes on it from then
/// on reaches this socket. A clinician joining again on a node whose subscribing task had a
/// backlog got its `welcome` before that node subscribed to the call, and the patient's first
/// progress frame, published in between, was lost (the twelfth 70,000-socket `scale` run's one
/// lost frame, README "A national service's Monday morning"). Here the backlog is 50,000 other
/// calls for node 1 to subscribe.
#[tokio::test]
async fn a_welcome_comes_once_its_node_hears_the_call() {
    use callpay::bus::Bus;
    let cluster = Cluster::start_with(2, REDIS_URL, |c| c.bus.subscribe_wait_ms = 30_000).await;
    let channel = format!("callpay:call:{}", cluster.call_id);
    let mut pat = cluster.join(0, "pat", Role::Patient).await;
    let mut doc = cluster.join(1, "doc", Role::Clinician).await;
    doc.request("w1", 2500, "Follow-up").await;
    let requested = pat.until("payment.requested").await;
    let payment_id = requested["payment"]["payment_id"].clone();
    // The clinician leaves; node 1's room closes and it stops hearing the call.
    doc.close().await;
    eventually(async || (numsub(&channel).await == 1).then_some(())).await;
    for i in 0..50_000 {
        cluster.buses[1].watch(&format!("{}-backlog-{i}", cluster.call_id), "backlog-clinic");
    }
    let mut doc = cluster.join(1, "doc", Role::Clinician).await;
    assert_eq!(numsub(&channel).await, 2, "welcome sent before node 1 subscribed to the call");
    pat.send(json!({"type": "payment.progress", "payment_id": payment_id, "stage": "viewing"})).await;
    let progress = doc.until("payment.progress").await;
    assert_eq!(progress["payment_id"], payment_id);
    assert_eq!(progress["stage"], "viewing");
}

/// A join's event on the bus carries the number of the presence write that records it, the
/// number the record then holds for the joining node (or a renewal's newer one): a node that
/// reads the record before that write lands keeps the join it heard of.
#[tokio::test]
async fn a_joins_event_carries_the_number_of_its_presence_write() {
    use futures_util::StreamExt;
    let cluster = Cluster::start(2, REDIS_URL).await;
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut listener = client.get_async_pubsub().await.unwrap();
    listener.subscribe(format!("callpay:call:{}", cluster.call_id)).await.unwrap();
    let _doc = cluster.join(0, "doc", Role::Clinician).await;
    let mut messages = listener.on_message();
    let joined = loop {
        let msg = tokio::time::timeout(WAIT, messages.next()).await.expect("an envelope").expect("open");
        let envelope: serde_json::Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        if envelope["event"]["kind"] == "joined" {
            break envelope;
        }
    };
    assert_eq!(joined["origin"], "node-0");
    let write = joined["event"]["write"].as_u64().expect("the join carries its write's number");
    assert!(write > 0);
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The write may land after the event (it waits 500 ms at most); the next renewal, 5 s
    // after the node started, would number its own write higher.
    let entry: String = eventually(async || {
        redis::cmd("HGET")
            .arg(format!("callpay:presence:{}", cluster.call_id))
            .arg("node-0")
            .query_async::<Option<String>>(&mut conn)
            .await
            .unwrap()
    })
    .await;
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry["n"].as_u64(), Some(write), "the record holds that write: {entry}");
    assert_eq!(entry["participants"][0]["id"], "doc");
}

/// A call whose room closes and opens again before the subscribing task looks is heard at once:
/// its channels are still held, so no SUBSCRIBE is sent and no confirmation would ever come.
/// Taken as unheard, every such join would wait `bus.subscribe_wait_ms` for nothing.
#[tokio::test]
async fn a_call_opened_again_while_its_channels_are_held_is_heard_without_subscribing_again() {
    use callpay::bus::Bus;
    ensure_services();
    let run = callpay::ids::random_id();
    let (call, clinic) = (format!("call_{run}"), format!("clinic_{run}"));
    let bus = RedisBus::connect(REDIS_URL, "b".into()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    bus.start(Arc::new(Recorder::default()), stop.clone());
    bus.watch(&call, &clinic);
    assert!(bus.hears(&call, WAIT).await, "heard once subscribed");
    // Closed and opened again with nothing awaited between: the task sees only the reopening.
    bus.unwatch(&call, &clinic);
    bus.watch(&call, &clinic);
    assert!(bus.hears(&call, WAIT).await, "heard again without a new confirmation");
    assert_eq!(numsub(&format!("callpay:call:{call}")).await, 1, "never unsubscribed");
    // Closed for good: no longer heard.
    bus.unwatch(&call, &clinic);
    assert!(!bus.hears(&call, WAIT).await);
    stop.cancel();
}

/// A node's presence writes and its publishes travel on connections of their own. A node
/// taking thousands of joins at once writes presence for each; on one shared connection a
/// publish waited behind them past its time-out, and the live frames of its batch were lost
/// (173 relay frames in the eleventh 70,000-socket `scale` run, README "A national service's
/// Monday morning"). Three connections: publishing, presence, subscribing.
#[tokio::test]
async fn publishes_do_not_share_a_connection_with_presence_writes() {
    ensure_services();
    let redis = PrivateRedis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let list = async |conn: &mut redis::aio::MultiplexedConnection| -> usize {
        let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(conn).await.unwrap();
        // Every connection but this test's own.
        clients.lines().filter(|l| !l.is_empty()).count() - 1
    };
    assert_eq!(list(&mut conn).await, 0);
    let _bus = RedisBus::connect(&redis.url(), "n".into()).await.unwrap();
    assert_eq!(list(&mut conn).await, 3, "publishing, presence and subscribing each on a connection of its own");
}

/// Calls bound in batches: many joins at once, two clinics racing for each call, on two
/// instances sharing PostgreSQL (and on SQLite): every call ends bound to one clinic, and every
/// join to it, on either instance, is told the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_bind_each_call_to_one_clinic_on_every_instance() {
    use std::sync::Arc;
    async fn race(a: Arc<SqlStore>, b: Arc<SqlStore>) {
        let mut joins = Vec::new();
        // The two instances meet the calls in opposite orders (their batches overlap reversed).
        for i in 0..300 {
            for (store, clinic, n) in [(a.clone(), "clinic_a", i), (b.clone(), "clinic_b", 299 - i)] {
                let call = format!("call_{n}");
                joins.push(tokio::spawn(async move { (call.clone(), store.bind_call(&call, clinic).await.unwrap()) }));
            }
        }
        let mut told: std::collections::HashMap<String, std::collections::BTreeSet<String>> = Default::default();
        for j in joins {
            let (call, clinic) = j.await.unwrap();
            told.entry(call).or_default().insert(clinic);
        }
        assert_eq!(told.len(), 300);
        for (call, clinics) in &told {
            assert_eq!(clinics.len(), 1, "{call} was told {clinics:?}");
            // A later join, on either instance, hears the same.
            let first = clinics.first().unwrap();
            assert_eq!(&a.bind_call(call, "clinic_z").await.unwrap(), first);
            assert_eq!(&b.bind_call(call, "clinic_z").await.unwrap(), first);
        }
    }
    let db = TempDb::new();
    let pg_a = Arc::new(SqlStore::connect(&db.url).await.unwrap());
    let pg_b = Arc::new(SqlStore::connect(&db.url).await.unwrap());
    race(pg_a.clone(), pg_b.clone()).await;
    pg_a.close().await;
    pg_b.close().await;
    let sqlite = Arc::new(SqlStore::connect("sqlite::memory:").await.unwrap());
    race(sqlite.clone(), sqlite).await;
}

/// The welcome's one-statement read gives exactly what reading the payments and the clinic
/// apart gives: with and without payments, with and without the clinic.
async fn a_call_snapshot_is_what_the_two_reads_give(store: &SqlStore) {
    use callpay::store::{CallSnapshot, Clinic, Write};
    let clinic = Clinic {
        id: "clinic_snap".into(),
        org_id: "org_snap".into(),
        name: "Snapshot Clinic".into(),
        app_enabled: true,
        stripe_account: Some("acct_snap".into()),
        stripe_publishable_key: Some("pk_snap".into()),
        linked_at: Some(7),
        ..Clinic::default()
    };
    store.commit(&[Write::UpsertClinic(clinic.clone())]).await.unwrap();
    for (n, client_ref) in ["a", "b"].into_iter().enumerate() {
        let payment = callpay::store::Payment {
            id: format!("pay_snap_{client_ref}"),
            call_id: "call_snap".into(),
            clinic_id: "clinic_snap".into(),
            client_ref: client_ref.into(),
            amount: 1000 + n as i64,
            currency: "aud".into(),
            description: format!("payment {n}"),
            card_last4: Some("4242".into()),
            // Inserted newest first, and the newest has the lower `client_ref`: neither the
            // insertion order nor the unique index's puts the oldest first (the statement's
            // ORDER BY does, or the `(call_id, created_at)` index it reads by).
            created_at: 20 - 10 * n as i64,
            updated_at: 20 - 10 * n as i64,
            ..Default::default()
        };
        assert!(matches!(store.insert_payment(&payment).await.unwrap(), Inserted::New));
    }
    let two = store.payments_for_call("call_snap").await.unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(two[0].client_ref, "b", "oldest first");
    let cases = [
        ("call_snap", "clinic_snap", Some(clinic.clone()), two.clone()),
        ("call_none", "clinic_snap", Some(clinic), vec![]),
        ("call_snap", "clinic_missing", None, two),
        ("call_none", "clinic_missing", None, vec![]),
    ];
    for (call, clinic_id, clinic, payments) in cases {
        assert_eq!(store.clinic(clinic_id).await.unwrap(), clinic, "{call}/{clinic_id}");
        let got = store.call_snapshot(call, clinic_id).await.unwrap();
        assert_eq!(got, CallSnapshot { clinic, payments }, "{call}/{clinic_id}");
    }
}

#[tokio::test]
async fn a_call_snapshot_is_what_the_two_reads_give_on_sqlite() {
    a_call_snapshot_is_what_the_two_reads_give(&SqlStore::connect("sqlite::memory:").await.unwrap()).await;
}

/// Welcomes read together give each join its own call: a storm's concurrent reads (calls with
/// none, one or two payments, a clinic that does not exist, a pair asked twice, one call asked
/// with two clinics) each equal the two plain reads, and they took far fewer statements than
/// joins.
async fn concurrent_welcome_reads_are_each_their_own_and_batched(store: &SqlStore) {
    use callpay::store::{CallSnapshot, Clinic, Write};
    for n in 0..2 {
        let clinic = Clinic {
            id: format!("clinic_many_{n}"),
            org_id: "org_many".into(),
            name: format!("Clinic {n}"),
            app_enabled: n == 0,
            ..Clinic::default()
        };
        store.commit(&[Write::UpsertClinic(clinic)]).await.unwrap();
    }
    const CALLS: usize = 120;
    for call in 0..CALLS {
        for k in 0..call % 3 {
            let payment = callpay::store::Payment {
                id: format!("pay_many_{call}_{k}"),
                call_id: format!("call_many_{call}"),
                clinic_id: format!("clinic_many_{}", call % 2),
                client_ref: format!("ref_{k}"),
                amount: (100 * call + k) as i64,
                currency: "aud".into(),
                created_at: 50 - k as i64,
                updated_at: 50 - k as i64,
                ..Default::default()
            };
            assert!(matches!(store.insert_payment(&payment).await.unwrap(), Inserted::New));
        }
    }
    let mut asked: Vec<(String, String)> =
        (0..CALLS).map(|call| (format!("call_many_{call}"), format!("clinic_many_{}", call % 2))).collect();
    asked.push(("call_many_5".into(), "clinic_many_1".into()));
    asked.push(("call_many_5".into(), "clinic_gone".into()));
    asked.push(("call_many_4".into(), "clinic_many_0".into()));
    asked.push(("call_unknown".into(), "clinic_many_0".into()));
    let mut expected = Vec::new();
    for (call, clinic) in &asked {
        let snapshot = CallSnapshot {
            clinic: store.clinic(clinic).await.unwrap(),
            payments: store.payments_for_call(call).await.unwrap(),
        };
        expected.push(snapshot);
    }
    assert_eq!(expected[5].payments.len(), 2);
    assert!(expected[5].payments[0].created_at < expected[5].payments[1].created_at, "oldest first");
    assert!(expected[CALLS + 1].clinic.is_none());
    let before = store.welcome_statements();
    let reads = asked.iter().map(|(call, clinic)| store.call_snapshot(call, clinic));
    let got = futures_util::future::join_all(reads).await;
    let statements = store.welcome_statements() - before;
    for (((call, clinic), got), expected) in asked.iter().zip(got).zip(expected) {
        assert_eq!(got.unwrap(), expected, "{call}/{clinic}");
    }
    // One at a time would be 124 statements; together they are a handful (a free reader may
    // take a batch before the rest has arrived).
    assert!((1..=20).contains(&statements), "{statements} statements for {} welcome reads", asked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_welcome_reads_are_each_their_own_and_batched_on_postgres() {
    let db = TempDb::new();
    let store = SqlStore::connect(&db.url).await.unwrap();
    concurrent_welcome_reads_are_each_their_own_and_batched(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_welcome_reads_are_each_their_own_and_batched_on_sqlite() {
    concurrent_welcome_reads_are_each_their_own_and_batched(&SqlStore::connect("sqlite::memory:").await.unwrap()).await;
}

/// What a held client saw: when its socket was closed, with what, and the frames before it.
type Held = (std::time::Instant, Option<(u16, String)>, Vec<String>);

/// Joins `sockets` clients to node `node` (two a call, `doc` and `pat`), each in a task that
/// answers when its socket was closed, with what, and what it got before.
async fn hold_sockets(cluster: &Cluster, node: usize, sockets: usize) -> Vec<tokio::sync::oneshot::Receiver<Held>> {
    let mut closes = Vec::new();
    for i in 0..sockets {
        let call = held_call(cluster, node, i / 2);
        let (sub, role) = if i % 2 == 0 { ("doc", Role::Clinician) } else { ("pat", Role::Patient) };
        let token = join_token(&cluster.secret, &call, DEMO_CLINIC, sub, sub, role);
        let mut client = Client::connect(&format!("{}/v1/calls/{call}/ws?token={token}", cluster.nodes[node].1)).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            client.until_closed().await;
            let _ = tx.send((std::time::Instant::now(), client.closed.take(), std::mem::take(&mut client.raw)));
        });
        closes.push(rx);
    }
    closes
}

/// The `k`th call [`hold_sockets`] holds on `node`.
fn held_call(cluster: &Cluster, node: usize, k: usize) -> String {
    format!("{}-held-{node}-{k}", cluster.call_id)
}

/// `nodes` nodes on `redis` whose drains are slow enough to watch: at most 50 sockets a second,
/// within 10 s.
async fn draining_cluster(nodes: usize, redis: &PrivateRedis) -> Cluster {
    Cluster::start_with(nodes, &redis.url(), |c| {
        c.server.drain_reconnects_per_sec = 50;
        c.server.drain_max_secs = 10;
    })
    .await
}

/// How long after `drained` each of the `held` sockets was closed, each with `4012`.
async fn went_after(
    held: Vec<tokio::sync::oneshot::Receiver<Held>>,
    drained: std::time::Instant,
) -> Vec<std::time::Duration> {
    let mut went = Vec::new();
    for close in held {
        let (at, closed, _) = tokio::time::timeout(std::time::Duration::from_secs(30), close).await.unwrap().unwrap();
        assert_eq!(closed.map(|(code, _)| code), Some(callpay_protocol::close::RESTARTING));
        went.push(at - drained);
    }
    went
}

/// Waits until the fleet's count of turned-away joins has stood still for a second.
async fn until_fleet_calm(bus: &RedisBus) {
    use callpay::bus::Bus;
    let mut last = bus.turned_away().await.unwrap();
    let mut still = std::time::Instant::now();
    let deadline = std::time::Instant::now() + WAIT;
    while still.elapsed() < std::time::Duration::from_secs(1) {
        assert!(std::time::Instant::now() < deadline, "the fleet's count never stood still");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = bus.turned_away().await.unwrap();
        if now != last {
            (last, still) = (now, std::time::Instant::now());
        }
    }
}

/// Issue 19, item 2: a draining node with peers lets its sockets go a wave at a time, slower
/// while the rest of the fleet turns joins away (read through Redis from another node's own
/// count), and every socket still goes within the drain's window, told to reconnect within a
/// wave's second. Until its turn a socket is served as before: it hears what happens on other
/// nodes. The same drain on a calm fleet is over in about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_lets_its_sockets_go_no_faster_than_the_rest_of_the_fleet_takes_them() {
    use callpay::bus::Bus;
    const SOCKETS: usize = 100;
    // A Redis of its own: the fleet's count is one key, and other tests' nodes shed joins too.
    let redis = PrivateRedis::start();
    let cluster = draining_cluster(3, &redis).await;

    // Node 2 turns joins away the whole time node 0 drains (its shed counter, as the upgrade
    // handler counts them); node 2 reports them to the fleet's count.
    let held = hold_sockets(&cluster, 0, SOCKETS).await;
    let shedding = tokio_util::sync::CancellationToken::new();
    let sheds = cluster.nodes[2].0.metrics.clone();
    let stop_shedding = shedding.clone();
    tokio::spawn(async move {
        while !stop_shedding.is_cancelled() {
            sheds.joins_shed.inc();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    // Node 2's count reaches Redis before the drain begins.
    let before = cluster.buses[0].turned_away().await.unwrap().unwrap();
    let mut waited = 0;
    while cluster.buses[0].turned_away().await.unwrap().unwrap() == before {
        waited += 1;
        assert!(waited < 100, "node 2's turned-away joins never reached the fleet's count");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let drained = std::time::Instant::now();
    cluster.nodes[0].0.shutdown.cancel();
    // While node 0 drains, a third participant joins each held call on node 1.
    let observers = futures_util::future::join_all((0..SOCKETS / 2).map(|k| {
        let call = held_call(&cluster, 0, k);
        let token = join_token(&cluster.secret, &call, DEMO_CLINIC, "obs", "obs", Role::Patient);
        let url = format!("{}/v1/calls/{call}/ws?token={token}", cluster.nodes[1].1);
        async move { Client::connect(&url).await }
    }))
    .await;
    let observed = std::time::Instant::now();
    let mut pressed = Vec::new();
    let mut heard = (0, 0);
    let mut waves = 0;
    for close in held {
        let (at, closed, frames) =
            tokio::time::timeout(std::time::Duration::from_secs(30), close).await.unwrap().unwrap();
        // Told a wave's second; only sockets still held when the window ends (ticks far apart on
        // a loaded machine) are told a spread of their own.
        let (code, reason) = closed.expect("closed by the hub");
        assert_eq!(code, callpay_protocol::close::RESTARTING);
        assert!(reason.starts_with("hub node stopping; reconnect within "), "{reason}");
        waves += usize::from(reason == "hub node stopping; reconnect within 1000 ms");
        // A socket still held well after the observers joined heard them.
        if at > observed + std::time::Duration::from_secs(1) {
            let joined = frames.iter().any(|f| {
                let f: serde_json::Value = serde_json::from_str(f).unwrap();
                f["type"] == "participant.joined" && f["participant"]["id"] == "obs"
            });
            heard = (heard.0 + usize::from(joined), heard.1 + 1);
        }
        pressed.push(at - drained);
    }
    shedding.cancel();
    pressed.sort();
    // Under pressure the rate is cut to half of 50 a second at the first tick (or the second,
    // if no report fell between the first two reads), and again each two seconds after: 100
    // sockets take 3.8 s at the very least. At 50 a second, a calm drain takes 2 s (the bound
    // below is relative: a loaded machine slows both).
    let bound = std::time::Duration::from_secs(3);
    let last = *pressed.last().unwrap();
    assert!(last >= bound, "a pressed fleet's drain took only {last:?}");
    assert!(last <= std::time::Duration::from_secs(12), "past the drain's window of 10 s: {last:?}");
    assert!(pressed[0] < last / 2, "the first socket went at {:?}, the last at {last:?}", pressed[0]);
    assert!(waves >= SOCKETS / 2, "only {waves} sockets went in waves");
    assert!(heard.1 >= 10, "only {} sockets were held past the observers' joins", heard.1);
    assert_eq!(heard.0, heard.1, "held sockets that did not hear a join on another node");
    for observer in observers {
        observer.close().await;
    }

    // Node 1 drains the same number of sockets once nobody turns joins away.
    until_fleet_calm(&cluster.buses[1]).await;
    let held = hold_sockets(&cluster, 1, SOCKETS).await;
    let drained = std::time::Instant::now();
    cluster.nodes[1].0.shutdown.cancel();
    let calm_last = went_after(held, drained).await.into_iter().max().unwrap();
    assert!(calm_last * 2 < last, "a calm fleet's drain took {calm_last:?}, a pressed one {last:?}");
    println!(
        "drain of {SOCKETS} sockets: pressed fleet {last:?} ({} held past the joins on node 1, all heard them), calm fleet {calm_last:?}",
        heard.1
    );
}

/// A draining node whose Redis stalls (stopped with SIGSTOP: its connections stay open and
/// nothing answers, so a read waits out the bus's 2 s time-out) starts letting its sockets go
/// within a few ticks all the same: no read of the fleet's count may hold back a wave longer
/// than a tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_whose_redis_stalls_still_lets_its_first_sockets_go_at_once() {
    const SOCKETS: usize = 20;
    let redis = PrivateRedis::start();
    let cluster = draining_cluster(2, &redis).await;
    let held = hold_sockets(&cluster, 0, SOCKETS).await;
    redis.pause();
    let drained = std::time::Instant::now();
    cluster.nodes[0].0.shutdown.cancel();
    let went = went_after(held, drained).await;
    redis.resume();
    // The first read cut off at a tick, a tick, and its read cut off at a tick: 600 ms. A first
    // read waiting out the bus's time-out alone makes 2 s, and the wave after it 2.4 s.
    let first = went.into_iter().min().unwrap();
    assert!(first < std::time::Duration::from_millis(2000), "the first socket went {first:?} after the signal");
    println!("with Redis stalled, the first of {SOCKETS} sockets went {first:?} after the signal");
}

/// `database.max_connections` bounds what one instance opens on PostgreSQL however many
/// requests wait: every instance of a deployment opens up to that many, so instances × the
/// setting is what must stay under the server's own `max_connections`. Past it PostgreSQL
/// refuses every new connection, every instance's included (seven instances of the default 16
/// on a server allowing 100 did just that in a load test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_opens_no_more_postgres_connections_than_its_setting() {
    const POOL: u32 = 5;
    let db = TempDb::new();
    let store = Arc::new(SqlStore::connect_with(&db.url, POOL).await.unwrap());
    // Far more at once than the pool holds: each waits for a connection rather than opening one.
    let writes = (0..200).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let payment = callpay::store::Payment {
                id: format!("pay_{i}"),
                call_id: format!("call_{i}"),
                client_ref: "r".into(),
                amount: 100,
                currency: "aud".into(),
                ..Default::default()
            };
            store.insert_payment(&payment).await.unwrap();
            store.payment(&payment.id).await.unwrap().unwrap();
        })
    });
    futures_util::future::join_all(writes).await.into_iter().for_each(|r| r.unwrap());
    // Idle connections stay in the pool (minutes), so this is how many it ever opened.
    let opened = db.connections();
    assert!((1..=POOL as usize).contains(&opened), "{opened} connections open with a pool of {POOL}");
}

//! Webhook delivery: events are signed exactly as Stripe signs them
//! (`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">`), POSTed asynchronously to
//! every matching endpoint, and retried on the configured schedule until one attempt gets a 2xx.
//! Injected faults (duplicates, reordering, lateness, dropped attempts) are planned here.

use crate::sim::Sim;
use crate::state::{DeliveryRecord, World};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use serde_json::Value;
use sha2::Sha256;
use std::time::Duration;

/// Builds the `Stripe-Signature` header for `payload` signed at `timestamp`.
pub fn signature_header(secret: &str, timestamp: i64, payload: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// One planned delivery of one event to one endpoint, with the jobs to start once its first
/// attempt is over (how a held-back event ends up after the one that overtook it).
pub struct Job {
    event_id: String,
    event_type: String,
    account: Option<String>,
    endpoint_id: String,
    url: String,
    secret: String,
    payload: std::sync::Arc<String>,
    delay: Duration,
    dropped_attempts: u32,
    generation: u64,
    then: Vec<Job>,
}

/// Plans deliveries for `events` against the world's endpoints, consuming webhook faults.
pub fn plan(world: &mut World, events: Vec<Value>) -> Vec<Job> {
    let mut jobs = Vec::new();
    for event in events {
        let faults = &mut world.faults;
        if faults.webhook_reorder > 0 {
            faults.webhook_reorder -= 1;
            let account = event["account"].as_str().unwrap_or_default().to_owned();
            world.held_events.push((account, event));
            continue;
        }
        let mut own = jobs_for(world, &event);
        let held: Vec<(String, Value)> = std::mem::take(&mut world.held_events);
        let mut held_jobs: Vec<Job> = held.iter().flat_map(|(_, e)| jobs_for(world, e)).collect();
        match own.first_mut() {
            Some(first) => first.then.append(&mut held_jobs),
            None => own.append(&mut held_jobs),
        }
        jobs.extend(own);
    }
    jobs
}

fn jobs_for(world: &mut World, event: &Value) -> Vec<Job> {
    if world.faults.webhook_drop_all {
        return Vec::new();
    }
    let kind = event["type"].as_str().unwrap_or_default().to_owned();
    let account = event["account"].as_str().map(str::to_owned);
    let faults = &mut world.faults;
    let copies = if faults.webhook_duplicate > 0 {
        faults.webhook_duplicate -= 1;
        2
    } else {
        1
    };
    let delay = if faults.webhook_delays > 0 {
        faults.webhook_delays -= 1;
        Duration::from_millis(faults.webhook_delay_ms)
    } else {
        Duration::ZERO
    };
    let dropped_attempts = std::mem::take(&mut faults.webhook_drop_attempts);
    let payload = std::sync::Arc::new(event.to_string());
    let mut jobs = Vec::new();
    for ep in world.endpoints.iter().filter(|e| e.wants(&kind, account.is_some())) {
        for _ in 0..copies {
            jobs.push(Job {
                event_id: event["id"].as_str().unwrap_or_default().to_owned(),
                event_type: kind.clone(),
                account: account.clone(),
                endpoint_id: ep.id.clone(),
                url: ep.url.clone(),
                secret: ep.secret.clone(),
                payload: payload.clone(),
                delay,
                dropped_attempts,
                generation: world.generation,
                then: Vec::new(),
            });
        }
    }
    jobs
}

/// Runs one job to completion: waits its delay, then attempts until delivered or the retry
/// schedule is spent.
pub fn run(sim: Sim, job: Job) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    // Boxed because a job starts its follow-up jobs: the future type would otherwise be recursive.
    Box::pin(run_inner(sim, job))
}

async fn run_inner(sim: Sim, mut job: Job) {
    if !job.delay.is_zero() {
        tokio::time::sleep(job.delay).await;
    }
    let schedule = sim.config().webhook_retry_schedule.clone();
    for attempt in 1..=(schedule.len() as u32 + 1) {
        if sim.with_world(|w| w.generation) != job.generation {
            return;
        }
        let (status, outcome) = if attempt <= job.dropped_attempts {
            (None, "dropped by fault injection".to_owned())
        } else {
            post(&sim, &job).await
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        sim.with_world(|w| {
            let record = DeliveryRecord {
                at: crate::ids::now(),
                event_id: job.event_id.clone(),
                event_type: job.event_type.clone(),
                account: job.account.clone(),
                endpoint_id: job.endpoint_id.clone(),
                url: job.url.clone(),
                attempt,
                status,
                outcome,
                delivered,
            };
            World::push_capped(&mut w.deliveries, record);
            if delivered {
                let acct = job.account.clone().unwrap_or_else(|| w.platform.clone());
                if let Some(ev) = w.accounts.get_mut(&acct).and_then(|a| a.events.get_mut(&job.event_id)) {
                    let left = ev["pending_webhooks"].as_u64().unwrap_or(1).saturating_sub(1);
                    ev["pending_webhooks"] = left.into();
                }
            }
        });
        if attempt == 1 {
            for next in job.then.drain(..) {
                tokio::spawn(run(sim.clone(), next));
            }
        }
        if delivered {
            return;
        }
        if let Some(wait) = schedule.get(attempt as usize - 1) {
            tokio::time::sleep(*wait).await;
        }
    }
}

async fn post(sim: &Sim, job: &Job) -> (Option<u16>, String) {
    if !job.url.starts_with("http://") {
        return (None, "only http:// endpoints can be reached from the simulator".into());
    }
    let header = signature_header(&job.secret, crate::ids::now(), &job.payload);
    let request = hyper::Request::post(job.url.as_str())
        .header("content-type", "application/json; charset=utf-8")
        .header("user-agent", "Stripe/1.0 (stripe-sim)")
        .header("stripe-signature", header)
        .body(Full::new(Bytes::from(job.payload.as_bytes().to_vec())));
    let request = match request {
        Ok(r) => r,
        Err(e) => return (None, format!("invalid endpoint URL: {e}")),
    };
    match tokio::time::timeout(sim.config().webhook_timeout, sim.http().request(request)).await {
        Err(_) => (None, "timeout".into()),
        Ok(Err(e)) => (None, format!("connection failed: {e}")),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            (Some(status), status.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_independent_hmac() {
        // HMAC-SHA256(key "whsec_x", message "1.{}") computed with Python's hmac module.
        let h = super::signature_header("whsec_x", 1, "{}");
        assert_eq!(h, "t=1,v1=36ee2f7498f0c1777d1312b2a7361947fe5ad31223be30d0c62421f4ca753401");
    }
}

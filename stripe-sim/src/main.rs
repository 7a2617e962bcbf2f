//! `stripe-sim` binary: runs the simulator until Ctrl-C and prints one `STRIPE_SIM {json}` line
//! when it is ready, for scripts.

use anyhow::{Context, bail};
use stripe_sim::{SimConfig, WebhookTarget};

const USAGE: &str = "usage: stripe-sim [--listen ADDR] [--secret-key KEY] [--publishable-key KEY] [--client-id ID]
                  [--webhook URL]... [--webhook-secret WHSEC]
  --listen           address to bind (default 127.0.0.1:0, a free loopback port)
  --secret-key       platform secret key (default sk_test_callpay_sim_secret)
  --publishable-key  platform publishable key (default pk_test_callpay_sim_publishable)
  --client-id        Connect OAuth client id (default ca_callpay_sim)
  --webhook          forward every event (platform and connected accounts) to this http:// URL
  --webhook-secret   signing secret for --webhook endpoints (default whsec_callpay_sim)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut config = SimConfig::default();
    let mut urls = Vec::new();
    let mut secret = "whsec_callpay_sim".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--listen" => config.listen = value()?.parse().context("--listen must be HOST:PORT")?,
            "--secret-key" => config.secret_key = value()?,
            "--publishable-key" => config.publishable_key = value()?,
            "--client-id" => config.client_id = value()?,
            "--webhook" => urls.push(value()?),
            "--webhook-secret" => secret = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if !config.secret_key.starts_with("sk_") || !config.publishable_key.starts_with("pk_") {
        bail!("--secret-key must start with sk_ and --publishable-key with pk_");
    }
    config.webhooks = urls.into_iter().map(|url| WebhookTarget { url, secret: secret.clone() }).collect();
    let handle = stripe_sim::spawn(config).await.context("could not bind the listen address")?;
    println!("STRIPE_SIM {}", handle.ready_json());
    eprintln!("stripe-sim ready: dashboard at {}dashboard (Ctrl-C to stop)", handle.url);
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    handle.stop().await;
    Ok(())
}

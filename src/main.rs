//! `callpay` command line: `serve` for production, `demo` for the offline product.

use anyhow::{Context, bail};
use callpay::app::{Dependencies, node_id};
use callpay::config::Config;
use callpay::server::App;
use std::path::PathBuf;

const USAGE: &str = "usage:
  callpay serve [--config FILE]      run the hub (settings: FILE, then CALLPAY__SECTION__KEY variables)
  callpay demo [--data-dir DIR] [--listen ADDR] [--config FILE] [--nodes N --redis-url URL]
                                     run everything offline: hub, SQLite, Stripe simulator, web pages
                                     (server and payments settings from FILE and CALLPAY__… as for serve);
                                     --nodes runs N hub instances in one process over that Redis";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let flag = |name: &str| rest.iter().position(|a| a == name).and_then(|i| rest.get(i + 1)).cloned();
    match command.as_str() {
        "serve" => {
            let file = flag("--config").map(PathBuf::from);
            let config = Config::load(file.as_deref(), std::env::vars()).context("loading configuration")?;
            if let Err(e) = config.validate_for_serve() {
                bail!("refusing to start: {e}");
            }
            let node = node_id();
            let deps = Dependencies::from_config(&config, &node).await?;
            let app = App::build(config, deps, node).await?;
            tracing::info!(addr = %app.addr(), "callpay serving");
            callpay::shutdown::on_signal(app.state.shutdown.clone(), app.state.drain_hurry.clone());
            app.run_until_stopped().await
        }
        #[cfg(feature = "demo")]
        "demo" => {
            let dir = flag("--data-dir").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data/demo"));
            let listen = flag("--listen").map(|l| l.parse()).transpose().context("--listen must be HOST:PORT")?;
            let file = flag("--config").map(PathBuf::from);
            let settings = Config::load(file.as_deref(), std::env::vars()).context("loading configuration")?;
            let nodes: usize =
                flag("--nodes").map(|n| n.parse()).transpose().context("--nodes must be a number")?.unwrap_or(1);
            let several = match (nodes, flag("--redis-url")) {
                (1, None) => None,
                (n, Some(redis)) => Some((n, redis)),
                (_, None) => bail!("--nodes needs --redis-url (the instances talk through Redis)"),
            };
            callpay::demo::run(dir, listen, settings, several).await
        }
        #[cfg(not(feature = "demo"))]
        "demo" => {
            bail!("this build has no demo: it was built without the `demo` feature (cargo build --features demo)")
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

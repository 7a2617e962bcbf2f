//! What SIGINT and SIGTERM do to the process. The first cancels the app's shutdown token, which
//! every session and background task watches (each is spawned through one of the app's
//! `TaskTracker`s); the drain then lets sockets go at the fleet's pace. A second cuts the drain
//! short (every socket still held goes at once); a third exits on the spot.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A signal this soon after the first is taken as part of it: process managers and shell
/// wrappers often send SIGTERM and SIGINT together, and that must not skip the paced drain.
const SAME_STOP: Duration = Duration::from_secs(1);

/// Cancels `stop` on the first SIGINT or SIGTERM and `hurry` on the next one (at least
/// [`SAME_STOP`] later); exits the process with status 1 on the one after. The handlers are
/// installed before this returns, so a signal that arrives at once is not missed.
pub fn on_signal(stop: CancellationToken, hurry: CancellationToken) {
    let mut signals = Signals::new();
    tokio::spawn(async move {
        signals.next().await;
        let first = tokio::time::Instant::now();
        tracing::info!(
            "shutdown signal received; another, a second or more later, lets every socket still held go at once"
        );
        stop.cancel();
        loop {
            signals.next().await;
            if first.elapsed() >= SAME_STOP {
                break;
            }
            tracing::info!("a second signal within a second of the first taken as the same stop");
        }
        tracing::warn!("second shutdown signal: the drain lets every socket still held go now; a third exits at once");
        hurry.cancel();
        signals.next().await;
        tracing::error!("third shutdown signal: exiting without waiting for sessions or presence hand-over");
        std::process::exit(1);
    });
}

/// SIGINT and SIGTERM as one stream. Once installed a handler stays for the life of the
/// process, so the default action (exit at once, with no `4012`s and no presence hand-over) does
/// not come back between signals.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{Signal, SignalKind, signal};
            let install = |kind: SignalKind, name: &str| -> Option<Signal> {
                signal(kind)
                    .inspect_err(|e| {
                        tracing::error!(error = %e, signal = name, "no handler installed: this signal ends the process without a drain");
                    })
                    .ok()
            };
            Self {
                interrupt: install(SignalKind::interrupt(), "SIGINT"),
                terminate: install(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.interrupt) => {}
                _ = recv(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

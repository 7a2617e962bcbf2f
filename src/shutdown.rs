//! One root cancellation token for the process: SIGINT or SIGTERM cancels it; every session and
//! background task watches it (and is spawned through the app's `TaskTracker`). A second signal
//! cuts the drain short: every socket still held goes at once.

use tokio_util::sync::CancellationToken;

/// Cancels `stop` on the first SIGINT or SIGTERM, and `hurry` on the next one.
pub fn on_signal(stop: CancellationToken, hurry: CancellationToken) {
    tokio::spawn(async move {
        let mut signals = Signals::new();
        signals.next().await;
        tracing::info!("shutdown signal received; a second one lets every socket still held go at once");
        stop.cancel();
        signals.next().await;
        tracing::warn!("second shutdown signal: the drain lets every socket still held go now");
        hurry.cancel();
    });
}

/// SIGINT and SIGTERM as one stream. The handlers stay installed once made, so the default
/// action (exit at once, with no `4012`s and no presence hand-over) never comes back.
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
            use tokio::signal::unix::{SignalKind, signal};
            // A handler that cannot be installed only means that signal is never heard.
            Self { interrupt: signal(SignalKind::interrupt()).ok(), terminate: signal(SignalKind::terminate()).ok() }
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

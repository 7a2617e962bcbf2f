//! E-mail: callpay's own receipts. [`Mailer`] is the one thing that sends a message, with an
//! in-process mailbox ([`MemoryMailbox`], for the demo and tests) and SMTP ([`SmtpMailer`],
//! lettre over tokio and rustls). [`receipt`] writes a receipt in the patient's language (pure),
//! and [`outbox`] sends the receipts queued with payments' successes, retrying with backoff.

pub mod outbox;
pub mod receipt;
mod smtp;

pub use smtp::SmtpMailer;

use async_trait::async_trait;
use std::sync::{Arc, Mutex};

/// One message to send: plain text, UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mail {
    /// The sender's display name (the clinic's name).
    pub from_name: String,
    /// The sender's address (`receipts.from`).
    pub from_addr: String,
    /// The recipient's address.
    pub to: String,
    /// The subject, any script.
    pub subject: String,
    /// The text body, any script.
    pub text: String,
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// Worth trying again later: the server could not be reached, timed out or answered 4xx.
    #[error("mail not sent for now: {0}")]
    Transient(String),
    /// Trying again cannot help: the address is malformed or the server refused it for good (5xx).
    #[error("mail refused: {0}")]
    Permanent(String),
}

/// Sends e-mail.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends `mail` once; the caller retries a [`MailError::Transient`] failure.
    async fn send(&self, mail: &Mail) -> Result<(), MailError>;
}

/// The mailer `receipts.smtp_url` names, if any. A URL whose security is not one of the
/// explicit modes is refused here too, so no mailer is ever built from one, whether or not the
/// configuration was validated first.
pub fn from_config(cfg: &crate::config::ReceiptsConfig) -> Result<Option<Arc<dyn Mailer>>, MailError> {
    let Some(url) = &cfg.smtp_url else { return Ok(None) };
    let security = crate::config::smtp_security(url.expose())
        .map_err(|problem| MailError::Permanent(format!("receipts.smtp_url: {problem}")))?;
    tracing::info!(
        security = security.as_str(),
        encrypted = security.encrypted(),
        "receipts: callpay's own receipts go through the configured mail server"
    );
    Ok(Some(Arc::new(SmtpMailer::new(url.expose(), std::time::Duration::from_millis(cfg.timeout_ms))?)))
}

/// An in-process mailbox: keeps what it is given, newest last. The demo shows it on
/// `/demo/mailbox`; tests read it, and can make the next sends fail to exercise retries.
#[derive(Default)]
pub struct MemoryMailbox {
    state: Mutex<MailboxState>,
}

#[derive(Default)]
struct MailboxState {
    kept: Vec<(i64, Mail)>,
    failures_left: u32,
    attempts: u32,
}

/// Most messages the in-process mailbox keeps (the oldest go first): it is a demo's window, not
/// a store.
const MAILBOX_KEEPS: usize = 200;

impl std::fmt::Debug for MemoryMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryMailbox").field("messages", &self.messages().len()).finish()
    }
}

impl MemoryMailbox {
    /// An empty mailbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message kept, with when it arrived (Unix ms), oldest first.
    pub fn messages(&self) -> Vec<(i64, Mail)> {
        self.state.lock().expect("mailbox lock").kept.clone()
    }

    /// Makes the next `n` sends fail as a mail server that cannot be reached would.
    pub fn fail_next(&self, n: u32) {
        self.state.lock().expect("mailbox lock").failures_left = n;
    }

    /// Sends attempted so far, failed ones included.
    pub fn attempts(&self) -> u32 {
        self.state.lock().expect("mailbox lock").attempts
    }
}

#[async_trait]
impl Mailer for MemoryMailbox {
    async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let mut s = self.state.lock().expect("mailbox lock");
        s.attempts += 1;
        if s.failures_left > 0 {
            s.failures_left -= 1;
            return Err(MailError::Transient("the mailbox is set to fail this send".into()));
        }
        if s.kept.len() >= MAILBOX_KEEPS {
            s.kept.remove(0);
        }
        s.kept.push((crate::store::now_ms(), mail.clone()));
        Ok(())
    }
}

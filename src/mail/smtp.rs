//! [`super::Mailer`] over SMTP with lettre: the URL decides the transport security
//! ([`crate::config::SmtpSecurity`]: `smtps://` TLS from the start, `?tls=required` STARTTLS,
//! plain `smtp://` none, which the configuration allows only to a loopback host; anything else,
//! `tls=opportunistic` included, is refused before a mailer is built). Each message is plain text in UTF-8;
//! lettre encodes a non-ASCII subject and display name as RFC 2047 words and picks the body's
//! transfer encoding.

use super::{Mail, MailError, Mailer};
use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// Sends through one SMTP server.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpMailer {
    /// A mailer for `url` (see `receipts.smtp_url`); connecting is bounded by `timeout`. lettre
    /// bounds nothing after the connect, so the caller bounds the whole send
    /// ([`super::outbox`] does, within a receipt's claim).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, MailError> {
        // lettre's error can echo the URL, password included: say only what kind of problem.
        let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|_| MailError::Permanent("receipts.smtp_url is not a usable SMTP URL".into()))?;
        Ok(Self { transport: builder.timeout(Some(timeout)).build() })
    }
}

/// The message as it goes on the wire.
pub fn message(mail: &Mail) -> Result<Message, MailError> {
    let from_addr = mail.from_addr.parse().map_err(|e| MailError::Permanent(format!("sender address: {e}")))?;
    let to: Mailbox = mail.to.parse().map_err(|e| MailError::Permanent(format!("recipient address: {e}")))?;
    Message::builder()
        .from(Mailbox::new(Some(mail.from_name.clone()), from_addr))
        .to(to)
        .subject(mail.subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(mail.text.clone())
        .map_err(|e| MailError::Permanent(format!("message: {e}")))
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let message = message(mail)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(MailError::Permanent(e.to_string())),
            Err(e) => Err(MailError::Transient(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bengali_subject_is_encoded_and_the_body_is_utf8() {
        let mail = Mail {
            from_name: "হারবার ক্লিনিক".into(),
            from_addr: "receipts@example.com".into(),
            to: "sam@example.com".into(),
            subject: "আপনার রসিদ".into(),
            text: "পরিমাণ: ৫০.০০ AUD".into(),
        };
        let raw = String::from_utf8(message(&mail).unwrap().formatted()).unwrap();
        let head = raw.split("\r\n\r\n").next().unwrap();
        assert!(head.is_ascii(), "headers are ASCII on the wire: {head}");
        assert!(head.contains("Subject: =?utf-8?b?"), "{head}");
        assert!(head.contains("charset=utf-8"), "{head}");
        assert!(matches!(message(&Mail { to: "not an address".into(), ..mail }), Err(MailError::Permanent(_))));
    }
}

//! Sending one signed event over HTTP, behind [`EventSender`]: [`HttpSender`] is the real one
//! (hyper, http and https, short timeouts, redirects never followed), [`MemorySender`] the
//! in-process one for tests. [`HttpSender`] checks the URL again at every attempt, and its
//! connector resolves the host once, checks every address it got (private, loopback, link-local,
//! callpay itself… are refused: [`super::endpoints::check_address`]) and connects only to those:
//! a name that resolves to a public address when checked and to an internal one when connected
//! (DNS rebinding) cannot slip between the two, because there is no second lookup.

use super::endpoints::{Refused, UrlPolicy, check_address, check_url};
use super::resolver::Resolver;
use crate::config::EventsConfig;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Most bytes of a receiver's answer kept with an attempt: enough to read an error message,
/// little enough that a receiver answering megabytes cannot fill the database.
pub const EXCERPT_BYTES: usize = 512;

/// One POST of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The endpoint's URL.
    pub url: String,
    /// Headers (the signature among them).
    pub headers: Vec<(&'static str, String)>,
    /// The event's JSON.
    pub body: Bytes,
}

/// What became of a POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The receiver answered (any status).
    Answered {
        /// HTTP status.
        status: u16,
        /// The start of its body.
        excerpt: String,
    },
    /// No answer: refused address, connection refused, TLS failure, timeout.
    Failed(String),
}

/// Sends events.
#[async_trait]
pub trait EventSender: Send + Sync + 'static {
    /// POSTs `request`, within the sender's timeout.
    async fn send(&self, request: Outgoing) -> Sent;
}

/// Why the connector opened no connection. Its text is what the attempt records.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The URL has no host (never stored: registration parses it).
    #[error("the URL has no host")]
    NoHost,
    /// The name does not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    /// The name resolves to nothing.
    #[error("{host} has no address")]
    NoAddress { host: String },
    /// One of the host's addresses is refused: nothing is sent to any of them.
    #[error("refused: {host} is at {addr}, and {reason}")]
    Refused { host: String, addr: SocketAddr, reason: Refused },
    /// No address took the connection.
    #[error("cannot connect to {host}: {last}")]
    Connect { host: String, last: String },
}

/// The TCP side of an attempt (TLS, from hyper-rustls, wraps it; the TLS server name and the
/// Host header still come from the URL's name). It resolves the URL's host once through the
/// [`Resolver`], checks every address against the [`UrlPolicy`], refuses the whole connection
/// if any is refused (a name that mixes public and internal addresses is not a receiver's),
/// and connects only to the addresses it checked.
#[derive(Clone)]
struct CheckedConnector {
    resolver: Arc<dyn Resolver>,
    policy: Arc<UrlPolicy>,
    connect_timeout: Duration,
}

impl CheckedConnector {
    async fn connect(self, dst: Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let host = dst.host().ok_or(ConnectError::NoHost)?.trim_start_matches('[').trim_end_matches(']').to_owned();
        let default_port = if dst.scheme_str() == Some("https") { 443 } else { 80 };
        let port = dst.port_u16().unwrap_or(default_port);
        let ips = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self
                .resolver
                .lookup(&host)
                .await
                .map_err(|source| ConnectError::Resolve { host: host.clone(), source })?,
        };
        if ips.is_empty() {
            return Err(ConnectError::NoAddress { host });
        }
        let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
        for addr in &addrs {
            check_address(*addr, &self.policy).map_err(|reason| ConnectError::Refused {
                host: host.clone(),
                addr: *addr,
                reason,
            })?;
        }
        // Each address gets an equal share of the connect timeout (as hyper's own connector
        // does), so that one that never answers leaves time for the next.
        let share = self.connect_timeout / u32::try_from(addrs.len()).unwrap_or(u32::MAX);
        let mut last = String::new();
        for addr in &addrs {
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Small requests, one at a time: no reason to wait for a fuller packet.
                    stream.set_nodelay(true).ok();
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no connection within {} ms", share.as_millis()),
            }
        }
        Err(ConnectError::Connect { host, last })
    }
}

impl tower_service::Service<Uri> for CheckedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        Box::pin(self.clone().connect(dst))
    }
}

type Https = hyper_rustls::HttpsConnector<CheckedConnector>;

/// The real sender.
pub struct HttpSender {
    http: Client<Https, Full<Bytes>>,
    timeout: Duration,
    policy: Arc<UrlPolicy>,
}

impl HttpSender {
    /// A sender whose every attempt (connect, request, reading the answer's start) ends within
    /// `cfg.timeout_ms`, connecting within `cfg.connect_timeout_ms`, only to addresses `policy`
    /// accepts, as `resolver` answers for the URL's host.
    pub fn new(cfg: &EventsConfig, policy: UrlPolicy, resolver: Arc<dyn Resolver>) -> Self {
        let policy = Arc::new(policy);
        let tcp = CheckedConnector {
            resolver,
            policy: policy.clone(),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        // No pool: every attempt resolves, checks and connects afresh, so what an attempt is
        // sent to was checked for that attempt (a kept connection would outlive the answer it
        // was checked against). Attempts to one receiver are seconds to hours apart anyway.
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(https);
        Self { http, timeout: Duration::from_millis(cfg.timeout_ms), policy }
    }

    async fn attempt(&self, request: Outgoing) -> Result<Sent, String> {
        // The rules of registration again: the configuration may have changed since (a
        // receiver accepted then, on loopback or over plain http, may no longer be).
        check_url(&request.url, &self.policy).map_err(|reason| format!("refused: {reason}"))?;
        let mut req = hyper::Request::post(request.url.as_str());
        for (name, value) in &request.headers {
            req = req.header(*name, value);
        }
        let req = req.body(Full::new(request.body)).map_err(|e| e.to_string())?;
        let response = self.http.request(req).await.map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut kept = Vec::new();
        while kept.len() < EXCERPT_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        kept.extend_from_slice(&data[..data.len().min(EXCERPT_BYTES - kept.len())]);
                    }
                }
                // A broken body after the status line still is an answer.
                Some(Err(_)) | None => break,
            }
        }
        Ok(Sent::Answered { status, excerpt: String::from_utf8_lossy(&kept).into_owned() })
    }
}

/// What went wrong: the connector's own reason as it is (a refused address, a name that does
/// not resolve), otherwise hyper's error with its causes (refused, reset, TLS).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(ours) = s.downcast_ref::<ConnectError>() {
            return ours.to_string();
        }
        source = s.source();
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[async_trait]
impl EventSender for HttpSender {
    async fn send(&self, request: Outgoing) -> Sent {
        match tokio::time::timeout(self.timeout, self.attempt(request)).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => Sent::Failed(e),
            Err(_) => Sent::Failed(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }
}

/// An in-process sender: keeps every request, answers from a script (then 200).
#[derive(Default)]
pub struct MemorySender {
    sent: Mutex<Vec<Outgoing>>,
    script: Mutex<VecDeque<Sent>>,
}

impl MemorySender {
    /// Answers the next requests with `answers`, in order.
    pub fn answer(&self, answers: impl IntoIterator<Item = Sent>) {
        self.script.lock().unwrap_or_else(|p| p.into_inner()).extend(answers);
    }

    /// Every request so far.
    pub fn sent(&self) -> Vec<Outgoing> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl EventSender for MemorySender {
    async fn send(&self, request: Outgoing) -> Sent {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push(request);
        let next = self.script.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        next.unwrap_or(Sent::Answered { status: 200, excerpt: String::new() })
    }
}

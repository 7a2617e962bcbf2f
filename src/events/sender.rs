//! Sending one signed event over HTTP, behind [`EventSender`]: [`HttpSender`] is the real one
//! (hyper, http and https, short timeouts, redirects never followed, callpay's own addresses
//! refused after name resolution), [`MemorySender`] the in-process one for tests.

use super::endpoints::{OwnAddresses, refused_address};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

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

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The real sender.
pub struct HttpSender {
    http: Client<Https, Full<Bytes>>,
    timeout: Duration,
    own: OwnAddresses,
}

impl HttpSender {
    /// A sender whose every attempt (connect, request, reading the answer's start) ends within
    /// `timeout`, connecting within `connect_timeout`, never to an address in `own`.
    pub fn new(timeout: Duration, connect_timeout: Duration, own: OwnAddresses) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        // Connections are not kept between attempts to one receiver minutes apart; a short
        // idle time keeps the pool from holding sockets to every receiver ever seen.
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Self { http, timeout, own }
    }

    async fn attempt(&self, request: Outgoing) -> Result<Sent, String> {
        let url = url::Url::parse(&request.url).map_err(|e| format!("invalid URL: {e}"))?;
        let host = url.host_str().ok_or("the URL has no host")?.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        // The host's addresses are checked as the URL was at registration: a name that
        // resolves to callpay itself (or to a metadata service) is refused here.
        let addrs: Vec<_> =
            tokio::net::lookup_host((host, port)).await.map_err(|e| format!("cannot resolve {host}: {e}"))?.collect();
        for addr in &addrs {
            refused_address(*addr, &self.own).map_err(|e| format!("refused address {addr}: {e}"))?;
        }
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

/// hyper's error with its causes, which say what actually went wrong (refused, reset, TLS).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
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

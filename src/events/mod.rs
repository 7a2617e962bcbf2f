//! Signed events for the platform (outbound webhooks). Payment and clinic changes are written
//! to the outbox in the transaction that stores them ([`catalogue`]); a worker per instance
//! ([`relay`]) signs ([`signature`]) and POSTs them ([`sender`], resolving names through
//! [`resolver`]) to the endpoints the platform operator registered, whose URLs and addresses
//! [`endpoints`] checks; [`retention`] deletes what ended long enough ago. [`Events`] holds the
//! operator's rules: registering, changing and deleting endpoints, reading deliveries,
//! replaying one.

pub mod catalogue;
pub mod endpoints;
pub mod relay;
pub mod resolver;
pub mod retention;
pub mod sender;
pub mod signature;

use crate::config::{EventsConfig, Secret};
use crate::store::outbox::{Attempt, Delivery, EndpointChange, EventEndpoint, Outbox};
use crate::store::{OutboxEvent, StoreError, now_ms};
use catalogue::EventType;
use endpoints::{OwnAddresses, Refused, UrlPolicy, check_url};
use std::sync::Arc;

/// Longest endpoint description, in characters.
pub const MAX_DESCRIPTION: usize = 200;
/// Shortest and longest secret an operator may choose (a generated one is 70 characters).
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 24..=200;

/// What the operator may not do, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The URL is refused.
    #[error("{0}")]
    Url(#[from] Refused),
    /// A type not in the catalogue.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// A missing URL on creation.
    #[error("a url is required")]
    MissingUrl,
    /// The chosen secret is too short, too long, or not printable ASCII.
    #[error("a secret must be {min} to {max} printable ASCII characters without spaces", min = SECRET_LEN.start(), max = SECRET_LEN.end())]
    BadSecret,
    /// The description is too long or has control characters.
    #[error("a description is at most {MAX_DESCRIPTION} characters, without control characters")]
    BadDescription,
    /// `events.max_endpoints` reached.
    #[error("at most {0} endpoints may be registered")]
    TooMany(usize),
    /// No such endpoint or delivery.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventsError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            EventsError::Url(r) => r.code(),
            EventsError::UnknownType(_) => "unknown_event_type",
            EventsError::MissingUrl => "invalid_url",
            EventsError::BadSecret => "invalid_secret",
            EventsError::BadDescription => "invalid_description",
            EventsError::TooMany(_) => "too_many_endpoints",
            EventsError::NotFound(_) => "not_found",
            EventsError::Store(_) => "unavailable",
        }
    }
}

/// An operator's endpoint settings (creation, or a change of the fields given).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// Where to POST.
    pub url: Option<String>,
    /// Off: no new deliveries, pending ones wait (default on).
    pub enabled: Option<bool>,
    /// Types to send; absent or empty: every type.
    pub events: Option<Vec<String>>,
    /// The operator's note.
    pub description: Option<String>,
    /// The signing secret, on creation only; absent: callpay generates one.
    pub secret: Option<String>,
}

/// The operator's side of outbound events.
pub struct Events {
    outbox: Arc<dyn Outbox>,
    cfg: EventsConfig,
    policy: UrlPolicy,
}

impl Events {
    /// The service over `outbox`; `own` is where callpay itself listens (never a receiver).
    pub fn new(outbox: Arc<dyn Outbox>, cfg: EventsConfig, own: OwnAddresses) -> Self {
        let policy = UrlPolicy::new(own, &cfg);
        Self { outbox, cfg, policy }
    }

    /// The outbox (for reads the API shows as they are, and for more instances on it).
    pub fn outbox(&self) -> Arc<dyn Outbox> {
        self.outbox.clone()
    }

    fn url(&self, raw: &str) -> Result<String, EventsError> {
        Ok(check_url(raw, &self.policy)?.to_string())
    }

    fn types(names: &[String]) -> Result<Vec<String>, EventsError> {
        let mut types = Vec::new();
        for name in names {
            let t = EventType::parse(name.trim())
                .ok_or_else(|| EventsError::UnknownType(name.chars().take(64).collect()))?;
            if !types.iter().any(|k: &String| k == t.as_str()) {
                types.push(t.as_str().to_owned());
            }
        }
        Ok(types)
    }

    fn description(text: Option<String>) -> Result<Option<String>, EventsError> {
        match text {
            Some(d) if d.chars().count() > MAX_DESCRIPTION || d.chars().any(char::is_control) => {
                Err(EventsError::BadDescription)
            }
            d => Ok(d.map(|d| d.trim().to_owned())),
        }
    }

    /// Registers an endpoint; answers it with its secret (the only time the secret is shown).
    pub async fn create_endpoint(
        &self,
        req: EndpointRequest,
        by: &str,
    ) -> Result<(EventEndpoint, String), EventsError> {
        let url = self.url(req.url.as_deref().ok_or(EventsError::MissingUrl)?)?;
        let event_types = Self::types(req.events.as_deref().unwrap_or_default())?;
        let description = Self::description(req.description)?.unwrap_or_default();
        let secret = match req.secret {
            Some(s) if SECRET_LEN.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) => s,
            Some(_) => return Err(EventsError::BadSecret),
            None => signature::new_secret(),
        };
        let now = now_ms();
        let endpoint = EventEndpoint {
            id: format!("we_{}", crate::ids::random_id()),
            url,
            secret: Secret::new(secret.clone()),
            description,
            enabled: req.enabled.unwrap_or(true),
            event_types,
            created_by: by.to_owned(),
            created_at: now,
            updated_at: now,
        };
        if !self.outbox.insert_endpoint(&endpoint, self.cfg.max_endpoints).await? {
            return Err(EventsError::TooMany(self.cfg.max_endpoints));
        }
        Ok((endpoint, secret))
    }

    /// Changes the fields given (a secret cannot be changed: register a new endpoint).
    pub async fn change_endpoint(&self, id: &str, req: EndpointRequest) -> Result<EventEndpoint, EventsError> {
        if req.secret.is_some() {
            return Err(EventsError::BadSecret);
        }
        let change = EndpointChange {
            url: req.url.as_deref().map(|u| self.url(u)).transpose()?,
            enabled: req.enabled,
            event_types: req.events.as_deref().map(Self::types).transpose()?,
            description: Self::description(req.description)?,
        };
        if !self.outbox.change_endpoint(id, &change).await? {
            return Err(EventsError::NotFound("endpoint"));
        }
        self.endpoint(id).await
    }

    /// An endpoint.
    pub async fn endpoint(&self, id: &str) -> Result<EventEndpoint, EventsError> {
        self.outbox.endpoint(id).await?.ok_or(EventsError::NotFound("endpoint"))
    }

    /// Deletes an endpoint; its pending deliveries are canceled.
    pub async fn delete_endpoint(&self, id: &str) -> Result<(), EventsError> {
        if self.outbox.delete_endpoint(id).await? { Ok(()) } else { Err(EventsError::NotFound("endpoint")) }
    }

    /// A delivery of `endpoint_id` with its event and attempts.
    pub async fn delivery(
        &self,
        endpoint_id: &str,
        id: &str,
    ) -> Result<(Delivery, Option<OutboxEvent>, Vec<Attempt>), EventsError> {
        let d = self.outbox.delivery(id).await?.filter(|d| d.endpoint_id == endpoint_id);
        let d = d.ok_or(EventsError::NotFound("delivery"))?;
        let event = self.outbox.event(&d.event_id).await?;
        let attempts = self.outbox.attempts(&d.id).await?;
        Ok((d, event, attempts))
    }

    /// Sends a delivery's event again, as a new delivery to the same endpoint (the same event
    /// id, so a receiver that has it already recognises it).
    pub async fn replay(&self, endpoint_id: &str, id: &str) -> Result<Delivery, EventsError> {
        let known = self.outbox.delivery(id).await?.is_some_and(|d| d.endpoint_id == endpoint_id);
        if !known {
            return Err(EventsError::NotFound("delivery"));
        }
        let new_id = format!("dlv_{}", crate::ids::random_id());
        self.outbox.replay(id, &new_id, now_ms()).await?.ok_or(EventsError::NotFound("delivery"))
    }
}

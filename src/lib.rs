//! callpay: take payment from a patient during a telehealth video call.
//!
//! Map of the crate, outside in. Each layer uses only the layers below it; nothing imports
//! upwards (`tests/it/layers.rs` checks it).
//! - [`server`] says which routes exist, binds and runs; [`shutdown`] turns signals into
//!   cancellation; [`demo`] (cargo feature `demo`) runs it all offline against the Stripe
//!   simulator.
//! - The transports: [`ws`] (the WebSocket upgrade, one session task per connection),
//!   [`admin`] (app enablement, Connect OAuth, audit log), [`links`] (pay by link: the link
//!   page's API) and [`webhook`] (Stripe's deliveries),
//!   over [`http`] (JSON errors, extractors, the connection loop, health, the web pages).
//! - [`app`] wires the services below into the state every handler shares.
//! - [`payments`] is the payment flow and its state machine, with Stripe behind a trait;
//!   [`connect`] is Stripe Connect OAuth, also behind a trait; [`reports`] sums payment
//!   records by status, day (in a chosen time zone) and clinician, and writes the CSV export;
//!   [`events`] tells the platform about payment and clinic changes (signed outbound webhooks
//!   from a transactional outbox).
//! - [`hub`] publishes room events locally and over the [`bus`]; [`rooms`] holds per-call
//!   membership, routing state and the frames it fans out (domain state, no I/O).
//! - [`mail`] sends callpay's own receipt e-mails (SMTP or an in-process mailbox) from an
//!   outbox the payment service fills.
//! - [`store`] persists clinics, payments and webhook events (SQLite or PostgreSQL).
//! - Leaves: [`auth`] (platform tokens), [`config`], [`metrics`], [`limits`] (the connection cap
//!   from the open-file limit), [`pacing`] (the join gate and a drain's reconnect spread),
//!   [`ids`], [`faults`] (crash points for process-level tests).
//!
//! The wire protocol lives in the `callpay-protocol` crate.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod connect;
#[cfg(feature = "demo")]
pub mod demo;
pub mod events;
pub mod faults;
pub mod http;
pub mod hub;
pub mod ids;
pub mod limits;
pub mod links;
pub mod mail;
pub mod metrics;
pub mod pacing;
pub mod payments;
pub mod reports;
pub mod rooms;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod webhook;
pub mod ws;

//! callpay: take payment from a patient during a telehealth video call.
//!
//! Map of the crate, outside in:
//! - [`app`] wires everything and runs it; [`shutdown`] turns signals into cancellation.
//! - [`http`] and [`ws`] are the transports: HTTP routes (Stripe webhook, health, metrics) and
//!   the WebSocket upgrade with one session task per connection.
//! - [`rooms`] holds per-call membership and fan-out (domain state, no I/O);
//!   [`hub`] publishes room events locally and over the [`bus`].
//! - [`admin`] is the administrative API: app enablement, Connect OAuth, audit log.
//! - [`payments`] is the payment flow and its state machine, with Stripe behind a trait.
//! - [`store`] persists clinics, payments and webhook events (SQLite or PostgreSQL).
//! - [`auth`] verifies the platform's tokens; [`config`] loads settings; [`metrics`] counts;
//!   [`limits`] sizes the connection cap from the open-file limit;
//!   [`demo`] runs the whole product offline against the Stripe simulator.
//!
//! The wire protocol lives in the `callpay-protocol` crate.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod demo;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod payments;
pub mod rooms;
pub mod shutdown;
pub mod store;
pub mod ws;

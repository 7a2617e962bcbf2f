//! stripe-sim's integration tests: one binary, one module per capability.

mod helpers;

mod auth_errors;
mod faults;
mod fixtures;
mod idempotency;
mod oauth;
mod pages;
mod payment_intents;
mod refunds;
mod webhooks;

//! The hub's integration tests over real sockets: one binary, one module per concern. Each test
//! starts its own hub and Stripe simulator on loopback ports.

mod helpers;
mod ports;
mod services;

mod admin;
mod auth;
mod cli;
mod cluster;
mod errors;
mod events;
mod flow;
mod hostile;
mod layers;
mod links;
mod money;
mod nodes;
mod outage;
mod plans;
mod receipts;
mod recovery;
mod refunds;
mod reports;
mod sockets;
mod verify;
mod webhooks;

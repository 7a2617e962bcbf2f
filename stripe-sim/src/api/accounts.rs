//! Accounts: the platform's own (`GET /v1/account`) and connected Standard accounts.

use super::{ApiRequest, secret_caller};
use crate::error::ApiError;
use crate::sim::Sim;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

/// `GET /v1/account`: the account the key (and `Stripe-Account`) acts on.
pub async fn current(State(sim): State<Sim>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.read(|w| Ok(w.account(&who.account)?.object.clone()))
}

/// `GET /v1/accounts/{id}`: the platform may read accounts connected to it.
pub async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>, req: ApiRequest) -> Response {
    let who = match secret_caller(&sim, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    sim.read(|w| {
        let visible = id == who.account || (!who.connected && w.accounts.get(&id).is_some_and(|a| a.connected));
        if !visible {
            return Err(ApiError::permission(format!(
                "The provided key does not have access to account '{id}' (or that account does not exist)."
            )));
        }
        Ok(w.account(&id)?.object.clone())
    })
}

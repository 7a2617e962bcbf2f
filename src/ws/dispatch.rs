//! What a decoded client frame does. `payment.progress` is relayed on the spot (checked against
//! the room's routing state: no store, no other task). Requests and cancels call Stripe and may
//! take seconds, so a clinician's go to a second task, started on the first one, which runs
//! them in order; a patient never has one.

use crate::app::AppState;
use crate::payments::{Caller, Refusal};
use crate::rooms::Outbound;
use callpay_protocol::{ClientMsg, ErrorCode, ProgressStage};
use std::time::Instant;
use tokio::sync::mpsc;

/// Client commands waiting behind the one being handled. Beyond this the client is sending
/// faster than payments can be made and gets `rate_limited`.
const COMMAND_QUEUE: usize = 8;

/// One connection's dispatcher: where its slow commands queue (none until its first).
#[derive(Default)]
pub struct Dispatch {
    commands_tx: Option<mpsc::Sender<ClientMsg>>,
}

impl Dispatch {
    /// Acts on `msg` from `caller`, read at `read_at`; a refusal is what the client is told.
    pub fn handle(
        &mut self,
        app: &AppState,
        caller: &Caller,
        out: &Outbound,
        msg: ClientMsg,
        read_at: Instant,
    ) -> Option<Refusal> {
        match msg {
            ClientMsg::PaymentProgress { payment_id, stage } => {
                let refused = app.payments.progress(caller, &payment_id, stage).err();
                if refused.is_none() {
                    crate::metrics::Metrics::since(&app.metrics.relay_seconds, read_at);
                    // Stripe.js finished (or 3-D Secure opened): ask Stripe now rather than
                    // wait for the webhook.
                    if matches!(stage, ProgressStage::Submitted | ProgressStage::Authenticating) {
                        let payments = app.payments.clone();
                        app.sessions.spawn(async move {
                            payments.verify(&payment_id, crate::payments::verify::Reason::PageAsked).await;
                        });
                    }
                }
                refused
            }
            cmd => {
                let tx = self.commands_tx.get_or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                    app.sessions.spawn(commands(app.clone(), caller.clone(), rx, out.clone()));
                    tx
                });
                tx.try_send(cmd).err().map(|_| {
                    Refusal::new(
                        ErrorCode::RateLimited,
                        "Too many requests in flight; wait for the earlier ones.",
                        None,
                    )
                })
            }
        }
    }
}

/// Runs a clinician's slow commands in order until the connection drops its [`Dispatch`].
async fn commands(app: AppState, caller: Caller, mut rx: mpsc::Receiver<ClientMsg>, out: Outbound) {
    while let Some(cmd) = rx.recv().await {
        // A place at the node's gate first: past what the store can serve, a command is turned
        // away at once with its place in line, untouched (nothing stored, nothing audited, no
        // Stripe call), rather than queued into the pool's time-out and answered `internal`.
        let _slot = match app.commands.enter(false) {
            Ok(slot) => slot,
            Err(retry) => {
                app.metrics.commands_shed.inc();
                app.metrics.frames_refused.inc();
                let reference = match &cmd {
                    ClientMsg::PaymentRequest { client_ref, .. } => client_ref,
                    ClientMsg::PaymentCancel { payment_id } | ClientMsg::PaymentProgress { payment_id, .. } => {
                        payment_id
                    }
                };
                out.push(super::session::error_frame(&app, &caller.call_id, Refusal::busy(retry, Some(reference))));
                continue;
            }
        };
        let result = match cmd {
            ClientMsg::PaymentRequest { client_ref, amount, currency, description } => {
                app.payments.request(&caller, &client_ref, amount, &currency, &description).await
            }
            ClientMsg::PaymentCancel { payment_id } => app.payments.cancel(&caller, &payment_id).await,
            ClientMsg::PaymentProgress { payment_id, stage } => app.payments.progress(&caller, &payment_id, stage),
        };
        if let Err(r) = result {
            app.metrics.frames_refused.inc();
            out.push(super::session::error_frame(&app, &caller.call_id, r));
        }
    }
}

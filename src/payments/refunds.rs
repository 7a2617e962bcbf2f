//! Refunds from callpay: full or partial, through Stripe on the connected account.

//! Deadlines on a long-lived timer.
//!
//! Arming a fresh `tokio::time::Sleep` for every request registers it in the runtime's
//! timer wheel and removes it again when the request ends: two trips through the
//! driver's lock per request, for a timer that practically never fires. A connection
//! keeps one timer instead and each request only computes its deadline; the timer
//! stays armed for an earlier deadline (never later than the current one) and is
//! re-armed only when it fires early.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// A timer that a connection keeps across requests.
pub type Timer = Pin<Box<Sleep>>;

/// A timer, armed for `deadline`.
pub fn new(deadline: Instant) -> Timer {
    Box::pin(tokio::time::sleep_until(deadline))
}

/// Completes once `deadline` has passed. A timer still armed for a later deadline
/// (the previous request's, under a longer timeout before a reload) is brought
/// forward first: it may fire early, never late.
pub async fn expired(timer: &mut Timer, deadline: Instant) {
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    std::future::poll_fn(|cx| poll_expired(timer, cx, deadline)).await;
}

/// Ready once `deadline` has passed; otherwise the task is woken when the timer fires.
pub fn poll_expired(timer: &mut Timer, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
    while timer.as_mut().poll(cx).is_ready() {
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        timer.as_mut().reset(deadline);
    }
    Poll::Pending
}

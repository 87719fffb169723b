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
    std::future::poll_fn(|cx| poll_deadline(timer, cx, deadline)).await;
}

/// [`poll_expired`] for a deadline that may be earlier than the one the timer is armed
/// for: the timer is brought forward first (it may fire early, never late).
pub fn poll_deadline(timer: &mut Timer, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    poll_expired(timer, cx, deadline)
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

/// Whom a request on its way to the backend is waiting for, and since when: the
/// backend (to take the next part of the request, or to answer once it has all of it)
/// or the client (for the next part of its body). Each has its own limit, so a slow
/// upload is not blamed on the backend and a backend that stops reading or answering
/// is not blamed on the client. The request body sets it as it is read
/// ([`Watched`]); the request's timer reads it. Atomics, because on the HTTP/2 path
/// the body is read by the upstream connection's task.
#[derive(Debug)]
pub struct Waiting {
    base: Instant,
    /// Nanoseconds since `base`, with [`ON_CLIENT`] set while the client is awaited.
    since: std::sync::atomic::AtomicU64,
    /// Tells a timer on another task that the state changed.
    changed: tokio::sync::Notify,
}

const ON_CLIENT: u64 = 1 << 63;

/// Who let a request's time run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    Backend,
    Client,
}

impl Waiting {
    /// Waiting for the backend, from `start`.
    pub fn new(start: Instant) -> Self {
        Waiting { base: start, since: std::sync::atomic::AtomicU64::new(0), changed: Default::default() }
    }

    /// From now on the backend is awaited.
    pub fn on_backend(&self) {
        self.set(self.elapsed());
    }

    fn on_client(&self) {
        self.set(self.elapsed() | ON_CLIENT);
    }

    fn set(&self, v: u64) {
        self.since.store(v, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn elapsed(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(ON_CLIENT - 1).min(ON_CLIENT - 1)
    }

    /// Who is awaited and when their time runs out.
    fn deadline(&self, backend: std::time::Duration, client: std::time::Duration) -> (Stalled, Instant) {
        let v = self.since.load(std::sync::atomic::Ordering::Relaxed);
        let since = self.base + std::time::Duration::from_nanos(v & !ON_CLIENT);
        match v & ON_CLIENT {
            0 => (Stalled::Backend, since + backend),
            _ => (Stalled::Client, since + client),
        }
    }

    /// Completes when whoever is awaited has taken longer than their limit. Polled
    /// in the same task as the body (the direct path): a change of state wakes the
    /// task anyway, and this is polled again with it.
    pub fn poll_stalled(
        &self,
        timer: &mut Timer,
        cx: &mut Context<'_>,
        backend: std::time::Duration,
        client: std::time::Duration,
    ) -> Poll<Stalled> {
        let (who, deadline) = self.deadline(backend, client);
        poll_deadline(timer, cx, deadline).map(|()| who)
    }

    /// [`Waiting::poll_stalled`] for a body read on another task (the HTTP/2 path):
    /// woken by the body when the state changes.
    pub async fn stalled(&self, backend: std::time::Duration, client: std::time::Duration) -> Stalled {
        loop {
            let (who, deadline) = self.deadline(backend, client);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.deadline(backend, client) == (who, deadline) {
                        return who;
                    }
                }
                () = self.changed.notified() => {}
            }
        }
    }
}

/// A request body that tells its [`Waiting`] when the client is awaited (a frame
/// asked for and not yet there) and when the backend is (a frame handed on).
pub struct Watched<B, W> {
    body: B,
    waiting: W,
    asked: bool,
}

impl<B, W: std::ops::Deref<Target = Waiting>> Watched<B, W> {
    pub fn new(body: B, waiting: W) -> Self {
        Watched { body, waiting, asked: false }
    }
}

impl<B, W> hyper::body::Body for Watched<B, W>
where
    B: hyper::body::Body + Unpin,
    W: std::ops::Deref<Target = Waiting> + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        if !this.asked {
            this.asked = true;
            this.waiting.on_client();
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_ready() {
            this.asked = false;
            this.waiting.on_backend();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

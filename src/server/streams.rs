//! How long a hyper-served connection has carried no request, so that an idle HTTP/2
//! connection is closed however many PING, SETTINGS or WINDOW_UPDATE frames keep its
//! bytes moving. The idle I/O limit ([`super::idle::IdleIo`]) counts bytes; on HTTP/2
//! frames that open no stream are bytes too, and a client answering (or sending) pings
//! would otherwise hold its connection, and a place under `max_connections`, forever.
//!
//! A request counts from the moment hyper hands it to the service until hyper drops
//! its response body (sent, reset or abandoned). The bookkeeping is two atomic
//! operations and one clock read per request; the connection's timer fires once per
//! idle period, not per request.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// One connection's open requests and when the last one ended.
pub struct Streams {
    open: AtomicUsize,
    asked: AtomicBool,
    since: Instant,
    /// When the open count last fell to zero, in nanoseconds after `since`.
    quiet_from: AtomicU64,
}

/// Why a connection should now be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// No request arrived within the first-request deadline.
    NeverAsked,
    /// No request has been open for the idle timeout.
    Idle,
}

impl Streams {
    pub fn new() -> Arc<Self> {
        Arc::new(Streams {
            open: AtomicUsize::new(0),
            asked: AtomicBool::new(false),
            since: Instant::now(),
            quiet_from: AtomicU64::new(0),
        })
    }

    /// Counts a request as open until the returned guard drops.
    pub fn open(self: &Arc<Self>) -> Open {
        self.asked.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Open(Arc::clone(self))
    }

    /// Completes when the connection should close: no first request within `first`, or
    /// no request open for `idle` since the last one ended.
    pub async fn quiet(&self, first: Duration, idle: Duration) -> Quiet {
        let mut deadline = self.since + first.min(idle);
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            deadline = if !self.asked.load(Ordering::Relaxed) {
                if now >= self.since + first {
                    return Quiet::NeverAsked;
                }
                self.since + first
            } else if self.open.load(Ordering::Relaxed) == 0 {
                self.since + Duration::from_nanos(self.quiet_from.load(Ordering::Relaxed)) + idle
            } else {
                now + idle
            };
            if deadline <= now {
                return Quiet::Idle;
            }
        }
    }
}

/// A request counted as open (see [`Streams::open`]).
pub struct Open(Arc<Streams>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            let after = Instant::now().saturating_duration_since(self.0.since);
            self.0.quiet_from.store(u64::try_from(after.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as open until hyper drops it.
pub struct Counted<B> {
    body: B,
    _open: Open,
}

impl<B> Counted<B> {
    pub fn new(body: B, open: Open) -> Self {
        Counted { body, _open: open }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::{Quiet, Streams};
    use std::time::Duration;

    const FIRST: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_connection_never_asked_is_quiet_at_the_first_deadline() {
        let streams = Streams::new();
        let started = tokio::time::Instant::now();
        assert_eq!(streams.quiet(FIRST, IDLE).await, Quiet::NeverAsked);
        assert_eq!(started.elapsed(), FIRST);
    }

    /// Idle is counted from the end of the last request, never while one is open.
    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_end_and_never_while_one_is_open() {
        let streams = Streams::new();
        let started = tokio::time::Instant::now();
        let first = streams.open();
        let second = streams.open();
        let watching = std::sync::Arc::clone(&streams);
        let quiet = tokio::spawn(async move { watching.quiet(FIRST, IDLE).await });
        tokio::time::sleep(Duration::from_secs(100)).await;
        drop(first);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!quiet.is_finished(), "one request is still open at 200 s");
        drop(second);
        let at_end = started.elapsed();
        assert_eq!(quiet.await.unwrap(), Quiet::Idle);
        let closed = started.elapsed();
        assert!(closed >= at_end + IDLE && closed <= at_end + IDLE + Duration::from_millis(1), "{closed:?}");
    }

    /// A request that ends early leaves the connection quiet one idle period later.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_ended_early_starts_the_idle_count() {
        let streams = Streams::new();
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(streams.open());
        assert_eq!(streams.quiet(FIRST, IDLE).await, Quiet::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(62));
    }

    /// An idle timeout shorter than the first-request deadline is kept to.
    #[tokio::test(start_paused = true)]
    async fn a_short_idle_timeout_is_kept_to_within_the_first_deadline() {
        let streams = Streams::new();
        let started = tokio::time::Instant::now();
        let watching = std::sync::Arc::clone(&streams);
        let quiet = tokio::spawn(async move { watching.quiet(FIRST, Duration::from_secs(3)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(streams.open());
        assert_eq!(quiet.await.unwrap(), Quiet::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }
}

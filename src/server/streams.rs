//! Whether a hyper-served connection is still carrying requests, so that an idle
//! HTTP/2 connection is closed however many PING, SETTINGS or WINDOW_UPDATE frames keep
//! its bytes moving. Those frames open no stream, yet count as I/O; a client answering
//! (or sending) pings would otherwise hold its connection, and a place under
//! `max_connections`, forever.
//!
//! A request counts from the moment hyper hands it to the service until hyper drops
//! its response body (sent, reset or abandoned). A response that hyper has not asked
//! for its (next) body frame is waiting on the client: HTTP/2 flow control (a window
//! the client never opens) or a socket the client does not read. When
//! every open request waits that way, nothing moves but the client's own frames, and
//! the connection is as idle as one without requests. The bookkeeping is a few
//! relaxed atomics and one clock read per request and per response frame; the
//! connection's timer fires once per idle period (a quarter of one while requests are
//! open), not per request.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// One connection's open requests and when the last thing happened to any of them.
pub struct Streams {
    open: AtomicUsize,
    /// Open requests whose response waits for the client to take the frame handed.
    waiting_on_client: AtomicUsize,
    asked: AtomicBool,
    since: Instant,
    /// A request opened or ended, or a response frame was handed, this many
    /// nanoseconds after `since`.
    last_event: AtomicU64,
}

/// Why a connection should now be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// No request arrived within the first-request deadline.
    NeverAsked,
    /// For the idle timeout, no request was open, or every open one waited on the
    /// client.
    Idle,
}

impl Streams {
    pub fn new() -> Arc<Self> {
        Arc::new(Streams {
            open: AtomicUsize::new(0),
            waiting_on_client: AtomicUsize::new(0),
            asked: AtomicBool::new(false),
            since: Instant::now(),
            last_event: AtomicU64::new(0),
        })
    }

    /// Counts a request as open until the returned guard drops.
    pub fn open(self: &Arc<Self>) -> Open {
        self.asked.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.event();
        Open(Arc::clone(self))
    }

    fn event(&self) {
        let after = Instant::now().saturating_duration_since(self.since);
        self.last_event.store(u64::try_from(after.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Completes when the connection should close: no first request within `first`, or
    /// idle (see [`Quiet::Idle`]) for `idle`.
    pub async fn quiet(&self, first: Duration, idle: Duration) -> Quiet {
        // Never under a millisecond: a tiny `idle` must not make this a busy loop.
        let recheck = (idle / 4).max(Duration::from_millis(1));
        let mut deadline = self.since + first.min(idle);
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            if !self.asked.load(Ordering::Relaxed) {
                if now >= self.since + first {
                    return Quiet::NeverAsked;
                }
                deadline = self.since + first;
                continue;
            }
            let open = self.open.load(Ordering::Relaxed);
            let idle_at = self.since + Duration::from_nanos(self.last_event.load(Ordering::Relaxed)) + idle;
            let all_waiting = self.waiting_on_client.load(Ordering::Relaxed) == open;
            if all_waiting && idle_at <= now {
                return Quiet::Idle;
            }
            // With requests open, look again within a quarter period: one may come to
            // wait on the client.
            deadline = match (all_waiting, open) {
                (true, 0) => idle_at,
                (true, _) => idle_at.min(now + recheck),
                (false, _) => now + recheck,
            };
        }
    }

    /// Completes once no request has been open for `linger`, counted from `from` or
    /// from the end of the last request, whichever is later. A connection told to go
    /// away (GOAWAY) closes once its requests are answered and the client has had
    /// `linger` to send what it had sent before the GOAWAY reached it; it does not wait
    /// for the client to acknowledge the GOAWAY's PING, which a client that is gone, or
    /// stopped reading, never does.
    pub async fn settled(&self, from: Instant, linger: Duration) {
        let recheck = linger.max(Duration::from_millis(1));
        loop {
            let now = Instant::now();
            let deadline = if self.open.load(Ordering::Relaxed) == 0 {
                let last = self.since + Duration::from_nanos(self.last_event.load(Ordering::Relaxed));
                let at = last.max(from) + linger;
                if at <= now {
                    return;
                }
                at
            } else {
                now + recheck
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request counted as open (see [`Streams::open`]).
pub struct Open(Arc<Streams>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.event();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as open until hyper drops it, and
/// tells when it waits on the client.
pub struct Counted<B> {
    body: B,
    open: Open,
    waiting_on_client: bool,
}

impl<B> Counted<B> {
    /// A response ready to go waits on the client until hyper asks for its body: over
    /// HTTP/2 that is once the client's window has room.
    pub fn new(body: B, open: Open) -> Self {
        let mut counted = Counted { body, open, waiting_on_client: false };
        counted.set_waiting(true);
        counted
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting_on_client != waiting {
            self.waiting_on_client = waiting;
            match waiting {
                true => self.open.0.waiting_on_client.fetch_add(1, Ordering::Relaxed),
                false => self.open.0.waiting_on_client.fetch_sub(1, Ordering::Relaxed),
            };
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        this.set_waiting(false);
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.open.0.event();
            // hyper holds the frame until the client has room for it, then asks for the
            // next one (or, after the last, drops the body).
            this.set_waiting(true);
        }
        polled
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
    use super::{Counted, Quiet, Streams};
    use bytes::Bytes;
    use hyper::body::{Body, Frame};
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
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

    /// After a GOAWAY: a connection with nothing open settles one linger after the
    /// GOAWAY; one with a request open, one linger after that request ends.
    #[tokio::test(start_paused = true)]
    async fn a_draining_connection_settles_a_linger_after_its_last_request() {
        const LINGER: Duration = Duration::from_secs(1);
        let streams = Streams::new();
        drop(streams.open());
        tokio::time::sleep(Duration::from_secs(30)).await;
        let goaway = tokio::time::Instant::now();
        streams.settled(goaway, LINGER).await;
        assert_eq!(goaway.elapsed(), LINGER, "the last request ended long before");

        let open = streams.open();
        let watching = std::sync::Arc::clone(&streams);
        let goaway = tokio::time::Instant::now();
        let settled = tokio::spawn(async move { watching.settled(goaway, LINGER).await });
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!settled.is_finished(), "a request is open");
        drop(open);
        let ended = tokio::time::Instant::now();
        settled.await.unwrap();
        assert!(ended.elapsed() >= LINGER && ended.elapsed() <= LINGER * 2, "{:?}", ended.elapsed());
    }

    /// A body of unknown length: frames, then its end, or `Pending` for ever (a
    /// backend that stopped sending).
    struct Chunks(VecDeque<Bytes>, bool);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None if self.1 => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn poll(body: &mut Counted<Chunks>) -> Poll<Option<Result<Frame<Bytes>, std::convert::Infallible>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    /// A response that handed a frame and is not asked for the next (the client opens
    /// no window, or reads nothing) leaves the connection idle; one waiting on its
    /// backend does not (the upstream timeouts bound that wait).
    #[tokio::test(start_paused = true)]
    async fn a_response_waiting_on_the_client_is_idle_and_one_waiting_on_the_backend_is_not() {
        let streams = Streams::new();
        let started = tokio::time::Instant::now();
        let frames = VecDeque::from([Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        let mut body = Counted::new(Chunks(frames, false), streams.open());
        assert!(poll(&mut body).is_ready());
        let watching = std::sync::Arc::clone(&streams);
        let quiet = tokio::spawn(async move { watching.quiet(FIRST, IDLE).await });
        // Asked for the next frame at 30 s: the count starts over.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(poll(&mut body).is_ready());
        assert_eq!(quiet.await.unwrap(), Quiet::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(90));

        let streams = Streams::new();
        let mut body = Counted::new(Chunks(VecDeque::from([Bytes::from_static(b"a")]), true), streams.open());
        assert!(poll(&mut body).is_ready());
        assert!(poll(&mut body).is_pending(), "waits on its backend");
        let watching = std::sync::Arc::clone(&streams);
        let quiet = tokio::spawn(async move { watching.quiet(FIRST, IDLE).await });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!quiet.is_finished(), "a request waiting on its backend is no idle connection");
        drop(body);
        let ended = tokio::time::Instant::now();
        assert_eq!(quiet.await.unwrap(), Quiet::Idle);
        assert!(ended.elapsed() >= IDLE && ended.elapsed() <= IDLE + Duration::from_millis(1), "{:?}", ended.elapsed());
    }
}

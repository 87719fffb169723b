//! The HTTP/2 connections to an https backend that chose HTTP/2 through ALPN, on
//! connections the direct path opened (which offer `h2` and `http/1.1`): per thread,
//! one per tenant, as the direct path's HTTP/1.1 connections are. Its streams are
//! multiplexed and none can carry another request's answer, but they are few (the
//! backend's `SETTINGS_MAX_CONCURRENT_STREAMS`) and a request beyond them waits for
//! one: shared by everyone, one token's slow uploads held every stream and other
//! tokens' requests waited into a 504 (the forty-ninth outside probe). Kept to one
//! tenant, a tenant's requests wait only behind its own. A request of no tenant (a
//! sign-in) opens a connection of its own, which ends after its answer. Per thread as
//! the direct path's idle lists are: `stackgate run` serves each client connection on
//! one thread, and the connection's task runs on the runtime that started it. HTTP/2
//! is spoken only where ALPN agreed on it (RFC 9113 section 3.2); when a connection
//! ends, its tenant's next request opens a new one, and what its ALPN says decides
//! again (a backend may switch).

use super::{H2Body, Tenant};
use crate::http1::client::Records;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_rustls::client::TlsStream;

/// A handle for sending requests on a thread's connection.
pub type Sender = http2::SendRequest<H2Body>;

/// A sender, and which connection it sends on: a request lets go only the connection
/// it failed on ([`Http2::retire`]), not one another request of its tenant opened since.
#[derive(Clone)]
pub struct Conn {
    id: u64,
    pub sender: Sender,
}

/// How often an idle or busy connection is pinged, and how long a ping may go
/// unanswered before the connection is closed: a backend that vanished without a reset
/// (a dropped NAT mapping, a host gone) would otherwise hold every request until TCP
/// gives up, minutes later.
const PING_EVERY: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// At most this many tenants' connections per thread, the least recently used let go
/// first: one-off tenants cannot make a thread hold connections without bound.
const PER_THREAD: usize = 64;

/// How much of a response body, and of all of a connection's, the backend may send
/// ahead of the client's reading (hyper's defaults are 2 MiB and 5 MiB): with a
/// connection per tenant, and one per sign-in, each would otherwise let slow readers
/// pin that much, where an HTTP/1.1 connection holds about a socket's buffer. What is
/// taken with the head is at most 64 KiB (`AHEAD` in `proxy`).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The HTTP/2 connections of one upstream.
#[derive(Default)]
pub struct Http2 {
    /// Whether any thread ever started one, so that an upstream that never chose
    /// HTTP/2 (every plain-HTTP one) pays a load per request, nothing more.
    started: AtomicBool,
    /// The next connection's number.
    opened: AtomicU64,
    /// Per thread: each tenant's open connection, least recently used first.
    per_thread: thread_local::ThreadLocal<RefCell<Vec<(Tenant, Conn)>>>,
}

impl std::fmt::Debug for Http2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2").field("started", &self.started).finish_non_exhaustive()
    }
}

impl Http2 {
    /// This thread's open connection for `tenant`, if there is one (never one for no
    /// tenant).
    pub fn sender(&self, tenant: Option<Tenant>) -> Option<Conn> {
        if !self.started.load(Ordering::Relaxed) {
            return None;
        }
        let tenant = tenant?;
        let mut held = self.per_thread.get()?.try_borrow_mut().ok()?;
        let at = held.iter().position(|(t, _)| *t == tenant)?;
        let entry = held.remove(at);
        if entry.1.sender.is_closed() {
            return None;
        }
        let conn = entry.1.clone();
        held.push(entry);
        Some(conn)
    }

    /// Lets `conn` go if it is this thread's connection for `tenant` (its streams go
    /// on): the tenant's next request opens another.
    pub fn retire(&self, tenant: Option<Tenant>, conn: &Conn) {
        if let (Some(tenant), Some(Ok(mut held))) = (tenant, self.per_thread.get().map(RefCell::try_borrow_mut)) {
            held.retain(|(t, kept)| *t != tenant || kept.id != conn.id);
        }
    }

    /// Starts HTTP/2 on a connection whose ALPN chose it and returns a sender for it,
    /// kept as this thread's connection for `tenant` unless another request of the
    /// tenant's has opened one meanwhile (then, as for no tenant, this one serves its
    /// request and ends after it). The connection runs on a task of its own until it
    /// ends.
    pub async fn start(&self, tls: Box<TlsStream<Records>>, tenant: Option<Tenant>) -> Result<Conn, hyper::Error> {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let conn = Conn { id: self.opened.fetch_add(1, Ordering::Relaxed), sender };
        if let (Some(tenant), Ok(mut held)) = (tenant, self.per_thread.get_or_default().try_borrow_mut()) {
            held.retain(|(_, kept)| !kept.sender.is_closed());
            if !held.iter().any(|(t, _)| *t == tenant) {
                if held.len() >= PER_THREAD {
                    held.remove(0);
                }
                held.push((tenant, conn.clone()));
                self.started.store(true, Ordering::Relaxed);
            }
        }
        Ok(conn)
    }
}

/// Whether a stream's failure says the backend did not process it (RFC 9113 section
/// 8.7): its GOAWAY left the stream out, or it refused the stream (`REFUSED_STREAM`).
pub fn unprocessed(e: &hyper::Error) -> bool {
    let h2 = std::error::Error::source(e).and_then(|cause| cause.downcast_ref::<::h2::Error>());
    h2.is_some_and(|h2| (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(::h2::Reason::REFUSED_STREAM))
}

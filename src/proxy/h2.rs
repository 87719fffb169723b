//! The HTTP/2 connection to an https backend that chose HTTP/2 through ALPN, on a
//! connection the direct path opened (which offers `h2` and `http/1.1`): one per
//! thread, shared by that thread's requests, since its streams are multiplexed and
//! none can carry another request's answer. Per thread as the direct path's idle lists
//! are: `stackgate run` serves each client connection on one thread, and the
//! connection's task runs on the runtime that started it. HTTP/2 is spoken only where
//! ALPN agreed on it (RFC 9113 section 3.2); when the connection ends, the next request
//! opens a new one, and what its ALPN says decides again (a backend may switch).

use super::H2Body;
use crate::http1::client::Records;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_rustls::client::TlsStream;

/// A handle for sending requests on a thread's connection.
pub type Sender = http2::SendRequest<H2Body>;

/// How often an idle or busy connection is pinged, and how long a ping may go
/// unanswered before the connection is closed: a backend that vanished without a reset
/// (a dropped NAT mapping, a host gone) would otherwise hold every request until TCP
/// gives up, minutes later.
const PING_EVERY: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 connections of one upstream, one per thread.
#[derive(Default)]
pub struct Http2 {
    /// Whether any thread ever started one, so that an upstream that never chose
    /// HTTP/2 (every plain-HTTP one) pays a load per request, nothing more.
    started: AtomicBool,
    per_thread: thread_local::ThreadLocal<RefCell<Option<Sender>>>,
}

impl std::fmt::Debug for Http2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2").field("started", &self.started).finish_non_exhaustive()
    }
}

impl Http2 {
    /// This thread's open connection, if there is one.
    pub fn sender(&self) -> Option<Sender> {
        if !self.started.load(Ordering::Relaxed) {
            return None;
        }
        let mut held = self.per_thread.get()?.try_borrow_mut().ok()?;
        match held.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            _ => held.take().and(None),
        }
    }

    /// Lets this thread's connection go (its streams go on): the next request opens
    /// another.
    pub fn retire(&self) {
        if let Some(Ok(mut held)) = self.per_thread.get().map(RefCell::try_borrow_mut) {
            *held = None;
        }
    }

    /// Starts HTTP/2 on a connection whose ALPN chose it and returns a sender for it,
    /// kept as this thread's connection unless another request of this thread has
    /// opened one meanwhile (then this one serves its request and ends after it).
    /// The connection runs on a task of its own until it ends.
    pub async fn start(&self, tls: Box<TlsStream<Records>>) -> Result<Sender, hyper::Error> {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        if let Ok(mut held) = self.per_thread.get_or_default().try_borrow_mut() {
            if held.as_ref().is_none_or(Sender::is_closed) {
                *held = Some(sender.clone());
                self.started.store(true, Ordering::Relaxed);
            }
        }
        Ok(sender)
    }
}

/// Whether a stream's failure says the backend did not process it (RFC 9113 section
/// 8.7): its GOAWAY left the stream out, or it refused the stream (`REFUSED_STREAM`).
pub fn unprocessed(e: &hyper::Error) -> bool {
    let h2 = std::error::Error::source(e).and_then(|cause| cause.downcast_ref::<::h2::Error>());
    h2.is_some_and(|h2| (h2.is_go_away() && h2.is_remote()) || h2.reason() == Some(::h2::Reason::REFUSED_STREAM))
}

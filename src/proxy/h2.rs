//! The HTTP/2 connection to an https backend that chose HTTP/2 through ALPN, on a
//! connection the direct path opened (which offers `h2` and `http/1.1`): one, shared
//! by every request, since its streams are multiplexed and none can carry another
//! request's answer. HTTP/2 is spoken only where ALPN agreed on it (RFC 9113 section
//! 3.2); when the connection ends, the next request opens a new one, and what its ALPN
//! says decides again (a backend may switch).

use super::PooledBody;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A handle for sending requests on the shared connection.
pub type Sender = http2::SendRequest<PooledBody>;

/// The shared HTTP/2 connection of one upstream, if one is open.
#[derive(Debug, Default)]
pub struct Http2 {
    /// Whether `sender` holds one, so that an upstream that never chose HTTP/2 (every
    /// plain-HTTP one) pays a load per request, not a lock.
    open: AtomicBool,
    sender: Mutex<Option<Sender>>,
}

impl Http2 {
    /// The open connection's sender, if there is one.
    pub fn sender(&self) -> Option<Sender> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let mut held = self.sender.lock().ok()?;
        match held.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            _ => {
                *held = None;
                self.open.store(false, Ordering::Release);
                None
            }
        }
    }

    /// Starts HTTP/2 on a connection whose ALPN chose it, shares it, and returns its
    /// sender. The connection runs on a task of its own until it ends.
    pub async fn start(&self, tls: Box<TlsStream<TcpStream>>) -> Result<Sender, hyper::Error> {
        let (sender, conn) =
            http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        if let Ok(mut held) = self.sender.lock() {
            *held = Some(sender.clone());
            self.open.store(true, Ordering::Release);
        }
        Ok(sender)
    }
}

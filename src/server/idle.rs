//! An I/O wrapper that fails a connection once it has made no progress for the idle
//! timeout while the server is waiting on it (slow-loris bodies, idle HTTP/2).
//!
//! Progress only records a timestamp; the timer is re-armed lazily when it fires early,
//! so the cost per read or write is one clock read, not a timer-wheel update (resetting
//! a `Sleep` on every I/O call cost about a third of the gateway's throughput).

use crate::timer::{self, Timer};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

pub struct IdleIo<T> {
    inner: T,
    timeout: Duration,
    last_progress: Instant,
    sleep: Timer,
    /// Whether a read waiting this long fails too (see [`IdleIo::time_writes_only`]).
    time_reads: bool,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        let now = Instant::now();
        IdleIo { inner, timeout, last_progress: now, sleep: timer::new(now + timeout), time_reads: true }
    }

    /// Leaves waiting reads to the protocol above: on a connection hyper serves, the wait
    /// for a head is hyper's `header_read_timeout`, the wait for a body the request's own
    /// 408, and an idle HTTP/2 connection is closed with a GOAWAY (`super::streams`). A
    /// read timing out here would cut those short, at the same moment and without a
    /// GOAWAY. Writes stay timed: a client that reads nothing is still cut off.
    pub fn time_writes_only(&mut self) {
        self.time_reads = false;
    }

    fn touch(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Whether the idle timeout has passed since the last progress; registers for a
    /// wake-up otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_progress + self.timeout;
        timer::poll_expired(&mut self.sleep, cx, deadline).is_ready()
    }
}

impl<T> IdleIo<T> {
    /// Records progress after a write, or times out a write that has been stuck too long.
    fn after_write(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                self.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.time_reads && self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

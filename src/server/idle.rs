//! An I/O wrapper that fails a connection once it has made no progress for the idle
//! timeout while the server is waiting on it (slow-loris bodies, idle HTTP/2).
//!
//! Progress only records a timestamp; the timer is re-armed lazily when it fires early,
//! so the cost per read or write is one clock read, not a timer-wheel update (resetting
//! a `Sleep` on every I/O call cost about a third of the gateway's throughput).

use crate::proxy::UpstreamSlot;
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
    /// Told whether each read brought bytes or waits (see [`IdleIo::report_reads_to`]).
    reads: Option<UpstreamSlot>,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        let now = Instant::now();
        IdleIo { inner, timeout, last_progress: now, sleep: timer::new(now + timeout), time_reads: true, reads: None }
    }

    /// Tells `slot` (the connection's upstream slot) whether each read brought bytes or
    /// waits, which shows it when the reactor has looked at the sockets since its
    /// connection was put back ([`UpstreamSlot::client_read`]). Only on a
    /// current-thread runtime: a multi-thread one may run a task it woke while it is
    /// still handling the rest of its look.
    pub fn report_reads_to(&mut self, slot: &UpstreamSlot) {
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        if flavor == tokio::runtime::RuntimeFlavor::CurrentThread {
            self.reads = Some(slot.clone());
        }
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
                    if let Some(slot) = &self.reads {
                        slot.client_read(true);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.time_reads && self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => {
                // With its budget spent a task's read is refused before the socket is
                // looked at, and the task may run again before the reactor looks: only
                // a read refused for want of bytes waits for the reactor.
                if let Some(slot) = self.reads.as_ref().filter(|_| tokio::task::coop::has_budget_remaining()) {
                    slot.client_read(false);
                }
                Poll::Pending
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// On a current-thread runtime the client connection's reads tell its upstream
    /// slot when the reactor has looked: a read that waited, then brought bytes.
    /// A client connection over loopback, and the client's end.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (listener.accept().await.unwrap().0, far)
    }

    #[tokio::test]
    async fn reads_that_wait_then_bring_bytes_tell_the_slot() {
        let (near, mut far) = pair().await;
        let mut io = IdleIo::new(near, Duration::from_secs(5));
        let slot = UpstreamSlot::default();
        io.report_reads_to(&slot);
        far.write_all(b"GET").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        assert!(!slot.looked(), "bytes already there: no wait");

        let read = tokio::spawn(async move { io.read(&mut [0u8; 16]).await.unwrap() });
        tokio::task::yield_now().await;
        assert!(!slot.looked(), "waiting");
        far.write_all(b"x").await.unwrap();
        assert_eq!(read.await.unwrap(), 1);
        assert!(slot.looked());
    }

    /// A read refused because the task's budget is spent has not waited for the
    /// reactor (the task may run again before it looks): it tells the slot nothing.
    #[tokio::test]
    async fn a_read_refused_for_its_budget_has_not_waited() {
        let (near, mut far) = pair().await;
        let mut io = IdleIo::new(near, Duration::from_secs(5));
        let slot = UpstreamSlot::default();
        io.report_reads_to(&slot);
        far.write_all(&[b'x'; 1000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // One byte at a time within one poll, until the budget (128) runs out.
        let refused = std::future::poll_fn(|cx| {
            for _ in 0..1000 {
                let mut byte = [0u8; 1];
                match Pin::new(&mut io).poll_read(cx, &mut ReadBuf::new(&mut byte)) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => return Poll::Ready(true),
                }
            }
            Poll::Ready(false)
        })
        .await;
        assert!(refused, "the budget ran out before the bytes");
        assert_eq!(io.read(&mut [0u8; 1]).await.unwrap(), 1);
        assert!(!slot.looked());
    }

    /// Not on a multi-thread runtime, which may run a task it woke while still
    /// handling the rest of its look at the sockets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_on_a_multi_thread_runtime_tell_no_slot() {
        let (near, mut far) = pair().await;
        let mut io = IdleIo::new(near, Duration::from_secs(5));
        let slot = UpstreamSlot::default();
        io.report_reads_to(&slot);
        let read = tokio::spawn(async move { io.read(&mut [0u8; 16]).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        far.write_all(b"x").await.unwrap();
        assert_eq!(read.await.unwrap(), 1);
        assert!(!slot.looked());
    }
}

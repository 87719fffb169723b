//! What an upstream connection runs over: TCP, or TLS over TCP for an https upstream.
//! One enum rather than a type parameter: a connection changes hands through the slot,
//! the idle list and the response body, and all of them stay one type.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// An upstream connection's transport.
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: rustls's connection state is a few kilobytes, the plain path's is a socket.
    Tls(Box<TlsStream<TcpStream>>),
}

/// What an idle connection holds, as far as the next request is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Nothing: it can take a request.
    Quiet,
    /// Closed by the backend, or failed.
    Closed,
    /// Bytes of a response no request asked for.
    Stray,
}

impl Transport {
    /// Asks the connection itself, without blocking, what it holds while idle: the
    /// socket (`recv` with `MSG_PEEK`: tokio's sockets are non-blocking), not the
    /// reactor's cached readiness, which is cleared once a response has been read and
    /// misses what came after. Over TLS, TLS is asked first: a `close_notify` that came
    /// in the same read as the last response has already been taken from the socket
    /// (an outside probe had the next request written into a closed session: 502), and
    /// data it holds is a stray. Then what arrived since is read through TLS: data is a
    /// stray, the backend's `close_notify` a close, and anything else (a record that is
    /// no data, or part of a record, which cannot be told apart from outside rustls)
    /// is not trusted either: the connection is not reused.
    pub fn idle(&mut self) -> Idle {
        let tls = match self {
            Transport::Plain(tcp) => return peek(tcp),
            Transport::Tls(tls) => tls,
        };
        match tls.get_mut().1.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() > 0 => return Idle::Stray,
            Ok(state) if !state.peer_has_closed() => {}
            Ok(_) | Err(_) => return Idle::Closed,
        }
        if peek(tls.get_ref().0) == Idle::Quiet {
            return Idle::Quiet;
        }
        let mut one = [0u8; 1];
        let mut buf = ReadBuf::new(&mut one);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut **tls).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => Idle::Stray,
            Poll::Ready(_) | Poll::Pending => Idle::Closed,
        }
    }

    /// Both halves at once, for writing a body while watching for an early answer.
    pub fn split(&mut self) -> (impl AsyncRead + Unpin + '_, impl AsyncWrite + Unpin + '_) {
        use tokio_util::either::Either;
        match self {
            Transport::Plain(tcp) => {
                let (read, write) = tcp.split();
                (Either::Left(read), Either::Left(write))
            }
            Transport::Tls(tls) => {
                let (read, write) = tokio::io::split(&mut **tls);
                (Either::Right(read), Either::Right(write))
            }
        }
    }
}

impl Drop for Transport {
    /// A TLS connection ends with the backend told (`close_notify`, RFC 8446 section
    /// 6.1), as far as the socket takes it now: a backend that sees the connection end
    /// without it may log a truncation attack, or take the end of a close-delimited
    /// request as an error.
    fn drop(&mut self) {
        if let Transport::Tls(tls) = self {
            let (tcp, conn) = tls.get_mut();
            conn.send_close_notify();
            let _ = conn.write_tls(&mut NowOrNever(tcp));
        }
    }
}

/// Writes what the socket takes without waiting.
struct NowOrNever<'a>(&'a TcpStream);

impl io::Write for NowOrNever<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn peek(tcp: &TcpStream) -> Idle {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(tcp).peek(&mut probe) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Idle::Quiet,
        Ok(0) | Err(_) => Idle::Closed,
        Ok(_) => Idle::Stray,
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(tcp) => tcp.is_write_vectored(),
            Transport::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

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
    Tls(Box<TlsStream<Records>>),
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
    /// misses what came after. Over TLS, rustls is fed what the socket holds, read the
    /// same way, until the socket has no more: data is a stray; the backend's
    /// `close_notify` (which may have come with the last answer, as an outside probe
    /// showed: the next request was written into the closed session) or the end of the
    /// connection is a close; part of a record after the answer (its rest may be on its
    /// way, and data) counts as a stray too. Whole records that are no data (a session
    /// ticket, a key update) leave it quiet.
    pub fn idle(&mut self) -> Idle {
        let tls = match self {
            Transport::Plain(tcp) => return peek(tcp),
            Transport::Tls(tls) => tls,
        };
        let (records, conn) = tls.get_mut();
        loop {
            match conn.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 => return Idle::Stray,
                Ok(state) if state.peer_has_closed() => return Idle::Closed,
                Ok(_) if records.mid_record() => return Idle::Stray,
                Ok(_) => {}
                Err(_) => return Idle::Closed,
            }
            match conn.read_tls(&mut ReadNow(records)) {
                Ok(0) => return Idle::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Idle::Quiet,
                Err(_) => return Idle::Closed,
            }
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
    /// A TLS connection that has nothing left to send ends with the backend told
    /// (`close_notify`, RFC 8446 section 6.1), as far as the socket takes it now: a
    /// backend that sees the connection end without it may log a truncation attack.
    /// One with bytes still waiting in TLS (a request cut off by a timeout) is closed
    /// without them: sent now, they could complete a request whose client was already
    /// answered otherwise.
    fn drop(&mut self) {
        if let Transport::Tls(tls) = self {
            let (records, conn) = tls.get_mut();
            if !conn.wants_write() {
                conn.send_close_notify();
                let _ = conn.write_tls(&mut WriteNow(&records.tcp));
            }
        }
    }
}

/// Writes what the socket takes without waiting.
struct WriteNow<'a>(&'a TcpStream);

impl io::Write for WriteNow<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads what the socket holds now, from the socket itself (not through the reactor's
/// cached readiness), keeping track of record boundaries.
struct ReadNow<'a>(&'a mut Records);

impl io::Read for ReadNow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let socket = socket2::SockRef::from(&self.0.tcp);
        let n = io::Read::read(&mut &*socket, buf)?;
        self.0.track(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// A TLS connection's TCP stream, keeping track of where TLS records begin and end in
/// what it has read (RFC 8446 section 5.1: a 5-byte header whose last two bytes are the
/// length), so that an idle connection holding part of a record is known: rustls keeps
/// a part to itself and says nothing of it.
pub struct Records {
    tcp: TcpStream,
    /// Header bytes of the next record seen so far (0 to 4).
    header: [u8; 5],
    have: usize,
    /// Bytes of the current record's body still to come.
    left: usize,
}

impl Records {
    pub fn new(tcp: TcpStream) -> Records {
        Records { tcp, header: [0; 5], have: 0, left: 0 }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether what was read ends inside a record.
    fn mid_record(&self) -> bool {
        self.have > 0 || self.left > 0
    }

    fn track(&mut self, mut read: &[u8]) {
        while !read.is_empty() {
            if self.left > 0 {
                let body = self.left.min(read.len());
                self.left -= body;
                read = read.get(body..).unwrap_or_default();
                continue;
            }
            let Some((&byte, rest)) = read.split_first() else { break };
            if let Some(slot) = self.header.get_mut(self.have) {
                *slot = byte;
            }
            self.have += 1;
            read = rest;
            if self.have == 5 {
                self.left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.have = 0;
            }
        }
    }
}

impl AsyncRead for Records {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let filled = buf.filled();
            this.track(filled.get(before..).unwrap_or_default());
        }
        polled
    }
}

impl AsyncWrite for Records {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
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

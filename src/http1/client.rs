//! The gateway's HTTP/1.1 client connection (as Pingora keeps its own HTTP/1
//! framing): the request is written and the response head read inline, in the
//! calling task, with no connection task, dispatch channel or per-request hand-off.
//!
//! Framing follows RFC 9112 and refuses what it cannot frame exactly: the request
//! always carries the client's own `Content-Length` or chunked encoding (never a
//! caller's), and a response is delimited by (in this order) the request method and
//! status, `Transfer-Encoding: chunked`, one consistent `Content-Length`, or the end of
//! the connection. A connection goes back for reuse only after a response read to its
//! exact end; anything else (an error, a body the caller stopped reading, `Connection:
//! close`, a close-delimited body, HTTP/1.0) closes it.
//!
//! The caller chooses the request's fields ([`RequestHead::fields`]); this module adds
//! only `Host` and the framing.

use super::body::{decode_chunk, write_body, Chunk, Decoded, WriteError};
pub use super::response::{framing, parse_head, Fields, Framing, Head, MAX_HEAD};

use super::common::{put_field, put_length, COALESCE};
use crate::timer::{self, Stalled, Timer, Waiting, Watched};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
pub use transport::{Idle, Records, Transport};

mod transport;

/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;

/// The most one read of a response body asks for. A body of known length is read in
/// pieces of up to this size, others in pieces that double from [`READ_CHUNK`] while
/// each read fills what it asked for: a large body moves in a few system calls each
/// way, and a trickle of small chunks still allocates small buffers. A connection's
/// buffer goes back to [`READ_CHUNK`] when the body ends (see [`Reader::finish`]), so
/// idle connections do not keep it.
const BODY_READ: usize = 64 * 1024;

/// A connection's backend sent bytes no request asked for: the connection is closed,
/// and its pool is told (see `proxy::direct`, which stops reusing the connections of
/// that connection's tenant for a while).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stray;

/// Upstream connections closed instead of reused because the backend sent bytes no
/// request asked for (exported as a metric).
pub static STRAY_DISCARDS: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// One upstream connection and its buffers, reused request after request.
pub struct Conn {
    io: Transport,
    read: BytesMut,
    write: Vec<u8>,
    /// Where response fields are kept (see [`Fields`]).
    fields: BytesMut,
    /// Bounds the wait for each response head (see [`crate::timer`]).
    timer: Option<Timer>,
    /// Response fields the caller replaces with its own ([`Fields::has_replaced`]).
    replaced: fn(&[u8]) -> bool,
    /// Body data decoded with the head ([`ResponseBody::new`]), yielded first.
    pending: Option<Bytes>,
}

/// A request head as the caller has chosen it.
pub struct RequestHead<'a, F> {
    pub method: &'a Method,
    /// The target in origin form (`/path?query`).
    pub target: &'a str,
    pub host: &'a HeaderValue,
    /// The fields to send, in order, without `Host` and without framing fields
    /// (called again if the request goes again on another connection).
    pub fields: F,
    /// The client declared a `Content-Length`: a request without a body still
    /// states `Content-Length: 0`.
    pub declared_length: bool,
    /// The connection serves this request only: `Connection: close` tells the backend
    /// it will not be reused.
    pub close: bool,
}

/// What the request's body is, as far as writing it goes.
pub enum Outgoing<'a, B> {
    /// Held in full (buffered for inspection, or empty): can be sent again.
    Bytes(&'a Bytes),
    /// Streamed from the client; its length when the client declared one.
    Stream(&'a mut B, Option<u64>),
}

/// How long an exchange waits for each side (see [`Conn::exchange`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `[upstream] request_timeout`.
    pub backend: std::time::Duration,
    /// `[server] idle_timeout`.
    pub client: std::time::Duration,
}

/// Why an exchange failed.
#[derive(Debug, Clone, Copy)]
pub enum SendError {
    /// Not one byte of the request was written: it can go again on another connection,
    /// whatever its method, since the backend cannot have seen it.
    Unsent,
    /// The connection ended before a byte of the response arrived.
    Closed,
    /// The client's body failed while being forwarded.
    Body,
    /// The backend broke the protocol or the connection.
    Protocol,
    /// The backend took longer than its limit to take the request or to answer.
    TimedOut,
    /// The client took longer than its limit to send the next part of its body.
    ClientStalled,
}

impl From<io::Error> for SendError {
    fn from(_: io::Error) -> Self {
        SendError::Protocol
    }
}

/// A response head, its fields, how its body is framed, and whether the connection
/// can be reused after it.
pub type Exchanged = (Response<()>, Fields, Option<Framing>, bool);

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// No body and no `Content-Length` (a GET, say).
    Nothing,
    Length(u64),
    Chunked,
}

impl Conn {
    /// A connection over `io`, opened by the caller (with TCP_NODELAY: heads and
    /// bodies are written whole). Boxed: a connection changes hands on every request
    /// (slot, exchange, body, back to the slot), and a pointer is cheaper to move than
    /// its buffers' handles. `replaced` names the response fields the caller sets itself.
    pub fn new(io: Transport, replaced: fn(&[u8]) -> bool) -> Box<Conn> {
        Box::new(Conn {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            fields: BytesMut::with_capacity(1024),
            timer: None,
            replaced,
            pending: None,
        })
    }

    /// Whether an idle connection can take a request: its previous response was read
    /// to its exact end (nothing left in the buffer) and the connection has nothing
    /// pending ([`Transport::idle`]). An idle connection has nothing to say; bytes
    /// waiting on it are either the backend's close or data no request asked for,
    /// which the next request would read as its answer. `Ok(false)` when the backend
    /// closed it (or it failed), `Err(Stray)` when it sent bytes.
    pub fn is_reusable(&mut self) -> Result<bool, Stray> {
        let idle = if self.read.is_empty() { self.io.idle() } else { Idle::Stray };
        match idle {
            Idle::Quiet => Ok(true),
            // Closed by the backend or failed: nothing to count.
            Idle::Closed => Ok(false),
            Idle::Stray => {
                STRAY_DISCARDS.inc();
                Err(Stray)
            }
        }
    }

    /// Hands a connection whose response has just been read to its end back for
    /// reuse, unless the read brought bytes past that end: no request asked for them,
    /// so the connection is closed and counted as a stray discard.
    fn release_if_clean(self: Box<Self>, release: impl FnOnce(Result<Box<Conn>, Stray>)) {
        if self.read.is_empty() {
            release(Ok(self));
        } else {
            STRAY_DISCARDS.inc();
            release(Err(Stray));
        }
    }

    /// Writes the request and reads the response head. The backend has `limits.backend`
    /// (from `start`) to take each part of the request and then to answer once it has
    /// all of it; the client has `limits.client` to send each part of its body. On success the
    /// connection is positioned at the start of the response body, framed as returned.
    pub async fn exchange<'a, F, I, B>(
        &mut self,
        head: &RequestHead<'a, F>,
        body: Outgoing<'_, B>,
        limits: Limits,
        start: Instant,
    ) -> Result<Exchanged, SendError>
    where
        F: Fn() -> I,
        I: Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        let waiting = Waiting::new(start);
        let mut timer = self.timer.take().unwrap_or_else(|| timer::new(start + limits.backend));
        let result = tokio::select! {
            biased;
            result = self.talk(head, body, &waiting) => result,
            who = std::future::poll_fn(|cx| waiting.poll_stalled(&mut timer, cx, limits.backend, limits.client)) => {
                Err(match who {
                    Stalled::Backend => SendError::TimedOut,
                    Stalled::Client => SendError::ClientStalled,
                })
            }
        };
        self.timer = Some(timer);
        result
    }

    async fn talk<'a, F, I, B>(
        &mut self,
        request: &RequestHead<'a, F>,
        body: Outgoing<'_, B>,
        waiting: &Waiting,
    ) -> Result<Exchanged, SendError>
    where
        F: Fn() -> I,
        I: Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        // A backend may answer before it has taken the whole body (a 413, a 401) and
        // close the connection, failing the rest of the write: its answer, if one
        // arrived, is what the client needs, not a 502.
        let streamed = matches!(body, Outgoing::Stream(..));
        let carried = streamed || matches!(body, Outgoing::Bytes(bytes) if !bytes.is_empty());
        let written = match self.write_request(request, body, waiting).await {
            Written::Early(head) => return self.answer(request.method, head, Reuse::Never),
            Written::Whole(written) => written,
        };
        if streamed {
            // The whole request is the backend's now: its time to answer starts.
            waiting.on_backend();
        }
        let failed = match written {
            Ok(()) => None,
            // Whatever the connection holds is no answer to a request it never got.
            Err(e @ (SendError::Body | SendError::Unsent)) => return Err(e),
            Err(e) => Some(e),
        };
        let head = match final_head(&mut self.io, &mut self.read, &mut self.fields, self.replaced).await {
            Ok(head) => head,
            Err(e) => return Err(failed.unwrap_or(e)),
        };
        let reuse = match (failed, carried) {
            (Some(_), _) => Reuse::Never,
            (None, true) => Reuse::UnlessRefused,
            (None, false) => Reuse::Framed,
        };
        self.answer(request.method, head, reuse)
    }

    /// The response a final head starts, and whether the connection can take another
    /// request after it. The response is the gateway's, in its own version (RFC 9110
    /// section 6.2): an HTTP/1.0 backend's answer reaches an HTTP/1.1 client as HTTP/1.1
    /// (hyper writes the version it is given, and closes after an HTTP/1.0 one).
    #[inline]
    fn answer(&mut self, method: &Method, mut head: Head, reuse: Reuse) -> Result<Exchanged, SendError> {
        self.read.advance(head.len);
        let framing = framing(method, &head).ok_or(SendError::Protocol)?;
        *head.resp.version_mut() = Version::HTTP_11;
        let status = head.resp.status();
        let refused = status.is_client_error() || status.is_server_error();
        let keep = framing != Some(Framing::Close)
            && !head.close
            && match reuse {
                Reuse::Framed => true,
                Reuse::UnlessRefused => !refused,
                Reuse::Never => false,
            };
        Ok((head.resp, head.fields, framing, keep))
    }

    /// Writes the request. A streamed body is written while the connection is watched
    /// for the backend's answer: a backend may answer before it has read the whole body
    /// (a 413, a 401) and then read no more while keeping the connection open. Its
    /// answer is then what the client gets (RFC 9112 section 9.3: a client sending a
    /// body watches for an error response and stops), and the rest of the body is not
    /// sent; the connection is not reused.
    async fn write_request<'a, F, I, B>(
        &mut self,
        head: &RequestHead<'a, F>,
        body: Outgoing<'_, B>,
        waiting: &Waiting,
    ) -> Written
    where
        F: Fn() -> I,
        I: Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
        B: hyper::body::Body<Data = Bytes> + Unpin,
    {
        self.write.clear();
        match body {
            Outgoing::Bytes(bytes) => {
                let declared = !bytes.is_empty() || head.declared_length || carries_body(head.method);
                let sending = if declared { Sending::Length(bytes.len() as u64) } else { Sending::Nothing };
                write_head(&mut self.write, head, sending);
                let written = if bytes.len() <= COALESCE {
                    self.write.extend_from_slice(bytes);
                    self.write_first().await
                } else {
                    match self.write_first().await {
                        Ok(()) => self.io.write_all(bytes).await.map_err(|_| SendError::Closed),
                        Err(e) => Err(e),
                    }
                };
                // Flushed: a TLS stream keeps what the socket did not take at once.
                Written::Whole(match written {
                    Ok(()) => self.io.flush().await.map_err(|_| SendError::Closed),
                    Err(e) => Err(e),
                })
            }
            Outgoing::Stream(stream, length) => {
                write_head(&mut self.write, head, length.map_or(Sending::Chunked, Sending::Length));
                let mut stream = Watched::new(stream, waiting);
                let Conn { io, read, write, fields, replaced, .. } = self;
                let (mut reader, mut writer) = io.split();
                let early = async {
                    match final_head(&mut reader, read, fields, *replaced).await {
                        Ok(head) => head,
                        // Not an answer: the write goes on (and fails if the connection has).
                        Err(_) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    written = write_body(&mut writer, write, &mut stream, length.is_none()) => Written::Whole(match written {
                        Ok(_) => Ok(()),
                        Err(WriteError::Source | WriteError::Unstarted) => Err(SendError::Body),
                        Err(WriteError::Io) => Err(SendError::Protocol),
                    }),
                    head = early => Written::Early(head),
                }
            }
        }
    }

    /// Writes the buffered head (and what came with it), telling apart a connection
    /// that took none of it ([`SendError::Unsent`]) from one that failed midway.
    async fn write_first(&mut self) -> Result<(), SendError> {
        let n = match self.io.write(&self.write).await {
            Ok(0) | Err(_) => return Err(SendError::Unsent),
            Ok(n) => n,
        };
        let rest = self.write.get(n..).unwrap_or_default();
        self.io.write_all(rest).await.map_err(|_| SendError::Closed)
    }

    /// Reads more of the body into the buffer, with room for at least `want` bytes:
    /// the number of bytes read (0 at EOF).
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.read.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// Whether a connection can take another request once its response is read.
#[derive(Debug, Clone, Copy)]
enum Reuse {
    /// As the response's framing allows: the request had no body.
    Framed,
    /// Not after an error answer: the request carried a body, and a backend that
    /// refuses one may do so without reading it (a 401 or 413 after the head). One that
    /// then neither reads nor closes would take the unread body for the next request,
    /// and its answer to that for the next request's answer.
    UnlessRefused,
    /// Never: the backend answered before it had the whole request, or the write failed.
    Never,
}

/// How writing a request ended.
enum Written {
    /// All of it was written, or the write failed.
    Whole(Result<(), SendError>),
    /// The backend answered (a final head) before it had taken the whole body.
    Early(Head),
}

/// Interim responses taken before a final one; a backend sending more is broken.
const MAX_INTERIM: usize = 16;

/// Reads heads until a final one (interim responses, 100 Continue and 103 Early Hints,
/// are not forwarded, at most [`MAX_INTERIM`]), which stays in `read` for the caller to
/// advance past. Cancel-safe: what was read stays in `read`.
async fn final_head<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut BytesMut,
    fields: &mut BytesMut,
    replaced: fn(&[u8]) -> bool,
) -> Result<Head, SendError> {
    for _ in 0..=MAX_INTERIM {
        let head = read_head(io, read, fields, replaced).await?;
        if !head.resp.status().is_informational() {
            return Ok(head);
        }
        if head.resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(SendError::Protocol);
        }
        read.advance(head.len);
    }
    Err(SendError::Protocol)
}

/// Reads until a complete response head is buffered, and parses it.
async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    read: &mut BytesMut,
    fields: &mut BytesMut,
    replaced: fn(&[u8]) -> bool,
) -> Result<Head, SendError> {
    let mut received = !read.is_empty();
    loop {
        if received {
            if let Some(parsed) = parse_head(read, fields, replaced).map_err(|_| SendError::Protocol)? {
                return Ok(parsed);
            }
            if read.len() >= MAX_HEAD {
                return Err(SendError::Protocol);
            }
        }
        read.reserve(READ_CHUNK);
        match io.read_buf(read).await {
            Ok(0) | Err(_) if !received => return Err(SendError::Closed),
            Ok(0) | Err(_) => return Err(SendError::Protocol),
            Ok(_) => received = true,
        }
    }
}

/// The methods whose requests normally carry a body: without one they still state
/// `Content-Length: 0`.
fn carries_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Serialises the request head with the client's own framing.
fn write_head<'a, F, I>(buf: &mut Vec<u8>, head: &RequestHead<'a, F>, sending: Sending)
where
    F: Fn() -> I,
    I: Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
{
    buf.extend_from_slice(head.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(head.target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    put_field(buf, b"host", head.host.as_bytes());
    for (name, value) in (head.fields)() {
        put_field(buf, name.as_str().as_bytes(), value.as_bytes());
    }
    if head.close {
        buf.extend_from_slice(b"connection: close\r\n");
    }
    match sending {
        Sending::Nothing => {}
        Sending::Length(len) => put_length(buf, len),
        Sending::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
}

/// Receives a connection whose response was read to its exact end, for reuse, or
/// [`Stray`] when the read brought bytes past that end.
pub type Release = Box<dyn FnOnce(Result<Box<Conn>, Stray>) + Send>;

/// A response body read from a [`Conn`].
#[derive(Debug)]
pub enum ResponseBody {
    /// No body, or all of it arrived with the head (the usual small response).
    Whole(Option<Bytes>),
    /// The rest of the body is still on the connection.
    Reading(Reader),
}

impl ResponseBody {
    /// The body of the response just read from `conn`. When it is already complete
    /// the connection is released (if reusable) before anyone polls the body.
    /// A backend that sends nothing of the rest for `stall` has failed it (as
    /// `request_timeout` bounds its answer: nginx's `proxy_read_timeout`).
    /// What came of a chunked body with the head is decoded here: a body broken there
    /// fails now (`Err`), while the gateway can still answer 502, rather than after its
    /// writer has sent the backend's status; and a chunked body that came whole is
    /// passed on as one piece of known length.
    pub fn new(
        mut conn: Box<Conn>,
        framing: Option<Framing>,
        keep: bool,
        stall: std::time::Duration,
        release: impl FnOnce(Result<Box<Conn>, Stray>) + Send + 'static,
    ) -> Result<Self, BodyError> {
        let whole = match framing {
            None => None,
            Some(Framing::Length(n)) if conn.read.len() as u64 >= n => Some(conn.read.split_to(n as usize).freeze()),
            Some(Framing::Chunked(Chunk::Size)) if !conn.read.is_empty() => match decode_buffered(&mut conn.read)? {
                (data, None) => data,
                (data, Some(state)) => {
                    conn.pending = data;
                    return Ok(ResponseBody::Reading(Reader::new(conn, Framing::Chunked(state), keep, stall, release)));
                }
            },
            Some(framing) => return Ok(ResponseBody::Reading(Reader::new(conn, framing, keep, stall, release))),
        };
        if keep {
            conn.release_if_clean(release);
        }
        Ok(ResponseBody::Whole(whole))
    }
}

/// Decodes the chunked body data `buf` holds: the data (one piece), and where the
/// decoder stands (`None` at the body's end).
fn decode_buffered(buf: &mut BytesMut) -> Result<(Option<Bytes>, Option<Chunk>), BodyError> {
    // The usual one chunk is passed on as it is; several (a backend that sends many
    // small chunks at once) are joined in one buffer, each copied once.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut state = Chunk::Size;
    let rest = loop {
        match decode_chunk(buf, state).map_err(|()| BodyError)? {
            Decoded::Data(piece, next) => {
                state = next;
                match &first {
                    None => first = Some(piece),
                    Some(one) => {
                        if joined.is_empty() {
                            joined.extend_from_slice(one);
                        }
                        joined.extend_from_slice(&piece);
                    }
                }
            }
            Decoded::Progress(next) => state = next,
            Decoded::End => break None,
            Decoded::NeedMore => break Some(state),
        }
    };
    let data = if joined.is_empty() { first } else { Some(joined.freeze()) };
    Ok((data, rest))
}

/// A body being read from its connection.
pub struct Reader {
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep: bool,
    release: Option<Release>,
    /// How long the backend may send nothing.
    stall: std::time::Duration,
    /// Since when a read has found nothing to take (the clock is read only then).
    waiting_since: Option<Instant>,
    /// What the next read of a body of unknown length asks for (see [`BODY_READ`]).
    next_read: usize,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("framing", &self.framing).finish_non_exhaustive()
    }
}

impl Reader {
    fn new(
        conn: Box<Conn>,
        framing: Framing,
        keep: bool,
        stall: std::time::Duration,
        release: impl FnOnce(Result<Box<Conn>, Stray>) + Send + 'static,
    ) -> Reader {
        let release: Release = Box::new(release);
        Reader {
            conn: Some(conn),
            framing,
            keep,
            release: Some(release),
            stall,
            waiting_since: None,
            next_read: READ_CHUNK,
        }
    }

    /// The body has ended cleanly: release the connection, unless the backend sent
    /// more than the body (which makes the connection unusable).
    fn finish(&mut self) {
        if let (Some(mut conn), Some(release)) = (self.conn.take(), self.release.take()) {
            if self.keep {
                if conn.read.capacity() > READ_CHUNK && conn.read.is_empty() {
                    conn.read = BytesMut::with_capacity(READ_CHUNK);
                }
                conn.release_if_clean(release);
            }
        }
    }

    fn fail(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(BodyError)))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(data) = self.conn.as_mut().and_then(|conn| conn.pending.take()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            match self.framing {
                Framing::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(remaining) if !conn.read.is_empty() => {
                    let n = remaining.min(conn.read.len() as u64);
                    let data = conn.read.split_to(n as usize).freeze();
                    self.framing = Framing::Length(remaining - n);
                    if remaining == n {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !conn.read.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(conn.read.split().freeze()))));
                }
                Framing::Chunked(state) => match decode_chunk(&mut conn.read, state) {
                    Ok(Decoded::Data(data, next)) => {
                        self.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Decoded::Progress(next)) => {
                        self.framing = Framing::Chunked(next);
                        continue;
                    }
                    Ok(Decoded::End) => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(()) => return self.fail(),
                },
                Framing::Length(_) | Framing::Close => {}
            }
            let want = match self.framing {
                Framing::Length(remaining) => remaining.clamp(READ_CHUNK as u64, BODY_READ as u64) as usize,
                _ => self.next_read,
            };
            let filled = match conn.poll_fill(cx, want) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    let deadline = *self.waiting_since.get_or_insert_with(Instant::now) + self.stall;
                    let timer = conn.timer.get_or_insert_with(|| timer::new(deadline));
                    return match timer::poll_deadline(timer, cx, deadline) {
                        Poll::Ready(()) => self.fail(),
                        Poll::Pending => Poll::Pending,
                    };
                }
            };
            self.waiting_since = None;
            match filled {
                Ok(0) if self.framing == Framing::Close => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) | Err(_) => return self.fail(),
                Ok(n) if n >= want => self.next_read = (want * 2).min(BODY_READ),
                Ok(_) => {}
            }
        }
    }
}

/// The backend's response body broke off or was malformed.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body failed")]
pub struct BodyError;

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Whole(whole) => Poll::Ready(whole.take().map(|data| Ok(Frame::data(data)))),
            ResponseBody::Reading(reader) => reader.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Whole(whole) => whole.is_none(),
            ResponseBody::Reading(reader) => reader.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Whole(whole) => SizeHint::with_exact(whole.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Reading(Reader { conn: Some(_), framing: Framing::Length(n), .. }) => {
                SizeHint::with_exact(*n)
            }
            ResponseBody::Reading(Reader { conn: None, .. }) => SizeHint::with_exact(0),
            ResponseBody::Reading(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;

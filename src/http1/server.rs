//! The gateway's own HTTP/1.1 server loop for the common request, in front of hyper.
//!
//! Most CMA calls are HTTP/1.1 requests on a keep-alive connection, without a body
//! (GET, HEAD, DELETE) or with a small one of stated length (a JSON entry, a content
//! type: POST, PUT). For those, this loop reads and parses the head (`httparse`, as
//! hyper does), reads a small body whole (see [`read_body`]), calls the service, and
//! writes the response itself: no dispatcher, no per-request timer or buffer
//! hand-offs, and the connection stays here for its next request (HTTP/1.0 too, kept
//! only when it asks for keep-alive). Anything else (a chunked or larger body,
//! `Expect`, `Upgrade`, `CONNECT`, HTTP/2) hands the
//! connection, with the bytes already read, to hyper for the rest of its life, so
//! streamed bodies keep hyper's behaviour. A head no HTTP/1.1 server takes (bad
//! syntax, framing hyper refuses, too large) is answered here through the service's
//! `refuse`, with the gateway's error body, and the connection closes.

use super::client::Fields;
use super::common::{connection_options, date, framed_length, put_field, put_length, put_status, ConnectionOptions};
use crate::field_names::{API_KEY, AUTHTOKEN, BRANCH};
use crate::timer;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Header fields taken in one head; more is answered 431.
const MAX_HEADERS: usize = crate::field_names::MAX_FIELDS;
/// Request targets longer than this are answered 414.
const MAX_URI: usize = 65_534;
/// The largest body (of one `Content-Length`) the loop reads whole before it calls the
/// service, if it also fits with its head in `max_header_bytes`; larger ones are
/// streamed by hyper. Covers the CMA's usual writes (entries, content types: a few KiB
/// of JSON).
pub const MAX_READ_BODY: u64 = 64 * 1024;

/// How the loop ended.
pub enum Outcome {
    /// The connection is finished (closed by either side, timed out, shut down).
    Closed,
    /// A request this loop does not take: hyper serves the connection from here, the
    /// buffered bytes first.
    Handover(BytesMut),
}

/// Limits the loop enforces itself.
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Whether the HTTP/2 preface may start the connection: in cleartext (prior
    /// knowledge), not over TLS, where only ALPN `h2` starts HTTP/2 (RFC 9113, 3.2) and
    /// a TLS connection that agreed on `http/1.1`, or on nothing, speaks HTTP/1.1.
    pub http2_preface: bool,
}

/// Why the loop did not take a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTaken {
    /// A request this loop leaves to hyper (a chunked or large body, an upgrade):
    /// hyper gets the connection.
    ForHyper,
    /// The HTTP/2 connection preface, whole: hyper gets the connection if it starts
    /// with it; later on a connection it is refused.
    Http2,
    /// A head no HTTP/1.1 server takes: the loop answers it (through the service's
    /// `refuse`, so with the gateway's error body) and closes, as hyper would.
    Bad(BadHead),
}

/// What the loop asks the service to answer itself; the connection closes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A head the loop refused.
    Head(BadHead),
    /// The response's body failed before a byte of the response was written (an
    /// upstream's broken chunk coding, say): the client is answered instead of being
    /// left with a closed connection and no status.
    BrokenBody,
}

/// A refused head, as the answer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHead {
    /// Not HTTP/1.1 syntax (request line, a field name or value, line endings): 400.
    Malformed,
    /// Larger than `max_header_bytes`, or more than [`MAX_HEADERS`] fields: 431.
    TooLarge,
    /// A request target longer than [`MAX_URI`]: 414.
    UriTooLong,
    /// A target with a raw `#`: HTTP sends no fragment, and `http` (hyper too) would
    /// drop it and all after it from the path the gateway authorises: 400.
    Fragment,
}

use NotTaken::{Bad, ForHyper, Http2};

/// The first line of the HTTP/2 connection preface (RFC 9113, 3.4), which hyper takes.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A complete head.
pub struct Head {
    pub request: Request<()>,
    /// The client asked to close the connection after this request (an HTTP/1.0
    /// client, by not asking for keep-alive).
    pub close: bool,
    /// An HTTP/1.0 request: answered as HTTP/1.0, without chunked coding.
    pub http10: bool,
    /// The length of the body that follows the head in the buffer (0: none).
    pub body_len: u64,
    /// The head's bytes, which the request's target and fields share: hyper is given
    /// them back if the body is not read here after all (see [`read_body`]).
    raw: Bytes,
}

/// Fields the service adds to every response, kept beside it rather than in its header
/// map: the loop writes them straight into the head (inserting them into the map
/// would hash each name and may grow the map, on every request).
pub trait AddedFields {
    /// Whether a response field is one of these (the response's own copy gives way).
    fn replaces(&self, name: &HeaderName) -> bool;
    /// Each field, in order.
    fn each(&self, f: &mut dyn FnMut(&HeaderName, FieldValue<'_>));
}

/// An added field's value: one already held as a header value (shared: a header map
/// takes it by reference count), or bytes made for this response.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    Shared(&'a HeaderValue),
    Made(&'a [u8]),
}

impl FieldValue<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            FieldValue::Shared(v) => v.as_bytes(),
            FieldValue::Made(b) => b,
        }
    }

    /// Puts the field into a header map: replacing the map's, but `Vary`, which adds
    /// to it (a response varies on everything any of its writers named). A value made
    /// for this response (a count left, a reset time) is marked sensitive: HTTP/2 then
    /// sends it as a never-indexed literal instead of filling the connection's header
    /// compression table with values no later response repeats.
    pub fn insert_into(self, name: &HeaderName, headers: &mut HeaderMap) {
        let value = match self {
            FieldValue::Shared(v) => v.clone(),
            FieldValue::Made(b) => match HeaderValue::from_bytes(b) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    v
                }
                Err(_) => return,
            },
        };
        if *name == http::header::VARY {
            headers.append(name.clone(), value);
        } else {
            headers.insert(name.clone(), value);
        }
    }
}

/// A response body that may still carry its upstream's header fields as a block
/// ([`Fields`]), which the loop copies into the head as they are.
pub trait CarriesFields: hyper::body::Body<Data = Bytes> + Unpin {
    fn take_fields(&mut self) -> Option<Fields>;
}

/// Serves requests until the connection ends or a request needs hyper. `service`
/// answers each request (with its body read whole: empty for none) with its response
/// and the fields to add to it; `refuse` answers what the loop refuses ([`Refusal`];
/// with the failed response's added fields for [`Refusal::BrokenBody`]), after which
/// the connection closes.
pub async fn serve<I, S, Fut, B, A, R>(
    io: &mut I,
    mut service: S,
    mut refuse: R,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<()>, Bytes) -> Fut,
    Fut: Future<Output = (Response<B>, A)>,
    B: CarriesFields,
    A: AddedFields,
    R: FnMut(Refusal, Option<&A>) -> (Response<B>, A),
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(1024);
    let mut fields = Vec::with_capacity(16);
    let mut timer = timer::new(Instant::now() + limits.header_read_timeout);
    // Watched for the whole connection: a `changed()` per request would join and
    // leave the channel's waiter list each time.
    let mut stopping = shutdown.clone();
    let mut stop = std::pin::pin!(stopping.changed());
    let mut joined = false;
    // Whether the HTTP/2 preface may still come: it only starts a connection.
    let mut preface_ok = limits.http2_preface;
    loop {
        let deadline = Instant::now() + limits.header_read_timeout;
        let head = loop {
            if !buf.is_empty() {
                let bad = match parse(&mut buf, &mut fields, limits.max_header_bytes) {
                    Ok(Some(head)) => break head,
                    Err(ForHyper) => return Outcome::Handover(buf),
                    Err(Http2) if preface_ok => return Outcome::Handover(buf),
                    Err(Http2) => Some(BadHead::Malformed),
                    Err(Bad(bad)) => Some(bad),
                    Ok(None) if buf.len() > limits.max_header_bytes => Some(BadHead::TooLarge),
                    Ok(None) => None,
                };
                if let Some(bad) = bad {
                    let (resp, added) = refuse(Refusal::Head(bad), None);
                    let reply = Reply { head_only: asks_for_head(&buf), close: true, http10: false };
                    if write_response(io, &mut out, resp, &added, reply).await == Written::Whole {
                        linger(io, &mut buf).await;
                    }
                    return Outcome::Closed;
                }
            }
            buf.reserve(4096);
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Outcome::Closed,
                    Ok(_) => {}
                },
                () = timer::expired(&mut timer, deadline) => return Outcome::Closed,
                () = stopped(stop.as_mut(), &mut joined, shutdown), if buf.is_empty() => return Outcome::Closed,
            }
        };
        preface_ok = false;
        let body = match head.body_len {
            0 => Bytes::new(),
            n => match read_body(io, &mut buf, n, &head.raw, &mut timer, deadline).await {
                Ok(body) => body,
                Err(ended) => return ended,
            },
        };
        let (req, close, http10) = (head.request, head.close, head.http10);
        let head_only = req.method() == Method::HEAD;
        // Pinned here and lent out: moving the (large) future again would cost a copy.
        let handled = std::pin::pin!(service(req, body));
        let Some((resp, added)) = unless_hung_up(io, &mut buf, handled, limits.max_header_bytes).await else {
            return Outcome::Closed;
        };
        // Shutdown has begun: the answer says the connection ends with it, so the client
        // sends its next request elsewhere instead of into a closing connection. The
        // version, not the value: reading the value takes the channel's lock. Only `true`
        // is ever sent, and this receiver is never marked seen (`stopping` is).
        let close = close || begun(shutdown);
        let done = match write_response(io, &mut out, resp, &added, Reply { head_only, close, http10 }).await {
            Written::Whole => true,
            Written::Ended | Written::Failed => false,
            Written::Unstarted => {
                let (resp, added) = refuse(Refusal::BrokenBody, Some(&added));
                write_response(io, &mut out, resp, &added, Reply { head_only, close: true, http10 }).await;
                false
            }
        };
        if close || !done || begun(shutdown) {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
        // A pipelined request is already here. Its turn comes after the other
        // connections' ready work, as nginx posts a pipelined request rather than
        // serving it at once: the answers this turn go out to the clients together,
        // then the requests to the backend together, each peer woken once for the
        // lot. Served at once, every answer would be followed by a request to the
        // backend, waking the client and the backend by turns, each send a wake-up of
        // its own (docs/benchmarks.md, "pipelined HTTP/1.1 clients").
        if !buf.is_empty() {
            tokio::task::yield_now().await;
        }
    }
}

/// How long the loop waits for the next piece of a body it reads before it leaves the
/// body to hyper: a body sent with its head arrives in back-to-back segments.
const BODY_PAUSE: Duration = Duration::from_millis(100);

/// Reads the `length` bytes of body that follow the head `raw` (some may be buffered
/// already) and takes them from `buf`; bytes after them (a pipelined request) stay.
/// A body is read here as a head is: head and body together within
/// `max_header_bytes` ([`parse`] takes no larger one), under the head's `deadline`, so
/// a connection holds about what a slow head could make it hold, for no longer.
/// A body that pauses for [`BODY_PAUSE`] (or that the connection's idle timeout ends
/// first), or is still incomplete at the deadline, is not refused: hyper gets the
/// connection with the head and everything read so far, and streams the rest under its
/// own limits (a client on a slow link, a body sent after a pause), as it would have
/// if the loop had not taken the head. Its limits then count from the handover: a
/// stalled body's 408 after `idle_timeout`, the token API's after 30 s. A client that
/// leaves before its body's end sent no request: the connection just closes.
async fn read_body<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    length: u64,
    raw: &Bytes,
    timer: &mut timer::Timer,
    deadline: Instant,
) -> Result<Bytes, Outcome> {
    // Room to spare after the body: without it a buffer the body filled exactly would
    // have none left, and `unless_hung_up` could not watch for the client hanging up.
    const SPARE: usize = 1024;
    let Ok(length) = usize::try_from(length) else { return Err(Outcome::Handover(rejoined(raw, buf))) };
    while buf.len() < length {
        // Room for as much again as has come (4 KiB at first), not for what was
        // declared: memory follows what the client sent, as for a head, and a body
        // that comes at once takes a few reads.
        buf.reserve((length - buf.len()).min(buf.len().max(4096)) + SPARE);
        let wait = deadline.min(Instant::now() + BODY_PAUSE);
        let late = tokio::select! {
            biased;
            read = io.read_buf(buf) => match read {
                Ok(0) => return Err(Outcome::Closed),
                Ok(_) => false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => true,
                Err(_) => return Err(Outcome::Closed),
            },
            () = timer::expired(timer, wait) => true,
        };
        if late {
            tracing::debug!(read = buf.len(), length, "a request body paused; hyper serves the connection from here");
            return Err(Outcome::Handover(rejoined(raw, buf)));
        }
    }
    Ok(buf.split_to(length).freeze())
}

/// A head and what followed it, as one buffer again (for hyper).
fn rejoined(head: &Bytes, rest: &BytesMut) -> BytesMut {
    let mut whole = BytesMut::with_capacity(head.len() + rest.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(rest);
    whole
}

/// Ends the sending side after a refusal, then reads what the client still sends
/// (within bounds) before the socket closes: closing with unread bytes makes the
/// kernel reset the connection, and a reset can discard the answer before the client
/// has read it (nginx's lingering close does the same).
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I, buf: &mut BytesMut) {
    const LINGER: Duration = Duration::from_secs(1);
    const MAX_DRAINED: usize = 256 * 1024;
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut drained = 0;
        while drained < MAX_DRAINED {
            buf.clear();
            buf.reserve(16 * 1024);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Whether shutdown has begun (or its sender is gone), from the channel's version.
fn begun(shutdown: &watch::Receiver<bool>) -> bool {
    !matches!(shutdown.has_changed(), Ok(false))
}

/// Completes once shutdown has begun. `changed` is polled only until it has registered
/// this task (polling it takes the channel's waiter lock every time); from then on the
/// task is woken by it, and the channel's version says whether that happened.
fn stopped<'a, F: Future>(
    mut changed: Pin<&'a mut F>,
    joined: &'a mut bool,
    shutdown: &'a watch::Receiver<bool>,
) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| {
        if begun(shutdown) {
            return Poll::Ready(());
        }
        if !*joined {
            if changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            *joined = true;
        }
        Poll::Pending
    })
}

/// Runs the handler while watching the client connection: a client that closes it
/// cancels its request, upstream exchange included (as hyper and nginx do by default),
/// and the bytes of a pipelined next request are kept, up to a head's worth. Watching
/// costs no system call: the reactor says when the socket has something to read.
async fn unless_hung_up<I, F>(
    io: &mut I,
    buf: &mut BytesMut,
    mut handled: Pin<&mut F>,
    max_head: usize,
) -> Option<F::Output>
where
    I: AsyncRead + Unpin,
    F: std::future::Future,
{
    loop {
        // Only into the room already there: growing the buffer now would copy it (the
        // request's header values still share it).
        if buf.len() > max_head || buf.capacity() == buf.len() {
            return Some(handled.await);
        }
        tokio::select! {
            biased;
            resp = &mut handled => return Some(resp),
            read = io.read_buf(buf) => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// Parses a buffered head (`None`: incomplete). Only the HTTP/1.1 head of a request
/// without a body, or with one `Content-Length` of at most [`MAX_READ_BODY`] that fits
/// with the head in `max_head`, is taken (the body is left in `buf`); `fields` is
/// scratch space kept across requests.
pub fn parse(
    buf: &mut BytesMut,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    max_head: usize,
) -> Result<Option<Head>, NotTaken> {
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return refused(buf, e),
    };
    let (Some(version), Some(method), Some(path)) = (req.version, req.method, req.path) else { return Err(ForHyper) };
    if len > max_head {
        return Err(Bad(BadHead::TooLarge));
    }
    if path.len() > MAX_URI {
        return Err(Bad(BadHead::UriTooLong));
    }
    if path.contains('#') {
        return Err(Bad(BadHead::Fragment));
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Err(ForHyper) };
    let base = buf.as_ptr() as usize;
    let path_at = path.as_ptr() as usize - base;
    let (mut options, mut framing, mut hyper) = (ConnectionOptions::default(), Framing::default(), false);
    // hyper reads a `Connection` value with bytes outside visible ASCII as naming
    // nothing: such a field never keeps an HTTP/1.0 connection here either.
    let mut plain_connection = true;
    fields.clear();
    for h in req.headers.iter() {
        let name = header_name(h.name.as_bytes())?;
        match name {
            CONTENT_LENGTH => framing.length(h.value)?,
            // HTTP/1.0 has no transfer codings: hyper refuses them.
            TRANSFER_ENCODING if version == 0 => return Err(Bad(BadHead::Malformed)),
            TRANSFER_ENCODING => framing.encoding(h.value),
            // Only hyper handles these.
            http::header::EXPECT | http::header::UPGRADE => hyper = true,
            CONNECTION => {
                plain_connection &= h.value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
                connection_options(h.value, &mut options, |_| {});
            }
            _ => {}
        }
        fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    let body = framing.read_here()?.filter(|&n| n.saturating_add(len as u64) <= max_head as u64);
    if hyper || options.upgrade || method == Method::CONNECT {
        return handed_over(path);
    }
    let Some(body) = body else { return handed_over(path) };
    let path_len = path.len();
    let head = buf.split_to(len).freeze();
    let http10 = version == 0;
    match build(&head, path_at..path_at + path_len, fields, method, http10) {
        Some(request) => {
            let close = options.close || (http10 && !(options.keep_alive && plain_connection));
            Ok(Some(Head { request, close, http10, body_len: body, raw: head }))
        }
        None => {
            // `http` refused what `httparse` took (a target with `"` or `<`, say),
            // as hyper, which builds its requests with `http` too, would.
            *buf = rejoined(&head, buf);
            Err(Bad(BadHead::Malformed))
        }
    }
}

/// A head hyper is to serve, unless its target is one `http` refuses (`"`, `<`, a
/// backtick): hyper, which builds its requests with `http` too, would answer that with
/// a bare 400; the loop answers it as any other malformed head, with the gateway's
/// error body and request id.
fn handed_over(path: &str) -> Result<Option<Head>, NotTaken> {
    match Uri::try_from(path) {
        Ok(_) => Err(ForHyper),
        Err(_) => Err(Bad(BadHead::Malformed)),
    }
}

/// Whether a refused head asked for `HEAD` (its method as `httparse` reads it: after
/// any empty lines, CRLF or a bare LF, up to the first space). Its answer then carries
/// no content, as every answer to a `HEAD` (RFC 9110, 9.3.2): a client that pipelined a
/// request behind it would read the error body as the start of the next answer.
fn asks_for_head(mut line: &[u8]) -> bool {
    while let [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] = line {
        line = rest;
    }
    line.split(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')).next() == Some(b"HEAD")
}

/// A request's framing fields, read as hyper's server reads them (RFC 9112, 6.3), so
/// that a framing hyper would refuse is refused here, with the gateway's error body,
/// and one it takes is read here (see [`Framing::read_here`]) or by hyper.
#[derive(Default)]
struct Framing {
    /// `Content-Length` fields before any `Transfer-Encoding` (hyper ignores later ones).
    lengths: u32,
    length: Option<u64>,
    /// Whether `Transfer-Encoding` was sent, and whether its last field ends in `chunked`.
    encoded: bool,
    chunked: bool,
}

impl Framing {
    /// One `Content-Length` field: one decimal length (hyper's server takes no list),
    /// equal to any earlier field's.
    fn length(&mut self, value: &[u8]) -> Result<(), NotTaken> {
        if self.encoded {
            return Ok(());
        }
        self.lengths += 1;
        let n = framed_length(value).ok_or(Bad(BadHead::Malformed))?;
        if self.length.is_some_and(|m| m != n) {
            return Err(Bad(BadHead::Malformed));
        }
        self.length = Some(n);
        Ok(())
    }

    /// One `Transfer-Encoding` field; chunked must be the last coding.
    fn encoding(&mut self, value: &[u8]) {
        self.encoded = true;
        let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
        self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
    }

    /// The length of the body this loop reads itself: none (0), or one `Content-Length`
    /// field of at most [`MAX_READ_BODY`]. `None`: hyper's (chunked, larger, or the
    /// length stated more than once, which hyper takes if the values agree).
    fn read_here(&self) -> Result<Option<u64>, NotTaken> {
        match (self.encoded, self.lengths, self.length) {
            (true, _, _) if !self.chunked => Err(Bad(BadHead::Malformed)),
            (true, _, _) => Ok(None),
            (false, 0, _) => Ok(Some(0)),
            (false, 1, Some(n)) if n <= MAX_READ_BODY => Ok(Some(n)),
            _ => Ok(None),
        }
    }
}

/// What a head `httparse` refused gets. The HTTP/2 preface is read to its end here
/// first, under the head's deadline (hyper would wait for the rest without one); any
/// other head is refused here, as hyper's own HTTP/1 server (which parses with
/// `httparse` too) would refuse it.
fn refused(buf: &[u8], error: httparse::Error) -> Result<Option<Head>, NotTaken> {
    let n = buf.len().min(H2_PREFACE.len());
    match error {
        _ if buf[..n] == H2_PREFACE[..n] && n < H2_PREFACE.len() => Ok(None),
        _ if buf[..n] == H2_PREFACE[..n] => Err(Http2),
        httparse::Error::TooManyHeaders => Err(Bad(BadHead::TooLarge)),
        _ => Err(Bad(BadHead::Malformed)),
    }
}

/// The field's name. `http` copies every name it does not know into a new allocation;
/// the credential names every management-token request carries are taken from
/// constants instead (as sent, in lower case; other spellings take the general path).
/// A name `http` refuses after `httparse` took it is too long (64 KiB and over).
fn header_name(raw: &[u8]) -> Result<HeaderName, NotTaken> {
    match raw {
        b"api_key" => Ok(HeaderName::from_static(API_KEY)),
        b"branch" => Ok(HeaderName::from_static(BRANCH)),
        b"authtoken" => Ok(HeaderName::from_static(AUTHTOKEN)),
        _ => HeaderName::from_bytes(raw).map_err(|_| match raw.len() {
            0..=0xFFFF => Bad(BadHead::Malformed),
            _ => Bad(BadHead::TooLarge),
        }),
    }
}

/// Builds the request; header values and the target share the head's one copy.
fn build(
    head: &Bytes,
    path: std::ops::Range<usize>,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    method: Method,
    http10: bool,
) -> Option<Request<()>> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    let mut map = HeaderMap::with_capacity(fields.len() + 6);
    for (name, at, n) in fields.drain(..) {
        map.append(name, HeaderValue::from_maybe_shared(head.slice(at..at + n)).ok()?);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    if http10 {
        *request.version_mut() = http::Version::HTTP_10;
    }
    Some(request)
}

/// How writing a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// All of it: the connection can carry another request.
    Whole,
    /// All of it, and the connection ends with it: a body of unknown length to an
    /// HTTP/1.0 client, which reads it to the close (it has no chunked coding).
    Ended,
    /// Partly, or the connection failed: it must close.
    Failed,
    /// Nothing: the body failed before the first write.
    Unstarted,
}

/// How a response is to be written.
#[derive(Debug, Clone, Copy)]
struct Reply {
    /// The answer to a `HEAD`: the head alone.
    head_only: bool,
    /// The connection ends after it (`Connection: close`).
    close: bool,
    /// To an HTTP/1.0 client: an `HTTP/1.0` status line, `Connection: keep-alive` when
    /// the connection stays, and a body of unknown length sent as it comes, ended by
    /// the close (RFC 9112, C.2.2), as hyper answers one.
    http10: bool,
}

/// Writes a response.
async fn write_response<I, B, A>(io: &mut I, out: &mut Vec<u8>, resp: Response<B>, added: &A, reply: Reply) -> Written
where
    I: AsyncWrite + Unpin,
    B: CarriesFields,
    A: AddedFields,
{
    let (mut parts, mut body) = resp.into_parts();
    // The upstream's fields as one block, unless one of them must give way to ours.
    let fields = match body.take_fields() {
        Some(fields) if fields.has_replaced() => {
            fields.into_map(&mut parts.headers, 0);
            None
        }
        fields => fields,
    };
    let status = parts.status;
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = hyper::body::Body::size_hint(&body).exact();
    let Reply { head_only, close, http10 } = reply;
    let until_close = http10 && !(head_only || bodiless) && exact.is_none();
    out.clear();
    let head = HeadOptions { keep_length: head_only && !bodiless, close: close || until_close, http10 };
    write_head(out, &parts, fields.as_ref(), added, head);
    match (head_only || bodiless, exact) {
        (true, _) => {
            // A HEAD answer says the length the GET would have had, if known.
            let stated = parts.headers.contains_key(CONTENT_LENGTH) || fields.is_some_and(|f| f.length().is_some());
            if head_only && !bodiless && !stated {
                if let Some(n) = exact.filter(|&n| n > 0) {
                    put_length(out, n);
                }
            }
            out.extend_from_slice(b"\r\n");
            // Flushed: see `write_body`.
            let written = match io.write_all(out).await {
                Ok(()) => io.flush().await,
                failed => failed,
            };
            match written {
                Ok(()) => Written::Whole,
                Err(_) => Written::Failed,
            }
        }
        (false, Some(n)) => {
            put_length(out, n);
            out.extend_from_slice(b"\r\n");
            written(super::body::write_body(io, out, &mut body, false).await, Some(n))
        }
        (false, None) if until_close => {
            out.extend_from_slice(b"\r\n");
            match written(super::body::write_body(io, out, &mut body, false).await, None) {
                Written::Whole => Written::Ended,
                other => other,
            }
        }
        (false, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            written(super::body::write_body(io, out, &mut body, true).await, None)
        }
    }
}

/// A body's write as a [`Written`]: whole only if it was as long as it said.
fn written(result: Result<u64, super::body::WriteError>, length: Option<u64>) -> Written {
    match result {
        Ok(sent) if length.is_none_or(|n| n == sent) => Written::Whole,
        Err(super::body::WriteError::Unstarted) => Written::Unstarted,
        Ok(_) | Err(_) => Written::Failed,
    }
}

/// What a response head says beyond its fields.
#[derive(Debug, Clone, Copy)]
struct HeadOptions {
    /// The stated `Content-Length` stays (a `HEAD` answer's).
    keep_length: bool,
    /// The connection ends after this answer.
    close: bool,
    /// To an HTTP/1.0 client.
    http10: bool,
}

/// Status line and fields (the map's, and the upstream's block if there is one),
/// without the framing ones (written by the caller from the body), with the added
/// ones, adding `Date` when the response has none and `Connection: close` when the
/// connection ends after it (`Connection: keep-alive` when an HTTP/1.0 one does not).
fn write_head<A: AddedFields>(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    fields: Option<&Fields>,
    added: &A,
    options: HeadOptions,
) {
    let HeadOptions { keep_length, close, http10 } = options;
    put_status(out, parts.status, http10);
    for (name, value) in &parts.headers {
        let framing = *name == TRANSFER_ENCODING || (*name == CONTENT_LENGTH && !keep_length);
        if !framing && *name != CONNECTION && !added.replaces(name) {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let Some(fields) = fields {
        out.extend_from_slice(fields.block());
        if let Some(n) = fields.length().filter(|_| keep_length) {
            put_length(out, n);
        }
    }
    added.each(&mut |name, value| put_field(out, name.as_str().as_bytes(), value.as_bytes()));
    if !parts.headers.contains_key(DATE) && !fields.is_some_and(Fields::has_date) {
        date::with(|d| put_field(out, b"date", d));
    }
    if close {
        put_field(out, b"connection", b"close");
    } else if http10 {
        put_field(out, b"connection", b"keep-alive");
    }
}

/// Bytes read before the handover, served before the socket's own.
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: BytesMut, io: I) -> Self {
        Prefixed { prefix: prefix.freeze(), io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names_are_the_same_whichever_path_names_them() {
        for raw in ["api_key", "branch", "authtoken"] {
            let fast = header_name(raw.as_bytes()).unwrap();
            let general = header_name(raw.to_ascii_uppercase().as_bytes()).unwrap();
            assert_eq!(fast, general);
            assert_eq!(fast.as_str(), raw);
        }
        assert_eq!(header_name(b"X-Custom").ok().unwrap(), "x-custom");
        assert!(header_name(b"bad name").is_err());
    }

    fn outcome(head: &str) -> Result<bool, NotTaken> {
        let mut buf = BytesMut::from(head.as_bytes());
        parse(&mut buf, &mut Vec::new(), 64 * 1024).map(|h| h.is_some())
    }

    #[test]
    fn the_http2_preface_is_read_whole_before_hyper_gets_it() {
        let preface = std::str::from_utf8(H2_PREFACE).unwrap();
        for n in [13, 16, preface.len() - 1] {
            assert_eq!(outcome(&preface[..n]), Ok(false), "{:?}: read on, under the deadline", &preface[..n]);
        }
        assert_eq!(outcome(preface), Err(Http2));
        assert_eq!(outcome("GET / HTTP/2.0\r\n\r\n"), Err(Bad(BadHead::Malformed)));
    }

    #[test]
    fn framing_is_refused_where_hyper_refuses_it_and_left_to_hyper_otherwise() {
        let with = |fields: &str| outcome(&format!("POST /v3/x HTTP/1.1\r\nhost: a\r\n{fields}\r\n"));
        for taken in ["content-length: 0\r\n", "content-length: 5\r\n", "content-length: 65000\r\n"] {
            assert_eq!(with(taken), Ok(true), "{taken:?}");
        }
        for hyper in [
            "content-length: 65536\r\n",
            "content-length: 2\r\ncontent-length: 2\r\n",
            "content-length: 0\r\ncontent-length: 0\r\n",
            "transfer-encoding: gzip, chunked\r\n",
            "transfer-encoding: chunked\r\ncontent-length: x\r\n",
            "expect: 100-continue\r\n",
        ] {
            assert_eq!(with(hyper), Err(ForHyper), "{hyper:?}");
        }
        for bad in [
            "content-length: 1, 2\r\n",
            "content-length: 2, 2\r\n",
            "content-length: 0, 0\r\n",
            "content-length: 18446744073709551614\r\n",
            "content-length: -1\r\n",
            "content-length: \r\n",
            "content-length: 18446744073709551616\r\n",
            "content-length: x\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: chunked, gzip\r\n",
            "transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n",
        ] {
            assert_eq!(with(bad), Err(Bad(BadHead::Malformed)), "{bad:?}");
        }
    }

    #[test]
    fn a_target_http_refuses_is_refused_here_on_a_head_hyper_would_serve() {
        for target in ["/v3/x?q=\"a\"", "/v3/`x`", "/v3/<x>"] {
            for fields in ["transfer-encoding: chunked\r\n", "content-length: 65536\r\n", "expect: 100-continue\r\n"] {
                let head = format!("POST {target} HTTP/1.1\r\nhost: a\r\n{fields}\r\n");
                assert_eq!(outcome(&head), Err(Bad(BadHead::Malformed)), "{head:?}");
            }
            assert_eq!(outcome(&format!("GET {target} HTTP/1.0\r\n\r\n")), Err(Bad(BadHead::Malformed)));
        }
        assert_eq!(
            outcome("POST /v3/x?q=%22a%22 HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(ForHyper)
        );
        assert_eq!(outcome("GET /v3/x HTTP/1.0\r\n\r\n"), Ok(true));
    }

    #[test]
    fn an_http10_head_is_taken_and_kept_only_when_it_asks_for_keep_alive() {
        use http::Version;
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        let head = |version: &str, fields: &str| {
            let mut buf = BytesMut::from(format!("GET /v3/x {version}\r\n{fields}\r\n").as_bytes());
            let head = parse(&mut buf, &mut Vec::new(), 64 * 1024).ok().flatten();
            head.map(|h| (h.close, h.http10, h.request.version()))
        };
        assert_eq!(head("HTTP/1.0", ""), Some((true, true, HTTP_10)));
        assert_eq!(head("HTTP/1.0", "connection: Keep-Alive\r\n"), Some((false, true, HTTP_10)));
        assert_eq!(head("HTTP/1.0", "connection: keep-alive, close\r\n"), Some((true, true, HTTP_10)));
        assert_eq!(head("HTTP/1.0", "connection: x-keep-alive\r\n"), Some((true, true, HTTP_10)));
        // As hyper reads it: a value with a byte outside visible ASCII names nothing.
        assert_eq!(head("HTTP/1.0", "connection: keep-alive, \u{e9}\r\n"), Some((true, true, HTTP_10)));
        let mixed = "connection: keep-alive\r\nconnection: x\u{e9}\r\n";
        assert_eq!(head("HTTP/1.0", mixed), Some((true, true, HTTP_10)));
        assert_eq!(head("HTTP/1.1", ""), Some((false, false, HTTP_11)));
        assert_eq!(head("HTTP/1.1", "connection: close\r\n"), Some((true, false, HTTP_11)));
        // A body of stated length is read here as on HTTP/1.1; no transfer coding on 1.0.
        let mut buf = BytesMut::from(&b"POST /v3/x HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}"[..]);
        assert_eq!(parse(&mut buf, &mut Vec::new(), 64 * 1024).ok().flatten().map(|h| h.body_len), Some(2));
        assert_eq!(outcome("POST /v3/x HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"), Err(Bad(BadHead::Malformed)));
        assert_eq!(outcome("GET /v3/x HTTP/1.0\r\nexpect: 100-continue\r\n\r\n"), Err(ForHyper));
    }

    #[test]
    fn a_refused_head_asks_for_head_as_httparse_reads_its_method() {
        for head in ["HEAD /v3/x#y HTTP/1.1\r\n", "\r\nHEAD /v3/x HTTP/1.1\r\n", "\nHEAD\t/v3/x", "\r\n\nHEAD", "HEAD"]
        {
            assert!(asks_for_head(head.as_bytes()), "{head:?}");
        }
        // A CR alone is no empty line: `httparse` reads no method after it.
        for head in [
            "GET /v3/x#y HTTP/1.1\r\n",
            "head /v3/x HTTP/1.1\r\n",
            "HEADER /v3/x HTTP/1.1\r\n",
            " HEAD /",
            "",
            "\rHEAD /v3/x HTTP/1.1\r\n",
            "\r\r\nHEAD /v3/x",
            "\n\rHEAD /v3/x",
        ] {
            assert!(!asks_for_head(head.as_bytes()), "{head:?}");
        }
    }

    struct NoFields;

    impl AddedFields for NoFields {
        fn replaces(&self, _: &HeaderName) -> bool {
            false
        }

        fn each(&self, _: &mut dyn FnMut(&HeaderName, FieldValue<'_>)) {}
    }

    /// A response body of the given frames; of known length when `exact`.
    struct Frames(std::collections::VecDeque<Bytes>, bool);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|data| Ok(hyper::body::Frame::data(data))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            match self.1 {
                true => hyper::body::SizeHint::with_exact(self.0.iter().map(|d| d.len() as u64).sum()),
                false => hyper::body::SizeHint::default(),
            }
        }
    }

    impl CarriesFields for Frames {
        fn take_fields(&mut self) -> Option<Fields> {
            None
        }
    }

    /// Every answer on a connection kept open is flushed before the loop waits for the
    /// next request: a writer may hold bytes until flushed (a TLS stream keeps what the
    /// socket did not take at once), and the client waits for them. Over a writer that
    /// holds what it is given until flushed (`BufWriter`), for a HEAD and for bodies of
    /// every shape: small, large in several frames, chunk-coded.
    #[tokio::test]
    async fn every_answer_is_flushed_before_the_next_request_is_awaited() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        fn small() -> Frames {
            Frames([Bytes::from_static(b"{}")].into(), true)
        }
        fn large(exact: bool) -> Frames {
            Frames(std::iter::repeat_n(Bytes::from(vec![b'x'; 30_000]), 4).collect(), exact)
        }
        // A method, its answer's body, and how the answer ends.
        type Case = (&'static str, fn() -> Frames, &'static [u8]);
        let cases: [Case; 4] = [
            ("GET", small, b"{}"),
            ("HEAD", small, b"\r\n\r\n"),
            ("GET", || large(true), b"xxxx"),
            ("GET", || large(false), b"\r\n0\r\n\r\n"),
        ];
        for (method, body, ends_with) in cases {
            let (near, mut far) = tokio::io::duplex(1 << 20);
            let (_stop, mut shutdown) = watch::channel(false);
            tokio::spawn(async move {
                let mut io = tokio::io::BufWriter::with_capacity(1 << 20, near);
                let limits = Limits {
                    header_read_timeout: Duration::from_secs(10),
                    max_header_bytes: 64 * 1024,
                    http2_preface: true,
                };
                let service = |_, _| {
                    let resp = Response::new(body());
                    async move { (resp, NoFields) }
                };
                let refuse = |_, _: Option<&NoFields>| (Response::new(Frames(Default::default(), true)), NoFields);
                serve(&mut io, service, refuse, &limits, &mut shutdown).await;
            });
            far.write_all(format!("{method} /v3/x HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let answered = tokio::time::timeout(Duration::from_secs(2), async {
                while !got.ends_with(ends_with) {
                    let mut piece = [0u8; 16 * 1024];
                    match far.read(&mut piece).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&piece[..n]),
                    }
                }
            })
            .await;
            assert!(answered.is_ok() && got.starts_with(b"HTTP/1.1 200"), "{method}: {} bytes", got.len());
        }
    }

    type Seen = std::sync::Arc<std::sync::Mutex<Vec<Bytes>>>;

    /// Serves one connection with a service that records each request's body and
    /// answers with its length: the client side of the connection, the bodies seen, and
    /// how the loop ended (the bytes hyper would get, if it handed over).
    fn body_echo(
        head_within: Duration,
    ) -> (tokio::io::DuplexStream, Seen, tokio::sync::oneshot::Receiver<Option<BytesMut>>) {
        let (near, far) = tokio::io::duplex(1 << 20);
        let seen = Seen::default();
        let log = std::sync::Arc::clone(&seen);
        let (ended, outcome) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (_stop, mut shutdown) = watch::channel(false);
            let mut io = near;
            let limits = Limits { header_read_timeout: head_within, max_header_bytes: 64 * 1024, http2_preface: true };
            let service = |_: Request<()>, body: Bytes| {
                let answer = Bytes::from(body.len().to_string());
                log.lock().unwrap().push(body);
                async move { (Response::new(Frames([answer].into(), true)), NoFields) }
            };
            let refuse = |_, _: Option<&NoFields>| (Response::new(Frames(Default::default(), true)), NoFields);
            let handed = match serve(&mut io, service, refuse, &limits, &mut shutdown).await {
                Outcome::Handover(bytes) => Some(bytes),
                Outcome::Closed => None,
            };
            let _ = ended.send(handed);
        });
        (far, seen, outcome)
    }

    /// A body of stated length is read whole, in whatever pieces it comes, and exactly:
    /// the bytes after it (here a pipelined GET, and a body that looks like a request)
    /// are the next request, never part of this one or a request of their own. (On a
    /// paused clock: the pieces' 20 ms gaps stay shorter than `BODY_PAUSE` however
    /// loaded the machine.)
    #[tokio::test(start_paused = true)]
    async fn a_body_of_stated_length_is_read_whole_and_exactly() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut far, seen, outcome) = body_echo(Duration::from_secs(10));
        let smuggled = "GET /v3/stacks HTTP/1.1\r\nhost: a\r\n\r\n";
        let first = format!("POST /v3/x HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n", smuggled.len());
        far.write_all(first.as_bytes()).await.unwrap();
        // The body in three pieces, the last with the next request behind it.
        let (a, rest) = smuggled.split_at(7);
        let (b, c) = rest.split_at(20);
        for piece in [a, b] {
            far.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        far.write_all(format!("{c}GET /v3/y HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), far.read_to_end(&mut got)).await;
        let got = String::from_utf8_lossy(&got);
        assert_eq!(got.matches("HTTP/1.1 200").count(), 2, "{got}");
        assert_eq!(*seen.lock().unwrap(), [Bytes::from(smuggled), Bytes::new()]);
        assert!(outcome.await.unwrap().is_none(), "served to the end here");
    }

    /// A body that pauses (or is not all there by the head's deadline) is not refused:
    /// hyper gets the connection with the head and what came of the body, and streams
    /// the rest. A client that leaves mid-body reaches no service.
    #[tokio::test(start_paused = true)]
    async fn a_late_body_goes_to_hyper_whole_and_a_cut_one_reaches_no_service() {
        use tokio::io::AsyncWriteExt;
        let sent = b"PUT /v3/x HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n12345";
        for head_within in [Duration::from_millis(50), Duration::from_secs(10)] {
            let (mut far, seen, outcome) = body_echo(head_within);
            far.write_all(sent).await.unwrap();
            let handed = tokio::time::timeout(Duration::from_secs(1), outcome).await.unwrap().unwrap();
            assert_eq!(handed.as_deref(), Some(&sent[..]), "{head_within:?}");
            assert!(seen.lock().unwrap().is_empty());
        }

        let (mut far, seen, outcome) = body_echo(Duration::from_secs(10));
        far.write_all(sent).await.unwrap();
        far.shutdown().await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), outcome).await.unwrap().unwrap();
        assert!(ended.is_none());
        assert!(seen.lock().unwrap().is_empty());
    }

    /// A body is read here only if it fits with its head in `max_header_bytes`, as a
    /// head must: a connection holds no more than a slow head could make it hold.
    #[test]
    fn a_body_is_read_here_only_within_the_head_limit() {
        // And never one over `MAX_READ_BODY`, whatever the head limit.
        let mut large = BytesMut::from(&b"PUT /v3/x HTTP/1.1\r\nhost: a\r\ncontent-length: 65537\r\n\r\n"[..]);
        assert!(matches!(parse(&mut large, &mut Vec::new(), 16 << 20), Err(ForHyper)));
        let head = |n: usize| format!("POST /v3/x HTTP/1.1\r\nhost: a\r\ncontent-length: {n}\r\n\r\n");
        let len = head(1000).len();
        for (max_head, taken) in [(len + 1000, true), (len + 999, false)] {
            let mut buf = BytesMut::from(head(1000).as_bytes());
            let parsed = parse(&mut buf, &mut Vec::new(), max_head);
            assert_eq!(parsed.as_ref().map(|h| h.as_ref().map(|h| h.body_len)).ok(), taken.then_some(Some(1000)));
            assert_eq!(parsed.is_err(), !taken, "over the limit: hyper's");
        }
    }
}

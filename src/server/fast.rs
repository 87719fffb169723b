//! The gateway's own HTTP/1.1 server loop for the common request, in front of hyper.
//!
//! Most CMA calls are HTTP/1.1 requests without a body (GET, HEAD, DELETE) on a
//! keep-alive connection. For those, this loop reads and parses the head (`httparse`,
//! as hyper does), runs the same handler, and writes the response itself: no
//! dispatcher, no per-request timer or buffer hand-offs. Anything else — a body
//! (`Content-Length` or `Transfer-Encoding`), `Expect`, `Upgrade`, `CONNECT`, HTTP/1.0,
//! HTTP/2, a head that does not parse or is too large — hands the connection, with the
//! bytes already read, to hyper for the rest of its life, so every framing and error
//! case keeps hyper's behaviour.

use super::handler::{respond, ConnInfo, Stamp};
use super::Gateway;
use crate::pipeline::auth::{API_KEY, AUTHTOKEN, BRANCH};
use crate::proxy::{self, Body, ClientBody, Fields};
use crate::timer;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Header fields taken in one head; more goes to hyper (which answers 431).
const MAX_HEADERS: usize = 100;
/// Request targets longer than this go to hyper (which answers 414).
const MAX_URI: usize = 65_534;
/// Response bodies up to this size leave in the same write as the head.
const COALESCE: usize = 16 * 1024;

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
}

/// A head this loop does not take: hyper gets the connection.
pub(crate) struct NotMine;

/// A complete head: the request, and whether the client asked to close afterwards.
type Head = (Request<ClientBody>, bool);

/// Serves requests until the connection ends or a request needs hyper.
pub async fn serve<I>(
    io: &mut I,
    gw: &Arc<Gateway>,
    info: &Arc<ConnInfo>,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
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
    loop {
        let deadline = Instant::now() + limits.header_read_timeout;
        let (req, close) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, &mut fields, limits.max_header_bytes) {
                    Ok(Some(head)) => break head,
                    Err(NotMine) => return Outcome::Handover(buf),
                    Ok(None) if buf.len() > limits.max_header_bytes => return Outcome::Handover(buf),
                    Ok(None) => {}
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
        let head_only = req.method() == Method::HEAD;
        // Pinned here and lent out: moving the (large) future again would cost a copy.
        let handled = std::pin::pin!(respond(Arc::clone(gw), req, Arc::clone(info)));
        let Some((resp, stamp)) = unless_hung_up(io, &mut buf, handled, limits.max_header_bytes).await else {
            return Outcome::Closed;
        };
        let done = write_response(io, &mut out, resp, &stamp, head_only, close).await;
        if close || !done || *shutdown.borrow() {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
    }
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
        if !matches!(shutdown.has_changed(), Ok(false)) {
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
/// without a body is taken; `fields` is scratch space kept across requests.
pub(crate) fn parse(
    buf: &mut BytesMut,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    max_head: usize,
) -> Result<Option<Head>, NotMine> {
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(NotMine),
    };
    let (Some(1), Some(method), Some(path)) = (req.version, req.method, req.path) else { return Err(NotMine) };
    if len > max_head || path.len() > MAX_URI {
        return Err(NotMine);
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Err(NotMine) };
    if method == Method::CONNECT {
        return Err(NotMine);
    }
    let base = buf.as_ptr() as usize;
    let path_at = path.as_ptr() as usize - base;
    let (mut close, mut declared) = (false, false);
    fields.clear();
    for h in req.headers.iter() {
        let Some(name) = header_name(h.name.as_bytes()) else { return Err(NotMine) };
        match name {
            // `Content-Length: 0` (once) declares no body, as many clients send it.
            CONTENT_LENGTH if h.value == b"0" && !declared => declared = true,
            // A body, or something only hyper handles.
            CONTENT_LENGTH | TRANSFER_ENCODING | http::header::EXPECT | http::header::UPGRADE => return Err(NotMine),
            CONNECTION => {
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Err(NotMine);
                    }
                }
            }
            _ => {}
        }
        fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    let path_len = path.len();
    let head = buf.split_to(len).freeze();
    match build(&head, path_at..path_at + path_len, fields, method) {
        Some(request) => Ok(Some((request, close))),
        None => {
            // `http` refused what `httparse` took (practically never): put the head
            // back for hyper, which answers it.
            let mut whole = BytesMut::from(&head[..]);
            whole.extend_from_slice(buf);
            *buf = whole;
            Err(NotMine)
        }
    }
}

/// The field's name. `http` copies every name it does not know into a new allocation;
/// the credential names every management-token request carries are taken from
/// constants instead (as sent, in lower case; other spellings take the general path).
fn header_name(raw: &[u8]) -> Option<HeaderName> {
    match raw {
        b"api_key" => Some(API_KEY),
        b"branch" => Some(BRANCH),
        b"authtoken" => Some(AUTHTOKEN),
        _ => HeaderName::from_bytes(raw).ok(),
    }
}

/// Builds the request; header values and the target share the head's one copy.
fn build(
    head: &Bytes,
    path: std::ops::Range<usize>,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    method: Method,
) -> Option<Request<ClientBody>> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    let mut map = HeaderMap::with_capacity(fields.len() + 6);
    for (name, at, n) in fields.drain(..) {
        map.append(name, HeaderValue::from_maybe_shared(head.slice(at..at + n)).ok()?);
    }
    let mut request = Request::new(ClientBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    Some(request)
}

/// Writes a response; returns whether the connection can carry another request.
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    stamp: &Stamp,
    head_only: bool,
    close: bool,
) -> bool
where
    I: AsyncWrite + Unpin,
{
    let (mut parts, mut body) = resp.into_parts();
    // The backend's fields as one block, unless one of them must give way to ours.
    let fields = match proxy::take_fields(&mut body) {
        Some(fields) if fields.has_gateway_set() => {
            fields.into_map(&mut parts.headers);
            None
        }
        fields => fields,
    };
    let status = parts.status;
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = hyper::body::Body::size_hint(&body).exact();
    out.clear();
    write_head(out, &parts, fields.as_ref(), stamp, head_only && !bodiless, close);
    match (head_only || bodiless, exact) {
        (true, _) => {
            // A HEAD answer says the length the GET would have had, if known.
            let stated = parts.headers.contains_key(CONTENT_LENGTH) || fields.is_some_and(|f| f.length().is_some());
            if head_only && !bodiless && !stated {
                if let Some(n) = exact.filter(|&n| n > 0) {
                    put_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
                }
            }
            out.extend_from_slice(b"\r\n");
            io.write_all(out).await.is_ok()
        }
        (false, Some(n)) => {
            put_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            write_body(io, out, body, false).await.is_some_and(|sent| sent == n)
        }
        (false, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            write_body(io, out, body, true).await.is_some()
        }
    }
}

/// Status line and fields (the map's, and the backend's block if there is one),
/// without the framing ones (written by the caller from the body), with the gateway's
/// own (`stamp`), adding `Date` when the response has none and `Connection: close`
/// when the connection ends after it.
fn write_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    fields: Option<&Fields>,
    stamp: &Stamp,
    keep_length: bool,
    close: bool,
) {
    if parts.status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        let framing = *name == TRANSFER_ENCODING || (*name == CONTENT_LENGTH && !keep_length);
        if !framing && *name != CONNECTION && !stamp.replaces(name) {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let Some(fields) = fields {
        out.extend_from_slice(fields.block());
        if let Some(n) = fields.length().filter(|_| keep_length) {
            put_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
        }
    }
    stamp.write_lines(out);
    if !parts.headers.contains_key(DATE) && !fields.is_some_and(Fields::has_date) {
        date::with(|d| put_field(out, b"date", d));
    }
    if close {
        put_field(out, b"connection", b"close");
    }
}

/// Streams the body after the head already in `out` (a body that is ready at once
/// leaves in the same write); returns the bytes of body sent, `None` on failure.
async fn write_body<I>(io: &mut I, out: &mut Vec<u8>, mut body: Body, chunked: bool) -> Option<u64>
where
    I: AsyncWrite + Unpin,
{
    let mut sent: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            io.write_all(out).await.ok()?;
            io.write_all(&data).await.ok()?;
            out.clear();
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        // More to come later: what is here goes now.
        if !hyper::body::Body::is_end_stream(&body) && !out.is_empty() {
            io.write_all(out).await.ok()?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await.ok()?;
    }
    Some(sent)
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` field value, formatted once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs {
                *at = secs;
                *text = httpdate::fmt_http_date(now);
            }
            f(text.as_bytes());
        });
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
        assert_eq!(header_name(b"X-Custom").unwrap(), "x-custom");
        assert!(header_name(b"bad name").is_none());
    }
}

//! The gateway's own HTTP/1.1 server loop for the common request, in front of hyper.
//!
//! Most CMA calls are HTTP/1.1 requests without a body (GET, HEAD, DELETE) on a
//! keep-alive connection. For those, this loop reads and parses the head (`httparse`,
//! as hyper does), calls the service, and writes the response itself: no dispatcher,
//! no per-request timer or buffer hand-offs. Anything else (a body, `Expect`,
//! `Upgrade`, `CONNECT`, HTTP/1.0, HTTP/2, a head that does not parse or is too large)
//! hands the connection, with the bytes already read, to hyper for the rest of its
//! life, so every framing and error case keeps hyper's behaviour.

use super::client::Fields;
use super::common::{connection_options, date, put_field, put_length, put_status, ConnectionOptions};
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

/// Header fields taken in one head; more goes to hyper (which answers 431).
const MAX_HEADERS: usize = 100;
/// Request targets longer than this go to hyper (which answers 414).
const MAX_URI: usize = 65_534;

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
pub struct ForHyper;

/// A complete head: the request, and whether the client asked to close afterwards.
type Head = (Request<()>, bool);

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
/// answers each request with its response and the fields to add to it.
pub async fn serve<I, S, Fut, B, A>(
    io: &mut I,
    mut service: S,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<()>) -> Fut,
    Fut: Future<Output = (Response<B>, A)>,
    B: CarriesFields,
    A: AddedFields,
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
                    Err(ForHyper) => return Outcome::Handover(buf),
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
        let handled = std::pin::pin!(service(req));
        let Some((resp, added)) = unless_hung_up(io, &mut buf, handled, limits.max_header_bytes).await else {
            return Outcome::Closed;
        };
        let done = write_response(io, &mut out, resp, &added, head_only, close).await;
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
pub fn parse(
    buf: &mut BytesMut,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    max_head: usize,
) -> Result<Option<Head>, ForHyper> {
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ForHyper),
    };
    let (Some(1), Some(method), Some(path)) = (req.version, req.method, req.path) else { return Err(ForHyper) };
    if len > max_head || path.len() > MAX_URI {
        return Err(ForHyper);
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Err(ForHyper) };
    if method == Method::CONNECT {
        return Err(ForHyper);
    }
    let base = buf.as_ptr() as usize;
    let path_at = path.as_ptr() as usize - base;
    let (mut options, mut declared) = (ConnectionOptions::default(), false);
    fields.clear();
    for h in req.headers.iter() {
        let Some(name) = header_name(h.name.as_bytes()) else { return Err(ForHyper) };
        match name {
            // `Content-Length: 0` (once) declares no body, as many clients send it.
            CONTENT_LENGTH if h.value == b"0" && !declared => declared = true,
            // A body, or something only hyper handles.
            CONTENT_LENGTH | TRANSFER_ENCODING | http::header::EXPECT | http::header::UPGRADE => return Err(ForHyper),
            CONNECTION => connection_options(h.value, &mut options, |_| {}),
            _ => {}
        }
        fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    if options.upgrade {
        return Err(ForHyper);
    }
    let path_len = path.len();
    let head = buf.split_to(len).freeze();
    match build(&head, path_at..path_at + path_len, fields, method) {
        Some(request) => Ok(Some((request, options.close))),
        None => {
            // `http` refused what `httparse` took (practically never): put the head
            // back for hyper, which answers it.
            let mut whole = BytesMut::from(&head[..]);
            whole.extend_from_slice(buf);
            *buf = whole;
            Err(ForHyper)
        }
    }
}

/// The field's name. `http` copies every name it does not know into a new allocation;
/// the credential names every management-token request carries are taken from
/// constants instead (as sent, in lower case; other spellings take the general path).
fn header_name(raw: &[u8]) -> Option<HeaderName> {
    match raw {
        b"api_key" => Some(HeaderName::from_static(API_KEY)),
        b"branch" => Some(HeaderName::from_static(BRANCH)),
        b"authtoken" => Some(HeaderName::from_static(AUTHTOKEN)),
        _ => HeaderName::from_bytes(raw).ok(),
    }
}

/// Builds the request; header values and the target share the head's one copy.
fn build(
    head: &Bytes,
    path: std::ops::Range<usize>,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    method: Method,
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
    Some(request)
}

/// Writes a response; returns whether the connection can carry another request.
async fn write_response<I, B, A>(
    io: &mut I,
    out: &mut Vec<u8>,
    resp: Response<B>,
    added: &A,
    head_only: bool,
    close: bool,
) -> bool
where
    I: AsyncWrite + Unpin,
    B: CarriesFields,
    A: AddedFields,
{
    let (mut parts, mut body) = resp.into_parts();
    // The upstream's fields as one block, unless one of them must give way to ours.
    let fields = match body.take_fields() {
        Some(fields) if fields.has_replaced() => {
            fields.into_map(&mut parts.headers);
            None
        }
        fields => fields,
    };
    let status = parts.status;
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = hyper::body::Body::size_hint(&body).exact();
    out.clear();
    write_head(out, &parts, fields.as_ref(), added, head_only && !bodiless, close);
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
            io.write_all(out).await.is_ok()
        }
        (false, Some(n)) => {
            put_length(out, n);
            out.extend_from_slice(b"\r\n");
            super::body::write_body(io, out, &mut body, false).await.is_ok_and(|sent| sent == n)
        }
        (false, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            super::body::write_body(io, out, &mut body, true).await.is_ok()
        }
    }
}

/// Status line and fields (the map's, and the upstream's block if there is one),
/// without the framing ones (written by the caller from the body), with the added
/// ones, adding `Date` when the response has none and `Connection: close` when the
/// connection ends after it.
fn write_head<A: AddedFields>(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    fields: Option<&Fields>,
    added: &A,
    keep_length: bool,
    close: bool,
) {
    put_status(out, parts.status);
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

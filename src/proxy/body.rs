//! The request body as forwarded: streamed from the client and counted, so a body over
//! `max_request_body` is cut off (and answered 413) without ever being buffered.

use crate::error::{BadRequest, GatewayError};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The body went over the limit, or the client sent a malformed one.
#[derive(Debug, thiserror::Error)]
#[error("client request body failed")]
pub struct ClientBodyError;

/// What went wrong with a client body while it was streamed (shared with the sender).
#[derive(Debug, Default, Clone)]
pub struct BodyState(Arc<AtomicU8>);

const TOO_LARGE: u8 = 1;
const MALFORMED: u8 = 2;
const STALLED: u8 = 3;

impl BodyState {
    /// The client's fault, if the body failed: 413, 400 or 408.
    pub fn error(&self) -> Option<GatewayError> {
        match self.0.load(Ordering::Relaxed) {
            TOO_LARGE => Some(GatewayError::PayloadTooLarge),
            MALFORMED => Some(GatewayError::BadRequest(BadRequest::UnreadableBody)),
            STALLED => Some(GatewayError::RequestTimeout),
            _ => None,
        }
    }

    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Refused bodies up to this size are read to their end before the refusal is sent.
const DISCARD_MAX: u64 = 1024 * 1024;
/// ... within this time.
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops the body of a refused request, up to `DISCARD_MAX` bytes and for
/// up to `DISCARD_TIME`, before the refusal is sent. A connection closed with unread
/// data in it is reset, and a client still writing its body would then read the reset
/// instead of the answer; an HTTP/2 stream answered before its body arrived reaches
/// many clients as a stream error with no body. Read to its end, the body leaves the
/// client able to read the answer and the connection usable for the next request.
/// Larger bodies are not waited for: their connection closes after the answer, as
/// nginx's does past its lingering limits. A client that sent `Expect: 100-continue`
/// is waiting for a go-ahead before it sends the body, and reading it would give one:
/// it gets the refusal at once.
pub async fn drain(parts: &http::request::Parts, body: ClientBody) {
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if body.is_end_stream()
        || declared.is_some_and(|n| n > DISCARD_MAX)
        || parts.headers.contains_key(http::header::EXPECT)
    {
        return;
    }
    read_and_drop(body).await;
}

/// Reads a body to its end and drops what it held, up to `DISCARD_MAX` bytes and for
/// up to `DISCARD_TIME`.
async fn read_and_drop(mut body: impl Body<Data = Bytes> + Unpin) {
    let mut left = DISCARD_MAX;
    let read_all = async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, read_all).await;
}

/// The rest of an HTTP/2 request body nothing will read (the answer came before it:
/// a backend that answered early, one that could not be reached), read and dropped in
/// a task of its own, within `DISCARD_MAX` and `DISCARD_TIME`, so that its stream ends
/// as the client ends it. Dropped instead, the stream is reset, and the client's DATA
/// frames already on their way arrive on a stream h2 has reset: it remembers the 50
/// last reset streams for a second, and a frame for one it has forgotten draws a
/// reset of its own, counted against the connection's limit
/// (`max_local_error_reset_streams`), past which it closes the connection under every
/// stream on it. Uploads answered early at a few hundred a second reached that limit
/// within a second. A body with more than `DISCARD_MAX` still to come by its declared
/// length is reset at once.
fn discard_rest(body: Incoming) {
    if body.is_end_stream() || body.size_hint().lower() > DISCARD_MAX {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(read_and_drop(body));
    }
}

/// A client's request body: hyper's, one the gateway's own HTTP/1.1 loop read whole
/// with its head, or none at all.
#[derive(Debug)]
pub enum ClientBody {
    Hyper(Incoming),
    /// An HTTP/1 body, telling `Unread` when it has been read to its end.
    Tracked(Incoming, Unread),
    /// Read whole by the HTTP/1.1 loop (one `Content-Length`, at most
    /// `http1::server::MAX_READ_BODY`); yielded as one frame. Nothing of it is left on
    /// the connection, so its next request can follow whatever the answer.
    Whole(Option<Bytes>),
    /// An HTTP/2 write's body: its end is passed on only once [`EndCheck`] confirms it
    /// (`ended`: hyper has reported it). With a declared length, the frame that brings
    /// its last byte is `held` until then too: a backend reading by length would have
    /// the whole request before the client ended it, and the client may still reset.
    H2 {
        body: Incoming,
        end: Arc<EndCheck>,
        ended: bool,
        held: Option<Box<Bytes>>,
    },
    Empty,
}

impl ClientBody {
    /// The body the HTTP/1.1 loop read (empty: none).
    pub fn read_whole(bytes: Bytes) -> ClientBody {
        match bytes.is_empty() {
            true => ClientBody::Empty,
            false => ClientBody::Whole(Some(bytes)),
        }
    }

    /// The check the request's future must run (see [`Confirming`]), for an HTTP/2 body.
    pub fn end_check(&self) -> Option<Arc<EndCheck>> {
        match self {
            ClientBody::H2 { end, .. } => Some(Arc::clone(end)),
            _ => None,
        }
    }

    /// Whether the request's future was dropped (its stream reset) before the body's
    /// end was confirmed: what was read of it is not a request.
    fn abandoned(&self) -> bool {
        matches!(self, ClientBody::H2 { end, .. } if end.state.load(Ordering::Acquire) == ABANDONED)
    }

    /// Whether hyper has read the body to its end and the end waits for its check.
    fn ends_unconfirmed(&self) -> bool {
        matches!(self, ClientBody::H2 { body, end, .. } if body.is_end_stream() && end.state.load(Ordering::Acquire) != CONFIRMED)
    }
}

/// Whether an HTTP/2 request body that hyper reports ended did end.
///
/// hyper's `Incoming` reads a `RST_STREAM` with `NO_ERROR` as the end of the body (RFC
/// 9113, 8.1 gives that code to a server that has answered and wants no more), so a
/// body the client abandoned midway would pass for a whole one: its end forwarded (a
/// chunk terminator, `END_STREAM`), a backend would take the part it got for the
/// request. The reset is seen only by hyper's stream task, which looks for one each
/// time the request's future is pending and then drops that future. So the end is held
/// back until the future has been pending once after the end was seen, and polled
/// again: by then any reset has been looked for (and the future dropped, the body
/// abandoned).
#[derive(Debug, Default)]
pub struct EndCheck {
    state: AtomicU8,
    /// The body's reader, waiting for the end to be confirmed.
    body: AtomicWaker,
    /// The request's future, to run the check when the body is read in another task
    /// (hyper's client sending it to an HTTP/2 backend).
    request: AtomicWaker,
}

const OPEN: u8 = 0;
/// hyper reported the end; the request's future has not been pending since.
const ENDED: u8 = 1;
/// The request's future was pending after the end: hyper looked for a reset.
const CHECKING: u8 = 2;
const CONFIRMED: u8 = 3;
const ABANDONED: u8 = 4;

impl EndCheck {
    fn step(&self, from: u8, to: u8) -> bool {
        self.state.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The body's side, once hyper reports the end: whether it is confirmed (`true`) or
    /// abandoned (`false`), pending until one of them.
    fn poll_end(&self, cx: &mut Context<'_>) -> Poll<bool> {
        self.body.register(cx.waker());
        if self.step(OPEN, ENDED) {
            self.request.wake();
        }
        match self.state.load(Ordering::Acquire) {
            CONFIRMED => Poll::Ready(true),
            ABANDONED => Poll::Ready(false),
            _ => Poll::Pending,
        }
    }
}

/// The request's future of an HTTP/2 stream whose body has an [`EndCheck`]. Pending
/// after the body's end was seen, it starts the check and asks to be polled again:
/// hyper looks for a reset in between, and the next poll confirms the end before the
/// request goes on. Answered, it confirms the end unchecked: the answer is out, and
/// what follows of the body no longer decides it. Dropped before, it marks the body
/// abandoned.
pub struct Confirming<F> {
    pub request: F,
    pub end: Option<Arc<EndCheck>>,
}

impl<F: std::future::Future + Unpin> std::future::Future for Confirming<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(end) = &this.end else { return Pin::new(&mut this.request).poll(cx) };
        if end.step(CHECKING, CONFIRMED) {
            // The body's reader, if it is another task (hyper's client sending the body
            // to an HTTP/2 backend); read here, the body sees the end in this poll.
            if let Some(reader) = end.body.take() {
                if !reader.will_wake(cx.waker()) {
                    reader.wake();
                }
            }
        }
        let polled = Pin::new(&mut this.request).poll(cx);
        if polled.is_ready() {
            end.state.store(CONFIRMED, Ordering::Release);
            end.body.wake();
        } else {
            end.request.register(cx.waker());
            if end.step(ENDED, CHECKING) {
                cx.waker().wake_by_ref();
            }
        }
        polled
    }
}

impl<F> Drop for Confirming<F> {
    fn drop(&mut self) {
        if let Some(end) = &self.end {
            if end.state.load(Ordering::Acquire) != CONFIRMED {
                end.state.store(ABANDONED, Ordering::Release);
                end.body.wake();
            }
        }
    }
}

/// Whether an HTTP/1 request body is still unread (in part) once its answer is ready:
/// hyper then closes the connection after the answer (a body it would have to drain,
/// or one that broke off), and the answer must say so (`Connection: close`), or the
/// client would send its next request into a closed connection.
#[derive(Debug, Clone)]
pub struct Unread(Arc<std::sync::atomic::AtomicBool>);

impl Unread {
    /// The body of `req`: tracked if it is an HTTP/1 one not already at its end; with its
    /// end checked ([`EndCheck`]) if it is an HTTP/2 write's.
    pub fn track(req: http::Request<Incoming>) -> http::Request<ClientBody> {
        if req.version() >= http::Version::HTTP_2 {
            // A read's body is never forwarded; a write's end is checked (`EndCheck`),
            // even one that came with its head: the stream may have been reset since.
            let read = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
            return match read && req.body().is_end_stream() {
                true => req.map(ClientBody::Hyper),
                false => req.map(|body| ClientBody::H2 { body, end: Arc::default(), ended: false, held: None }),
            };
        }
        if req.body().is_end_stream() {
            return req.map(ClientBody::Hyper);
        }
        let unread = Unread(Arc::new(std::sync::atomic::AtomicBool::new(true)));
        req.map(|b| ClientBody::Tracked(b, unread))
    }

    /// The tracker of a tracked body.
    pub fn of(body: &ClientBody) -> Option<Unread> {
        match body {
            ClientBody::Tracked(_, unread) => Some(unread.clone()),
            _ => None,
        }
    }

    pub fn is_unread(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Tracked(b, unread) => {
                let polled = Pin::new(&mut *b).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => b.is_end_stream(),
                    Poll::Ready(Some(Err(_))) | Poll::Pending => false,
                };
                if ended {
                    unread.0.store(false, Ordering::Relaxed);
                }
                polled
            }
            ClientBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            // Abandoned, it stays pending: its reader is gone, or `Streamed` fails it.
            ClientBody::H2 { body, end, ended, held } => {
                while !*ended && end.state.load(Ordering::Acquire) != ABANDONED {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(None) => *ended = true,
                        // After the declared length only an empty DATA frame or trailers
                        // can come (h2 checks the length); trailers end the stream.
                        Poll::Ready(Some(Ok(frame))) if held.is_some() => *ended = !frame.is_data(),
                        Poll::Ready(Some(Ok(frame))) if frame.is_data() && body.size_hint().exact() == Some(0) => {
                            *held = frame.into_data().ok().map(Box::new);
                        }
                        polled => return polled,
                    }
                }
                match end.poll_end(cx) {
                    Poll::Ready(true) => Poll::Ready(held.take().map(|data| Ok(Frame::data(*data)))),
                    Poll::Ready(false) | Poll::Pending => Poll::Pending,
                }
            }
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) | ClientBody::Tracked(b, _) => b.is_end_stream(),
            ClientBody::Whole(bytes) => bytes.is_none(),
            ClientBody::H2 { body, end, held, .. } => {
                held.is_none() && body.is_end_stream() && end.state.load(Ordering::Acquire) == CONFIRMED
            }
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) | ClientBody::Tracked(b, _) => b.size_hint(),
            ClientBody::H2 { body, held, .. } => {
                let (hint, held) = (body.size_hint(), held.as_ref().map_or(0, |d| d.len() as u64));
                // The upper bound first: `SizeHint` asserts lower <= upper.
                let mut with_held = SizeHint::new();
                if let Some(upper) = hint.upper() {
                    with_held.set_upper(upper.saturating_add(held));
                }
                with_held.set_lower(hint.lower().saturating_add(held));
                with_held
            }
            ClientBody::Whole(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A client body with a byte budget.
#[derive(Debug)]
pub struct Streamed {
    inner: ClientBody,
    /// A frame read ahead by [`Streamed::prefetch`], yielded first.
    first: Option<Frame<Bytes>>,
    /// [`Streamed::prefetch`] found the body's end instead of a frame.
    ended: bool,
    remaining: u64,
    state: BodyState,
}

impl Streamed {
    /// Wraps `inner` with a budget of `limit` bytes.
    pub fn new(inner: ClientBody, limit: u64, state: BodyState) -> Self {
        Streamed { inner, first: None, ended: false, remaining: limit, state }
    }

    /// Reads the first frame before anything is sent upstream, so a body that is
    /// malformed (bad chunk framing) or over the limit from its start is refused with
    /// nothing forwarded. A client has `wait` to start sending it (408 otherwise).
    pub async fn prefetch(&mut self, wait: std::time::Duration) -> Result<(), GatewayError> {
        if self.inner.is_end_stream() {
            return Ok(());
        }
        let Ok(first) = tokio::time::timeout(wait, self.inner.frame()).await else {
            return Err(GatewayError::RequestTimeout);
        };
        match first {
            Some(Ok(frame)) => {
                self.charge(&frame)?;
                self.first = Some(frame);
                // An HTTP/2 body whose end came with its first frame: the end is
                // confirmed here, so the body can still leave whole with the head.
                if self.inner.ends_unconfirmed() {
                    match tokio::time::timeout(wait, self.inner.frame()).await {
                        Ok(None) => {}
                        Ok(Some(Err(e))) => return Err(unreadable(&e)),
                        // Trailers (they end the body unsent, see `poll_frame`).
                        Ok(Some(Ok(_))) => self.ended = true,
                        Err(_) => return Err(GatewayError::RequestTimeout),
                    }
                }
                Ok(())
            }
            Some(Err(e)) => Err(unreadable(&e)),
            None => {
                self.ended = true;
                Ok(())
            }
        }
    }

    /// After [`Streamed::prefetch`]: whether the body holds (or may still send) a byte.
    pub fn holds_bytes(&self) -> bool {
        match self.first.as_ref().and_then(Frame::data_ref) {
            Some(data) if !data.is_empty() => true,
            _ => !self.ended && !self.inner.is_end_stream(),
        }
    }

    /// The body to forward: bytes when it is already complete (nothing at all, or all
    /// of it in the frame [`Streamed::prefetch`] read), so it leaves with the head and
    /// can be sent again; the stream otherwise.
    pub fn into_outbound(mut self) -> super::Outbound {
        if !self.ended && !self.inner.is_end_stream() {
            return super::Outbound::Stream(self);
        }
        match self.first.take().map(Frame::into_data) {
            // A trailers frame is dropped (see `poll_frame`).
            None | Some(Err(_)) => super::Outbound::Bytes(Bytes::new()),
            Some(Ok(data)) => super::Outbound::Bytes(data),
        }
    }

    fn charge(&mut self, frame: &Frame<Bytes>) -> Result<(), GatewayError> {
        let len = frame.data_ref().map_or(0, |d| d.len() as u64);
        if len > self.remaining {
            self.state.set(TOO_LARGE);
            return Err(GatewayError::PayloadTooLarge);
        }
        self.remaining -= len;
        Ok(())
    }
}

impl Drop for Streamed {
    /// An HTTP/2 body not read to its end is read to it in the background
    /// ([`discard_rest`]), unless its client reset it.
    fn drop(&mut self) {
        if matches!(self.inner, ClientBody::H2 { ended: false, .. }) && !self.inner.abandoned() {
            if let ClientBody::H2 { body, .. } = std::mem::replace(&mut self.inner, ClientBody::Empty) {
                discard_rest(body);
            }
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // A client's trailers end the body unsent: no rule checks their fields, which
        // would reach an HTTP/2 backend as they came (`authorization`,
        // `x-stackgate-token-uid`; the HTTP/1.1 writer never sends them).
        if let Some(frame) = this.first.take() {
            return Poll::Ready(frame.is_data().then_some(Ok(frame)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if !frame.is_data() => Poll::Ready(None),
            Poll::Ready(Some(Ok(frame))) => match this.charge(&frame) {
                Ok(()) => Poll::Ready(Some(Ok(frame))),
                Err(_) => Poll::Ready(Some(Err(Box::new(ClientBodyError)))),
            },
            Poll::Ready(Some(Err(e))) => {
                this.state.set(if timed_out(&e) { STALLED } else { MALFORMED });
                Poll::Ready(Some(Err(Box::new(ClientBodyError))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            // The request is gone (its stream reset): what was read must not reach its
            // end upstream.
            Poll::Pending if this.inner.abandoned() => Poll::Ready(Some(Err(Box::new(ClientBodyError)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let Some(len) = self.first.as_ref().and_then(|f| f.data_ref()).map(|d| d.len() as u64) else {
            return inner;
        };
        // Raise the upper bound before the lower one: SizeHint asserts lower <= upper.
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(len));
        }
        hint.set_lower(inner.lower().saturating_add(len));
        hint
    }
}

/// Whether an I/O error timed out somewhere in `e`'s causes: reading the client's body
/// when the client went quiet (its connection's `idle_timeout`), rather than because
/// what it sent was malformed; writing to a backend that took nothing.
pub(crate) fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The answer to a client body that could not be read: 408 when the client went
/// quiet, else 400.
pub fn unreadable(e: &(dyn std::error::Error + 'static)) -> GatewayError {
    match timed_out(e) {
        true => GatewayError::RequestTimeout,
        false => GatewayError::BadRequest(BadRequest::UnreadableBody),
    }
}

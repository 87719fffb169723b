//! Stage 7: forwarding to the backend (DESIGN.md section 8).
//!
//! Requests go direct (`direct.rs`, speaking HTTP/1.1 through [`crate::http1::client`],
//! over TCP or TLS): an HTTP/1 client connection's down its own upstream connection, an
//! HTTP/2 stream's down one from a shared idle list. An https backend that chooses
//! HTTP/2 through ALPN on a new connection is spoken to over that connection, shared by
//! the thread's requests of that tenant (`h2.rs`, hyper's HTTP/2 client). Bodies stream both ways. Headers
//! are rewritten in place: hop-by-hop and spoofable headers removed, forwarding and
//! identity headers set.

mod body;
mod direct;
mod h2;
mod headers;

use crate::http1::client::{self, Fields, Limits};
use crate::http1::server::CarriesFields;
use crate::timer::{Stalled, Waiting, Watched};
pub use body::{drain, unreadable, BodyState, ClientBody, Confirming, EndCheck, Streamed, Unread};
use direct::Sent;
pub use direct::{cap_idle_per_thread, Tenant, UpstreamSlot, CONNECTIONS_OPENED, IDLE_EVICTIONS, STRAY_COOL_DOWNS};
use headers::prepare_response_headers;
pub use headers::{
    join_cookies, prepare_request_headers, Identity, RequestRewrite, TRACEPARENT, TRACESTATE, X_REQUEST_ID,
};

use crate::config::Upstream;
use crate::error::{BadRequest, GatewayError, UpstreamFailure};
use crate::tls::TlsError;
use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A response body: streamed from the backend, or bytes we produced.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// A forwarded request body as hyper's HTTP/2 client takes it.
type ReqBody = Either<Streamed, Full<Bytes>>;

/// A request body on the HTTP/2 path, telling the request's timer whom it waits for.
type H2Body = Watched<ReqBody, Arc<Waiting>>;

/// Wraps bytes we produced (error bodies).
pub fn full(bytes: Bytes) -> Body {
    Either::Right(Full::new(bytes))
}

/// A request body on its way to the backend.
#[derive(Debug)]
pub enum Outbound {
    /// Held in full: buffered for inspection, small enough to arrive with the head, or
    /// empty. It can be sent again.
    Bytes(Bytes),
    /// Streamed (and counted) from the client.
    Stream(Streamed),
}

impl From<Outbound> for ReqBody {
    fn from(body: Outbound) -> Self {
        match body {
            Outbound::Bytes(bytes) => Either::Right(Full::new(bytes)),
            Outbound::Stream(stream) => Either::Left(stream),
        }
    }
}

/// A backend's response body, from whichever path carried the request. The direct
/// path's carries the backend's header fields until a writer takes them
/// (the HTTP/1.1 server through [`CarriesFields`], every other one through [`fill_headers`]).
#[derive(Debug)]
pub enum UpstreamBody {
    /// An HTTP/2 backend's body, and the frames [`take_ahead`] took of it (never empty).
    Http2(Incoming, Stall, Option<Box<Ahead>>),
    Direct(client::ResponseBody, Option<Fields>),
}

/// How long an HTTP/2 response body may go without a frame (`request_timeout`, as on
/// the direct path): a timer armed only while a read waits.
#[derive(Debug)]
pub struct Stall {
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stall {
    fn new(limit: Duration) -> Self {
        Stall { limit, sleep: None }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let limit = self.limit;
        std::future::Future::poll(self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit))).as_mut(), cx)
    }
}

/// The backend's header fields the direct path kept as a block (see [`Fields`]), for
/// the HTTP/1.1 server to write as they are.
impl CarriesFields for Body {
    fn take_fields(&mut self) -> Option<Fields> {
        match self {
            Either::Left(UpstreamBody::Direct(_, fields)) => fields.take(),
            _ => None,
        }
    }
}

/// Moves any fields the body still carries into the response's header map, with room
/// for `room` more: for every writer but the HTTP/1.1 loop.
pub fn fill_headers(resp: &mut Response<Body>, room: usize) {
    if let Some(fields) = resp.body_mut().take_fields() {
        fields.into_map(resp.headers_mut(), room);
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Http2(_, _, ahead @ Some(_)) => {
                let frame = ahead.as_mut().and_then(|frames| frames.pop_front());
                if ahead.as_ref().is_some_and(|frames| frames.is_empty()) {
                    *ahead = None;
                }
                Poll::Ready(frame.map(Ok))
            }
            UpstreamBody::Http2(b, stall, None) => match Pin::new(b).poll_frame(cx) {
                Poll::Pending => stall.poll(cx).map(|()| Some(Err("the backend stopped sending the body".into()))),
                // A backend's trailers end the body unsent, as the direct path's do: no
                // writer checks their fields (a backend's `x-ratelimit-remaining` or
                // credential would reach an HTTP/2 client as they came; the forty-ninth
                // outside probe), and an HTTP/1.1 client would not get them anyway.
                Poll::Ready(Some(Ok(frame))) if !frame.is_data() => {
                    stall.sleep = None;
                    Poll::Ready(None)
                }
                ready => {
                    stall.sleep = None;
                    ready.map_err(Into::into)
                }
            },
            UpstreamBody::Direct(b, _) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http2(b, _, ahead) => ahead.is_none() && b.is_end_stream(),
            UpstreamBody::Direct(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http2(b, _, taken) => {
                // The frames taken ahead are still to come.
                let data = taken.iter().flat_map(|frames| frames.iter()).filter_map(Frame::data_ref);
                let ahead: u64 = data.map(|d| d.len() as u64).sum();
                let rest = b.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + ahead);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
            UpstreamBody::Direct(b, _) => b.size_hint(),
        }
    }
}

/// The client of one upstream: the direct path, and the HTTP/2 connections (per thread
/// and tenant) of an https backend that chose HTTP/2.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    upstream: Upstream,
    /// The direct path (see `direct.rs`).
    direct: direct::Direct,
    /// Shared by every copy (a snapshot's, the next one's after a reload that keeps it).
    h2: Arc<h2::Http2>,
}

impl UpstreamClient {
    /// Builds a client (loading trust roots for an https upstream).
    pub fn new(upstream: &Upstream) -> Result<Self, TlsError> {
        let tls = match upstream.scheme == http::uri::Scheme::HTTPS {
            true => Some(crate::tls::client_config(upstream.ca_file.as_deref())?),
            false => None,
        };
        let direct = direct::Direct::new(&upstream.authority, upstream.connect_timeout, tls).ok_or_else(|| {
            TlsError::Config(format!("{}: not a host name a request or TLS can carry", upstream.authority))
        })?;
        Ok(UpstreamClient { upstream: upstream.clone(), direct, h2: Arc::default() })
    }

    /// The previous client when the upstream settings are unchanged (keeping its
    /// connection pool), else a new one.
    pub fn reuse_or_new(previous: Option<&UpstreamClient>, upstream: &Upstream) -> Result<Self, TlsError> {
        match previous {
            Some(prev) if prev.upstream == *upstream => Ok(prev.clone()),
            _ => UpstreamClient::new(upstream),
        }
    }

    /// The upstream URI for a canonical path and the original query. When the path is
    /// the client's own (`unchanged` by normalisation) and there is no base path, the
    /// client's path-and-query is reused as is: no copy, no second parse.
    pub fn uri_for(
        &self,
        path: &str,
        unchanged: bool,
        query: Option<&str>,
        original: &Uri,
    ) -> Result<Uri, GatewayError> {
        let reusable = original.path_and_query().filter(|_| self.upstream.base_path.is_empty() && unchanged);
        if let Some(pq) = reusable {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.upstream.scheme.clone());
            parts.authority = Some(self.upstream.authority.clone());
            parts.path_and_query = Some(pq.clone());
            return Uri::from_parts(parts).map_err(|_| GatewayError::BadRequest(BadRequest::AmbiguousPath));
        }
        let mut pq =
            String::with_capacity(self.upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(&self.upstream.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| GatewayError::BadRequest(BadRequest::AmbiguousPath))
    }

    /// Sends a prepared request: over the tenant's HTTP/2 connection if the (https)
    /// backend chose HTTP/2 on it and it is still open; otherwise direct, over HTTP/1.1
    /// (TCP or TLS): down the HTTP/1 client connection's own upstream connection
    /// (`slot`), or for an HTTP/2 stream (no slot) one from the idle list. A new
    /// connection whose ALPN chose HTTP/2 becomes the tenant's HTTP/2 connection.
    /// The response comes back without hop-by-hop headers. Failures map to 502/504, or
    /// to the client's fault (413, 400) when its body failed on the way (`state`).
    pub async fn send(
        &self,
        slot: Option<&UpstreamSlot>,
        tenant: Option<Tenant>,
        parts: http::request::Parts,
        rewrite: &RequestRewrite,
        mut body: Outbound,
        state: &BodyState,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let limits = Limits { backend: self.upstream.request_timeout, client: self.upstream.client_timeout };
        // The HTTP/2 path's deadline; the direct path keeps its own (no clock read here).
        let deadline = || tokio::time::Instant::now() + limits.backend;
        let result = match self.h2_sender(tenant).await {
            Some(conn) => self.over_h2(conn, tenant, parts, rewrite, body, limits, deadline()).await,
            None => match self.direct.send(slot, tenant, &parts, rewrite, &mut body, limits).await {
                Ok(Sent::Answered(resp, fields)) => Ok(resp.map(|body| UpstreamBody::Direct(body, Some(fields)))),
                Ok(Sent::Http2(tls)) => {
                    let deadline = deadline();
                    match self.start_h2(tls, tenant, deadline).await {
                        Ok(conn) => self.over_h2(conn, tenant, parts, rewrite, body, limits, deadline).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
        };
        // The client's body failing on the way is the client's fault, whatever the
        // backend made of it.
        match state.error() {
            Some(err) => Err(err),
            None => result,
        }
    }

    /// This thread's HTTP/2 connection for `tenant`, if one is open and takes streams
    /// (hyper's readiness never waits: a full connection queues the stream). One that
    /// has ended is none: the next connection decides again.
    async fn h2_sender(&self, tenant: Option<Tenant>) -> Option<h2::Conn> {
        let mut conn = self.h2.sender(tenant)?;
        conn.sender.ready().await.ok()?;
        Some(conn)
    }

    /// HTTP/2 on a new connection whose ALPN chose it, within the request's deadline.
    async fn start_h2(
        &self,
        tls: Box<tokio_rustls::client::TlsStream<crate::http1::client::Records>>,
        tenant: Option<Tenant>,
        deadline: tokio::time::Instant,
    ) -> Result<h2::Conn, GatewayError> {
        match tokio::time::timeout_at(deadline, self.h2.start(tls, tenant)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(_)) => Err(GatewayError::BadGateway(UpstreamFailure::Protocol)),
            Err(_) => Err(GatewayError::GatewayTimeout),
        }
    }

    /// Sends a request over `tenant`'s HTTP/2 connection.
    #[allow(clippy::too_many_arguments)]
    async fn over_h2(
        &self,
        conn: h2::Conn,
        tenant: Option<Tenant>,
        mut parts: http::request::Parts,
        rewrite: &RequestRewrite,
        body: Outbound,
        limits: Limits,
        deadline: tokio::time::Instant,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        parts.version = Version::HTTP_2;
        rewrite.insert_into(&mut parts.headers);
        // As on the direct path, each side's time runs only while it is awaited; the
        // body is read by the connection's task, so it wakes the timer.
        let waiting = Arc::new(Waiting::new(tokio::time::Instant::now()));
        // A request held whole can be sent again if the backend did not process it.
        let again = match &body {
            Outbound::Bytes(bytes) => Some((parts.clone(), bytes.clone())),
            Outbound::Stream(_) => None,
        };
        let req = Request::from_parts(parts, Watched::new(ReqBody::from(body), Arc::clone(&waiting)));
        let sent = tokio::select! {
            biased;
            sent = self.send_h2(conn.clone(), tenant, req, again, &waiting, deadline) => sent?,
            who = waiting.stalled(limits.backend, limits.client) => {
                // A backend that takes no more of a body may have stopped taking any on
                // this connection (its window spent), and one that does not answer may
                // have stopped answering on it (hung: its pings go unanswered only after
                // up to 40 s, the outside probe saw every request wait into a 504 until
                // then): the tenant's later requests open another.
                if who == Stalled::Backend {
                    self.h2.retire(tenant, &conn);
                }
                return Err(match who {
                    Stalled::Backend => GatewayError::GatewayTimeout,
                    Stalled::Client => GatewayError::RequestTimeout,
                });
            }
        };
        let Some(mut resp) = passable(sent) else { return Err(GatewayError::BadGateway(UpstreamFailure::Protocol)) };
        // The gateway's answer, in its own version (see `http1::client`).
        *resp.version_mut() = Version::HTTP_11;
        let (head, mut body) = resp.into_parts();
        match take_ahead(&mut body).await {
            Ok(first) => Ok(Response::from_parts(head, UpstreamBody::Http2(body, Stall::new(limits.backend), first))),
            Err(()) => Err(GatewayError::BadGateway(UpstreamFailure::Protocol)),
        }
    }

    /// Sends `req` on `conn`. A request the backend did not process goes once more,
    /// on a new connection (RFC 9113 section 8.7), if that connection's ALPN chooses
    /// HTTP/2 again: one the connection never took (it was closing: the backend's idle
    /// close), and one held whole (`again`) that the backend's GOAWAY left out or that
    /// it refused (`REFUSED_STREAM`). A streamed body is not sent twice.
    async fn send_h2(
        &self,
        mut conn: h2::Conn,
        tenant: Option<Tenant>,
        req: Request<H2Body>,
        again: Option<(http::request::Parts, Bytes)>,
        waiting: &Arc<Waiting>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, GatewayError> {
        let failed = GatewayError::BadGateway(UpstreamFailure::Protocol);
        let req = match conn.sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp),
            Err(mut unsent) => match (unsent.take_message(), again) {
                (Some(req), _) => req,
                (None, Some((parts, bytes))) if h2::unprocessed(&unsent.into_error()) => {
                    let body = Watched::new(ReqBody::from(Outbound::Bytes(bytes)), Arc::clone(waiting));
                    Request::from_parts(parts, body)
                }
                (None, _) => return Err(failed),
            },
        };
        self.h2.retire(tenant, &conn);
        match self.direct.connect(deadline).await? {
            Some(direct::Opened::Http2(tls)) => {
                let mut conn = self.start_h2(tls, tenant, deadline).await?;
                conn.sender.send_request(req).await.map_err(|_| failed)
            }
            Some(direct::Opened::Http1(_)) | None => Err(failed),
        }
    }
}

/// An HTTP/2 answer with its fields ready for the client, or `None` for one the direct
/// path refuses too: a coding other than `chunked` alone (it would reach the client
/// without its label); an interim or switching answer (the gateway never asks for an
/// upgrade); a status above 599; a length that is no one number, a HEAD's included (see
/// [`prepare_response_headers`]); more fields than an HTTP/1.1 backend may send.
fn passable<B>(mut resp: Response<B>) -> Option<Response<B>> {
    let status = resp.status();
    let sound = chunked_alone(resp.headers())
        && !status.is_informational()
        && status.as_u16() < 600
        && resp.headers().len() <= crate::http1::MAX_RESPONSE_FIELDS;
    (sound && prepare_response_headers(resp.status(), resp.headers_mut())).then_some(resp)
}

/// Frames of an HTTP/2 body taken ahead, in order.
type Ahead = std::collections::VecDeque<Frame<Bytes>>;

/// At most this much of an HTTP/2 body is taken ahead.
const AHEAD: usize = 64 * 1024;

/// What the HTTP/2 connection already has of a response's body (up to [`AHEAD`]), taken
/// before the head goes on: its connection task decodes a frame in each of its turns,
/// so this task yields while each yield brought a frame. A body broken in what came
/// with the head is then a 502, as on the direct path, not a status followed by a cut.
/// A body still on its way is not waited for.
async fn take_ahead(body: &mut Incoming) -> Result<Option<Box<Ahead>>, ()> {
    use hyper::body::Body as _;
    let mut frames = Ahead::new();
    let (mut taken, mut yielded) = (0, false);
    while taken < AHEAD && !body.is_end_stream() {
        match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers are dropped, as on the direct path (see `poll_frame`).
                if let Some(data) = frame.data_ref() {
                    taken += data.len();
                    frames.push_back(frame);
                }
                yielded = false;
            }
            Poll::Ready(Some(Err(_))) => return Err(()),
            Poll::Ready(None) => break,
            // Asked for the body: the connection task decodes in its own turn.
            Poll::Pending if !yielded => {
                tokio::task::yield_now().await;
                yielded = true;
            }
            Poll::Pending => break,
        }
    }
    Ok((!frames.is_empty()).then(|| Box::new(frames)))
}

/// No `Transfer-Encoding`, or one that is exactly `chunked`.
fn chunked_alone(headers: &http::HeaderMap) -> bool {
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

//! The outer request function: runs the pipeline, turns any error into the CMA error
//! body, counts it, and writes the one access-log event. No stage writes a response.

use super::access_log::{self, Value};
use super::inspecting::{BodyCap, Share};
use super::{client, cors, request_id, Gateway};
use crate::error::{BadRequest, GatewayError, UpstreamFailure};
use crate::http1::server::{AddedFields, BadHead, FieldValue, Refusal};
use crate::pipeline::{self, Decision, Facts, Principal, Route};
use crate::proxy::ClientBody;
use crate::proxy::{self, prepare_request_headers, Body, BodyState, Identity, Outbound, Streamed, UpstreamSlot};
use crate::ratelimit::{RateInfo, RateLimit};
use crate::snapshot::Snapshot;
use crate::usage::Outcome;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Either, Limited};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a request needs to know about its connection, computed once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer address as an `X-Forwarded-For` value.
    pub peer_ip: HeaderValue,
    pub https: bool,
    /// This connection's own upstream connection (HTTP/1 clients, plain-HTTP upstream).
    pub upstream: UpstreamSlot,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, https: bool) -> Self {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo { peer, peer_ip, https, upstream: UpstreamSlot::default() }
    }

    /// The peer's address as text (for the access line).
    pub fn peer_text(&self) -> &str {
        self.peer_ip.to_str().unwrap_or("unknown")
    }
}

/// Fields the gateway adds to every response it forwards or makes: `X-Request-Id`,
/// the rate-limit fields of an admitted request, and the CORS fields. They travel
/// beside the response rather than in its header map: the HTTP/1.1 server writes them
/// straight into the head ([`AddedFields`]); for hyper they are inserted
/// ([`GatewayFields::apply`]). Both render them through [`GatewayFields::each`].
#[derive(Debug)]
pub struct GatewayFields {
    request_id: HeaderValue,
    rate: Option<RateInfo>,
    /// CORS fields, when `[server.cors]` is on (see [`cors`]).
    cors: Option<cors::Fields>,
}

impl GatewayFields {
    /// The most fields [`GatewayFields::each`] gives: the request id, four rate-limit
    /// fields, and four CORS fields.
    pub const MOST: usize = 9;

    /// Inserts the fields into a response's header map, replacing the backend's own in
    /// every spelling (`X_Request_Id` too; `Vary` is added to the backend's).
    pub fn apply(self, headers: &mut HeaderMap) {
        if self.cors.is_some() {
            remove_cors_fields(headers);
        }
        if headers.keys().any(|n| n != proxy::X_REQUEST_ID && self.replaces(n)) {
            let respelled: Vec<HeaderName> = headers.keys().filter(|n| self.replaces(n)).cloned().collect();
            for name in respelled {
                headers.remove(name);
            }
        }
        self.each(&mut |name, value| value.insert_into(name, headers));
    }
}

impl AddedFields for GatewayFields {
    fn replaces(&self, name: &HeaderName) -> bool {
        let raw = name.as_str().as_bytes();
        crate::field_names::folded_eq(raw, proxy::X_REQUEST_ID.as_str().as_bytes())
            || (self.rate.is_some() && crate::rate_fields::names(raw))
            || (self.cors.is_some() && cors::replaces(raw))
    }

    fn each(&self, f: &mut dyn FnMut(&HeaderName, FieldValue<'_>)) {
        f(&proxy::X_REQUEST_ID, FieldValue::Shared(&self.request_id));
        if let Some(rate) = &self.rate {
            rate.each(f);
        }
        if let Some(cors) = &self.cors {
            cors.each(f);
        }
    }
}

/// The backend's own CORS fields give way to the gateway's policy.
fn remove_cors_fields(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| cors::replaces(n.as_str().as_bytes())).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Serves one request on the main listener (hyper's service function).
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<ClientBody>,
    conn: Arc<ConnInfo>,
) -> Result<Response<Body>, Infallible> {
    // hyper's chunked decoder reads a bare LF where the last chunk's trailer section
    // should end as the start of trailer lines, taking a pipelined next request as
    // trailers (a proxy in front that ends lines at bare LFs sees two requests there).
    // No request is read after a chunked body: the connection closes after its answer.
    let chunked = req.version() < http::Version::HTTP_2 && req.headers().contains_key(http::header::TRANSFER_ENCODING);
    let unread = proxy::Unread::of(req.body());
    let head = req.method() == http::Method::HEAD;
    let http10 = req.version() == http::Version::HTTP_10;
    let (mut resp, fields) = respond(gw, req, conn).await;
    proxy::fill_headers(&mut resp, GatewayFields::MOST);
    fields.apply(resp.headers_mut());
    // The gateway's own answers (errors, the token API); a backend's answer to a HEAD
    // has no body already, and is left to end as it does.
    if head && matches!(resp.body(), Either::Right(_)) {
        without_content(&mut resp, || proxy::full(Bytes::new()));
    }
    // A body left unread (an answer before its end: the backend's early one, or a
    // refusal of a body too large to drain) ends the connection after the answer.
    if chunked || unread.is_some_and(|u| u.is_unread()) {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    // An HTTP/1.0 client has no chunked coding: a body of unknown length ends when the
    // connection does, so the answer must not promise keep-alive (RFC 9112, C.2.2).
    // hyper adds `Connection: keep-alive` for a 1.0 client that asked for it unless
    // the answer itself is HTTP/1.0 without it; then it closes after the body.
    if http10
        && !head
        && !resp.headers().contains_key(CONTENT_LENGTH)
        && hyper::body::Body::size_hint(resp.body()).exact().is_none()
    {
        *resp.version_mut() = http::Version::HTTP_10;
    }
    Ok(resp)
}

/// Empties a HEAD answer, stating the length its body had (a HEAD answer carries no
/// content, RFC 9110, 9.3.2). hyper's HTTP/1 server leaves the body out itself; its
/// HTTP/2 server sends what the body holds, which strict clients take as a protocol
/// error on the stream.
pub(super) fn without_content<B: hyper::body::Body>(resp: &mut Response<B>, empty: impl FnOnce() -> B) {
    let Some(len) = resp.body().size_hint().exact().filter(|&n| n > 0) else { return };
    if !resp.headers().contains_key(CONTENT_LENGTH) {
        resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    *resp.body_mut() = empty();
}

/// A `tracestate` longer than W3C Trace Context allows (512 characters, all its fields
/// together) is not passed on, nor read for a credential.
const MAX_TRACESTATE: usize = 512;

/// Whether the client's one `traceparent` (and its `tracestate`) may be forwarded and
/// logged: valid, and showing no run of the request's own credential
/// (`request_id::passable_trace_id`); else a new trace replaces both.
fn passable(traceparent: &HeaderValue, headers: &HeaderMap) -> bool {
    let mut credentials = [&b""[..]; 2];
    for (slot, name) in credentials.iter_mut().zip([&http::header::AUTHORIZATION, &pipeline::auth::AUTHTOKEN]) {
        *slot = headers.get(name).map_or(&b""[..], HeaderValue::as_bytes);
    }
    let state = headers.get_all(proxy::TRACESTATE);
    state.iter().map(|v| v.len()).sum::<usize>() <= MAX_TRACESTATE
        && request_id::passable_trace_id(traceparent.as_bytes(), &credentials).is_some()
        && !state.iter().any(|v| credentials.iter().any(|c| request_id::shows_run_of(v.as_bytes(), c)))
}

/// Serves one request: the response, and the fields still to be added to it.
pub async fn respond(
    gw: Arc<Gateway>,
    req: Request<ClientBody>,
    conn: Arc<ConnInfo>,
) -> (Response<Body>, GatewayFields) {
    let started = Instant::now();
    // Counted and logged when the request ends, whether answered or cut short.
    let mut record = Record {
        gw: &gw,
        conn: &conn,
        started,
        request_id: request_id::ids().next(),
        logged: access_log::enabled().then(|| Logged {
            method: req.method().clone(),
            uri: req.uri().clone(),
            credentials: credentials(req.headers(), req.uri().query()),
            trace: None,
            client: None,
        }),
        facts: Facts::default(),
        refused: None,
        open: true,
    };
    let (mut parts, body) = req.into_parts();
    let mut body = Some(body);
    // The client's trace context if valid, else a new one (forwarded, and logged).
    // Two `traceparent` fields are no valid one (W3C Trace Context): a new trace.
    let mut sent = parts.headers.get_all(proxy::TRACEPARENT).iter();
    let (trace, generated) = match (sent.next(), sent.next()) {
        (Some(v), None) if passable(v, &parts.headers) => (v.clone(), None),
        _ => {
            let new = request_id::ids().traceparent();
            (new.clone(), Some(new))
        }
    };
    let snap = gw.snapshot();
    let trusted = &snap.config.server.trusted_proxies;
    let client_ip = if trusted.is_empty() {
        conn.peer.ip()
    } else {
        client::address(conn.peer.ip(), &parts.headers, trusted, snap.config.server.forwarded_field)
    };
    // A preflight's CORS fields are decided by the preflight answer itself.
    let cors = match (&snap.config.server.cors, &parts.method) {
        (Some(c), m) if *m != http::Method::OPTIONS => cors::Fields::of(c, &parts.headers),
        _ => None,
    };
    // The client's address, and as forwarded when it is not the socket's peer.
    let client = Client { ip: client_ip, forwarded: (client_ip != conn.peer.ip()).then(|| header_of(client_ip)) };
    if let Some(logged) = &mut record.logged {
        logged.trace = Some(trace.clone());
        logged.client.clone_from(&client.forwarded);
    }
    let (facts, request_id) = (&mut record.facts, &record.request_id);
    // The budget a request was charged, kept for its answer even when forwarding it failed
    // (a 502 or 504 after the charge states what is left, as any forwarded answer does).
    let mut charged = None;
    let mut result =
        process(&gw, &snap, &mut parts, &mut body, &conn, &client, request_id, generated, facts, &mut charged).await;
    if let Err(err) = &result {
        if let Some(retry_after) = throttled(&gw, &snap, err, &parts, facts, client_ip) {
            result = Err(GatewayError::Throttled { retry_after });
        }
    }
    if let Err(err) = &result {
        // A refused request's body is read (within bounds) before the answer, so the
        // client reads the answer instead of a reset (HTTP/1) or a stream error (h2);
        // if the client goes away meanwhile, the refusal is what is logged.
        record.refused = Some(err.clone());
        if let Some(body) = body.take() {
            proxy::drain(&parts, body).await;
        }
    }
    let (resp, rate, error) = match result {
        Ok((resp, rate)) => (resp, rate, None),
        Err(err) => (err.clone().into_response().map(proxy::full), charged, Some(err)),
    };
    record.open = false;
    record.write(resp.status().as_u16(), error.as_ref(), false);
    let request_id = std::mem::replace(&mut record.request_id, HeaderValue::from_static("-"));
    (resp, GatewayFields { request_id, rate, cors })
}

/// What one request is counted and logged as. Written when it is answered, or, if the
/// client went away first (its connection closed or its stream reset while the
/// gateway or the backend worked on it), when its future is dropped: as 499, nginx's
/// "client closed request". Without that, a request the backend carried out left no
/// access line and no count (the fifty-second outside probe).
struct Record<'a> {
    gw: &'a Gateway,
    conn: &'a ConnInfo,
    started: Instant,
    request_id: HeaderValue,
    /// What the access line needs of the request, kept only when the log is on.
    logged: Option<Logged>,
    facts: Facts,
    /// The refusal decided, while the refused request's body is read.
    refused: Option<GatewayError>,
    /// Not yet answered.
    open: bool,
}

struct Logged {
    method: http::Method,
    uri: http::Uri,
    credentials: Vec<Bytes>,
    trace: Option<HeaderValue>,
    /// The client's address when it is not the connection's peer.
    client: Option<HeaderValue>,
}

/// The status a request that ended before its answer is counted and logged with.
const CLIENT_GONE: u16 = 499;

impl Record<'_> {
    /// Counts the request (on its token too) and writes its access line. `gone`: it
    /// ended before its answer; with a refusal decided, that refusal is its reason.
    fn write(&mut self, status: u16, error: Option<&GatewayError>, gone: bool) {
        let op = self.facts.op;
        let took = self.started.elapsed();
        match (gone, error) {
            (true, None) => self.gw.metrics.cut_short(op.map(|o| o.module), took),
            _ => self.gw.metrics.request(op.map(|o| o.module), status, error, took),
        }
        // Counted on the token the request authenticated as (an atomic add on its own
        // counters, no lookup): whatever became of it, including refusals after
        // authentication (scope, branch, body rules) and the rate limiter's 429. One cut
        // short with nothing refused had passed every stage: forwarded, or about to be.
        if let Some(token) = &self.facts.token {
            let outcome = match error {
                // Forwarded, whatever the backend answered or failed to answer.
                None | Some(GatewayError::BadGateway(_) | GatewayError::GatewayTimeout) => Outcome::Forwarded,
                Some(GatewayError::RateLimited { .. }) => Outcome::RateLimited,
                Some(_) => Outcome::Refused,
            };
            token.usage.record(outcome, self.facts.decided_at);
        }
        let Some(logged) = &self.logged else { return };
        let credentials = &logged.credentials;
        let (reason, detail) = match (error, gone) {
            (Some(e), _) => (e.reason().name(), Value::Shown(e)),
            (None, true) if self.gw.is_cut() => {
                ("shutdown", Value::Bare("cut off unanswered when shutdown_grace ran out"))
            }
            (None, true) => ("client_gone", Value::Bare("ended before its answer: its connection or stream closed")),
            (None, false) => ("-", Value::Bare("-")),
        };
        let client = logged.client.as_ref().map_or(self.conn.peer_text(), |ip| ip.to_str().unwrap_or("-"));
        let trace = logged.trace.as_ref().and_then(|t| request_id::trace_id(t.as_bytes()));
        access_log::write(&[
            ("request_id", Value::Str(self.request_id.to_str().unwrap_or("-"))),
            ("client", Value::Bare(client)),
            ("trace_id", Value::Str(trace.unwrap_or("-"))),
            ("method", Value::Bare(logged_method(&logged.method, credentials))),
            (
                "path",
                Value::Str(logged_path(self.facts.canonical.as_deref().unwrap_or(logged.uri.path()), credentials)),
            ),
            ("module", Value::Str(op.map_or("-", |o| o.module.name()))),
            ("access", Value::Str(op.map_or("-", |o| o.access.name()))),
            ("token_uid", Value::Str(self.facts.token.as_ref().map_or("-", |t| &*t.uid))),
            ("status", Value::Number(status.into())),
            ("reason", Value::Str(reason)),
            ("detail", detail),
            ("latency_us", Value::Number(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))),
        ]);
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        if self.open {
            let refused = self.refused.take();
            self.write(CLIENT_GONE, refused.as_ref(), true);
        }
    }
}

/// What the request carries as credentials, for the access line to show none of them
/// (see [`logged_path`]): every value of `authorization`, `authtoken` and each field
/// whose name reads as a credential (`field_names::is_session_credential`: other
/// spellings of the two, `X-Auth-Token`, ...), and the values of such names among the
/// cookies and the query's pairs. Only taken while the access log is on.
fn credentials(headers: &HeaderMap, query: Option<&str>) -> Vec<Bytes> {
    let named = |name: &[u8]| {
        name.eq_ignore_ascii_case(http::header::AUTHORIZATION.as_str().as_bytes())
            || name.eq_ignore_ascii_case(pipeline::auth::AUTHTOKEN.as_str().as_bytes())
            || name.eq_ignore_ascii_case(http::header::PROXY_AUTHORIZATION.as_str().as_bytes())
            || crate::field_names::is_session_credential(name)
    };
    // Every cookie: a session's may have any name (`sid`, `session`, ...).
    let mut found = pipeline::query::values_named(query, headers, |name| named(name.as_bytes()), true);
    for (name, value) in headers {
        if named(name.as_str().as_bytes()) {
            found.push(Bytes::copy_from_slice(value.as_bytes()));
        }
    }
    // HTTP/2 lets a client repeat a long value for a few bytes each time (HPACK).
    found.sort_unstable();
    found.dedup();
    found
}

/// A method in the access line: RFC 9110's as they are; another only when it reads as
/// a method's name (at most 20 letters, `-` and `_`: `PROPFIND`, `PURGE`), unless it
/// shows a secret (see [`logged_path`]). A method is the client's to choose, and one
/// with digits or of a token's length may be key material without a secret's own shape
/// (its 32 hex digits without `cs`, an outside probe sent): withheld.
fn logged_method<'a>(method: &'a http::Method, credentials: &[Bytes]) -> &'a str {
    use http::Method;
    let standard =
        [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS];
    let name = method.as_str();
    if standard.contains(method) {
        name
    } else if name.len() <= 20 && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_') {
        logged_path(name, credentials)
    } else {
        "[withheld: not a method name]"
    }
}

/// A path in the access line: as it came, unless it shows an issued secret's characters
/// anywhere (as sent or decoded, delimited or not: a client that put a token in its
/// path, or sent one as its method) or one of the request's own credentials (see
/// [`credentials`]; a user's authtoken has no shape of its own: the thirty-second
/// outside probe had one logged from the path, the thirty-fourth split by an escape, in
/// a second field, a cookie or the query), which are never written to a log.
fn logged_path<'a>(path: &'a str, credentials: &[Bytes]) -> &'a str {
    let shown = || {
        path.len() > request_id::MAX_CHECKED_PATH
            || pipeline::query::shown_in_any_reading(path, |text| request_id::shows_any(text, credentials))
    };
    if pipeline::query::shows_secret(path) || (!credentials.is_empty() && shown()) {
        "[withheld: holds a secret's shape]"
    } else {
        path
    }
}

/// What the HTTP/1.1 loop answers itself. A head it refused before any stage saw it
/// (not HTTP/1.1 syntax, too large, a target too long) gets the gateway's error body
/// and a request id, counted and logged like any refused request. A response whose
/// body failed before a byte of it was sent is answered 502 under the request's own id
/// (`failed`, the fields of the response that broke): its access line, written when
/// the head arrived, said the backend's status, so a second line says 502, and the
/// upstream error is counted. The connection closes after either.
pub fn refuse(
    gw: &Gateway,
    conn: &ConnInfo,
    refusal: Refusal,
    failed: Option<&GatewayFields>,
) -> (Response<Body>, GatewayFields) {
    let error = match refusal {
        Refusal::Head(BadHead::Malformed) => GatewayError::BadRequest(BadRequest::MalformedHead),
        Refusal::Head(BadHead::TooLarge) => GatewayError::HeadTooLarge,
        Refusal::Head(BadHead::UriTooLong) => GatewayError::UriTooLong,
        Refusal::Head(BadHead::Fragment) => GatewayError::BadRequest(BadRequest::AmbiguousPath),
        Refusal::BrokenBody => GatewayError::BadGateway(UpstreamFailure::Protocol),
    };
    let request_id = failed.map_or_else(|| request_id::ids().next(), |f| f.request_id.clone());
    let resp = error.clone().into_response().map(proxy::full);
    match refusal {
        Refusal::BrokenBody => gw.metrics.upstream_failed(UpstreamFailure::Protocol),
        Refusal::Head(_) => gw.metrics.request(None, resp.status().as_u16(), Some(&error), Duration::ZERO),
    }
    if access_log::enabled() {
        access_log::write(&[
            ("request_id", Value::Str(request_id.to_str().unwrap_or("-"))),
            ("client", Value::Bare(conn.peer_text())),
            ("status", Value::Number(resp.status().as_u16().into())),
            ("reason", Value::Str(error.reason().name())),
            ("detail", Value::Shown(&error)),
        ]);
    }
    (resp, GatewayFields { request_id, rate: None, cors: None })
}

/// Who sent a request: its address (the socket's peer, or what trusted proxies said),
/// and that address as forwarded when it is not the peer's.
struct Client {
    ip: std::net::IpAddr,
    forwarded: Option<HeaderValue>,
}

fn header_of(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Whether a refused request gets the guard's 429 instead (`Some(seconds)`): a guess
/// while its address cools down (outside one, the guess is counted here); and while it
/// cools down, any other refusal that tells something of a credential (stale, another
/// stack's, suspended; or a valid token's later refusal) unless that credential is one
/// of the address's known ones (see `guard`): a right guess must not answer otherwise
/// than a wrong one.
fn throttled(
    gw: &Gateway,
    snap: &Snapshot,
    err: &GatewayError,
    parts: &Parts,
    facts: &Facts,
    ip: std::net::IpAddr,
) -> Option<u64> {
    if matches!(err, GatewayError::Throttled { .. }) {
        return None;
    }
    if is_guess(gw, snap, err, parts) {
        return gw.guard().guess(ip, &snap.config.guard).err();
    }
    // A missing `api_key` too: it is answered 412 only for a credential the gateway
    // knows (an unknown one is a guess), so during a cool-down it would tell which.
    let refused_credential =
        matches!(err, GatewayError::StackNotFound | GatewayError::Unauthenticated { .. } | GatewayError::TokenDisabled);
    match &facts.token {
        // Nothing is listed at work, or refused, while no address has a failure on record.
        Some(_) if !gw.guard().watching() => None,
        Some(_) => match gw.admit(ip, &snap.config.guard, gw.clock().now(), gw.known(presented_token(parts))) {
            Err(GatewayError::Throttled { retry_after }) => Some(retry_after),
            _ => None,
        },
        None if refused_credential => gw.guard().cooling(ip).err(),
        None => None,
    }
}

/// The management token a request presented, as the guard remembers it at work.
fn presented_token(parts: &Parts) -> pipeline::Presented<'_> {
    let creds = pipeline::Credentials::read(&parts.headers).ok();
    creds.and_then(|c| c.presented(false, false)).unwrap_or(pipeline::Presented::Missing)
}

/// Whether a failed request was a guess: an `api_key` that names no stack, whatever
/// credential came with it (else a valid token would learn, unslowed, which keys exist:
/// 412 for these, 401 for another stack's); or credentials that failed where neither
/// the management token nor the authtoken presented is one the gateway knows (a token
/// that expired or was deleted, a user's valid authtoken sent to the wrong stack).
fn is_guess(gw: &Gateway, snap: &Snapshot, err: &GatewayError, parts: &Parts) -> bool {
    match err {
        GatewayError::StackNotFound if parts.headers.contains_key(pipeline::auth::API_KEY) => return true,
        GatewayError::Unauthenticated { expired: false } | GatewayError::StackNotFound => {}
        _ => return false,
    }
    let known_token = parts.headers.get(http::header::AUTHORIZATION).is_some_and(|v| {
        let hash = crate::token::hash_secret(v.as_bytes().trim_ascii());
        snap.token(&hash).is_some() || gw.guard().was_revoked(&hash)
    });
    let known_user = parts
        .headers
        .get(crate::pipeline::auth::AUTHTOKEN)
        .is_some_and(|v| snap.user(&crate::token::hash_secret(v.as_bytes())).is_some());
    !(known_token || known_user)
}

/// The pipeline proper; any error is answered by the caller. An admitted
/// management-token request comes back with its rate-limit fields. The body is
/// taken out of `body` only by a stage that reads it; on failure the caller drains
/// what is left.
#[allow(clippy::too_many_arguments)]
async fn process(
    gw: &Arc<Gateway>,
    snap: &Snapshot,
    parts: &mut Parts,
    body: &mut Option<ClientBody>,
    conn: &ConnInfo,
    client: &Client,
    request_id: &HeaderValue,
    trace: Option<HeaderValue>,
    facts: &mut Facts,
    charged: &mut Option<RateInfo>,
) -> Result<(Response<Body>, Option<RateInfo>), GatewayError> {
    // A stated length of 0 holds no byte even before the end is seen (an HTTP/2 client
    // may close the stream with an empty DATA frame after its headers).
    let has_body = body.as_ref().is_some_and(|b| {
        use hyper::body::Body as _;
        !b.is_end_stream() && b.size_hint().exact() != Some(0)
    });
    let (guard, now) = (&snap.config.guard, gw.clock().now());
    facts.decided_at = now;
    let gate = |presented: pipeline::Presented<'_>| gw.gate(client.ip, guard, now, presented);
    let Decision { target, op, route, at_work } = pipeline::decide(snap, parts, has_body, now, facts, gate)?;
    if let std::borrow::Cow::Owned(path) = &target.path {
        facts.canonical = Some(path.as_str().into());
    }
    let principal = match route {
        Route::Preflight => return Ok((cors::preflight(snap.config.server.cors.as_ref(), &parts.headers), None)),
        Route::TokenApi => {
            return Ok((crate::token_api::handle(gw, parts, &target.path, body, client.ip).await?, None))
        }
        Route::Proxy { principal } => principal,
    };
    // Upstream connections serve one tenant's requests (see `proxy::Tenant`).
    let tenant = match (&principal, &at_work) {
        (Principal::Token(_), Some((digest, _))) => Some(proxy::Tenant::token(digest)),
        _ => proxy::Tenant::session(&parts.headers, target.query),
    };
    // A cooling address is answered only on the credentials it had at work (see `guard`).
    if let Principal::Token(_) = &principal {
        let who = at_work.map(|(digest, api_key)| gw.guard().known(crate::guard::Kind::Token, &digest, api_key));
        gw.admit(client.ip, guard, now, who)?;
    }
    let uri = snap.upstream.uri_for(
        &target.path,
        matches!(target.path, std::borrow::Cow::Borrowed(_)),
        target.query,
        &parts.uri,
    )?;
    let identity = match &principal {
        Principal::Token(t) => Some(Identity { token_uid: &t.uid, access: t.access_label }),
        Principal::UserSession => None,
    };
    // Stage 5, the body rules; then stage 6: a request a rule refuses spends no budget.
    // The body's share of `max_inspected_total` is held until it was forwarded.
    let (inspected, _share) = match &principal {
        Principal::Token(_) if op.needs_body() => {
            let holder = gw.inspecting().share(tenant.map_or(0, proxy::Tenant::id));
            let (bytes, share) = inspect(holder, snap, parts, body, &op).await?;
            (Some(bytes), Some(share))
        }
        _ => (None, None),
    };
    let limit = snap.config.server.limits.max_request_body;
    if inspected.is_none() && declared_length(parts).is_some_and(|len| len > limit) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let body_state = BodyState::default();
    // The first frame is read before the budget is charged, so that a body refused
    // from its start spends none.
    let outbound = match inspected {
        Some(bytes) => Outbound::Bytes(bytes),
        None => {
            let taken = body.take().unwrap_or(ClientBody::Empty);
            let mut streamed = Streamed::new(taken, limit, body_state.clone());
            streamed.prefetch(snap.config.server.limits.idle_timeout).await?;
            // A management-token body that states no type (the body rules refused every
            // other unreadable type) may pass only if it holds nothing: Rack reads a POST
            // body without a type as a form. An HTTP/2 client may end a bodiless request
            // with an empty DATA frame, and an HTTP/1.1 one may send an empty chunked
            // body: their first frame tells. (Bodiless requests skip the field lookup.)
            let token = matches!(principal, Principal::Token(_));
            if token && streamed.holds_bytes() && !parts.headers.contains_key(CONTENT_TYPE) {
                return Err(GatewayError::UnsupportedBodyType);
            }
            streamed.into_outbound()
        }
    };
    let rate = match &principal {
        Principal::Token(token) => gw.limiter.charge(token.payer(), &op).await?,
        Principal::UserSession => None,
    };

    if parts.version == http::Version::HTTP_2 {
        proxy::join_cookies(&mut parts.headers);
    }
    let added = prepare_request_headers(
        &mut parts.headers,
        client.forwarded.as_ref().unwrap_or(&conn.peer_ip),
        conn.https,
        request_id,
        identity,
        snap.settings.forward_token,
        trace,
    );
    let mut forwarded = std::mem::replace(parts, Request::new(()).into_parts().0);
    forwarded.uri = uri;
    let slot = (forwarded.version != http::Version::HTTP_2).then_some(&conn.upstream);
    match snap.upstream.send(slot, tenant, forwarded, &added, outbound, &body_state).await {
        Ok(upstream_resp) => Ok((upstream_resp.map(Either::Left), rate)),
        Err(err) => {
            *charged = rate;
            Err(err)
        }
    }
}

fn declared_length(parts: &Parts) -> Option<u64> {
    parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
}

/// Stage 5: reads the body a rule depends on and applies the rule. The rule reads the
/// body as JSON, so must the backend: a form body can be valid JSON and mean something
/// else to a form parser, and a coded body (`Content-Encoding: gzip`) is other bytes
/// to a backend that decodes it (415).
async fn inspect(
    mut share: Share,
    snap: &Snapshot,
    parts: &Parts,
    body: &mut Option<ClientBody>,
    op: &pipeline::Operation,
) -> Result<(Bytes, Share), GatewayError> {
    let bytes = read_inspected(&mut share, snap, parts, body).await?;
    if !bytes.is_empty() && !crate::json::declares_json(&parts.headers) {
        return Err(GatewayError::UnsupportedMediaType);
    }
    pipeline::inspect_body(op, &bytes)?;
    Ok((bytes, share))
}

/// Buffers a body that a rule must read, up to `max_inspected_body`, taking what it
/// holds from the budget all such bodies share (`max_inspected_total`: 503 when it, or
/// the token's part of it, is spent). The body stays in `body` (for the caller to
/// drain) when it is refused by its declared length.
async fn read_inspected(
    share: &mut Share,
    snap: &Snapshot,
    parts: &Parts,
    body: &mut Option<ClientBody>,
) -> Result<Bytes, GatewayError> {
    let limit = snap.settings.max_inspected_body;
    let cap = BodyCap { total: snap.settings.max_inspected_total, body: limit };
    if declared_length(parts).is_some_and(|len| len > limit) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut read = Limited::new(body.take().unwrap_or(ClientBody::Empty), limit);
    // As for a streamed body, the client may pause for up to `idle_timeout` (408).
    let pause = snap.config.server.limits.idle_timeout;
    let mut gathered = Gathered::default();
    loop {
        match tokio::time::timeout(pause, read.frame()).await {
            Err(_) => return Err(GatewayError::RequestTimeout),
            Ok(None) => return Ok(gathered.into_bytes()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    // What arrived, not what was declared (see `server::inspecting`).
                    if !share.grow(data.len() as u64, cap) {
                        return Err(GatewayError::Busy);
                    }
                    gathered.push(data);
                }
            }
            Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(GatewayError::PayloadTooLarge)
            }
            Ok(Some(Err(e))) => return Err(crate::proxy::unreadable(&*e)),
        }
    }
}

/// A body read frame by frame. A body in one frame (what the HTTP/1.1 loop read whole
/// with its head, most HTTP/2 bodies) is kept as it came; only a second frame makes a
/// buffer that joins them.
#[derive(Default)]
struct Gathered {
    first: Bytes,
    joined: Option<bytes::BytesMut>,
}

impl Gathered {
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match &mut self.joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let mut joined = bytes::BytesMut::with_capacity(self.first.len() + data.len());
                joined.extend_from_slice(&self.first);
                joined.extend_from_slice(&data);
                self.joined = Some(joined);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        self.joined.map_or(self.first, bytes::BytesMut::freeze)
    }
}

#[cfg(test)]
mod tests {
    use super::{cors, GatewayFields, Gathered};
    use crate::rate_fields::RateInfo;
    use http::HeaderValue;

    /// `MOST` bounds what the gateway adds to a response (the map is sized with it):
    /// every field at once, rate limits and CORS with credentials, exposed fields
    /// and `Vary`.
    #[test]
    fn most_bounds_the_fields_the_gateway_adds() {
        let fields = GatewayFields {
            request_id: HeaderValue::from_static("r"),
            rate: Some(RateInfo {
                name: "org-read",
                limit: 10,
                remaining: 5_000,
                reset: 1,
                policy: HeaderValue::from_static("p"),
                limit_header: HeaderValue::from_static("10"),
            }),
            cors: Some(cors::Fields::Allowed {
                origin: HeaderValue::from_static("https://a.example"),
                credentials: true,
                expose: Some(HeaderValue::from_static("x-request-id")),
                vary: true,
            }),
        };
        let mut count = 0;
        crate::http1::server::AddedFields::each(&fields, &mut |_, _| count += 1);
        assert_eq!(count, GatewayFields::MOST);
    }

    /// Frames are joined in order, empty ones skipped; one frame is kept as it came.
    #[test]
    fn a_body_is_gathered_in_order() {
        let mut one = Gathered::default();
        let frame = bytes::Bytes::from_static(b"{\"entry\":{}}");
        one.push(bytes::Bytes::new());
        one.push(frame.clone());
        one.push(bytes::Bytes::new());
        let kept = one.into_bytes();
        assert_eq!((kept.as_ptr(), kept.len()), (frame.as_ptr(), frame.len()));
        let mut many = Gathered::default();
        for part in ["{\"a\"", "", ":1", ",\"b\":2}"] {
            many.push(bytes::Bytes::from(part));
        }
        assert_eq!(&many.into_bytes()[..], b"{\"a\":1,\"b\":2}");
        assert!(Gathered::default().into_bytes().is_empty());
    }
}

//! The direct path to a plain-HTTP upstream: each HTTP/1 client connection keeps its
//! own upstream connection; HTTP/2 client streams borrow one from an idle list (per thread).
//!
//! An HTTP/1 client connection's requests are sequential (hyper's server answers one
//! before reading the next), so one upstream connection per client connection is all
//! it can use. The request is written and the response read inline by `http1::client`, in the
//! client connection's own task: no pool lookup, no connection task, no channel
//! between them. A response body that arrived with its head (the usual small one)
//! releases the connection at once; a longer one takes it along and puts it back in
//! the slot when read to its end. When the client connection closes, its upstream
//! connection goes to a small idle list (its thread's) for the next client connection, so
//! clients that open a connection per request still reuse upstream connections.
//! HTTP/2 client streams run concurrently, so they have no slot: each takes an
//! upstream connection from the idle list (or opens one) and puts it back when its
//! response is read to the end. An https upstream's connections are the same, over
//! TLS; one whose ALPN chose HTTP/2 is handed to `h2.rs`.

use super::headers::replaced_by_gateway;
use super::{Outbound, RequestRewrite, Streamed};
use crate::error::{GatewayError, UpstreamFailure};
use crate::http1::client::{
    Conn, Fields, Limits, Outgoing, Records, RequestHead, ResponseBody, SendError, Stray, Transport,
};
use crate::telemetry::Throttle;
use http::{HeaderValue, Response};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// Idle upstream connections, at most this many per thread: enough for the streams of
/// four HTTP/2 clients at their limit (256 each), since every stream hands its
/// connection back after its answer and takes one for its next request; a cap below
/// the requests in flight closes a connection per answer and opens one per request.
/// About 10 KiB of buffers each.
const MAX_IDLE: usize = 1024;

/// The idle list's size per thread: [`MAX_IDLE`], or less under an open-file limit
/// that cannot hold that many beside the clients and their own upstream connections
/// (see [`cap_idle_per_thread`]).
static IDLE_CAP: AtomicUsize = AtomicUsize::new(MAX_IDLE);

/// Holds each thread's idle list to `n` connections (at most [`MAX_IDLE`], at least
/// one), set once at start from the open-file limit.
pub fn cap_idle_per_thread(n: usize) {
    IDLE_CAP.store(n.clamp(1, MAX_IDLE), Ordering::Relaxed);
}

/// How long a request that found no file descriptor for a new upstream connection
/// waits before it looks again.
const DESCRIPTOR_WAIT: Duration = Duration::from_millis(20);

/// How long a tenant's connections are not reused once its backend sent bytes no
/// request asked for (see [`IdleList::stray`]).
const STRAY_COOL_DOWN: Duration = Duration::from_secs(10);

/// Cool-downs begun (see [`IdleList::stray`]; exported as a metric).
pub static STRAY_COOL_DOWNS: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// Upstream connections opened, HTTP/2 ones included (exported as a metric): how
/// often a request found none to reuse (a new client connection or tenant, a sign-in,
/// a cool-down, a backend that closed its idle connections).
pub static CONNECTIONS_OPENED: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// Idle upstream connections closed because their thread's idle list was full
/// (exported as a metric; see [`Pool::keep`]).
pub static IDLE_EVICTIONS: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// Whose requests an upstream connection carries: a management token (by its secret's
/// digest) or a user session (by its credentials, hashed with a key of this process).
/// A connection serves one tenant's requests only. A backend that answers what it was
/// not asked (a response too many, a HEAD answer with a body) puts bytes on the
/// connection that the next request on it reads as its answer if they arrive after it
/// went out, which no HTTP/1.1 client can tell; kept to one tenant, such an answer
/// reaches the tenant whose request caused it, never another stack's or token's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant(u64);

impl Tenant {
    /// A management token, by the SHA-256 of its secret.
    pub fn token(digest: &[u8; 32]) -> Tenant {
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Tenant(u64::from_le_bytes(first))
    }

    /// The tenant as a number (what other per-tenant bounds key on).
    pub fn id(self) -> u64 {
        self.0
    }

    /// A user session, by every credential the backend may read: `authtoken` and
    /// `authorization`, fields and query keys named like a user credential or a
    /// session (`x-auth-token`, `access_token`, `x-session-id`, `?user_id=`, ...:
    /// `field_names::may_tell_sessions_apart`), and cookies, all forwarded as they
    /// came (a backend behind one shared `authtoken` may tell people apart by a cookie
    /// or a session field). `None` for a request without `authtoken` or
    /// `authorization` (a sign-in): such requests are no one tenant, and each takes a
    /// connection of its own, closed after its answer (one person's sign-in answer
    /// must never reach another's).
    pub fn session(headers: &http::HeaderMap, query: Option<&str>) -> Option<Tenant> {
        static KEYS: std::sync::LazyLock<std::hash::RandomState> = std::sync::LazyLock::new(Default::default);
        let signed_in = [crate::field_names::AUTHTOKEN, "authorization"]
            .iter()
            .any(|name| headers.get_all(*name).iter().any(|v| !v.as_bytes().trim_ascii().is_empty()));
        if !signed_in {
            return None;
        }
        let mut hasher = KEYS.build_hasher();
        for (name, value) in headers {
            let name = name.as_str();
            let credential = name == "authorization"
                || name == "cookie"
                || crate::field_names::may_tell_sessions_apart(name.as_bytes());
            if credential {
                (name, value.as_bytes()).hash(&mut hasher);
            }
        }
        crate::pipeline::query::each_credential(query, |key, value| (key, value).hash(&mut hasher));
        Some(Tenant(hasher.finish()))
    }
}

/// Idle upstream connections of one upstream configuration, one pool per thread.
/// Kept boxed: a connection leaves and returns as the same box, never re-allocated.
/// Per thread because `stackgate run` serves each client connection on one thread
/// (thread per core): a connection stays with the runtime whose reactor it is
/// registered with, and taking one is a borrow of this thread's pool, not a lock.
#[derive(Default)]
pub struct IdleList {
    pools: thread_local::ThreadLocal<RefCell<Pool>>,
    /// Tenants whose connections are not reused until then (see [`IdleList::stray`]),
    /// on every thread: the backend is the same.
    cooling: Mutex<Vec<(Tenant, Instant)>>,
    /// Their number, so that while there are none (nearly always) checking a tenant's
    /// is one load.
    cooling_count: AtomicUsize,
}

/// One thread's idle connections, oldest first, each with the tenant it serves. Taken
/// oldest first: a connection that has been idle longest has had the most time to show
/// (to the probe in [`Pool::take`]) anything its backend sent after its last response.
#[derive(Default)]
struct Pool(VecDeque<(Tenant, Box<Conn>)>);

impl Pool {
    /// This tenant's oldest idle connection that can take a request, or the news that
    /// one held bytes no request asked for.
    fn take(&mut self, tenant: Tenant) -> Result<Option<Box<Conn>>, Stray> {
        while let Some(at) = self.0.iter().position(|(t, _)| *t == tenant) {
            let Some((_, mut conn)) = self.0.remove(at) else { break };
            if conn.is_reusable()? {
                return Ok(Some(conn));
            }
        }
        Ok(None)
    }

    /// Keeps a connection for later; the tenant whose connection, freeing a place, held
    /// bytes no request asked for. When the list is full the oldest goes (kept, a flood
    /// of tenants that never come back, credentials made up for a user-session path,
    /// would hold every place and leave none for the tenants that do): probed first,
    /// so that a stray on it still cools its tenant and one the backend closed is not
    /// counted as evicted. One probe, not a sweep of the list: once the
    /// requests in flight outnumber the places, every answer finds the list full, and
    /// a sweep each time cost a probe per idle connection (a thousand HTTP/2 streams in
    /// flight made 45 `recv` calls per request).
    fn keep(&mut self, tenant: Tenant, conn: Box<Conn>) -> Option<Tenant> {
        let mut strayed = None;
        if self.0.len() >= IDLE_CAP.load(Ordering::Relaxed) {
            if let Some((t, mut oldest)) = self.0.pop_front() {
                match oldest.is_reusable() {
                    Ok(true) => {
                        IDLE_EVICTIONS.inc();
                    }
                    Ok(false) => {}
                    Err(Stray) => strayed = Some(t),
                }
            }
        }
        // Probed when taken, not here: once per reuse is enough.
        if strayed != Some(tenant) {
            self.0.push_back((tenant, conn));
        }
        strayed
    }
}

impl IdleList {
    fn with<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
        let mut pool = self.pools.get_or_default().try_borrow_mut().ok()?;
        Some(f(&mut pool))
    }

    fn pop(&self, tenant: Tenant) -> Option<Box<Conn>> {
        match self.with(|pool| pool.take(tenant))? {
            Ok(conn) => conn,
            Err(Stray) => {
                self.stray(tenant);
                None
            }
        }
    }

    fn push(&self, tenant: Tenant, conn: Box<Conn>) {
        if !self.reusing(tenant) {
            return;
        }
        if let Some(strayed) = self.with(|pool| pool.keep(tenant, conn)).flatten() {
            self.stray(strayed);
        }
    }

    /// A backend that sent one answer no request asked for may send more, each
    /// arriving after the next request went out on that connection, so that every
    /// later answer on it would be the previous request's: an outside probe saw one
    /// late response shift dozens under load. So once a stray is seen on a tenant's
    /// connection, its idle connections (on this thread; others are probed when taken)
    /// are closed and none is reused for [`STRAY_COOL_DOWN`]: each of its requests
    /// opens its own until then. Other tenants keep theirs: one tenant's requests
    /// cannot take the others' reuse away.
    fn stray(&self, tenant: Tenant) {
        self.with(|pool| pool.0.retain(|(t, _)| *t != tenant));
        let Ok(mut cooling) = self.cooling.lock() else { return };
        let until = Instant::now() + STRAY_COOL_DOWN;
        if let Some((_, end)) = cooling.iter_mut().find(|(t, _)| *t == tenant) {
            *end = until;
            return;
        }
        cooling.push((tenant, until));
        self.cooling_count.fetch_add(1, Ordering::Relaxed);
        STRAY_COOL_DOWNS.inc();
        tracing::warn!(
            cool_down = ?STRAY_COOL_DOWN,
            "the backend sent bytes no request asked for: this tenant's connections are not reused for a while"
        );
    }

    /// Whether a tenant's connections may be reused (it is not cooling).
    fn reusing(&self, tenant: Tenant) -> bool {
        if self.cooling_count.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let Ok(mut cooling) = self.cooling.lock() else { return false };
        let (now, before) = (Instant::now(), cooling.len());
        cooling.retain(|(_, until)| *until > now);
        self.cooling_count.fetch_sub(before - cooling.len(), Ordering::Relaxed);
        !cooling.iter().any(|(t, _)| *t == tenant)
    }

    /// What a response's end hands back: the connection, kept (in `slot` or the pool)
    /// unless its tenant is cooling, or the news of a stray.
    fn released(self: &Arc<Self>, slot: Option<&UpstreamSlot>, tenant: Tenant, released: Result<Box<Conn>, Stray>) {
        match released {
            Ok(conn) if self.reusing(tenant) => match slot {
                Some(slot) => slot.put(conn, self, tenant),
                None => self.push(tenant, conn),
            },
            Ok(_) => {}
            Err(Stray) => self.stray(tenant),
        }
    }
}

/// One client connection's upstream connection, tagged with the idle list (that is,
/// the upstream configuration) it belongs to and the tenant it serves: after a reload
/// that changes the upstream, a connection to the old one is never used again, and a
/// request of another tenant on the same client connection takes another connection.
/// Shared with the response body still being read, which puts the connection back when
/// it ends.
#[derive(Default, Clone)]
pub struct UpstreamSlot(Arc<SlotCell>);

#[derive(Default)]
struct SlotCell(Mutex<Option<Held>>);

/// A slot's connection, the idle list it belongs to and the tenant it serves.
struct Held {
    conn: Box<Conn>,
    list: Arc<IdleList>,
    tenant: Tenant,
}

impl UpstreamSlot {
    fn take(&self, owner: &Arc<IdleList>, tenant: Tenant) -> Option<Box<Conn>> {
        let Held { mut conn, list, tenant: tag } = self.0 .0.lock().ok()?.take()?;
        if !Arc::ptr_eq(&list, owner) {
            return None;
        }
        if tag != tenant {
            owner.push(tag, conn);
            return None;
        }
        match conn.is_reusable() {
            Ok(reusable) => reusable.then_some(conn),
            Err(Stray) => {
                owner.stray(tenant);
                None
            }
        }
    }

    fn put(&self, conn: Box<Conn>, owner: &Arc<IdleList>, tenant: Tenant) {
        if let Ok(mut slot) = self.0 .0.lock() {
            *slot = Some(Held { conn, list: Arc::clone(owner), tenant });
        }
    }
}

impl Drop for SlotCell {
    /// The client connection is gone (and no body is still being read): its upstream
    /// connection serves the same tenant's next client connection.
    fn drop(&mut self) {
        if let Some(Held { conn, list, tenant }) = self.0.get_mut().ok().and_then(Option::take) {
            list.push(tenant, conn);
        }
    }
}

impl std::fmt::Debug for UpstreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamSlot")
    }
}

/// The direct path's settings for one upstream: plain HTTP, or https to a backend that
/// speaks HTTP/1.1 (a connection whose ALPN chooses HTTP/2 is handed to `h2.rs`,
/// whose streams cannot carry another request's answer).
#[derive(Clone)]
pub struct Direct {
    host: String,
    port: u16,
    /// `Host` as sent to the backend, built once.
    host_header: HeaderValue,
    connect_timeout: Duration,
    tls: Option<Tls>,
    idle: Arc<IdleList>,
    /// When a failed connect was last logged (see `log_connect_failure`).
    failure_logged: Arc<Throttle>,
}

/// How an https upstream's connections are opened.
#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

/// A new connection: HTTP/1.1, or one whose ALPN chose HTTP/2.
pub(super) enum Opened {
    Http1(Box<Conn>),
    Http2(Box<TlsStream<Records>>),
}

/// What [`Direct::send`] did.
// `Answered`, the common case, is returned by value once per request; boxing it would
// allocate on the hot path to spare a move of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum Sent {
    /// The backend answered over HTTP/1.1.
    Answered(Response<ResponseBody>, Fields),
    /// A new connection found that the backend chose HTTP/2 through ALPN: nothing was
    /// sent, and the connection is the caller's to speak HTTP/2 on.
    Http2(Box<TlsStream<Records>>),
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Direct {
    /// The direct path to `authority`, over TLS with `tls` (an https upstream; ALPN
    /// offers `h2` and `http/1.1`, so that a backend preferring HTTP/2 is known).
    pub fn new(
        authority: &http::uri::Authority,
        connect_timeout: Duration,
        tls: Option<rustls::ClientConfig>,
    ) -> Option<Direct> {
        let default_port = if tls.is_some() { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let host_header = match port == default_port {
            true => HeaderValue::from_str(authority.host()).ok()?,
            false => HeaderValue::from_str(&format!("{}:{port}", authority.host())).ok()?,
        };
        // `[::1]` -> `::1` for the socket address.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = match tls {
            None => None,
            Some(mut config) => {
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Some(Tls {
                    connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                    name: rustls::pki_types::ServerName::try_from(host.clone()).ok()?,
                })
            }
        };
        let failure_logged = Arc::default();
        Some(Direct { host, port, host_header, connect_timeout, tls, idle: Arc::default(), failure_logged })
    }

    /// Sends the request on the slot's connection (or an idle one, or a new one); with
    /// no slot (an HTTP/2 stream) the connection goes back to the idle list after the
    /// response.
    /// A request that met a connection the backend had closed goes again on another
    /// connection only if not one byte of it was written (the backend cannot have seen
    /// it) and its body is held in full; once anything was written it is never sent
    /// again, whatever its method. The backend has `limits.backend` to connect, to take
    /// each part of the request and to answer once it has all of it (504 otherwise);
    /// the client has `limits.client` to send each part of its body (408 otherwise).
    /// A new connection whose ALPN chose HTTP/2 is handed back unused ([`Sent::Http2`]).
    pub async fn send(
        &self,
        slot: Option<&UpstreamSlot>,
        tenant: Option<Tenant>,
        parts: &http::request::Parts,
        rewrite: &RequestRewrite,
        body: &mut Outbound,
        limits: Limits,
    ) -> Result<Sent, GatewayError> {
        let start = Instant::now();
        let deadline = start + limits.backend;
        let head = RequestHead {
            method: &parts.method,
            target: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            host: &self.host_header,
            fields: || rewrite.fields(&parts.headers),
            declared_length: parts.headers.contains_key(http::header::CONTENT_LENGTH),
            close: tenant.is_none(),
        };
        let mut fresh = false;
        loop {
            let reusing = tenant.filter(|&tenant| self.idle.reusing(tenant));
            let idle = |tenant| slot.and_then(|slot| slot.take(&self.idle, tenant)).or_else(|| self.idle.pop(tenant));
            let mut conn = match reusing.and_then(idle) {
                Some(conn) => conn,
                None => {
                    fresh = true;
                    match self.connect(deadline).await? {
                        Some(Opened::Http1(conn)) => conn,
                        Some(Opened::Http2(tls)) => return Ok(Sent::Http2(tls)),
                        // Out of descriptors: another request's connection comes back
                        // idle, or one closes, soon (the connection cap and the idle
                        // lists are sized to the limit). Still waiting at the deadline,
                        // the request timed out, as one its backend did not answer.
                        None => {
                            tokio::time::sleep_until(deadline.min(Instant::now() + DESCRIPTOR_WAIT)).await;
                            if Instant::now() >= deadline {
                                return Err(GatewayError::GatewayTimeout);
                            }
                            continue;
                        }
                    }
                }
            };
            let outgoing = match body {
                Outbound::Bytes(bytes) => Outgoing::Bytes(bytes),
                Outbound::Stream(stream) => Outgoing::Stream(stream, exact_length(stream)),
            };
            match conn.exchange(&head, outgoing, limits, start).await {
                Ok((head, fields, framing, keep)) => {
                    let (slot, idle) = (slot.cloned(), Arc::clone(&self.idle));
                    let release = move |released| {
                        if let Some(tenant) = tenant {
                            idle.released(slot.as_ref(), tenant, released);
                        }
                    };
                    let body = ResponseBody::new(conn, framing, keep, limits.backend, release)
                        .map_err(|_| GatewayError::BadGateway(UpstreamFailure::Protocol))?;
                    return Ok(Sent::Answered(head.map(|()| body), fields));
                }
                // Nothing of it was written: it goes again, on another connection.
                Err(SendError::Unsent) if !fresh && matches!(body, Outbound::Bytes(_)) => {}
                Err(SendError::TimedOut) => return Err(GatewayError::GatewayTimeout),
                Err(SendError::ClientStalled) => return Err(GatewayError::RequestTimeout),
                Err(_) => return Err(GatewayError::BadGateway(UpstreamFailure::Protocol)),
            }
        }
    }

    /// A new connection (its TLS handshake included), within the connect timeout and
    /// the request's deadline.
    /// `Ok(None)` when the process is out of file descriptors: the caller waits for one
    /// of its connections to come back idle, or a descriptor to free.
    pub(super) async fn connect(&self, deadline: Instant) -> Result<Option<Opened>, GatewayError> {
        let give_up = deadline.min(Instant::now() + self.connect_timeout);
        match tokio::time::timeout_at(give_up, self.open()).await {
            Ok(Ok(opened)) => Ok(Some(opened)),
            Err(_) if give_up == deadline => Err(GatewayError::GatewayTimeout),
            Ok(Err(e)) if out_of_descriptors(&e) => {
                let why =
                    format!("{e}: requests wait for a connection to come back or close (see the open-file limit)");
                log_connect_failure(&why, &self.failure_logged);
                Ok(None)
            }
            Ok(Err(e)) => {
                log_connect_failure(&e.to_string(), &self.failure_logged);
                Err(GatewayError::BadGateway(UpstreamFailure::Connect))
            }
            Err(_) => {
                let why =
                    format!("no connection (and TLS handshake) within connect_timeout, {:?}", self.connect_timeout);
                log_connect_failure(&why, &self.failure_logged);
                Err(GatewayError::BadGateway(UpstreamFailure::Connect))
            }
        }
    }

    /// Opens a connection (TCP_NODELAY: heads and bodies are written whole).
    async fn open(&self) -> std::io::Result<Opened> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        CONNECTIONS_OPENED.inc();
        let _ = tcp.set_nodelay(true);
        let transport = match &self.tls {
            None => Transport::Plain(tcp),
            Some(tls) => {
                let stream = tls.connector.connect(tls.name.clone(), Records::new(tcp)).await?;
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    return Ok(Opened::Http2(Box::new(stream)));
                }
                Transport::Tls(Box::new(stream))
            }
        };
        Ok(Opened::Http1(Conn::new(transport, replaced_by_gateway)))
    }
}

/// Says why the backend could not be reached (refused, or its TLS certificate not
/// for its name, expired, of an unknown CA: rustls's reason, which names no secret),
/// at most once every 10 seconds per upstream: the access line of each request says only
/// `bad gateway: connect`, and an operator needs the reason once, not per request.
fn log_connect_failure(why: &str, logged: &Throttle) {
    if logged.allow() {
        // Debug-quoted: a certificate's names in rustls's reason come from the peer.
        tracing::warn!(error = ?why, "could not connect to the backend (said at most once every 10 s)");
    }
}

/// Whether a connect failed for want of a file descriptor (the process's or the
/// system's limit): not the backend's failure, and over once connections close.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    return matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// The body's length, when the client declared it (`Content-Length`).
fn exact_length(body: &Streamed) -> Option<u64> {
    hyper::body::Body::size_hint(body).exact()
}

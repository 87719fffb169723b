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
//! response is read to the end. https upstreams keep the pooled client.

use super::headers::replaced_by_gateway;
use super::{Outbound, RequestRewrite, Streamed};
use crate::error::{GatewayError, UpstreamFailure};
use crate::http1::client::{Conn, Fields, Limits, Outgoing, RequestHead, ResponseBody, SendError, Stray};
use http::{HeaderValue, Response};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Upstream connections handed back by closed client connections, at most this many per thread.
const MAX_IDLE: usize = 256;

/// How long no connection to a backend is reused once it sent bytes no request asked
/// for (see [`IdleList::stray`]).
const STRAY_COOL_DOWN: Duration = Duration::from_secs(10);

/// Idle upstream connections of one upstream configuration, one list per thread.
/// Kept boxed: a connection leaves and returns as the same box, never re-allocated.
/// Per thread because `stackgate run` serves each client connection on one thread
/// (thread per core): a connection stays with the runtime whose reactor it is
/// registered with, and taking one is a borrow of this thread's list, not a lock.
/// Taken oldest first: a connection that has been idle longest has had the most time
/// to show (to the probe in `pop`) anything its backend sent after its last response.
pub struct IdleList {
    lists: thread_local::ThreadLocal<RefCell<VecDeque<Box<Conn>>>>,
    /// Until when (milliseconds after `epoch`; 0: no cool-down) no connection is reused.
    reuse_after: AtomicU64,
    epoch: Instant,
}

impl Default for IdleList {
    fn default() -> Self {
        IdleList { lists: Default::default(), reuse_after: AtomicU64::new(0), epoch: Instant::now() }
    }
}

impl IdleList {
    fn pop(&self) -> Option<Box<Conn>> {
        let mut list = self.lists.get_or_default().try_borrow_mut().ok()?;
        while let Some(mut conn) = list.pop_front() {
            match conn.is_reusable() {
                Ok(true) => return Some(conn),
                Ok(false) => {}
                Err(Stray) => {
                    drop(list);
                    self.stray();
                    return None;
                }
            }
        }
        None
    }

    /// Keeps a connection for later. Connections the backend closed meanwhile are
    /// swept out only when the list is full: HTTP/2 streams return a connection after
    /// every response, and a sweep each time would cost a probe per idle connection.
    fn push(&self, conn: Box<Conn>) {
        if !self.reusing() {
            return;
        }
        if let Ok(mut list) = self.lists.get_or_default().try_borrow_mut() {
            let mut strayed = false;
            if list.len() >= MAX_IDLE {
                list.retain_mut(|conn| {
                    conn.is_reusable().unwrap_or_else(|Stray| std::mem::replace(&mut strayed, true))
                });
            }
            // Probed when taken (`pop`), not here: once per reuse is enough.
            if list.len() < MAX_IDLE && !strayed {
                list.push_back(conn);
            }
            drop(list);
            if strayed {
                self.stray();
            }
        }
    }

    /// A backend that sent one response no request asked for may send more, each
    /// arriving after the next request went out on that connection (no HTTP/1.1
    /// client can tell those from its answer), so that every later answer on it is
    /// the previous request's, another client's: an outside probe saw one late
    /// response shift dozens under load. So once a stray is seen, this thread's idle
    /// connections are closed and none is reused for [`STRAY_COOL_DOWN`]: every
    /// request opens its own until then, and a response reaches the request that
    /// opened the connection.
    fn stray(&self) {
        let now = self.epoch.elapsed();
        let until = u64::try_from((now + STRAY_COOL_DOWN).as_millis()).unwrap_or(u64::MAX);
        let before = self.reuse_after.swap(until, Ordering::Relaxed);
        if let Ok(mut list) = self.lists.get_or_default().try_borrow_mut() {
            list.clear();
        }
        // Once per cool-down, not once per stray.
        if u128::from(before) <= now.as_millis() {
            tracing::warn!(
                cool_down = ?STRAY_COOL_DOWN,
                "the backend sent bytes no request asked for: its connections are not reused for a while"
            );
        }
    }

    /// Whether connections may be reused (no cool-down, or it has passed). One relaxed
    /// load per request; the clock is read only during and after a cool-down.
    fn reusing(&self) -> bool {
        let until = self.reuse_after.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let passed = u128::from(until) <= self.epoch.elapsed().as_millis();
        if passed {
            let _ = self.reuse_after.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        passed
    }

    /// What a response's end hands back: the connection, kept (in `slot` or this
    /// list) while reusing, or the news of a stray.
    fn released(self: &Arc<Self>, slot: Option<&UpstreamSlot>, released: Result<Box<Conn>, Stray>) {
        match released {
            Ok(conn) if self.reusing() => match slot {
                Some(slot) => slot.put(conn, self),
                None => self.push(conn),
            },
            Ok(_) => {}
            Err(Stray) => self.stray(),
        }
    }
}

/// One client connection's upstream connection, tagged with the idle list (that is,
/// the upstream configuration) it belongs to: after a reload that changes the
/// upstream, a connection to the old one is never used again. Shared with the
/// response body still being read, which puts the connection back when it ends.
#[derive(Default, Clone)]
pub struct UpstreamSlot(Arc<SlotCell>);

#[derive(Default)]
struct SlotCell(Mutex<Option<(Box<Conn>, Arc<IdleList>)>>);

impl UpstreamSlot {
    fn take(&self, owner: &Arc<IdleList>) -> Option<Box<Conn>> {
        let (mut conn, tag) = self.0 .0.lock().ok()?.take()?;
        if !Arc::ptr_eq(&tag, owner) {
            return None;
        }
        match conn.is_reusable() {
            Ok(reusable) => reusable.then_some(conn),
            Err(Stray) => {
                owner.stray();
                None
            }
        }
    }

    fn put(&self, conn: Box<Conn>, owner: &Arc<IdleList>) {
        if let Ok(mut slot) = self.0 .0.lock() {
            *slot = Some((conn, Arc::clone(owner)));
        }
    }
}

impl Drop for SlotCell {
    /// The client connection is gone (and no body is still being read): its upstream
    /// connection serves the next client connection.
    fn drop(&mut self) {
        if let Some((conn, idle)) = self.0.get_mut().ok().and_then(Option::take) {
            idle.push(conn);
        }
    }
}

impl std::fmt::Debug for UpstreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamSlot")
    }
}

/// The direct path's settings for one plain-HTTP upstream.
#[derive(Clone)]
pub struct Direct {
    host: String,
    port: u16,
    /// `Host` as sent to the backend, built once.
    host_header: HeaderValue,
    connect_timeout: Duration,
    idle: Arc<IdleList>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Direct {
    pub fn new(authority: &http::uri::Authority, connect_timeout: Duration) -> Option<Direct> {
        let port = authority.port_u16().unwrap_or(80);
        let host_header = match port {
            80 => HeaderValue::from_str(authority.host()).ok()?,
            _ => HeaderValue::from_str(&format!("{}:{port}", authority.host())).ok()?,
        };
        // `[::1]` -> `::1` for the socket address.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        Some(Direct { host, port, host_header, connect_timeout, idle: Arc::default() })
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
    pub async fn send(
        &self,
        slot: Option<&UpstreamSlot>,
        parts: &http::request::Parts,
        rewrite: &RequestRewrite,
        mut body: Outbound,
        limits: Limits,
    ) -> Result<(Response<ResponseBody>, Fields), GatewayError> {
        let start = Instant::now();
        let deadline = start + limits.backend;
        let head = RequestHead {
            method: &parts.method,
            target: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            host: &self.host_header,
            fields: || rewrite.fields(&parts.headers),
            declared_length: parts.headers.contains_key(http::header::CONTENT_LENGTH),
        };
        let mut fresh = false;
        loop {
            let idle = || slot.and_then(|slot| slot.take(&self.idle)).or_else(|| self.idle.pop());
            let mut conn = match self.idle.reusing().then(idle).flatten() {
                Some(conn) => conn,
                None => {
                    fresh = true;
                    self.connect(deadline).await?
                }
            };
            let outgoing = match &mut body {
                Outbound::Bytes(bytes) => Outgoing::Bytes(bytes),
                Outbound::Stream(stream) => Outgoing::Stream(stream, exact_length(stream)),
            };
            match conn.exchange(&head, outgoing, limits, start).await {
                Ok((head, fields, framing, keep)) => {
                    let (slot, idle) = (slot.cloned(), Arc::clone(&self.idle));
                    let release = move |released| idle.released(slot.as_ref(), released);
                    let body = ResponseBody::new(conn, framing, keep, limits.backend, release)
                        .map_err(|_| GatewayError::BadGateway(UpstreamFailure::Protocol))?;
                    return Ok((head.map(|()| body), fields));
                }
                // Nothing of it was written: it goes again, on another connection.
                Err(SendError::Unsent) if !fresh && matches!(body, Outbound::Bytes(_)) => {}
                Err(SendError::TimedOut) => return Err(GatewayError::GatewayTimeout),
                Err(SendError::ClientStalled) => return Err(GatewayError::RequestTimeout),
                Err(_) => return Err(GatewayError::BadGateway(UpstreamFailure::Protocol)),
            }
        }
    }

    /// A new connection, within the connect timeout and the request's deadline.
    async fn connect(&self, deadline: Instant) -> Result<Box<Conn>, GatewayError> {
        let give_up = deadline.min(Instant::now() + self.connect_timeout);
        match tokio::time::timeout_at(give_up, Conn::connect(&self.host, self.port, replaced_by_gateway)).await {
            Ok(Ok(conn)) => Ok(conn),
            Err(_) if give_up == deadline => Err(GatewayError::GatewayTimeout),
            Ok(Err(_)) | Err(_) => Err(GatewayError::BadGateway(UpstreamFailure::Connect)),
        }
    }
}

/// The body's length, when the client declared it (`Content-Length`).
fn exact_length(body: &Streamed) -> Option<u64> {
    hyper::body::Body::size_hint(body).exact()
}

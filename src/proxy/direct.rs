//! The direct path to a plain-HTTP upstream: each HTTP/1 client connection keeps its
//! own upstream connection.
//!
//! An HTTP/1 client connection's requests are sequential (hyper's server answers one
//! before reading the next), so one upstream connection per client connection is all
//! it can use. Sending down it skips the pooled client's per-request work (pool lookup
//! and hand-off, request extensions, URI rewriting): callgrind counts 63.6k -> 55.1k
//! instructions per proxied request, and in `benches/load.sh`'s setup (one core) it
//! served 8-13% more requests per second with 10-12% less CPU per request. When the client
//! connection closes, its upstream connection goes to a small shared idle list for the
//! next client connection, so clients that open a connection per request still reuse
//! upstream connections. HTTP/2 clients and https upstreams keep the pooled client.

use super::ReqBody;
use crate::error::UpstreamFailure;
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upstream connections handed back by closed client connections, at most this many.
const MAX_IDLE: usize = 256;

/// Idle upstream connections of one upstream configuration.
#[derive(Default)]
pub struct IdleList(Mutex<Vec<SendRequest<ReqBody>>>);

impl IdleList {
    fn pop(&self) -> Option<SendRequest<ReqBody>> {
        let mut list = self.0.lock().ok()?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn push(&self, sender: SendRequest<ReqBody>) {
        if let Ok(mut list) = self.0.lock() {
            list.retain(|s| !s.is_closed());
            if list.len() < MAX_IDLE {
                list.push(sender);
            }
        }
    }
}

/// One client connection's upstream connection, tagged with the idle list (that is,
/// the upstream configuration) it belongs to: after a reload that changes the
/// upstream, a connection to the old one is never used again.
#[derive(Default)]
pub struct UpstreamSlot(Mutex<Option<(SendRequest<ReqBody>, Arc<IdleList>)>>);

impl UpstreamSlot {
    fn take(&self, owner: &Arc<IdleList>) -> Option<SendRequest<ReqBody>> {
        let (sender, tag) = self.0.lock().ok()?.take()?;
        (Arc::ptr_eq(&tag, owner) && !sender.is_closed()).then_some(sender)
    }

    fn put(&self, sender: SendRequest<ReqBody>, owner: &Arc<IdleList>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some((sender, Arc::clone(owner)));
        }
    }
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        if let Some((sender, idle)) = self.0.get_mut().ok().and_then(Option::take) {
            // Only a connection with no request in flight: a response still being
            // read would block the next user.
            if sender.is_ready() {
                idle.push(sender);
            }
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
    /// `Host` as hyper-util would send it, built once.
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

    /// Sends `req` (absolute URI) on the slot's connection in origin form, opening one
    /// (or taking an idle one) if the slot has none. A request an old connection never
    /// took (the backend closed it while idle) goes again on a new one, once.
    pub async fn send(
        &self,
        slot: &UpstreamSlot,
        mut req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        *req.version_mut() = Version::HTTP_11;
        req.headers_mut().insert(http::header::HOST, self.host_header.clone());
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        let mut fresh = false;
        loop {
            let mut sender = match slot.take(&self.idle).or_else(|| self.idle.pop()) {
                Some(sender) => sender,
                None => {
                    fresh = true;
                    self.connect().await?
                }
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(UpstreamFailure::Protocol);
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    slot.put(sender, &self.idle);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(UpstreamFailure::Protocol),
                },
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<ReqBody>, UpstreamFailure> {
        let connecting = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            _ => return Err(UpstreamFailure::Connect),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|_| UpstreamFailure::Connect)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

//! Stage 7: forwarding to the backend (DESIGN.md section 8).
//!
//! One pooled hyper-util client per upstream config; bodies stream both ways. Headers
//! are rewritten in place: hop-by-hop and spoofable headers removed, forwarding and
//! identity headers set.

mod headers;

pub use headers::{prepare_request_headers, prepare_response_headers, Identity, X_REQUEST_ID};

use crate::config::Upstream;
use crate::error::{BadRequest, GatewayError, UpstreamFailure};
use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// A request or response body: streamed from the peer, or bytes we hold.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Wraps bytes we produced (error bodies, buffered inspected bodies).
pub fn full(bytes: Bytes) -> Body {
    Either::Right(Full::new(bytes))
}

/// A pooled client bound to one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Body>,
    upstream: Upstream,
}

impl UpstreamClient {
    pub fn new(upstream: &Upstream) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        UpstreamClient {
            client,
            upstream: upstream.clone(),
        }
    }

    /// Whether this client was built from the same upstream settings (so a reload
    /// can keep its connection pool).
    pub fn matches(&self, upstream: &Upstream) -> bool {
        let a = &self.upstream;
        a.scheme == upstream.scheme
            && a.authority == upstream.authority
            && a.base_path == upstream.base_path
            && a.connect_timeout == upstream.connect_timeout
            && a.request_timeout == upstream.request_timeout
    }

    /// The upstream URI for a canonical path and the original query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, GatewayError> {
        let mut pq = String::with_capacity(
            self.upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
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

    /// Sends a prepared request; maps failures to 502/504.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, GatewayError> {
        *req.version_mut() = Version::HTTP_11;
        match tokio::time::timeout(self.upstream.request_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(GatewayError::BadGateway(UpstreamFailure::Connect)),
            Ok(Err(_)) => Err(GatewayError::BadGateway(UpstreamFailure::Protocol)),
            Err(_) => Err(GatewayError::GatewayTimeout),
        }
    }
}

//! The admin listener (loopback by default): `GET /healthz`, `GET /readyz`,
//! `GET /metrics`, `POST /reload`, and the token console (`console`, at
//! `[console] path`).

use super::{Gateway, ReloadError};
use crate::error::json_response;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (gw, builder) = (Arc::clone(&gw), Arc::clone(&builder));
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(Arc::clone(&gw), req, peer, loopback));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Answers one request; `loopback`: whether the listener is on a loopback address.
async fn answer(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
    loopback: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let head = req.method() == Method::HEAD;
    let mut resp = if !one_host(&req) {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error_message": "A request must name one host: one Host field (HTTP/1.1), host[:port] with a decimal port.", "error_code": 400}),
        )
        .map(Full::new)
    } else if loopback && !names_this_host(&req, &gw.snapshot().config.server.hostnames) {
        json_response(
            StatusCode::FORBIDDEN,
            &json!({"error_message": "This listener answers its own addresses only: Host names another.", "error_code": 403}),
        )
        .map(Full::new)
    } else {
        match super::console::serve(&gw, req, peer).await {
            Ok(resp) => resp.map(Full::new),
            Err(req) => route(&gw, &req).await.map(Full::new),
        }
    };
    if head {
        super::handler::without_content(&mut resp, || Full::new(Bytes::new()));
    }
    Ok(resp)
}

/// Whether a request has at most one `Host`, and an HTTP/1.1 request one, of the form
/// the main listener takes (RFC 9112 section 3.2: 400 otherwise, as there). With two,
/// the one checked here need not be the one an application reads (an outside probe had
/// `Host: localhost` then `Host: evil.com` answered); `127.0.0.1:abc` was taken here
/// while the main listener refused it (the thirty-second).
fn one_host(req: &Request<Incoming>) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    // HTTP/2's `:authority` by the same rule (the thirty-fourth found `127.0.0.1:abc`
    // taken there: the `http` crate keeps a port it cannot read).
    let authority_ok = req.uri().authority().is_none_or(|a| crate::pipeline::is_authority(a.as_str().as_bytes()));
    authority_ok
        && match (hosts.next(), hosts.next()) {
            (_, Some(_)) => false,
            (None, _) => req.version() != http::Version::HTTP_11,
            (Some(host), None) => crate::pipeline::is_authority(host.as_bytes()),
        }
}

/// Whether a request to a loopback listener names this host: an IP address,
/// `localhost` or a `*.localhost` name, or one of `server.hostnames` (any port), or no
/// host at all (HTTP/1.0; HTTP/2 states `:authority`). A web page whose name was re-pointed at 127.0.0.1 (DNS rebinding) is
/// same-origin with the listener and could read `/metrics` or the console's page; the
/// browser still sends the page's own name, which is none of these. Tools and scrapers
/// on the host send an address or `localhost`.
fn names_this_host(req: &Request<Incoming>, hostnames: &[String]) -> bool {
    // Both, when an HTTP/2 request sends `:authority` and `host`; a `Host` that is not
    // text names no host of ours.
    let Ok(host) = req.headers().get(header::HOST).map(|v| v.to_str()).transpose() else { return false };
    [host, req.uri().authority().map(|a| a.as_str())].into_iter().flatten().all(|h| is_this_host(h, hostnames))
}

/// [`names_this_host`] for one `host[:port]` (a trailing dot on a name is the same name).
fn is_this_host(host: &str, hostnames: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal.
        Some(rest) => return rest.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let lower = name.to_ascii_lowercase();
    lower.parse::<std::net::Ipv4Addr>().is_ok()
        || lower == "localhost"
        || lower.ends_with(".localhost")
        || hostnames.iter().any(|h| h.rsplit_once(':').map_or(h.as_str(), |(n, _)| n).eq_ignore_ascii_case(name))
}

/// The admin endpoints other than the console's.
async fn route(gw: &Gateway, req: &Request<Incoming>) -> Response<Bytes> {
    // HEAD reads as GET (its body is left out by the caller).
    let method = if req.method() == Method::HEAD { &Method::GET } else { req.method() };
    match (method, req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(gw).await,
        (&Method::GET, "/metrics") => {
            gw.limiter.report();
            let mut resp = Response::new(Bytes::from(gw.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
        // Browsers send `Origin` with every POST, cross-site or not (also after DNS
        // rebinding), and `Sec-Fetch-Site` or `Referer` with most; tools (curl, scripts,
        // probes) send none of them. A page the operator visits could otherwise reload
        // the gateway with a form post, no preflight needed.
        (&Method::POST, "/reload")
            if ["origin", "sec-fetch-site", "referer"].iter().any(|n| req.headers().contains_key(*n)) =>
        {
            json_response(
                StatusCode::FORBIDDEN,
                &json!({"error_message": "Reload is for tools, not web pages: this request carries Origin, Sec-Fetch-Site or Referer.", "error_code": 403}),
            )
        }
        (&Method::POST, "/reload") => reload(gw).await,
        (_, "/healthz" | "/readyz" | "/metrics") => not_allowed("GET, HEAD"),
        (_, "/reload") => not_allowed("POST"),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error_message": "Not found.", "error_code": 404})),
    }
}

/// 405 for an endpoint asked with a method it does not take (RFC 9110 section 15.5.6:
/// with the methods it takes in `Allow`), so that `curl .../reload` says what to do.
fn not_allowed(allow: &'static str) -> Response<Bytes> {
    let message = format!("This endpoint takes {allow} only.");
    let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error_message": message, "error_code": 405}));
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// How long `/readyz` waits for the store's answer.
const READY_PING: std::time::Duration = std::time::Duration::from_millis(500);

/// Ready while not draining: a snapshot is loaded (always, once running) and requests
/// are served from it even while the token store is down, so a store outage must not
/// take every replica out of its load balancer. The store's state is reported, and so
/// is the rate limits': Redis is shared by every replica too, so its outage (handled
/// by the fail mode) does not make a replica unready either.
async fn readyz(gw: &Gateway) -> Response<Bytes> {
    if gw.is_draining() {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "draining"}));
    }
    // Answered within a probe's usual one-second timeout whatever the store does: a
    // store that does not answer is reported, not waited for.
    let store = match tokio::time::timeout(READY_PING, gw.store().ping()).await {
        Ok(Ok(())) => "up",
        Ok(Err(_)) | Err(_) => "unavailable (serving the last snapshot; token changes answer 503)",
    };
    json_response(StatusCode::OK, &json!({"status": "ready", "store": store, "rate_limits": gw.limiter.state()}))
}

async fn reload(gw: &Gateway) -> Response<Bytes> {
    match gw.reload().await {
        Ok(report) => {
            json_response(StatusCode::OK, &json!({"result": "reloaded", "restart_required": report.restart_required}))
        }
        Err(ReloadError::Config(errors)) => {
            let list: Vec<String> = errors
                .0
                .iter()
                .map(|e| if e.path.is_empty() { e.message.clone() } else { format!("{}: {}", e.path, e.message) })
                .collect();
            json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!({"result": "rejected", "errors": list}))
        }
        Err(e) => {
            json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!({"result": "rejected", "errors": [e.to_string()]}))
        }
    }
}

//! The token console: a small framework-free HTML + CSS + JS page on the
//! admin listener at `[console] path` (default `/console`), where a stack's owner or
//! admin manages its management tokens as in Contentstack's Settings > Tokens page.
//!
//! Why it looks like this:
//! - Every asset is compiled into the binary (`include_str!`): nothing is fetched from
//!   elsewhere at run time, so the strict Content-Security-Policy below can allow
//!   `'self'` only and no inline script or style.
//! - The page calls the public token API only, through
//!   `{path}/api/v3/stacks/management_tokens...`, which is handed in-process to the
//!   same outer handler the main listener runs (`server::handle`): the same
//!   pipeline, the same token-API code (owner/admin only, the per-stack cap, rates
//!   within the organisation's, the secret shown once), the same guessing guard and
//!   access log. Same origin as the page, so no CORS. Only token-API paths are handed
//!   on; nothing here can reach the backend.
//! - The one other call, `{path}/api/stacks`, tells the page which stacks the signed-in
//!   user is a member of (from the configuration; the token API needs an `api_key` to
//!   start from). It changes nothing, and an unknown authtoken counts as a guess.
//! - The authtoken lives in a JS variable of the page only and travels in the
//!   `authtoken` header: never in a URL, storage, a log line or a metric. A custom
//!   header also means a cross-site page cannot make these calls (no CORS is answered).

use super::{ConnInfo, Gateway};
use crate::config::{Config, Role};
use crate::error::{json_response, GatewayError};
use crate::pipeline::auth::AUTHTOKEN;
use crate::pipeline::Presented;
use crate::proxy::ClientBody;
use crate::token::hash_secret;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// Nothing but this origin's own files and API; no inline code, no framing, no forms
/// posted anywhere, no `<base>` games.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The token API's path, as the main listener serves it.
const TOKEN_API: &str = "/v3/stacks/management_tokens";

/// Serves a request if it is the console's (the console is enabled and the path is
/// `[console] path` or under it); hands every other request back to the admin router.
pub(crate) async fn serve(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Bytes>, Request<Incoming>> {
    let snap = gw.snapshot();
    let console = &snap.config.console;
    if !console.enabled {
        return Err(req);
    }
    let rest = match req.uri().path().strip_prefix(console.path.as_str()) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_owned(),
        _ => return Err(req),
    };
    let mut resp = match rest.as_str() {
        // Relative asset and API URLs need the page at `{path}/`.
        "" => redirect(&format!("{}/", console.path)),
        "/" => asset(req.method(), INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => asset(req.method(), APP_JS, "text/javascript; charset=utf-8"),
        "/app.css" => asset(req.method(), APP_CSS, "text/css; charset=utf-8"),
        "/icon.svg" => asset(req.method(), ICON_SVG, "image/svg+xml"),
        "/api/stacks" => stacks(gw, &snap.config, req.method(), req.headers(), peer),
        api => match api.strip_prefix("/api").filter(|p| is_token_api_path(p)) {
            Some(path) => {
                let path = path.to_owned();
                token_api(gw, req, &path, peer).await
            }
            None => not_found(),
        },
    };
    secure(resp.headers_mut());
    Ok(resp)
}

/// The security fields on every console response, the API's answers included (they
/// carry secrets once: never cached).
fn secure(headers: &mut HeaderMap) {
    let fields: [(HeaderName, &'static str); 7] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        (HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
    ];
    for (name, value) in fields {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

fn asset(method: &Method, body: &'static str, content_type: &'static str) -> Response<Bytes> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    // A HEAD gets the same answer; the admin listener empties it, keeping its length.
    let mut resp = Response::new(Bytes::from_static(body.as_bytes()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn redirect(to: &str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    resp
}

fn not_found() -> Response<Bytes> {
    GatewayError::NotFound.into_response()
}

fn method_not_allowed(allow: &'static str) -> Response<Bytes> {
    let mut resp = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error_message": "Method not allowed.", "error_code": 405}),
    );
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Whether `path` is the token API or one of its sub-paths, spelled plainly: segments
/// of `A-Z a-z 0-9 - _` only, so that whatever the pipeline makes of it, it is a
/// token-API path (served by stackgate, never forwarded) and nothing else.
fn is_token_api_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(TOKEN_API) else { return false };
    rest.is_empty()
        || rest.strip_prefix('/').is_some_and(|sub| {
            sub.split('/').count() <= 2
                && sub.split('/').all(|seg| {
                    !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        })
}

/// Hands a token-API call to the main listener's outer handler, in-process, with the
/// path moved from `{console}/api/v3/...` to `/v3/...` and everything else as sent.
async fn token_api(gw: &Arc<Gateway>, req: Request<Incoming>, path: &str, peer: SocketAddr) -> Response<Bytes> {
    let (mut parts, body) = req.into_parts();
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return GatewayError::NotFound.into_response();
    };
    parts.uri = uri;
    // The page calls from its own origin. Without `Origin` the handler answers no CORS
    // fields, whatever `[server.cors]` allows on the main listener: through the admin
    // listener the API is for the console's own page only.
    parts.headers.remove(header::ORIGIN);
    let req = Request::from_parts(parts, ClientBody::Hyper(body));
    let conn = Arc::new(ConnInfo::new(peer, false));
    let Ok(resp) = super::handle(Arc::clone(gw), req, conn).await;
    let (mut parts, body) = resp.into_parts();
    // Token-API answers are small JSON made in memory; collecting them cannot wait on
    // anything but this process.
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return GatewayError::Unavailable.into_response(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, bytes)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Developer => "developer",
        Role::ContentManager => "content_manager",
    }
}

/// `GET {console}/api/stacks` with `authtoken`: the signed-in user and the stacks they
/// are a member of, with what the create form needs (branches, aliases, the
/// organisation's rates and token cap). Whether the user may manage a stack's tokens is
/// shown for the page's sake only; the token API decides.
fn stacks(gw: &Gateway, config: &Config, method: &Method, headers: &HeaderMap, peer: SocketAddr) -> Response<Bytes> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET");
    }
    // The client as the main listener names it (behind trusted proxies, the field they
    // write): the token-API calls the page makes next are counted against the same one.
    let server = &config.server;
    let ip = super::client::address(peer.ip(), headers, &server.trusted_proxies, server.forwarded_field);
    let mut sent = headers.get_all(AUTHTOKEN).iter();
    let authtoken = match (sent.next(), sent.next()) {
        (Some(token), None) => Some(token.as_bytes()),
        _ => None,
    };
    // A cooling address is answered only on the credentials it had at work, decided
    // before the authtoken is looked up (see `guard`); the sign-in names no stack.
    let presented = authtoken.map_or(Presented::Missing, |authtoken| Presented::Console { authtoken });
    let now = gw.clock().now();
    let admitted = gw.gate(ip, &config.guard, now, presented).and_then(|()| {
        let digest = authtoken.map(hash_secret);
        match digest.and_then(|d| Some((gw.snapshot().user(&d)?.to_owned(), d))) {
            Some((uid, d)) => {
                let who = gw.guard().known(crate::guard::Kind::Console, &d, b"");
                gw.admit(ip, &config.guard, now, Some(who)).map(|()| (uid, d))
            }
            None => Err(match gw.failed_sign_in(ip) {
                Err(retry_after) => GatewayError::Throttled { retry_after },
                Ok(()) => GatewayError::Unauthenticated { expired: false },
            }),
        }
    });
    let (uid, digest) = match admitted {
        Ok(signed_in) => signed_in,
        Err(refusal) => {
            // Counted and logged as the main listener's refusals are (never the authtoken).
            gw.metrics.decision(&refusal);
            tracing::info!(client = %ip, path = "console/api/stacks", reason = refusal.reason().name(), "console sign-in refused");
            return refusal.into_response();
        }
    };
    // The token API with this authtoken on the user's stacks (which this answer lists)
    // proves nothing more: at work there too.
    for stack in config.stacks.iter().filter(|s| s.members.contains_key(&uid)) {
        gw.guard().remember(ip, now, gw.guard().known(crate::guard::Kind::User, &digest, stack.api_key.as_bytes()));
    }
    let email = config.users.iter().find(|u| u.uid == uid).map(|u| u.email.clone()).unwrap_or_default();
    let list: Vec<Value> = config
        .stacks
        .iter()
        .filter_map(|stack| {
            let role = *stack.members.get(&uid)?;
            let org = config.organizations.iter().find(|o| o.uid == stack.organization)?;
            Some(json!({
                "api_key": stack.api_key,
                "name": stack.name,
                "role": role_name(role),
                "manages_tokens": role.manages_tokens(),
                "branches": stack.branches,
                "aliases": stack.aliases,
                "organization": {
                    "uid": org.uid,
                    "read_per_second": org.read_per_second,
                    "write_per_second": org.write_per_second,
                    "max_tokens_per_stack": org.max_tokens_per_stack,
                },
            }))
        })
        .collect();
    json_response(StatusCode::OK, &json!({"user": {"uid": uid, "email": email}, "stacks": list}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_token_api_paths_are_handed_on() {
        for ok in [
            "/v3/stacks/management_tokens",
            "/v3/stacks/management_tokens/blt0123456789abcdef",
            "/v3/stacks/management_tokens/audit",
            "/v3/stacks/management_tokens/blt0123456789abcdef/regenerate",
        ] {
            assert!(is_token_api_path(ok), "{ok}");
        }
        for bad in [
            "/v3/content_types",
            "/v3/stacks/management_tokensx",
            "/v3/stacks/management_tokens/",
            "/v3/stacks/management_tokens//x",
            "/v3/stacks/management_tokens/../../content_types",
            "/v3/stacks/management_tokens/%2e%2e",
            "/v3/stacks/management_tokens/a/b/c",
            "/v3/stacks/management_tokens/a;b",
            "/v3/stacks/management_tokens/a.b",
        ] {
            assert!(!is_token_api_path(bad), "{bad}");
        }
    }

    #[test]
    fn the_policy_allows_nothing_inline() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
        // The page itself holds no inline script, style or handler.
        for bad in ["<script>", "style=", " onclick", "<style", "javascript:"] {
            assert!(!INDEX_HTML.contains(bad), "index.html contains {bad}");
        }
    }
}

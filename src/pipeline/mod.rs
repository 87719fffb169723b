//! The synchronous decision stages of DESIGN.md section 1: normalize, classify,
//! authenticate, authorize. [`decide`] runs them in order over one snapshot; the rate
//! limit (which may ask Redis), `inspect_body` and `forward` run in the server.

pub mod auth;
pub mod classify;
pub mod normalize;
pub mod policy;
pub mod query;

pub use auth::{authenticate, Credentials, Presented, Principal};
pub use classify::{classify, Access, Module, ModuleSet, Operation, Rule};
pub use normalize::{normalize, Target};
pub use policy::{authorize, inspect_body};

use crate::error::{BadRequest, Denial, GatewayError};
use crate::snapshot::{Snapshot, Token};
use http::header::{AUTHORIZATION, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Method, Version};
use std::sync::Arc;

/// What to do with a request that passed the synchronous stages.
#[derive(Debug)]
pub enum Route {
    /// Rate-limit, then forward to the backend (after `inspect_body` if the operation
    /// needs it).
    Proxy { principal: Principal },
    /// Served by stackgate's token-management API.
    TokenApi,
    /// `OPTIONS`: answered by the gateway, never authorised or forwarded.
    Preflight,
}

/// The outcome of the synchronous stages.
#[derive(Debug)]
pub struct Decision<'a> {
    pub target: Target<'a>,
    pub op: Operation,
    pub route: Route,
    /// A management token's secret as the guard remembers it at work (its SHA-256, and
    /// the `api_key` it came with).
    pub at_work: Option<([u8; 32], &'a [u8])>,
}

/// Facts learnt while deciding, kept even when a later stage fails (for the access log).
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub op: Option<Operation>,
    /// The authenticated token (an `Arc` clone: no copy of its uid per request).
    pub token: Option<Arc<Token>>,
    /// Set only when the canonical path differs from the raw one.
    pub canonical: Option<Box<str>>,
    /// The Unix second the request was decided at: the token's use is recorded at it,
    /// so the clock is read once per request.
    pub decided_at: i64,
}

pub use crate::cma::ALLOWED_METHODS;

fn check_method(method: &Method) -> Result<(), GatewayError> {
    match *method {
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::OPTIONS => {
            Ok(())
        }
        _ => Err(GatewayError::MethodNotAllowed),
    }
}

/// The message fields every reader must agree on before anything else is read: at
/// most [`MAX_FIELDS`](crate::field_names::MAX_FIELDS) of them on every protocol (431);
/// `Host` once (HTTP/1.1 requires it, RFC 9112 section 3.2; two would leave the backend
/// to pick one) and a valid one (host and port, no user info; empty is allowed), and a
/// `Transfer-Encoding` that is exactly `chunked`. The body reaches the gateway
/// de-chunked; another coding (`gzip, chunked`) would be forwarded without its label
/// and read by the backend as something else than what was sent. On HTTP/2, no value
/// may begin or end with a space or tab (RFC 9113 section 8.2.1: malformed): an
/// HTTP/1.1 parser drops such whitespace, so `branch: " main"` would be one name to
/// the gateway and another to the backend (the fifty-first outside probe found each
/// credential field handled a different way).
fn check_message(parts: &Parts) -> Result<(), GatewayError> {
    if parts.headers.len() > crate::field_names::MAX_FIELDS {
        return Err(GatewayError::HeadTooLarge);
    }
    if parts.version == Version::HTTP_2 && parts.headers.values().any(|v| padded(v.as_bytes())) {
        return Err(GatewayError::BadRequest(BadRequest::InvalidHeader));
    }
    let hosts = parts.headers.get_all(HOST);
    let count = hosts.iter().count();
    let host_ok = match parts.version {
        Version::HTTP_11 => count == 1,
        _ => count <= 1,
    } && hosts.iter().all(|host| is_authority(host.as_bytes()));
    let mut codings = parts.headers.get_all(TRANSFER_ENCODING).iter();
    let coding_ok = match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    };
    if host_ok && coding_ok {
        Ok(())
    } else {
        Err(GatewayError::BadRequest(BadRequest::InvalidHeader))
    }
}

/// Whether a field value begins or ends with a space or a tab.
fn padded(value: &[u8]) -> bool {
    matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
}

/// A `Host` value a server may take (RFC 9112, 3.2; RFC 3986, 3.2.2): empty, or a
/// host (a name of unreserved, sub-delim and `%` characters, or an IPv6 literal in
/// brackets) with an optional port that fits 16 bits. Checked byte by byte: parsing it
/// as an `http` authority would copy it into an allocation on every request.
pub(crate) fn is_authority(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host_ok, rest) = match value.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(end) => {
                let inside = &literal[..end];
                let ok = !inside.is_empty() && inside.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                (ok, &literal[end + 1..])
            }
            None => (false, &literal[..0]),
        },
        None => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            let name = &value[..end];
            (!name.is_empty() && name.iter().all(|&b| is_name_byte(b)), &value[end..])
        }
    };
    let port_ok = match rest.strip_prefix(b":") {
        Some(port) => port.is_empty() || (port.iter().all(u8::is_ascii_digit) && port_fits(port)),
        None => rest.is_empty(),
    };
    host_ok && port_ok
}

/// A byte of a host name: unreserved, sub-delims or `%` (RFC 3986, 3.2.2).
fn is_name_byte(b: u8) -> bool {
    NAME_BYTES[usize::from(b)]
}

const NAME_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~%!$&'()*+,;=";
    let mut i = 0;
    while i < others.len() {
        t[others[i] as usize] = true;
        i += 1;
    }
    t
};

/// Whether decimal digits make a port number (at most 65535).
fn port_fits(digits: &[u8]) -> bool {
    digits.len() <= 5 && digits.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535
}

/// Runs normalize, classify, authenticate and authorize at Unix time `now`. `has_body`:
/// whether the request's body may still hold bytes (see [`query::check_body_type`]).
/// `gate` is asked about the credential the route checks before it is looked up (the
/// guard's cool-down; see `guard`).
pub fn decide<'a>(
    snap: &Snapshot,
    parts: &'a Parts,
    has_body: bool,
    now: i64,
    facts: &mut Facts,
    gate: impl FnOnce(Presented<'_>) -> Result<(), GatewayError>,
) -> Result<Decision<'a>, GatewayError> {
    check_method(&parts.method)?;
    check_message(parts)?;
    let target = normalize(&parts.uri, parts.version, &snap.settings.own_authorities)?;
    if parts.version == Version::HTTP_2 {
        if let Some(host) = parts.headers.get(HOST) {
            normalize::check_host(host.as_bytes(), &snap.settings.own_authorities)?;
        }
    }
    let op = classify(&parts.method, &target.path)?;
    facts.op = Some(op);
    if parts.method == Method::OPTIONS {
        return Ok(Decision { target, op, route: Route::Preflight, at_work: None });
    }
    // Read (and checked for ambiguity) on every route: the token API's too.
    let creds = Credentials::read(&parts.headers)?;
    // The guard's cool-down, decided before any credential is looked up.
    if let Some(presented) = creds.presented(op.rule == Rule::TokenApi, op.rule == Rule::Login) {
        gate(presented)?;
    }
    if op.rule == Rule::TokenApi {
        // Tokens never manage tokens, valid or not, however presented.
        let bearer = parts.headers.get(AUTHORIZATION).map(|v| auth::is_bearer(v.as_bytes()));
        if bearer == Some(false) || creds.session_holds_token() {
            return Err(GatewayError::Forbidden(Denial::NeverAllowed));
        }
        // The header names the stack acted on; a query `api_key` (or `branch`) saying
        // otherwise is refused as on CMA paths, not silently overruled.
        query::check(target.query, &creds)?;
        return Ok(Decision { target, op, route: Route::TokenApi, at_work: None });
    }
    let (principal, digest) = authenticate(snap, &creds, now, op.rule == Rule::Login)?;
    // A management token sent as a user session (in its credential, another field, the
    // path or the query) would reach the backend undecided, and with `forward_token =
    // false` the backend is never to see a secret.
    if matches!(principal, Principal::UserSession)
        && query::carries_token_shape(&parts.headers, &target.path, target.query)
    {
        return Err(GatewayError::Forbidden(Denial::TokenAsUserSession));
    }
    if let Principal::Token(token) = &principal {
        facts.token = Some(Arc::clone(token));
        authorize(token, &op, creds.branch)?;
        if query::carries_token_shape_but(&parts.headers, Some(&AUTHORIZATION), &target.path, target.query) {
            return Err(GatewayError::Forbidden(Denial::SecretElsewhere));
        }
        query::check(target.query, &creds)?;
        query::check_cookies(&parts.headers)?;
        if matches!(op.rule, Rule::EntryWorkflow | Rule::PublishRuleApprovers) {
            query::check_rule_keys(target.query, &parts.headers)?;
        }
        query::check_body_type(parts, has_body)?;
        if op.rule == Rule::BranchPair {
            if parts.headers.keys().any(|name| query::names_branch_pair(name.as_str())) {
                return Err(GatewayError::Forbidden(Denial::Branch));
            }
            for name in query::named_branches(target.query)? {
                policy::check_named_branch(token, &name)?;
            }
        }
    }
    // The backend is the authority for users: nothing to check here.
    let at_work = digest.map(|d| (d, creds.api_key().map_or(&b""[..], HeaderValue::as_bytes)));
    Ok(Decision { target, op, route: Route::Proxy { principal }, at_work })
}

#[cfg(test)]
mod gate_tests;

#[cfg(test)]
mod tests {
    use super::is_authority;

    #[test]
    fn host_values_are_a_host_and_an_optional_decimal_port() {
        for good in
            ["", "gw", "gw:8080", "gw:", "gw:65535", "127.0.0.1:80", "[::1]", "[::1]:", "[::1]:8080", "a-b.example"]
        {
            assert!(is_authority(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "a b",
            "u@gw",
            "gw:x",
            "gw:80:90",
            "[::1]:x",
            "[::1]x",
            "gw:65536",
            "gw:99999999999999999999",
            "gw/x",
            "gw?x",
            "gw#x",
            "gw\\x",
            "[::1",
            "[]",
            "[g::1]",
            ":80",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad:?}");
        }
    }
}

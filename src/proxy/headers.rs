//! Header rewriting for both directions.

use crate::field_names::{
    connection_tokens, folded_eq, is_framing, is_gateway_only, is_hop_by_hop, is_session_credential, same_name,
    AUTHORIZATION,
};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_TOKEN_UID: HeaderName = HeaderName::from_static("x-stackgate-token-uid");
const X_ACCESS: HeaderName = HeaderName::from_static("x-stackgate-access");
/// W3C Trace Context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Who the request is forwarded as, when the token is not forwarded itself.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub token_uid: &'a str,
    pub access: &'static str,
}

/// Response fields the gateway sets itself, replacing a backend's (in any spelling).
pub(super) fn replaced_by_gateway(name: &[u8]) -> bool {
    folded_eq(name, X_REQUEST_ID.as_str().as_bytes())
        || crate::rate_fields::names(name)
        // Replaced when `[server.cors]` is on (the writer decides).
        || crate::field_names::folded_starts_with(name, b"access-control-")
}

/// Names a `Connection` header lists are hop-by-hop too (RFC 9110 section 7.6.1), in
/// any spelling. The pipeline has already refused a request whose `Connection` lists
/// a field the gateway reads or sets; what is left is the client's own business.
fn remove_connection_listed(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
        let listed: Vec<&[u8]> = listed.iter().flat_map(|v| connection_tokens(v.as_bytes())).collect();
        remove_where(headers, |n| listed.iter().any(|l| same_name(n.as_str().as_bytes(), l)));
    }
}

/// Joins an HTTP/2 request's `cookie` fields into one, as RFC 9113 section 8.2.3 says
/// a request forwarded over HTTP/1.1 must carry them (an HTTP/1.1 backend may read
/// only the first of several). Empty ones join as nothing: `a=1; ` is no cookie list
/// RFC 6265 allows, and parsers differ on its empty pair.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if let (Some(_), Some(_)) = (cookies.next(), cookies.next()) {
        let mut joined = Vec::new();
        for crumb in headers.get_all(header::COOKIE).iter().filter(|c| !c.is_empty()) {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(crumb.as_bytes());
        }
        match HeaderValue::from_bytes(&joined) {
            Ok(value) if !joined.is_empty() => {
                headers.insert(header::COOKIE, value);
            }
            _ => {
                headers.remove(header::COOKIE);
            }
        }
    }
}

/// Removes the fields `doomed` picks; allocates only when there is something to remove.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    // Most messages carry none of them: look before collecting.
    if headers.keys().any(&doomed) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
        for name in &names {
            headers.remove(name);
        }
    }
}

/// What the gateway does to a forwarded request's headers: the fields it drops and
/// the ones it adds. Applied as the head is written on the direct path
/// ([`RequestRewrite::fields`]: the map is neither searched for removals nor grown and
/// rehashed for additions on every request), or to the header map for an HTTP/2
/// backend ([`RequestRewrite::insert_into`]).
#[derive(Debug, Default)]
pub struct RequestRewrite {
    added: [Option<(HeaderName, HeaderValue)>; 6],
    /// The request was made with a management token: no user session rides along.
    token: bool,
    /// ... and the token itself is replaced by identity headers.
    drop_token: bool,
}

impl RequestRewrite {
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.added.iter().flatten().map(|(n, v)| (n, v))
    }

    /// Whether a client field is forwarded: not hop-by-hop, not one only the gateway
    /// may set, not `Host` (the sender sets it), not `Expect` (the gateway answers the
    /// expectation itself: it reads the body before it forwards anything), no framing
    /// field but `Content-Length` itself (which the sender replaces or checks), not a
    /// credential the backend must not authorise on. Every name in every spelling.
    pub fn forwards(&self, name: &HeaderName) -> bool {
        let raw = name.as_str().as_bytes();
        !(is_hop_by_hop(raw)
            || is_gateway_only(raw)
            || name == header::HOST
            || folded_eq(raw, b"expect")
            || (is_framing(raw) && name != header::CONTENT_LENGTH)
            || (self.token && *name != header::AUTHORIZATION && is_session_credential(raw))
            || (self.drop_token && folded_eq(raw, AUTHORIZATION.as_bytes())))
    }

    /// The fields the backend gets, in order: the client's that are forwarded (but
    /// `Content-Length`, which the sender states itself), then the gateway's own.
    pub fn fields<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
        let kept = headers.iter().filter(move |(name, _)| self.forwards(name) && *name != header::CONTENT_LENGTH);
        kept.chain(self.iter())
    }

    /// Applies the changes to a header map (the HTTP/2 path).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        remove_where(headers, |n| !self.forwards(n));
        for (name, value) in self.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Decides how client request headers are rewritten for the backend. Only the names
/// a `Connection` header lists are removed here (rare, and per request); the rest is
/// left to the sender (`RequestRewrite::fields`).
///
/// `identity` is `Some` for management-token requests; with `forward_token = false`
/// the token is replaced by identity headers. A user's `authtoken` never rides along
/// with a management token, so the backend cannot authorise on something we did not.
/// Every added name is also a dropped one, so the client cannot send a second copy.
/// `trace` is a new `traceparent` when the client sent none, an invalid one or several
/// (which go, with any `tracestate`, as W3C Trace Context says); a valid one passes as is.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    https: bool,
    request_id: &HeaderValue,
    identity: Option<Identity<'_>>,
    forward_token: bool,
    trace: Option<HeaderValue>,
) -> RequestRewrite {
    remove_connection_listed(headers);
    // A new trace carries none of the client's trace state (it belonged to no valid
    // `traceparent`).
    if trace.is_some() && (headers.contains_key(TRACEPARENT) || headers.contains_key(TRACESTATE)) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
    }
    let proto = if https { "https" } else { "http" };
    let mut added = RequestRewrite {
        added: [
            Some((X_FORWARDED_FOR, peer.clone())),
            Some((X_FORWARDED_PROTO, HeaderValue::from_static(proto))),
            Some((X_REQUEST_ID, request_id.clone())),
            None,
            None,
            trace.map(|t| (TRACEPARENT, t)),
        ],
        token: identity.is_some(),
        drop_token: identity.is_some() && !forward_token,
    };
    if let Some(id) = identity.filter(|_| !forward_token) {
        added.added[3] = HeaderValue::from_str(id.token_uid).ok().map(|uid| (X_TOKEN_UID, uid));
        added.added[4] = Some((X_ACCESS, HeaderValue::from_static(id.access)));
    }
    added
}

/// Rewrites backend response headers for the client (the outer handler adds
/// `X-Request-Id` to every response, forwarded or not). The direct path leaves these
/// fields out while parsing the head instead. A response that came with
/// `Transfer-Encoding` was framed by it, not by its `Content-Length` (RFC 9112 section
/// 6.3): the length goes too, or the client's writer would frame the body by it. So
/// does one on a 204 or 304, as on the direct path
/// ([`states_no_length`](crate::http1::states_no_length)).
///
/// `false` when the response states no usable length: values that are not all the same
/// number. hyper refuses those itself only where they frame a body, not on a HEAD, 204 or
/// 304 answer; the direct path refuses them on every answer, and so does this one (a
/// HEAD is answered as its GET would be: 502).
#[must_use]
pub fn prepare_response_headers(status: http::StatusCode, headers: &mut HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    } else if !single_length(headers) {
        return false;
    } else if crate::http1::states_no_length(status) {
        headers.remove(header::CONTENT_LENGTH);
    }
    remove_connection_listed(headers);
    remove_where(headers, |n| is_hop_by_hop(n.as_str().as_bytes()));
    true
}

/// hyper's client takes a `Content-Length` list of equal values (`2, 2`, or the field
/// twice) as that one length, and leaves the field as it came: passed on, a list is no
/// valid length to the client (an h2 client refuses the stream). The one value goes on;
/// `false` for values that are not all the same number, or for one longer than any
/// writer frames (`http1::framed_length`, as on the direct path; the h2 crate itself
/// refuses most of these before they get here).
fn single_length(headers: &mut HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), second) = (values.next(), values.next()) else { return true };
    if second.is_none() && crate::http1::framed_length(first.as_bytes()).is_some() {
        return true;
    }
    let mut agreed: Option<u64> = None;
    for piece in headers.get_all(header::CONTENT_LENGTH).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')) {
        match crate::http1::framed_length(piece.trim_ascii()) {
            Some(n) if agreed.is_none_or(|a| a == n) => agreed = Some(n),
            _ => return false,
        }
    }
    if let Some(n) = agreed {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    agreed.is_some()
}

#[cfg(test)]
mod tests;

//! The one place where a failed request becomes an HTTP response.
//!
//! Every stage returns a [`GatewayError`]; [`GatewayError::into_response`] maps each
//! variant to the status and CMA error body of DESIGN.md section 5. The match is
//! exhaustive on purpose: a new variant must be given a status here.

use crate::rate_fields::RateInfo;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use std::collections::BTreeMap;

/// Why a request was not forwarded (or failed upstream).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    /// Ambiguous path, bad header, malformed inspected JSON.
    #[error("bad request: {0}")]
    BadRequest(BadRequest),
    /// Not a CMA path.
    #[error("not found")]
    NotFound,
    /// A method the CMA does not have (methods are case-sensitive).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A management token addressed by uid does not exist in this stack.
    #[error("token not found")]
    TokenNotFound,
    /// Missing or unknown `api_key`.
    #[error("stack not found")]
    StackNotFound,
    /// Missing, unknown, other stack's or expired credential.
    #[error("unauthenticated")]
    Unauthenticated { expired: bool },
    /// A known management token that its owner suspended (`enabled: false`): 401 like
    /// any refused credential, but saying why, so the holder asks the owner instead of
    /// hunting for a typo. Not a credential guess (the gateway knows the token).
    #[error("token disabled")]
    TokenDisabled,
    /// Module, access, branch or body rule denies.
    #[error("forbidden: {0}")]
    Forbidden(Denial),
    /// Inspected (or streamed) body over its limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// A request head over `max_header_bytes` (or with too many fields).
    #[error("request head too large")]
    HeadTooLarge,
    /// A request target longer than the HTTP/1 server takes.
    #[error("request target too long")]
    UriTooLong,
    /// A token-API write whose body is not declared as JSON (`Content-Type` missing or
    /// not `application/json`): refused rather than guessed at, so what the client meant
    /// and what the gateway parsed cannot differ.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A management-token request whose body a backend could read as a form, or whose
    /// type parsers read differently (missing, stated twice, not plain, a form type):
    /// see `pipeline::query::check_body_type`. Uploads (multipart) and other plain
    /// types pass, so the message names them.
    #[error("unsupported body type")]
    UnsupportedBodyType,
    /// Token-API validation failure, with per-field errors.
    #[error("unprocessable")]
    Unprocessable(FieldErrors),
    /// Rate limited; `retry_after` in whole seconds; `info` for the headers.
    #[error("rate limited")]
    RateLimited { retry_after: u64, info: Box<RateInfo> },
    /// Too many failed authentications from this client address; cooling down.
    #[error("authentication cool-down")]
    Throttled { retry_after: u64 },
    /// The bodies being read for the body rules hold `max_inspected_total` already.
    #[error("inspected bodies at max_inspected_total")]
    Busy,
    /// A required backing service (store) is down.
    #[error("service unavailable")]
    Unavailable,
    /// Backend unreachable or answered garbage.
    #[error("bad gateway: {0}")]
    BadGateway(UpstreamFailure),
    /// Backend did not answer in time.
    #[error("gateway timeout")]
    GatewayTimeout,
    /// The client stopped sending its body for longer than `[server] idle_timeout`
    /// while the request was on its way to the backend.
    #[error("request timeout")]
    RequestTimeout,
}

/// Per-field validation errors (`errors` in the CMA body).
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// The most fields a 422 lists (in name order); how many more there were is said under
/// `"(more)"`, a name no field path takes. A body of thousands of wrong entries gets an
/// answer of bounded size.
const MAX_SHOWN_FIELDS: usize = 20;

/// The most messages a 422 lists under one field (a list of 20,000 unknown branches has
/// a message per element); how many more there were is said after them.
const MAX_SHOWN_MESSAGES: usize = 5;

fn shown_fields(fields: &FieldErrors) -> serde_json::Value {
    let messages = |list: &[String]| {
        let mut shown: Vec<String> = list.iter().take(MAX_SHOWN_MESSAGES).cloned().collect();
        let more = list.len().saturating_sub(MAX_SHOWN_MESSAGES);
        if more > 0 {
            shown.push(format!("and {more} more."));
        }
        serde_json::json!(shown)
    };
    let mut shown: serde_json::Map<String, serde_json::Value> =
        fields.iter().take(MAX_SHOWN_FIELDS).map(|(name, list)| (name.clone(), messages(list))).collect();
    if let Some(more) = fields.len().checked_sub(MAX_SHOWN_FIELDS).filter(|&n| n > 0) {
        shown.insert("(more)".into(), serde_json::json!([format!("{more} more fields have errors.")]));
    }
    serde_json::Value::Object(shown)
}

/// The flavours of 400; they share one client-facing message but are logged apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("ambiguous path")]
    AmbiguousPath,
    #[error("foreign authority")]
    ForeignAuthority,
    #[error("invalid header")]
    InvalidHeader,
    /// `Connection` lists a field the gateway reads, sets or frames with.
    #[error("connection lists a protected field")]
    ConnectionListsProtected,
    /// `api_key`, `branch` or a credential in the query that differs from what was
    /// authorised, or appears twice.
    #[error("ambiguous query")]
    AmbiguousQuery,
    /// A cookie named like `api_key`, `branch` or a credential (see `pipeline::query`).
    #[error("ambiguous cookie")]
    AmbiguousCookie,
    #[error("malformed json")]
    MalformedJson,
    /// An inspected body with a repeated or `__proto__` key (two readings).
    #[error("ambiguous json")]
    AmbiguousJson,
    #[error("unreadable body")]
    UnreadableBody,
    /// A request head that is not HTTP/1.1 syntax (request line, fields, line endings).
    #[error("malformed head")]
    MalformedHead,
}

/// Why policy said no; for logs and metrics only, never sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("module never allowed")]
    NeverAllowed,
    #[error("unknown CMA path")]
    UnknownPath,
    #[error("module not in scope")]
    ModuleNotInScope,
    #[error("write with read-only scope")]
    ReadOnly,
    #[error("branch not in scope")]
    Branch,
    #[error("body rule")]
    BodyRule,
    #[error("user sessions denied")]
    UserSessionsDenied,
    #[error("management token sent as a user session")]
    TokenAsUserSession,
    #[error("a secret's shape outside authorization")]
    SecretElsewhere,
    #[error("role may not manage tokens")]
    Role,
}

/// The outcome of a request as logs and metrics name it: `Allowed`, or why it was not
/// forwarded. Telemetry keeps one counter per variant, indexed by [`Reason::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Allowed,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    AuthFailed,
    AuthThrottled,
    Denied,
    TooLarge,
    Invalid,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
}

impl Reason {
    /// Every reason, in [`Reason::index`] order.
    pub const ALL: [Reason; 13] = [
        Reason::Allowed,
        Reason::BadRequest,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::AuthFailed,
        Reason::AuthThrottled,
        Reason::Denied,
        Reason::TooLarge,
        Reason::Invalid,
        Reason::RateLimited,
        Reason::Unavailable,
        Reason::UpstreamError,
        Reason::UpstreamTimeout,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value in metrics and the access log.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::BadRequest => "bad_request",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::AuthFailed => "auth_failed",
            Reason::AuthThrottled => "auth_throttled",
            Reason::Denied => "denied",
            Reason::TooLarge => "too_large",
            Reason::Invalid => "invalid",
            Reason::RateLimited => "rate_limited",
            Reason::Unavailable => "unavailable",
            Reason::UpstreamError => "upstream_error",
            Reason::UpstreamTimeout => "upstream_timeout",
        }
    }
}

/// What went wrong talking to the backend, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("connect")]
    Connect,
    #[error("protocol")]
    Protocol,
}

impl GatewayError {
    /// HTTP status and CMA `error_code`.
    pub fn status_and_code(&self) -> (StatusCode, u16) {
        match self {
            GatewayError::BadRequest(_) => (StatusCode::BAD_REQUEST, 400),
            GatewayError::NotFound => (StatusCode::NOT_FOUND, 404),
            GatewayError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            GatewayError::TokenNotFound => (StatusCode::NOT_FOUND, 141),
            GatewayError::StackNotFound => (StatusCode::PRECONDITION_FAILED, 109),
            GatewayError::Unauthenticated { .. } | GatewayError::TokenDisabled => (StatusCode::UNAUTHORIZED, 105),
            GatewayError::Forbidden(_) => (StatusCode::FORBIDDEN, 162),
            GatewayError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, 413),
            GatewayError::HeadTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, 431),
            GatewayError::UriTooLong => (StatusCode::URI_TOO_LONG, 414),
            GatewayError::UnsupportedMediaType | GatewayError::UnsupportedBodyType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, 415)
            }
            GatewayError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            GatewayError::RateLimited { .. } | GatewayError::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, 429),
            GatewayError::Unavailable | GatewayError::Busy => (StatusCode::SERVICE_UNAVAILABLE, 503),
            GatewayError::BadGateway(_) => (StatusCode::BAD_GATEWAY, 502),
            GatewayError::GatewayTimeout => (StatusCode::GATEWAY_TIMEOUT, 504),
            GatewayError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, 408),
        }
    }

    /// Client-facing message: fixed strings, never internal error text.
    fn message(&self) -> String {
        match self {
            GatewayError::BadRequest(BadRequest::MalformedJson) => "The request body is not valid JSON.".into(),
            GatewayError::BadRequest(BadRequest::AmbiguousJson) => {
                "The request body repeats a key or uses a reserved one.".into()
            }
            GatewayError::BadRequest(BadRequest::InvalidHeader) => "A request header is malformed.".into(),
            GatewayError::BadRequest(BadRequest::ConnectionListsProtected) => {
                "The Connection header lists a field the gateway needs to forward.".into()
            }
            GatewayError::BadRequest(BadRequest::AmbiguousQuery) => {
                "The query repeats or contradicts the api_key or branch, names one ambiguously, or names a credential or a method override.".into()
            }
            GatewayError::BadRequest(BadRequest::AmbiguousCookie) => {
                "A cookie names api_key, branch, a credential or a method override; send them as headers.".into()
            }
            GatewayError::BadRequest(_) => "The request is malformed or ambiguous.".into(),
            GatewayError::NotFound => "The requested URL was not found.".into(),
            GatewayError::MethodNotAllowed => "The method is not allowed.".into(),
            GatewayError::TokenNotFound => "The Management Token was not found.".into(),
            GatewayError::StackNotFound => "We can't find that Stack. Please try again.".into(),
            GatewayError::Unauthenticated { .. } | GatewayError::TokenDisabled => {
                "You're not allowed in here unless you're logged in.".into()
            }
            GatewayError::Forbidden(_) => {
                "Access denied. You have insufficient permissions to perform this operation.".into()
            }
            GatewayError::PayloadTooLarge => "The request body is too large.".into(),
            GatewayError::HeadTooLarge => "The request headers are too large.".into(),
            GatewayError::UriTooLong => "The request URL is too long.".into(),
            GatewayError::UnsupportedMediaType => {
                "The request body must be JSON, sent with Content-Type: application/json and no Content-Encoding."
                    .into()
            }
            GatewayError::UnsupportedBodyType => "The request body needs one plain Content-Type \
                 (application/json, or multipart/form-data for uploads); form bodies are not accepted."
                .into(),
            GatewayError::Unprocessable(_) => "The request could not be processed. Please check the errors.".into(),
            GatewayError::RateLimited { retry_after, .. } | GatewayError::Throttled { retry_after } => {
                format!("Too many requests. Please retry after {retry_after} seconds.")
            }
            GatewayError::Unavailable => "The service is temporarily unavailable. Please retry later.".into(),
            GatewayError::Busy => "The gateway is reading too many request bodies. Please retry shortly.".into(),
            GatewayError::BadGateway(UpstreamFailure::Connect) => "The backend could not be reached.".into(),
            GatewayError::BadGateway(UpstreamFailure::Protocol) => "The backend did not send a valid response.".into(),
            GatewayError::GatewayTimeout => "The backend did not answer in time.".into(),
            GatewayError::RequestTimeout => "The request body did not arrive in time.".into(),
        }
    }

    /// Why the request was not forwarded, for logs and metrics (no user data).
    pub fn reason(&self) -> Reason {
        match self {
            GatewayError::BadRequest(_) => Reason::BadRequest,
            GatewayError::NotFound | GatewayError::TokenNotFound => Reason::NotFound,
            GatewayError::MethodNotAllowed => Reason::MethodNotAllowed,
            GatewayError::StackNotFound | GatewayError::Unauthenticated { .. } | GatewayError::TokenDisabled => {
                Reason::AuthFailed
            }
            GatewayError::Forbidden(_) => Reason::Denied,
            GatewayError::PayloadTooLarge | GatewayError::HeadTooLarge | GatewayError::UriTooLong => Reason::TooLarge,
            // Counted with 422s: both are a token-API body the gateway refused to take.
            GatewayError::UnsupportedMediaType | GatewayError::UnsupportedBodyType | GatewayError::Unprocessable(_) => {
                Reason::Invalid
            }
            GatewayError::RateLimited { .. } => Reason::RateLimited,
            GatewayError::Throttled { .. } => Reason::AuthThrottled,
            GatewayError::Unavailable | GatewayError::Busy => Reason::Unavailable,
            GatewayError::BadGateway(_) => Reason::UpstreamError,
            GatewayError::GatewayTimeout => Reason::UpstreamTimeout,
            // The client's fault, counted with the other refusals of its request.
            GatewayError::RequestTimeout => Reason::BadRequest,
        }
    }

    /// The CMA-style JSON body.
    pub fn body(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        let mut body = serde_json::json!({
            "error_message": self.message(),
            "error_code": code,
        });
        let errors = match self {
            GatewayError::Unauthenticated { expired: true } => Some(serde_json::json!({
                "authorization": ["has expired."]
            })),
            GatewayError::TokenDisabled => Some(serde_json::json!({
                "authorization": ["is disabled."]
            })),
            GatewayError::Unprocessable(fields) => Some(shown_fields(fields)),
            _ => None,
        };
        if let (Some(errors), Some(obj)) = (errors, body.as_object_mut()) {
            obj.insert("errors".into(), errors);
        }
        body
    }

    /// The complete response: status, JSON body, and `Retry-After` on 429 and 503.
    pub fn into_response(self) -> Response<Bytes> {
        let (status, _) = self.status_and_code();
        let mut resp = json_response(status, &self.body());
        match self {
            GatewayError::RateLimited { retry_after, info } => {
                info.write_headers(resp.headers_mut());
                RateInfo::write_retry_after(resp.headers_mut(), retry_after);
            }
            GatewayError::Throttled { retry_after } => RateInfo::write_retry_after(resp.headers_mut(), retry_after),
            // A store or Redis that is down may be back in a second; a client that
            // honours the field retries then, not in a tight loop.
            GatewayError::Busy | GatewayError::Unavailable => RateInfo::write_retry_after(resp.headers_mut(), 1),
            GatewayError::MethodNotAllowed => {
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(crate::cma::ALLOWED_METHODS));
            }
            _ => {}
        }
        resp
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Bytes> {
    let bytes = Bytes::from(value.to_string());
    let mut resp = Response::new(bytes);
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_body_and_header() {
        let info = RateInfo {
            name: "org-read",
            limit: 10,
            remaining: 0,
            reset: 3,
            policy: HeaderValue::from_static("\"org-read\";q=10;w=1"),
            limit_header: HeaderValue::from_static("10"),
        };
        let resp = GatewayError::RateLimited { retry_after: 3, info: Box::new(info) }.into_response();
        assert_eq!(resp.headers()["x-ratelimit-limit"], "10");
        assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
        assert_eq!(resp.headers()["ratelimit"], "\"org-read\";r=0;t=3");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error_message":"Too many requests. Please retry after 3 seconds.","error_code":429})
        );
    }

    /// Every 503 says when to retry (the forty-ninth outside probe found Redis's, in
    /// `fail_mode = "closed"`, without it).
    #[test]
    fn unavailable_says_when_to_retry() {
        for err in [GatewayError::Unavailable, GatewayError::Busy] {
            let resp = err.into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        }
    }

    #[test]
    fn expired_token_names_the_field() {
        let body = GatewayError::Unauthenticated { expired: true }.body();
        assert_eq!(body["error_code"], 105);
        assert_eq!(body["errors"]["authorization"][0], "has expired.");
        let body = GatewayError::Unauthenticated { expired: false }.body();
        assert!(body.get("errors").is_none());
        let (status, code) = GatewayError::TokenDisabled.status_and_code();
        assert_eq!((status.as_u16(), code), (401, 105));
        let body = GatewayError::TokenDisabled.body();
        assert_eq!(body["errors"]["authorization"][0], "is disabled.");
    }

    #[test]
    fn reasons_index_their_own_place() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        assert_eq!(GatewayError::Throttled { retry_after: 1 }.reason().name(), "auth_throttled");
    }

    #[test]
    fn codes_match_design_table() {
        let cases = [
            (GatewayError::StackNotFound, 412, 109),
            (GatewayError::Forbidden(Denial::ReadOnly), 403, 162),
            (GatewayError::BadRequest(BadRequest::AmbiguousPath), 400, 400),
            (GatewayError::NotFound, 404, 404),
            (GatewayError::PayloadTooLarge, 413, 413),
            (GatewayError::UnsupportedMediaType, 415, 415),
            (GatewayError::UnsupportedBodyType, 415, 415),
            (GatewayError::BadGateway(UpstreamFailure::Connect), 502, 502),
            (GatewayError::GatewayTimeout, 504, 504),
            (GatewayError::RequestTimeout, 408, 408),
        ];
        for (err, status, code) in cases {
            let (s, c) = err.status_and_code();
            assert_eq!((s.as_u16(), c), (status, code), "{err:?}");
        }
    }
}

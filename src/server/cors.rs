//! CORS (`[server.cors]`): browsers' preflights are answered by the gateway and never
//! forwarded or authorised; answers to allowed origins carry the CORS fields, which
//! replace any the backend sent, so the gateway's policy is the only one a browser
//! sees. `*` is never combined with credentials (refused when the config loads).

use crate::config::cors::{Cors, Origins};
use crate::field_names::folded_starts_with;
use crate::http1::server::FieldValue;
use crate::proxy::{self, Body};
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ALLOW, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

/// The CORS fields of one answer.
#[derive(Debug, Clone)]
pub enum Fields {
    /// The answer depends on `Origin` (a list of origins is configured), but this
    /// request's origin gets nothing.
    VaryOnly,
    Allowed {
        origin: HeaderValue,
        credentials: bool,
        expose: Option<HeaderValue>,
        vary: bool,
    },
}

impl Fields {
    /// The fields for an answer to a request with these headers, if CORS is on.
    pub fn of(cors: &Cors, headers: &HeaderMap) -> Option<Fields> {
        let vary = matches!(cors.origins, Origins::List(_));
        match (allowed_origin(cors, headers), vary) {
            (Some(origin), _) => Some(Fields::Allowed {
                origin,
                credentials: cors.credentials,
                expose: cors.expose_headers.clone(),
                vary,
            }),
            (None, true) => Some(Fields::VaryOnly),
            (None, false) => None,
        }
    }

    /// Each field, in order.
    pub fn each(&self, f: &mut dyn FnMut(&HeaderName, FieldValue<'_>)) {
        const TRUE: HeaderValue = HeaderValue::from_static("true");
        const ORIGIN_ONLY: HeaderValue = HeaderValue::from_static("origin");
        let vary = match self {
            Fields::VaryOnly => true,
            Fields::Allowed { origin, credentials, expose, vary } => {
                f(&ACCESS_CONTROL_ALLOW_ORIGIN, FieldValue::Shared(origin));
                if *credentials {
                    f(&ACCESS_CONTROL_ALLOW_CREDENTIALS, FieldValue::Shared(&TRUE));
                }
                if let Some(expose) = expose {
                    f(&ACCESS_CONTROL_EXPOSE_HEADERS, FieldValue::Shared(expose));
                }
                *vary
            }
        };
        if vary {
            f(&VARY, FieldValue::Shared(&ORIGIN_ONLY));
        }
    }

    /// Inserts the fields into a header map (`Vary` is added to any already there).
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.each(&mut |name, value| value.insert_into(name, headers));
    }
}

/// Whether a backend's response field is one the CORS policy sets (in any spelling).
pub fn replaces(name: &[u8]) -> bool {
    folded_starts_with(name, b"access-control-")
}

/// The `Access-Control-Allow-Origin` value for an allowed `Origin`.
fn allowed_origin(cors: &Cors, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    match &cors.origins {
        Origins::Any => Some(HeaderValue::from_static("*")),
        Origins::List(list) => {
            let text = origin.to_str().ok()?;
            list.iter().any(|o| o.eq_ignore_ascii_case(text)).then(|| origin.clone())
        }
    }
}

/// Answers an `OPTIONS` request: a CORS preflight for an allowed origin, method and
/// headers gets the CORS fields; anything else only `Allow` (a browser then refuses
/// the cross-origin call, and nothing has been authorised or forwarded either way).
pub fn preflight(cors: Option<&Cors>, headers: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(proxy::full(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(crate::cma::ALLOWED_METHODS));
    let Some(cors) = cors else { return resp };
    let fields = Fields::of(cors, headers);
    if let Some(Fields::Allowed { .. }) = &fields {
        if request_allowed(cors, headers) {
            let h = resp.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, cors.allow_methods.clone());
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, cors.allow_headers.clone());
            h.insert(ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
            fields.iter().for_each(|f| f.apply(h));
            return resp;
        }
    }
    if fields.is_some() {
        Fields::VaryOnly.apply(resp.headers_mut());
    }
    resp
}

/// Whether the preflight's requested method and headers are all allowed.
fn request_allowed(cors: &Cors, headers: &HeaderMap) -> bool {
    let method = headers.get(ACCESS_CONTROL_REQUEST_METHOD).and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let method_ok = method.is_some_and(|m| cors.methods.contains(&m));
    let headers_ok = headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS).iter().all(|v| {
        v.to_str().is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .all(|h| cors.headers.iter().any(|allowed| allowed.eq_ignore_ascii_case(h)))
        })
    });
    method_ok && headers_ok
}

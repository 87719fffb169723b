//! `[server.cors]`: which browser origins may call the gateway, compiled once into the
//! header values every answer needs (see `server::cors` for how they are used).

use super::errors::ConfigErrors;
use super::units::setting_duration;
use http::{HeaderValue, Method};
use serde::Deserialize;

/// The section as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawCors {
    /// Exact origins (`https://app.example.com`), or `["*"]` for any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Option<Vec<String>>,
    pub allowed_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub max_age: Option<String>,
    pub allow_credentials: Option<bool>,
}

/// Which origins are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    /// Exact, lower-case `scheme://host[:port]`.
    List(Vec<String>),
}

/// The compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub origins: Origins,
    pub methods: Vec<Method>,
    /// Lower case.
    pub headers: Vec<String>,
    pub allow_methods: HeaderValue,
    pub allow_headers: HeaderValue,
    pub expose_headers: Option<HeaderValue>,
    pub max_age: HeaderValue,
    pub credentials: bool,
}

/// What a CMA client sends: the credentials, `branch`, and the SDKs' own fields.
const DEFAULT_HEADERS: [&str; 9] = [
    "api_key",
    "authorization",
    "authtoken",
    "branch",
    "content-type",
    "x-user-agent",
    "x-request-id",
    "traceparent",
    "tracestate",
];
const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
/// The gateway's own response fields a page may read.
const DEFAULT_EXPOSE: [&str; 5] =
    ["x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining", "ratelimit", "retry-after"];

/// Compiles the section; every problem is recorded under `server.cors.*`.
pub fn compile(raw: &RawCors, errs: &mut ConfigErrors) -> Option<Cors> {
    let before = errs.0.len();
    let origins = origins(&raw.allowed_origins, errs);
    let credentials = raw.allow_credentials.unwrap_or(false);
    if credentials && origins == Origins::Any {
        errs.push(
            "server.cors.allow_credentials",
            "cannot be combined with allowed_origins = [\"*\"]: name the origins that may send credentials",
        );
    }
    let methods: Vec<Method> = match &raw.allowed_methods {
        None => DEFAULT_METHODS.iter().filter_map(|m| m.parse().ok()).collect(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match m.parse::<Method>() {
                Ok(method) if DEFAULT_METHODS.contains(&method.as_str()) => Some(method),
                _ => {
                    errs.push(format!("server.cors.allowed_methods[{i}]"), "not a CMA method (the value is not shown)");
                    None
                }
            })
            .collect(),
    };
    let headers = names(raw.allowed_headers.as_deref(), &DEFAULT_HEADERS, "allowed_headers", errs);
    let expose = names(raw.expose_headers.as_deref(), &DEFAULT_EXPOSE, "expose_headers", errs);
    let max_age = setting_duration(raw.max_age.as_deref().unwrap_or("10m"))
        .map_err(|e| errs.push("server.cors.max_age", e))
        .ok()?;
    if errs.0.len() > before {
        return None;
    }
    let joined = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
    Some(Cors {
        allow_methods: joined(methods.iter().map(Method::as_str).collect())?,
        allow_headers: joined(headers.iter().map(String::as_str).collect())?,
        expose_headers: if expose.is_empty() { None } else { joined(expose.iter().map(String::as_str).collect()) },
        max_age: HeaderValue::from(max_age.as_secs()),
        origins,
        methods,
        headers,
        credentials,
    })
}

fn origins(list: &[String], errs: &mut ConfigErrors) -> Origins {
    if list.iter().any(|o| o == "*") {
        if list.len() > 1 {
            errs.push("server.cors.allowed_origins", "\"*\" stands alone");
        }
        return Origins::Any;
    }
    if list.is_empty() {
        errs.push("server.cors.allowed_origins", "name at least one origin (or \"*\")");
    }
    for (i, o) in list.iter().enumerate() {
        if !is_origin(o) {
            errs.push(
                format!("server.cors.allowed_origins[{i}]"),
                "not an origin (scheme://host[:port], no path; the value is not shown)",
            );
        }
    }
    Origins::List(list.iter().map(|o| o.to_ascii_lowercase()).collect())
}

/// `scheme://host[:port]` as a browser sends it in `Origin`.
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else { return false };
    // A host name, an IPv4 address or a bracketed IPv6 one, and a port: no `*` (origins
    // match exactly; a pattern would only ever match itself), no user info.
    let plain = rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && plain
        && rest.parse::<http::uri::Authority>().is_ok_and(|a| a.as_str() == rest)
}

fn names(list: Option<&[String]>, default: &[&str], key: &str, errs: &mut ConfigErrors) -> Vec<String> {
    let Some(list) = list else { return default.iter().map(|s| (*s).to_owned()).collect() };
    list.iter()
        .enumerate()
        .filter_map(|(i, n)| match http::HeaderName::from_bytes(n.as_bytes()) {
            Ok(name) => Some(name.as_str().to_owned()),
            Err(_) => {
                errs.push(format!("server.cors.{key}[{i}]"), "not a header name (the value is not shown)");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(origins: &[&str], credentials: bool) -> RawCors {
        RawCors {
            allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            allow_credentials: Some(credentials),
            ..RawCors::default()
        }
    }

    #[test]
    fn wildcard_never_with_credentials_and_origins_are_checked() {
        let mut errs = ConfigErrors(Vec::new());
        assert!(compile(&raw(&["*"], true), &mut errs).is_none());
        assert!(errs.0[0].path.contains("allow_credentials"), "{errs}");
        let mut errs = ConfigErrors(Vec::new());
        let bad =
            ["https://app.example.com/path", "ftp://x", "app.example.com", "https://*.example.com", "https://u@x"];
        assert!(compile(&raw(&bad, false), &mut errs).is_none());
        assert_eq!(errs.0.len(), 5, "{errs}");
        let mut errs = ConfigErrors(Vec::new());
        let cors = compile(&raw(&["https://App.Example.com:8443"], true), &mut errs).unwrap();
        assert_eq!(cors.origins, Origins::List(vec!["https://app.example.com:8443".into()]));
        assert_eq!(cors.max_age, "600");
        assert!(cors.headers.contains(&"api_key".to_owned()));
    }
}

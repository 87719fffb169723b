//! Stage 1: raw request target -> canonical path + original query (DESIGN.md 1.1).
//!
//! Authorisation and forwarding must read one path the same way, so anything a backend
//! might read differently from us is rejected rather than "fixed": encoded `/ \ .`,
//! dot segments, empty segments, `;` parameters, backslashes, control bytes, non-ASCII
//! and `%25`. Encoded unreserved characters are decoded; other encodings are kept, with
//! upper-case hex, so the backend decodes them into the same opaque segment we classified.

use crate::error::{BadRequest, GatewayError};
use http::uri::Authority;
use http::{Uri, Version};
use std::borrow::Cow;

/// The canonical form of a request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Canonical path: what is classified and what is forwarded.
    pub path: Cow<'a, str>,
    /// The original query, uninterpreted.
    pub query: Option<&'a str>,
}

const AMBIGUOUS: GatewayError = GatewayError::BadRequest(BadRequest::AmbiguousPath);

/// Normalises a request URI. `own_authorities` are the authorities a request may
/// name (the gateway's own), in an HTTP/1 absolute-form target or in HTTP/2's
/// `:authority` (which hyper puts in the URI): a request that names another host is
/// not one the gateway was asked to serve, and a backend routing by it could take it
/// elsewhere. (`_version` is kept for callers; both versions follow the one rule.)
pub fn normalize<'a>(
    uri: &'a Uri,
    _version: Version,
    own_authorities: &[Authority],
) -> Result<Target<'a>, GatewayError> {
    // An absolute-form target names `http` or `https`, nothing else (RFC 9112, 3.2.2).
    if uri.scheme().is_some_and(|s| *s != http::uri::Scheme::HTTP && *s != http::uri::Scheme::HTTPS) {
        return Err(GatewayError::BadRequest(BadRequest::ForeignAuthority));
    }
    if let Some(authority) = uri.authority() {
        if !is_own(authority, own_authorities) {
            return Err(GatewayError::BadRequest(BadRequest::ForeignAuthority));
        }
    }
    let path = canonical_path(uri.path())?;
    Ok(Target { path, query: uri.query() })
}

/// An HTTP/2 request's `host` field names its host as `:authority` does (RFC 9113
/// section 8.3.1: a client without `:authority` sends it instead): the same rule.
pub fn check_host(value: &[u8], own_authorities: &[Authority]) -> Result<(), GatewayError> {
    match Authority::try_from(value) {
        Ok(authority) if is_own(&authority, own_authorities) => Ok(()),
        _ => Err(GatewayError::BadRequest(BadRequest::ForeignAuthority)),
    }
}

/// Whether `authority` is one of `own` (host case-insensitive, same port). A wildcard
/// listen address (`0.0.0.0:PORT`, `[::]:PORT`) in `own` stands for every address of
/// the machine: any IP literal on that port is own (a name still has to be listed).
fn is_own(authority: &Authority, own: &[Authority]) -> bool {
    if own.iter().any(|a| a == authority) {
        return true;
    }
    // Addresses are parsed only for an IP literal (a name, the usual `:authority`,
    // costs the comparisons above alone, however many names the certificate has).
    let ip = |a: &Authority| a.host().trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok();
    ip(authority).is_some()
        && own.iter().any(|a| a.port_u16() == authority.port_u16() && ip(a).is_some_and(|w| w.is_unspecified()))
}

/// Byte classes for the fast scan of [`canonical_path`].
const PLAIN: u8 = 0;
const SLASH: u8 = 1;
const PERCENT: u8 = 2;
const FORBIDDEN: u8 = 3;

const fn byte_classes() -> [u8; 256] {
    let mut t = [FORBIDDEN; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = PLAIN;
        b += 1;
    }
    t[b'/' as usize] = SLASH;
    t[b'%' as usize] = PERCENT;
    t[b'\\' as usize] = FORBIDDEN;
    t[b';' as usize] = FORBIDDEN;
    t[b'#' as usize] = FORBIDDEN;
    // Never raw in a path (RFC 3986, 3.3): `http` lets some through, backends differ.
    let mut i = 0;
    let never: &[u8] = b"\"<>`{}|^[]";
    while i < never.len() {
        t[never[i] as usize] = FORBIDDEN;
        i += 1;
    }
    t
}

const CLASSES: [u8; 256] = byte_classes();

/// An empty, `.` or `..` segment.
fn is_ambiguous_segment(segment: &[u8]) -> bool {
    matches!(segment, b"" | b"." | b"..")
}

/// Validates a path and returns its canonical form, borrowing when nothing changes.
///
/// One table-driven pass over the bytes handles the common case (no escapes); only a
/// path with `%` takes the decoding path.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, GatewayError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(AMBIGUOUS);
    }
    if raw == "/" {
        return Ok(Cow::Borrowed(raw));
    }
    let mut has_escape = false;
    let mut segment_start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match CLASSES[usize::from(b)] {
            PLAIN => {}
            SLASH => {
                if is_ambiguous_segment(bytes.get(segment_start..i).unwrap_or(b"")) {
                    return Err(AMBIGUOUS);
                }
                segment_start = i + 1;
            }
            PERCENT => has_escape = true,
            _ => return Err(AMBIGUOUS),
        }
    }
    if is_ambiguous_segment(bytes.get(segment_start..).unwrap_or(b"")) {
        return Err(AMBIGUOUS);
    }
    if has_escape {
        decode_path(raw)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// The decoding path: a path whose bytes passed the scan but which has escapes.
fn decode_path(raw: &str) -> Result<Cow<'_, str>, GatewayError> {
    let mut out: Option<String> = None;
    for (start, segment) in segments(raw) {
        if segment.contains('%') {
            let decoded = decode_segment(segment)?;
            if let Cow::Owned(decoded) = decoded {
                let buf = out.get_or_insert_with(|| raw.get(..start).unwrap_or("").to_owned());
                buf.push('/');
                buf.push_str(&decoded);
                continue;
            }
        }
        if let Some(buf) = out.as_mut() {
            buf.push('/');
            buf.push_str(segment);
        }
    }
    Ok(out.map_or(Cow::Borrowed(raw), Cow::Owned))
}

/// Segments after the leading `/`, each with the byte offset of its preceding `/`.
fn segments(raw: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut offset = 0;
    raw.get(1..).unwrap_or("").split('/').map(move |seg| {
        let start = offset;
        offset += seg.len() + 1;
        (start, seg)
    })
}

/// Decodes `%XX` escapes of unreserved characters; keeps (upper-cased) the escapes of
/// reserved printable ASCII; rejects the dangerous ones.
fn decode_segment(segment: &str) -> Result<Cow<'_, str>, GatewayError> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut changed = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).and_then(|h| hex_value(*h));
        let lo = bytes.get(i + 2).and_then(|l| hex_value(*l));
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(AMBIGUOUS);
        };
        let value = hi << 4 | lo;
        match value {
            // Separators, dots, the escape character itself (double encoding),
            // parameters, control bytes and anything non-ASCII (overlong UTF-8,
            // look-alikes): never let a backend decode these into structure.
            b'/' | b'\\' | b'.' | b'%' | b';' | b'#' | 0x00..=0x1f | 0x7f..=0xff => return Err(AMBIGUOUS),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => {
                out.push(char::from(value));
                changed = true;
            }
            _ => {
                let upper = [b'%', upper_hex(hi), upper_hex(lo)];
                let kept = bytes.get(i..i + 3).unwrap_or(&[]);
                changed |= kept != upper;
                out.extend(upper.iter().map(|b| char::from(*b)));
            }
        }
        i += 3;
    }
    if out.is_empty() || out == "." || out == ".." {
        return Err(AMBIGUOUS);
    }
    Ok(if changed { Cow::Owned(out) } else { Cow::Borrowed(segment) })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn upper_hex(nibble: u8) -> u8 {
    b"0123456789ABCDEF".get(usize::from(nibble & 0xf)).copied().unwrap_or(b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, GatewayError> {
        canonical_path(p).map(|c| c.into_owned())
    }

    #[test]
    fn characters_never_raw_in_a_path_are_refused() {
        for c in ['"', '<', '>', '`', '{', '}', '|', '^', '[', ']', '\\', ';', '#'] {
            let path = format!("/v3/content_types/a{c}b");
            assert!(canonical_path(&path).is_err(), "{path:?}");
        }
        assert!(canonical_path("/v3/content_types/a%22b").is_ok());
    }

    #[test]
    fn plain_paths_borrow() {
        let p = "/v3/content_types/blog/entries";
        assert!(matches!(canonical_path(p), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(canon("/v3/content_%74ypes/a%2Db").unwrap(), "/v3/content_types/a-b");
        assert_eq!(canon("/v3/x/%7e").unwrap(), "/v3/x/~");
    }

    #[test]
    fn reserved_escapes_are_kept_upper_case() {
        assert_eq!(canon("/v3/entries/a%3fb").unwrap(), "/v3/entries/a%3Fb");
        assert_eq!(canon("/v3/entries/a%20b").unwrap(), "/v3/entries/a%20b");
        assert!(matches!(canonical_path("/v3/e/a%20b"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn ambiguous_forms_are_rejected() {
        let bad = [
            "/v3//content_types",
            "/v3/content_types/",
            "/v3/./stacks",
            "/v3/x/../stacks",
            "/v3/x%2fy",
            "/v3/x%2Fy",
            "/v3/%2e%2e/stacks",
            "/v3/%2E/x",
            "/v3/x%5cy",
            "/v3/x%5Cy",
            "/v3/x%00",
            "/v3/x%zz",
            "/v3/x%4",
            "/v3/x;jsessionid=1",
            "/v3/x\\y",
            "/v3/x%252f",
            "/v3/x%c0%ae",
            "/v3/x%ef%bc%8f",
            "/v3/é",
            "v3/x",
            "",
            "/v3/x%3b",
            "/v3/x%09",
        ];
        for p in bad {
            assert_eq!(canon(p), Err(AMBIGUOUS), "{p:?}");
        }
    }

    #[test]
    fn absolute_form_needs_own_authority() {
        let own = [Authority::from_static("gw.local:8080")];
        let foreign: Uri = "http://evil.example/v3/content_types".parse().unwrap();
        let err = normalize(&foreign, Version::HTTP_11, &own).unwrap_err();
        assert_eq!(err, GatewayError::BadRequest(BadRequest::ForeignAuthority));
        let mine: Uri = "http://gw.local:8080/v3/content_types?x=1".parse().unwrap();
        let t = normalize(&mine, Version::HTTP_11, &own).unwrap();
        assert_eq!((t.path.as_ref(), t.query), ("/v3/content_types", Some("x=1")));
        // HTTP/2's :authority follows the same rule.
        assert_eq!(normalize(&foreign, Version::HTTP_2, &own).unwrap_err(), err);
        assert!(normalize(&mine, Version::HTTP_2, &own).is_ok());
        let upper: Uri = "http://GW.LOCAL:8080/v3/x".parse().unwrap();
        assert!(normalize(&upper, Version::HTTP_2, &own).is_ok());
    }

    #[test]
    fn a_wildcard_listen_address_owns_every_ip_on_its_port() {
        let own = [Authority::from_static("0.0.0.0:8080"), Authority::from_static("localhost:8080")];
        for ok in ["http://10.1.2.3:8080/v3/x", "http://[::1]:8080/v3/x", "http://localhost:8080/v3/x"] {
            assert!(normalize(&ok.parse().unwrap(), Version::HTTP_2, &own).is_ok(), "{ok}");
        }
        for bad in ["http://10.1.2.3:8081/v3/x", "http://evil.example:8080/v3/x", "http://10.1.2.3/v3/x"] {
            assert!(normalize(&bad.parse().unwrap(), Version::HTTP_2, &own).is_err(), "{bad}");
        }
    }
}

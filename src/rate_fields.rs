//! The rate-limit response fields: `X-RateLimit-Limit`, `X-RateLimit-Remaining`, and
//! the IETF draft's `RateLimit-Policy` and `RateLimit`, rendered once
//! ([`RateInfo::each`]) for every writer: a header map (hyper, error responses) or
//! the lines of an HTTP/1.1 head.

use crate::http1::server::FieldValue;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What the rate-limit fields report: the bucket closest to empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateInfo {
    pub name: &'static str,
    pub limit: u32,
    pub remaining: u32,
    pub reset: u64,
    pub policy: HeaderValue,
    /// `limit` as a header value (the bucket's, shared).
    pub limit_header: HeaderValue,
}

impl RateInfo {
    /// Each field, in order, as its name and value; nothing is allocated (the usual
    /// `remaining` counts are header values made once).
    pub fn each(&self, f: &mut dyn FnMut(&HeaderName, FieldValue<'_>)) {
        let mut remaining = itoa::Buffer::new();
        let remaining = remaining.format(self.remaining).as_bytes();
        f(&X_RATELIMIT_LIMIT, FieldValue::Shared(&self.limit_header));
        match small_number(self.remaining) {
            Some(shared) => f(&X_RATELIMIT_REMAINING, FieldValue::Shared(shared)),
            None => f(&X_RATELIMIT_REMAINING, FieldValue::Made(remaining)),
        }
        f(&RATELIMIT_POLICY, FieldValue::Shared(&self.policy));
        // `"name";r=REMAINING;t=RESET`
        let mut current = [0u8; 128];
        let mut at = 0;
        let mut reset = itoa::Buffer::new();
        for part in [b"\"", self.name.as_bytes(), b"\";r=", remaining, b";t=", reset.format(self.reset).as_bytes()] {
            let Some(room) = current.get_mut(at..at + part.len()) else { return };
            room.copy_from_slice(part);
            at += part.len();
        }
        f(&RATELIMIT, FieldValue::Made(current.get(..at).unwrap_or_default()));
    }

    /// Inserts the fields into a header map, replacing any already there.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        self.each(&mut |name, value| value.insert_into(name, headers));
    }

    /// Adds `Retry-After` to a 429.
    pub fn write_retry_after(headers: &mut HeaderMap, secs: u64) {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// The header value of a count up to 1024 (what `X-RateLimit-Remaining` usually
/// says), made once: a clone is a reference-count increment, not an allocation. Marked
/// sensitive like every count left (see `FieldValue::insert_into`): each response on a
/// connection says another one, so HTTP/2 would only fill its table with them.
fn small_number(n: u32) -> Option<&'static HeaderValue> {
    static SMALL: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| {
        (0..=1024u32)
            .map(|n| {
                let mut value = HeaderValue::from(n);
                value.set_sensitive(true);
                value
            })
            .collect()
    });
    usize::try_from(n).ok().and_then(|i| small.get(i))
}

/// Whether `name` (in any spelling) is one of the rate-limit fields (a backend's own
/// copy is replaced, not repeated).
pub fn names(name: &[u8]) -> bool {
    [&X_RATELIMIT_LIMIT, &X_RATELIMIT_REMAINING, &RATELIMIT_POLICY, &RATELIMIT]
        .iter()
        .any(|n| crate::field_names::folded_eq(name, n.as_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_render_once_for_every_writer() {
        let info = RateInfo {
            name: "token-read",
            limit: 3,
            remaining: 2,
            reset: 1,
            policy: HeaderValue::from_static("\"token-read\";q=3;w=1"),
            limit_header: HeaderValue::from_static("3"),
        };
        let mut h = HeaderMap::new();
        info.write_headers(&mut h);
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], "2");
        assert_eq!(h["ratelimit-policy"], "\"token-read\";q=3;w=1");
        assert_eq!(h["ratelimit"], "\"token-read\";r=2;t=1");
        assert!(h.keys().all(|n| names(n.as_str().as_bytes())));
        assert!(names(b"X_RateLimit_Remaining") && !names(b"content-type"));
        // Values made for this response stay out of HTTP/2's compression table; the
        // limit and the policy repeat and are indexed.
        assert!(h["ratelimit"].is_sensitive() && h["x-ratelimit-remaining"].is_sensitive());
        assert!(!h["x-ratelimit-limit"].is_sensitive() && !h["ratelimit-policy"].is_sensitive());
        // The longest values still fit the buffer.
        let long = RateInfo { name: "org-bulk-write", remaining: u32::MAX, reset: u64::MAX, ..info };
        let mut h = HeaderMap::new();
        long.write_headers(&mut h);
        assert_eq!(h["ratelimit"], format!("\"org-bulk-write\";r={};t={}", u32::MAX, u64::MAX).as_str());
        assert!(h["x-ratelimit-remaining"].is_sensitive());
    }
}

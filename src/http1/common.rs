//! What both directions of the HTTP/1.1 code write and read the same way: header
//! lines, the status line, the `Connection` options, the `Date` value.

use crate::field_names::connection_tokens;
use http::StatusCode;

/// A message body up to this size leaves in the same write as its head.
pub(crate) const COALESCE: usize = 16 * 1024;

/// The longest body hyper frames, read or written (the two values above it are its
/// marks for chunked and close-delimited).
const MAX_BODY_LENGTH: u64 = u64::MAX - 2;

/// A `Content-Length` value (one of a list) as every writer can state it again: one
/// [`decimal`] no longer than [`MAX_BODY_LENGTH`]. A longer one, from a client or a
/// backend, is refused: hyper would take it for one of its marks and answer nothing.
pub(crate) fn framed_length(digits: &[u8]) -> Option<u64> {
    decimal(digits).filter(|&n| n <= MAX_BODY_LENGTH)
}

/// A decimal length as HTTP/1 writes it: digits only (no sign, no space), no overflow.
pub(crate) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Appends one `name: value` line. Names and values come from `http` or `httparse`,
/// which refuse every byte that could end a line, so nothing here can split a head.
pub(crate) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a `Content-Length` line.
pub(crate) fn put_length(out: &mut Vec<u8>, n: u64) {
    put_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a status line: `HTTP/1.0` to an HTTP/1.0 client, as hyper answers one, so
/// that it reads the answer by its own version's rules.
pub(crate) fn put_status(out: &mut Vec<u8>, status: StatusCode, http10: bool) {
    if status == StatusCode::OK && !http10 {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// What a `Connection` field says, beyond the names it lists.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionOptions {
    pub close: bool,
    pub upgrade: bool,
    /// HTTP/1.1's default, and how an HTTP/1.0 client asks for it.
    pub keep_alive: bool,
}

/// Reads one `Connection` value: `close`, `upgrade` and `keep-alive` are noted, and
/// every other name (and `upgrade`) is passed to `listed` (a field that is hop-by-hop
/// for this message, RFC 9110 section 7.6.1).
pub(crate) fn connection_options<'a>(
    value: &'a [u8],
    options: &mut ConnectionOptions,
    mut listed: impl FnMut(&'a [u8]),
) {
    for token in connection_tokens(value) {
        if token.eq_ignore_ascii_case(b"close") {
            options.close = true;
        } else if token.eq_ignore_ascii_case(b"upgrade") {
            options.upgrade = true;
            listed(token);
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            options.keep_alive = true;
        } else {
            listed(token);
        }
    }
}

/// The `Date` field value, formatted once per second per thread.
pub(crate) mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs {
                *at = secs;
                *text = httpdate::fmt_http_date(now);
            }
            f(text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_and_listed_names() {
        let mut options = ConnectionOptions::default();
        let mut listed = Vec::new();
        connection_options(b"keep-alive, Close ,x-private,, Upgrade", &mut options, |n| listed.push(n));
        assert_eq!(options, ConnectionOptions { close: true, upgrade: true, keep_alive: true });
        assert_eq!(listed, [&b"x-private"[..], b"Upgrade"]);
    }
}

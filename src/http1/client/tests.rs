//! Tests of `client`.

use super::*;
use crate::http1::Chunk;
use http::HeaderMap;

/// The fields a caller might replace, for these tests.
fn replaced(name: &[u8]) -> bool {
    [&b"x-request-id"[..], b"x-ratelimit-remaining", b"ratelimit"].contains(&name)
}

fn head(text: &str) -> Head {
    let buf = BytesMut::from(text.as_bytes());
    parse_head(&buf, &mut BytesMut::new(), replaced).unwrap().unwrap()
}

fn framed(method: Method, text: &str) -> Option<Option<Framing>> {
    framing(&method, &head(text))
}

#[test]
fn response_framing_follows_rfc_9112() {
    let chunked = Some(Some(Framing::Chunked(Chunk::Size)));
    assert_eq!(framed(Method::GET, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), Some(Some(Framing::Length(5))));
    assert_eq!(framed(Method::HEAD, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), Some(None));
    assert_eq!(framed(Method::GET, "HTTP/1.1 204 No Content\r\n\r\n"), Some(None));
    assert_eq!(framed(Method::GET, "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"), Some(None));
    assert_eq!(framed(Method::GET, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), chunked);
    // Transfer-Encoding wins over Content-Length.
    let both = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: Chunked\r\n\r\n";
    assert_eq!(framed(Method::GET, both), chunked);
    // Any coding but `chunked` alone would be passed on without its label: refused.
    for codings in ["gzip, chunked", "gzip", "chunked, chunked", "chunked\r\ntransfer-encoding: chunked"] {
        let text = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {codings}\r\n\r\n");
        assert!(parse_head(&BytesMut::from(text.as_bytes()), &mut BytesMut::new(), replaced).is_err(), "{codings}");
    }
    // Transfer-Encoding on HTTP/1.0 is faulty framing (RFC 9112 section 6.1).
    assert_eq!(framed(Method::GET, "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), None);
    assert_eq!(framed(Method::GET, "HTTP/1.1 200 OK\r\n\r\n"), Some(Some(Framing::Close)));
    let same = "HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\ncontent-length: 4\r\n\r\n";
    assert_eq!(framed(Method::GET, same), Some(Some(Framing::Length(4))));
    for bad in ["4, 5", "-1", "+4", "0x10", "", "99999999999999999999999"] {
        let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
        assert_eq!(framed(Method::GET, &text), None, "{bad:?}");
    }
}

#[test]
fn keep_alive_needs_http_1_1_without_close() {
    assert!(!head("HTTP/1.1 200 OK\r\n\r\n").close);
    assert!(head("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n").close);
    assert!(head("HTTP/1.0 200 OK\r\n\r\n").close);
}

#[test]
fn hop_by_hop_fields_are_read_but_not_kept() {
    let h = head(concat!(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private, content-length\r\nKeep-Alive: timeout=5\r\n",
        "x-private: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\nProxy-Connection: x\r\n",
        "x-end: 2\r\nUpgrade: h2c\r\nTrailer: x-t\r\nContent-Type: text/plain\r\n\r\n"
    ));
    assert_eq!(h.fields.block(), b"x-end: 2\r\ncontent-type: text/plain\r\n");
    // With Transfer-Encoding the stated length is not passed on (RFC 9112 section 6.3).
    assert_eq!((h.fields.length(), h.fields.has_date(), h.fields.has_replaced()), (None, false, false));
    // Framing still saw what the dropped fields said.
    assert_eq!((h.chunked, h.length, h.close), (Some(true), Some(Some(7)), false));
    assert_eq!(framing(&Method::GET, &h), Some(Some(Framing::Chunked(Chunk::Size))));
}

#[test]
fn fields_keep_their_order_and_become_a_map_on_demand() {
    let h = head(concat!(
        "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Dec 2026 19:00:00 GMT\r\nSet-Cookie: a=1\r\n",
        "Content-Length: 2\r\nset-cookie: b=2\r\nX-Empty:\r\nX-Text:  spaced: value \r\n\r\nok"
    ));
    let block = "server: nginx\r\ndate: Tue, 01 Dec 2026 19:00:00 GMT\r\nset-cookie: a=1\r\nset-cookie: b=2\r\nx-empty: \r\nx-text: spaced: value\r\n";
    assert_eq!(std::str::from_utf8(h.fields.block()).unwrap(), block);
    assert!(h.fields.has_date() && !h.fields.has_replaced());
    let mut map = HeaderMap::new();
    h.fields.into_map(&mut map);
    assert_eq!(map.len(), 7);
    let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!([&map["x-empty"], &map["x-text"], &map["content-length"]], ["", "spaced: value", "2"]);
    for name in ["X-Request-Id", "x-ratelimit-remaining", "RateLimit"] {
        let text = format!("HTTP/1.1 200 OK\r\n{name}: 1\r\n\r\n");
        assert!(head(&text).fields.has_replaced(), "{name}");
    }
}

#[test]
fn malformed_heads_are_refused() {
    for bad in ["HTTP/1.1 2000 OK\r\n\r\n", "HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nbad header\r\n\r\n"] {
        assert!(parse_head(&BytesMut::from(bad.as_bytes()), &mut BytesMut::new(), replaced).is_err(), "{bad:?}");
    }
    let partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx: y\r\n"[..]);
    assert!(parse_head(&partial, &mut BytesMut::new(), replaced).unwrap().is_none());
}

#[test]
fn request_heads_carry_the_callers_fields_and_our_framing() {
    let (a, b) = (HeaderName::from_static("api_key"), HeaderName::from_static("x-one"));
    let (va, vb) = (HeaderValue::from_static("blt1"), HeaderValue::from_static("1"));
    let fields = [(&a, &va), (&b, &vb)];
    let host = HeaderValue::from_static("backend:8080");
    let head = RequestHead {
        method: &Method::POST,
        target: "/v3/entries?x=1",
        host: &host,
        fields: || fields.iter().copied(),
        declared_length: false,
    };
    let mut buf = Vec::new();
    write_head(&mut buf, &head, Sending::Length(3));
    let text = "POST /v3/entries?x=1 HTTP/1.1\r\nhost: backend:8080\r\napi_key: blt1\r\nx-one: 1\r\n\
                content-length: 3\r\n\r\n";
    assert_eq!(String::from_utf8(buf).unwrap(), text);
    let mut buf = Vec::new();
    write_head(&mut buf, &head, Sending::Chunked);
    assert!(String::from_utf8(buf).unwrap().ends_with("x-one: 1\r\ntransfer-encoding: chunked\r\n\r\n"));
    // A bodiless GET states no length unless its client did.
    assert!(!carries_body(&Method::GET) && carries_body(&Method::PUT));
}

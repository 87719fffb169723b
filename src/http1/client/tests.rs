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
    let largest = format!("{}", u64::MAX - 2);
    assert_eq!(
        framed(Method::GET, &format!("HTTP/1.1 200 OK\r\ncontent-length: {largest}\r\n\r\n")),
        Some(Some(Framing::Length(u64::MAX - 2)))
    );
    // Past what any writer frames (hyper's marks for chunked and close-delimited).
    for bad in
        ["4, 5", "-1", "+4", "0x10", "", "99999999999999999999999", "18446744073709551615", "18446744073709551614"]
    {
        let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
        assert_eq!(framed(Method::GET, &text), None, "{bad:?}");
        // Where the length frames nothing, it is still refused: HEAD answers as GET does.
        assert_eq!(framed(Method::HEAD, &text), None, "{bad:?}");
        let not_modified = format!("HTTP/1.1 304 Not Modified\r\ncontent-length: {bad}\r\n\r\n");
        assert_eq!(framed(Method::GET, &not_modified), None, "{bad:?}");
    }
    // Transfer-Encoding frames the body; a bad Content-Length beside it is not read.
    let with_te = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 4, 5\r\n\r\n";
    assert_eq!(framed(Method::HEAD, with_te), Some(None));
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
    h.fields.into_map(&mut map, 0);
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
    for bad in [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        // Outside 100..=599 (RFC 9110 section 15): 999 reached clients before.
        "HTTP/1.1 999 Weird\r\n\r\n",
        "HTTP/1.1 600 X\r\n\r\n",
        "HTTP/1.1 099 X\r\n\r\n",
    ] {
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
        close: false,
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

/// Reads a response body the backend has already sent whole (`wire`, as framed by
/// `framing`): the data, the largest piece read, and the capacity of the read buffer
/// the connection was released with.
async fn read_sent_body(wire: Vec<u8>, framing: Framing) -> (Vec<u8>, usize, usize) {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sent, written) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(&wire).await.unwrap();
        let _ = sent.send(());
        // Held open until the test ends: the body is delimited by its framing.
        std::future::pending::<()>().await;
    });
    let conn =
        Conn::new(Transport::Plain(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap()), replaced);
    written.await.unwrap();
    let (released, returned) = std::sync::mpsc::channel();
    let release = move |conn: Result<Box<Conn>, Stray>| released.send(conn.unwrap().read.capacity()).unwrap();
    let stall = std::time::Duration::from_secs(5);
    let mut response = ResponseBody::new(conn, Some(framing), true, stall, release).unwrap();
    let (mut received, mut largest) = (Vec::new(), 0);
    while let Some(frame) = response.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        largest = largest.max(data.len());
        received.extend_from_slice(&data);
    }
    (received, largest, returned.recv().unwrap())
}

/// A body the backend has already sent is taken in reads larger than [`READ_CHUNK`]
/// (a 64 KiB body was eight reads and eight writes), arrives exact, and the connection
/// goes back for reuse with a buffer no larger than it started with; with its length
/// known and chunked.
#[tokio::test]
async fn a_large_body_is_read_in_large_pieces_and_its_buffer_is_not_kept() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let cases = [(body.clone(), Framing::Length(body.len() as u64)), (chunked, Framing::Chunked(Chunk::Size))];
    for (wire, framing) in cases {
        let (received, largest, capacity) = read_sent_body(wire, framing).await;
        assert!(received == body, "{framing:?}: the body arrives exact");
        assert!(largest > 2 * READ_CHUNK, "{framing:?}: largest read {largest}");
        assert!(capacity <= READ_CHUNK, "{framing:?}: released with {capacity}");
    }
}

/// Interim responses before the final one are bounded: a backend sending more than
/// [`MAX_INTERIM`] is broken (502), not read for ever.
#[tokio::test]
async fn interim_responses_are_bounded() {
    for (interim, ok) in [(MAX_INTERIM, true), (MAX_INTERIM + 1, false)] {
        let mut wire = "HTTP/1.1 100 Continue\r\n\r\n".repeat(interim).into_bytes();
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let (mut read, mut fields) = (BytesMut::new(), BytesMut::new());
        let head = final_head(&mut wire.as_slice(), &mut read, &mut fields, replaced).await;
        assert_eq!(head.is_ok(), ok, "{interim} interim responses");
    }
}

/// A plain connection and its backend's end, over loopback.
async fn plain_pair() -> (Transport, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (backend, _) = listener.accept().unwrap();
    (Transport::Plain(client), backend)
}

/// Waits (without the reactor) until the client's socket holds bytes or its end.
fn arrived(transport: &Transport) {
    let Transport::Plain(tcp) = transport else { unreachable!() };
    let socket = socket2::SockRef::from(tcp);
    socket.set_nonblocking(false).unwrap();
    socket.peek(&mut [std::mem::MaybeUninit::uninit(); 1]).unwrap();
    socket.set_nonblocking(true).unwrap();
}

/// What an idle connection holds is asked of the socket itself, not of the reactor's
/// readiness: bytes (or the backend's close) that came after the response's last read
/// are seen even before the reactor has looked at the sockets again. Readiness, even
/// from a look after the response, misses what came while the request waited its turn
/// to run (docs/benchmarks.md, 2026-12-06 night, has what an outside probe saw).
#[tokio::test]
async fn an_idle_connection_is_asked_of_the_socket_itself() {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    for after in [&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..], b""] {
        let (mut transport, mut backend) = plain_pair().await;
        backend.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        let mut answer = [0u8; 4096];
        let n = transport.read(&mut answer).await.unwrap();
        assert!(n > 0 && n < answer.len(), "a short read clears the reactor's readiness");
        assert_eq!(transport.idle(), Idle::Quiet);
        // A stray answer, or the backend's close, after the response was read; no yield
        // since, so the reactor has not looked.
        match after.is_empty() {
            true => backend.shutdown(std::net::Shutdown::Both).unwrap(),
            false => backend.write_all(after).unwrap(),
        }
        arrived(&transport);
        let seen = if after.is_empty() { Idle::Closed } else { Idle::Stray };
        assert_eq!(transport.idle(), seen);
    }
}

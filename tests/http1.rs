//! The gateway's own HTTP/1.1 loop (`src/http1/server.rs`) and its handover to hyper,
//! over raw TCP against the real server and a real backend: pipelining, HEAD,
//! `Connection: close`, small bodies read with their heads, larger and chunked bodies
//! mid-connection, header and shutdown behaviour of keep-alive connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use stackgate::clock::SystemClock;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATH: &str = "/v3/content_types/blog/entries";

fn get(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\n{extra}\r\n")
}

/// Reads one response (Content-Length framed, or head only); `None` at EOF.
async fn response(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Option<(String, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len: usize = match head_only {
                true => 0,
                false => head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0),
            };
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                return Some((head, body));
            }
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n @ 1..)) => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Whether the server closes the connection within `within` (EOF or reset).
async fn closes_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    matches!(tokio::time::timeout(within, stream.read(&mut chunk)).await, Ok(Ok(0) | Err(_)))
}

/// A raw backend's side: reads one request head (false if the connection ended first).
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Waits until the gateway has read everything sent on `stream`: its end of the
/// connection holds no unread bytes (Linux's `/proc/net/tcp`, IPv4 loopback).
async fn read_by_gateway(stream: &TcpStream) {
    let hex = |a: std::net::SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port()),
        std::net::IpAddr::V6(_) => panic!("IPv4 only"),
    };
    let (gateway, client) = (hex(stream.peer_addr().unwrap()), hex(stream.local_addr().unwrap()));
    let unread = || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().find_map(|line| {
            // sl, local address, remote address, state, tx_queue:rx_queue, ...
            let mut fields = line.split_whitespace().skip(1);
            let (local, remote, queues) = (fields.next()?, fields.next()?, fields.nth(1)?);
            if local != gateway || remote != client {
                return None;
            }
            u64::from_str_radix(queues.split_once(':')?.1, 16).ok()
        })
    };
    let started = Instant::now();
    while unread() != Some(0) {
        assert!(started.elapsed() < Duration::from_secs(10), "the gateway never read what was sent");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A keep-alive connection that has had one GET answered 200 (by the gateway's own
/// loop), with its read buffer.
async fn after_one_get(addr: std::net::SocketAddr, extra: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("{}{extra}", get("GET", PATH, "")).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert!(response(&mut stream, &mut buf, false).await.unwrap().0.starts_with("HTTP/1.1 200"));
    (stream, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let env = Env::start().await;
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    // Three requests in one write: two allowed, one without a token in between.
    let batch = format!(
        "{}GET /v3/assets HTTP/1.1\r\nHost: gw\r\n\r\n{}",
        get("GET", &format!("{PATH}?n=1"), ""),
        get("GET", &format!("{PATH}?n=3"), "content-length: 0\r\n")
    );
    stream.write_all(batch.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (first, _) = response(&mut stream, &mut buf, false).await.unwrap();
    let (second, body) = response(&mut stream, &mut buf, false).await.unwrap();
    let (third, _) = response(&mut stream, &mut buf, false).await.unwrap();
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(second.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{second}");
    assert_eq!(error_code(body.as_bytes()), 105, "{body}");
    assert!(third.starts_with("HTTP/1.1 200 OK\r\n"), "{third}");
    // The gateway's own answers carry a Date, as hyper's did.
    assert!(second.to_ascii_lowercase().contains("\r\ndate: "), "{second}");
    let targets: Vec<String> = env.backend.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, [format!("{PATH}?n=1"), format!("{PATH}?n=3")]);
}

/// Many connections pipelining at once, with varied backend delays: each connection gets
/// exactly its own answers, in the order it asked, while the loop lets each buffered
/// next request wait its turn behind the other connections' work (`yield_now`). The
/// backend echoes each target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_many_connections_each_get_their_own_answers_in_order() {
    const CONNECTIONS: usize = 16;
    const DEPTH: usize = 8;
    let env = Env::start().await;
    let addr = env.gateway.addr;
    let clients = (0..CONNECTIONS).map(|c| {
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // Every third request is held at the backend, so answers come back in
            // another order than the requests went out across connections.
            let batch: String = (0..DEPTH)
                .map(|n| {
                    let delay = if (c + n) % 3 == 0 {
                        format!("x-test-delay-ms: {}\r\n", 1 + (c + n) % 7)
                    } else {
                        String::new()
                    };
                    get("GET", &format!("{PATH}?c={c}&n={n}"), &delay)
                })
                .collect();
            stream.write_all(batch.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let mut targets = Vec::new();
            for _ in 0..DEPTH {
                let (head, body) = response(&mut stream, &mut buf, false).await.expect("an answer per request");
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                targets.push(json["target"].as_str().unwrap().to_owned());
            }
            let asked: Vec<String> = (0..DEPTH).map(|n| format!("{PATH}?c={c}&n={n}")).collect();
            assert_eq!(targets, asked, "connection {c}");
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    assert_eq!(env.backend.seen().len(), CONNECTIONS * DEPTH, "each request reached the backend once");
}

/// HTTP/1.0 clients (ApacheBench, a proxy left at HTTP/1.0 towards its upstream) are
/// answered in their version: with a length and `Connection: keep-alive` when they
/// asked to keep the connection, and the connection closed after an answer to one
/// that did not ask. Pipelined on one connection: a GET, a HEAD, a POST with a small
/// body, a refusal, then a GET without keep-alive; the backend sees the four allowed
/// requests, each exactly once. (hyper answered them so before the loop took HTTP/1.0,
/// but for the last answer's `Connection: close`, which it left out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_are_answered_in_their_version_and_kept_only_on_request() {
    let env = Env::start().await;
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    let v10 = |req: String| req.replacen("HTTP/1.1", "HTTP/1.0", 1);
    let keep = "Connection: Keep-Alive\r\n";
    let body = r#"{"entry":{"title":"x"}}"#;
    let post = format!("{keep}content-type: application/json\r\ncontent-length: {}\r\n", body.len());
    let batch = [
        v10(get("GET", &format!("{PATH}?n=1"), keep)),
        v10(get("HEAD", &format!("{PATH}?n=2"), keep)),
        v10(get("POST", PATH, &post)) + body,
        format!("GET {PATH}?n=4 HTTP/1.0\r\n{keep}\r\n"),
        v10(get("GET", &format!("{PATH}?n=5"), "")),
    ]
    .concat();
    stream.write_all(batch.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for (what, status, head_only) in
        [("GET", 200, false), ("HEAD", 200, true), ("POST", 200, false), ("no token", 401, false)]
    {
        let (head, answer) =
            response(&mut stream, &mut buf, head_only).await.unwrap_or_else(|| panic!("{what}: no answer"));
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with(&format!("HTTP/1.0 {status} ")), "{what}: {head}");
        assert!(
            lower.contains("\r\nconnection: keep-alive\r\n") && lower.contains("\r\ncontent-length: "),
            "{what}: {head}"
        );
        assert!(!lower.contains("transfer-encoding") && !lower.contains("connection: close"), "{what}: {head}");
        assert_eq!(answer.is_empty(), head_only, "{what}: {answer:?}");
    }
    let (last, _) = response(&mut stream, &mut buf, false).await.expect("the last GET's answer");
    assert!(
        last.starts_with("HTTP/1.0 200 ") && last.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "{last}"
    );
    assert!(buf.is_empty() && closes_within(&mut stream, Duration::from_secs(5)).await, "the connection stays open");
    let seen = env.backend.seen();
    let targets: Vec<(String, String)> = seen.iter().map(|s| (s.method.to_string(), s.target.clone())).collect();
    let expected = [
        ("GET", format!("{PATH}?n=1")),
        ("HEAD", format!("{PATH}?n=2")),
        ("POST", PATH.to_owned()),
        ("GET", format!("{PATH}?n=5")),
    ];
    assert_eq!(targets, expected.map(|(m, t)| (m.to_owned(), t)));
    assert_eq!(seen[2].body, body.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_keeps_the_length_and_sends_no_body() {
    let env = Env::start().await;
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    let batch = format!("{}{}", get("HEAD", PATH, ""), get("GET", PATH, ""));
    stream.write_all(batch.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (head, _) = response(&mut stream, &mut buf, true).await.unwrap();
    let (get_head, get_body) = response(&mut stream, &mut buf, false).await.unwrap();
    let length = |h: &str| {
        h.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(get_head.starts_with("HTTP/1.1 200"), "the GET's response follows the HEAD's head directly: {get_head}");
    assert_eq!(length(&head), Some(get_body.len().to_string()), "{head}");
    // The backend's Date is kept, not doubled; the length is stated once.
    for h in [&head, &get_head] {
        let count = |name: &str| h.lines().filter(|l| l.to_ascii_lowercase().starts_with(name)).count();
        assert_eq!((count("date:"), count("content-length:"), count("x-backend:")), (1, 1, 1), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_answered_and_honoured() {
    let env = Env::start().await;
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    stream.write_all(get("GET", PATH, "Connection: close\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (head, _) = response(&mut stream, &mut buf, false).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{head}");
    assert!(closes_within(&mut stream, Duration::from_secs(2)).await, "the connection was closed");
}

/// A request with a body goes to hyper, which serves the rest of the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_mid_connection_is_handed_over_with_nothing_lost() {
    let env = Env::start().await;
    let mut client = KeepAlive::connect(env.gateway.addr).await;
    let auth = [("api_key", API_KEY), ("authorization", RW), ("content-type", "application/json")];
    assert_eq!(client.send("GET", PATH, &auth, "").await.0, 200);
    // Over the 64 KiB the loop reads with a head: hyper streams it.
    let body = format!(r#"{{"entry":{{"title":"{}"}}}}"#, "x".repeat(70_000));
    assert_eq!(client.send("POST", PATH, &auth, &body).await.0, 200);
    assert_eq!(client.send("GET", &format!("{PATH}?after=1"), &auth, "").await.0, 200);
    let seen = env.backend.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!((seen[1].method.as_str(), seen[1].body_len), ("POST", body.len()));
    assert_eq!(seen[2].target, format!("{PATH}?after=1"));
    // A chunked body (the client declares no length) also goes through hyper.
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    let chunked = format!(
        "{}{}",
        get("GET", PATH, ""),
        get("PUT", &format!("{PATH}/blt1"), "content-type: application/json\r\ntransfer-encoding: chunked\r\n")
    );
    stream.write_all(chunked.as_bytes()).await.unwrap();
    stream.write_all(b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    assert!(response(&mut stream, &mut buf, false).await.unwrap().0.starts_with("HTTP/1.1 200"));
    assert!(response(&mut stream, &mut buf, false).await.unwrap().0.starts_with("HTTP/1.1 200"));
    assert_eq!(env.backend.last().unwrap().body_len, 7);
}

/// A body of stated length that fits with its head in `max_header_bytes` is read by the
/// gateway's own loop: pipelined in one write with bodiless requests, each request is
/// answered in order and forwarded with exactly its own bytes (the next request starts
/// right after them, whatever the body holds); a body that arrives in pieces is read
/// whole; one that pauses on the way goes on through hyper, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_are_read_with_their_heads_and_forwarded_exactly() {
    let env = Env::start().await;
    let ct = "content-type: application/json\r\n";
    let with_body = |method: &str, path: &str, body: &str| {
        format!("{}{body}", get(method, path, &format!("{ct}content-length: {}\r\n", body.len())))
    };
    // A body holding a whole request, and one as large as fits with its head.
    let first = "{\"entry\":{\"title\":\"x\"}}\r\n\r\nGET /v3/stacks HTTP/1.1\r\nHost: gw\r\n\r\n";
    let large = format!("{{\"entry\":{{\"title\":\"{}\"}}}}", "x".repeat(40_000));
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    let pipelined = [
        with_body("POST", PATH, first),
        get("GET", PATH, ""),
        with_body("PUT", &format!("{PATH}/blt1"), &large),
        get("DELETE", &format!("{PATH}/blt1"), ""),
    ]
    .concat();
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..4 {
        let (head, _) = response(&mut stream, &mut buf, false).await.expect("an answer");
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
    }
    let seen = env.backend.seen();
    let got: Vec<(&str, &[u8])> = seen.iter().map(|s| (s.method.as_str(), &s.body[..])).collect();
    assert_eq!(got, [("POST", first.as_bytes()), ("GET", &b""[..]), ("PUT", large.as_bytes()), ("DELETE", &b""[..])]);
    // The loop still serves this connection: a raw `#` in a target gets its 400 (hyper
    // would take the target without the fragment).
    stream.write_all(b"GET /v3/assets#x HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    assert_refused(&mut stream, &mut buf, 400, "a target with `#` after the bodies").await;

    // In two pieces, then (on the same connection) one that pauses before its rest.
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    let mut buf = Vec::new();
    let body = "{\"entry\":{\"title\":\"in pieces\"}}";
    let whole = with_body("POST", PATH, body);
    let (a, b) = whole.split_at(120);
    stream.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream.write_all(b.as_bytes()).await.unwrap();
    assert!(response(&mut stream, &mut buf, false).await.unwrap().0.starts_with("HTTP/1.1 200"));
    let late = with_body("PUT", &format!("{PATH}/blt2"), body);
    let cut = late.len() - 10;
    stream.write_all(&late.as_bytes()[..cut]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream.write_all(&late.as_bytes()[cut..]).await.unwrap();
    assert!(response(&mut stream, &mut buf, false).await.unwrap().0.starts_with("HTTP/1.1 200"));
    stream.write_all(get("GET", &format!("{PATH}?after=1"), "").as_bytes()).await.unwrap();
    assert!(response(&mut stream, &mut buf, false).await.unwrap().0.starts_with("HTTP/1.1 200"));
    let seen = env.backend.seen();
    let got: Vec<(&str, &[u8])> = seen[4..].iter().map(|s| (s.method.as_str(), &s.body[..])).collect();
    assert_eq!(got, [("POST", body.as_bytes()), ("PUT", body.as_bytes()), ("GET", &b""[..])]);
}

/// A write refused with a small body (too large for `max_request_body`, an unknown
/// token, a module no token may touch) leaves its connection usable: the loop read the
/// body with its head, so the next pipelined request is served, and nothing refused
/// reached the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_small_body_leaves_the_connection_usable() {
    let env = Env::start_with("max_request_body = \"1KiB\"", "", Arc::new(SystemClock)).await;
    let ct = "content-type: application/json\r\n";
    let post = |path: &str, token: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {token}\r\n{ct}\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let small = "{\"entry\":{\"title\":\"t\"}}";
    let large = format!("{{\"entry\":{{\"title\":\"{}\"}}}}", "x".repeat(2000));
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    let pipelined = [
        post(PATH, RW, &large),
        post(PATH, "csunknownunknownunknown", small),
        post("/v3/stacks/settings", RW, small),
        get("GET", PATH, ""),
    ]
    .concat();
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for want in [413, 401, 403, 200] {
        let (head, _) = response(&mut stream, &mut buf, false).await.expect("an answer");
        assert!(head.starts_with(&format!("HTTP/1.1 {want} ")), "want {want}: {head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    }
    let seen = env.backend.seen();
    assert_eq!(seen.iter().map(|s| s.method.as_str()).collect::<Vec<_>>(), ["GET"]);
}

/// A body handed over to hyper while shutdown begins is still answered (with the
/// connection closing after it): hyper reads the handed-over request before the drain
/// closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_handed_over_during_shutdown_is_answered() {
    let env = Env::start().await;
    let body = "{\"entry\":{\"title\":\"late\"}}";
    let head = get("POST", PATH, &format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()));
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..5]).await.unwrap();
    // Only once the gateway has read them: before that the connection may still wait in
    // the listener's backlog, or be idle for all its loop has seen, and a drain closes
    // both (as nginx does). Read, the head holds the loop for `BODY_PAUSE`, so the
    // handover to hyper comes after the drain has begun unless this task is held up
    // that long (then it comes before; the request must be answered either way).
    read_by_gateway(&stream).await;
    env.gateway.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut buf = Vec::new();
    let (answer, _) = response(&mut stream, &mut buf, false).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert_eq!(env.backend.last().unwrap().body, body.as_bytes());
}

/// A keep-alive connection must send its next head within `header_read_timeout`, as
/// on a fresh connection; a head trickled in slowly is cut off too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_head_on_a_keep_alive_connection_has_the_header_deadline() {
    let env = Env::start_with("header_read_timeout = \"400ms\"", "", Arc::new(SystemClock)).await;
    let (mut stream, _) = after_one_get(env.gateway.addr, "").await;
    let started = Instant::now();
    for piece in ["GET /v3/assets HTTP/1.1\r\n", "Host: gw\r\n", "api_key: x\r\n", "x-a: 1\r\n", "x-b: 2\r\n"] {
        if stream.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(closes_within(&mut stream, Duration::from_secs(3)).await, "the slow head was cut off");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(350) && took < Duration::from_millis(1500), "cut after {took:?}");
    assert_eq!(env.backend.seen().len(), 1, "the slow request never reached the backend");
}

/// Shutdown closes idle keep-alive connections (and new requests are refused by the
/// closed listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_keep_alive_connections() {
    let env = Env::start().await;
    let (mut stream, _) = after_one_get(env.gateway.addr, "").await;
    env.gateway.begin_shutdown();
    assert!(closes_within(&mut stream, Duration::from_secs(2)).await, "the idle connection was closed");
}

/// Asserts a CMA error answer: the status, `error_code` equal to it, a JSON body and a
/// request id, and the connection closed after it.
async fn assert_refused(stream: &mut TcpStream, buf: &mut Vec<u8>, status: u16, what: &str) {
    let (head, body) = response(stream, buf, false).await.unwrap_or_else(|| panic!("{what:?}: no answer"));
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{what:?}: {head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/json"), "{what:?}: {head}");
    assert!(lower.contains("x-request-id: "), "{what:?}: {head}");
    assert!(lower.contains("connection: close"), "{what:?}: {head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what:?}: {e}: {body}"));
    assert_eq!(json["error_code"], status, "{what:?}: {body}");
    assert!(json["error_message"].is_string(), "{what:?}: {body}");
    assert!(closes_within(stream, Duration::from_secs(3)).await, "{what:?}: closed after");
}

/// Heads no HTTP/1.1 server takes (request line, field syntax, line endings, framing)
/// get the gateway's 400 with its error body, on a fresh connection and after a
/// request the loop took, and nothing reaches the backend.
const MALFORMED: [&str; 25] = [
    "GET /v3/assets HTTP/1.1\r\nHost: gw\r\nbad header: x\r\n\r\n",
    "GET /v3/assets HTTP/1.1\r\nHost: gw\r\n: x\r\n\r\n",
    "GET /v3/assets HTTP/1.1\r\nHost: gw\r\nx-nul: a\0b\r\n\r\n",
    "G@T /v3/assets HTTP/1.1\r\nHost: gw\r\n\r\n",
    "GET /v3/assets HTTP/1.2\r\nHost: gw\r\n\r\n",
    "GET /v3/assets HTTP/3.0\r\nHost: gw\r\n\r\n",
    "GET /v3/assets HTTP/1.1\r\nHost: gw\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    "POST /v3/assets HTTP/1.1\r\nHost: gw\r\ncontent-length: 1, 2\r\n\r\nab",
    "POST /v3/assets HTTP/1.1\r\nHost: gw\r\ncontent-length: 2, 2\r\n\r\nab",
    "GET /v3/assets HTTP/1.1\r\nHost: gw\r\ncontent-length: 0, 0\r\n\r\n",
    "POST /v3/assets HTTP/1.1\r\nHost: gw\r\ncontent-length: +5\r\n\r\nhello",
    "POST /v3/assets HTTP/1.1\r\nHost: gw\r\ncontent-length: 99999999999999999999999\r\n\r\n",
    "POST /v3/assets HTTP/1.1\r\nHost: gw\r\ncontent-length: 18446744073709551615\r\n\r\n",
    "POST /v3/assets HTTP/1.1\r\nHost: gw\r\nexpect: 100-continue\r\ncontent-length: 2, 2\r\n\r\n",
    "GET /v3/assets HTTP/1.1\r\nHost: gw\r\ntransfer-encoding: gzip\r\n\r\n",
    "POST /v3/assets HTTP/1.0\r\nHost: gw\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "GET /v3/assets HTTP/1.1\r\nHost: gw\r\nx-folded: a\r\n b\r\n\r\n",
    "GET /v3/assets?q=\"<> HTTP/1.1\r\nHost: gw\r\n\r\n",
    "GET /v3/assets/`x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "GET http://[::1/v3/assets HTTP/1.1\r\nHost: gw\r\n\r\n",
    "GET /v3/content_types/blog#/../../stacks HTTP/1.1\r\nHost: gw\r\n\r\n",
    "GET /v3/assets#x HTTP/1.1\r\nHost: gw\r\n\r\n",
    // Heads the loop would hand to hyper (a chunked or announced body) with a target
    // `http` refuses, and an HTTP/1.0 one: the loop answers them too.
    "POST /v3/assets?q=\"a\" HTTP/1.1\r\nHost: gw\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST /v3/assets/`x HTTP/1.1\r\nHost: gw\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
    "GET /v3/assets?q=<x> HTTP/1.0\r\n\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_the_gateways_400() {
    let env = Env::start().await;
    for bad in MALFORMED {
        let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
        stream.write_all(bad.as_bytes()).await.unwrap();
        assert_refused(&mut stream, &mut Vec::new(), 400, bad).await;
        let (mut stream, mut buf) = after_one_get(env.gateway.addr, bad).await;
        assert_refused(&mut stream, &mut buf, 400, bad).await;
    }
    assert_eq!(env.backend.seen().len(), MALFORMED.len(), "only the good requests reached the backend");
    // The HTTP/2 preface is no malformed head: h2c with prior knowledge still works.
    let (status, _) = h2c_get(env.gateway.addr).await;
    assert_eq!(status, 200);
}

/// A refused head that asked for `HEAD` is answered without content (RFC 9110, 9.3.2),
/// like every answer to a `HEAD`: a request pipelined behind it must not read the error
/// body as the start of its own answer. The connection closes right after the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_head_request_gets_an_answer_without_content() {
    let env = Env::start_with("max_header_bytes = \"16KiB\"", "", Arc::new(SystemClock)).await;
    let mut cases: Vec<(String, u16)> = MALFORMED
        .iter()
        .filter_map(|bad| bad.strip_prefix("GET ").or_else(|| bad.strip_prefix("POST ")))
        .map(|rest| (format!("HEAD {rest}"), 400))
        .collect();
    cases.push((format!("\r\nHEAD {PATH}#x HTTP/1.1\r\nHost: gw\r\n\r\n"), 400));
    cases.push((format!("HEAD {PATH} HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(20_000)), 431));
    assert!(cases.len() > 20);
    for (bad, status) in &cases {
        let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
        stream.write_all(format!("{bad}{}", get("GET", PATH, "")).as_bytes()).await.unwrap();
        let mut all = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
        assert!(matches!(read, Ok(Ok(_))), "{bad:?}: closed after its answer");
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{bad:?}: {text}");
        let end = text.find("\r\n\r\n").map(|at| at + 4);
        assert_eq!(end, Some(all.len()), "{bad:?}: nothing after the head: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("x-request-id: ") && lower.contains("connection: close"), "{bad:?}: {text}");
    }
    // A lone CR is no empty line: no method is read after it, and the body is sent.
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    stream.write_all(format!("\rHEAD {PATH} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes()).await.unwrap();
    assert_refused(&mut stream, &mut Vec::new(), 400, "a lone CR before HEAD").await;
    assert!(env.backend.seen().is_empty(), "nothing reached the backend");
}

/// The HTTP/2 preface starts a connection or nothing: arriving in part it is held to
/// the head deadline like any head, a whole one must be followed by a request within
/// it, and after an HTTP/1.1 request the preface is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_preface_is_held_to_the_head_deadline_and_only_starts_a_connection() {
    let env = Env::start_with("header_read_timeout = \"1s\"", "", Arc::new(SystemClock)).await;
    for part in ["PRI * HTTP/2.0\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r"] {
        let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
        stream.write_all(part.as_bytes()).await.unwrap();
        assert!(closes_within(&mut stream, Duration::from_secs(3)).await, "{part:?} held past the deadline");
    }
    let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    // The whole preface and SETTINGS, then no request: closed at the head deadline too
    // (the server's own SETTINGS and its acknowledgement come first).
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    stream.write_all(preface.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    while let Ok(Ok(1..)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {}
    assert!(started.elapsed() < Duration::from_secs(4), "an HTTP/2 connection without a request held open");
    let (mut stream, mut buf) = after_one_get(env.gateway.addr, preface).await;
    assert_refused(&mut stream, &mut buf, 400, "a preface after a request").await;
}

/// An HTTP/2 request with prior knowledge (h2c), answered through the same port.
async fn h2c_get(addr: std::net::SocketAddr) -> (u16, bytes::Bytes) {
    let (status, _, body) = h2c_get_with_fields(addr).await;
    (status, body)
}

/// [`h2c_get`], with the response's fields.
async fn h2c_get_with_fields(addr: std::net::SocketAddr) -> (u16, http::HeaderMap, bytes::Bytes) {
    h2c_get_path_with_fields(addr, PATH).await
}

/// [`h2c_get_with_fields`] on `path`.
async fn h2c_get_path_with_fields(addr: std::net::SocketAddr, path: &str) -> (u16, http::HeaderMap, bytes::Bytes) {
    h2c_send(addr, http::Method::GET, path).await
}

/// An h2c request of `method` on `path`, without a body.
async fn h2c_send(
    addr: std::net::SocketAddr,
    method: http::Method,
    path: &str,
) -> (u16, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("api_key", API_KEY)
        .header("authorization", RW)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status.as_u16(), parts.headers, body.collect().await.unwrap().to_bytes())
}

/// Heads too large for their fields or their target get 431 and 414 with the
/// gateway's error body, whether the head arrived whole or is still arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_fields_oversized_heads_and_long_targets_get_431_and_414() {
    let env = Env::start_with("max_header_bytes = \"16KiB\"", "", Arc::new(SystemClock)).await;
    let many: String = (0..120).map(|i| format!("x-f{i}: {i}\r\n")).collect();
    let big = format!("x-big: {}\r\n", "a".repeat(20_000));
    for extra in [many, big] {
        let (mut stream, mut buf) = after_one_get(env.gateway.addr, &get("GET", PATH, &extra)).await;
        assert_refused(&mut stream, &mut buf, 431, "large head").await;
    }
    // Still arriving: the head has passed the limit without its end.
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    let endless = format!("GET {PATH} HTTP/1.1\r\nx-big: {}", "a".repeat(40_000));
    stream.write_all(endless.as_bytes()).await.unwrap();
    assert_refused(&mut stream, &mut Vec::new(), 431, "unfinished head").await;
    let env = Env::start_with("max_header_bytes = \"256KiB\"", "", Arc::new(SystemClock)).await;
    let long = format!("{PATH}?q={}", "a".repeat(70_000));
    let (mut stream, mut buf) = after_one_get(env.gateway.addr, &get("GET", &long, "")).await;
    assert_refused(&mut stream, &mut buf, 414, "long target").await;
    assert_eq!(env.backend.seen().len(), 1);
}

/// A client that stops reading a long response is cut off after `idle_timeout`
/// (the write has made no progress), and the gateway does not hold the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_idle_timeout() {
    const SIZE: usize = 64 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let start = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {SIZE}\r\n\r\n"
                );
                if stream.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                let data = vec![b'x'; 1 << 20];
                for _ in 0..SIZE >> 20 {
                    if stream.write_all(&data).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let cfg = config_text(backend, "idle_timeout = \"3s\"", "");
    let gw = stackgate::server::start(stackgate::config::from_str(&cfg).unwrap(), Arc::new(SystemClock)).await.unwrap();
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(get("GET", "/v3/assets/blt1", "").as_bytes()).await.unwrap();
    let mut first = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first)).await.unwrap().unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..n]));
    // Stop reading for longer than the idle timeout, then take what the socket holds.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (mut received, mut closed) = (n, false);
    let mut chunk = vec![0u8; 1 << 16];
    while let Ok(read) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk)).await {
        match read {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => received += n,
        }
    }
    assert!(closed, "the stalled connection was closed");
    assert!(received < SIZE / 2, "{received} bytes arrived of {SIZE}");
}

/// A client that hangs up while its request waits on the backend cancels it: the
/// upstream connection is closed at once, not when `request_timeout` (2 s) expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_cancels_its_upstream_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<Duration>();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        if !read_head(&mut stream).await {
            return;
        }
        let mut chunk = [0u8; 4096];
        // Never answer; report how long until the gateway closes the connection.
        let arrived = Instant::now();
        while let Ok(1..) = stream.read(&mut chunk).await {}
        let _ = tx.send(arrived.elapsed());
    });
    let cfg = config_text(backend, "", "");
    let gw = stackgate::server::start(stackgate::config::from_str(&cfg).unwrap(), Arc::new(SystemClock)).await.unwrap();
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(get("GET", PATH, "").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    let open_for = tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
    assert!(open_for < Duration::from_millis(1500), "upstream connection closed after {open_for:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_is_read_so_the_answer_arrives_and_the_connection_lives_on() {
    let env = Env::start().await;
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    // 200 KB to the token API (which takes at most 64 KiB): refused by its declared
    // length, before the gateway has read it.
    let size = 200_000;
    let head = format!(
        "POST /v3/stacks/management_tokens HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthtoken: {ALICE}\r\n\
         content-type: application/json\r\ncontent-length: {size}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; size]).await.unwrap();
    let mut buf = Vec::new();
    let (first, body) = response(&mut stream, &mut buf, false).await.expect("the 413 arrives");
    assert!(first.starts_with("HTTP/1.1 413"), "{first}");
    assert_eq!(error_code(body.as_bytes()), 413, "{body}");
    // The body was read to its end: the same connection takes the next request.
    stream.write_all(get("GET", PATH, "").as_bytes()).await.unwrap();
    let (second, _) = response(&mut stream, &mut buf, false).await.expect("the connection stayed open");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");

    // A client waiting for `100 Continue` is refused at once, not invited to send.
    let mut stream = TcpStream::connect(env.gateway.addr).await.unwrap();
    let expecting = head.replace("content-length:", "expect: 100-continue\r\ncontent-length:");
    stream.write_all(expecting.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let started = Instant::now();
    let (answer, _) = response(&mut stream, &mut buf, false).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1), "answered without waiting for the body");
}

/// Names of this process's threads that serve the main listener on their own.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "stackgate-worke")
        .count()
}

/// Thread per core: three accept loops share the address (`SO_REUSEPORT`); every
/// connection is served whichever loop the kernel gives it to, and shutdown drains and
/// ends them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_listener_and_drain_together() {
    let backend = Backend::start().await;
    let cfg = stackgate::config::from_str(&config_text(backend.addr, "", "")).unwrap();
    let store = stackgate::server::open_store(&cfg).await.unwrap();
    let before = worker_threads();
    let gw = stackgate::server::start_workers(
        cfg,
        store,
        Arc::new(SystemClock),
        stackgate::ratelimit::RateClock::monotonic(),
        None,
        3,
    )
    .await
    .unwrap();
    // A thread names itself once it runs: wait for both.
    for _ in 0..100 {
        if worker_threads() == before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(worker_threads(), before + 2, "two threads besides the caller's runtime");
    let request = format!(
        "GET /v3/content_types HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\nConnection: close\r\n\r\n"
    );
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let (addr, request) = (gw.addr, request.clone());
        tasks.push(tokio::spawn(async move { raw(addr, request.as_bytes()).await.0 }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(backend.seen().len(), 60);
    assert!(gw.shutdown().await, "every worker drained in time");
    for _ in 0..50 {
        if worker_threads() == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(worker_threads(), before, "the worker threads ended");
}

/// Chunked bodies the backend sends right after the head: the body (the part in
/// brackets is the body's own data, decoded), by the test's choice.
const CHUNKED_WITH_HEAD: [&str; 4] = [
    // A chunk size that is no number.
    "zz\r\n{}\r\n0\r\n\r\n",
    // A chunk's data not followed by CRLF.
    "5\r\nhelloXX0\r\n\r\n",
    // A bare LF in the second chunk's size line.
    "2\r\n{}\r\n3;x\nabc\r\n0\r\n\r\n",
    // Sound: three chunks and a trailer, the whole body with the head.
    "2\r\n{\"\r\n3\r\na\":\r\n2\r\n1}\r\n0\r\nx-t: 1\r\n\r\n",
];

/// A backend whose response body breaks in what arrived with the head, before the
/// gateway has written a byte of the response, gets the client the gateway's 502 under
/// the request id the backend saw, not a closed connection without a status nor a
/// status and then a break: on the gateway's HTTP/1.1 loop, on hyper's (a request with
/// a body) and on h2c. A sound chunked body that came whole goes out with its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_before_anything_was_sent_is_answered_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (seen, mut heads) = tokio::sync::mpsc::unbounded_channel::<String>();
    let choice = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let chosen = Arc::clone(&choice);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (seen, chosen) = (seen.clone(), Arc::clone(&chosen));
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = seen.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
                let body = CHUNKED_WITH_HEAD[chosen.load(std::sync::atomic::Ordering::SeqCst)];
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{body}"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let cfg = config_text(backend, "", "");
    let gw = stackgate::server::start(stackgate::config::from_str(&cfg).unwrap(), Arc::new(SystemClock)).await.unwrap();
    let id = |text: &str| {
        text.to_ascii_lowercase().lines().find_map(|l| l.strip_prefix("x-request-id: ").map(str::to_owned))
    };
    let post_body = r#"{"asset":{}}"#;
    let extra = format!("content-type: application/json\r\ncontent-length: {}\r\n", post_body.len());
    let requests = [get("GET", "/v3/assets/blt1", ""), format!("{}{post_body}", get("POST", "/v3/assets", &extra))];
    for (n, body) in CHUNKED_WITH_HEAD.iter().enumerate() {
        choice.store(n, std::sync::atomic::Ordering::SeqCst);
        let sound = n == CHUNKED_WITH_HEAD.len() - 1;
        for request in &requests {
            let what = format!("{body:?}, {}", request.lines().next().unwrap());
            let mut stream = TcpStream::connect(gw.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let (head, answer) =
                response(&mut stream, &mut Vec::new(), false).await.unwrap_or_else(|| panic!("{what}: no answer"));
            let backend_saw = heads.recv().await.unwrap();
            assert_eq!(
                id(&head),
                id(&backend_saw),
                "{what}: one request id for the request, the backend and the answer"
            );
            if sound {
                assert!(head.starts_with("HTTP/1.1 200 "), "{what}: {head}");
                assert!(head.to_ascii_lowercase().contains("content-length: 7\r\n"), "{what}: {head}");
                assert_eq!(answer, r#"{"a":1}"#, "{what}");
            } else {
                assert!(head.starts_with("HTTP/1.1 502 "), "{what}: {head}");
                assert_eq!(error_code(answer.as_bytes()), 502, "{what}: {answer}");
                assert!(answer.contains("The backend did not send a valid response."), "{what}: {answer}");
            }
        }
        let (status, answer) = h2c_get(gw.addr).await;
        heads.recv().await.unwrap();
        match sound {
            true => assert_eq!((status, &answer[..]), (200, &br#"{"a":1}"#[..]), "{body:?}, h2c"),
            false => assert_eq!((status, error_code(&answer)), (502, 502), "{body:?}, h2c"),
        }
    }
}

/// A backend on an ephemeral port that hands each connection to `serve`.
async fn raw_backend<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// A backend's length that is no one number (`4, 5`) gets the client a 502 for a HEAD
/// as for its GET, and on a 304, where the length frames nothing: on the gateway's
/// HTTP/1.1 loop and over h2c (tests/ops.rs has the same through an https upstream).
/// So does a length no writer can frame (the two largest 64-bit numbers, which hyper
/// reads as "chunked" and "until close"): the forty-fifth outside probe had
/// 18446744073709551615 answered with no status at all on hyper's paths (a request
/// with a body, HTTP/1.0, h2c) while the access log said 200, and with a 200 whose
/// body could never arrive on the gateway's own loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_that_is_no_one_number_is_502_for_a_head_as_for_its_get() {
    let backend = raw_backend(|mut stream| async move {
        let mut buf = Vec::new();
        if read_until_head(&mut stream, &mut buf).await.is_none() {
            return;
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let answer: &[u8] = if head.contains("/blt304 ") {
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 4, 5\r\n\r\n"
        } else if head.contains("/bltmax ") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n{\"a\":1}"
        } else if head.contains("/bltmax1 ") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551614\r\n\r\n{\"a\":1}"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 4, 5\r\n\r\nabcde"
        };
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let cfg = config_text(backend, "", "");
    let gw = stackgate::server::start(stackgate::config::from_str(&cfg).unwrap(), Arc::new(SystemClock)).await.unwrap();
    let post_body = r#"{"asset":{}}"#;
    let extra = format!("content-type: application/json\r\ncontent-length: {}\r\n", post_body.len());
    for path in ["/v3/assets/bltmax", "/v3/assets/bltmax1"] {
        // A request with a body, and HTTP/1.0 (hyper's paths when the probe found this).
        let with_body = format!("{}{post_body}", get("PUT", path, &extra));
        let http10 = get("GET", path, "").replacen("HTTP/1.1", "HTTP/1.0", 1);
        for request in [with_body, http10] {
            let what = format!("{path}, {}", request.lines().next().unwrap());
            let mut stream = TcpStream::connect(gw.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let (head, answer) =
                response(&mut stream, &mut Vec::new(), false).await.unwrap_or_else(|| panic!("{what}: no answer"));
            assert!(head.contains(" 502 "), "{what}: {head}");
            assert_eq!(error_code(answer.as_bytes()), 502, "{what}: {answer}");
        }
    }
    let paths = ["/v3/assets/blt1", "/v3/assets/bltmax", "/v3/assets/bltmax1"];
    let cases = paths.iter().flat_map(|p| [("GET", *p), ("HEAD", *p)]).chain([("GET", "/v3/assets/blt304")]);
    for (method, path) in cases {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(get(method, path, "").as_bytes()).await.unwrap();
        let (head, _) = response(&mut stream, &mut Vec::new(), method == "HEAD")
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        assert!(head.starts_with("HTTP/1.1 502 "), "{method} {path}: {head}");
        let (status, _, body) = h2c_send(gw.addr, method.parse().unwrap(), path).await;
        assert_eq!(status, 502, "h2c {method} {path}");
        if method == "GET" {
            assert_eq!(error_code(&body), 502, "h2c {method} {path}");
        }
    }
}

/// A backend's 204 that states a length (RFC 9110 section 8.6 forbids it) reaches every
/// client without one: on the gateway's HTTP/1.1 loop (twice on one connection), on
/// hyper's (a request with a body), and over h2c, whose clients refuse a stream whose
/// stated length its DATA does not match. A 304's length (allowed, optional) is left
/// out over h2c as the HTTP/1.1 writers leave it out: every client sees one head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_or_304_states_no_length_to_any_client() {
    let backend = raw_backend(|mut stream| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Some(end) = read_until_head(&mut stream, &mut buf).await {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |n| n.trim().parse().unwrap());
            while buf.len() < end + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..end + length);
            let answer: &[u8] = match head.contains("/blt304 ") {
                true => b"HTTP/1.1 304 Not Modified\r\netag: \"e1\"\r\ncontent-length: 10\r\n\r\n",
                false => b"HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let cfg = config_text(backend, "", "");
    let gw = stackgate::server::start(stackgate::config::from_str(&cfg).unwrap(), Arc::new(SystemClock)).await.unwrap();
    let post_body = r#"{"asset":{}}"#;
    let extra = format!("content-type: application/json\r\ncontent-length: {}\r\n", post_body.len());
    // GETs on this loop (twice on one connection), a POST on hyper's path; the
    // backend answers `/v3/assets/blt304` with a 304, everything else with a 204.
    let requests = [
        (204, get("GET", "/v3/assets/blt1", "")),
        (304, get("GET", "/v3/assets/blt304", "")),
        (204, get("GET", "/v3/assets/blt1", "")),
        (204, format!("{}{post_body}", get("POST", "/v3/assets", &extra))),
    ];
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for (status, request) in &requests {
        let what = request.lines().next().unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = response(&mut stream, &mut buf, false).await.unwrap_or_else(|| panic!("{what}: no answer"));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {head}");
        assert!(!head.to_ascii_lowercase().contains("content-length"), "{what}: {head}");
        assert_eq!(body, "", "{what}");
    }
    for (want, path) in [(204, PATH), (304, "/v3/assets/blt304")] {
        let (status, fields, body) = h2c_get_path_with_fields(gw.addr, path).await;
        assert_eq!((status, &body[..]), (want, &b""[..]), "h2c {path}");
        assert!(fields.get("content-length").is_none(), "h2c {path}: {fields:?}");
    }
}

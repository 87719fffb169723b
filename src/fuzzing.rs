//! The properties the fuzz targets (`fuzz/`) check, kept here so CI replays the
//! committed corpora through the same code as ordinary tests (`tests/fuzz_corpus.rs`).
//! Each function panics only when a property is violated.

use crate::http1::server::{BadHead, NotTaken};
use crate::pipeline::{classify, inspect_body, normalize, Operation};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::rc::Rc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

/// A request target: normalize + classify never panic; an accepted path is canonical
/// (normalizing it again changes nothing) and holds none of the ambiguous forms.
pub fn check_target(data: &[u8]) {
    let Ok(uri) = Uri::try_from(data) else { return };
    let Ok(target) = normalize(&uri, Version::HTTP_11, &[]) else { return };
    let path: &str = &target.path;
    let reparsed = Uri::try_from(path).unwrap_or_default();
    let again = normalize(&reparsed, Version::HTTP_11, &[]);
    assert!(
        again.as_ref().is_ok_and(|t| t.path == path),
        "canonical path {path:?} did not survive a second normalization"
    );
    for bad in ["//", "/./", "/../", "\\", ";", "%2f", "%2F", "%2e", "%2E", "%5c", "%5C", "%25", "%00"] {
        assert!(!path.contains(bad), "canonical path {path:?} contains {bad:?}");
    }
    assert!(!path.ends_with("/.") && !path.ends_with("/..") && (path == "/" || !path.ends_with('/')), "{path:?}");
    assert!(path.is_ascii(), "{path:?}");
    for m in &METHODS {
        let _ = classify(m, path);
    }
}

/// A body for each body rule: never a panic.
pub fn check_body(data: &[u8]) {
    for (method, path) in [
        (Method::POST, "/v3/content_types/ct/entries/e/workflow"),
        (Method::POST, "/v3/workflows/publishing_rules"),
        (Method::PUT, "/v3/workflows/publishing_rules/x"),
    ] {
        if let Ok(op) = classify(&method, path) {
            let _: Operation = op;
            let _ = inspect_body(&op, data);
        }
    }
}

/// A config file: an error list or a config, never a panic.
pub fn check_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::from_str(text);
    }
}

// ---------------------------------------------------------------------------------------
// The gateway's own HTTP/1.1 code against hyper's (issue #17). Both sides are run to
// completion over an in-memory stream (`tokio::io::duplex`) in a current-thread runtime
// without timers, so hyper's answer depends only on the bytes.

/// The default `server.max_header_bytes`: the limit both the gateway's loop and its
/// hyper server get.
const MAX_HEAD: usize = 64 * 1024;

/// Runs a future to completion on a fresh current-thread runtime (no I/O or time
/// driver: nothing here waits on either).
fn run<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt.block_on(future),
        Err(e) => panic!("runtime: {e}"),
    }
}

/// A request as one side understood it. Both sides build a `HeaderMap` by appending the
/// fields in wire order, so its iteration order (fields of one name together, names in
/// order of first appearance) is the most of the order either side keeps.
#[derive(Debug, PartialEq, Eq)]
struct SeenRequest {
    method: Method,
    target: String,
    version: Version,
    fields: Vec<(String, Vec<u8>)>,
    /// The body's length as framed by the head; `None` if not known from the head.
    body: Option<usize>,
}

impl SeenRequest {
    fn new(method: &Method, uri: &Uri, version: Version, headers: &HeaderMap, body: Option<usize>) -> Self {
        let fields = headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
        SeenRequest { method: method.clone(), target: uri.to_string(), version, fields, body }
    }
}

/// Appended to every server-side input: a request both sides take, so the boundary of
/// the last request of the input is checked too (the canary must start where the
/// gateway's parser says that request ended).
const CANARY: &[u8] = b"GET /canary HTTP/1.1\r\nhost: canary\r\n\r\n";

/// The gateway's own request-head parser (`http1::server::parse`) against hyper's HTTP/1
/// server, over the same byte stream (the input, then a canary request):
/// - `parse` never panics; when it declines (`ForHyper`, a refused head, or an incomplete
///   head) the buffer is exactly what it was, since those bytes are handed to hyper;
/// - a head it refuses as malformed is one hyper's server refuses too (no request of
///   hyper's at that place; a target with a raw `#`, which hyper takes without its
///   fragment, is refused by the contract, not as malformed);
/// - a head it accepts carries no body or one of stated length: `Content-Length` at most
///   once and at most `MAX_READ_BODY` (and with the head within the head limit), no
///   `Transfer-Encoding`, `Expect`, `Upgrade` (nor `Connection: upgrade`), not `CONNECT`,
///   HTTP/1.1 or HTTP/1.0;
/// - every request it accepts, in order, up to its first `ForHyper` (from there hyper has
///   the connection: nothing is asserted), is one hyper's server also took, the same one
///   (method, target, version, fields) with a body of the same length and the same
///   bytes: so the next request starts at the same byte for both. A request `parse`
///   marks `Connection: close` ends its run, and so does a body the input cuts short.
pub fn check_h1_server(data: &[u8]) {
    let mut stream = Vec::with_capacity(data.len() + CANARY.len());
    stream.extend_from_slice(data);
    stream.extend_from_slice(CANARY);
    let (ours, malformed) = fast_requests(&stream);
    if ours.is_empty() && !malformed {
        return;
    }
    let (theirs, their_bodies) = hyper_requests(&stream);
    for (i, (request, body)) in ours.iter().enumerate() {
        assert_eq!(theirs.get(i), Some(request), "request {i}: the gateway's parser and hyper disagree");
        // hyper may drop the last request before reading its body (the end of the stream).
        if let Some(Some(theirs)) = their_bodies.get(i) {
            assert_eq!(theirs, body, "request {i}: the body's bytes differ");
        }
    }
    if malformed {
        assert_eq!(theirs.len(), ours.len(), "a head refused as malformed was one hyper took");
    }
}

/// The requests `http1::server::parse` takes from the stream, in order, each with its
/// body (taken from the buffer after the head, as the loop does), and whether it then
/// refused a head as malformed.
fn fast_requests(stream: &[u8]) -> (Vec<(SeenRequest, Bytes)>, bool) {
    let mut buf = BytesMut::from(stream);
    let mut fields = Vec::new();
    let mut seen = Vec::new();
    while !buf.is_empty() {
        let before = buf.clone();
        let (request, close, length) = match crate::http1::server::parse(&mut buf, &mut fields, MAX_HEAD) {
            Ok(Some(head)) => (head.request, head.close, head.body_len),
            declined => {
                assert_eq!(buf, before, "a declined head must leave the buffer as it was (hyper gets it)");
                let malformed = matches!(declined, Err(NotTaken::Bad(BadHead::Malformed)));
                return (seen, malformed);
            }
        };
        let used = before.len() - buf.len();
        assert!(used > 0 && before[used..] == buf[..], "the head must be exactly a prefix of the buffer");
        check_framing(&request, length);
        assert!(used as u64 + length <= MAX_HEAD as u64, "a body read with its head must fit the head limit with it");
        let Some(length) = usize::try_from(length).ok().filter(|&n| n <= buf.len()) else { break };
        let body = buf.split_to(length).freeze();
        let head =
            SeenRequest::new(request.method(), request.uri(), request.version(), request.headers(), Some(length));
        seen.push((head, body));
        if close {
            break;
        }
    }
    (seen, false)
}

/// What `parse` must never accept: a body it would not read whole (chunked, of more
/// than one stated length, or too large), a body length other than the one stated, or
/// anything asking for an upgrade.
fn check_framing<B>(request: &Request<B>, length: u64) {
    use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
    let headers = request.headers();
    let lengths: Vec<_> = headers.get_all(CONTENT_LENGTH).iter().collect();
    match lengths.as_slice() {
        [] => assert_eq!(length, 0, "a body without Content-Length"),
        [one] => assert_eq!(one.to_str().ok().and_then(|v| v.parse().ok()), Some(length), "accepted {one:?}"),
        more => panic!("accepted Content-Length {more:?}"),
    }
    assert!(length <= crate::http1::server::MAX_READ_BODY, "accepted a body of {length} bytes");
    for name in [TRANSFER_ENCODING, EXPECT, UPGRADE] {
        assert!(!headers.contains_key(&name), "accepted a head with {name}");
    }
    for value in headers.get_all(CONNECTION) {
        let upgrade = value.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        assert!(!upgrade, "accepted Connection: {value:?}");
    }
    assert_ne!(request.method(), Method::CONNECT, "accepted CONNECT");
    assert!(matches!(request.version(), Version::HTTP_11 | Version::HTTP_10), "accepted {:?}", request.version());
}

/// The requests hyper's HTTP/1 server (as the gateway configures it, less the timer)
/// takes from the stream, each answered with an empty 200 once its body is read, and
/// each one's body bytes (`None` if hyper dropped the request before their end).
fn hyper_requests(stream: &[u8]) -> (Vec<SeenRequest>, Vec<Option<Bytes>>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let bodies = Rc::new(RefCell::new(Vec::new()));
    let log = Rc::clone(&seen);
    let body_log = Rc::clone(&bodies);
    // Recorded when hyper dispatches the request, not when its answer is polled: hyper
    // (without half-close, as the gateway runs it) drops the request in flight when it
    // reads the end of the stream first, which it does for the last request.
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let length = hyper::body::Body::size_hint(req.body()).exact().and_then(|n| usize::try_from(n).ok());
        log.borrow_mut().push(SeenRequest::new(req.method(), req.uri(), req.version(), req.headers(), length));
        let at = {
            let mut bodies = body_log.borrow_mut();
            bodies.push(None);
            bodies.len() - 1
        };
        let body_log = Rc::clone(&body_log);
        async move {
            if let Ok(read) = req.into_body().collect().await {
                body_log.borrow_mut()[at] = Some(read.to_bytes());
            }
            Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    run(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(server), service);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let send = async move {
            let _ = to_server.write_all(stream).await;
            let _ = to_server.shutdown().await;
        };
        let drain = async move {
            let _ = tokio::io::copy(&mut from_server, &mut tokio::io::sink()).await;
        };
        let _ = tokio::join!(conn, send, drain);
    });
    (seen.take(), bodies.take())
}

/// A response as one side read it: status and body bytes; `Err` if refused.
type ReadOutcome = Result<(u16, Vec<u8>), String>;

/// The gateway's own HTTP/1.1 client code (`http1::client`: `parse_head`, `framing`,
/// `decode_chunk`, driven as `Conn::talk` and the response body reader drive them)
/// against hyper's HTTP/1 client, on a backend's response to a GET (first byte even) or
/// HEAD (odd) request. The rest of the first byte, when not 0, is the size of the reads
/// the gateway's side is fed (0: everything at once).
/// - Reading must not depend on how the bytes were split into reads.
/// - Refusing is allowed (stricter than hyper is fine); what the gateway accepts, hyper's
///   client must accept too, with the same status and the same body bytes. (A refused
///   response costs a 502; an accepted one hyper would refuse, or a body framed
///   differently, means the two disagree on where the message ends.)
///
/// Where the gateway refuses and hyper accepts, by design: a `101` to a request that
/// asked for no upgrade; a chunk size with leading zeros beyond 16 digits (`httparse`
/// counts digits, hyper only overflow); a head over 64 KiB (hyper allows ~400 KiB).
/// hyper is given the gateway's header-count limit (128; its default is 100).
///
pub fn check_h1_client(data: &[u8]) {
    let Some((&flags, wire)) = data.split_first() else { return };
    let method = if flags & 1 == 0 { Method::GET } else { Method::HEAD };
    let step = usize::from(flags >> 1);
    let ours = gateway_read(&method, wire, usize::MAX);
    if step > 0 {
        let split = gateway_read(&method, wire, step);
        assert_eq!(split.as_ref().ok(), ours.as_ref().ok(), "reads of {step} bytes change the result");
    }
    let Ok(ours) = ours else { return };
    match hyper_reads(&method, wire) {
        Ok(theirs) => assert_eq!(ours, theirs, "the gateway and hyper read different responses"),
        Err(e) => panic!("the gateway accepted a response hyper refuses ({e}); gateway read {ours:?}"),
    }
}

/// What the gateway's client makes of the response bytes `wire`, fed in reads of `step`
/// bytes and then the end of the connection.
fn gateway_read(method: &Method, wire: &[u8], step: usize) -> ReadOutcome {
    use crate::http1::client::{framing, parse_head, Framing, MAX_HEAD};
    use crate::http1::{decode_chunk, Decoded};
    let mut reads = wire.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let mut block = BytesMut::new();
    // `Conn::read_head` and `Conn::talk`: heads until a final one.
    let head = loop {
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&buf, &mut block, |_| false) {
                    Ok(Some(head)) => break head,
                    Ok(None) if buf.len() >= MAX_HEAD => return Err("head too large".into()),
                    Ok(None) => {}
                    Err(e) => return Err(format!("head refused: {e:?}")),
                }
            }
            buf.extend_from_slice(reads.next().ok_or("closed before a complete head")?);
        };
        let bytes = buf.split_to(head.len);
        let status = head.resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("101 without an upgrade asked for".into());
        }
        if !status.is_informational() {
            break (head, bytes);
        }
    };
    let (head, _) = head;
    let status = head.resp.status().as_u16();
    let framing = framing(method, &head).ok_or("framing refused")?;
    let mut body = Vec::new();
    // `ResponseBody` and its `Reader`.
    match framing {
        None => {}
        Some(Framing::Length(n)) => loop {
            let take = usize::try_from(n).unwrap_or(usize::MAX).saturating_sub(body.len()).min(buf.len());
            body.extend_from_slice(&buf.split_to(take));
            if body.len() as u64 == n {
                break;
            }
            buf.extend_from_slice(reads.next().ok_or("closed inside a Content-Length body")?);
        },
        Some(Framing::Close) => {
            body.extend_from_slice(&buf);
            reads.for_each(|read| body.extend_from_slice(read));
        }
        Some(Framing::Chunked(mut state)) => loop {
            match decode_chunk(&mut buf, state) {
                Ok(Decoded::Data(data, next)) => {
                    body.extend_from_slice(&data);
                    state = next;
                }
                Ok(Decoded::Progress(next)) => state = next,
                Ok(Decoded::End) => break,
                Ok(Decoded::NeedMore) => {
                    buf.extend_from_slice(reads.next().ok_or("closed inside a chunked body")?);
                }
                Err(()) => return Err(format!("chunked body refused in state {state:?}")),
            }
        },
    }
    Ok((status, body))
}

/// hyper's HTTP/1 client reading the same bytes as the backend's answer to `method /`.
fn hyper_reads(method: &Method, wire: &[u8]) -> ReadOutcome {
    let request = Request::builder()
        .method(method.clone())
        .uri("/")
        .header(http::header::HOST, "backend")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    run(async move {
        let (client, mut backend) = tokio::io::duplex(64 * 1024);
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_headers(128)
            .handshake(TokioIo::new(client))
            .await
            .map_err(|e| e.to_string())?;
        // The response is written once the request head has arrived: hyper treats bytes
        // that come before its request as an error.
        let answer = async move {
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match backend.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = backend.write_all(wire).await;
            let _ = backend.shutdown().await;
        };
        let exchange = async move {
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, body.to_vec()))
        };
        let (_, (), read) = tokio::join!(conn, answer, exchange);
        read
    })
}

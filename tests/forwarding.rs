//! Forwarding: header rewriting, user sessions, upstream failures, streaming.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use stackgate::clock::SystemClock;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PATH: &str = "/v3/content_types/blog/entries";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_headers_are_rewritten() {
    let env = Env::start().await;
    let headers = [
        ("api_key", API_KEY),
        ("authorization", RO),
        ("branch", "main"),
        ("authtoken", "a-user-session"),
        ("x-stackgate-access", "read-write"),
        ("x-stackgate-token-uid", "bltforged"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "client-chosen"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("x-user-agent", "contentstack-management-javascript/1.0"),
        ("api_version", "3.2"),
    ];
    let (status, resp_headers, _) = env.send("GET", PATH, &headers, "").await;
    assert_eq!(status.as_u16(), 200);
    let seen = env.backend.last().unwrap();
    let h = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("api_key").as_deref(), Some(API_KEY));
    assert_eq!(h("branch").as_deref(), Some("main"));
    assert_eq!(h("authorization"), None, "token stripped with forward_token = false");
    assert_eq!(h("authtoken"), None, "no user session rides along with a token");
    assert_eq!(h("x-stackgate-token-uid").as_deref(), Some("blt000000000000ro01"));
    assert_eq!(h("x-stackgate-access").as_deref(), Some("read"));
    assert_eq!(seen.headers.get_all("x-stackgate-access").iter().count(), 1);
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-hop"), None, "headers named by Connection are hop-by-hop");
    assert_eq!(h("x-user-agent").as_deref(), Some("contentstack-management-javascript/1.0"));
    assert_eq!(h("api_version").as_deref(), Some("3.2"));
    let rid = h("x-request-id").unwrap();
    assert_ne!(rid, "client-chosen");
    assert_eq!(resp_headers["x-request-id"].to_str().unwrap(), rid, "client sees the id the backend saw");
    assert_eq!(resp_headers["x-backend"], "1");

    // Read-write tokens are announced as such.
    env.token("GET", PATH, RW, "").await;
    assert_eq!(env.backend.last().unwrap().headers["x-stackgate-access"], "read-write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_response_fields_replace_the_backends() {
    let env = Env::start().await;
    let marker = ("x-test-own-gateway-fields", "1");
    // GET: the gateway's own HTTP/1.1 loop writes the response; POST (a body): hyper.
    for (method, body) in [("GET", ""), ("POST", "{}")] {
        let token = [("api_key", API_KEY), ("authorization", RW), ("content-type", "application/json"), marker];
        let (status, headers, _) = env.send(method, PATH, &token, body).await;
        assert_eq!(status.as_u16(), 200, "{method}");
        let rid = env.backend.last().unwrap().headers["x-request-id"].to_str().unwrap().to_owned();
        for name in ["x-request-id", "x-ratelimit-remaining", "ratelimit", "x-ratelimit-limit", "ratelimit-policy"] {
            assert_eq!(headers.get_all(name).iter().count(), 1, "{method} {name}");
        }
        assert_eq!(headers["x-request-id"].to_str().unwrap(), rid, "{method}");
        assert!(!headers.contains_key("x_request_id"), "{method}: the backend's X_Request_Id reached the client");
        assert_ne!(headers["x-ratelimit-remaining"], "999", "{method}");
        assert!(headers["ratelimit"].to_str().unwrap().contains(";r="), "{method}: {:?}", headers["ratelimit"]);
        assert_eq!(headers["x-backend"], "1");

        // A user session is not rate limited here: the backend's own fields pass.
        let user = [("api_key", API_KEY), ("authtoken", "user-session"), ("content-type", "application/json"), marker];
        let (_, headers, _) = env.send(method, PATH, &user, body).await;
        assert_ne!(headers["x-request-id"], "backend-id", "{method}");
        assert_eq!(headers.get_all("x-request-id").iter().count(), 1, "{method}");
        assert!(!headers.contains_key("x_request_id"), "{method}: user session");
        assert_eq!(headers["x-ratelimit-remaining"], "999", "{method}");
        assert_eq!(headers["ratelimit"], "backend", "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_token_true_keeps_the_token() {
    let env = Env::start_with("", "forward_token = true", Arc::new(SystemClock)).await;
    let (status, _, _) = env.token("GET", PATH, RO, "").await;
    assert_eq!(status.as_u16(), 200);
    let seen = env.backend.last().unwrap();
    assert_eq!(seen.headers["authorization"], RO);
    assert!(seen.headers.get("x-stackgate-token-uid").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_sessions_pass_unchanged_by_default() {
    let env = Env::start().await;
    // Even paths no management token may use: the backend is the authority for users.
    for path in [PATH, "/v3/stacks/settings", "/v3/user"] {
        env.backend.clear();
        let (status, _, _) =
            env.send("GET", path, &[("api_key", API_KEY), ("authtoken", "user-session-xyz")], "").await;
        assert_eq!(status.as_u16(), 200, "{path}");
        let seen = env.backend.last().unwrap();
        assert_eq!(seen.headers["authtoken"], "user-session-xyz");
        assert!(seen.headers.get("x-stackgate-access").is_none());
    }
    let (status, _, _) =
        env.send("GET", PATH, &[("api_key", API_KEY), ("authorization", "Bearer oauth-xyz")], "").await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(env.backend.last().unwrap().headers["authorization"], "Bearer oauth-xyz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_sessions_can_be_denied() {
    let env = Env::start_with("user_sessions = \"deny\"", "", Arc::new(SystemClock)).await;
    let (status, _, body) = env.send("GET", PATH, &[("api_key", API_KEY), ("authtoken", "u")], "").await;
    assert_eq!((status.as_u16(), error_code(&body)), (403, 162));
    let (status, _, _) = env.send("GET", PATH, &[("api_key", API_KEY), ("authorization", "Bearer x")], "").await;
    assert_eq!(status.as_u16(), 403);
    let (status, _, _) = env.token("GET", PATH, RO, "").await;
    assert_eq!(status.as_u16(), 200, "management tokens still work");
    assert_eq!(env.backend.seen().len(), 1);
}

/// Login and logout (`/v3/user-session`) carry no credential yet: in pass mode they go
/// to the backend unchanged (body and all), in deny mode they are 403; a management
/// token never reaches the user-session module, and other requests without a credential
/// stay 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_logout_pass_or_are_denied_with_user_sessions() {
    let login = r#"{"user":{"email":"alice@example.com","password":"pw"}}"#;
    let json = ("content-type", "application/json");
    let env = Env::start().await;
    let (status, _, body) = env.send("POST", "/v3/user-session", &[json], login).await;
    assert_eq!(status.as_u16(), 200, "login passes: {}", String::from_utf8_lossy(&body));
    let seen = env.backend.last().unwrap();
    assert_eq!((seen.method.as_str(), seen.target.as_str(), seen.body_len), ("POST", "/v3/user-session", login.len()));
    assert!(seen.headers.get("x-stackgate-access").is_none());
    let (status, _, _) = env.send("DELETE", "/v3/user-session", &[("authtoken", "user-session-xyz")], "").await;
    assert_eq!(status.as_u16(), 200, "logout passes");
    assert_eq!(env.backend.last().unwrap().headers["authtoken"], "user-session-xyz");
    let (status, _, _) = env.send("DELETE", "/v3/user-session", &[], "").await;
    assert_eq!(status.as_u16(), 200, "logout without a credential passes too");
    assert_eq!(env.backend.seen().len(), 3);
    // Management tokens: never the user-session module.
    for method in ["POST", "DELETE"] {
        let (status, _, body) = env.token(method, "/v3/user-session", RW, login).await;
        assert_eq!((status.as_u16(), error_code(&body)), (403, 162), "{method} with a management token");
    }
    // Only login and logout go without a credential.
    for (method, path) in [("GET", "/v3/user-session"), ("GET", "/v3/user"), ("POST", PATH)] {
        let (status, _, body) = env.send(method, path, &[json], "{}").await;
        assert_eq!((status.as_u16(), error_code(&body)), (401, 105), "{method} {path}");
    }
    assert_eq!(env.backend.seen().len(), 3, "nothing else forwarded");

    let env = Env::start_with("user_sessions = \"deny\"", "", Arc::new(SystemClock)).await;
    for (method, headers) in [("POST", vec![json]), ("DELETE", vec![]), ("DELETE", vec![("authtoken", "u")])] {
        let (status, _, body) = env.send(method, "/v3/user-session", &headers, login).await;
        assert_eq!((status.as_u16(), error_code(&body)), (403, 162), "{method} {headers:?} in deny mode");
    }
    assert!(env.backend.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_is_answered_by_the_gateway() {
    let env = Env::start().await;
    let (status, headers, _) = env.send("OPTIONS", PATH, &[], "").await;
    assert_eq!(status.as_u16(), 204);
    assert!(headers.contains_key("allow"));
    assert!(env.backend.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = stackgate::config::from_str(&config_text(closed, "", "")).unwrap();
    let gw = stackgate::server::start(cfg, Arc::new(SystemClock)).await.unwrap();
    let (status, text) = raw(gw.addr, &raw_get(PATH)).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("\"error_code\":502"));
    assert!(text.contains("The backend could not be reached."), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_504() {
    let env = Env::start().await; // request_timeout = 2s
    let started = Instant::now();
    let (status, _, body) =
        env.send("GET", PATH, &[("api_key", API_KEY), ("authorization", RO), ("x-test-delay-ms", "4000")], "").await;
    assert_eq!((status.as_u16(), error_code(&body)), (504, 504));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(3500), "{took:?}");
}

/// The response timeout is kept per upstream connection and re-armed lazily: on a
/// connection that already served a request, a later slow request still gets the full
/// `request_timeout` (not what was left of the earlier one's), and the connection
/// serves the next request afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_starts_afresh_for_each_request_on_a_connection() {
    let env = Env::start().await; // request_timeout = 2s
    let mut conn = KeepAlive::connect(env.gateway.addr).await;
    let creds = [("api_key", API_KEY), ("authorization", RO)];
    assert_eq!(conn.send("GET", PATH, &creds, "").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    let slow = [("api_key", API_KEY), ("authorization", RO), ("x-test-delay-ms", "4000")];
    let (status, body) = conn.send("GET", PATH, &slow, "").await;
    let took = started.elapsed();
    assert_eq!((status, error_code(body.as_bytes())), (504, 504));
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(3500), "{took:?}");
    // A fast request within the timeout, on the same client connection.
    let nearly = [("api_key", API_KEY), ("authorization", RO), ("x-test-delay-ms", "1500")];
    assert_eq!(conn.send("GET", PATH, &nearly, "").await.0, 200);
    assert_eq!(conn.send("GET", PATH, &creds, "").await.0, 200);
}

/// A raw backend that counts connections, answers every request 200 and, if
/// `close_after` is set, closes each connection that long after answering (as a
/// backend's keep-alive timeout does), without announcing it.
async fn counting_backend(
    close_after: Option<Duration>,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let body = b"{\"ok\":true}";
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body).await.is_err() {
                            return;
                        }
                        if let Some(after) = close_after {
                            tokio::time::sleep(after).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

async fn env_for(backend: std::net::SocketAddr) -> stackgate::server::Running {
    let cfg = stackgate::config::from_str(&config_text(backend, "", "")).unwrap();
    stackgate::server::start(cfg, Arc::new(SystemClock)).await.unwrap()
}

const READ: [(&str, &str); 2] = [("api_key", API_KEY), ("authorization", RW)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_an_idle_connection_costs_the_client_nothing() {
    let (backend, connections) = counting_backend(Some(Duration::from_millis(30))).await;
    let gw = env_for(backend).await;
    let mut client = KeepAlive::connect(gw.addr).await;
    for round in 1..=3 {
        assert_eq!(client.send("GET", PATH, &READ, "").await.0, 200, "round {round}");
        // The backend drops the upstream connection while it is idle.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3, "a new upstream connection each round");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_outlive_client_connections() {
    let (backend, connections) = counting_backend(None).await;
    let gw = env_for(backend).await;
    for _ in 0..10 {
        let (status, _) = raw(gw.addr, &raw_get(PATH)).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened <= 3, "10 one-request client connections opened {opened} upstream connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_another_upstream_moves_open_connections_too() {
    let (old, old_count) = counting_backend(None).await;
    let (new, new_count) = counting_backend(None).await;
    let gw = env_for(old).await;
    let mut client = KeepAlive::connect(gw.addr).await;
    assert_eq!(client.send("GET", PATH, &READ, "").await.0, 200);
    let cfg = stackgate::config::from_str(&config_text(new, "", "")).unwrap();
    gw.gateway.install(cfg).await.unwrap();
    for _ in 0..3 {
        assert_eq!(client.send("GET", PATH, &READ, "").await.0, 200);
    }
    assert_eq!(old_count.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(new_count.load(std::sync::atomic::Ordering::SeqCst), 1, "the open client connection follows the reload");
}

/// A raw backend that answers the n-th request it reads with the n-th scripted
/// response, written in the given pieces 20 ms apart (so the gateway sees it arrive in
/// parts), closing the connection after it when the script says so. Returns the
/// address, the request heads it read, and how many connections it accepted.
type Script = Vec<(Vec<&'static [u8]>, bool)>;
async fn scripted_backend(
    script: Script,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let script = Arc::new(std::sync::Mutex::new(script.into_iter()));
    let (seen, count) = (Arc::clone(&heads), Arc::clone(&connections));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (script, seen) = (Arc::clone(&script), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let mut chunk = [0u8; 4096];
                        let Ok(n @ 1..) = stream.read(&mut chunk).await else { return };
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    buf.drain(..end + 4 + len);
                    seen.lock().unwrap().push(head);
                    let Some((pieces, close)) = script.lock().unwrap().next() else { return };
                    for piece in pieces {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads, connections)
}

/// One client connection to the gateway at a time (so its upstream slot is what the
/// test observes); reconnects only after the gateway closed it.
struct OneConn {
    addr: std::net::SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
    opened: usize,
    /// The last response's headers.
    headers: http::HeaderMap,
}

impl OneConn {
    /// Sends one request and collects the body (`None`: the body broke off).
    async fn fetch(&mut self, method: &str) -> (u16, Option<String>) {
        self.fetch_with(method, "").await
    }

    async fn fetch_with(&mut self, method: &str, body: &'static str) -> (u16, Option<String>) {
        use http_body_util::BodyExt;
        // A connection the gateway closed is replaced.
        while self.sender.as_mut().is_none_or(|s| s.is_closed()) {
            let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(self.addr).await.unwrap());
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.ready().await.unwrap();
            self.sender = Some(sender);
            self.opened += 1;
        }
        let sender = self.sender.as_mut().unwrap();
        sender.ready().await.unwrap();
        let req = http::Request::builder()
            .method(method)
            .uri(PATH)
            .header("host", "gw")
            .header("api_key", API_KEY)
            .header("authorization", RW)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
        let status = resp.status().as_u16();
        self.headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await.unwrap();
        (status, body.ok().map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_responses_are_framed_exactly_and_connections_reused_only_when_safe() {
    let script: Script = vec![
        // 1. Chunked, arriving in pieces, with an extension and a trailer.
        (
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhel",
                b"lo\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
            ],
            false,
        ),
        // 2. Interim responses are dropped; the final one is forwarded.
        (
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
                b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            ],
            false,
        ),
        // 3. HEAD: a length but no body.
        (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"], false),
        // 4. A length-framed body arriving in two pieces, with hop-by-hop fields
        //    (Connection even lists Content-Length: framing still reads it).
        (
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private, content-length\r\nKeep-Alive: timeout=5\r\n",
                b"x-private: 1\r\nProxy-Connection: keep-alive\r\nx-end: 2\r\ncontent-length: 10\r\n\r\n01234",
                b"56789",
            ],
            false,
        ),
        // 5. Delimited by the end of the connection.
        (vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ", b"close"], true),
        // 6. Conflicting lengths: refused, connection dropped.
        (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"], false),
        // 7. A body cut short: the client sees the response break off.
        (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"], true),
        // 8. Connection: close from the backend is honoured.
        (vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye"], false),
        (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh"], false),
    ];
    let (backend, heads, connections) = scripted_backend(script).await;
    let gw = env_for(backend).await;
    let mut client = OneConn { addr: gw.addr, sender: None, opened: 0, headers: http::HeaderMap::new() };
    let conns = || connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(client.fetch("GET").await, (200, Some("hello world".into())));
    assert_eq!(client.fetch("GET").await, (201, Some("ok".into())));
    assert_eq!(client.fetch("HEAD").await, (200, Some(String::new())));
    assert_eq!(client.fetch("GET").await, (200, Some("0123456789".into())));
    assert_eq!(client.headers["x-end"], "2", "end-to-end fields pass");
    for hop in ["keep-alive", "x-private", "proxy-connection"] {
        assert!(!client.headers.contains_key(hop), "{hop} is hop-by-hop: {:?}", client.headers);
    }
    assert_eq!(conns(), 1, "framed responses keep the upstream connection");
    assert_eq!(client.fetch("GET").await, (200, Some("until close".into())));
    assert_eq!(client.fetch("GET").await.0, 502);
    assert_eq!(conns(), 2, "after a close-delimited body the next request needs a new connection");
    assert_eq!(client.fetch("GET").await, (200, None));
    // The gateway ends the client connection whose response broke off.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !client.sender.as_ref().unwrap().is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(conns(), 3, "a refused response is never followed on the same connection");
    assert_eq!(client.fetch("GET").await, (200, Some("bye".into())));
    assert_eq!(client.fetch("GET").await, (200, Some("fresh".into())));
    assert_eq!(conns(), 5);
    assert_eq!(client.opened, 2, "only the broken body cost the client its connection");
    // The gateway frames requests itself: nothing for a GET, its own length otherwise.
    let heads = heads.lock().unwrap();
    assert!(heads.iter().all(|h| !h.contains("transfer-encoding")), "{heads:?}");
    assert!(heads[0].starts_with("get /v3/") && !heads[0].contains("content-length"), "{}", heads[0]);
    assert!(heads[2].starts_with("head /v3/"), "{}", heads[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_sent_again_after_a_connection_dies_unanswered() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // An empty script entry: read the request, then close without answering (the
    // backend's idle timeout firing just as the request arrives, or a crash).
    let script: Script = vec![
        (vec![OK], false),
        (vec![], true),
        (vec![OK], false),
        (vec![], true),
        (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain"], false),
    ];
    let (backend, heads, connections) = scripted_backend(script).await;
    let gw = env_for(backend).await;
    let mut client = OneConn { addr: gw.addr, sender: None, opened: 0, headers: http::HeaderMap::new() };
    assert_eq!(client.fetch("GET").await, (200, Some("ok".into())));
    // A POST may have been acted on: never sent twice, the client gets a 502.
    let (status, _) = client.fetch_with("POST", r#"{"entry":{"title":"once"}}"#).await;
    assert_eq!(status, 502);
    assert_eq!(client.fetch("GET").await, (200, Some("ok".into())));
    // Nor is a GET: once any of its bytes were written the backend may have acted on
    // it, and only a request that never left is sent again.
    assert_eq!(client.fetch("GET").await.0, 502);
    assert_eq!(client.fetch("GET").await, (200, Some("again".into())));
    let heads = heads.lock().unwrap();
    let methods: Vec<&str> = heads.iter().map(|h| h.split(' ').next().unwrap()).collect();
    assert_eq!(methods, ["get", "post", "get", "get", "get"]);
    assert!(heads[1].contains("content-length: 26"), "{}", heads[1]);
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// A backend that refuses an upload as soon as it has read the request head: it
/// answers 413 without reading the body, then either closes (so the gateway's write
/// of the rest fails) or keeps the connection open and reads nothing more (so the
/// write stalls). Returns its address and how many body bytes it had read.
async fn early_refusing_backend(hold: bool) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    const REFUSAL: &[u8] =
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{\"error\":\"too large\"}";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let body_bytes_read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&body_bytes_read);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(end) = read_until_head(&mut stream, &mut buf).await else { return };
                counted.store(buf.len() - end, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.write_all(REFUSAL).await;
                if hold {
                    // Open, and reading nothing more, for longer than the test waits.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                // Dropped with the body unread: the kernel resets the connection.
            });
        }
    });
    (backend, body_bytes_read)
}

/// The backend's early refusal is what the client gets, not a 502 (the write failed)
/// nor a 504 (the write stalled for request_timeout, 2 s here): on HTTP/1.1 with a
/// Content-Length body and a chunked one, and on h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_an_upload_early_is_answered_with_its_own_response() {
    const SIZE: usize = 64 << 20;
    const REFUSED: &[u8] = b"{\"error\":\"too large\"}";
    for hold in [false, true] {
        let (backend, body_bytes_read) = early_refusing_backend(hold).await;
        let gw = env_for(backend).await;
        for (h2, length) in [(false, true), (false, false), (true, true)] {
            let case = format!("hold {hold}, h2 {h2}, content-length {length}");
            let started = Instant::now();
            let (status, body) =
                if h2 { h2_upload(gw.addr, SIZE).await } else { h1_upload(gw.addr, SIZE, length, REFUSED).await };
            let took = started.elapsed();
            assert_eq!(status, 413, "{case}: {}", String::from_utf8_lossy(&body));
            assert!(took < Duration::from_millis(1500), "{case}: answered after {took:?}");
            assert!(body.ends_with(REFUSED), "{case}: {body:?}");
            if !h2 {
                // The rest of the body is not read: the connection ends after the answer.
                let head = String::from_utf8_lossy(&body).to_ascii_lowercase();
                assert!(head.contains("\r\nconnection: close\r\n"), "{case}: {head}");
            }
            assert!(
                body_bytes_read.load(std::sync::atomic::Ordering::SeqCst) < SIZE,
                "{case}: the backend stopped early"
            );
        }
    }
}

/// Uploads the gateway answers before it has read them, hundreds on one HTTP/2
/// connection: every upload is answered and the connection stays open. Answered early
/// by the backend (a 413 on the request head) and by the gateway itself (a 502: no
/// backend). The client writes the rest of each body once the answer has come, as the
/// frames a client wrote before the answer reached it arrive. The unread rest of a body
/// has to end somewhere: reset, those frames arrive on a stream h2 has reset, and once
/// it has forgotten that stream (it keeps 50 for a second) the first of them draws a
/// reset of its own, counted against the connection's limit of 256, past which h2
/// closes the connection (GOAWAY ENHANCE_YOUR_CALM) under every stream on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_answered_early_leave_their_http2_connection_open() {
    let (refusing, _) = early_refusing_backend(false).await;
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for (backend, case) in [(refusing, "backend's 413"), (gone, "gateway's 502")] {
        let gw = env_for(backend).await;
        let answered = tokio::time::timeout(Duration::from_secs(60), uploads_finished_after_answers(gw.addr, 600))
            .await
            .unwrap_or_else(|_| panic!("{case}: the uploads were answered in time"));
        assert_eq!(answered, Ok(600), "{case}: uploads answered before the connection ended");
    }
}

/// A raw h2c client connection: it acknowledges SETTINGS, answers PINGs and keeps
/// the connection's send window.
struct RawH2 {
    conn: tokio::net::TcpStream,
    buf: Vec<u8>,
    window: i64,
}

impl RawH2 {
    async fn connect(gateway: std::net::SocketAddr) -> RawH2 {
        use tokio::io::AsyncWriteExt;
        let mut conn = tokio::net::TcpStream::connect(gateway).await.unwrap();
        conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        conn.write_all(&h2_frame(4, 0, 0, &[])).await.unwrap();
        RawH2 { conn, buf: Vec::new(), window: 65_535 }
    }

    async fn send(&mut self, frames: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.conn.write_all(frames).await.unwrap();
    }

    /// The next frames on streams other than 0; `None` once the gateway sent GOAWAY or
    /// closed the connection.
    async fn frames(&mut self) -> Option<Vec<(u8, u8, u32, Vec<u8>)>> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 << 10];
        match self.conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => self.buf.extend_from_slice(&chunk[..read]),
        }
        let mut on_streams = Vec::new();
        for (kind, flags, stream, payload) in h2_frames(&mut self.buf) {
            match kind {
                4 if flags & 1 == 0 => self.send(&h2_frame(4, 1, 0, &[])).await,
                6 if flags & 1 == 0 => self.send(&h2_frame(6, 1, 0, &payload)).await,
                8 if stream == 0 => {
                    let increment = u32::from_be_bytes([payload[0] & 0x7f, payload[1], payload[2], payload[3]]);
                    self.window += i64::from(increment);
                }
                7 => return None,
                _ if stream != 0 => on_streams.push((kind, flags, stream, payload)),
                _ => {}
            }
        }
        Some(on_streams)
    }
}

/// Sends `count` uploads of 256 KiB one after the other on one h2c connection: the
/// head and the first 16 KiB, then, once the answer has ended, the rest. How many were
/// answered, or how many had been when the gateway sent GOAWAY or closed.
async fn uploads_finished_after_answers(gateway: std::net::SocketAddr, count: u32) -> Result<u32, u32> {
    const FRAME: usize = 16 << 10;
    const FRAMES: usize = 16;
    let mut h2 = RawH2::connect(gateway).await;
    let length = (FRAME * FRAMES).to_string();
    let fields = [
        ("api_key", API_KEY),
        ("authorization", RW),
        ("content-type", "application/octet-stream"),
        ("content-length", length.as_str()),
    ];
    // A GET's block with `:method POST` (static index 3) in place of `:method GET`.
    let mut block = vec![0x83];
    block.extend(&h2_get_block(&gateway.to_string(), "/v3/assets", &fields)[1..]);
    let piece = vec![b'x'; FRAME];
    for n in 0..count {
        let id = 2 * n + 1;
        while h2.window < FRAME as i64 {
            h2.frames().await.ok_or(n)?;
        }
        h2.window -= FRAME as i64;
        let mut first = h2_frame(1, 0x4, id, &block);
        first.extend(h2_frame(0, 0, id, &piece));
        h2.send(&first).await;
        let mut ended = false;
        while !ended {
            for (kind, flags, stream, _) in h2.frames().await.ok_or(n)? {
                // The answer's HEADERS or DATA that ends it, or a reset.
                ended |= stream == id && (kind == 3 || (kind <= 1 && flags & 1 == 1));
            }
        }
        while h2.window < (FRAME * (FRAMES - 1)) as i64 {
            h2.frames().await.ok_or(n)?;
        }
        h2.window -= (FRAME * (FRAMES - 1)) as i64;
        let mut rest = Vec::new();
        for i in 1..FRAMES {
            rest.extend(h2_frame(0, if i + 1 == FRAMES { 0x1 } else { 0 }, id, &piece));
        }
        h2.send(&rest).await;
    }
    Ok(count)
}

/// Uploads `size` bytes on a raw HTTP/1.1 connection (framed by length or chunked)
/// while reading the answer as it comes, as a client that watches for an early answer
/// does; returns its status and everything read up to `until`.
async fn h1_upload(gateway: std::net::SocketAddr, size: usize, length: bool, until: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let framing = if length { format!("content-length: {size}") } else { "transfer-encoding: chunked".to_owned() };
    let head = format!(
        "POST /v3/assets HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\ncontent-type: application/octet-stream\r\n{framing}\r\n\r\n"
    );
    // Once the gateway stops reading, the writes stall or fail, which is expected.
    let upload = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..size / chunk.len() {
            let sent = if length {
                writer.write_all(&chunk).await
            } else {
                writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
                writer.write_all(&chunk).await.and(writer.write_all(b"\r\n").await)
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let mut resp = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !resp.ends_with(until) {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => resp.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("the gateway answered in time");
    upload.abort();
    let status = String::from_utf8_lossy(&resp).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, resp)
}

/// Uploads `size` bytes on an h2c stream; the status and body of the answer.
async fn h2_upload(gateway: std::net::SocketAddr, size: usize) -> (u16, Vec<u8>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://{gateway}/v3/assets"))
        .header("api_key", API_KEY)
        .header("authorization", RW)
        .header("content-type", "application/octet-stream")
        .header("content-length", size.to_string())
        .body(Trickle(rx))
        .unwrap();
    let upload = tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'x'; 64 << 10]);
        for _ in 0..size / chunk.len() {
            if tx.send(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    let resp = tokio::time::timeout(Duration::from_secs(10), trickle_client(true).request(req))
        .await
        .expect("the gateway answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    upload.abort();
    (status, body.to_vec())
}

/// HTTP/2 streams have no connection of their own upstream: each borrows one from its
/// thread's idle list and returns it after its response, so concurrent streams open at
/// most one upstream connection each and later rounds open none. On one thread, as
/// `stackgate run` serves a connection (thread per core).
#[tokio::test(flavor = "current_thread")]
async fn http2_streams_borrow_upstream_connections_and_return_them() {
    use http_body_util::BodyExt;
    let (backend, connections) = counting_backend(None).await;
    let gw = env_for(backend).await;
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    const STREAMS: usize = 8;
    for round in 1..=3 {
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..STREAMS {
            let mut sender = sender.clone();
            streams.spawn(async move {
                let req = http::Request::builder()
                    .uri(format!("http://{}{PATH}", gw.addr))
                    .header("api_key", API_KEY)
                    .header("authorization", RW)
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                (status, resp.into_body().collect().await.unwrap().to_bytes())
            });
        }
        let answers = tokio::time::timeout(Duration::from_secs(10), streams.join_all()).await.unwrap();
        for (status, body) in answers {
            assert_eq!((status, &body[..]), (200, &b"{\"ok\":true}"[..]), "round {round}");
        }
        let opened = connections.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=STREAMS).contains(&opened), "round {round}: {opened} upstream connections");
    }
}

/// W3C trace context: a valid `traceparent` (and its `tracestate`) passes unchanged; a
/// request without one, or with an invalid one, gets a new one (and loses the
/// `tracestate` of the invalid one); the access log carries the trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_through_or_is_started_and_is_logged() {
    let backend = Backend::start().await;
    let dir = temp_dir("trace");
    let file = dir.join("gw.toml");
    std::fs::write(&file, config_text(backend.addr, "", "")).unwrap();
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["--log-format", "json", "run", "--config", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let addr: std::net::SocketAddr =
        lines.next().unwrap().unwrap().strip_prefix("stackgate listening on http://").unwrap().parse().unwrap();
    let child = Proc(child);
    let mut conn = KeepAlive::connect(addr).await;
    let creds = [("api_key", API_KEY), ("authorization", RW)];
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut with_trace = creds.to_vec();
    with_trace.extend([("traceparent", valid), ("tracestate", "vendor=abc")]);
    assert_eq!(conn.send("GET", PATH, &with_trace, "").await.0, 200);
    let seen = backend.last().unwrap();
    assert_eq!(
        (&seen.headers["traceparent"], &seen.headers["tracestate"]),
        (&valid.parse().unwrap(), &"vendor=abc".parse().unwrap())
    );
    let other = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01";
    // A trace id made of the request's own token is neither forwarded nor logged.
    let made_of_token = format!("00-{}-00f067aa0ba902b7-01", &RW[2..]);
    let shifted = format!("00-{}f-00f067aa0ba902b7-01", &RW[3..]);
    let zeros = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    for sent in [None, Some(zeros), Some("nonsense"), Some("two"), Some(made_of_token.as_str()), Some(shifted.as_str())]
    {
        let mut fields = creds.to_vec();
        match sent {
            // Two valid fields are no valid one.
            Some("two") => {
                fields.extend([("traceparent", valid), ("traceparent", other), ("tracestate", "vendor=abc")])
            }
            Some(t) => fields.extend([("traceparent", t), ("tracestate", "vendor=abc")]),
            // State without a trace does not ride along either.
            None => fields.push(("tracestate", "vendor=abc")),
        }
        assert_eq!(conn.send("GET", PATH, &fields, "").await.0, 200);
        let seen = backend.last().unwrap();
        let got = seen.headers["traceparent"].to_str().unwrap().to_owned();
        assert_eq!(seen.headers.get_all("traceparent").iter().count(), 1, "{sent:?}");
        let parts: Vec<&str> = got.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[1].len(), parts[2].len()), (4, "00", 32, 16), "{got}");
        assert!(Some(got.as_str()) != sent && got != valid && got != other, "{sent:?}: {got}");
        assert!(!seen.headers.contains_key("tracestate"), "{sent:?}");
    }
    // A valid trace whose state holds the token's digits: both replaced, the state dropped.
    let state = format!("vendor={}", &RW[2..]);
    let mut fields = creds.to_vec();
    fields.extend([("traceparent", valid), ("tracestate", state.as_str())]);
    assert_eq!(conn.send("GET", PATH, &fields, "").await.0, 200);
    let seen = backend.last().unwrap();
    assert!(seen.headers["traceparent"] != valid && !seen.headers.contains_key("tracestate"), "{:?}", seen.headers);
    // A state longer than W3C allows (512 characters) is not read for a credential (one
    // of tens of kilobytes against a long credential cost milliseconds): both replaced.
    let state = format!("vendor={}", "a".repeat(520));
    let mut fields = creds.to_vec();
    fields.extend([("traceparent", valid), ("tracestate", state.as_str())]);
    assert_eq!(conn.send("GET", PATH, &fields, "").await.0, 200);
    let seen = backend.last().unwrap();
    assert!(seen.headers["traceparent"] != valid && !seen.headers.contains_key("tracestate"), "{:?}", seen.headers);
    drop(conn);
    // Access lines are written off the request path: wait for the line (bounded), then stop
    // the gateway.
    let wanted = "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"";
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut text = String::new();
    while Instant::now() < give_up {
        text = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        if text.contains(wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(child);
    assert!(text.contains(wanted), "{text}");
    assert!(!text.contains(&RW[2..]), "{text}");
}

/// `[server.cors]`: preflights are answered by the gateway (never authorised or
/// forwarded); answers to allowed origins carry the CORS fields, replacing the
/// backend's; other origins get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_and_allowed_origins_get_the_fields() {
    let cors =
        "[server.cors]\nallowed_origins = [\"https://app.example.com\"]\nallow_credentials = true\nmax_age = \"5m\"\n";
    let env = Env::start_with(cors, "", Arc::new(SystemClock)).await;
    let origin = [("origin", "https://app.example.com")];
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        vec![("origin", origin), ("access-control-request-method", method), ("access-control-request-headers", headers)]
    };
    let (status, h, _) = env
        .send("OPTIONS", PATH, &preflight("https://app.example.com", "POST", "api_key, Authorization, branch"), "")
        .await;
    assert_eq!(status.as_u16(), 204);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "300");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("api_key"));
    assert_eq!(h["vary"], "origin");
    for (o, m, hs) in [
        ("https://evil.example", "GET", "api_key"),
        ("https://app.example.com", "PROPFIND", "api_key"),
        ("https://app.example.com", "GET", "x-secret"),
    ] {
        let (status, h, _) = env.send("OPTIONS", PATH, &preflight(o, m, hs), "").await;
        assert_eq!(status.as_u16(), 204);
        assert!(!h.contains_key("access-control-allow-origin"), "{o} {m} {hs}: {h:?}");
    }
    assert!(env.backend.seen().is_empty(), "preflights are never forwarded");
    // An allowed origin's real request: the gateway's fields, not the backend's.
    let mut fields = vec![("api_key", API_KEY), ("authorization", RW), ("x-test-own-gateway-fields", "1")];
    fields.push(("content-type", "application/json"));
    fields.extend(origin);
    for (method, body) in [("GET", ""), ("POST", "{}")] {
        let (status, h, _) = env.send(method, PATH, &fields, body).await;
        assert_eq!(status.as_u16(), 200);
        let acao: Vec<_> = h.get_all("access-control-allow-origin").iter().collect();
        assert_eq!(acao, ["https://app.example.com"], "{method}");
        assert!(h["access-control-expose-headers"].to_str().unwrap().contains("x-ratelimit-remaining"));
    }
    // Errors too; other origins get no CORS fields.
    let (status, h, _) =
        env.send("GET", PATH, &[("origin", "https://app.example.com"), ("api_key", API_KEY)], "").await;
    assert_eq!(
        (status.as_u16(), &h["access-control-allow-origin"]),
        (401, &"https://app.example.com".parse::<http::HeaderValue>().unwrap())
    );
    let (_, h, _) = env
        .send("GET", PATH, &[("origin", "https://evil.example"), ("api_key", API_KEY), ("authorization", RW)], "")
        .await;
    assert!(!h.contains_key("access-control-allow-origin"));
    // `*` with credentials is refused when the config loads.
    let text =
        config_text(env.backend.addr, "[server.cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n", "");
    let err = stackgate::config::from_str(&text).unwrap_err().to_string();
    assert!(err.contains("server.cors.allow_credentials"), "{err}");
}

/// The demo backend pages lists as the CMA does (`skip`, `limit`, `include_count`) and
/// shows `fallback_locale`, so clients that page until a short page or until `count`
/// (the CLI's export) finish; through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_backend_pages_lists_like_the_cma() {
    let demo = stackgate::demo::backend::spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let cfg = stackgate::config::from_str(&config_text(demo.addr, "", "")).unwrap();
    let gw = stackgate::server::start(cfg, Arc::new(SystemClock)).await.unwrap();
    let mut conn = KeepAlive::connect(gw.addr).await;
    let creds = [("api_key", API_KEY), ("authorization", RW)];
    let get = |body: String| serde_json::from_str::<serde_json::Value>(&body).unwrap();
    let (status, body) = conn.send("GET", "/v3/content_types?skip=1&limit=1&include_count=true", &creds, "").await;
    let v = get(body);
    assert_eq!((status, v["content_types"].as_array().unwrap().len(), &v["count"]), (200, 1, &serde_json::json!(2)));
    let (_, body) = conn.send("GET", "/v3/content_types?skip=2", &creds, "").await;
    assert_eq!(get(body)["content_types"], serde_json::json!([]));
    let (_, body) = conn.send("GET", "/v3/locales?include_count=true", &creds, "").await;
    let v = get(body);
    assert_eq!((v["count"].as_u64(), v["locales"][0]["fallback_locale"].is_null()), (Some(1), true));
    let (status, body) = conn.send("GET", "/v3/global_fields?include_count=true", &creds, "").await;
    assert_eq!((status, get(body)), (200, serde_json::json!({"global_fields": [], "count": 0})));
}

/// `request_timeout` is the backend's time, not the client's: an upload that takes
/// longer than it (3 s against 2 s) but keeps coming is forwarded whole, and the
/// backend's time to answer starts when it has the whole body (504 two seconds after
/// the last of five pieces sent 300 ms apart, at 1.2 s: not two seconds after the
/// start). Both client protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_counts_the_backends_time_not_a_slow_upload() {
    let env = Env::start_with("idle_timeout = \"4s\"", "", Arc::new(SystemClock)).await; // request_timeout = 2s
    for h2 in [false, true] {
        let (status, _, took) =
            trickled_upload(env.gateway.addr, STREAMED_WRITE, h2, Duration::ZERO, 10, Duration::from_millis(300), 0)
                .await;
        assert_eq!(status, 200, "h2 {h2}: a 3 s upload was cut after {took:?}");
        assert_eq!(env.backend.last().unwrap().body_len, 10 * 1024, "h2 {h2}");
        let (status, code, took) =
            trickled_upload(env.gateway.addr, STREAMED_WRITE, h2, Duration::ZERO, 5, Duration::from_millis(300), 4000)
                .await;
        assert_eq!((status, code), (504, 504), "h2 {h2}");
        assert!(took >= Duration::from_millis(3100) && took < Duration::from_millis(4500), "h2 {h2}: {took:?}");
    }
}

/// A client that stops sending its body is answered 408 with the CMA error body after
/// `idle_timeout`, not left holding the request: after a first piece (forwarded),
/// before any (nothing forwarded), and in a body the gateway reads whole to check it
/// (an entry's workflow change); over HTTP/1.1 and HTTP/2 (a stream on a connection
/// kept alive by pings, so the connection's own idle limit never fires). A body read
/// whole that keeps coming is not cut for taking longer than `idle_timeout` in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_408_after_idle_timeout() {
    let env = Env::start_with("idle_timeout = \"3s\"", "", Arc::new(SystemClock)).await; // request_timeout = 2s
    let workflow = ("POST", "/v3/content_types/blog/entries/e1/workflow");
    let long = Duration::from_secs(30);
    let cases = [(STREAMED_WRITE, Duration::ZERO, 1), (STREAMED_WRITE, long, 0), (workflow, Duration::ZERO, 0)];
    for ((target, first_after, forwarded), h2) in cases.into_iter().flat_map(|case| [(case, false), (case, true)]) {
        let before = env.backend.seen().len();
        let (status, code, took) = trickled_upload(env.gateway.addr, target, h2, first_after, 2, long, 0).await;
        assert_eq!((status, code), (408, 408), "{target:?} {first_after:?} h2 {h2} after {took:?}");
        assert!(took >= Duration::from_millis(2900) && took < Duration::from_millis(4500), "{took:?}");
        // The backend saw the start of the forwarded one only (and never a whole body).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = env.backend.seen();
        assert!(seen.len() - before <= forwarded, "{target:?}: {:?}", &seen[before..]);
        assert!(seen[before..].iter().all(|s| s.body_len < 2048), "{target:?}");
    }
    // Five pieces a second apart: 4 s in all, never a pause of 3 s. Read whole and
    // checked (blanks are no JSON: 400), not cut at 3 s.
    for h2 in [false, true] {
        let (status, code, took) =
            trickled_upload(env.gateway.addr, workflow, h2, Duration::ZERO, 5, Duration::from_secs(1), 0).await;
        assert_eq!((status, code), (400, 400), "h2 {h2} after {took:?}");
        assert!(took >= Duration::from_millis(3900), "h2 {h2}: {took:?}");
    }
}

/// An HTTP/2 connection that carries no request for `idle_timeout` is closed with a
/// GOAWAY, however many PINGs keep its bytes moving (the client's here; the gateway
/// sends none). The idle limit used to count bytes alone, so a client that answered
/// or sent pings held its connection, and a place under `max_connections`, for good.
/// Requests 2 s apart keep it open past 3 s: idle counts from the last one's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_requests_for_idle_timeout_is_closed_whatever_pings_it_carries() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let env = Env::start_with("idle_timeout = \"3s\"", "", Arc::new(SystemClock)).await; // request_timeout = 2s
    let stream = tokio::net::TcpStream::connect(env.gateway.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(300))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let opened = Instant::now();
    let mut last = opened;
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let req = http::Request::get(format!("http://{}{PATH}", env.gateway.addr))
            .header("api_key", API_KEY)
            .header("authorization", RW)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status(), 200, "request {i}");
        resp.into_body().collect().await.unwrap();
        last = Instant::now();
    }
    let closed =
        tokio::time::timeout(Duration::from_secs(8), conn).await.expect("still open 8 s after the last request");
    assert!(closed.unwrap().is_ok(), "closed with a GOAWAY, not cut");
    let idle = last.elapsed();
    assert!(
        idle >= Duration::from_millis(2900) && idle < Duration::from_millis(4500),
        "closed {idle:?} after the last request"
    );
    assert!(opened.elapsed() > Duration::from_secs(6), "open {:?} in all", opened.elapsed());
}

/// A raw h2c client: one GET, then, until the gateway closes the connection, PINGs
/// every 300 ms if `pings`, and nothing else. `window` is its SETTINGS_INITIAL_WINDOW_SIZE
/// (0: the response's body can never be sent). Returns the frame types received after the
/// response's head, and how long after that head the connection closed.
async fn h2_get_then_linger(addr: std::net::SocketAddr, pings: bool, window: u32) -> (Vec<u8>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }
    fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
        block.extend([0, name.len() as u8]);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (name, value) in [(":path", PATH), (":authority", "gw"), ("api_key", API_KEY), ("authorization", RW)] {
        literal(&mut block, name, value);
    }
    let mut settings = vec![0, 4];
    settings.extend(window.to_be_bytes());
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(4, 0, 0, &settings));
    hello.extend(frame(1, 5, 1, &block));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&hello).await.unwrap();
    let (mut buf, mut seen, mut head_at) = (Vec::new(), Vec::new(), None);
    let mut chunk = [0u8; 16384];
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            _ = tick.tick(), if pings => stream.write_all(&frame(6, 0, 0, b"pingpong")).await.unwrap(),
            () = &mut deadline => panic!("still open 20 s on; frames after the head: {seen:?}"),
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let payload: Vec<u8> = buf.drain(..9 + len).skip(9).collect();
            match (kind, head_at) {
                (1, None) => head_at = Some(Instant::now()),
                (_, Some(_)) => seen.push(kind),
                _ => {}
            }
            if kind == 4 && flags & 1 == 0 {
                stream.write_all(&frame(4, 1, 0, &[])).await.unwrap();
            }
            if kind == 6 && flags & 1 == 0 {
                stream.write_all(&frame(6, 1, 0, &payload)).await.unwrap();
            }
        }
    }
    (seen, head_at.expect("a response head").elapsed())
}

/// However a client lingers on an HTTP/2 connection after its request, the connection is
/// closed `idle_timeout` after the response, with a GOAWAY first: a silent client (the
/// I/O limit used to cut it at the same moment, with no GOAWAY, and a request sent just
/// then was lost unanswered), one sending PINGs, and one that also never opens a window
/// for the response's body (its request stayed open, so it held the connection for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_http2_client_gets_a_goaway_at_idle_timeout_whether_silent_pinging_or_never_reading() {
    let env = Env::start_with("idle_timeout = \"3s\"\nheader_read_timeout = \"1s\"", "", Arc::new(SystemClock)).await;
    for (pings, window, what) in [(false, 65_535, "silent"), (true, 65_535, "pinging"), (true, 0, "never reading")] {
        let (seen, after) = h2_get_then_linger(env.gateway.addr, pings, window).await;
        assert!(seen.contains(&7), "{what}: no GOAWAY, frames after the head {seen:?}");
        // At idle_timeout; one never reading is cut when the GOAWAY's wait (bounded by
        // header_read_timeout) ends.
        let most = if window == 0 { Duration::from_millis(4600) } else { Duration::from_millis(3600) };
        assert!(after >= Duration::from_millis(2900) && after < most, "{what}: closed {after:?} after the head");
    }
}

/// A raw backend that answers every request with a head promising 100 bytes, sends 10
/// of them, and then nothing, holding the connection open.
async fn stalling_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut buf, mut got) = (vec![0u8; 16384], Vec::new());
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
                let _ = stream.write_all(format!("{head}0123456789").as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

/// A backend that stops sending a response body has `request_timeout` (2 s) between
/// reads, as for its answer: the client gets what came and then the end of the
/// connection (HTTP/1.1) or of the stream (HTTP/2), never a response held open for as
/// long as the backend likes. Every client path: the gateway's own HTTP/1.1 loop, hyper
/// for a request with a body, HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_sending_its_body_is_cut_after_request_timeout() {
    let backend = stalling_backend().await;
    let cfg = stackgate::config::from_str(&config_text(backend, "", "")).unwrap();
    let gw = stackgate::server::start(cfg, Arc::new(SystemClock)).await.unwrap();
    let put = format!(
        "PUT {PATH}/blt0000000000000001 HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    for request in [raw_get(PATH), put.into_bytes()] {
        let started = Instant::now();
        let (status, text) = raw(gw.addr, &request).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("0123456789"), "{text}");
        assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(4000), "{took:?}");
    }
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = hyper::Request::get(format!("http://{}{PATH}", gw.addr))
        .header("api_key", API_KEY)
        .header("authorization", RW)
        .body(http_body_util::Full::default())
        .unwrap();
    let started = Instant::now();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), http_body_util::BodyExt::collect(resp.into_body())).await;
    let took = started.elapsed();
    assert!(matches!(body, Ok(Err(_))), "the stream should end in an error: {body:?}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(4000), "{took:?}");
}

/// An HTTP/1.0 backend's answer is the gateway's answer in the gateway's own version:
/// an HTTP/1.1 client gets `HTTP/1.1` and keeps its connection, whether the request
/// went through the gateway's HTTP/1.1 loop (a GET) or hyper's (a body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_backends_answer_reaches_the_client_as_http11() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const OLD: &[u8] = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    let script: Script = (0..4).map(|_| (vec![OLD], true)).collect();
    let (backend, _, connections) = scripted_backend(script).await;
    let gw = env_for(backend).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for (method, body) in [("POST", r#"{"asset":{}}"#), ("GET", ""), ("PUT", r#"{"entry":{}}"#), ("GET", "")] {
        let target = if method == "POST" { "/v3/assets".to_owned() } else { format!("{PATH}/blt1") };
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "{method}: the gateway closed the client's connection");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 "), "{method}: {head}");
        assert!(!head.contains("connection: close"), "{method}: {head}");
        while buf.len() < end + 2 {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(&buf[end..end + 2], b"{}", "{method}");
        buf.drain(..end + 2);
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "an HTTP/1.0 backend closes after each answer"
    );
}

/// Found by the thirty-second outside probe: an HTTP/1.0 client asking for keep-alive
/// was told `connection: keep-alive` over a body of unknown length (close-delimited, or
/// chunked and streamed), which can only end with the connection; its next request was
/// then dropped unanswered. Such an answer now promises nothing and the connection
/// ends with it; an answer with a length keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_is_promised_keep_alive_only_with_a_length() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let script: Script = vec![
        (vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ", b"close"], true),
        (
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nin two", b"\r\n6\r\n parts\r\n0\r\n\r\n"],
            false,
        ),
        (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"], false),
        (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"], false),
    ];
    let (backend, _, _) = scripted_backend(script).await;
    let gw = env_for(backend).await;
    let request =
        format!("GET {PATH} HTTP/1.0\r\nConnection: keep-alive\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\n\r\n");
    // Two requests at once on one connection; everything the gateway sends until it
    // closes (or 3 s of silence).
    let exchange = |twice: bool| {
        let request = request.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            stream.write_all(request.repeat(if twice { 2 } else { 1 }).as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            let closed = loop {
                match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                    Err(_) => break false,
                }
                if got.ends_with(b"second") {
                    break false;
                }
            };
            (String::from_utf8_lossy(&got).to_ascii_lowercase(), closed)
        }
    };
    for body in ["until close", "in two parts"] {
        let (answer, closed) = exchange(false).await;
        assert!(answer.starts_with("http/1.0 200 ") && answer.ends_with(body), "{answer}");
        assert!(!answer.contains("keep-alive") && !answer.contains("content-length"), "{answer}");
        assert!(closed, "the body ended with the connection: {answer}");
    }
    let (answers, _) = exchange(true).await;
    assert_eq!(answers.matches("http/1.0 200 ").count(), 2, "{answers}");
    assert!(answers.contains("connection: keep-alive") && answers.ends_with("second"), "{answers}");
}

/// A backend that refuses a body without reading it and keeps the connection (see
/// `desyncing`) reads the body as its next request, and its answer to that would be
/// the next request's answer: after an error answer to a request with a body, the
/// upstream connection is never used again. On an HTTP/1.1 client connection (which
/// keeps its own upstream connection) and on h2c (streams share idle connections);
/// a body answered 200 keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_is_not_reused_after_an_error_answer_to_a_body() {
    use std::sync::atomic::Ordering::SeqCst;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let seen = Arc::new(Desync::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(desyncing(stream, Arc::clone(&counts)));
        }
    });
    let gw = env_for(backend).await;
    let refused =
        [("api_key", API_KEY), ("authorization", RW), ("x-refuse", "1"), ("content-type", "application/json")];
    let write = [("api_key", API_KEY), ("authorization", RW), ("content-type", "application/json")];
    let fresh = (200, "\"fresh\"\r\n".to_owned());

    let mut client = KeepAlive::connect(gw.addr).await;
    assert_eq!(client.send("POST", "/v3/assets", &refused, SMUGGLED).await.0, 401);
    assert_eq!(client.send("GET", PATH, &READ, "").await, fresh, "the GET got its own answer");
    assert_eq!(seen.connections.load(SeqCst), 2, "a new upstream connection after the refusal");
    assert_eq!(client.send("PUT", &format!("{PATH}/blt1"), &write, r#"{"entry":{}}"#).await, fresh);
    assert_eq!(client.send("GET", PATH, &READ, "").await, fresh);
    assert_eq!(seen.connections.load(SeqCst), 2, "a body answered 200 keeps the connection");

    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for round in 0..3 {
        let mut post = http::Request::post(format!("http://{}/v3/assets", gw.addr));
        for (name, value) in refused {
            post = post.header(name, value);
        }
        let resp = h2.request(post.body(bytes::Bytes::from_static(SMUGGLED.as_bytes()).into()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 401, "round {round}");
        let get = http::Request::get(format!("http://{}{PATH}", gw.addr))
            .header("api_key", API_KEY)
            .header("authorization", RW)
            .body(Default::default())
            .unwrap();
        let resp = h2.request(get).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        assert_eq!(&body[..], b"\"fresh\"\r\n", "round {round}: the h2c GET got its own answer");
    }
    assert!(seen.smuggled.load(SeqCst) >= 1, "the backend did read a body as a request");
}

/// A body the gateway reads whole to check it (an entry's workflow change) reaches the
/// backend byte for byte however it came: read with its head by the HTTP/1.1 loop, in
/// chunks over HTTP/1.1 (hyper), and in several DATA frames over HTTP/2; a frame of
/// its own and the joined ones are the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspected_body_is_forwarded_byte_for_byte_however_it_is_framed() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let env = Env::start().await;
    let addr = env.gateway.addr;
    const PATH: &str = "/v3/content_types/blog/entries/e1/workflow";
    let body = format!(
        r#"{{"workflow":{{"comment":"{}","publishing_rule":{{"uid":"p1","action":"publish","status":0}}}}}}"#,
        "é and x ".repeat(200)
    );
    let pieces = [&body[..7], &body[7..8], &body[8..1000], &body[1000..]];
    let head = |framing: &str| {
        format!(
            "POST {PATH} HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\n\
             content-type: application/json\r\nConnection: close\r\n{framing}\r\n"
        )
    };
    let whole = format!("{}{body}", head(&format!("content-length: {}\r\n", body.len())));
    let mut chunked = head("transfer-encoding: chunked\r\n");
    for piece in pieces {
        chunked.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
    }
    chunked.push_str("0\r\n\r\n");
    for (what, request) in [("whole", whole), ("chunked", chunked)] {
        let (status, text) = raw(addr, request.as_bytes()).await;
        assert_eq!(status, 200, "{what}: {text}");
        let seen = env.backend.seen();
        assert_eq!(seen.last().unwrap().body, body.as_bytes(), "{what}");
    }

    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    for frames in [vec![body.clone()], pieces.iter().map(|p| p.to_string()).collect()] {
        let count = frames.len();
        let stream = futures_util::stream::iter(
            frames.into_iter().map(|f| Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(f)))),
        );
        let req = http::Request::post(format!("http://{addr}{PATH}"))
            .header("api_key", API_KEY)
            .header("authorization", RW)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream))
            .unwrap();
        let status = h2.send_request(req).await.unwrap().status();
        assert_eq!(status, 200, "h2, {count} frame(s)");
        assert_eq!(env.backend.seen().last().unwrap().body, body.as_bytes(), "h2, {count} frame(s)");
    }
}

/// An HTTP/2 client that resets its stream before its body's end has sent no request,
/// whatever the reset's code: with `NO_ERROR` (which hyper reads as the body's end) as
/// with `CANCEL`, the part it sent never reaches the backend as a whole request, whether
/// the gateway reads the body to check it (a workflow change) or streams it (an entry
/// update), with its length declared or not, or declared and all sent (a backend reading
/// by length would have it whole). The part is whole JSON, so a check alone would pass it. The same body ended with `END_STREAM` is forwarded whole. The binary,
/// on one thread and on two (each its own runtime), as it is deployed: the order in
/// which hyper's tasks see the reset is the runtime's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_cut_by_a_reset_never_reaches_the_backend_as_a_request() {
    let backend = Backend::start().await;
    let file = temp_dir("h2-reset").join("gw.toml");
    std::fs::write(&file, config_text(backend.addr, "", "")).unwrap();
    let part = bytes::Bytes::from_static(br#"{"workflow":{"publishing_rule":{"status":0}}}"#);
    let targets =
        [("POST", "/v3/content_types/blog/entries/e1/workflow"), ("PUT", "/v3/content_types/blog/entries/e1")];
    for threads in ["1", "2"] {
        let (_gw, addr, _out) = spawn_gateway(&["run", "--config", file.to_str().unwrap(), "--threads", threads]);
        let open = |method: &str, target: &str, declared: Option<usize>| h2_write(addr, method, target, declared);
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            client.ready().await.unwrap()
        };
        for (method, target) in targets {
            for reason in [h2::Reason::NO_ERROR, h2::Reason::CANCEL] {
                for declared in [None, Some(part.len()), Some(2 * part.len())] {
                    let case = format!("{threads} thread(s): {method} {target} {reason:?} declared {declared:?}");
                    let before = backend.seen().len();
                    let mut client = connect().await;
                    let (_response, mut stream) = client.send_request(open(method, target, declared), false).unwrap();
                    stream.send_data(part.clone(), false).unwrap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    stream.send_reset(reason);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let seen = backend.seen();
                    assert!(seen[before..].iter().all(|s| !s.complete), "{case}: {:?}", &seen[before..]);
                }
            }
            // Ended, the same part is the request (the last frame held for the check
            // of the end is sent).
            for declared in [None, Some(part.len())] {
                let case = format!("{threads} thread(s): {method} {target} ended, declared {declared:?}");
                let mut client = connect().await;
                let (response, mut stream) = client.send_request(open(method, target, declared), false).unwrap();
                stream.send_data(part.clone(), true).unwrap();
                assert_eq!(response.await.unwrap().status(), 200, "{case}");
                let last = backend.last().unwrap();
                assert!(last.complete && last.body == part, "{case}: {last:?}");
            }
        }
    }
}

//! Test harness: a recording backend on a real socket, the real gateway server on
//! 127.0.0.1:0, and small HTTP clients (hyper for well-formed requests, raw TCP for
//! targets that a client library would refuse or rewrite).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use stackgate::clock::{Clock, ManualClock, SystemClock};
use stackgate::token::hash_secret;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const API_KEY: &str = "blt0123456789abcdef";
pub const OTHER_API_KEY: &str = "blt1111111111111111";
pub const RW: &str = "cs00000000000000000000000000000001";
pub const RO: &str = "cs00000000000000000000000000000002";
pub const OTHER_STACK: &str = "cs00000000000000000000000000000003";
pub const EXPIRING: &str = "cs00000000000000000000000000000004";
pub const DEV_ONLY: &str = "cs00000000000000000000000000000005";
pub const ALIAS_ONLY: &str = "cs00000000000000000000000000000006";
pub const ENTRY_ONLY: &str = "cs00000000000000000000000000000007";
/// Authtokens of the configured users (owner, developer, admin, content manager).
pub const ALICE: &str = "alice-authtoken";
pub const BOB: &str = "bob-authtoken";
pub const CAROL: &str = "carol-authtoken";
pub const DAVE: &str = "dave-authtoken";
pub const SMALL_API_KEY: &str = "blt2222222222222222";
/// Custom 5 reads/s in an organisation of 10 reads/s.
pub const RATED: &str = "cs00000000000000000000000000000008";
pub const RATED_RATE: u32 = 5;
/// Organisation default (10 reads/s), same organisation as `RATED`.
pub const SHARED: &str = "cs00000000000000000000000000000009";
/// 2027-01-01T00:00:00Z, the expiry of `EXPIRING`.
pub const EXPIRY: i64 = 1_798_761_600;

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// The body's bytes, as received.
    pub body: Bytes,
    /// Whether the body was read to its end (not broken off).
    pub complete: bool,
}

/// A real HTTP backend that records every request. It answers 200 with a small JSON
/// body; `x-test-delay-ms` delays the answer; the body is consumed and counted.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| record(Arc::clone(&log), req));
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Backend { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}

/// A request body's bytes, and whether it was read to its end (`false`: broken off,
/// such as an HTTP/2 stream reset before `END_STREAM`).
pub async fn read_whole(mut body: Incoming) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => received.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
            Err(_) => return (received, false),
        }
    }
    (received, true)
}

/// An HTTP/2 write of JSON to the gateway at `addr` with the read-write token, its
/// length declared or not (the body is sent separately).
pub fn h2_write(addr: SocketAddr, method: &str, target: &str, declared: Option<usize>) -> Request<()> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{target}"))
        .header("api_key", API_KEY)
        .header("authorization", RW)
        .header("content-type", "application/json");
    if let Some(len) = declared {
        req = req.header("content-length", len);
    }
    req.body(()).unwrap()
}

async fn record(
    log: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let (received, complete) = read_whole(body).await;
    let body_len = received.len();
    let delay = parts.headers.get("x-test-delay-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let target = parts.uri.path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_default();
    log.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body_len,
        body: Bytes::from(received),
        complete,
    });
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let json = serde_json::json!({"ok": true, "target": target, "body_len": body_len});
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut().insert("connection", "keep-alive".parse().unwrap());
    resp.headers_mut().insert("x-backend", "1".parse().unwrap());
    if parts.headers.contains_key("x-test-own-gateway-fields") {
        // Fields the gateway sets itself: the client must see the gateway's, once.
        for (name, value) in [
            ("x-request-id", "backend-id"),
            ("x_request_id", "backend-id"),
            ("x-ratelimit-remaining", "999"),
            ("ratelimit", "backend"),
            ("access-control-allow-origin", "*"),
        ] {
            resp.headers_mut().insert(name, value.parse().unwrap());
        }
    }
    Ok(resp)
}

pub fn sha(secret: &str) -> String {
    hex::encode(hash_secret(secret.as_bytes()))
}

/// The test config: one organisation, two stacks, tokens of every shape.
pub fn config_text(backend: SocketAddr, extra_server: &str, extra_upstream: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
{extra_server}

[admin]
listen = "127.0.0.1:0"

[upstream]
url = "http://{backend}"
connect_timeout = "1s"
request_timeout = "2s"
{extra_upstream}

[[organizations]]
uid = "org_main"
read_per_second = 100000
write_per_second = 100000
bulk_per_second = 100000
max_tokens_per_stack = 1000

[[organizations]]
uid = "org_small"
read_per_second = 10
write_per_second = 10

[[users]]
uid = "alice"
email = "alice@example.com"
authtoken_sha256 = "{alice}"

[[users]]
uid = "bob"
authtoken_sha256 = "{bob}"

[[users]]
uid = "carol"
authtoken_sha256 = "{carol}"

[[users]]
uid = "dave"
authtoken_sha256 = "{dave}"

[[stacks]]
api_key = "{API_KEY}"
organization = "org_main"
branches = ["main", "development"]
aliases = {{ deploy = "main", staging = "development" }}
members = {{ alice = "owner", carol = "admin", bob = "developer", dave = "content_manager" }}

[[stacks.tokens]]
uid = "blt000000000000rw01"
name = "rw"
secret_sha256 = "{rw}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }},
         {{ module = "branch", branches = ["main"], acl = {{ read = true }} }}]

[[stacks.tokens]]
uid = "blt000000000000ro01"
name = "ro"
secret_sha256 = "{ro}"
scope = [{{ module = "$all", acl = {{ read = true }} }},
         {{ module = "branch", branches = ["main"], acl = {{ read = true }} }}]

[[stacks.tokens]]
uid = "blt000000000000ex01"
name = "expiring"
secret_sha256 = "{exp}"
expires_on = "2027-01-01"
scope = [{{ module = "$all", acl = {{ read = true }} }},
         {{ module = "branch", branches = ["main"], acl = {{ read = true }} }}]

[[stacks.tokens]]
uid = "blt000000000000dv01"
name = "development only"
secret_sha256 = "{dev}"
scope = [{{ module = "$all", acl = {{ read = true }} }},
         {{ module = "branch", branches = ["development"], acl = {{ read = true }} }}]

[[stacks.tokens]]
uid = "blt000000000000al01"
name = "alias only"
secret_sha256 = "{alias}"
scope = [{{ module = "$all", acl = {{ read = true }} }},
         {{ module = "branch_alias", branch_aliases = ["deploy"], acl = {{ read = true }} }}]

[[stacks.tokens]]
uid = "blt000000000000en01"
name = "entries only"
secret_sha256 = "{entry}"
scope = [{{ module = "entry", acl = {{ read = true, write = true }} }},
         {{ module = "branch", branches = ["main"], acl = {{ read = true }} }}]

[[stacks]]
api_key = "{OTHER_API_KEY}"
organization = "org_main"

[[stacks.tokens]]
uid = "blt000000000000ot01"
name = "other stack"
secret_sha256 = "{other}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }},
         {{ module = "branch", branches = ["main"], acl = {{ read = true }} }}]

[[stacks]]
api_key = "{SMALL_API_KEY}"
organization = "org_small"
members = {{ alice = "owner" }}

[[stacks.tokens]]
uid = "blt000000000000rl01"
name = "rated"
secret_sha256 = "{rated}"
rate_limit = {{ read_per_second = {RATED_RATE}, write_per_second = 5 }}
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }},
         {{ module = "branch", branches = ["main"], acl = {{ read = true }} }}]

[[stacks.tokens]]
uid = "blt000000000000sh01"
name = "shared"
secret_sha256 = "{shared}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }},
         {{ module = "branch", branches = ["main"], acl = {{ read = true }} }}]
"#,
        rated = sha(RATED),
        shared = sha(SHARED),
        alice = sha(ALICE),
        bob = sha(BOB),
        carol = sha(CAROL),
        dave = sha(DAVE),
        rw = sha(RW),
        ro = sha(RO),
        exp = sha(EXPIRING),
        dev = sha(DEV_ONLY),
        alias = sha(ALIAS_ONLY),
        entry = sha(ENTRY_ONLY),
        other = sha(OTHER_STACK),
    )
}

/// A backend plus the real gateway server in front of it.
pub struct Env {
    pub backend: Backend,
    pub gateway: stackgate::server::Running,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with("", "", Arc::new(SystemClock)).await
    }

    pub async fn with_clock(clock: Arc<ManualClock>) -> Env {
        Env::start_with("", "", clock).await
    }

    pub async fn start_with(extra_server: &str, extra_upstream: &str, clock: Arc<dyn Clock>) -> Env {
        let backend = Backend::start().await;
        let cfg = stackgate::config::from_str(&config_text(backend.addr, extra_server, extra_upstream)).unwrap();
        let gateway = stackgate::server::start(cfg, clock).await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Env { backend, gateway, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.addr, path)
    }

    /// Sends a request; returns status, headers and body bytes.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("gateway answered in time")
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, bytes)
    }

    /// A request with `api_key` and a management token.
    pub async fn token(&self, method: &str, path: &str, token: &str, body: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.send(
            method,
            path,
            &[("api_key", API_KEY), ("authorization", token), ("content-type", "application/json")],
            body,
        )
        .await
    }
}

/// The `error_code` of a CMA error body.
pub fn error_code(body: &[u8]) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["error_code"].as_i64().unwrap_or(-1)
}

/// Sends raw bytes on a fresh connection and returns the status code (0 if the
/// connection closed without a status line) and the whole response text.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A raw GET with the read-write token and `Connection: close`.
pub fn raw_get(target: &str) -> Vec<u8> {
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.shrink_to_fit();
    req
}

/// A raw HTTP/1.1 keep-alive connection: requests go out one at a time on the same
/// socket, so a test can prove a change reaches an already open connection.
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        KeepAlive { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    /// Sends one request and reads one response (Content-Length framed); returns the
    /// status and body. Panics if the server closed the connection.
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        self.try_send(method, path, headers, body).await.expect("server closed the keep-alive connection")
    }

    /// [`KeepAlive::send`], or `None` if the connection failed (e.g. the server died).
    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<(u16, String)> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await.ok()?;
        self.read_response().await
    }

    /// Reads one response (Content-Length framed) to a request already sent.
    pub async fn read_response(&mut self) -> Option<(u16, String)> {
        let head_end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok())?;
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            self.fill().await?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).to_string();
        self.buf.drain(..head_end + len);
        Some((status, body))
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await.ok()?.ok()?;
        (n > 0).then(|| self.buf.extend_from_slice(&chunk[..n]))
    }
}

/// The `stackgate` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_stackgate");

/// A child process killed (SIGKILL) when dropped, pass or fail.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends a signal (e.g. "TERM") and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: &str) -> std::process::ExitStatus {
        std::process::Command::new("kill").args([&format!("-{sig}"), &self.0.id().to_string()]).status().unwrap();
        self.0.wait().unwrap()
    }
}

/// Starts the binary and waits for its "stackgate listening on http://ADDR" line.
pub fn spawn_gateway(args: &[&str]) -> (Proc, SocketAddr, std::io::BufReader<std::process::ChildStdout>) {
    spawn_gateway_from(std::process::Command::new(BIN).args(args))
}

/// [`spawn_gateway`] under an open-file limit of `soft` (hard `hard`), as a shell's
/// `ulimit -n` or a unit's `LimitNOFILE=` would start it (util-linux's `prlimit`, which
/// runs the binary in its own place: the child is the gateway).
pub fn spawn_gateway_with_file_limit(
    soft: u64,
    hard: u64,
    args: &[&str],
) -> (Proc, SocketAddr, std::io::BufReader<std::process::ChildStdout>) {
    let mut command = std::process::Command::new("prlimit");
    command.arg(format!("--nofile={soft}:{hard}")).arg("--").arg(BIN).args(args);
    spawn_gateway_from(&mut command)
}

fn spawn_gateway_from(
    command: &mut std::process::Command,
) -> (Proc, SocketAddr, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    let child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let mut child = Proc(child);
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "binary exited before listening");
        if let Some(addr) = line.trim().strip_prefix("stackgate listening on http://") {
            return (child, addr.parse().unwrap(), out);
        }
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("stackgate-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A test CA and a certificate for localhost, gw.test and 127.0.0.1 signed by it,
/// written to `dir` (`ca.pem`, `gw.pem`, `gw.key`).
pub struct TestPki {
    pub ca_pem: String,
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

pub fn test_pki(dir: &std::path::Path) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names apart: OpenSSL (Node, curl) takes a leaf whose issuer is its own subject for
    // a self-signed certificate.
    ca_params.distinguished_name.push(DnType::CommonName, "stackgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "gw.test".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let pki =
        TestPki { ca_pem: ca_cert.pem(), ca: dir.join("ca.pem"), cert: dir.join("gw.pem"), key: dir.join("gw.key") };
    std::fs::write(&pki.ca, &pki.ca_pem).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// A request body the test sends piece by piece, when it chooses.
pub struct Trickle(pub tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for Trickle {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// A client for trickled bodies over HTTP/1.1 or h2c; on h2c it pings the gateway so
/// the connection never looks idle while one stream's body stalls.
pub fn trickle_client(
    h2: bool,
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Trickle> {
    let mut builder = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    builder.http2_only(h2);
    if h2 {
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_millis(200))
            .http2_keep_alive_while_idle(true);
    }
    builder.build_http()
}

/// Sends a write (`method` on `path`) whose body comes in `chunks` pieces of 1 KiB, the first after
/// `first_after`, then `gap` apart (and ends with the last), then waits for the answer: the status, the error code of an error body, how long it took.
pub async fn trickled_upload(
    gateway: SocketAddr,
    (method, path): (&str, &str),
    h2: bool,
    first_after: Duration,
    chunks: usize,
    gap: Duration,
    delay_ms: u64,
) -> (u16, i64, Duration) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{gateway}{path}"))
        .header("api_key", API_KEY)
        .header("authorization", RW)
        .header("content-type", "application/json")
        .header("content-length", (chunks * 1024).to_string())
        .header("x-test-delay-ms", delay_ms.to_string())
        .body(Trickle(rx))
        .unwrap();
    let started = std::time::Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..chunks {
            tokio::time::sleep(if i == 0 { first_after } else { gap }).await;
            if tx.send(bytes::Bytes::from(vec![b' '; 1024])).await.is_err() {
                return;
            }
        }
        // Dropping the sender ends the body.
    });
    let resp = tokio::time::timeout(Duration::from_secs(20), trickle_client(h2).request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let took = started.elapsed();
    sender.abort();
    let code = if status >= 400 { error_code(&body) } else { 0 };
    (status, code, took)
}

/// A write the gateway forwards without reading its body first.
pub const STREAMED_WRITE: (&str, &str) = ("PUT", "/v3/content_types/blog/entries/blt0000000000000001");

/// Reads from `stream` into `buf` until it holds a whole head: where the head ends, or
/// `None` if the stream ended first.
pub async fn read_until_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What a [`desyncing`] backend counts: connections accepted and requests read.
#[derive(Default)]
pub struct Desync {
    pub connections: std::sync::atomic::AtomicUsize,
    pub smuggled: std::sync::atomic::AtomicUsize,
}

/// Serves one connection as some quickly written backends do: a request carrying
/// `x-refuse` is answered 401 right after its head, without reading its body, and the
/// connection is kept; the unread body is then read as the next request. A request for
/// `/v3/stacks...` (what such a body can hold) is answered `smuggled` after 300 ms;
/// any other request is read whole and answered `fresh`.
pub async fn desyncing<S>(mut stream: S, seen: Arc<Desync>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering::SeqCst;
    seen.connections.fetch_add(1, SeqCst);
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until_head(&mut stream, &mut buf).await else { return };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let answer: &[u8] = if head.contains("\r\nx-refuse:") {
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        } else if head.split(' ').nth(1).is_some_and(|path| path.starts_with("/v3/stacks")) {
            seen.smuggled.fetch_add(1, SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n\"smuggled\"\r\n"
        } else {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            while buf.len() < len {
                let mut chunk = [0u8; 4096];
                let Ok(n @ 1..) = stream.read(&mut chunk).await else { return };
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..len);
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n\"fresh\"\r\n"
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// A request body that a [`desyncing`] backend reads as a request of its own.
pub const SMUGGLED: &str =
    "GET /v3/stacks/settings HTTP/1.1\r\nhost: backend\r\nx-stackgate-access: read-write\r\n\r\n";

/// A raw HTTP/2 frame: length, type, flags, stream id, payload (RFC 9113 §4.1).
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// A GET's HEADERS block with every field a literal without indexing (RFC 7541 §6.2.2).
pub fn h2_get_block(authority: &str, path: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (name, value) in [(":path", path), (":authority", authority)].iter().chain(fields) {
        block.extend([0, name.len() as u8]);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    block
}

/// Takes the complete frames at the front of `buf`: (type, flags, stream, payload).
pub fn h2_frames(buf: &mut Vec<u8>) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    while buf.len() >= 9 {
        let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
        if buf.len() < 9 + len {
            break;
        }
        let (kind, flags) = (buf[3], buf[4]);
        let stream = u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]);
        let payload = buf.drain(..9 + len).skip(9).collect();
        frames.push((kind, flags, stream, payload));
    }
    frames
}

/// Collects what `tracing` writes (set as the current thread's subscriber, on a
/// current-thread runtime, it sees the gateway's tasks too).
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

//! What the scale-out tests share (scaleout, TLS, cluster): real `stackgate` replicas started
//! from a config file, one-request calls, and the "services required" rule.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// A test that needs a local service (PostgreSQL, a TLS-capable or cluster-capable
/// `redis-server`, HAProxy) it cannot have: skipped with the reason printed, unless
/// `STACKGATE_REQUIRE_SERVICES=1` (CI), which makes it a failure.
pub fn missing(test: &str, why: &str) {
    assert!(
        std::env::var("STACKGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "{test}: {why} (STACKGATE_REQUIRE_SERVICES=1)"
    );
    eprintln!("SKIPPED {test}: {why} (bash scripts/test.sh sets it up)");
}

/// Whether `program` runs (`program --version` exits 0).
pub fn installed(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running replica: the real binary on its own port; its log in `log`.
pub struct Replica {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: std::path::PathBuf,
}

/// Starts the binary with its log going to `log`, and waits until it listens.
pub fn spawn_logged(config: &std::path::Path, log: &std::path::Path) -> Replica {
    let out = std::fs::File::create(log).unwrap();
    let child = std::process::Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info,stackgate::access=off")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let line = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned));
        if let (Some(addr), Some(admin)) =
            (line("stackgate listening on http://"), line("stackgate admin listening on http://"))
        {
            return Replica { proc, addr: addr.parse().unwrap(), admin: admin.parse().unwrap(), log: log.to_owned() };
        }
        assert!(proc.0.try_wait().unwrap().is_none(), "gateway exited: {text}");
        assert!(started.elapsed() < Duration::from_secs(15), "gateway did not start: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes the test config with `extra` tables appended and starts `n` replicas of it.
pub fn start_replicas(backend: SocketAddr, extra: &str, n: usize) -> Vec<Replica> {
    let dir = temp_dir("replicas");
    (0..n)
        .map(|i| {
            let file = dir.join(format!("replica{i}.toml"));
            std::fs::write(&file, config_text(backend, "", &format!("\n{extra}\n"))).unwrap();
            spawn_logged(&file, &dir.join(format!("replica{i}.log")))
        })
        .collect()
}

/// Runs the binary on a config expected to fail at start: its exit status and output.
pub fn failed_start(backend: SocketAddr, extra: &str) -> (std::process::ExitStatus, String) {
    let dir = temp_dir("failstart");
    let file = dir.join("stackgate.toml");
    std::fs::write(&file, config_text(backend, "", &format!("\n{extra}\n"))).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--config", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("gateway did not fail within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    (status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `[ratelimit]` on Redis (and optionally `[store]`), with a key prefix of its own.
pub fn redis_config(redis: &str, prefix: &str, fail_mode: &str, replicas: u32) -> String {
    format!(
        "[ratelimit]\nbackend = \"redis\"\n{redis}\nfail_mode = \"{fail_mode}\"\nreplicas = {replicas}\n\
         key_prefix = \"{prefix}\"\ntimeout = \"200ms\"\n"
    )
}

/// One request over a fresh connection: status, headers, body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Value) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(bytes::Bytes::new())).unwrap();
    let resp =
        tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.expect("answer in time").unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A read of the 5/s token `RATED` through `addr`: the status.
pub async fn rated(addr: SocketAddr) -> u16 {
    call(addr, "GET", "/v3/content_types", &[("api_key", SMALL_API_KEY), ("authorization", RATED)]).await.0
}

/// Reads of `RATED` through the replicas in turn for `window`, a request every `gap`:
/// the count of each status per replica.
pub async fn hammer(
    addrs: &[SocketAddr],
    window: Duration,
    gap: Duration,
) -> Vec<std::collections::BTreeMap<u16, u32>> {
    let mut seen = vec![std::collections::BTreeMap::new(); addrs.len()];
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < window {
        let r = i % addrs.len();
        *seen[r].entry(rated(addrs[r]).await).or_insert(0) += 1;
        i += 1;
        tokio::time::sleep(gap).await;
    }
    seen
}

/// How many answers had `status`, over every replica.
pub fn total(seen: &[std::collections::BTreeMap<u16, u32>], status: u16) -> u32 {
    seen.iter().map(|m| m.get(&status).copied().unwrap_or(0)).sum()
}

pub async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_port(port: u16, what: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what} did not start on port {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The body of a GET on the admin listener.
pub async fn admin_get(admin: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

//! Tests that run the real `stackgate` binary: `check`, `run` with a streamed 100 MiB
//! upload (gateway memory must stay flat), and `demo`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spawn(args: &[&str]) -> (Proc, String, BufReader<std::process::ChildStdout>) {
    let (p, addr, out) = spawn_gateway(args);
    (p, addr.to_string(), out)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn check_accepts_the_example_config() {
    let out = Command::new(BIN).args(["check", "--config", "config/stackgate.example.toml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    // And the library parses it the same way.
    let cfg = stackgate::config::load(std::path::Path::new("config/stackgate.example.toml")).unwrap();
    assert_eq!(cfg.stacks[0].tokens.len(), 2);
}

/// The configs embedded in the Kubernetes examples stay valid (`stackgate check`).
#[test]
fn check_accepts_the_deploy_examples() {
    let dir = temp_dir("deploy-examples");
    // The CA files the cluster example mounts (the thirty-eighth outside probe found
    // that example refused by `check`: it had no test).
    let cas = dir.join("cas");
    std::fs::create_dir_all(&cas).unwrap();
    let pki = test_pki(&dir);
    for name in ["postgres-ca.pem", "redis-ca.pem"] {
        std::fs::write(cas.join(name), &pki.ca_pem).unwrap();
    }
    let mounted = format!("{}/", cas.display());
    for example in
        ["deploy/kubernetes/sidecar.yaml", "deploy/kubernetes/replicas.yaml", "deploy/kubernetes/replicas-cluster.yaml"]
    {
        let yaml = std::fs::read_to_string(example).unwrap();
        let mut lines = yaml.lines().skip_while(|l| !l.trim_end().ends_with("stackgate.toml: |")).skip(1);
        let indent = lines.clone().find(|l| !l.trim().is_empty()).map_or(0, |l| l.len() - l.trim_start().len());
        let toml: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect();
        assert!(toml.len() > 5, "{example}: no embedded stackgate.toml found");
        let file = dir.join("example.toml");
        std::fs::write(&file, toml.join("\n").replace("/etc/stackgate/cas/", &mounted)).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config", file.to_str().unwrap()])
            .env("STACKGATE_POSTGRES_URL", "postgres://stackgate:secret@db/stackgate?sslmode=verify-full")
            .env("STACKGATE_REDIS_URLS", "rediss://:secret@redis-0:6379,rediss://:secret@redis-1:6379")
            .output()
            .unwrap();
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_lists_every_error_with_its_path() {
    let dir = std::env::temp_dir().join(format!("stackgate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        r#"
[server]
listen = "nope"
colour = "blue"
[upstream]
url = "http://127.0.0.1:9000"
[[organizations]]
uid = "o"
read_per_second = 10
[[users]]
uid = "alice"
authtoken_sha256 = "00"
[[stacks]]
api_key = "k1"
organization = "missing"
aliases = { deploy = "prod" }
[[stacks]]
api_key = "k1"
organization = "o"
members = { ghost = "owner" }
[[stacks.tokens]]
uid = "t1"
name = "a"
secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
scope = [{ module = "$all", acl = { read = true } }]
rate_limit = { read_per_second = 50, write_per_second = 1 }
[[stacks.tokens]]
uid = "t1"
name = "b"
secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
scope = [{ module = "nonsense", acl = { read = true } }, { module = "branch", branches = ["*"] }]
"#,
    )
    .unwrap();
    let out = Command::new(BIN).args(["check", "--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "server.colour: unknown key",
        "server.listen:",
        "users[0].authtoken_sha256:",
        "stacks[0].organization: unknown organization (the value is not shown)",
        "stacks[0].aliases.deploy: alias points at an unknown branch (the value is not shown)",
        "stacks[1].api_key: duplicate api_key",
        "stacks[1].members.ghost: unknown user",
        "stacks[1].tokens[0].scope.branch_or_alias:",
        "stacks[1].tokens[0].rate_limit.read_per_second:",
        "stacks[1].tokens[1].uid: duplicate token uid",
        "stacks[1].tokens[1].secret_sha256: the same secret is used by another token",
        "stacks[1].tokens[1].scope[0].module: unknown module.",
        "stacks[1].tokens[1].scope[1].branches:",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // Syntax errors and unreadable files are errors too, not panics.
    std::fs::write(&file, "[server\nlisten=").unwrap();
    let out = Command::new(BIN).args(["check", "--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid TOML"));
    let out = Command::new(BIN).args(["check", "--config", "/nonexistent/x.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_refuses_an_invalid_config_before_binding() {
    let out = Command::new(BIN).args(["run", "--config", "/nonexistent/x.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// `--threads 1` (what a process limited to one core gets by default) runs everything on
/// tokio's current-thread scheduler: proxying, the store's blocking calls, the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_serves_proxying_and_the_token_api() {
    let backend = Backend::start().await;
    let dir = temp_dir("one-thread");
    let file = dir.join("gw.toml");
    let store = format!("\n[store]\npath = \"{}\"\n", dir.join("tokens.db").display());
    std::fs::write(&file, config_text(backend.addr, "", &store)).unwrap();
    let (proc_, addr, _out) = spawn(&["run", "--config", file.to_str().unwrap(), "--threads", "1"]);
    // Besides the one worker (the main thread): the log writer, the signal thread, and
    // the blocking pool's threads that start-up used, idle by now (the store's reader
    // and the snapshot builder run side by side, and a third store call may start while
    // both are busy).
    let threads = std::fs::read_dir(format!("/proc/{}/task", proc_.0.id())).unwrap().count();
    assert!(
        threads <= 6,
        "one worker (plus the log writer, signals and start-up blocking-pool threads), got {threads} threads"
    );
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (status, _) = raw(addr, &raw_get("/v3/assets")).await;
    assert_eq!(status, 200);
    let create = r#"{"token":{"name":"one-thread","scope":[{"module":"$all","acl":{"read":true}},{"module":"branch","branches":["main"],"acl":{"read":true}}],"expires_on":"2099-01-01"}}"#;
    let request = format!(
        "POST /v3/stacks/management_tokens HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthtoken: {ALICE}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{create}",
        create.len()
    );
    let (status, body) = raw(addr, request.as_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let secret = body.split("\"token\":\"").nth(1).and_then(|s| s.get(..34)).unwrap().to_owned();
    let get = format!(
        "GET /v3/content_types HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {secret}\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(raw(addr, get.as_bytes()).await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by the thirty-third outside probe: a second gateway started on the first one's
/// embedded store, and a token deleted through one kept working on the other (each
/// serves what its own API changed). The second is refused before it binds, naming the
/// file; once the first has ended, however it ended, the store opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_serves_one_gateway_at_a_time() {
    let backend = Backend::start().await;
    let dir = temp_dir("store-held");
    let file = dir.join("gw.toml");
    let store = format!("\n[store]\npath = \"{}\"\n", dir.join("tokens.db").display());
    std::fs::write(&file, config_text(backend.addr, "", &store)).unwrap();
    let config = file.to_str().unwrap();
    let (first, addr, _out) = spawn(&["run", "--config", config]);
    // The same file by its own path, through a symlink, and through a hard link (the
    // thirty-fourth outside probe: a lock beside the file, found by name, let the links
    // through).
    std::os::unix::fs::symlink(dir.join("tokens.db"), dir.join("symlink.db")).unwrap();
    std::fs::hard_link(dir.join("tokens.db"), dir.join("hardlink.db")).unwrap();
    for name in ["tokens.db", "symlink.db", "hardlink.db"] {
        let other = dir.join(format!("{name}.toml"));
        let store = format!("\n[store]\npath = \"{}\"\n", dir.join(name).display());
        std::fs::write(&other, config_text(backend.addr, "", &store)).unwrap();
        let second = Command::new(BIN)
            .args(["run", "--config", other.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut second = Proc(second);
        let started = std::time::Instant::now();
        while second.0.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(20), "{name}: a second gateway is serving the same store");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(second.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let mut stdout = String::new();
        std::io::Read::read_to_string(second.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        assert!(!second.0.wait().unwrap().success(), "{name}");
        assert!(stderr.contains(&format!("{name} is in use by another stackgate process")), "{name}: {stderr}");
        assert!(!stdout.contains("listening"), "{name}: refused before binding: {stdout}");
    }
    // The first one serves on.
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_eq!(raw(addr, &raw_get("/v3/assets")).await.0, 200);
    // Killed (no clean shutdown): the kernel lets the lock go with the process.
    drop(first);
    let (_again, addr, _out) = spawn(&["run", "--config", config]);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_eq!(raw(addr, &raw_get("/v3/assets")).await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `run` on `config` with `RUST_LOG=info` and stderr going to `stderr`; the
/// listening address, and stdout kept open.
fn spawn_logging(
    config: &std::path::Path,
    threads: &str,
    stderr: std::process::Stdio,
) -> (Proc, std::net::SocketAddr, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap(), "--threads", threads])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("stackgate listening on http://").unwrap().parse().unwrap();
    (Proc(child), addr, out)
}

/// Log lines are written by a thread of their own, in batches: under load none is
/// lost, each request's access line is there, and what is still buffered when the
/// process exits is written (the drain's own lines come last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_line_is_written_under_load_and_at_exit() {
    let backend = Backend::start().await;
    let dir = temp_dir("access-lines");
    let file = dir.join("gw.toml");
    std::fs::write(&file, config_text(backend.addr, "", "")).unwrap();
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let (mut child, addr, _out) = spawn_logging(&file, "2", log.into());
    const CLIENTS: usize = 8;
    const EACH: usize = 500;
    let clients = (0..CLIENTS).map(|c| {
        tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await;
            for i in 0..EACH {
                let target = format!("/v3/content_types/blog/entries?client={c}&n={i}");
                let (status, _) = conn.send("GET", &target, &[("api_key", API_KEY), ("authorization", RO)], "").await;
                assert_eq!(status, 200);
            }
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    assert!(child.signal_and_wait("TERM").success());
    let logs = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    let access = logs.lines().filter(|l| l.contains("stackgate::access") && l.contains("status=200")).count();
    assert_eq!(access, CLIENTS * EACH, "one access line per request");
    let last = logs.lines().last().unwrap_or_default();
    assert!(last.contains("draining"), "the drain's lines are written before the exit: {last}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request the backend carried out, whose client went away before the answer (its
/// HTTP/1.1 connection closed, its HTTP/2 stream reset), is counted and logged as 499,
/// nginx's "client closed request": it left no access line and no count before (the
/// fifty-second outside probe), so a token's writes could go unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_went_away_is_logged_as_499() {
    let backend = Backend::start().await;
    let dir = temp_dir("client-gone");
    let file = dir.join("gw.toml");
    std::fs::write(&file, config_text(backend.addr, "", "")).unwrap();
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let (mut child, addr, mut out) = spawn_logging(&file, "2", log.into());
    let admin: std::net::SocketAddr = {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.trim().strip_prefix("stackgate admin listening on http://").unwrap().parse().unwrap()
    };
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "DELETE /v3/content_types/gone1 HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\n\
         authorization: {RW}\r\nx-test-delay-ms: 400\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(conn);
    // A refusal whose body is being read when the client goes away: logged as that
    // refusal (a read-only token's write is denied; 403, or 499 if the connection's
    // end dropped the request first), never as a request nobody decided.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v3/content_types/gone3 HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\n\
         authorization: {RO}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{{"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(conn);
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut h2c, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::delete(format!("http://{addr}/v3/content_types/gone2"))
        .header("api_key", API_KEY)
        .header("authorization", RW)
        .header("x-test-delay-ms", "400")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    // Dropped unanswered: the stream is reset.
    assert!(tokio::time::timeout(Duration::from_millis(150), h2c.send_request(request)).await.is_err());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let seen: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert!(seen.iter().any(|t| t.ends_with("gone1")) && seen.iter().any(|t| t.ends_with("gone2")), "{seen:?}");
    // Counted as requests (4xx, with the refusal), none as an allowed decision.
    let (_, metrics) = raw(admin, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    let value = |name: &str| {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {metrics}"));
        line.rsplit(' ').next().unwrap().to_owned()
    };
    assert_eq!(value("stackgate_requests_total{module=\"content_type\",class=\"4xx\"}"), "3");
    assert_eq!(value("stackgate_requests_total{module=\"content_type\",class=\"2xx\"}"), "0");
    assert_eq!(value("stackgate_decisions_total{reason=\"allowed\"}"), "0");
    assert_eq!(value("stackgate_decisions_total{reason=\"denied\"}"), "1");
    assert!(child.signal_and_wait("TERM").success());
    let logs = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    for path in ["/v3/content_types/gone1", "/v3/content_types/gone2"] {
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains("stackgate::access") && l.contains(path)).collect();
        assert_eq!(lines.len(), 1, "{path}: {logs}");
        assert!(lines[0].contains("status=499 reason=\"client_gone\""), "{}", lines[0]);
        assert!(lines[0].contains("token_uid=\"") && !lines[0].contains("token_uid=\"-\""), "{}", lines[0]);
    }
    let refused: Vec<&str> = logs.lines().filter(|l| l.contains("/v3/content_types/gone3")).collect();
    assert_eq!(refused.len(), 1, "{logs}");
    assert!(refused[0].contains(" reason=\"denied\""), "{}", refused[0]);
    assert!(!seen.iter().any(|t| t.ends_with("gone3")), "{seen:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests still unanswered when `shutdown_grace` runs out are cut off, and each is
/// counted and logged (499, reason `shutdown`) before the process exits, on every
/// serving thread and protocol: the process used to end first, leaving them no line
/// (the fifty-third outside probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_off_by_the_end_of_shutdown_grace_are_logged() {
    let backend = Backend::start().await;
    let dir = temp_dir("grace-cut");
    let file = dir.join("gw.toml");
    std::fs::write(&file, config_text(backend.addr, "shutdown_grace = \"1s\"", "")).unwrap();
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let (mut child, addr, _out) = spawn_logging(&file, "2", log.into());
    // Eight HTTP/1.1 connections (the kernel spreads them over both threads' sockets)
    // and two HTTP/2 streams, all waiting on a backend that takes 8 s.
    let mut held = Vec::new();
    for i in 0..8 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "DELETE /v3/content_types/cut{i} HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\n\
             authorization: {RW}\r\nx-test-delay-ms: 8000\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        held.push(conn);
    }
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (h2c, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    let streams: Vec<_> = (8..10)
        .map(|i| {
            let mut h2c = h2c.clone();
            let request = http::Request::delete(format!("http://{addr}/v3/content_types/cut{i}"))
                .header("api_key", API_KEY)
                .header("authorization", RW)
                .header("x-test-delay-ms", "8000")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            tokio::spawn(async move { h2c.send_request(request).await.is_ok() })
        })
        .collect();
    let arrived = Instant::now();
    while backend.seen().len() < 10 {
        assert!(arrived.elapsed() < Duration::from_secs(5), "{:?}", backend.seen().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    let exit = tokio::task::spawn_blocking(move || child.signal_and_wait("TERM")).await.unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(signalled.elapsed() < Duration::from_secs(5), "exited {:?} after the signal", signalled.elapsed());
    for stream in streams {
        assert!(!stream.await.unwrap(), "an HTTP/2 stream was answered");
    }
    let logs = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    for i in 0..10 {
        let path = format!("/v3/content_types/cut{i}\"");
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains("stackgate::access") && l.contains(&path)).collect();
        assert_eq!(lines.len(), 1, "{path}: {logs}");
        assert!(lines[0].contains("status=499 reason=\"shutdown\""), "{}", lines[0]);
    }
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With stderr stalled when the process ends (a log shipper that stopped reading), a
/// normal exit waits for it to take every buffered line, and then exits 0: it used to
/// exit a second later without them (the fifty-fourth outside probe: 206 of 303 lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_exit_writes_every_buffered_line_even_when_stderr_stalls() {
    let backend = Backend::start().await;
    let dir = temp_dir("stalled-exit");
    let file = dir.join("gw.toml");
    std::fs::write(&file, config_text(backend.addr, "", "")).unwrap();
    let (mut child, addr, _out) = spawn_logging(&file, "1", std::process::Stdio::piped());
    let stderr = child.0.stderr.take().unwrap();
    // Lines to fill the pipe (64 KiB) many times over; none read yet.
    const REQUESTS: usize = 1500;
    let mut conn = KeepAlive::connect(addr).await;
    for i in 0..REQUESTS {
        let target = format!("/v3/content_types/blog/entries?n={i}");
        assert_eq!(conn.send("GET", &target, &[("api_key", API_KEY), ("authorization", RO)], "").await.0, 200);
    }
    drop(conn);
    std::process::Command::new("kill").args(["-TERM", &child.pid().to_string()]).status().unwrap();
    // Past the log writer's own wait at shutdown (a second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.0.try_wait().unwrap().is_none(), "exited with lines unwritten");
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert!(child.0.wait().unwrap().success());
    let lines = text.lines().filter(|l| l.contains("stackgate::access") && l.contains("/blog/entries")).count();
    assert_eq!(lines, REQUESTS);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With stderr taking no more output (a stalled log shipper), the log queue fills and
/// serving waits on it; a second signal still exits at once, with status 1. Signals are
/// awaited on a thread that writes no log line before acting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_while_stderr_is_stalled() {
    let backend = Backend::start().await;
    let dir = temp_dir("stalled-stderr");
    let file = dir.join("gw.toml");
    std::fs::write(&file, config_text(backend.addr, "", "")).unwrap();
    // stderr is a pipe nobody reads: it fills after a few hundred lines.
    let (mut child, addr, _out) = spawn_logging(&file, "1", std::process::Stdio::piped());
    // Requests until one waits a second: the log queue (16,384 lines) is full.
    let clients = (0..8).map(|c| {
        tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await;
            for i in 0..4000 {
                let target = format!("/v3/content_types/blog/entries?client={c}&n={i}");
                let h = [("api_key", API_KEY), ("authorization", RO)];
                match tokio::time::timeout(Duration::from_secs(1), conn.send("GET", &target, &h, "")).await {
                    Ok((200, _)) => {}
                    _ => return true,
                }
            }
            false
        })
    });
    let mut stalled = false;
    for client in clients.collect::<Vec<_>>() {
        stalled |= client.await.unwrap();
    }
    assert!(stalled, "serving never waited on the log queue");
    let pid = child.pid().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = std::time::Instant::now();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(second.elapsed() < Duration::from_secs(5), "still running 5 s after the second signal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(1), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_streams_without_growing_gateway_memory() {
    let backend = Backend::start().await;
    let dir = std::env::temp_dir().join(format!("stackgate-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    std::fs::write(&file, config_text(backend.addr, "", "")).unwrap();
    let (proc_, addr, _out) = spawn(&["run", "--config", file.to_str().unwrap()]);
    let pid = proc_.0.id();

    // Warm up: one small request so pools and buffers exist.
    let (status, _) = raw(addr.parse().unwrap(), &raw_get("/v3/assets")).await;
    assert_eq!(status, 200);
    let before = peak_rss_kib(pid);

    const SIZE: usize = 100 << 20;
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v3/assets HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RW}\r\ncontent-type: application/octet-stream\r\ncontent-length: {SIZE}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        stream.write_all(&chunk).await.unwrap();
    }
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(backend.last().unwrap().body_len, SIZE, "the backend got every byte");

    let after = peak_rss_kib(pid);
    let grown_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    assert!(grown_mib < 16.0, "peak RSS grew by {grown_mib:.1} MiB for a 100 MiB upload");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_working_credentials_and_commands() {
    let (_proc, addr, mut out) = spawn(&["demo", "--listen", "127.0.0.1:0"]);
    let mut banner = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        banner.push_str(&line);
        if line.contains("Press Ctrl-C") {
            break;
        }
        line.clear();
    }
    let field =
        |name: &str| banner.lines().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned())).unwrap();
    let (api_key, rw, ro) = (field("api_key"), field("read-write"), field("read-only"));
    assert!(banner.contains("curl -s "), "{banner}");
    // The authtoken is a user session and does not look like a management token.
    let authtoken = field("authtoken");
    assert!(!authtoken.starts_with("cs") && authtoken.starts_with("demo-user-session-"), "{banner}");
    // The admin address is printed, and answers.
    let admin = field("admin");
    let admin: std::net::SocketAddr =
        admin.split_whitespace().next().unwrap().strip_prefix("http://").unwrap().parse().unwrap();
    let (status, _) = raw(admin, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200, "admin at {admin}");
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let get = |token: &str| {
        format!("GET /v3/content_types/blog_post/entries HTTP/1.1\r\nHost: gw\r\napi_key: {api_key}\r\nauthorization: {token}\r\nConnection: close\r\n\r\n")
    };
    let (status, text) = raw(addr, get(&ro).as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Hello, world"), "demo backend serves seeded entries: {text}");
    let post = |token: &str| {
        let body = r#"{"entry":{"title":"Hello"}}"#;
        format!("POST /v3/content_types/blog_post/entries HTTP/1.1\r\nHost: gw\r\napi_key: {api_key}\r\nauthorization: {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    let (status, text) = raw(addr, post(&ro).as_bytes()).await;
    assert_eq!(status, 403, "{text}");
    let (status, text) = raw(addr, post(&rw).as_bytes()).await;
    assert_eq!(status, 201, "{text}");
    let missing =
        format!("GET /v3/content_types HTTP/1.1\r\nHost: gw\r\napi_key: {api_key}\r\nConnection: close\r\n\r\n");
    let (status, _) = raw(addr, missing.as_bytes()).await;
    assert_eq!(status, 401);
}

#[test]
fn config_flag_has_help_text() {
    for sub in ["run", "check"] {
        let out = std::process::Command::new(BIN).args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        let line = help.lines().find(|l| l.contains("-c, --config")).unwrap_or_default().to_owned();
        assert!(line.contains("-c, --config <FILE>") && line.contains("config file"), "{sub}: {help}");
    }
}

/// A token asking for expiry notices while `[notify]` has no channel: `check` accepts the
/// file (exit 0) and prints a warning naming the token's uid (never its secret hash);
/// `check` on the example config (which has a channel) prints none.
#[test]
fn check_warns_about_notices_without_a_channel() {
    let dir = temp_dir("check-warns");
    let file = dir.join("notices.toml");
    let text = config_text("127.0.0.1:9".parse().unwrap(), "", "").replace(
        "expires_on = \"2027-01-01\"\n",
        "expires_on = \"2027-01-01\"\nis_email_notification_enabled = true\n",
    );
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN).args(["check", "--config", file.to_str().unwrap()]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(
        stderr.contains("warning: stacks[0].tokens[2].is_email_notification_enabled: token blt000000000000ex01"),
        "{stderr}"
    );
    assert!(!stderr.contains(&sha(EXPIRING)), "{stderr}");

    let out = Command::new(BIN).args(["check", "--config", "config/stackgate.example.toml"]).output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SIGHUP that arrives while the gateway is still starting (here it waits on a
/// PostgreSQL server that takes the connection and never answers) does not end it: the
/// forty-sixth outside probe saw the process die by the signal until its listeners were
/// up (seconds with many tokens), and systemd's `Restart=on-failure` does not restart
/// a service that a `systemctl reload` ended that way.
#[test]
fn a_sighup_during_start_up_does_not_end_the_gateway() {
    use std::os::unix::process::ExitStatusExt;
    // Taken, and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = temp_dir("sighup-start");
    let file = dir.join("gw.toml");
    let store = format!("\n[store]\nurl = \"postgres://root@127.0.0.1:{port}/test?sslmode=disable\"\n");
    std::fs::write(&file, config_text("127.0.0.1:9".parse().unwrap(), "", &store)).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut gw = Proc(child);
    // Its connection to the store shows that start-up is past the signal's registration
    // (the first thing `run` does) and now waits, within the store's 3 s connect bound.
    silent.set_nonblocking(true).unwrap();
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    let _held = loop {
        match silent.accept() {
            Ok((conn, _)) => break conn,
            Err(_) if std::time::Instant::now() < give_up => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the gateway never reached its store: {e}"),
        }
    };
    assert!(gw.0.try_wait().unwrap().is_none(), "the gateway should still be starting");
    Command::new("kill").args(["-HUP", &gw.pid().to_string()]).status().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let state = gw.0.try_wait().unwrap();
    assert!(state.is_none(), "a SIGHUP during start-up ended the gateway: {state:?}");
    // It still ends as it should: by SIGTERM, or by its own start-up failure.
    let status = gw.signal_and_wait("TERM");
    assert_ne!(status.signal(), Some(1), "{status:?}");
    drop(silent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under a `Type=notify` service manager (deploy/systemd), `stackgate run` sends
/// `READY=1` to `NOTIFY_SOCKET`, a path or an abstract `@name`, once it serves (before
/// it, systemd would count the service as started while the store loads, and a reload
/// or a dependent unit would race start-up), and `STOPPING=1` when SIGTERM begins the
/// drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_manager_is_told_when_the_gateway_serves_and_when_it_stops() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let backend = Backend::start().await;
    let dir = temp_dir("notify");
    for (n, abstract_name) in [false, true].into_iter().enumerate() {
        let (socket, named) = if abstract_name {
            // Abstract names are per network namespace, which CI containers may share.
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let name = format!("stackgate-notify-{}-{n}-{nanos}", std::process::id());
            (UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap(), format!("@{name}"))
        } else {
            let path = dir.join("notify.sock");
            (UnixDatagram::bind(&path).unwrap(), path.display().to_string())
        };
        socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let file = dir.join(format!("gw{n}.toml"));
        let store = format!("\n[store]\npath = \"{}\"\n", dir.join(format!("tokens{n}.db")).display());
        std::fs::write(&file, config_text(backend.addr, "", &store)).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config", file.to_str().unwrap(), "--threads", "1"])
            .env("NOTIFY_SOCKET", &named)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut gw = Proc(child);
        let mut out = BufReader::new(gw.0.stdout.take().unwrap());
        let mut message = [0u8; 64];
        let len = socket.recv(&mut message).expect("no READY=1 from the gateway");
        assert_eq!(&message[..len], b"READY=1", "{named}");
        // By now the listener accepts: its line was written before the message.
        assert!(readable_now(out.get_ref()), "READY=1 came before the listening line");
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr: std::net::SocketAddr =
            line.trim().strip_prefix("stackgate listening on http://").unwrap().parse().unwrap();
        assert_eq!(raw(addr, &raw_get("/v3/assets")).await.0, 200);
        Command::new("kill").args(["-TERM", &gw.pid().to_string()]).status().unwrap();
        let len = socket.recv(&mut message).expect("no STOPPING=1 from the gateway");
        assert_eq!(&message[..len], b"STOPPING=1", "{named}");
        assert!(gw.0.wait().unwrap().success());
        let _ = std::fs::remove_file(dir.join("notify.sock"));
    }
    // A manager that cannot be reached is logged; the gateway serves. Its stdout is
    // closed after the first line: that ends nothing either (`println!` panicked on it).
    let file = dir.join("gw-unreachable.toml");
    let store = format!("\n[store]\npath = \"{}\"\n", dir.join("tokens-unreachable.db").display());
    std::fs::write(&file, config_text(backend.addr, "", &store)).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config", file.to_str().unwrap(), "--threads", "1"])
        .env("NOTIFY_SOCKET", dir.join("nobody-listens.sock"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut gw = Proc(child);
    let mut line = String::new();
    BufReader::new(gw.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr =
        line.trim().strip_prefix("stackgate listening on http://").unwrap().parse().unwrap();
    assert_eq!(raw(addr, &raw_get("/v3/assets")).await.0, 200);
    assert!(gw.signal_and_wait("TERM").success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether a read from `pipe` would return at once (`poll` with no wait).
fn readable_now(pipe: &impl std::os::fd::AsRawFd) -> bool {
    let mut fd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, for the length given; the descriptor stays open meanwhile.
    unsafe { libc::poll(&mut fd, 1, 0) == 1 }
}

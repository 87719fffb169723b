//! Several replicas (real `stackgate` processes) sharing PostgreSQL for tokens and Redis
//! for rate buckets: change propagation, the cap across replicas, exact shared limits,
//! the Redis fail modes, and a PostgreSQL outage.
//!
//! Needs `STACKGATE_TEST_POSTGRES_URL` and `STACKGATE_TEST_REDIS_URL` (`.ci/run` sets
//! both); without them each test prints why it is skipped. Every test gets its own
//! database and Redis key prefix, so they run in parallel. Outages are made without
//! touching the shared servers: a private `redis-server` is killed and restarted, and
//! PostgreSQL is cut off by a TCP relay that drops every connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod scaleout_support;
use common::*;
use scaleout_support::{admin_get, failed_start, free_port, spawn_logged, start_replicas, Replica};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const TOKENS: &str = "/v3/stacks/management_tokens";
const READ: &str = "/v3/content_types";

static N: AtomicU32 = AtomicU32::new(0);

fn unique(name: &str) -> String {
    format!("sg_{name}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// The shared servers' URLs, or `None` (the reason printed) when not configured.
fn services(test: &str) -> Option<(String, String)> {
    match (std::env::var("STACKGATE_TEST_POSTGRES_URL"), std::env::var("STACKGATE_TEST_REDIS_URL")) {
        (Ok(pg), Ok(redis)) if !pg.is_empty() && !redis.is_empty() => Some((pg, redis)),
        _ => {
            eprintln!(
                "SKIPPED {test}: set STACKGATE_TEST_POSTGRES_URL and STACKGATE_TEST_REDIS_URL (bash .ci/run does)"
            );
            None
        }
    }
}

/// The PostgreSQL URL alone, for tests that need no Redis, or `None` (the reason
/// printed) when not configured.
fn postgres(test: &str) -> Option<String> {
    match std::env::var("STACKGATE_TEST_POSTGRES_URL") {
        Ok(pg) if !pg.is_empty() => Some(pg),
        _ => {
            eprintln!("SKIPPED {test}: set STACKGATE_TEST_POSTGRES_URL (bash scripts/test.sh does)");
            None
        }
    }
}

/// A database of its own for one test, dropped at the end.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str, test: &str) -> Database {
        let name = unique(test);
        let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        // Databases left by test runs that panicked (their process is gone).
        for row in client.query("SELECT datname FROM pg_database WHERE datname LIKE 'sg\\_%'", &[]).await.unwrap() {
            let stale: String = row.get(0);
            let pid = stale.rsplit('_').nth(1).unwrap_or("");
            if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {stale} WITH (FORCE)")).await;
            }
        }
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let (base, query) = admin_url.split_once('?').map_or((admin_url, ""), |(b, q)| (b, q));
        let base = &base[..base.rfind('/').unwrap()];
        let url = if query.is_empty() { format!("{base}/{name}") } else { format!("{base}/{name}?{query}") };
        Database { admin_url: admin_url.to_owned(), name, url }
    }

    /// The same database through `relay` (127.0.0.1:port) instead of the server.
    fn url_via(&self, relay: SocketAddr) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap();
        let (userinfo, after) = rest.split_once('@').map_or(("", rest), |(u, a)| (u, a));
        let path = &after[after.find('/').unwrap()..];
        let at = if userinfo.is_empty() { String::new() } else { format!("{userinfo}@") };
        format!("{scheme}://{at}{relay}{path}")
    }

    async fn drop_now(self) {
        let (client, conn) = tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await;
    }
}

fn shared_config(store_url: &str, redis_url: &str, prefix: &str, fail_mode: &str, replicas: u32) -> String {
    format!(
        "[store]\nurl = \"{store_url}\"\n\n[ratelimit]\nbackend = \"redis\"\nurl = \"{redis_url}\"\n\
         fail_mode = \"{fail_mode}\"\nreplicas = {replicas}\nkey_prefix = \"{prefix}\"\ntimeout = \"200ms\"\n"
    )
}

/// One request over a fresh connection: status, headers, body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap, Value) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    let resp =
        tokio::time::timeout(Duration::from_secs(20), client.request(req)).await.expect("answer in time").unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn owner(api_key: &'static str) -> [(&'static str, &'static str); 3] {
    [("api_key", api_key), ("authtoken", ALICE), ("content-type", "application/json")]
}

fn new_token(name: &str, write: bool) -> String {
    json!({"token": {
        "name": name,
        "scope": [
            {"module": "$all", "acl": {"read": true, "write": write}},
            {"module": "branch", "branches": ["main"], "acl": {"read": true}}
        ],
        "expires_on": "2099-01-01"
    }})
    .to_string()
}

/// Creates a token through `addr`: (uid, secret).
async fn create(addr: SocketAddr, api_key: &'static str, name: &str) -> (String, String) {
    let (status, _, body) = call(addr, "POST", TOKENS, &owner(api_key), &new_token(name, true)).await;
    assert_eq!(status, 201, "{body}");
    (body["token"]["uid"].as_str().unwrap().to_owned(), body["token"]["token"].as_str().unwrap().to_owned())
}

async fn status_with(addr: SocketAddr, method: &str, api_key: &str, secret: &str) -> u16 {
    let fields = [("api_key", api_key), ("authorization", secret), ("content-type", "application/json")];
    call(addr, method, READ, &fields, "{}").await.0
}

/// The headers of one read of `RATED` through `addr`, which must be admitted.
async fn admitted_headers(addr: SocketAddr) -> http::HeaderMap {
    let (status, headers, body) =
        call(addr, "GET", READ, &[("api_key", SMALL_API_KEY), ("authorization", RATED)], "").await;
    assert_eq!(status, 200, "{body}");
    headers
}

/// Polls until every replica answers `want`; returns how long it took.
async fn until_all(
    addrs: &[SocketAddr],
    method: &str,
    api_key: &str,
    secret: &str,
    want: u16,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for addr in addrs {
            all &= status_with(*addr, method, api_key, secret).await == want;
        }
        if all {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "replicas did not all answer {want} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_changes_reach_every_replica_within_a_second() {
    let Some((pg, redis)) = services("token_changes_reach_every_replica_within_a_second") else { return };
    let db = Database::create(&pg, "propagation").await;
    let backend = Backend::start().await;
    let replicas = start_replicas(backend.addr, &shared_config(&db.url, &redis, &unique("p"), "local", 3), 3);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();

    let (uid, secret) = create(replicas[0].addr, API_KEY, "made-on-replica-0").await;
    let took = until_all(&addrs, "GET", API_KEY, &secret, 200, Duration::from_secs(1)).await;
    eprintln!("create visible on all replicas after {took:?}");
    assert_eq!(status_with(replicas[2].addr, "POST", API_KEY, &secret).await, 200, "read-write as created");

    // An update through another replica (now read-only) reaches all of them.
    let update = json!({"token": {"scope": [
        {"module": "$all", "acl": {"read": true, "write": false}},
        {"module": "branch", "branches": ["main"], "acl": {"read": true}}]}});
    let path = format!("{TOKENS}/{uid}");
    let (status, _, body) = call(replicas[1].addr, "PUT", &path, &owner(API_KEY), &update.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let took = until_all(&addrs, "POST", API_KEY, &secret, 403, Duration::from_secs(1)).await;
    eprintln!("update visible on all replicas after {took:?}");

    // A deletion through a third replica is refused by all of them.
    let (status, _, _) = call(replicas[2].addr, "DELETE", &path, &owner(API_KEY), "").await;
    assert_eq!(status, 200);
    let took = until_all(&addrs, "GET", API_KEY, &secret, 401, Duration::from_secs(1)).await;
    eprintln!("deletion refused by all replicas after {took:?}");
    // And every replica's API agrees it is gone.
    for r in &replicas {
        assert_eq!(call(r.addr, "GET", &path, &owner(API_KEY), "").await.0, 404);
    }
    drop(replicas);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_for_concurrent_creates_across_replicas() {
    let Some((pg, redis)) = services("the_cap_holds_for_concurrent_creates_across_replicas") else { return };
    let db = Database::create(&pg, "cap").await;
    let backend = Backend::start().await;
    let replicas = start_replicas(backend.addr, &shared_config(&db.url, &redis, &unique("c"), "local", 3), 3);
    // The small stack has 2 static tokens and the default cap of 30: fill it to 29.
    for i in 0..27 {
        create(replicas[i % 3].addr, SMALL_API_KEY, &format!("fill-{i}")).await;
    }
    // Nine creates at once, three through each replica, for the one place left.
    let mut tasks = Vec::new();
    for i in 0..9 {
        let addr = replicas[i % 3].addr;
        tasks.push(tokio::spawn(async move {
            call(addr, "POST", TOKENS, &owner(SMALL_API_KEY), &new_token(&format!("race-{i}"), false)).await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        if status == 422 {
            assert_eq!(body["error_code"], 422);
            assert!(body["errors"]["token"][0].as_str().unwrap().contains("at most 30"), "{body}");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 422, 422, 422, 422, 422, 422, 422, 422]);
    for r in &replicas {
        let (status, _, body) = call(r.addr, "GET", TOKENS, &owner(SMALL_API_KEY), "").await;
        assert_eq!(status, 200);
        assert_eq!(body["tokens"].as_array().unwrap().len(), 30, "28 stored + 2 static");
    }
    drop(replicas);
    db.drop_now().await;
}

/// Issue #17 item 12 across replicas: each round, one replica downgrades a token's
/// scope while another changes only its description, at the same moment. Both changes
/// must be in the shared store afterwards (each update is a read-modify-write under a
/// row lock, not a write-back of a record read before the other committed), and every
/// replica must refuse the token's writes. The replicas swap roles every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_through_different_replicas_lose_no_field() {
    let Some(pg) = postgres("concurrent_updates_through_different_replicas_lose_no_field") else { return };
    let db = Database::create(&pg, "lostupdate").await;
    let backend = Backend::start().await;
    let replicas = start_replicas(backend.addr, &format!("[store]\nurl = \"{}\"\n", db.url), 2);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let (uid, secret) = create(addrs[0], API_KEY, "raced").await;
    let path = format!("{TOKENS}/{uid}");
    let headers = owner(API_KEY);
    let scope = |write: bool| {
        json!([{"module": "$all", "acl": {"read": true, "write": write}},
               {"module": "branch", "branches": ["main"], "acl": {"read": true, "write": false}}])
    };
    for round in 0..20 {
        let reset = json!({"token": {"scope": scope(true), "description": "before"}}).to_string();
        assert_eq!(call(addrs[round % 2], "PUT", &path, &owner(API_KEY), &reset).await.0, 200);
        until_all(&addrs, "POST", API_KEY, &secret, 200, Duration::from_secs(2)).await;

        let downgrade = json!({"token": {"scope": scope(false)}}).to_string();
        let describe = json!({"token": {"description": format!("after {round}")}}).to_string();
        let (a, b) = (addrs[round % 2], addrs[(round + 1) % 2]);
        let ((s1, _, v1), (s2, _, v2)) =
            tokio::join!(call(a, "PUT", &path, &headers, &downgrade), call(b, "PUT", &path, &headers, &describe));
        assert_eq!((s1, s2), (200, 200), "round {round}: {v1} {v2}");

        for addr in &addrs {
            let (_, _, got) = call(*addr, "GET", &path, &owner(API_KEY), "").await;
            assert_eq!(got["token"]["scope"], scope(false), "round {round}: the downgrade was undone: {got}");
            assert_eq!(got["token"]["description"], format!("after {round}"), "round {round}: {got}");
        }
        until_all(&addrs, "POST", API_KEY, &secret, 403, Duration::from_secs(2)).await;
    }
    drop(replicas);
    db.drop_now().await;
}

/// Issue #18, suspension across replicas: a suspension through one replica is
/// enforced by the other (401, "is disabled."), and so is the resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_through_one_replica_is_enforced_by_the_other() {
    let Some(pg) = postgres("a_suspension_through_one_replica_is_enforced_by_the_other") else { return };
    let db = Database::create(&pg, "suspend").await;
    let backend = Backend::start().await;
    let replicas = start_replicas(backend.addr, &format!("[store]\nurl = \"{}\"\n", db.url), 2);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let (uid, secret) = create(addrs[0], API_KEY, "suspended").await;
    until_all(&addrs, "GET", API_KEY, &secret, 200, Duration::from_secs(2)).await;
    let path = format!("{TOKENS}/{uid}");
    let off = json!({"token": {"enabled": false}}).to_string();
    let (status, _, body) = call(addrs[0], "PUT", &path, &owner(API_KEY), &off).await;
    assert_eq!((status, body["token"]["enabled"].clone()), (200, json!(false)), "{body}");
    until_all(&addrs, "GET", API_KEY, &secret, 401, Duration::from_secs(1)).await;
    let (_, _, refused) =
        call(addrs[1], "GET", READ, &[("api_key", API_KEY), ("authorization", secret.as_str())], "").await;
    assert_eq!(refused["errors"]["authorization"], json!(["is disabled."]), "{refused}");
    let (_, _, shown) = call(addrs[1], "GET", &path, &owner(API_KEY), "").await;
    assert_eq!(shown["token"]["enabled"], false, "{shown}");
    let on = json!({"token": {"enabled": true}}).to_string();
    assert_eq!(call(addrs[1], "PUT", &path, &owner(API_KEY), &on).await.0, 200);
    until_all(&addrs, "GET", API_KEY, &secret, 200, Duration::from_secs(1)).await;
    drop(replicas);
    db.drop_now().await;
}

/// Issue #18, rotation across replicas: a regeneration through one replica is in force
/// on the other: the new secret works there, the old one within its grace period too,
/// and a regeneration without grace stops the old secret on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regeneration_through_one_replica_is_enforced_by_the_other() {
    let Some(pg) = postgres("a_regeneration_through_one_replica_is_enforced_by_the_other") else { return };
    let db = Database::create(&pg, "rotate").await;
    let backend = Backend::start().await;
    let replicas = start_replicas(backend.addr, &format!("[store]\nurl = \"{}\"\n", db.url), 2);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let (uid, old) = create(addrs[0], API_KEY, "rotated").await;
    until_all(&addrs, "GET", API_KEY, &old, 200, Duration::from_secs(2)).await;
    let path = format!("{TOKENS}/{uid}/regenerate");
    let grace = json!({"grace_period": "1h"}).to_string();
    let (status, _, body) = call(addrs[0], "POST", &path, &owner(API_KEY), &grace).await;
    assert_eq!(status, 200, "{body}");
    let new = body["token"]["token"].as_str().unwrap().to_owned();
    until_all(&addrs, "GET", API_KEY, &new, 200, Duration::from_secs(1)).await;
    until_all(&addrs, "GET", API_KEY, &old, 200, Duration::from_secs(1)).await;
    let (status, _, body) = call(addrs[1], "POST", &path, &owner(API_KEY), "").await;
    assert_eq!(status, 200, "{body}");
    let newest = body["token"]["token"].as_str().unwrap().to_owned();
    until_all(&addrs, "GET", API_KEY, &newest, 200, Duration::from_secs(1)).await;
    until_all(&addrs, "GET", API_KEY, &new, 401, Duration::from_secs(1)).await;
    until_all(&addrs, "GET", API_KEY, &old, 401, Duration::from_secs(1)).await;
    drop(replicas);
    db.drop_now().await;
}

/// Issue #18, audit trail on PostgreSQL: changes made through two replicas are all in
/// the one trail, newest first, readable through either replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_holds_changes_from_every_replica() {
    let Some(pg) = postgres("the_audit_trail_holds_changes_from_every_replica") else { return };
    let db = Database::create(&pg, "audit").await;
    let backend = Backend::start().await;
    let replicas = start_replicas(backend.addr, &format!("[store]\nurl = \"{}\"\n", db.url), 2);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let (uid, secret) = create(addrs[0], API_KEY, "audited").await;
    let path = format!("{TOKENS}/{uid}");
    let off = json!({"token": {"enabled": false}}).to_string();
    assert_eq!(call(addrs[1], "PUT", &path, &owner(API_KEY), &off).await.0, 200);
    let (status, _, body) = call(addrs[0], "POST", &format!("{path}/regenerate"), &owner(API_KEY), "").await;
    assert_eq!(status, 200, "{body}");
    let new = body["token"]["token"].as_str().unwrap().to_owned();
    assert_eq!(call(addrs[1], "DELETE", &path, &owner(API_KEY), "").await.0, 200);
    for addr in &addrs {
        let (status, _, v) = call(*addr, "GET", &format!("{TOKENS}/audit?limit=10"), &owner(API_KEY), "").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["count"], 4, "{v}");
        let got: Vec<(&str, &str, Value)> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["action"].as_str().unwrap(), e["token_uid"].as_str().unwrap(), e["fields"].clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("delete", uid.as_str(), json!([])),
                ("regenerate", uid.as_str(), json!(["token"])),
                ("update", uid.as_str(), json!(["enabled"])),
                ("create", uid.as_str(), json!(["name", "scope", "expires_on"])),
            ],
            "{v}"
        );
        let text = v.to_string();
        assert!(!text.contains(&secret) && !text.contains(&new) && !text.contains(&sha(&secret)), "{text}");
    }
    drop(replicas);
    db.drop_now().await;
}

/// Hits `secret` through the replicas in turn for `window`, a request every `gap`;
/// returns the admitted count per replica and checks every refusal's headers.
async fn hammer(replicas: &[Replica], api_key: &str, secret: &str, window: Duration, gap: Duration) -> Vec<u32> {
    let mut admitted = vec![0u32; replicas.len()];
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < window {
        let r = i % replicas.len();
        let (status, headers, body) =
            call(replicas[r].addr, "GET", READ, &[("api_key", api_key), ("authorization", secret)], "").await;
        match status {
            200 => {
                admitted[r] += 1;
                assert!(headers.contains_key("x-ratelimit-limit") && headers.contains_key("x-ratelimit-remaining"));
            }
            429 => {
                assert_eq!(body["error_code"], 429);
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=1).contains(&retry), "retry-after {retry}");
                assert_eq!(headers["x-ratelimit-remaining"], "0");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
        i += 1;
        tokio::time::sleep(gap).await;
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_buckets_hold_exactly_across_three_replicas() {
    let Some((pg, redis)) = services("redis_buckets_hold_exactly_across_three_replicas") else { return };
    let db = Database::create(&pg, "exact").await;
    let backend = Backend::start().await;
    let replicas = start_replicas(backend.addr, &shared_config(&db.url, &redis, &unique("e"), "closed", 3), 3);
    // RATED: 5 reads/s with a burst of 5, through all three replicas for 3 s.
    let admitted = hammer(&replicas, SMALL_API_KEY, RATED, Duration::from_secs(3), Duration::from_millis(10)).await;
    let total: u32 = admitted.iter().sum();
    eprintln!("redis: admitted per replica {admitted:?}, total {total} (allowed 15..=20)");
    assert!((15..=20).contains(&total), "total {total}");
    assert!(admitted.iter().all(|&n| n > 0), "every replica admits some: {admitted:?}");
    // The headers name the token's own bucket, as with local buckets.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let headers = admitted_headers(replicas[1].addr).await;
    assert_eq!(headers["x-ratelimit-limit"], "5");
    assert_eq!(headers["ratelimit-policy"], "\"token-read\";q=5;w=1, \"org-read\";q=10;w=1");
    drop(replicas);
    db.drop_now().await;
}

/// The value of the metric line starting with `name` (name, labels and a space) on a
/// replica's admin `/metrics`; -1 if there is none.
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let text = admin_get(admin, "/metrics").await;
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(-1.0)
}

/// Sends one command to Redis over a fresh connection; returns the raw reply.
async fn redis_raw(url: &str, args: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("redis://").trim_end_matches('/');
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut redis = TcpStream::connect(addr).await.unwrap();
    redis.write_all(command.as_bytes()).await.unwrap();
    // The reply is one line, or a bulk string (`$LEN`) whose bytes may come in pieces.
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = redis.read(&mut chunk).await.unwrap();
        reply.extend_from_slice(&chunk[..n]);
        if n == 0 {
            return String::from_utf8_lossy(&reply).into_owned();
        }
        let text = String::from_utf8_lossy(&reply);
        let Some((first, rest)) = text.split_once("\r\n") else { continue };
        match first.strip_prefix('$').and_then(|len| len.parse::<usize>().ok()) {
            Some(len) if rest.len() < len => continue,
            _ => return text.into_owned(),
        }
    }
}

/// Holds Redis busy for `for_ms` with a script that spins on its clock (Redis runs one
/// command at a time, so every call sent meanwhile waits).
async fn hold_redis(url: &str, for_ms: u32) {
    let script = format!(
        "local s = redis.call('TIME') local t repeat t = redis.call('TIME') \
         until (t[1] - s[1]) * 1000000 + (t[2] - s[2]) > {} return 1",
        for_ms * 1000
    );
    assert_eq!(redis_raw(url, &["EVAL", &script, "0"]).await, ":1\r\n", "the holding script ran");
}

/// Requests waiting for Redis share one script call (the batch task sends every charge
/// waiting in one), and the buckets stay exact: while Redis is held busy, 40 reads of
/// RATED (5/s, burst 5) arrive at once; they are charged in a few calls, not 40, and
/// exactly the burst is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_charges_share_one_redis_call_and_stay_exact() {
    let Some((pg, redis)) = services("waiting_charges_share_one_redis_call_and_stay_exact") else { return };
    let db = Database::create(&pg, "batch").await;
    let backend = Backend::start().await;
    let replica = start_replicas(backend.addr, &shared_config(&db.url, &redis, &unique("b"), "closed", 1), 1).remove(0);
    const TRIPS: &str = "stackgate_ratelimit_backend_round_trips_total ";
    let before = metric(replica.admin, TRIPS).await;
    assert!(before >= 0.0, "round-trip counter");
    // Held for 120 ms: less than the 200 ms timeout, so every call still succeeds.
    let held = tokio::spawn({
        let redis = redis.clone();
        async move { hold_redis(&redis, 120).await }
    });
    tokio::time::sleep(Duration::from_millis(15)).await;
    let statuses = at_once(replica.addr, 40).await;
    held.await.unwrap();
    let calls = (metric(replica.admin, TRIPS).await - before) as u64;
    eprintln!("40 waiting charges: {calls} Redis calls, statuses {statuses:?}");
    assert_eq!(count(&statuses, 200), 5, "exactly the burst: {statuses:?}");
    assert_eq!(count(&statuses, 429), 35, "{statuses:?}");
    assert!((1..=8).contains(&calls), "40 charges in {calls} calls");
    drop(replica);
    db.drop_now().await;
}

/// A bucket key Redis cannot read (it holds a hash) leaves the requests that use it to
/// the fail mode, and only them: another organisation's requests charged in the same
/// calls are decided by Redis as usual. The connection stays (Redis is not taken out of
/// the request path), and once the key is fixed the next request is charged at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_fails_its_requests_without_dropping_redis() {
    let Some((pg, redis)) = services("an_error_reply_fails_its_requests_without_dropping_redis") else { return };
    let db = Database::create(&pg, "wrongtype").await;
    let backend = Backend::start().await;
    let prefix = unique("w");
    let replica = start_replicas(backend.addr, &shared_config(&db.url, &redis, &prefix, "closed", 1), 1).remove(0);
    assert_eq!(status_with(replica.addr, "GET", SMALL_API_KEY, RATED).await, 200);
    let org_key = format!("{prefix}:{{org_small}}:org-read");
    redis_raw(&redis, &["DEL", &org_key]).await;
    assert_eq!(redis_raw(&redis, &["HSET", &org_key, "f", "v"]).await, ":1\r\n");
    assert_eq!(status_with(replica.addr, "GET", SMALL_API_KEY, RATED).await, 503, "the fail mode decides");
    assert_eq!(metric(replica.admin, "stackgate_ratelimit_backend_up ").await, 1.0, "Redis stays in the request path");
    // Another organisation's requests charged in the same calls (Redis held busy so
    // they queue together) are not touched by the broken key.
    let held = tokio::spawn({
        let redis = redis.clone();
        async move { hold_redis(&redis, 120).await }
    });
    tokio::time::sleep(Duration::from_millis(15)).await;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..10 {
        let addr = replica.addr;
        let (api_key, secret) = if i % 2 == 0 { (SMALL_API_KEY, RATED) } else { (API_KEY, RW) };
        requests.spawn(async move { (api_key, status_with(addr, "GET", api_key, secret).await) });
    }
    let answers: Vec<(&str, u16)> = requests.join_all().await;
    held.await.unwrap();
    for (api_key, status) in &answers {
        let want = if *api_key == SMALL_API_KEY { 503 } else { 200 };
        assert_eq!(*status, want, "{answers:?}");
    }
    // Six refusals make one error line a second, not one each (the 52nd probe).
    let log = std::fs::read_to_string(&replica.log).unwrap();
    let lines = log.lines().filter(|l| l.contains("holds another type")).count();
    assert!((1..=2).contains(&lines), "{lines} lines: {log}");
    redis_raw(&redis, &["DEL", &org_key]).await;
    assert_eq!(status_with(replica.addr, "GET", SMALL_API_KEY, RATED).await, 200, "charged again at once");
    drop(replica);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fail_mode_gives_each_replica_its_share() {
    let Some((pg, _)) = services("local_fail_mode_gives_each_replica_its_share") else { return };
    let db = Database::create(&pg, "share").await;
    let backend = Backend::start().await;
    // Redis is unreachable (nothing listens there): every replica falls back to local
    // buckets of rate / 3 = 5/3 reads/s with a burst of ceil(5/3) = 2.
    let dead = free_port().await;
    let cfg = shared_config(&db.url, &format!("redis://127.0.0.1:{dead}"), &unique("s"), "local", 3);
    let replicas = start_replicas(backend.addr, &cfg, 3);
    let admitted = hammer(&replicas, SMALL_API_KEY, RATED, Duration::from_secs(3), Duration::from_millis(10)).await;
    let total: u32 = admitted.iter().sum();
    eprintln!("local share: admitted per replica {admitted:?}, total {total}");
    // Per replica: 2 at once, then one every 600 ms: 6 or 7 in 3 s.
    assert!(admitted.iter().all(|n| (5..=7).contains(n)), "{admitted:?}");
    assert!((15..=21).contains(&total), "total {total}");
    // The headers report the part each replica enforces: 5/3 reads/s (rounded down in
    // X-RateLimit-Limit, exact as 5 per 3 s in the policy), a burst of 2 (refilled
    // after 1.2 s) with one taken, back in 600 ms.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let headers = admitted_headers(replicas[0].addr).await;
    assert_eq!(headers["x-ratelimit-limit"], "1");
    assert_eq!(headers["x-ratelimit-remaining"], "1");
    assert_eq!(headers["ratelimit"], "\"token-read\";r=1;t=1");
    assert_eq!(headers["ratelimit-policy"], "\"token-read\";q=5;w=3, \"org-read\";q=10;w=3");
    drop(replicas);
    db.drop_now().await;
}

/// Each serving thread charges through its own lane, with its own Redis connection on
/// that thread (no charge crosses threads), and the buckets stay exact across the lanes:
/// 32 reads of RATED (5/s, burst 5) at once, spread by the kernel over the gateway's
/// listeners, admit the burst, and the private Redis sees the start connection plus one
/// per thread that served them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_serving_thread_charges_through_its_own_redis_connection() {
    let Some((pg, _)) = services("each_serving_thread_charges_through_its_own_redis_connection") else { return };
    let db = Database::create(&pg, "lanes").await;
    let backend = Backend::start().await;
    let redis = RedisServer::start().await;
    let replica =
        start_replicas(backend.addr, &shared_config(&db.url, &redis.url(), &unique("l"), "closed", 1), 1).remove(0);
    let statuses = at_once(replica.addr, 32).await;
    assert_limited(&statuses, "32 at once, over every lane");
    let info = redis_raw(&redis.url(), &["INFO", "clients"]).await;
    let connected: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO clients: {info}"));
    // Less the connection asking.
    let gateway = connected - 1;
    // `stackgate run` serves on one thread per core it may use, as this test may.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("{threads} serving threads, {gateway} Redis connections");
    assert!(gateway <= threads + 1, "at most the start connection and one per thread: {gateway}");
    if threads >= 2 {
        assert!(gateway >= 3, "the start connection and a lane per thread that charged: {gateway}");
    }
    drop(replica);
    db.drop_now().await;
}

/// A lane whose connection alone is lost (`CLIENT KILL`, as an idle cut by something
/// in between would do) opens another at once: with `fail_mode = "closed"`, at most
/// the requests of the batch that met the dead connection are refused (one per lane
/// here, the requests being sequential), not every request on every thread while
/// Redis is reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lane_connection_is_replaced_without_taking_redis_out() {
    let Some((pg, _)) = services("a_lost_lane_connection_is_replaced_without_taking_redis_out") else { return };
    let db = Database::create(&pg, "lane_lost").await;
    let backend = Backend::start().await;
    let redis = RedisServer::start().await;
    let replica =
        start_replicas(backend.addr, &shared_config(&db.url, &redis.url(), &unique("k"), "closed", 1), 1).remove(0);
    // Charges on every serving thread, so that each has its lane and connection.
    let mut warm = tokio::task::JoinSet::new();
    for _ in 0..32 {
        warm.spawn(async move { status_with(replica.addr, "GET", API_KEY, RW).await });
    }
    assert!(warm.join_all().await.iter().all(|&s| s == 200));
    // Every gateway connection but the oldest (the start connection): the lanes'.
    let list = redis_raw(&redis.url(), &["CLIENT", "LIST"]).await;
    let mut ids: Vec<u64> = list
        .lines()
        .filter(|l| !l.contains("cmd=client"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).and_then(|id| id.parse().ok()))
        .collect();
    ids.sort_unstable();
    assert!(ids.len() >= 2, "the start connection and at least one lane: {list}");
    for id in &ids[1..] {
        redis_raw(&redis.url(), &["CLIENT", "KILL", "ID", &id.to_string()]).await;
    }
    let lanes = ids.len() - 1;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(status_with(replica.addr, "GET", API_KEY, RW).await);
    }
    let refused = count(&statuses, 503);
    eprintln!("{refused} of 40 refused after killing {lanes} lane connections");
    assert!(refused <= lanes, "{refused} of 40 refused after killing {lanes} lane connections: {statuses:?}");
    assert_eq!(count(&statuses, 200) + refused, 40, "{statuses:?}");
    assert_eq!(metric(replica.admin, "stackgate_ratelimit_backend_up ").await, 1.0, "Redis stayed in the path");

    // Every gateway connection, the shared one too: a lane that meets a dead shared
    // connection (while its own reopens) has it replaced as well.
    let list = redis_raw(&redis.url(), &["CLIENT", "LIST"]).await;
    for line in list.lines().filter(|l| !l.contains("cmd=client")) {
        if let Some(id) = line.split(' ').find_map(|f| f.strip_prefix("id=")) {
            redis_raw(&redis.url(), &["CLIENT", "KILL", "ID", id]).await;
        }
    }
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(status_with(replica.addr, "GET", API_KEY, RW).await);
    }
    eprintln!("after killing every connection: {statuses:?}");
    assert!(count(&statuses, 503) <= 2 * lanes + 1, "{statuses:?}");
    assert!(statuses[30..].iter().all(|&s| s == 200), "charged in Redis again: {statuses:?}");
    assert_eq!(metric(replica.admin, "stackgate_ratelimit_backend_up ").await, 1.0, "Redis stayed in the path");
    drop(replica);
    db.drop_now().await;
}

/// Redis cutting connections idle for 7 s (its `timeout`): lanes ping their idle
/// connections every 5 s, so after 16 s without a request nothing has been cut and no
/// request meets a dead connection (with `fail_mode = "closed"` each lane's first
/// request after the pause was refused with 503 before the lanes pinged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_lane_connections_outlive_redis_idle_timeout() {
    let Some((pg, _)) = services("idle_lane_connections_outlive_redis_idle_timeout") else { return };
    let db = Database::create(&pg, "idle").await;
    let backend = Backend::start().await;
    let redis = RedisServer::start().await;
    redis_raw(&redis.url(), &["CONFIG", "SET", "timeout", "7"]).await;
    let replica =
        start_replicas(backend.addr, &shared_config(&db.url, &redis.url(), &unique("i"), "closed", 1), 1).remove(0);
    // A lane (and its connection) on every serving thread.
    let statuses = at_once(replica.addr, 32).await;
    assert_eq!(count(&statuses, 503), 0, "{statuses:?}");
    tokio::time::sleep(Duration::from_secs(16)).await;
    let statuses = at_once(replica.addr, 32).await;
    assert_eq!(count(&statuses, 503), 0, "a request met a connection Redis had cut: {statuses:?}");
    assert_eq!(count(&statuses, 200) + count(&statuses, 429), 32, "{statuses:?}");
    drop(replica);
    db.drop_now().await;
}

/// A private `redis-server` on its own port, to stop and start at will.
struct RedisServer {
    port: u16,
    proc: Option<Proc>,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let mut server = RedisServer { port: free_port().await, proc: None };
        server.restart().await;
        server
    }

    async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.proc = Some(Proc(child));
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(5), "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Sends `n` reads of `RATED` in quick succession; returns the statuses.
async fn burst(addr: SocketAddr, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(status_with(addr, "GET", SMALL_API_KEY, RATED).await);
    }
    out
}

/// Sends `n` reads of `RATED` all at once, each on its own connection; the statuses.
async fn at_once(addr: SocketAddr, n: usize) -> Vec<u16> {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        requests.spawn(async move { status_with(addr, "GET", SMALL_API_KEY, RATED).await });
    }
    requests.join_all().await
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// Eight quick reads of a 5/s token with a burst of 5: the burst passes, the rest is
/// refused (one more may pass if the eight took over 200 ms on a loaded machine).
fn assert_limited(statuses: &[u16], what: &str) {
    let ok = count(statuses, 200);
    assert!((5..=6).contains(&ok) && ok + count(statuses, 429) == statuses.len(), "{what}: {statuses:?}");
}

/// A gateway that has charged nothing in Redis yet still finds it gone (the shared
/// connection is pinged, not only the lanes' connections, which the first charges open):
/// `/readyz` and the gauge say so within a ping's interval, and once Redis is back the
/// first request is charged there. The fifty-fourth outside probe saw "redis up"
/// through a whole outage, then a 503 for the first request after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_notices_redis_leaving_and_coming_back() {
    let Some((pg, _)) = services("an_idle_gateway_notices_redis_leaving_and_coming_back") else { return };
    let db = Database::create(&pg, "idleredis").await;
    let backend = Backend::start().await;
    let mut redis = RedisServer::start().await;
    let cfg = shared_config(&db.url, &redis.url(), &unique("i"), "closed", 1);
    let gateway = start_replicas(backend.addr, &cfg, 1).pop().unwrap();
    assert!(admin_get(gateway.admin, "/readyz").await.contains("\"rate_limits\":\"redis up\""));
    redis.kill();
    let left = Instant::now();
    loop {
        let ready = admin_get(gateway.admin, "/readyz").await;
        if ready.contains("redis unavailable (fail_mode closed") {
            break;
        }
        assert!(left.elapsed() < Duration::from_secs(12), "still {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(gateway.admin, "stackgate_ratelimit_backend_up ").await, 0.0);
    redis.restart().await;
    let back = Instant::now();
    while !admin_get(gateway.admin, "/readyz").await.contains("\"rate_limits\":\"redis up\"") {
        assert!(back.elapsed() < Duration::from_secs(10), "Redis not taken back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(gateway.admin, "stackgate_ratelimit_backend_up ").await, 1.0);
    assert_eq!(status_with(gateway.addr, "GET", SMALL_API_KEY, RATED).await, 200, "charged in Redis at once");
    drop(gateway);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_applies_each_fail_mode_then_recovers() {
    let Some((pg, _)) = services("redis_outage_applies_each_fail_mode_then_recovers") else { return };
    let db = Database::create(&pg, "redisdown").await;
    let backend = Backend::start().await;
    let mut redis = RedisServer::start().await;
    let prefix = unique("f");
    let mut gateways = Vec::new();
    for mode in ["open", "closed", "local"] {
        // One replica each, so `local` keeps the whole rate; distinct prefixes keep the
        // three gateways' buckets apart.
        let cfg = shared_config(&db.url, &redis.url(), &format!("{prefix}-{mode}"), mode, 1);
        gateways.push(start_replicas(backend.addr, &cfg, 1).pop().unwrap());
    }
    let [open, closed, local] = [gateways[0].addr, gateways[1].addr, gateways[2].addr];
    assert_eq!(metric(gateways[0].admin, "stackgate_ratelimit_backend_up ").await, 1.0);
    for gateway in &gateways {
        assert!(admin_get(gateway.admin, "/readyz").await.contains("\"rate_limits\":\"redis up\""));
    }

    // Redis up: all three limit RATED to its burst of 5.
    for addr in [open, closed, local] {
        assert_limited(&burst(addr, 8).await, "Redis up");
    }

    // Redis answering every call with an error (out of memory) decides nothing: the
    // fail mode does, and /readyz says so (the fifty-second outside probe found "redis
    // up" there), until Redis answers again.
    assert_eq!(redis_raw(&redis.url(), &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await, "+OK\r\n");
    assert_eq!(redis_raw(&redis.url(), &["CONFIG", "SET", "maxmemory", "1"]).await, "+OK\r\n");
    // A request Redis would admit (its charge writes; a refusal writes nothing).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status_with(closed, "GET", SMALL_API_KEY, RATED).await, 503);
    let ready = admin_get(gateways[1].admin, "/readyz").await;
    assert!(ready.contains("redis unavailable (fail_mode closed"), "{ready}");
    // The gauge says the same (it stayed 1 while Redis answered PING: the 53rd probe).
    assert_eq!(metric(gateways[1].admin, "stackgate_ratelimit_backend_up ").await, 0.0);
    assert_eq!(redis_raw(&redis.url(), &["CONFIG", "SET", "maxmemory", "0"]).await, "+OK\r\n");
    let status = status_with(closed, "GET", SMALL_API_KEY, RATED).await;
    assert!(status == 200 || status == 429, "Redis decides again: {status}");
    assert!(admin_get(gateways[1].admin, "/readyz").await.contains("\"rate_limits\":\"redis up\""));
    assert_eq!(metric(gateways[1].admin, "stackgate_ratelimit_backend_up ").await, 1.0);

    redis.kill();
    // From the first call that failed, /readyz says what decides meanwhile (it said
    // "redis up" for 1.5-3 s while a connection was being replaced: the fifty-first
    // outside probe).
    assert_eq!(status_with(closed, "GET", SMALL_API_KEY, RATED).await, 503);
    let ready = admin_get(gateways[1].admin, "/readyz").await;
    assert!(ready.contains("redis unavailable (fail_mode closed"), "{ready}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = burst(open, 12).await;
    assert_eq!(count(&s, 200), 12, "open admits everything while Redis is down: {s:?}");
    assert_eq!(metric(gateways[0].admin, "stackgate_ratelimit_backend_up ").await, 0.0);
    let fallbacks = metric(gateways[0].admin, "stackgate_ratelimit_fallbacks_total{mode=\"open\"} ").await;
    assert!(fallbacks >= 12.0, "every admitted request counted: {fallbacks}");
    let s = burst(closed, 4).await;
    assert_eq!(count(&s, 503), 4, "closed refuses with 503: {s:?}");
    assert_limited(&burst(local, 8).await, "local buckets take over");
    // Ready still (Redis is every replica's), saying what requests get meanwhile.
    for (gateway, mode) in gateways.iter().zip(["open", "closed", "local"]) {
        let ready = admin_get(gateway.admin, "/readyz").await;
        assert!(ready.contains("\"status\":\"ready\""), "{mode}: {ready}");
        assert!(ready.contains(&format!("\"rate_limits\":\"redis unavailable (fail_mode {mode}:")), "{mode}: {ready}");
    }

    // Redis returns (empty): each gateway goes back to it without a restart.
    redis.restart().await;
    let started = Instant::now();
    loop {
        if status_with(closed, "GET", SMALL_API_KEY, RATED).await == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "closed did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("closed mode recovered {:?} after Redis restarted", started.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    for addr in [open, closed] {
        assert_limited(&burst(addr, 8).await, "limited by Redis again");
    }
    assert_eq!(metric(gateways[0].admin, "stackgate_ratelimit_backend_up ").await, 1.0);
    assert!(admin_get(gateways[1].admin, "/readyz").await.contains("\"rate_limits\":\"redis up\""));
    // The buckets are in Redis again (keys under each gateway's prefix).
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}-open:*")).query_async(&mut conn).await.unwrap();
    assert!(keys.iter().any(|k| k.ends_with("token-read:blt000000000000rl01")), "{keys:?}");
    assert!(keys.iter().all(|k| k.contains("{org_small}")), "hash-tagged by organisation: {keys:?}");
    drop(gateways);
    db.drop_now().await;
}

/// A TCP relay to a server that can cut every connection and refuse new ones, to make
/// the server unreachable for one gateway without stopping it for anyone else.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    /// While set, every connection (open or new) stays open and forwards nothing: the
    /// server hangs, as behind a stalled link.
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let (frozen, freezes) = tokio::sync::watch::channel(false);
        let up2 = Arc::clone(&up);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged(); // only cuts after this connection count
                let mut freezes = freezes.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let froze = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        _ = cuts.changed() => false,
                        frozen = freezes.wait_for(|frozen| *frozen) => frozen.is_ok(),
                    };
                    if froze {
                        // Both sockets held open, nothing forwarded, until a cut.
                        let _ = cuts.changed().await;
                    }
                });
            }
        });
        Relay { addr, up, cut, frozen }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    fn thaw(&self) {
        self.frozen.send_replace(false);
        self.cut.send_modify(|n| *n += 1);
    }

    /// New connections are forwarded again; the frozen ones stay open and forward
    /// nothing, as if what was sent on them had been lost for good.
    fn thaw_new_only(&self) {
        self.frozen.send_replace(false);
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Redis that stops answering (its connections open, nothing coming back) costs each
/// request at most twice `timeout` (200 ms here) before the fail mode decides it: the
/// call out when it arrived, then its own. Nothing waits for a reconnect, and Redis
/// takes over again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_holds_no_request_longer_than_twice_the_timeout() {
    let Some((pg, _)) = services("a_hung_redis_holds_no_request_longer_than_twice_the_timeout") else { return };
    let db = Database::create(&pg, "hung").await;
    let backend = Backend::start().await;
    let redis = RedisServer::start().await;
    let relay = Relay::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let cfg = shared_config(&db.url, &format!("redis://{}", relay.addr), &unique("h"), "closed", 1);
    let gateway = start_replicas(backend.addr, &cfg, 1).remove(0);
    assert_limited(&burst(gateway.addr, 8).await, "Redis answering");

    relay.freeze();
    let bound = Duration::from_millis(2 * 200 + 300);
    let timed = |addr| async move {
        let started = Instant::now();
        (status_with(addr, "GET", SMALL_API_KEY, RATED).await, started.elapsed())
    };
    // From the first call that timed out, /readyz says the fail mode decides: it said
    // "redis up" while a new connection was tried, at least 500 ms more (the
    // fifty-first outside probe: 1.5-3 s).
    assert_eq!(timed(gateway.addr).await.0, 503);
    let ready = admin_get(gateway.admin, "/readyz").await;
    assert!(ready.contains("redis unavailable (fail_mode closed"), "{ready}");
    // Concurrent requests (one call out, the rest waiting for the next), then one after
    // another while the gateway finds Redis gone.
    let mut answers = futures_util::future::join_all((0..24).map(|_| timed(gateway.addr))).await;
    for _ in 0..12 {
        answers.push(timed(gateway.addr).await);
    }
    eprintln!("hung Redis: {answers:?}");
    assert!(answers.iter().all(|(status, _)| *status == 503), "closed refuses: {answers:?}");
    let slowest = answers.iter().map(|(_, took)| *took).max().unwrap();
    assert!(slowest < bound, "a request waited {slowest:?}");

    relay.thaw();
    let started = Instant::now();
    while status_with(gateway.addr, "GET", SMALL_API_KEY, RATED).await == 503 {
        assert!(started.elapsed() < Duration::from_secs(8), "Redis did not take over again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(gateway);
    db.drop_now().await;
}

/// Two replicas on one database: A reaches PostgreSQL only through a relay the test
/// can cut or freeze, B directly; A has created two tokens, `kept` and one B will
/// revoke while A cannot hear about it.
struct RelayedPair {
    db: Database,
    backend: Backend,
    relay: Relay,
    ra: Vec<Replica>,
    rb: Vec<Replica>,
    kept: String,
    revoked_uid: String,
    revoked: String,
}

impl RelayedPair {
    /// `pool_size`: the connections each replica's store may hold.
    async fn start(pg: &str, redis: &str, test: &str, pool_size: u32) -> RelayedPair {
        let db = Database::create(pg, test).await;
        let backend = Backend::start().await;
        let target: tokio_postgres::Config = db.url.parse().unwrap();
        let port = target.get_ports().first().copied().unwrap_or(5432);
        let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
        let prefix = unique("o");
        let config = |url: &str| {
            shared_config(url, redis, &prefix, "local", 2).replacen(
                "[store]\n",
                &format!("[store]\npool_size = {pool_size}\n"),
                1,
            )
        };
        let ra = start_replicas(backend.addr, &config(&db.url_via(relay.addr)), 1);
        let rb = start_replicas(backend.addr, &config(&db.url), 1);
        let a = ra[0].addr;
        let (_, kept) = create(a, API_KEY, "kept").await;
        let (revoked_uid, revoked) = create(a, API_KEY, "revoked-while-cut-off").await;
        until_all(&[a], "GET", API_KEY, &revoked, 200, Duration::from_secs(1)).await;
        RelayedPair { db, backend, relay, ra, rb, kept, revoked_uid, revoked }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_keeps_serving_refuses_writes_and_loses_nothing() {
    let Some((pg, redis)) = services("postgres_outage_keeps_serving_refuses_writes_and_loses_nothing") else { return };
    let RelayedPair { db, backend: _backend, relay, ra, rb, kept, revoked_uid, revoked } =
        RelayedPair::start(&pg, &redis, "pgdown", 8).await;
    let (a, b) = (ra[0].addr, rb[0].addr);

    relay.down();
    // Still ready (a database outage must not empty the load balancer), store reported down.
    let ready = admin_get(ra[0].admin, "/readyz").await;
    assert!(ready.contains("\"ready\"") && ready.contains("unavailable"), "{ready}");
    // A keeps serving every token it knows.
    assert_eq!(status_with(a, "GET", API_KEY, &kept).await, 200);
    assert_eq!(status_with(a, "GET", API_KEY, RW).await, 200);
    // Token writes and reads of the store answer 503 with a CMA body.
    let (status, _, body) = call(a, "POST", TOKENS, &owner(API_KEY), &new_token("during-outage", true)).await;
    assert_eq!((status, body["error_code"].as_i64()), (503, Some(503)), "{body}");
    let (status, _, _) = call(a, "GET", TOKENS, &owner(API_KEY), "").await;
    assert_eq!(status, 503);
    // Meanwhile B (still connected) revokes a token; A cannot hear about it yet.
    let (status, _, _) = call(b, "DELETE", &format!("{TOKENS}/{revoked_uid}"), &owner(API_KEY), "").await;
    assert_eq!(status, 200);

    relay.restore();
    assert!(admin_get(ra[0].admin, "/readyz").await.contains("\"store\":\"up\""));
    // After reconnecting, A re-reads everything: the revoked token is refused.
    let took = until_all(&[a], "GET", API_KEY, &revoked, 401, Duration::from_secs(5)).await;
    eprintln!("revocation missed during the outage applied {took:?} after PostgreSQL returned");
    // Writes work again, nothing written before was lost, and nothing half-written.
    let (_, after) = create(a, API_KEY, "after-outage").await;
    until_all(&[b], "GET", API_KEY, &after, 200, Duration::from_secs(1)).await;
    let (status, _, body) = call(b, "GET", TOKENS, &owner(API_KEY), "").await;
    assert_eq!(status, 200);
    let mut names: Vec<&str> = body["tokens"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    assert!(names.contains(&"kept") && names.contains(&"after-outage"), "{names:?}");
    assert!(!names.contains(&"during-outage") && !names.contains(&"revoked-while-cut-off"), "{names:?}");
    assert_eq!(status_with(a, "GET", API_KEY, &kept).await, 200);
    drop((ra, rb));
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_keeps_the_embedded_stores_semantics() {
    use stackgate::store::{postgres::PgStore, sqlite::SqliteStore, Cap, StoreError, TokenStore};
    let Some((pg, _)) = services("postgres_store_keeps_the_embedded_stores_semantics") else { return };
    let db = Database::create(&pg, "semantics").await;
    let cfg = stackgate::config::from_str(&format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[store]\nurl = \"{}\"\npool_size = 2\n",
        db.url
    ))
    .unwrap();
    let pg_store = PgStore::connect(cfg.store.postgres.as_ref().unwrap()).await.unwrap();
    // Twice, to show migrations are idempotent.
    let pg_store2 = PgStore::connect(cfg.store.postgres.as_ref().unwrap()).await.unwrap();
    drop(pg_store2);
    let stores: [Box<dyn TokenStore>; 2] = [Box::new(SqliteStore::in_memory().unwrap()), Box::new(pg_store)];
    let mut seen = Vec::new();
    let mut trails = Vec::new();
    for s in &stores {
        let cap = Cap { max: 3, static_count: 1 };
        let rec = |uid: &str, name: &str| stackgate::token::TokenRecord {
            uid: uid.into(),
            stack: "k".into(),
            name: name.into(),
            description: "d".into(),
            secret_sha256: stackgate::token::hash_secret(uid.as_bytes()),
            scope: Vec::new().into(),
            expires_on: Some(stackgate::token::parse_expiry("2030-01-01").unwrap()),
            is_email_notification_enabled: true,
            rate_limit: Some(stackgate::token::RateLimit { read_per_second: 3, write_per_second: 2 }),
            created_by: "alice".into(),
            updated_by: "alice".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            expiry_notified_at: None,
            enabled: true,
            previous_secret: None,
            origin: stackgate::token::Origin::Store,
        };
        s.create(&rec("a", "one"), cap.clone()).await.unwrap();
        assert_eq!(s.create(&rec("b", "one"), cap.clone()).await, Err(StoreError::DuplicateName));
        s.create(&rec("b", "two"), cap.clone()).await.unwrap();
        assert_eq!(s.create(&rec("c", "three"), cap.clone()).await, Err(StoreError::CapReached { max: 3 }));
        // Last use (issue #18): the later time wins, uids without a row are skipped.
        s.record_last_used(&[("a".into(), 100), ("zz".into(), 5)]).await.unwrap();
        s.record_last_used(&[("a".into(), 50), ("b".into(), 7)]).await.unwrap();
        let last_used = std::collections::HashMap::from([("a".to_owned(), 100), ("b".to_owned(), 7)]);
        assert_eq!(s.last_used("k").await.unwrap(), last_used);
        assert!(s.last_used("other").await.unwrap().is_empty());
        let mut changed = rec("a", "renamed");
        changed.rate_limit = None;
        let want = changed.clone();
        assert_eq!(s.modify("k", "a", Box::new(move |_| Ok(changed))).await.unwrap(), want);
        assert_eq!(s.modify("k", "zz", Box::new(Ok)).await, Err(StoreError::NotFound));
        let clash = s.modify("k", "b", Box::new(|r| Ok(stackgate::token::TokenRecord { name: "renamed".into(), ..r })));
        assert_eq!(clash.await, Err(StoreError::DuplicateName));
        let refused = stackgate::error::FieldErrors::from([("name".to_owned(), vec!["no.".to_owned()])]);
        let errors = refused.clone();
        assert_eq!(s.modify("k", "b", Box::new(move |_| Err(errors))).await, Err(StoreError::Invalid(refused)));
        assert_eq!(s.get("k", "b").await.unwrap().unwrap().name, "two", "a refused edit changes nothing");
        // Only a rotation replaces the secret hash, and the previous one is stored beside it.
        let previous = Some(stackgate::token::PreviousSecret { sha256: [1; 32], until: 42 });
        let rotate =
            move |r| Ok(stackgate::token::TokenRecord { secret_sha256: [9; 32], previous_secret: previous, ..r });
        assert_eq!(s.modify("k", "b", Box::new(rotate)).await.unwrap().secret_sha256, rec("b", "two").secret_sha256);
        let rotated = s.rotate("k", "b", Box::new(rotate)).await.unwrap();
        assert_eq!((rotated.secret_sha256, rotated.previous_secret), ([9; 32], previous));
        assert_eq!(s.get("k", "b").await.unwrap(), Some(rotated));
        assert_eq!(s.last_used("k").await.unwrap(), last_used, "changes keep the last use");
        assert_eq!(s.get("k", "a").await.unwrap(), Some(want));
        assert_eq!(s.get("other", "a").await.unwrap(), None);
        s.mark_notified("b", 100, "webhook", 7).await.unwrap();
        s.mark_notified("b", 100, "webhook", 8).await.unwrap();
        assert_eq!(s.notified_at("b", 100, "webhook").await.unwrap(), Some(7));
        assert_eq!(s.first_notice("b", 100).await.unwrap(), Some(7));
        assert_eq!(s.delete("k", "a", "alice", "2026-01-02T00:00:00Z").await.unwrap().name, "renamed");
        assert_eq!(s.delete("k", "a", "alice", "2026-01-02T00:00:00Z").await, Err(StoreError::NotFound));
        assert!(s.try_lead("duty", "me", Duration::from_secs(5)).await.unwrap());
        seen.push(s.list("k").await.unwrap());
        // The audit trail: only committed changes, newest first, the same on both engines.
        let page = s.audit("k", 0, 500).await.unwrap();
        let trail: Vec<(&str, String, String, Vec<String>)> = page
            .entries
            .iter()
            .map(|e| (e.action.name(), e.token_uid.clone(), e.user.clone(), e.fields.clone()))
            .collect();
        // Five: the edit that tried to replace the secret outside a rotation changed
        // nothing, so it wrote nothing.
        assert_eq!(page.total, 5, "{trail:?}");
        assert_eq!(trail[0], ("delete", "a".into(), "alice".into(), vec![]), "{trail:?}");
        assert_eq!(trail[1], ("regenerate", "b".into(), "alice".into(), vec!["token".to_owned()]), "{trail:?}");
        assert_eq!(trail.last().map(|t| t.0), Some("create"));
        assert!(page.entries.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert_eq!(s.audit("k", 1, 2).await.unwrap().entries, page.entries[1..3].to_vec(), "skip and limit");
        assert_eq!(s.audit("other", 0, 500).await.unwrap().total, 0);
        trails.push(trail);
    }
    assert_eq!(seen[0], seen[1], "both engines hold the same records");
    assert_eq!(trails[0], trails[1], "both engines keep the same audit trail");
    // Only one holder of a lease at a time; it passes on once it lapses.
    let s = &stores[1];
    assert!(s.try_lead("duty", "me", Duration::from_millis(300)).await.unwrap());
    assert!(!s.try_lead("duty", "you", Duration::from_secs(5)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(s.try_lead("duty", "you", Duration::from_secs(5)).await.unwrap());
    assert!(!s.try_lead("duty", "me", Duration::from_secs(5)).await.unwrap());
    drop(stores);
    db.drop_now().await;
}

/// One request from a chosen loopback source address (127.0.0.x) over its own
/// connection: the status.
async fn status_from(source: &str, to: SocketAddr, api_key: &str, secret: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let request = format!(
        "GET {READ} HTTP/1.1\r\nHost: gw\r\napi_key: {api_key}\r\nauthorization: {secret}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Issue #22 item 5: HAProxy (`option forwardfor`, round robin) in front of three
/// replicas that trust it (`trusted_proxies`). Clients connect from distinct loopback
/// addresses; the guard cools down the one guessing, on every replica, and not the
/// other, and never refuses the guesser's valid credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_guard_cools_down_only_the_guessing_client() {
    let haproxy = ["/usr/sbin/haproxy", "haproxy"]
        .into_iter()
        .find(|p| std::process::Command::new(p).arg("-v").output().is_ok_and(|o| o.status.success()));
    let Some(haproxy) = haproxy else {
        assert!(
            std::env::var("STACKGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "haproxy is not installed (STACKGATE_REQUIRE_SERVICES=1)"
        );
        eprintln!("SKIPPED behind_haproxy_the_guard_cools_down_only_the_guessing_client: haproxy is not installed");
        return;
    };
    let backend = Backend::start().await;
    let dir = temp_dir("haproxy");
    let guard = "\n[guard]\nmax_failures = 3\nwindow = \"60s\"\ncooldown = \"60s\"\n";
    let replicas: Vec<Replica> = (0..3)
        .map(|i| {
            let file = dir.join(format!("replica{i}.toml"));
            std::fs::write(&file, config_text(backend.addr, "trusted_proxies = [\"127.0.0.1\"]", guard)).unwrap();
            spawn_logged(&file, &dir.join(format!("replica{i}.log")))
        })
        .collect();
    let port = free_port().await;
    let servers: String = replicas.iter().enumerate().map(|(i, r)| format!("    server r{i} {}\n", r.addr)).collect();
    let cfg = format!(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    option forwardfor\n    default_backend gw\n\
         backend gw\n    balance roundrobin\n{servers}"
    );
    let cfg_file = dir.join("haproxy.cfg");
    std::fs::write(&cfg_file, cfg).unwrap();
    let child = std::process::Command::new(haproxy)
        .args(["-db", "-f", cfg_file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _haproxy = Proc(child);
    let lb = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while TcpStream::connect(lb).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(5), "haproxy did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wrong = "cs0000000000000000000000000000dead";
    // The guesser (127.0.0.2): 12 wrong secrets, 4 through each replica; each replica
    // cools it down after its 3rd. After the first round a valid token is at work on its
    // address too (once through each replica), so it keeps working during the cool-down.
    let mut guesses = Vec::new();
    for i in 0..12 {
        guesses.push(status_from("127.0.0.2", lb, API_KEY, wrong).await);
        if i == 2 {
            for _ in 0..3 {
                assert_eq!(status_from("127.0.0.2", lb, API_KEY, RW).await, 200);
            }
        }
    }
    eprintln!("guesser through HAProxy: {guesses:?}");
    assert_eq!(&guesses[..9], &[401; 9], "the first three on each replica are plain 401s: {guesses:?}");
    assert_eq!(&guesses[9..], &[429; 3], "then every replica cools it down: {guesses:?}");
    // Another client (127.0.0.3) behind the same proxy: not cooled down anywhere.
    for _ in 0..3 {
        assert_eq!(status_from("127.0.0.3", lb, API_KEY, wrong).await, 401, "the other client keeps its 401");
        assert_eq!(status_from("127.0.0.3", lb, API_KEY, RW).await, 200);
    }
    // The guesser's credential at work still works on every replica; one it never used
    // from there answers as a wrong guess does.
    for _ in 0..3 {
        assert_eq!(status_from("127.0.0.2", lb, API_KEY, RW).await, 200, "credentials at work are never refused");
        assert_eq!(status_from("127.0.0.2", lb, API_KEY, RO).await, 429, "a right guess answers as a wrong one");
    }
    // The replicas saw the clients' addresses, not HAProxy's.
    let logs: String = (0..3).map(|i| std::fs::read_to_string(dir.join(format!("replica{i}.log"))).unwrap()).collect();
    assert!(logs.contains("client=127.0.0.2") && !logs.contains("client=127.0.0.1 "), "{logs}");
    drop(replicas);
}

/// Found by the thirty-eighth outside probe: a PostgreSQL that keeps its connections
/// open but answers nothing (here a relay that forwards nothing) held `/readyz` past
/// any probe's timeout and the token API for ever (a re-read held the writer lock
/// waiting on it). Now readiness answers at once with the store reported unavailable,
/// token-API calls get their 503 within the store's bound, requests keep being served
/// from the snapshot, and once the server answers again a revocation made meanwhile
/// through another replica is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_postgres_is_reported_not_waited_for() {
    let Some((pg, redis)) = services("a_hung_postgres_is_reported_not_waited_for") else { return };
    let RelayedPair { db, backend: _backend, relay, ra, rb, kept, revoked_uid, revoked } =
        RelayedPair::start(&pg, &redis, "pghung", 8).await;
    let (a, b) = (ra[0].addr, rb[0].addr);

    relay.freeze();
    let started = Instant::now();
    let ready = admin_get(ra[0].admin, "/readyz").await;
    let took = started.elapsed();
    assert!(ready.contains("\"ready\"") && ready.contains("unavailable"), "{ready}");
    assert!(took < Duration::from_secs(1), "readiness waited {took:?}");
    // Token-API calls, one after another and two at once, each get their 503.
    let bound = Duration::from_secs(12);
    for _ in 0..2 {
        let started = Instant::now();
        let (status, _, body) = call(a, "GET", TOKENS, &owner(API_KEY), "").await;
        assert_eq!((status, body["error_code"].as_i64()), (503, Some(503)), "{body}");
        assert!(started.elapsed() < bound, "the token API waited {:?}", started.elapsed());
    }
    // Eight at once, writes among them: the writes queue for the writer lock, each
    // waiting at most one bound for it (the thirty-ninth probe saw the tenth answered
    // after 49.6 s when each waited out the one before).
    let (headers, body) = (owner(API_KEY), new_token("while-hung", true));
    let started = Instant::now();
    let calls = (0..8).map(|i| {
        let (method, payload) = if i % 2 == 0 { ("POST", body.as_str()) } else { ("GET", "") };
        let headers = &headers;
        async move { (call(a, method, TOKENS, headers, payload).await.0, started.elapsed()) }
    });
    let answers = futures_util::future::join_all(calls).await;
    eprintln!("eight token-API calls at once while PostgreSQL hung: {answers:?}");
    assert!(answers.iter().all(|(status, took)| *status == 503 && *took < bound), "{answers:?}");
    // Requests are served from the snapshot meanwhile; another replica revokes a token.
    assert_eq!(status_with(a, "GET", API_KEY, &kept).await, 200);
    let (status, _, _) = call(b, "DELETE", &format!("{TOKENS}/{revoked_uid}"), &owner(API_KEY), "").await;
    assert_eq!(status, 200);

    relay.thaw();
    let took = until_all(&[a], "GET", API_KEY, &revoked, 401, Duration::from_secs(20)).await;
    eprintln!("revocation made while PostgreSQL hung applied {took:?} after it answered again");
    assert!(admin_get(ra[0].admin, "/readyz").await.contains("\"store\":\"up\""));
    let (status, _, body) = call(a, "GET", TOKENS, &owner(API_KEY), "").await;
    assert_eq!(status, 200, "{body}");
    drop((ra, rb));
    db.drop_now().await;
}

/// A's connections to PostgreSQL go silent (open, their packets lost, as behind a
/// dropped NAT mapping) while new ones work, and B deletes a token: A refuses it within
/// its heartbeat's bound (2 s to ask, 3 s for the answer) and a re-read on a new
/// connection. Found by the forty-ninth outside probe: with a heartbeat of 10 s and 5 s,
/// and a re-read that first waited out a silent pooled connection, A served the deleted
/// token for 18 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_a_replica_whose_store_connections_went_silent() {
    let Some((pg, redis)) = services("a_revocation_reaches_a_replica_whose_store_connections_went_silent") else {
        return;
    };
    let RelayedPair { db, backend: _backend, relay, ra, rb, revoked_uid, revoked, .. } =
        RelayedPair::start(&pg, &redis, "pgsilent", 1).await;
    let (a, b) = (ra[0].addr, rb[0].addr);
    relay.freeze();
    // Every open connection sees the freeze before new ones are let through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.thaw_new_only();
    let (status, _, body) = call(b, "DELETE", &format!("{TOKENS}/{revoked_uid}"), &owner(API_KEY), "").await;
    assert_eq!(status, 200, "{body}");
    let took = until_all(&[a], "GET", API_KEY, &revoked, 401, Duration::from_secs(8)).await;
    eprintln!("revocation reached the silent replica after {took:?}");
    drop((ra, rb));
    db.drop_now().await;
}

/// A call given up on while PostgreSQL hung leaves its statement unanswered on its
/// connection. Here that answer never comes (the relay keeps those connections open and
/// silent) while new connections work: the next calls must not be handed the abandoned
/// connection to queue behind (the thirty-ninth probe saw a replica answer 503 for
/// about 30 s after the server answered again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_call_was_given_up_is_not_reused() {
    let Some((pg, redis)) = services("a_connection_whose_call_was_given_up_is_not_reused") else { return };
    // One connection per replica, so the next call is sure to be handed the abandoned
    // one if it went back to the pool.
    let RelayedPair { db, backend: _backend, relay, ra, rb, .. } = RelayedPair::start(&pg, &redis, "pglost", 1).await;
    let a = ra[0].addr;
    relay.freeze();
    // Each given up: a token-API read (5 s) and a readiness check (0.5 s).
    let (status, _, _) = call(a, "GET", TOKENS, &owner(API_KEY), "").await;
    assert_eq!(status, 503);
    assert!(admin_get(ra[0].admin, "/readyz").await.contains("unavailable"));
    relay.thaw_new_only();
    for round in 0..3 {
        let started = Instant::now();
        let (status, _, body) = call(a, "GET", TOKENS, &owner(API_KEY), "").await;
        assert_eq!(status, 200, "round {round} after {:?}: {body}", started.elapsed());
        assert!(admin_get(ra[0].admin, "/readyz").await.contains("\"store\":\"up\""), "round {round}");
    }
    drop((ra, rb));
    db.drop_now().await;
}

/// A call given up while the server is busy with it (here a create waiting for its
/// stack's lock, which the test holds) is cancelled on the server: closing the
/// connection alone is not seen by a session waiting for a lock, which would hold its
/// place there (and its own locks) until the lock came free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_given_up_is_cancelled_on_the_server() {
    let Some((pg, redis)) = services("a_call_given_up_is_cancelled_on_the_server") else { return };
    let db = Database::create(&pg, "pgcancel").await;
    let backend = Backend::start().await;
    let gateway = start_replicas(backend.addr, &shared_config(&db.url, &redis, &unique("c"), "local", 1), 1).remove(0);
    let (holder, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    holder.execute("SELECT pg_advisory_lock(hashtext('stackgate:' || $1))", &[&API_KEY]).await.unwrap();
    let (status, _, _) = call(gateway.addr, "POST", TOKENS, &owner(API_KEY), &new_token("behind-a-lock", false)).await;
    assert_eq!(status, 503);
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stackgate' AND wait_event_type = 'Lock'";
    let started = Instant::now();
    while holder.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the given-up create still waits for the lock on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.execute("SELECT pg_advisory_unlock_all()", &[]).await.unwrap();
    let (status, _, body) = call(gateway.addr, "GET", TOKENS, &owner(API_KEY), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("behind-a-lock"), "the given-up create was made: {body}");
    drop((holder, gateway));
    db.drop_now().await;
}

/// A TCP relay to PostgreSQL that, once armed, forwards the next `COMMIT` a client
/// sends and then holds back everything the server sends on that connection: the
/// commit lands, its answer never comes.
struct CommitHolder {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
}

impl CommitHolder {
    async fn start(target: SocketAddr) -> CommitHolder {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let armed2 = Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let armed = Arc::clone(&armed2);
                let held = Arc::new(AtomicBool::new(false));
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let held2 = Arc::clone(&held);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        let commit = buf[..n].windows(6).any(|w| w == b"COMMIT");
                        if commit && armed.swap(false, Ordering::SeqCst) {
                            held2.store(true, Ordering::SeqCst);
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        if held.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        CommitHolder { addr, armed }
    }
}

/// A create whose COMMIT lands but whose answer does not come within the store's bound
/// is answered 503, and its secret reaches no one: the token it made is deleted, not
/// left in the stack (holding one of its 30 places and its name) for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_answered_503_leaves_no_token_behind() {
    let Some((pg, redis)) = services("a_create_answered_503_leaves_no_token_behind") else { return };
    let db = Database::create(&pg, "pgorphan").await;
    let backend = Backend::start().await;
    let target: tokio_postgres::Config = db.url.parse().unwrap();
    let port = target.get_ports().first().copied().unwrap_or(5432);
    let holder = CommitHolder::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let prefix = unique("g");
    // In clear text, so the relay sees the COMMIT.
    let via = format!("{}?sslmode=disable", db.url_via(holder.addr));
    let a = start_replicas(backend.addr, &shared_config(&via, &redis, &prefix, "local", 2), 1);
    let b = start_replicas(backend.addr, &shared_config(&db.url, &redis, &prefix, "local", 2), 1);
    let (_, kept) = create(a[0].addr, API_KEY, "made-before").await;
    holder.armed.store(true, Ordering::SeqCst);
    let addr = a[0].addr;
    let posted =
        tokio::spawn(
            async move { call(addr, "POST", TOKENS, &owner(API_KEY), &new_token("answered-503", false)).await },
        );
    // The commit lands: the other replica lists the token while A still waits.
    let names_on_b = || async {
        let (status, _, list) = call(b[0].addr, "GET", TOKENS, &owner(API_KEY), "").await;
        assert_eq!(status, 200);
        list["tokens"].as_array().unwrap().iter().map(|t| t["name"].clone()).collect::<Vec<_>>()
    };
    let started = Instant::now();
    while !names_on_b().await.contains(&json!("answered-503")) {
        assert!(started.elapsed() < Duration::from_secs(4), "the create's commit did not land");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, body) = posted.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let started = Instant::now();
    loop {
        let names = names_on_b().await;
        assert!(names.contains(&json!("made-before")), "{names:?}");
        if !names.contains(&json!("answered-503")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the token answered 503 is still there: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the token answered 503 was gone {:?} after the answer", started.elapsed());
    assert_eq!(status_with(a[0].addr, "GET", API_KEY, &kept).await, 200);
    drop((a, b));
    db.drop_now().await;
}

/// Found by the thirty-ninth outside probe: a replica starting while PostgreSQL
/// accepted its connections but did not answer the schema check waited for ever, with
/// no listener and no log line. Here the migration lock is held by a session that
/// never lets go (as by a replica hung mid-migration): the start fails, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_behind_a_migration_that_never_ends_fails_with_a_reason() {
    let Some((pg, _)) = services("a_start_behind_a_migration_that_never_ends_fails_with_a_reason") else { return };
    let db = Database::create(&pg, "pgmigrate").await;
    let backend = Backend::start().await;
    let (holder, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    holder.batch_execute("SELECT pg_advisory_lock(6004506972602516785)").await.unwrap();
    let extra = format!("[store]\nurl = \"{}\"\n", db.url);
    let started = Instant::now();
    let (status, out) = tokio::task::spawn_blocking(move || failed_start(backend.addr, &extra)).await.unwrap();
    assert!(!status.success(), "{out}");
    assert!(out.contains("no answer to the schema migration within 15 s"), "{out}");
    eprintln!("start refused after {:?}", started.elapsed());
    drop(holder);
    db.drop_now().await;
}

//! Usage per token through the real server (issue #18): counters in the token API,
//! `last_used_at` flushed to the store and kept across a restart, per-token metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use serde_json::{json, Value};
use stackgate::clock::{ManualClock, SystemClock};
use stackgate::store::TokenStore;
use std::sync::Arc;
use std::time::Duration;

const TOKENS: &str = "/v3/stacks/management_tokens";
const ENTRIES: &str = "/v3/content_types/blog/entries";
const RATED_UID: &str = "blt000000000000rl01";

fn owner(api_key: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![("api_key", api_key), ("authtoken", ALICE), ("content-type", "application/json")]
}

async fn json_of(env: &Env, method: &str, path: &str, headers: &[(&str, &str)], b: &str) -> (u16, Value) {
    let (status, _, bytes) = env.send(method, path, headers, b).await;
    (status.as_u16(), serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn metrics(env: &Env) -> String {
    let (status, text) =
        raw(env.gateway.admin_addr, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200);
    text
}

/// Sends `n` reads as the rated token; returns how many were forwarded and how many 429.
async fn rated_reads(env: &Env, n: usize) -> (u64, u64) {
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        let (status, _, _) =
            env.send("GET", ENTRIES, &[("api_key", SMALL_API_KEY), ("authorization", RATED)], "").await;
        match status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_forwarded_refused_and_rate_limited_in_get_and_list() {
    let env = Env::start().await;
    // Refused after authenticating: a branch the token is not granted (403).
    let (status, _, _) = env
        .send("GET", ENTRIES, &[("api_key", SMALL_API_KEY), ("authorization", RATED), ("branch", "development")], "")
        .await;
    assert_eq!(status.as_u16(), 403);
    // An unknown secret authenticates as nothing: counted nowhere.
    let (status, _, _) = env
        .send(
            "GET",
            ENTRIES,
            &[("api_key", SMALL_API_KEY), ("authorization", "cs0000000000000000000000000000dead")],
            "",
        )
        .await;
    assert_eq!(status.as_u16(), 401);
    let (forwarded, limited) = rated_reads(&env, 3 * RATED_RATE as usize).await;
    assert!(forwarded >= 1 && limited >= 1, "{forwarded} forwarded, {limited} limited");

    let expected = json!({"forwarded": forwarded, "refused": 1, "rate_limited": limited});
    let (status, one) = json_of(&env, "GET", &format!("{TOKENS}/{RATED_UID}"), &owner(SMALL_API_KEY), "").await;
    assert_eq!(status, 200, "{one}");
    let usage = &one["token"]["usage"];
    for key in ["forwarded", "refused", "rate_limited"] {
        assert_eq!(usage[key], expected[key], "{key}: {usage}");
    }
    let last = usage["last_used_at"].as_str().expect("last_used_at set");
    assert!(time::OffsetDateTime::parse(last, &time::format_description::well_known::Rfc3339).is_ok(), "{last}");

    let (status, list) = json_of(&env, "GET", TOKENS, &owner(SMALL_API_KEY), "").await;
    assert_eq!(status, 200, "{list}");
    let tokens = list["tokens"].as_array().unwrap();
    let listed = tokens.iter().find(|t| t["uid"] == RATED_UID).unwrap();
    assert_eq!(listed["usage"], one["token"]["usage"], "list and GET one agree");
    let unused = tokens.iter().find(|t| t["uid"] == "blt000000000000sh01").unwrap();
    assert_eq!(
        unused["usage"],
        json!({"last_used_at": null, "forwarded": 0, "refused": 0, "rate_limited": 0}),
        "{unused}"
    );

    // Per-token metrics are off by default (bounded cardinality).
    let text = metrics(&env).await;
    assert!(!text.contains("token_requests"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_metrics_when_enabled() {
    let env = Env::start_with("\n[telemetry]\nper_token_metrics = true\n", "", Arc::new(SystemClock)).await;
    let (status, _, _) = env.token("GET", ENTRIES, RW, "").await;
    assert_eq!(status.as_u16(), 200);
    let (forwarded, limited) = rated_reads(&env, 3 * RATED_RATE as usize).await;
    let text = metrics(&env).await;
    for line in [
        "# TYPE stackgate_token_requests counter".to_owned(),
        r#"stackgate_token_requests_total{token_uid="blt000000000000rw01",outcome="forwarded"} 1"#.to_owned(),
        r#"stackgate_token_requests_total{token_uid="blt000000000000rw01",outcome="refused"} 0"#.to_owned(),
        format!(r#"stackgate_token_requests_total{{token_uid="{RATED_UID}",outcome="forwarded"}} {forwarded}"#),
        format!(r#"stackgate_token_requests_total{{token_uid="{RATED_UID}",outcome="rate_limited"}} {limited}"#),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_is_flushed_to_the_store_and_survives_a_restart() {
    let dir = temp_dir("usage");
    let db = dir.join("tokens.db");
    let extra = format!("\n[telemetry]\nusage_flush = \"100ms\"\n[store]\npath = \"{}\"\n", db.display());
    let now = 1_900_000_000;
    let env = Env::start_with(&extra, "", Arc::new(ManualClock::new(now))).await;
    let new_token = json!({"token": {
        "name": "used",
        "scope": [
            {"module": "$all", "acl": {"read": true, "write": false}},
            {"module": "branch", "branches": ["main"], "acl": {"read": true}}
        ]
    }});
    let (status, created) = json_of(&env, "POST", TOKENS, &owner(API_KEY), &new_token.to_string()).await;
    assert_eq!(status, 201, "{created}");
    let uid = created["token"]["uid"].as_str().unwrap().to_owned();
    let secret = created["token"]["token"].as_str().unwrap().to_owned();
    assert_eq!(created["token"]["usage"]["last_used_at"], Value::Null);
    let (status, _, _) = env.token("GET", ENTRIES, &secret, "").await;
    assert_eq!(status.as_u16(), 200);

    // The flusher writes it (not a write per request, not only at shutdown).
    let store = stackgate::store::sqlite::SqliteStore::open(&db).unwrap();
    let mut stored = None;
    for _ in 0..100 {
        stored = store.last_used(API_KEY).await.unwrap().get(&uid).copied();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored, Some(now), "flushed within the interval");
    let (_, before) = json_of(&env, "GET", &format!("{TOKENS}/{uid}"), &owner(API_KEY), "").await;
    assert_eq!(before["token"]["usage"]["last_used_at"], "2030-03-17T17:46:40Z", "{before}");
    assert_eq!(before["token"]["usage"]["forwarded"], 1);

    let Env { gateway, backend, client } = env;
    drop(client);
    gateway.shutdown().await;
    drop(backend);

    let env = Env::start_with(&extra, "", Arc::new(ManualClock::new(now + 3600))).await;
    let (status, after) = json_of(&env, "GET", &format!("{TOKENS}/{uid}"), &owner(API_KEY), "").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        after["token"]["usage"],
        json!({"last_used_at": "2030-03-17T17:46:40Z", "forwarded": 0, "refused": 0, "rate_limited": 0}),
        "last use kept, counters are this process's"
    );

    // A fetched record, `usage` and all, is accepted back as an update.
    let mut echoed = after["token"].clone();
    echoed["description"] = json!("echoed");
    let (status, updated) =
        json_of(&env, "PUT", &format!("{TOKENS}/{uid}"), &owner(API_KEY), &json!({"token": echoed}).to_string()).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["token"]["description"], "echoed");
    assert_eq!(updated["token"]["usage"]["last_used_at"], "2030-03-17T17:46:40Z", "an update keeps the last use");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request the gateway forwarded counts as forwarded whatever became of it at the
/// backend (here none answered: 502), and its answer states the budget it was charged,
/// as any forwarded answer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_backend_failed_counts_as_forwarded_and_states_its_budget() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = stackgate::config::from_str(&config_text(closed, "", "")).unwrap();
    let gw = stackgate::server::start(cfg, Arc::new(SystemClock)).await.unwrap();
    let get = format!(
        "GET {ENTRIES} HTTP/1.1\r\nHost: 127.0.0.1\r\napi_key: {SMALL_API_KEY}\r\nauthorization: {RATED}\r\nConnection: close\r\n\r\n"
    );
    let (status, text) = raw(gw.addr, get.as_bytes()).await;
    assert_eq!(status, 502, "{text}");
    let head = text.to_ascii_lowercase();
    assert!(head.contains("x-ratelimit-remaining:") && head.contains("ratelimit-policy:"), "{text}");
    let one = format!(
        "GET {TOKENS}/{RATED_UID} HTTP/1.1\r\nHost: 127.0.0.1\r\napi_key: {SMALL_API_KEY}\r\nauthtoken: {ALICE}\r\nConnection: close\r\n\r\n"
    );
    let (status, text) = raw(gw.addr, one.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    let usage = &body["token"]["usage"];
    assert_eq!((usage["forwarded"].as_u64(), usage["refused"].as_u64()), (Some(1), Some(0)), "{usage}");
}

//! The embedded store through the real binary: restart persistence, secrets never on
//! disk, and crash safety under SIGKILL while clients are creating tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKENS: &str = "/v3/stacks/management_tokens";
const ENTRIES: &str = "/v3/content_types/blog/entries";

fn owner() -> [(&'static str, &'static str); 3] {
    [("api_key", API_KEY), ("authtoken", ALICE), ("content-type", "application/json")]
}

fn create_body(name: &str) -> String {
    json!({"token": {"name": name, "scope": [
        {"module": "$all", "acl": {"read": true, "write": true}},
        {"module": "branch", "branches": ["main"]}
    ]}})
    .to_string()
}

/// Writes a config with a store under `dir`; returns its path.
fn config_file(dir: &std::path::Path, backend: std::net::SocketAddr) -> String {
    let db = dir.join("data").join("stackgate.db");
    let text = format!("{}\n[store]\npath = \"{}\"\n", config_text(backend, "", ""), db.display());
    let file = dir.join("gw.toml");
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_owned()
}

async fn create(addr: std::net::SocketAddr, name: &str) -> (u16, Value) {
    let mut c = KeepAlive::connect(addr).await;
    let (status, body) = c.send("POST", TOKENS, &owner(), &create_body(name)).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn works(addr: std::net::SocketAddr, secret: &str) -> u16 {
    let mut c = KeepAlive::connect(addr).await;
    c.send("GET", ENTRIES, &[("api_key", API_KEY), ("authorization", secret)], "").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart_and_only_hashes_reach_the_disk() {
    let backend = Backend::start().await;
    let dir = temp_dir("restart");
    let cfg = config_file(&dir, backend.addr);
    let (mut gw, addr, _out) = spawn_gateway(&["run", "--config", &cfg]);
    let (status, v) = create(addr, "persisted").await;
    assert_eq!(status, 201, "{v}");
    let secret = v["token"]["token"].as_str().unwrap().to_owned();
    assert_eq!(works(addr, &secret).await, 200);
    assert!(gw.signal_and_wait("TERM").success(), "clean exit on SIGTERM");

    // Only the SHA-256 is on disk: the database and its WAL never hold the secret.
    let mut disk = Vec::new();
    for entry in std::fs::read_dir(dir.join("data")).unwrap() {
        disk.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let hash = stackgate::token::hash_secret(secret.as_bytes());
    assert!(disk.windows(hash.len()).any(|w| w == hash), "the hash is stored");
    assert!(!disk.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret must never be stored");

    let (_gw, addr, _out) = spawn_gateway(&["run", "--config", &cfg]);
    assert_eq!(works(addr, &secret).await, 200, "the token works after a restart");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue #18, suspension: `enabled: false` is persisted; a restarted gateway still
/// refuses the token as disabled, and a resume after the restart restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_survives_a_restart() {
    let backend = Backend::start().await;
    let dir = temp_dir("suspend-restart");
    let cfg = config_file(&dir, backend.addr);
    let (mut gw, addr, _out) = spawn_gateway(&["run", "--config", &cfg]);
    let (status, v) = create(addr, "suspended").await;
    assert_eq!(status, 201, "{v}");
    let secret = v["token"]["token"].as_str().unwrap().to_owned();
    let path = format!("{TOKENS}/{}", v["token"]["uid"].as_str().unwrap());
    let off = json!({"token": {"enabled": false}}).to_string();
    assert_eq!(KeepAlive::connect(addr).await.send("PUT", &path, &owner(), &off).await.0, 200);
    assert_eq!(works(addr, &secret).await, 401);
    assert!(gw.signal_and_wait("TERM").success(), "clean exit on SIGTERM");

    let (_gw, addr, _out) = spawn_gateway(&["run", "--config", &cfg]);
    let mut c = KeepAlive::connect(addr).await;
    let (status, text) = c.send("GET", ENTRIES, &[("api_key", API_KEY), ("authorization", secret.as_str())], "").await;
    assert_eq!(status, 401, "still suspended after a restart: {text}");
    assert!(text.contains("is disabled."), "{text}");
    let (_, shown) = c.send("GET", &path, &owner(), "").await;
    assert_eq!(serde_json::from_str::<Value>(&shown).unwrap()["token"]["enabled"], false, "{shown}");
    let on = json!({"token": {"enabled": true}}).to_string();
    assert_eq!(c.send("PUT", &path, &owner(), &on).await.0, 200);
    assert_eq!(works(addr, &secret).await, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_create_survives_sigkill() {
    let backend = Backend::start().await;
    let dir = temp_dir("crash");
    let cfg = config_file(&dir, backend.addr);
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    for round in 0..3 {
        let (gw, addr, _out) = spawn_gateway(&["run", "--config", &cfg]);
        let mut clients = Vec::new();
        for client in 0..4 {
            let acknowledged = Arc::clone(&acknowledged);
            clients.push(tokio::spawn(async move {
                let mut conn = KeepAlive::connect(addr).await;
                for i in 0..200 {
                    let name = format!("r{round}-c{client}-{i}");
                    match conn.try_send("POST", TOKENS, &owner(), &create_body(&name)).await {
                        Some((201, body)) => {
                            let v: Value = serde_json::from_str(&body).unwrap();
                            acknowledged.lock().unwrap().push(v["token"]["token"].as_str().unwrap().to_owned());
                        }
                        Some((status, body)) => panic!("unexpected {status}: {body}"),
                        None => return, // the gateway died mid-request: unacknowledged
                    }
                }
            }));
        }
        // Kill it while creates are in flight.
        let started = Instant::now();
        while acknowledged.lock().unwrap().len() < (round + 1) * 10 && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(gw); // SIGKILL
        for c in clients {
            c.await.unwrap();
        }
        // Restart: the store must open cleanly and every acknowledged token must work.
        let (_gw, addr, _out) = spawn_gateway(&["run", "--config", &cfg]);
        let secrets = acknowledged.lock().unwrap().clone();
        assert!(secrets.len() >= (round + 1) * 10, "round {round}: only {} creates", secrets.len());
        for s in &secrets {
            assert_eq!(works(addr, s).await, 200, "round {round}: an acknowledged token was lost");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

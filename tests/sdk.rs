//! The official Contentstack Python management SDK (`contentstack-management` on PyPI)
//! pointed at the gateway. `.ci/run` installs the SDK, so in CI this always runs; on a
//! machine without it the test says so and passes only outside CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_management_sdk_through_the_gateway() {
    let probe = std::process::Command::new("python3").args(["-c", "import contentstack_management"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(std::env::var_os("CI").is_none(), "CI must install contentstack-management (see .ci/run)");
        println!("skipped: the contentstack-management Python SDK is not installed (pip install contentstack-management pyotp)");
        return;
    }
    let env = Env::start().await;
    let addr = env.gateway.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["tests/sdk/python_sdk.py", &addr, API_KEY, RO, RW, ALICE])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let results: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    let expect = [
        ("ro_list_content_types", "200"),
        ("ro_fetch_content_type", "200"),
        ("ro_list_entries", "200"),
        ("ro_create_entry", "403"),
        ("rw_create_entry", "200"),
        ("rw_list_environments", "200"),
        ("rw_list_branches", "200"),
        ("rw_list_tokens", "403"),
        // The SDK's token-API writes pass the gateway's body checks (application/json).
        ("owner_create_token", "201"),
        ("owner_update_token", "200"),
    ];
    for (name, status) in expect {
        assert_eq!(results.get(name).copied(), Some(status), "{name}: {stdout}");
    }
    // The SDK's requests reached the backend with the canonical paths it sent.
    let seen: Vec<String> = env.backend.seen().iter().map(|s| format!("{} {}", s.method, s.target)).collect();
    assert!(seen.iter().any(|s| s.starts_with("POST /v3/content_types/blog/entries")), "{seen:?}");
    assert!(!seen.iter().any(|s| s.contains("management_tokens")), "{seen:?}");
    assert!(env.backend.seen().iter().all(|s| s.headers.get("x-stackgate-token-uid").is_some()));
    // The update reached the store: the token the SDK made is read-only now.
    let (_, _, body) =
        env.send("GET", "/v3/stacks/management_tokens", &[("api_key", API_KEY), ("authtoken", ALICE)], "").await;
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let made = listed["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "made by the sdk").cloned();
    let made = made.unwrap_or_else(|| panic!("the SDK's token is listed: {listed}"));
    assert_eq!(
        (made["description"].as_str(), made["scope"][0]["acl"]["write"].as_bool()),
        (Some("read-only now"), Some(false))
    );
}

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
            .args(["tests/sdk/python_sdk.py", &addr, API_KEY, RO, RW])
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
    ];
    for (name, status) in expect {
        assert_eq!(results.get(name).copied(), Some(status), "{name}: {stdout}");
    }
    // The SDK's requests reached the backend with the canonical paths it sent.
    let seen: Vec<String> = env.backend.seen().iter().map(|s| format!("{} {}", s.method, s.target)).collect();
    assert!(seen.iter().any(|s| s.starts_with("POST /v3/content_types/blog/entries")), "{seen:?}");
    assert!(!seen.iter().any(|s| s.contains("management_tokens")), "{seen:?}");
    assert!(env.backend.seen().iter().all(|s| s.headers.get("x-stackgate-token-uid").is_some()));
}

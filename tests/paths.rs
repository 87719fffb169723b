//! Ambiguous request targets are rejected before anything is forwarded, and allowed
//! targets reach the backend as exactly the canonical path the gateway authorised.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

/// Each is sent raw, on its own connection, with a valid read-write token.
const AMBIGUOUS: &[&str] = &[
    "/v3/content_types%2fblog/entries",
    "/v3/content_types%2Fblog/entries",
    "/v3/content_types/blog%2F..%2F..%2Fstacks",
    "/v3/%2e%2e/stacks/settings",
    "/v3/%2E%2E/stacks/settings",
    "/v3/content_types/%2e/entries",
    "/v3/content_types/%2E",
    "/v3/content_types/blog/%2e%2e",
    "/v3/content_types/../stacks/settings",
    "/v3/content_types/blog/entries/..",
    "/v3/./stacks",
    "/v3/content_types/./blog",
    "/v3//content_types",
    "/v3/content_types//blog",
    "/v3/content_types/",
    "/v3/content_types/blog/entries/",
    "/v3/content_types;x=y",
    "/v3/content_types/blog;jsessionid=1/entries",
    "/v3/content_types/blog%3bx/entries",
    "/v3/content_types/blog%00/entries",
    "/v3/content_types/blog%5c..%5cstacks",
    "/v3/content_types/blog%5C..%5Cstacks",
    "/v3/content_types\\..\\stacks",
    "/v3/content_types/blog%zz",
    "/v3/content_types/blog%2",
    "/v3/content_types/%252e%252e/stacks",
    "/v3/content_types/%252f",
    "/v3/content_types/%c0%ae%c0%ae/stacks",
    "/v3/content_types/%e2%80%a4%e2%80%a4",
    "/v3/content_types/%ef%bc%8fstacks",
    "/v3/content_types/bl\u{00e9}g",
    "/v3/content_types/%09",
    "/v3/content_types/%7f",
    "http://evil.example/v3/content_types",
    "http://evil.example:8080/v3/stacks/settings",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_targets_are_rejected_and_never_forwarded() {
    let env = Env::start().await;
    let mut failures = Vec::new();
    for target in AMBIGUOUS {
        let (status, text) = raw(env.gateway.addr, &raw_get(target)).await;
        // hyper may close the connection on targets it cannot parse; either way it is a 4xx.
        let ok = status == 400 || (status == 0 && text.is_empty());
        if !ok {
            failures.push(format!("{target}: got {status}"));
        }
        if status == 400 && !text.contains("\"error_code\":400") {
            failures.push(format!("{target}: 400 without CMA body: {text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(AMBIGUOUS.len() >= 30);
    assert!(
        env.backend.seen().is_empty(),
        "forwarded: {:?}",
        env.backend.seen().iter().map(|s| &s.target).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_nul_and_control_bytes_never_reach_the_backend() {
    let env = Env::start().await;
    for target in ["/v3/content_types\0/blog", "/v3/content_types/\x01", "/v3/content_types/a b"] {
        let (status, _) = raw(env.gateway.addr, &raw_get(target)).await;
        assert!(status == 400 || status == 0, "{target:?}: {status}");
    }
    assert!(env.backend.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upper_case_and_foreign_prefixes_are_not_cma_paths() {
    let env = Env::start().await;
    for target in ["/V3/content_types", "/v3Content", "/v2/content_types", "/", "/v3"] {
        let (status, text) = raw(env.gateway.addr, &raw_get(target)).await;
        assert_eq!(status, 404, "{target}: {text}");
    }
    assert!(env.backend.seen().is_empty());
}

/// (sent target, what the backend must see)
const CANONICAL: &[(&str, &str)] = &[
    (
        "/v3/content_types/blog/entries?locale=en-us&include_count=true",
        "/v3/content_types/blog/entries?locale=en-us&include_count=true",
    ),
    ("/v3/content_%74ypes/blog", "/v3/content_types/blog"),
    ("/v3/content_types/%62log/entries", "/v3/content_types/blog/entries"),
    ("/v3/content_types/blog/entries/a%2db", "/v3/content_types/blog/entries/a-b"),
    ("/v3/content_types/blog/entries/a%3fb", "/v3/content_types/blog/entries/a%3Fb"),
    ("/v3/content_types/blog/entries/a%20b?x=%2F", "/v3/content_types/blog/entries/a%20b?x=%2F"),
    ("http://gw.test:80/v3/locales", "/v3/locales"),
];

/// A raw `#` in an HTTP/1.1 target is 400 (the contract: HTTP sends no fragment), and
/// nothing reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_fragment_in_the_target_is_400() {
    let env = Env::start().await;
    for target in ["/v3/content_types/blog#/../../stacks/settings", "/v3/content_types/blog#x", "/v3/assets?q=1#f"] {
        let (status, text) = raw(env.gateway.addr, &raw_get(target)).await;
        assert_eq!(status, 400, "{target}: {text}");
        assert!(text.contains("\"error_code\":400"), "{target}: {text}");
    }
    assert!(env.backend.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sees_exactly_the_canonical_target() {
    let env =
        Env::start_with("hostnames = [\"gw.test:80\"]", "", std::sync::Arc::new(stackgate::clock::SystemClock)).await;
    for (sent, want) in CANONICAL {
        env.backend.clear();
        let (status, text) = raw(env.gateway.addr, &raw_get(sent)).await;
        assert_eq!(status, 200, "{sent}: {text}");
        let seen = env.backend.seen();
        assert_eq!(seen.len(), 1, "{sent}");
        assert_eq!(seen[0].target, *want, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_module_names_are_classified_after_decoding() {
    // `%73` is `s`: /v3/%73tacks/settings must be recognised as the stack module.
    let env = Env::start().await;
    let (status, _) = raw(env.gateway.addr, &raw_get("/v3/%73tacks/settings")).await;
    assert_eq!(status, 403);
    let (status, _) = raw(env.gateway.addr, &raw_get("/v3/stacks/management%5Ftokens")).await;
    assert_eq!(status, 403);
    assert!(env.backend.seen().is_empty());
}

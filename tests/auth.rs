//! Authentication (api key, token, stack, expiry) and branch scope, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use stackgate::clock::ManualClock;
use std::sync::Arc;

const PATH: &str = "/v3/content_types/blog/entries";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_token_errors() {
    let env = Env::start().await;
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, i64);
    let cases: Vec<Case> = vec![
        ("missing api_key", vec![("authorization", RW)], 412, 109),
        ("unknown api_key", vec![("api_key", "blt9999999999999999"), ("authorization", RW)], 412, 109),
        ("missing token", vec![("api_key", API_KEY)], 401, 105),
        (
            "unknown token",
            vec![("api_key", API_KEY), ("authorization", "cs99999999999999999999999999999999")],
            401,
            105,
        ),
        ("empty token", vec![("api_key", API_KEY), ("authorization", "")], 401, 105),
        ("other stack's token", vec![("api_key", API_KEY), ("authorization", OTHER_STACK)], 401, 105),
        ("token with other api_key", vec![("api_key", OTHER_API_KEY), ("authorization", RW)], 401, 105),
        ("no credentials at all", vec![], 401, 105),
        ("duplicate authorization", vec![("api_key", API_KEY), ("authorization", RW), ("authorization", RO)], 400, 400),
        ("duplicate api_key", vec![("api_key", API_KEY), ("api_key", OTHER_API_KEY), ("authorization", RW)], 400, 400),
    ];
    for (name, headers, status, code) in cases {
        let (got, _, body) = env.send("GET", PATH, &headers, "").await;
        assert_eq!(got.as_u16(), status, "{name}");
        assert_eq!(error_code(&body), code, "{name}");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains(RW) && !text.contains(RO), "{name}: secret echoed");
    }
    assert!(env.backend.seen().is_empty(), "nothing may be forwarded");
    // The valid token of the other stack works on its own stack.
    let (got, _, _) = env.send("GET", PATH, &[("api_key", OTHER_API_KEY), ("authorization", OTHER_STACK)], "").await;
    assert_eq!(got.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_midnight_utc_at_the_start_of_the_date() {
    let clock = Arc::new(ManualClock::new(EXPIRY - 1));
    let env = Env::with_clock(Arc::clone(&clock)).await;
    let (status, _, _) = env.token("GET", PATH, EXPIRING, "").await;
    assert_eq!(status.as_u16(), 200, "one second before 2027-01-01T00:00:00Z");

    clock.set(EXPIRY);
    let (status, _, body) = env.token("GET", PATH, EXPIRING, "").await;
    assert_eq!(status.as_u16(), 401, "at 00:00:00 UTC");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error_code"], 105);
    assert_eq!(v["errors"]["authorization"][0], "has expired.");

    clock.set(EXPIRY + 86_400 * 365);
    let (status, _, _) = env.token("GET", PATH, EXPIRING, "").await;
    assert_eq!(status.as_u16(), 401);
    // Tokens without expiry are unaffected.
    let (status, _, _) = env.token("GET", PATH, RO, "").await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(env.backend.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_scope() {
    let env = Env::start().await;
    // (token, branch header, status)
    let cases: &[(&str, Option<&str>, u16)] = &[
        (RO, None, 200),                // header absent = main
        (RO, Some("main"), 200),        // branch allowed
        (RO, Some("development"), 403), // branch not allowed
        (RO, Some("deploy"), 200),      // alias whose target (main) is in branches
        (RO, Some("staging"), 403),     // alias of development
        (DEV_ONLY, None, 403),          // main not in scope
        (DEV_ONLY, Some("development"), 200),
        (DEV_ONLY, Some("staging"), 200),
        (ALIAS_ONLY, Some("deploy"), 200), // alias allowed via alias scope
        (ALIAS_ONLY, Some("main"), 403),   // alias scope does not grant the target by name
        (ALIAS_ONLY, None, 403),
        (RO, Some("nosuchbranch"), 403), // unknown branch
        (RO, Some("*"), 403),
    ];
    for &(token, branch, want) in cases {
        let mut headers = vec![("api_key", API_KEY), ("authorization", token)];
        if let Some(b) = branch {
            headers.push(("branch", b));
        }
        env.backend.clear();
        let (status, _, body) = env.send("GET", PATH, &headers, "").await;
        assert_eq!(status.as_u16(), want, "token {token} branch {branch:?}");
        if want == 200 {
            let seen = env.backend.last().unwrap();
            assert_eq!(seen.headers.get("branch").map(|v| v.to_str().unwrap()), branch, "branch is forwarded as sent");
        } else {
            assert_eq!(error_code(&body), 162);
            assert!(env.backend.seen().is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_modules_skip_the_branch_check() {
    let env = Env::start().await;
    for path in ["/v3/environments", "/v3/webhooks", "/v3/stacks/branches", "/v3/roles", "/v3/taxonomies"] {
        let (status, _, _) =
            env.send("GET", path, &[("api_key", API_KEY), ("authorization", RO), ("branch", "development")], "").await;
        assert_eq!(status.as_u16(), 200, "{path}");
    }
    let (status, _, _) = env
        .send("GET", "/v3/assets", &[("api_key", API_KEY), ("authorization", RO), ("branch", "development")], "")
        .await;
    assert_eq!(status.as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_branch_header_is_400() {
    let env = Env::start().await;
    let req = format!("GET {PATH} HTTP/1.1\r\nHost: gw\r\napi_key: {API_KEY}\r\nauthorization: {RO}\r\nbranch: ma\u{ff}in\r\nConnection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    // Replace the UTF-8 encoding of U+00FF by a lone 0xFF byte.
    if let Some(pos) = bytes.windows(2).position(|w| w == [0xc3, 0xbf]) {
        bytes.splice(pos..pos + 2, [0xffu8]);
    }
    let (status, text) = raw(env.gateway.addr, &bytes).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"error_code\":400"));
    assert!(env.backend.seen().is_empty());
}

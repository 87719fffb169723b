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

/// `branches = ["$all"]` through the token API: every branch, alias and even a branch the
/// config does not list (created later; forwarded, the backend decides), for
/// branch-specific modules; the scope is shown as sent; a `main` token is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_branches_scope_created_through_the_api() {
    let env = Env::start().await;
    let owner = [("api_key", API_KEY), ("authtoken", ALICE), ("content-type", "application/json")];
    let scope = serde_json::json!([
        {"module": "$all", "acl": {"read": true, "write": false}},
        {"module": "branch", "branches": ["$all"], "acl": {"read": true, "write": false}}
    ]);
    let create = serde_json::json!({"token": {"name": "all branches", "scope": scope, "expires_on": null}});
    let (status, _, body) = env.send("POST", "/v3/stacks/management_tokens", &owner, &create.to_string()).await;
    assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&body));
    let created: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(created["token"]["scope"], scope, "the scope is shown as sent");
    let secret = created["token"]["token"].as_str().unwrap().to_owned();

    for branch in [None, Some("main"), Some("development"), Some("deploy"), Some("staging"), Some("made-later")] {
        let mut headers = vec![("api_key", API_KEY), ("authorization", secret.as_str())];
        if let Some(b) = branch {
            headers.push(("branch", b));
        }
        env.backend.clear();
        for path in [PATH, "/v3/assets"] {
            let (status, _, body) = env.send("GET", path, &headers, "").await;
            assert_eq!(status.as_u16(), 200, "{path} branch {branch:?}: {}", String::from_utf8_lossy(&body));
        }
        let seen = env.backend.seen();
        assert_eq!(seen.len(), 2, "branch {branch:?} forwarded");
        assert!(
            seen.iter().all(|s| s.headers.get("branch").map(|v| v.to_str().unwrap()) == branch),
            "branch is forwarded as sent"
        );
    }
    // Reads only: the module grant still applies.
    let (status, _, _) = env.send("POST", PATH, &[("api_key", API_KEY), ("authorization", &secret)], "{}").await;
    assert_eq!(status.as_u16(), 403);

    // A token scoped to main is unchanged.
    let (status, _, body) =
        env.send("GET", PATH, &[("api_key", API_KEY), ("authorization", RO), ("branch", "development")], "").await;
    assert_eq!(status.as_u16(), 403);
    assert_eq!(error_code(&body), 162);
    let (status, _, _) =
        env.send("GET", PATH, &[("api_key", API_KEY), ("authorization", RO), ("branch", "made-later")], "").await;
    assert_eq!(status.as_u16(), 403);

    // "$all" stands alone, and "*" is no wildcard: both 422 under the entry's branches.
    for branches in [serde_json::json!(["$all", "main"]), serde_json::json!(["*"])] {
        let create = serde_json::json!({"token": {"name": "bad", "scope": [
            {"module": "$all", "acl": {"read": true}},
            {"module": "branch", "branches": branches, "acl": {"read": true}}]}});
        let (status, _, body) = env.send("POST", "/v3/stacks/management_tokens", &owner, &create.to_string()).await;
        assert_eq!(status.as_u16(), 422, "{branches}");
        let errors: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(errors["errors"]["scope[1].branches"].is_array(), "{branches}: {errors}");
    }
}

/// A static token's `branches = ["$all", "main"]` is a config error at its TOML path.
#[test]
fn all_branches_with_other_branches_is_a_config_error() {
    let text = config_text("127.0.0.1:9".parse().unwrap(), "", "").replace(
        r#"{ module = "branch", branches = ["development"], acl = { read = true } }"#,
        r#"{ module = "branch", branches = ["$all", "main"], acl = { read = true } }"#,
    );
    let errors = stackgate::config::from_str(&text).unwrap_err();
    let shown = errors.to_string();
    assert!(
        shown.contains("stacks[0].tokens[3].scope[1].branches: '$all' must be the only element of branches."),
        "{shown}"
    );
    assert_eq!(errors.0.len(), 1, "{shown}");
    // Alone it loads, as a flag on the compiled token.
    let ok = config_text("127.0.0.1:9".parse().unwrap(), "", "").replace(
        r#"{ module = "branch", branches = ["development"], acl = { read = true } }"#,
        r#"{ module = "branch", branches = ["$all"], acl = { read = true } }"#,
    );
    assert!(stackgate::config::from_str(&ok).is_ok());
}

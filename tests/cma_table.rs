//! Walks every row of shared/cma-api.md through the real gateway and a recording
//! backend: read-only and read-write tokens, the never-allowed modules and the body
//! rules. A forwarded request must reach the backend with exactly its path; a denied
//! one must not reach it at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

/// R: both tokens may; W: read-write only; X: neither.
#[derive(Clone, Copy, Debug, PartialEq)]
enum K {
    R,
    W,
    X,
}
use K::*;

const ROWS: &[(&str, &str, K)] = &[
    // content_type
    ("GET", "/v3/content_types", R),
    ("HEAD", "/v3/content_types", R),
    ("POST", "/v3/content_types", W),
    ("GET", "/v3/content_types/blog", R),
    ("PUT", "/v3/content_types/blog", W),
    ("DELETE", "/v3/content_types/blog", W),
    ("GET", "/v3/content_types/blog/references", R),
    ("GET", "/v3/content_types/blog/export", R),
    ("POST", "/v3/content_types/import", W),
    // global_field
    ("GET", "/v3/global_fields", R),
    ("POST", "/v3/global_fields", W),
    ("GET", "/v3/global_fields/seo", R),
    ("PUT", "/v3/global_fields/seo", W),
    ("DELETE", "/v3/global_fields/seo", W),
    ("POST", "/v3/global_fields/import", W),
    ("GET", "/v3/global_fields/seo/export", R),
    // entry
    ("GET", "/v3/content_types/blog/entries", R),
    ("POST", "/v3/content_types/blog/entries", W),
    ("GET", "/v3/content_types/blog/entries/e1", R),
    ("PUT", "/v3/content_types/blog/entries/e1", W),
    ("DELETE", "/v3/content_types/blog/entries/e1", W),
    ("POST", "/v3/content_types/blog/entries/e1/publish", W),
    ("POST", "/v3/content_types/blog/entries/e1/unpublish", W),
    ("GET", "/v3/content_types/blog/entries/e1/versions", R),
    ("POST", "/v3/content_types/blog/entries/e1/versions/2/name", W),
    ("GET", "/v3/content_types/blog/entries/e1/references", R),
    ("GET", "/v3/content_types/blog/entries/e1/locales", R),
    ("GET", "/v3/content_types/blog/entries/e1/export", R),
    ("POST", "/v3/content_types/blog/entries/e1/unlocalize", W),
    ("POST", "/v3/content_types/blog/entries/import", W),
    ("POST", "/v3/content_types/blog/entries/e1/import", W),
    ("GET", "/v3/content_types/blog/entries/e1/variants", R),
    ("GET", "/v3/content_types/blog/entries/e1/variants/v1", R),
    ("PUT", "/v3/content_types/blog/entries/e1/variants/v1", W),
    ("PUT", "/v3/content_types/blog/entries/e1/workflow", X),
    // asset
    ("GET", "/v3/assets", R),
    ("POST", "/v3/assets", W),
    ("GET", "/v3/assets/a1", R),
    ("PUT", "/v3/assets/a1", W),
    ("DELETE", "/v3/assets/a1", W),
    ("POST", "/v3/assets/a1/publish", W),
    ("POST", "/v3/assets/a1/unpublish", W),
    ("GET", "/v3/assets/a1/versions", R),
    ("POST", "/v3/assets/a1/versions/1/name", W),
    ("GET", "/v3/assets/a1/references", R),
    ("GET", "/v3/assets/rt", R),
    ("GET", "/v3/assets/folders", R),
    ("POST", "/v3/assets/folders", W),
    ("GET", "/v3/assets/folders/f1", R),
    ("GET", "/v3/assets/images", R),
    // label, extension
    ("GET", "/v3/labels", R),
    ("POST", "/v3/labels", W),
    ("GET", "/v3/labels/l1", R),
    ("PUT", "/v3/labels/l1", W),
    ("DELETE", "/v3/labels/l1", W),
    ("GET", "/v3/extensions", R),
    ("POST", "/v3/extensions", W),
    ("GET", "/v3/extensions/x1", R),
    ("PUT", "/v3/extensions/x1", W),
    ("DELETE", "/v3/extensions/x1", W),
    // release
    ("GET", "/v3/releases", R),
    ("POST", "/v3/releases", W),
    ("GET", "/v3/releases/r1", R),
    ("PUT", "/v3/releases/r1", W),
    ("DELETE", "/v3/releases/r1", W),
    ("GET", "/v3/releases/r1/items", R),
    ("POST", "/v3/releases/r1/items", W),
    ("POST", "/v3/releases/r1/item", W),
    ("PUT", "/v3/releases/r1/update_items", W),
    ("PUT", "/v3/releases/r1/items/move", W),
    ("POST", "/v3/releases/r1/deploy", W),
    ("POST", "/v3/releases/r1/clone", W),
    // environment, locale
    ("GET", "/v3/environments", R),
    ("POST", "/v3/environments", W),
    ("GET", "/v3/environments/production", R),
    ("PUT", "/v3/environments/production", W),
    ("DELETE", "/v3/environments/production", W),
    ("GET", "/v3/locales", R),
    ("POST", "/v3/locales", W),
    ("GET", "/v3/locales/en-us", R),
    ("PUT", "/v3/locales/en-us", W),
    ("DELETE", "/v3/locales/en-us", W),
    // webhook
    ("GET", "/v3/webhooks", R),
    ("POST", "/v3/webhooks", W),
    ("GET", "/v3/webhooks/w1", R),
    ("PUT", "/v3/webhooks/w1", W),
    ("DELETE", "/v3/webhooks/w1", W),
    ("GET", "/v3/webhooks/w1/executions", R),
    ("GET", "/v3/webhooks/w1/export", R),
    ("POST", "/v3/webhooks/import", W),
    ("POST", "/v3/webhooks/w1/retry", W),
    ("GET", "/v3/webhooks/w1/logs", R),
    // role
    ("GET", "/v3/roles", R),
    ("POST", "/v3/roles", W),
    ("GET", "/v3/roles/r1", R),
    ("PUT", "/v3/roles/r1", W),
    ("DELETE", "/v3/roles/r1", W),
    // user
    ("GET", "/v3/stacks/users", R),
    ("POST", "/v3/stacks/users/roles", W),
    ("PUT", "/v3/stacks/users/roles", W),
    ("POST", "/v3/stacks/users", X),
    // workflow
    ("GET", "/v3/workflows", R),
    ("POST", "/v3/workflows", W),
    ("GET", "/v3/workflows/wf1", R),
    ("PUT", "/v3/workflows/wf1", W),
    ("DELETE", "/v3/workflows/wf1", W),
    ("GET", "/v3/workflows/wf1/enable", W),
    ("GET", "/v3/workflows/wf1/disable", W),
    // publish_rule (bodies without approvers: see BODY_ROWS)
    ("GET", "/v3/workflows/publishing_rules", R),
    ("GET", "/v3/workflows/publishing_rules/p1", R),
    ("DELETE", "/v3/workflows/publishing_rules/p1", W),
    ("GET", "/v3/workflows/content_type/blog", R),
    // audit_log
    ("GET", "/v3/audit-logs", R),
    ("GET", "/v3/audit-logs/l1", R),
    ("POST", "/v3/audit-logs", X),
    ("DELETE", "/v3/audit-logs/l1", X),
    ("PUT", "/v3/audit-logs/l1", X),
    // publish_queue
    ("GET", "/v3/publish-queue", R),
    ("GET", "/v3/publish-queue/q1", R),
    ("DELETE", "/v3/publish-queue/q1", W),
    ("GET", "/v3/publish-queue/q1/unschedule", W),
    // bulk
    ("POST", "/v3/bulk/publish", W),
    ("POST", "/v3/bulk/unpublish", W),
    ("POST", "/v3/bulk/delete", W),
    ("POST", "/v3/bulk/release/items", W),
    ("PUT", "/v3/bulk/release/update_items", W),
    ("GET", "/v3/bulk/jobs/j1", R),
    ("GET", "/v3/bulk/jobs/j1/items", R),
    ("POST", "/v3/bulk/workflow", X),
    // taxonomy
    ("GET", "/v3/taxonomies", R),
    ("POST", "/v3/taxonomies", W),
    ("GET", "/v3/taxonomies/t1", R),
    ("PUT", "/v3/taxonomies/t1", W),
    ("DELETE", "/v3/taxonomies/t1", W),
    ("GET", "/v3/taxonomies/t1/terms", R),
    ("POST", "/v3/taxonomies/t1/terms", W),
    ("GET", "/v3/taxonomies/t1/terms/term1", R),
    ("PUT", "/v3/taxonomies/t1/terms/term1", W),
    ("DELETE", "/v3/taxonomies/t1/terms/term1", W),
    ("GET", "/v3/taxonomies/t1/terms/term1/ancestors", R),
    ("GET", "/v3/taxonomies/t1/terms/term1/descendants", R),
    ("GET", "/v3/taxonomies/t1/terms/term1/locales", R),
    ("GET", "/v3/taxonomies/t1/export", R),
    ("POST", "/v3/taxonomies/import", W),
    ("POST", "/v3/taxonomies/publish", W),
    ("POST", "/v3/taxonomies/unpublish", W),
    // branch
    ("GET", "/v3/stacks/branches", R),
    ("GET", "/v3/stacks/branches/development", R),
    ("GET", "/v3/stacks/branches_compare", R),
    ("GET", "/v3/stacks/branches_compare/content_types", R),
    ("GET", "/v3/stacks/branches_queue", R),
    ("GET", "/v3/stacks/branches_queue/m1", R),
    ("POST", "/v3/stacks/branches_merge", W),
    ("POST", "/v3/stacks/branches", X),
    ("DELETE", "/v3/stacks/branches/development", X),
    // branch_alias
    ("GET", "/v3/stacks/branch_aliases", R),
    ("GET", "/v3/stacks/branch_aliases/deploy", R),
    ("PUT", "/v3/stacks/branch_aliases/deploy", X),
    ("DELETE", "/v3/stacks/branch_aliases/deploy", X),
    // never allowed
    ("GET", "/v3/stacks", X),
    ("PUT", "/v3/stacks", X),
    ("DELETE", "/v3/stacks", X),
    ("GET", "/v3/stacks?include_collaborators=true", X),
    ("GET", "/v3/stacks/settings", X),
    ("POST", "/v3/stacks/settings", X),
    ("POST", "/v3/stacks/settings/reset", X),
    ("POST", "/v3/stacks/transfer_ownership", X),
    ("GET", "/v3/stacks/accept_ownership/o1", X),
    ("POST", "/v3/stacks/share", X),
    ("POST", "/v3/stacks/unshare", X),
    ("GET", "/v3/stacks/management_tokens", X),
    ("POST", "/v3/stacks/management_tokens", X),
    ("GET", "/v3/stacks/management_tokens/t1", X),
    ("DELETE", "/v3/stacks/management_tokens/t1", X),
    ("GET", "/v3/stacks/delivery_tokens", X),
    ("POST", "/v3/stacks/delivery_tokens", X),
    ("GET", "/v3/stacks/delivery_tokens/d1", X),
    ("GET", "/v3/stacks/delivery_tokens/d1/preview_token", X),
    ("GET", "/v3/organizations", X),
    ("GET", "/v3/organizations/o1/roles", X),
    ("POST", "/v3/organizations/o1/share", X),
    ("GET", "/v3/user", X),
    ("PUT", "/v3/user", X),
    ("POST", "/v3/user-session", X),
    ("DELETE", "/v3/user-session", X),
    ("GET", "/v3/user/forgot_password", X),
    // unknown paths under /v3 fail closed
    ("GET", "/v3/nonexistent", X),
    ("POST", "/v3/nonexistent", X),
    ("GET", "/v3/content_types/blog/entries/e1/unknown", X),
];

/// (method, path, body, read-only status, read-write status)
const BODY_ROWS: &[(&str, &str, &str, u16, u16)] = &[
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"workflow_stage":{"uid":"s1","comment":"go"}}}"#,
        403,
        403,
    ),
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"publishing_rule":{"uid":"p1","action":"publish","status":1}}}"#,
        403,
        403,
    ),
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"publishing_rule":{"uid":"p1","action":"publish","status":-1}}}"#,
        403,
        403,
    ),
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"publishing_rule":{"uid":"p1","action":"publish","status":0}}}"#,
        403,
        200,
    ),
    ("POST", "/v3/content_types/blog/entries/e1/workflow", r#"{"workflow": "#, 403, 400),
    (
        "POST",
        "/v3/workflows/publishing_rules",
        r#"{"publishing_rule":{"actions":["publish"],"approvers":{"users":[],"roles":[]}}}"#,
        403,
        200,
    ),
    (
        "POST",
        "/v3/workflows/publishing_rules",
        r#"{"publishing_rule":{"actions":["publish"],"approvers":{"users":["u1"]}}}"#,
        403,
        403,
    ),
    ("PUT", "/v3/workflows/publishing_rules/p1", r#"{"publishing_rule":{"approvers":{"roles":["r1"]}}}"#, 403, 403),
    ("PUT", "/v3/workflows/publishing_rules/p1", r#"{"publishing_rule":{"actions":["publish"]}}"#, 403, 200),
    ("PUT", "/v3/workflows/publishing_rules/p1", "not json", 403, 400),
    // Shapes other than the documented one fail closed.
    ("POST", "/v3/workflows/publishing_rules", r#"{"publishing_rule":{"approvers":[{"users":["u1"]}]}}"#, 403, 403),
    ("POST", "/v3/workflows/publishing_rules", r#"{"publishing_rule":{"approvers":"u1"}}"#, 403, 403),
    ("POST", "/v3/workflows/publishing_rules", r#"{"publishing_rule":[{"approvers":{"users":["u1"]}}]}"#, 403, 403),
    ("POST", "/v3/workflows/publishing_rules", r#"[{"publishing_rule":{"approvers":{"users":["u1"]}}}]"#, 403, 403),
    ("PUT", "/v3/workflows/publishing_rules/p1", r#""x""#, 403, 403),
    // Keys read as case-insensitive decoders (Go's encoding/json) read them.
    ("POST", "/v3/workflows/publishing_rules", r#"{"publishing_rule":{"Approvers":{"Users":["u1"]}}}"#, 403, 403),
    ("POST", "/v3/workflows/publishing_rules", r#"{"publİshing_rule":{"approvers":{"users":["u1"]}}}"#, 403, 403),
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"publishing_rule":{"Status":1}}}"#,
        403,
        403,
    ),
    // Keys read up to a NUL, as decoders keeping C strings read them.
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"publishing_rule":{"status\u0000":1,"status":0}}}"#,
        403,
        403,
    ),
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"workflow_stage\u0000":{"uid":"review"},"publishing_rule":{"status":0}}}"#,
        403,
        403,
    ),
    // Keys that spell a rule's key by their letters and digits alone (as a backend that
    // snake-cases keys reads them) are refused...
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"publishing_rule":{"status":0},"workflowStage":{"uid":"review"}}}"#,
        403,
        403,
    ),
    ("POST", "/v3/workflows/publishing_rules", r#"{"publishing-rule":{"approvers":{"users":["u1"]}}}"#, 403, 403),
    // ... and never stand in for a key the rule needs.
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"publishing_rule":{"uid":"r","sta_tus":0}}}"#,
        403,
        403,
    ),
    // A stage that is present is present, null or not (DESIGN.md).
    (
        "POST",
        "/v3/content_types/blog/entries/e1/workflow",
        r#"{"workflow":{"publishing_rule":{"status":0},"workflow_stage":null}}"#,
        403,
        403,
    ),
    (
        "POST",
        "/v3/workflows/publishing_rules",
        r#"{"publishing_rule":{"approvers\u0000":{"users":["u1"]},"approvers":{"users":[],"roles":[]}}}"#,
        403,
        403,
    ),
    ("POST", "/v3/workflows/publishing_rules", r#"{"publishing_rule":{"approvers\u0000":{"users":["u1"]}}}"#, 403, 403),
    // Only an empty body is no body.
    ("DELETE", "/v3/workflows/publishing_rules/p1", " ", 403, 400),
    ("POST", "/v3/bulk/workflow", r#"{"workflow":{"workflow_stage":{"uid":"s1"}},"entries":[]}"#, 403, 403),
];

fn expected(kind: K, token: &str) -> u16 {
    match (kind, token) {
        (R, _) | (W, RW) => 200,
        _ => 403,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cma_row_for_read_only_and_read_write_tokens() {
    let env = Env::start().await;
    let mut failures = Vec::new();
    for &(method, path, kind) in ROWS {
        for token in [RO, RW] {
            env.backend.clear();
            let body = if method == "GET" || method == "HEAD" { "" } else { "{}" };
            let (status, _, resp_body) = env.token(method, path, token, body).await;
            let want = expected(kind, token);
            let seen = env.backend.seen();
            let name = if token == RO { "read-only" } else { "read-write" };
            if status.as_u16() != want {
                failures.push(format!("{method} {path} ({name}): got {status}, want {want}"));
                continue;
            }
            if want == 200 {
                // Forwarded exactly once, with exactly the canonical path (and query).
                if seen.len() != 1 || seen[0].target != path || seen[0].method.as_str() != method {
                    failures.push(format!(
                        "{method} {path} ({name}): backend saw {:?}",
                        seen.iter().map(|s| &s.target).collect::<Vec<_>>()
                    ));
                }
            } else {
                if !seen.is_empty() {
                    failures.push(format!("{method} {path} ({name}): denied but forwarded"));
                }
                if error_code(&resp_body) != 162 {
                    failures.push(format!("{method} {path} ({name}): error_code {}", error_code(&resp_body)));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_rules() {
    let env = Env::start().await;
    let mut failures = Vec::new();
    for &(method, path, body, ro_want, rw_want) in BODY_ROWS {
        for (token, want) in [(RO, ro_want), (RW, rw_want)] {
            env.backend.clear();
            let (status, _, _) = env.token(method, path, token, body).await;
            let seen = env.backend.seen();
            if status.as_u16() != want {
                failures.push(format!("{method} {path} {body}: got {status}, want {want}"));
            }
            let forwarded = seen.len() == 1 && seen[0].body_len == body.len() && seen[0].target == path;
            if forwarded != (want == 200) {
                failures.push(format!("{method} {path} {body}: forwarded={forwarded}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_module_scope_grants_only_that_module() {
    let env = Env::start().await;
    let cases = [
        ("GET", "/v3/content_types/blog/entries", 200),
        ("POST", "/v3/content_types/blog/entries", 200),
        ("GET", "/v3/content_types", 403),
        ("GET", "/v3/assets", 403),
        ("GET", "/v3/stacks/branches", 403),
    ];
    for (method, path, want) in cases {
        let (status, _, _) = env.token(method, path, ENTRY_ONLY, "{}").await;
        assert_eq!(status.as_u16(), want, "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspected_body_over_the_limit_is_413() {
    let env =
        Env::start_with("max_inspected_body = \"1KiB\"", "", std::sync::Arc::new(stackgate::clock::SystemClock)).await;
    let big = format!(r#"{{"workflow":{{"publishing_rule":{{"status":0}}}},"pad":"{}"}}"#, "x".repeat(2048));
    let (status, _, body) = env.token("POST", "/v3/content_types/blog/entries/e1/workflow", RW, &big).await;
    assert_eq!(status.as_u16(), 413);
    assert_eq!(error_code(&body), 413);
    assert!(env.backend.seen().is_empty());
    // Within the limit, the same bytes are forwarded.
    let small = r#"{"workflow":{"publishing_rule":{"status":0}}}"#;
    let (status, _, _) = env.token("POST", "/v3/content_types/blog/entries/e1/workflow", RW, small).await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(env.backend.last().unwrap().body_len, small.len());
}

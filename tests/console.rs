//! The token console (issue #19) in a real browser: Debian's Chromium driven through
//! chromedriver (WebDriver, the `fantoccini` crate), against the real gateway with the
//! demo CMA backend behind it. One test walks the whole flow a stack owner would, and
//! checks that what the page shows is what the token API and the gateway enforce.
//!
//! Chromium and chromedriver come from `scripts/test.sh` (apt). Without them the test
//! fails, unless `STACKGATE_ALLOW_SKIP=1` asks for a skip (as tests/sdk.rs).
//! `STACKGATE_SCREENSHOTS=1` also writes docs/console/*.png (the README's pictures).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const KEY: &str = "blt0c0n5013000000a1";
const TOKENS: &str = "/v3/stacks/management_tokens";
const ENTRIES: &str = "/v3/content_types/blog_post/entries";

/// The gateway's config: one stack with two branches and two aliases, an owner and a
/// developer, the organisation's default cap of 30 tokens and 10/10 requests per second.
fn config_text(backend: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[upstream]
url = "http://{backend}"

[[organizations]]
uid = "org_demo"
read_per_second = 10
write_per_second = 10

[[users]]
uid = "alice"
email = "alice@example.com"
authtoken_sha256 = "{alice}"

[[users]]
uid = "bob"
email = "bob@example.com"
authtoken_sha256 = "{bob}"

[[stacks]]
api_key = "{KEY}"
organization = "org_demo"
name = "Marketing site"
branches = ["main", "development"]
aliases = {{ deploy = "main", staging = "development" }}
members = {{ alice = "owner", bob = "developer" }}
"#,
        alice = sha(ALICE),
        bob = sha(BOB),
    )
}

/// Whether a program answers `--version`; else fail, unless the skip is asked for.
fn installed(program: &str) -> bool {
    let ok = std::process::Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    assert!(
        std::env::var("STACKGATE_ALLOW_SKIP").as_deref() == Ok("1"),
        "{program} is not installed: run `bash scripts/test.sh` (it installs chromium and chromium-driver), \
         or set STACKGATE_ALLOW_SKIP=1 to skip this test"
    );
    println!("skipped (STACKGATE_ALLOW_SKIP=1): {program} is not installed");
    false
}

/// chromedriver on a free loopback port, killed when dropped.
async fn chromedriver() -> (Proc, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("chromedriver")
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (proc, port);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on port {port}");
}

async fn browser(port: u16) -> Client {
    let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
        "--disable-dev-shm-usage", "--lang=en-US"]});
    let binary = std::env::var("STACKGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if std::path::Path::new(&binary).exists() {
        options["binary"] = json!(binary);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".to_owned(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{port}")).await.unwrap()
}

/// One HTTP/1.1 request on a fresh connection: status, lower-cased head, body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    let (status, text) = raw(addr, req.as_bytes()).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Chunked bodies (the backend's) are fine for `contains` checks.
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A CMA call with the management token, on `branch`.
/// The page's markup, its visible text and every field's value: wherever a secret
/// could linger after the one-time window closes.
async fn everything_in_the_page(c: &Client) -> String {
    let all = c
        .execute(
            "return document.documentElement.outerHTML + document.body.innerText + \
             Array.from(document.querySelectorAll('input, textarea')).map(i => i.value).join(' ');",
            vec![],
        )
        .await
        .unwrap();
    all.as_str().unwrap_or_default().to_owned()
}

async fn cma(gw: SocketAddr, method: &str, secret: &str, branch: &str) -> u16 {
    let body = if method == "POST" { r#"{"entry":{"title":"From the console test"}}"# } else { "" };
    let headers =
        [("api_key", KEY), ("authorization", secret), ("branch", branch), ("content-type", "application/json")];
    http(gw, method, ENTRIES, &headers, body).await.0
}

/// Polls (up to 10 s) until the JS expression is truthy.
async fn until(c: &Client, what: &str, js: &str) {
    for _ in 0..100 {
        if c.execute(&format!("return !!({js});"), vec![]).await.unwrap().as_bool() == Some(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = c.execute("return document.body.innerText;", vec![]).await.unwrap();
    panic!("timed out waiting for {what} ({js}); the page shows:\n{}", body.as_str().unwrap_or(""));
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

async fn type_into(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn value(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap().prop("value").await.unwrap().unwrap_or_default()
}

async fn shot(c: &Client, name: &str) {
    if std::env::var("STACKGATE_SCREENSHOTS").as_deref() != Ok("1") {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&dir).unwrap();
    // The whole form fits in a taller window.
    let tall = name == "form";
    if tall {
        c.set_window_size(1280, 1500).await.unwrap();
    }
    std::fs::write(dir.join(format!("{name}.png")), c.screenshot().await.unwrap()).unwrap();
    if tall {
        c.set_window_size(1280, 900).await.unwrap();
    }
}

async fn sign_in(c: &Client, authtoken: &str) {
    until(c, "the sign-in form", "!document.getElementById('view-signin').hidden").await;
    let field = c.find(Locator::Css("#authtoken")).await.unwrap();
    field.send_keys(authtoken).await.unwrap();
    // Enter submits: the form works from the keyboard.
    field.send_keys("\u{E007}").await.unwrap();
}

async fn sign_out(c: &Client) {
    click(c, "#sign-out").await;
    until(c, "the sign-in form", "!document.getElementById('view-signin').hidden").await;
}

async fn open_stack(c: &Client) {
    until(c, "the stack list", "document.querySelector('.stack-card')").await;
    click(c, ".stack-card").await;
    until(c, "the token view", "!document.getElementById('view-tokens').hidden").await;
}

fn api_token(name: &str, scope: Value) -> String {
    json!({"token": {"name": name, "description": "made through the API", "scope": scope}}).to_string()
}

fn owner() -> [(&'static str, &'static str); 3] {
    [("api_key", KEY), ("authtoken", ALICE), ("content-type", "application/json")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_manages_tokens_in_the_console() {
    if !installed("chromedriver") || !installed("chromium") {
        return;
    }
    let backend = stackgate::demo::backend::spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let cfg = stackgate::config::from_str(&config_text(backend.addr)).unwrap();
    let running = stackgate::server::start(cfg, std::sync::Arc::new(stackgate::clock::SystemClock)).await.unwrap();
    let (gw, admin) = (running.addr, running.admin_addr);
    let console = format!("http://{admin}/console");

    // --- Security headers on every console response (page, assets, API answers).
    for (path, headers) in [
        ("/console/", vec![]),
        ("/console/app.js", vec![]),
        ("/console/app.css", vec![]),
        ("/console/api/stacks", vec![("authtoken", ALICE)]),
        ("/console/api/v3/stacks/management_tokens", vec![("authtoken", ALICE), ("api_key", KEY)]),
        ("/console/nothing-here", vec![]),
    ] {
        let (status, head, _) = http(admin, "GET", path, &headers, "").await;
        assert!(matches!(status, 200 | 404), "{path}: {status}");
        for field in [
            "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            "x-frame-options: deny",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
            "cache-control: no-store",
        ] {
            assert!(head.contains(field), "{path} lacks {field}:\n{head}");
        }
    }
    // HEAD answers as GET does, stating the length GET's body has, with no body.
    for path in ["/console/", "/console/app.js", "/console/app.css", "/console/icon.svg"] {
        let (_, _, body) = http(admin, "GET", path, &[], "").await;
        let (status, head, rest) = http(admin, "HEAD", path, &[], "").await;
        assert_eq!(status, 200, "HEAD {path}");
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "HEAD {path}:\n{head}");
        assert!(!body.is_empty() && rest.is_empty(), "HEAD {path} carried {} bytes", rest.len());
    }
    // The console hands on token-API paths only: nothing reaches the backend through it.
    let (status, _, _) =
        http(admin, "GET", "/console/api/v3/content_types/blog_post/entries", &[("authtoken", ALICE)], "").await;
    assert_eq!(status, 404);

    // Two tokens made through the API, so the list has more than the console's own.
    let all_branches = json!([{"module": "$all", "acl": {"read": true, "write": true}},
                              {"module": "branch", "branches": ["$all"], "acl": {"read": true}}]);
    let (status, _, _) = http(gw, "POST", TOKENS, &owner(), &api_token("cms-sync", all_branches)).await;
    assert_eq!(status, 201);
    let main_only = json!([{"module": "$all", "acl": {"read": true}},
                           {"module": "branch", "branches": ["main"], "acl": {"read": true}}]);
    let (status, _, _) = http(gw, "POST", TOKENS, &owner(), &api_token("preview", main_only.clone())).await;
    assert_eq!(status, 201);

    let (_driver, port) = chromedriver().await;
    let c = browser(port).await;
    c.goto(&console).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/console/");

    // --- A wrong authtoken: the API's message next to the field.
    sign_in(&c, "not-an-authtoken").await;
    until(&c, "the sign-in error", "document.getElementById('err-authtoken').textContent.length > 0").await;
    assert!(text(&c, "#err-authtoken").await.contains("not allowed in here"));

    // --- The owner: the stack, its tokens, the create form in the seed's order.
    type_into(&c, "#authtoken", "").await;
    sign_in(&c, ALICE).await;
    until(&c, "the stack list", "document.querySelector('.stack-card')").await;
    assert!(text(&c, "#who").await.contains("alice@example.com"));
    let card = text(&c, ".stack-card").await;
    assert!(card.contains("Marketing site") && card.contains(KEY) && card.contains("owner"), "{card}");
    open_stack(&c).await;
    until(&c, "two tokens", "document.querySelectorAll('#token-rows tr').length === 2").await;
    assert!(text(&c, "#tokens-summary").await.contains("2 of 30"));

    let new_token = c.find(Locator::Css("#new-token")).await.unwrap();
    new_token.send_keys("\u{E007}").await.unwrap(); // Enter on the focused button
    until(&c, "the create form", "document.getElementById('token-dialog').open").await;
    let focused = c.execute("return document.activeElement.id;", vec![]).await.unwrap();
    assert_eq!(focused, json!("f-name"), "the dialog takes focus to its first field");
    // Every control has a label.
    let unlabelled = c
        .execute(
            "return Array.from(document.querySelectorAll('#token-form input, #token-form textarea'))
                 .filter(i => !i.labels || i.labels.length === 0).map(i => i.id);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "controls without a label");
    // The form's order: name, description, scope, permissions, expiry, rate limits.
    let order = c
        .execute("return Array.from(document.querySelectorAll('#token-form legend')).map(l => l.textContent);", vec![])
        .await
        .unwrap();
    assert_eq!(order, json!(["Scope", "Permissions", "Expiry", "Rate limits"]));

    type_into(&c, "#f-name", "ci-export").await;
    type_into(&c, "#f-description", "Nightly export job").await;
    click(&c, "#f-branch-main").await; // on by default: off
    click(&c, "#f-branch-development").await;
    click(&c, "#f-alias-deploy").await;
    assert!(c.find(Locator::Css("#f-read")).await.unwrap().is_selected().await.unwrap());
    assert!(!c.find(Locator::Css("#f-write")).await.unwrap().is_selected().await.unwrap());
    click(&c, "#f-expiry-date").await;
    // Five days from now: inside the 7-day warning window. A date input's typing order
    // follows the browser's locale, so the value is set directly (an input event, as typing).
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::days(5)).date();
    let soon = format!("{:04}-{:02}-{:02}", soon.year(), u8::from(soon.month()), soon.day());
    c.execute(
        "const i = document.getElementById('f-expires-on'); i.value = arguments[0];
         i.dispatchEvent(new Event('change', {bubbles: true}));",
        vec![json!(soon)],
    )
    .await
    .unwrap();
    click(&c, "#f-notify").await;
    click(&c, "#f-rate-custom").await;
    type_into(&c, "#f-rate-read", "5").await;
    type_into(&c, "#f-rate-write", "2").await;
    shot(&c, "form").await;
    // Over the organisation's 10 first: the API's message appears next to the field.
    type_into(&c, "#f-rate-read", "50").await;
    type_into(&c, "#f-rate-write", "2").await;
    click(&c, "#token-submit").await;
    until(&c, "the rate error", "document.getElementById('err-rates').textContent.length > 0").await;
    let rate_error = text(&c, "#err-rates").await;
    assert!(
        rate_error.contains("Read requests per second must be between 1 and the organization's limit of 10"),
        "{rate_error}"
    );
    assert_eq!(
        c.find(Locator::Css("#f-rate-read")).await.unwrap().attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    type_into(&c, "#f-rate-read", "5").await;
    // Typing in the field clears its message.
    assert_eq!(text(&c, "#err-rates").await, "");
    click(&c, "#token-submit").await;

    // --- The one-time window: API key and token, with the warning.
    until(&c, "the one-time window", "document.getElementById('secret-dialog').open").await;
    let secret = value(&c, "#secret-token").await;
    assert!(secret.starts_with("cs") && secret.len() == 34, "{secret}");
    assert_eq!(value(&c, "#secret-api-key").await, KEY);
    assert!(text(&c, "#secret-warning").await.contains("shown only once"));
    click(&c, "[data-copy='secret-token']").await;
    until(&c, "the copy status", "document.getElementById('copy-status').textContent.length > 0").await;
    shot(&c, "secret").await;

    // The secret works through the gateway as its scope says: read on its branch and
    // alias, not on another branch, and no writes (read-only).
    assert_eq!(cma(gw, "GET", &secret, "development").await, 200);
    assert_eq!(cma(gw, "GET", &secret, "deploy").await, 200);
    assert_eq!(cma(gw, "GET", &secret, "main").await, 403);
    assert_eq!(cma(gw, "POST", &secret, "development").await, 403);

    // "Done" closes it for good: the secret is nowhere in the page any more.
    click(&c, "#secret-done").await;
    until(&c, "the window closed", "!document.getElementById('secret-dialog').open").await;
    assert!(!c.source().await.unwrap().contains(&secret), "the secret is still in the page");
    assert!(!everything_in_the_page(&c).await.contains(&secret), "the secret is still in the page");
    let (_, _, listed) = http(gw, "GET", TOKENS, &owner(), "").await;
    assert!(!listed.contains(&secret));

    // The list shows the new token with its scope, expiry warning and rates.
    until(&c, "three tokens", "document.querySelectorAll('#token-rows tr').length === 3").await;
    let (_, _, created) = http(gw, "GET", TOKENS, &owner(), "").await;
    let created: Value = serde_json::from_str(&created).unwrap();
    let made = created["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "ci-export").unwrap();
    let uid = made["uid"].as_str().unwrap().to_owned();
    assert_eq!(made["expires_on"], json!(soon));
    assert_eq!(made["is_email_notification_enabled"], json!(true));
    assert_eq!(made["rate_limit"], json!({"read_per_second": 5, "write_per_second": 2}));
    assert_eq!(made["description"], json!("Nightly export job"));
    let row_css = format!("tr[data-uid='{uid}']");
    let row = text(&c, &row_css).await;
    for want in [
        "ci-export",
        "Nightly export job",
        "Branches: development",
        "Aliases: deploy",
        "Read",
        "days left",
        "Expires soon",
        "Email notice",
        "5 read / 2 write per second",
        "Enabled",
    ] {
        assert!(row.contains(want), "row lacks {want:?}: {row}");
    }
    assert!(!row.contains("Write"), "a read-only token: {row}");

    // --- A developer sees the stack but cannot manage its tokens: the API's 403.
    sign_out(&c).await;
    assert_eq!(c.execute("return document.getElementById('token-rows').children.length;", vec![]).await.unwrap(), 0);
    sign_in(&c, BOB).await;
    until(&c, "the stack list", "document.querySelector('.stack-card')").await;
    assert!(text(&c, ".stack-card").await.contains("developer"));
    open_stack(&c).await;
    until(&c, "the API's refusal", "!document.getElementById('tokens-error').hidden").await;
    assert!(text(&c, "#tokens-error").await.contains("Access denied"), "{}", text(&c, "#tokens-error").await);
    assert!(!c.find(Locator::Css("#new-token")).await.unwrap().is_enabled().await.unwrap());
    assert_eq!(c.execute("return document.querySelectorAll('#token-rows tr').length;", vec![]).await.unwrap(), 0);
    sign_out(&c).await;

    // --- The 31st token: 27 more through the API (30 in all), then one in the form. One
    // expires at an instant, not a date, and its branch entry's acl says no read: the
    // form shows neither as stored.
    let instant = "2099-06-30T18:00:00+05:00";
    let odd_scope = json!([{"module": "$all", "acl": {"read": true}},
                           {"module": "branch", "branches": ["main"], "acl": {"read": false}}]);
    let odd = json!({"token": {"name": "instant", "description": "d", "scope": odd_scope, "expires_on": instant}});
    let (status, _, odd) = http(gw, "POST", TOKENS, &owner(), &odd.to_string()).await;
    assert_eq!(status, 201, "{odd}");
    let odd: Value = serde_json::from_str(&odd).unwrap();
    let odd_uid = odd["token"]["uid"].as_str().unwrap().to_owned();
    for i in 0..26 {
        let (status, _, body) =
            http(gw, "POST", TOKENS, &owner(), &api_token(&format!("bulk-{i:02}"), main_only.clone())).await;
        assert_eq!(status, 201, "{body}");
    }
    sign_in(&c, ALICE).await;
    open_stack(&c).await;
    until(&c, "thirty tokens", "document.querySelectorAll('#token-rows tr').length === 30").await;
    click(&c, "#new-token").await;
    until(&c, "the create form", "document.getElementById('token-dialog').open").await;
    type_into(&c, "#f-name", "one-too-many").await;
    click(&c, "#token-submit").await;
    until(&c, "the cap error", "!document.getElementById('err-form').hidden").await;
    let cap = text(&c, "#err-form").await;
    assert!(cap.contains("at most 30 management tokens"), "{cap}");
    // Escape closes the dialog and focus goes back to the button that opened it.
    c.find(Locator::Css("#f-name")).await.unwrap().send_keys("\u{E00C}").await.unwrap();
    until(&c, "the form closed", "!document.getElementById('token-dialog').open").await;
    until(&c, "focus back on the opener", "document.activeElement.id === 'new-token'").await;
    let (_, _, list) = http(gw, "GET", TOKENS, &owner(), "").await;
    assert_eq!(serde_json::from_str::<Value>(&list).unwrap()["tokens"].as_array().unwrap().len(), 30);

    // --- Edit: the form comes back filled in; what is not changed stays.
    click(&c, &format!("{row_css} button[data-action='edit']")).await;
    until(&c, "the edit form", "document.getElementById('token-dialog').open").await;
    assert_eq!(value(&c, "#f-name").await, "ci-export");
    assert_eq!(value(&c, "#f-expires-on").await, soon);
    assert_eq!(value(&c, "#f-rate-read").await, "5");
    assert!(c.find(Locator::Css("#f-alias-deploy")).await.unwrap().is_selected().await.unwrap());
    type_into(&c, "#f-description", "Nightly export job, edited").await;
    click(&c, "#token-submit").await;
    until(&c, "the edit saved", &format!("document.querySelector(\"{row_css}\").innerText.includes('edited')")).await;
    let (_, _, shown) = http(gw, "GET", &format!("{TOKENS}/{uid}"), &owner(), "").await;
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["token"]["scope"], made["scope"]);
    assert_eq!(shown["token"]["rate_limit"], made["rate_limit"]);
    assert_eq!(shown["token"]["expires_on"], json!(soon));
    assert_eq!(shown["token"]["is_email_notification_enabled"], json!(true));
    // The list as reloaded: ci-export's uses through the gateway are counted.
    assert!(text(&c, &row_css).await.contains("Last used"));
    shot(&c, "list").await;

    // --- Only what was changed is sent: editing the description of the token that
    // expires at an instant keeps the instant and its scope as stored (the forty-first
    // probe saw the expiry cut to the date and the acl turned on). The form says so.
    let odd_css = format!("tr[data-uid='{odd_uid}']");
    assert!(text(&c, &odd_css).await.contains(instant));
    click(&c, &format!("{odd_css} button[data-action='edit']")).await;
    until(&c, "the edit form", "document.getElementById('token-dialog').open").await;
    assert!(text(&c, "#expiry-kept").await.contains(instant), "{}", text(&c, "#expiry-kept").await);
    let kept_shown = "return !document.getElementById('expiry-kept').hidden;";
    click(&c, "#f-expiry-never").await;
    assert_eq!(c.execute(kept_shown, vec![]).await.unwrap(), json!(false), "Never replaces the instant");
    click(&c, "#f-expiry-date").await;
    assert_eq!(c.execute(kept_shown, vec![]).await.unwrap(), json!(true));
    type_into(&c, "#f-description", "edited in the console").await;
    click(&c, "#token-submit").await;
    until(&c, "the edit saved", &format!("document.querySelector(\"{odd_css}\").innerText.includes('edited in the')"))
        .await;
    let (_, _, kept) = http(gw, "GET", &format!("{TOKENS}/{odd_uid}"), &owner(), "").await;
    let kept: Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(kept["token"]["description"], json!("edited in the console"));
    assert_eq!(kept["token"]["expires_on"], json!(instant));
    assert_eq!(kept["token"]["scope"], odd["token"]["scope"]);
    // A scope change keeps the branch entry's stored acl, which the form does not show.
    click(&c, &format!("{odd_css} button[data-action='edit']")).await;
    until(&c, "the edit form", "document.getElementById('token-dialog').open").await;
    click(&c, "#f-branch-development").await;
    click(&c, "#token-submit").await;
    until(&c, "the edit saved", &format!("document.querySelector(\"{odd_css}\").innerText.includes('development')"))
        .await;
    let (_, _, widened) = http(gw, "GET", &format!("{TOKENS}/{odd_uid}"), &owner(), "").await;
    let widened: Value = serde_json::from_str(&widened).unwrap();
    let branch = widened["token"]["scope"].as_array().unwrap().iter().find(|e| e["module"] == "branch").unwrap();
    assert_eq!(branch["branches"], json!(["main", "development"]), "{widened}");
    let stored = odd["token"]["scope"].as_array().unwrap().iter().find(|e| e["module"] == "branch").unwrap();
    assert_eq!(branch["acl"], stored["acl"], "{widened}");
    assert_eq!(widened["token"]["expires_on"], json!(instant));
    // Saved with nothing changed: nothing is sent.
    click(&c, &format!("{odd_css} button[data-action='edit']")).await;
    until(&c, "the edit form", "document.getElementById('token-dialog').open").await;
    click(&c, "#token-submit").await;
    until(&c, "the form closed", "!document.getElementById('token-dialog').open").await;
    assert!(text(&c, "#notice").await.contains("Nothing changed"));
    let (_, _, again) = http(gw, "GET", &format!("{TOKENS}/{odd_uid}"), &owner(), "").await;
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["token"]["updated_at"], widened["token"]["updated_at"]);

    // --- Suspend and resume (the `enabled` field), with the usage counters.
    click(&c, &format!("{row_css} button[data-action='suspend']")).await;
    until(&c, "suspended", &format!("document.querySelector(\"{row_css}\").innerText.includes('Suspended')")).await;
    let row = text(&c, &row_css).await;
    assert!(row.contains("2 forwarded · 2 refused"), "usage counters: {row}");
    assert_eq!(cma(gw, "GET", &secret, "development").await, 401);
    click(&c, &format!("{row_css} button[data-action='resume']")).await;
    until(&c, "resumed", &format!("document.querySelector(\"{row_css}\").innerText.includes('Enabled')")).await;
    assert_eq!(cma(gw, "GET", &secret, "development").await, 200);

    // --- Regenerate: confirmation, then the one-time window again with a new secret.
    click(&c, &format!("{row_css} button[data-action='regenerate']")).await;
    until(&c, "the confirmation", "document.getElementById('confirm-dialog').open").await;
    click(&c, "#confirm-ok").await;
    until(&c, "the one-time window", "document.getElementById('secret-dialog').open").await;
    let renewed = value(&c, "#secret-token").await;
    assert!(renewed.starts_with("cs") && renewed != secret);
    // Escape closes it too, and the secret goes with it just the same.
    c.find(Locator::Css("#secret-token")).await.unwrap().send_keys("\u{E00C}").await.unwrap();
    until(&c, "the window closed", "!document.getElementById('secret-dialog').open").await;
    assert!(!everything_in_the_page(&c).await.contains(&renewed), "the secret is still in the page");
    assert_eq!(cma(gw, "GET", &secret, "development").await, 401);
    assert_eq!(cma(gw, "GET", &renewed, "development").await, 200);

    // --- Delete, after a confirmation; cancelling it first changes nothing.
    click(&c, &format!("{row_css} button[data-action='delete']")).await;
    until(&c, "the confirmation", "document.getElementById('confirm-dialog').open").await;
    assert!(text(&c, "#confirm-text").await.contains("cannot be undone"));
    click(&c, "#confirm-cancel").await;
    until(&c, "the confirmation closed", "!document.getElementById('confirm-dialog').open").await;
    assert_eq!(cma(gw, "GET", &renewed, "development").await, 200);
    click(&c, &format!("{row_css} button[data-action='delete']")).await;
    until(&c, "the confirmation", "document.getElementById('confirm-dialog').open").await;
    click(&c, "#confirm-ok").await;
    until(&c, "the row gone", &format!("!document.querySelector(\"{row_css}\")")).await;
    assert!(text(&c, "#notice").await.contains("deleted successfully"));
    assert_eq!(cma(gw, "GET", &renewed, "development").await, 401);

    // --- A narrow screen: nothing wider than the viewport.
    c.set_window_size(390, 844).await.unwrap();
    let overflow = c
        .execute("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", vec![])
        .await
        .unwrap();
    assert!(overflow.as_i64().unwrap() <= 0, "the page scrolls sideways on a narrow screen: {overflow}");
    c.execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
    shot(&c, "narrow").await;

    c.close().await.unwrap();
    running.shutdown().await;
}

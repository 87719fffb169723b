//! A property of the forwarding stage, over random header sets sent to the real
//! server on raw sockets (so every spelling arrives as written): names in random
//! case and with `-` or `_`, duplicates, and `Connection` lists.
//!
//! Either the gateway refuses the request (400) and the backend receives nothing, or
//! the backend receives the authorised `api_key` exactly once, at most one `branch`
//! (the authorised one), one copy of each field the gateway sets (with the gateway's
//! value), and no field that is stripped, spoofable or listed by `Connection`, in any
//! spelling. Which of the two happens is predicted by a model written here, apart
//! from the gateway's code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use proptest::prelude::*;
use std::sync::OnceLock;

const PATH: &str = "/v3/content_types";

/// Names the gateway strips in every spelling (hop-by-hop, gateway-only, reinterpreting).
const STRIPPED: [&str; 20] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "x-stackgate-access",
    "x-stackgate-token-uid",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-request-id",
    "forwarded",
    "x-real-ip",
    "x-http-method-override",
    "x-original-url",
    "authtoken",
    "proxy",
    "x-original-uri",
    "x-original-host",
    "remote-user",
    "x-auth-request-user",
];
/// What the gateway adds itself (forward_token = false): exactly one copy each.
const GATEWAY_SET: [&str; 5] =
    ["x-forwarded-for", "x-forwarded-proto", "x-request-id", "x-stackgate-token-uid", "x-stackgate-access"];
/// Harmless names a client may send and list in `Connection`.
const OWN: [&str; 3] = ["x-custom", "accept-language", "x-trace"];
/// Names `Connection` may not list.
const PROTECTED: [&str; 8] =
    ["api-key", "branch", "authorization", "host", "content-length", "x-stackgate-access", "x-forwarded-for", "expect"];

fn fold(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// A name in a random spelling: each letter's case and each `-` drawn at random.
fn spelling(name: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<(bool, bool)>(), name.len()).prop_map(move |coins| {
        name.chars()
            .zip(coins)
            .map(|(c, (upper, underscore))| match c {
                '-' if underscore => '_',
                c if upper => c.to_ascii_uppercase(),
                c => c,
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
struct Case {
    fields: Vec<(String, String)>,
    connection: Vec<String>,
}

fn case() -> impl Strategy<Value = Case> {
    let stripped = proptest::sample::select(&STRIPPED[..]).prop_flat_map(spelling);
    let own = proptest::sample::select(&OWN[..]).prop_flat_map(spelling);
    let protected = proptest::sample::select(&PROTECTED[..]).prop_flat_map(spelling);
    let extra = prop_oneof![
        4 => stripped.prop_map(|n| (n, "spoofed".to_owned())),
        2 => own.prop_map(|n| (n, "mine".to_owned())),
        1 => spelling("api-key").prop_map(|n| (n, "blt1111111111111111".to_owned())),
        1 => Just(("api_key".to_owned(), "blt1111111111111111".to_owned())),
        1 => spelling("branch").prop_map(|n| (n, "main".to_owned())),
        1 => spelling("content-length").prop_filter("a real length frames the body", |n| n.contains('_'))
            .prop_map(|n| (n, "99".to_owned())),
        1 => spelling("transfer-encoding").prop_filter("a real coding frames the body", |n| n.contains('_'))
            .prop_map(|n| (n, "chunked".to_owned())),
    ];
    let listed = prop_oneof![
        3 => proptest::sample::select(&OWN[..]).prop_flat_map(spelling),
        1 => protected,
    ];
    (proptest::collection::vec(extra, 0..6), proptest::collection::vec(listed, 0..3), any::<bool>()).prop_map(
        |(mut fields, connection, with_branch)| {
            fields.insert(0, ("api_key".to_owned(), API_KEY.to_owned()));
            fields.insert(1, ("authorization".to_owned(), RW.to_owned()));
            if with_branch {
                fields.push(("branch".to_owned(), "main".to_owned()));
            }
            Case { fields, connection }
        },
    )
}

/// Whether the gateway must refuse the request: a credential field (`api_key`,
/// `authtoken`, `branch`) twice or in another spelling, or a `Connection` list naming a
/// protected field.
fn must_refuse(case: &Case) -> bool {
    let count = |canonical: &str| case.fields.iter().filter(|(n, _)| fold(n) == canonical).count();
    let alias = case.fields.iter().any(|(n, _)| fold(n) == "api-key" && n != "api_key");
    let listed = case.connection.iter().any(|n| PROTECTED.contains(&fold(n).as_str()));
    alias || count("api-key") > 1 || count("authtoken") > 1 || count("branch") > 1 || listed
}

struct World {
    rt: tokio::runtime::Runtime,
    env: Env,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let env = rt.block_on(Env::start());
        World { rt, env }
    })
}

fn check(case: &Case, method: &str, body: &str) -> Result<(), TestCaseError> {
    // The two properties share one gateway and backend: one request at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let w = world();
    let mut req = format!("{method} {PATH} HTTP/1.1\r\nHost: gw\r\n");
    for (n, v) in &case.fields {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    let mut connection = vec!["close".to_owned()];
    connection.extend(case.connection.iter().cloned());
    req.push_str(&format!("Connection: {}\r\n", connection.join(", ")));
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\nContent-Type: application/json\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    w.env.backend.clear();
    let (status, text) = w.rt.block_on(raw(w.env.gateway.addr, req.as_bytes()));
    let seen = w.env.backend.seen();
    if must_refuse(case) {
        prop_assert_eq!(status, 400, "{}", text);
        prop_assert!(seen.is_empty());
        return Ok(());
    }
    prop_assert_eq!(status, 200, "{}", text);
    prop_assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    let named = |canonical: &str| headers.iter().filter(|(n, _)| fold(n.as_str()) == canonical).collect::<Vec<_>>();
    let api_keys = named("api-key");
    prop_assert_eq!(api_keys.len(), 1, "{:?}", headers);
    prop_assert_eq!(api_keys[0].0.as_str(), "api_key");
    prop_assert_eq!(api_keys[0].1, API_KEY);
    let branches = named("branch");
    prop_assert!(branches.len() <= 1 && branches.iter().all(|(_, v)| *v == "main"), "{:?}", headers);
    for name in STRIPPED.iter().chain(["transfer-encoding", "authorization"].iter()) {
        let copies = named(name);
        if GATEWAY_SET.contains(name) {
            prop_assert_eq!(copies.len(), 1, "{} {:?}", name, headers);
            prop_assert_ne!(copies[0].1, "spoofed");
        } else {
            prop_assert!(copies.is_empty(), "{} reached the backend: {:?}", name, headers);
        }
    }
    for name in &case.connection {
        prop_assert!(named(&fold(name)).is_empty(), "{} was listed in Connection: {:?}", name, headers);
    }
    let lengths = named("content-length");
    prop_assert!(lengths.iter().all(|(n, v)| n.as_str() == "content-length" && *v == body.len().to_string().as_str()));
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(192)
}

proptest! {
    // 192 cases by default; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// The gateway's own HTTP/1 loop (no body).
    #[test]
    fn forwarded_fields_hold_exactly_what_was_authorised_without_a_body(case in case()) {
        check(&case, "GET", "")?;
    }

    /// hyper's HTTP/1 (a body).
    #[test]
    fn forwarded_fields_hold_exactly_what_was_authorised_with_a_body(case in case()) {
        check(&case, "POST", "{}")?;
    }
}

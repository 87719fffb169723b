//! The guard's gate in `decide`: asked about the credential the route checks, before
//! anything is looked up.

use super::*;
use crate::ratelimit::RateClock;
use crate::token::hash_secret;

const SECRET: &str = "csaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const WRONG: &str = "csbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn snapshot() -> Snapshot {
    let text = format!(
        r#"
[upstream]
url = "http://127.0.0.1:9"
[[organizations]]
uid = "o"
[[stacks]]
api_key = "k"
organization = "o"
[[stacks.tokens]]
uid = "a"
name = "a"
secret_sha256 = "{}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }}, {{ module = "branch", branches = ["main"] }}]
"#,
        hex::encode(hash_secret(SECRET.as_bytes())),
    );
    let config = crate::config::from_str(&text).unwrap();
    let upstream = crate::proxy::UpstreamClient::new(&config.upstream).unwrap();
    Snapshot::build(Arc::new(config), &[], None, &RateClock::fake(), upstream)
}

fn request(path: &str, fields: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::get(path).header("host", "gw");
    for (name, value) in fields {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

/// A path, its fields, and the kind of credential the gate is to see.
type Case = (&'static str, &'static [(&'static str, &'static str)], &'static str);

/// What a gate that refuses everything saw, and what `decide` answered.
fn gated(snap: &Snapshot, parts: &Parts) -> (Option<String>, Result<(), GatewayError>) {
    let mut seen = None;
    let gate = |p: Presented<'_>| {
        seen = Some(format!("{p:?}"));
        Err(GatewayError::Throttled { retry_after: 7 })
    };
    let answer = decide(snap, parts, false, 0, &mut Facts::default(), gate).map(|_| ());
    (seen, answer)
}

/// Every credential the gateway would check is put to the gate first, right or wrong,
/// for a stack that exists or not: a refusing gate answers them all, which is what
/// makes a cool-down's answer cost the same for each (no store lookup for any).
#[test]
fn the_gate_is_asked_before_any_credential_is_looked_up() {
    let snap = snapshot();
    let entries = "/v3/content_types/blog/entries";
    let tokens = "/v3/stacks/management_tokens";
    let cases: [Case; 7] = [
        (entries, &[("api_key", "k"), ("authorization", SECRET)], "Token"),
        (entries, &[("api_key", "k"), ("authorization", WRONG)], "Token"),
        (entries, &[("api_key", "nope"), ("authorization", SECRET)], "Token"),
        (entries, &[("authorization", SECRET)], "Token"),
        (entries, &[("api_key", "k")], "Missing"),
        (tokens, &[("api_key", "nope"), ("authtoken", "someone")], "User"),
        (tokens, &[("api_key", "k")], "Missing"),
    ];
    for (path, fields, kind) in cases {
        let (seen, answer) = gated(&snap, &request(path, fields));
        assert!(seen.as_deref().is_some_and(|s| s.starts_with(kind)), "{fields:?}: {seen:?}");
        assert!(matches!(answer, Err(GatewayError::Throttled { retry_after: 7 })), "{fields:?}: {answer:?}");
    }
    // Not vacuous: an open gate lets the lookups answer them apart.
    let open = |fields: &[(&str, &str)]| {
        decide(&snap, &request(entries, fields), false, 0, &mut Facts::default(), |_| Ok(())).map(|_| ())
    };
    assert!(open(&[("api_key", "k"), ("authorization", SECRET), ("branch", "main")]).is_ok());
    assert!(matches!(open(&[("api_key", "nope"), ("authorization", SECRET)]), Err(GatewayError::StackNotFound)));
    // A user session on a proxied path is the backend's to decide: no gate.
    let (seen, _) = gated(&snap, &request(entries, &[("api_key", "k"), ("authtoken", "someone")]));
    assert_eq!(seen, None);
}

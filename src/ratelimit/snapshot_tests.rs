//! Admission counts through whole snapshots, with a fake clock.

use super::*;
use crate::config;
use crate::pipeline::{classify, Module};
use crate::snapshot::Snapshot;
use crate::token::{hash_secret, Origin, RateLimit, TokenRecord};
use http::Method;

const A: &str = "csaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "csbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn cfg(org: &str, a_rate: Option<(u32, u32)>) -> config::Config {
    cfg_in("o", org, a_rate)
}

/// [`cfg`] with the one organisation (and its stack) under another uid.
fn cfg_in(org_uid: &str, org: &str, a_rate: Option<(u32, u32)>) -> config::Config {
    let rate = a_rate
        .map_or(String::new(), |(r, w)| format!("rate_limit = {{ read_per_second = {r}, write_per_second = {w} }}"));
    let text = format!(
        r#"
[upstream]
url = "http://127.0.0.1:9"
[[organizations]]
uid = "{org_uid}"
{org}
[[stacks]]
api_key = "k"
organization = "{org_uid}"
[[stacks.tokens]]
uid = "a"
name = "a"
secret_sha256 = "{a}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }}, {{ module = "branch", branches = ["main"] }}]
{rate}
[[stacks.tokens]]
uid = "b"
name = "b"
secret_sha256 = "{b}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }}, {{ module = "branch", branches = ["main"] }}]
"#,
        a = hex::encode(hash_secret(A.as_bytes())),
        b = hex::encode(hash_secret(B.as_bytes())),
    );
    config::from_str(&text).unwrap()
}

fn snap(c: config::Config, prev: Option<&Arc<Snapshot>>, clock: &RateClock) -> Arc<Snapshot> {
    let upstream = crate::proxy::UpstreamClient::new(&c.upstream).unwrap();
    Arc::new(Snapshot::build(Arc::new(c), &[], prev.cloned(), clock, upstream))
}

fn op(method: Method, path: &str) -> Operation {
    classify(&method, path).unwrap()
}

fn admitted(s: &Snapshot, secret: &str, op: &Operation, tries: u32) -> u32 {
    let token = s.token(&hash_secret(secret.as_bytes())).unwrap();
    (0..tries).filter(|_| check(&token.buckets, op).is_ok()).count() as u32
}

fn read() -> Operation {
    op(Method::GET, "/v3/content_types")
}

fn write() -> Operation {
    op(Method::POST, "/v3/content_types")
}

#[test]
fn token_only() {
    let clock = RateClock::fake();
    let s = snap(cfg("read_per_second = 100", Some((3, 3))), None, &clock);
    assert_eq!(admitted(&s, A, &read(), 50), 3);
}

#[test]
fn organisation_only() {
    let clock = RateClock::fake();
    let s = snap(cfg("read_per_second = 4", None), None, &clock);
    assert_eq!(admitted(&s, A, &read(), 50), 4);
    assert_eq!(admitted(&s, B, &read(), 50), 0, "same organisation bucket");
}

#[test]
fn token_then_organisation() {
    let clock = RateClock::fake();
    let s = snap(cfg("read_per_second = 6", Some((3, 3))), None, &clock);
    // A is stopped by its own bucket: its 47 refusals must not spend the organisation's.
    assert_eq!(admitted(&s, A, &read(), 50), 3);
    assert_eq!(admitted(&s, B, &read(), 50), 3);
    let err = check(&s.token(&hash_secret(A.as_bytes())).unwrap().buckets, &read()).unwrap_err();
    let GatewayError::RateLimited { info, .. } = err else { panic!("{err:?}") };
    assert_eq!((info.name, info.limit), ("token-read", 3));
    let err = check(&s.token(&hash_secret(B.as_bytes())).unwrap().buckets, &read()).unwrap_err();
    let GatewayError::RateLimited { info, retry_after } = err else { panic!("{err:?}") };
    assert_eq!((info.name, info.limit, retry_after), ("org-read", 6, 1));
}

#[test]
fn refill_after_waiting() {
    let clock = RateClock::fake();
    let s = snap(cfg("read_per_second = 100", Some((5, 5))), None, &clock);
    assert_eq!(admitted(&s, A, &read(), 50), 5);
    clock.advance(Duration::from_millis(400));
    assert_eq!(admitted(&s, A, &read(), 50), 2);
    clock.advance(Duration::from_secs(10));
    assert_eq!(admitted(&s, A, &read(), 50), 5);
}

#[test]
fn read_and_write_are_independent() {
    let clock = RateClock::fake();
    let s = snap(cfg("read_per_second = 100\nwrite_per_second = 100", Some((2, 4))), None, &clock);
    assert_eq!(admitted(&s, A, &read(), 50), 2);
    assert_eq!(admitted(&s, A, &write(), 50), 4);
    assert_eq!(admitted(&s, A, &read(), 50), 0);
}

#[test]
fn bulk_bucket() {
    let clock = RateClock::fake();
    let s = snap(cfg("write_per_second = 100\nbulk_per_second = 2", None), None, &clock);
    let bulk = op(Method::POST, "/v3/bulk/publish");
    assert_eq!(bulk.module, Module::Bulk);
    assert_eq!(admitted(&s, A, &bulk, 50), 2);
    assert_eq!(admitted(&s, B, &bulk, 50), 0, "bulk bucket is the organisation's");
    assert_eq!(admitted(&s, A, &write(), 10), 10, "plain writes are not bulk");
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&s, B, &bulk, 50), 2);
}

#[test]
fn burst_option() {
    let clock = RateClock::fake();
    let s = snap(cfg("read_per_second = 2\nburst = 7", None), None, &clock);
    assert_eq!(admitted(&s, A, &read(), 50), 7);
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&s, A, &read(), 50), 2);
}

#[test]
fn lowered_organisation_limit_clamps_custom_rates() {
    let clock = RateClock::fake();
    let c = cfg("read_per_second = 4", None);
    // A stored token created when the organisation allowed more.
    let stored = TokenRecord {
        uid: "c".into(),
        stack: "k".into(),
        name: "c".into(),
        description: String::new(),
        secret_sha256: hash_secret(b"csc"),
        scope: c.stacks[0].tokens[0].scope.clone(),
        expires_on: None,
        is_email_notification_enabled: false,
        rate_limit: Some(RateLimit { read_per_second: 9, write_per_second: 9 }),
        created_by: String::new(),
        updated_by: String::new(),
        created_at: String::new(),
        updated_at: String::new(),
        expiry_notified_at: None,
        enabled: true,
        previous_secret: None,
        origin: Origin::Store,
    };
    let upstream = crate::proxy::UpstreamClient::new(&c.upstream).unwrap();
    let s = Snapshot::build(Arc::new(c), &[stored], None, &clock, upstream);
    let token = s.token(&hash_secret(b"csc")).unwrap();
    assert_eq!(token.buckets.read.own().unwrap().rate(), 4, "clamped to the organisation's");
    assert_eq!(admitted(&s, "csc", &read(), 50), 4);
}

#[test]
fn reload_keeps_state_and_rate_change_resets_it() {
    let clock = RateClock::fake();
    let s1 = snap(cfg("read_per_second = 100", Some((3, 3))), None, &clock);
    assert_eq!(admitted(&s1, A, &read(), 50), 3);
    let s2 = snap(cfg("read_per_second = 100", Some((3, 3))), Some(&s1), &clock);
    assert_eq!(admitted(&s2, A, &read(), 50), 0, "same rate: same bucket, still empty");
    let s3 = snap(cfg("read_per_second = 100", Some((4, 3))), Some(&s2), &clock);
    assert_eq!(admitted(&s3, A, &read(), 50), 4, "new rate: new bucket");
    // Organisation buckets: kept when unchanged, new when changed.
    let s4 = snap(cfg("read_per_second = 5", None), None, &clock);
    assert_eq!(admitted(&s4, B, &read(), 50), 5);
    let s5 = snap(cfg("read_per_second = 5", None), Some(&s4), &clock);
    assert_eq!(admitted(&s5, B, &read(), 50), 0);
    let s6 = snap(cfg("read_per_second = 6", None), Some(&s5), &clock);
    assert_eq!(admitted(&s6, B, &read(), 50), 6);
}

/// A token's own bucket belongs to its organisation too (its Redis key names it): a
/// stack moved to another organisation gives its tokens new buckets.
#[test]
fn a_stack_moved_to_another_organisation_gets_new_token_buckets() {
    let clock = RateClock::fake();
    let s1 = snap(cfg_in("o", "read_per_second = 100", Some((3, 3))), None, &clock);
    assert_eq!(admitted(&s1, A, &read(), 50), 3);
    let s2 = snap(cfg_in("p", "read_per_second = 100", Some((3, 3))), Some(&s1), &clock);
    let [old, new] =
        [&s1, &s2].map(|s| Arc::clone(s.token(&hash_secret(A.as_bytes())).unwrap().buckets.read.own().unwrap()));
    assert!(!Arc::ptr_eq(&old, &new), "a new bucket for the new organisation");
    assert_eq!(admitted(&s2, A, &read(), 50), 3);
}

#[test]
fn headers_report_the_bucket_closest_to_empty() {
    let clock = RateClock::fake();
    let s = snap(cfg("read_per_second = 10", Some((3, 3))), None, &clock);
    let token = s.token(&hash_secret(A.as_bytes())).unwrap();
    let info = check(&token.buckets, &read()).unwrap();
    assert_eq!((info.name, info.limit, info.remaining), ("token-read", 3, 2));
    assert_eq!(info.policy, "\"token-read\";q=3;w=1, \"org-read\";q=10;w=1");
}

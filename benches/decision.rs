//! Criterion benches of the hot path: (a) one rate-limit check, (b) the whole
//! synchronous decision (normalize, classify, authenticate, authorize, rate limit)
//! on a snapshot of 100,000 tokens, (c) its parts, (d) the strict JSON parse of a body a
//! rule reads, (e) the workflow rule over a body of about 1 MiB of long keys (what a
//! client can make it read before its rate limit refuses it). Run:
//! `cargo bench --bench decision`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use stackgate::pipeline::{classify, decide, Decision, Facts, Principal, Route};
use stackgate::ratelimit::{self, RateClock};
use stackgate::snapshot::Snapshot;
use stackgate::token::hash_secret;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKENS: usize = 100_000;
const STACKS: usize = 3_334;

fn snapshot(clock: &RateClock, custom: bool) -> Snapshot {
    let cfg = support::config(STACKS);
    let stored = support::tokens(TOKENS, STACKS, custom);
    let upstream = stackgate::proxy::UpstreamClient::new(&cfg.upstream).unwrap();
    Snapshot::build(Arc::new(cfg), &stored, None, clock, upstream)
}

/// Runs `f` `iters` times, in chunks smaller than every bucket's burst; between
/// chunks (untimed) the fake clock jumps a second so the buckets refill. Every timed
/// call is therefore an admitted one, the common case.
fn refilled(clock: &RateClock, iters: u64, mut f: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        clock.advance(Duration::from_secs(1));
        let n = (iters - done).min(50_000);
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        total += start.elapsed();
        done += n;
    }
    total
}

fn rate_limit_check(c: &mut Criterion) {
    let clock = RateClock::fake();
    let snap = snapshot(&clock, true);
    let token = snap.token(&hash_secret(support::secret(42).as_bytes())).unwrap();
    let op = classify(&http::Method::GET, "/v3/content_types/blog/entries").unwrap();
    c.bench_function("rate_limit_check (token + organisation bucket)", |b| {
        b.iter_custom(|iters| {
            refilled(&clock, iters, || assert!(black_box(ratelimit::check(&token.buckets, &op)).is_ok()))
        })
    });
}

fn whole_decision(c: &mut Criterion) {
    let clock = RateClock::fake();
    let snap = snapshot(&clock, true);
    let i = 77_777;
    let (parts, _) = Request::get("/v3/content_types/blog_post/entries/blt0000000000000e01?locale=en-us")
        .header("host", "127.0.0.1:8080")
        .header("api_key", support::api_key(i % STACKS))
        .header("authorization", support::secret(i))
        .header("branch", "deploy")
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts();
    c.bench_function("decide (100k tokens: normalize..rate limit)", |b| {
        b.iter_custom(|iters| {
            refilled(&clock, iters, || {
                let mut facts = Facts::default();
                let d = decide(&snap, &parts, false, 1_700_000_000, &mut facts, |_| Ok(()));
                assert!(d.is_ok(), "{:?}", d.as_ref().err());
                // The local backend's charge, which the server runs right after decide.
                if let Ok(Decision { route: Route::Proxy { principal: Principal::Token(token) }, op, .. }) = &d {
                    assert!(ratelimit::check(&token.buckets, op).is_ok());
                }
                let _ = black_box(d);
            })
        })
    });
}

fn parts_of_the_decision(c: &mut Criterion) {
    let secret = support::secret(77_777);
    c.bench_function("sha256 of a token secret", |b| b.iter(|| black_box(hash_secret(black_box(secret.as_bytes())))));
    let uri: http::Uri = "/v3/content_types/blog_post/entries/blt0000000000000e01?locale=en-us".parse().unwrap();
    c.bench_function("normalize", |b| {
        b.iter(|| stackgate::pipeline::normalize(black_box(&uri), http::Version::HTTP_11, &[]).map(|t| t.path.len()))
    });
    c.bench_function("classify", |b| {
        b.iter(|| classify(&http::Method::GET, black_box("/v3/content_types/blog_post/entries/blt0000000000000e01")))
    });
    c.bench_function("normalize + classify", |b| {
        b.iter(|| {
            let t = stackgate::pipeline::normalize(black_box(&uri), http::Version::HTTP_11, &[]).unwrap();
            black_box(classify(&http::Method::GET, &t.path).unwrap())
        })
    });
}

/// The load run's write body (about 2 KiB, four keys) and an entry of about 32 KiB with
/// many keys: 40 fields and 60 modular blocks of six keys each.
fn strict_json(c: &mut Criterion) {
    let small = serde_json::json!({"entry": {"title": "Hello world", "url": "/hello", "body": "x".repeat(1900)}});
    let mut entry = serde_json::Map::new();
    for i in 0..40 {
        entry.insert(format!("field_{i}"), serde_json::Value::String(format!("value {i} of the entry")));
    }
    let blocks: Vec<_> = (0..60)
        .map(|i| {
            serde_json::json!({"section": {"title": format!("Section {i}"), "body": "y".repeat(400),
                "image": {"uid": format!("blt{i:016x}")}, "links": [1, 2, 3], "flag": true}})
        })
        .collect();
    entry.insert("blocks".into(), serde_json::Value::Array(blocks));
    let large = serde_json::json!({ "entry": entry });
    for (name, value) in [("2 KiB, 4 keys", small), ("32 KiB, 462 keys", large)] {
        let body = serde_json::to_vec(&value).unwrap();
        c.bench_function(&format!("strict JSON parse ({name}, {} bytes)", body.len()), |b| {
            b.iter(|| black_box(stackgate::json::parse_strict(black_box(&body)).unwrap()))
        });
    }
}

/// The workflow rule (`inspect_body`: the strict parse, then every key read as the
/// rule's keys and for paths past its object) over bodies of about 1 MiB whose keys
/// make that reading work: long ASCII keys, runs of non-ASCII letters (read as any
/// letters), dotted paths of short parts, full-width letters.
fn body_rules_on_long_keys(c: &mut Criterion) {
    let op = classify(&http::Method::POST, "/v3/content_types/blog/entries/e1/workflow").unwrap();
    type Shape = (&'static str, usize, fn(usize) -> String);
    let shapes: [Shape; 4] = [
        ("ASCII keys", 11_000, |i| format!("{}{i}", "k".repeat(80))),
        ("non-ASCII runs", 8_000, |i| format!("é{}{i}", "xé".repeat(40))),
        ("dotted paths", 6_000, |i| format!("{}{i}", ["aé"; 40].join("."))),
        ("full-width letters", 4_000, |i| format!("{}{i}", "ｓ".repeat(80))),
    ];
    let mut group = c.benchmark_group("workflow rule, 1 MiB body");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, keys, key) in shapes {
        let mut body = String::from(r#"{"workflow":{"publishing_rule":{"status":0}}"#);
        for i in 0..keys {
            body.push_str(&format!(",{}:1", serde_json::Value::String(key(i))));
        }
        body.push('}');
        assert!(stackgate::pipeline::inspect_body(&op, body.as_bytes()).is_ok(), "{name}");
        group.bench_function(format!("{name} ({} bytes)", body.len()), |b| {
            b.iter(|| black_box(stackgate::pipeline::inspect_body(&op, black_box(body.as_bytes())).is_ok()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(60).measurement_time(Duration::from_secs(4));
    targets = rate_limit_check, whole_decision, parts_of_the_decision, strict_json, body_rules_on_long_keys
}
criterion_main!(benches);

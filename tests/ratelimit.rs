//! Rate limits against the real server, in real time (bounded to a few seconds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PATH: &str = "/v3/content_types";

#[derive(Default, Debug)]
struct Tally {
    ok: u32,
    limited: u32,
    other: u32,
}

/// `clients` concurrent loops sending GETs with `secret` for `secs` seconds.
async fn hammer(env: Arc<Env>, secret: &'static str, clients: usize, secs: u64) -> Tally {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let env = Arc::clone(&env);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let (status, headers, body) =
                    env.send("GET", PATH, &[("api_key", SMALL_API_KEY), ("authorization", secret)], "").await;
                match status.as_u16() {
                    200 => {
                        assert!(headers.contains_key("x-ratelimit-limit"));
                        assert!(headers.contains_key("x-ratelimit-remaining"));
                        assert!(headers.contains_key("ratelimit-policy"));
                        assert!(headers.contains_key("ratelimit"));
                        t.ok += 1;
                    }
                    429 => {
                        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                        assert!((1..=2).contains(&retry), "Retry-After {retry}");
                        assert_eq!(headers["x-ratelimit-remaining"], "0");
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        assert_eq!(v["error_code"], 429);
                        assert_eq!(
                            v["error_message"],
                            format!("Too many requests. Please retry after {retry} seconds.")
                        );
                        t.limited += 1;
                        // Pace a little so a 2-core machine is not just spinning.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => t.other += 1,
                }
            }
            t
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        total.ok += t.ok;
        total.limited += t.limited;
        total.other += t.other;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_token_rate_holds_under_concurrency() {
    let env = Arc::new(Env::start().await);
    let t = hammer(Arc::clone(&env), RATED, 4, 3).await;
    let burst = RATED_RATE;
    assert!((15..=15 + burst).contains(&t.ok), "{t:?}");
    assert!(t.limited > 0 && t.other == 0, "{t:?}");
    assert_eq!(env.backend.seen().len() as u32, t.ok, "429s are never forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_one_organisation_share_its_bucket() {
    let env = Arc::new(Env::start().await);
    // RATED (own 5/s) and SHARED (organisation default) together, org_small = 10/s.
    let (a, b) = tokio::join!(hammer(Arc::clone(&env), RATED, 2, 3), hammer(Arc::clone(&env), SHARED, 2, 3));
    assert!(a.ok <= 20, "RATED is held to its own 5/s: {a:?}");
    let total = a.ok + b.ok;
    assert!((30..=40).contains(&total), "together within the organisation's 10/s over 3 s: {a:?} {b:?}");
    assert!(a.other == 0 && b.other == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_bucket_state_and_a_rate_change_resets_it() {
    let env = Env::start().await;
    let send = || env.send("GET", PATH, &[("api_key", SMALL_API_KEY), ("authorization", RATED)], "");
    let mut ok = 0;
    for _ in 0..20 {
        if send().await.0.as_u16() == 200 {
            ok += 1;
        }
    }
    assert!((5..=6).contains(&ok), "burst of 5: {ok}");

    // Same config again: the emptied bucket is kept.
    let same = stackgate::config::from_str(&config_text(env.backend.addr, "", "")).unwrap();
    env.gateway.gateway.install(same).await.unwrap();
    assert_eq!(send().await.0.as_u16(), 429, "reload must not refill the bucket");

    // A changed rate starts a fresh bucket.
    let text = config_text(env.backend.addr, "", "")
        .replace("read_per_second = 5, write_per_second = 5", "read_per_second = 4, write_per_second = 5");
    env.gateway.gateway.install(stackgate::config::from_str(&text).unwrap()).await.unwrap();
    let (status, headers, _) = send().await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(headers["x-ratelimit-limit"], "4");
}

/// The rate limit is charged after the body rules (stages 5 then 6): requests a rule
/// refuses spend no budget, and they are answered 403, not 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_a_body_rule_spend_no_budget() {
    let env = Env::start().await;
    let fields = [("api_key", SMALL_API_KEY), ("authorization", RATED), ("content-type", "application/json")];
    let path = "/v3/workflows/publishing_rules";
    let approvers = r#"{"publishing_rule":{"approvers":{"users":["u1"]}}}"#;
    for i in 0..10 {
        let (status, _, _) = env.send("POST", path, &fields, approvers).await;
        assert_eq!(status.as_u16(), 403, "refused request {i}");
    }
    for i in 0..RATED_RATE {
        let (status, _, _) = env.send("POST", path, &fields, r#"{"publishing_rule":{"actions":[]}}"#).await;
        assert_eq!(status.as_u16(), 200, "allowed request {i}: the refused ones spent budget");
    }
}

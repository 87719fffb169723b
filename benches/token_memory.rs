//! Memory cost per token: builds a snapshot of 1,000,000 tokens over 33,334 stacks and
//! reports the resident-set growth per token (record + scope + buckets + index entry).
//! Run: `cargo bench --bench token_memory`. Linux only (reads /proc/self/status).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support.rs"]
mod support;

use stackgate::ratelimit::RateClock;
use stackgate::snapshot::Snapshot;
use std::sync::Arc;
use std::time::Instant;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this as a smoke test.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke { 10_000 } else { 1_000_000 };
    let stacks = n / 30 + 1;
    let cfg = support::config(stacks);
    let clock = RateClock::monotonic();
    for custom in [false, true] {
        let stored = support::tokens(n, stacks, custom);
        let before = rss_kib();
        let started = Instant::now();
        let upstream = stackgate::proxy::UpstreamClient::new(&cfg.upstream).unwrap();
        let snap = Snapshot::build(Arc::new(cfg.clone()), &stored, None, &clock, upstream);
        let took = started.elapsed();
        let after = rss_kib();
        assert_eq!(snap.token_count(), n);
        let per_token = (after.saturating_sub(before) as f64 * 1024.0) / n as f64;
        println!(
            "{n} tokens over {stacks} stacks, {}: snapshot built in {:.2} s, RSS +{} MiB, {per_token:.0} bytes/token",
            if custom { "each with its own read+write buckets" } else { "on the organisation's buckets" },
            took.as_secs_f64(),
            (after.saturating_sub(before)) / 1024,
        );
        drop(snap);
    }
}

//! Per-token usage: how many requests each token had forwarded, refused and
//! rate-limited by this replica, and when it last authenticated.
//!
//! The counters are atomics on an `Arc<Usage>` that the token carries in the snapshot
//! and that every rebuild hands on to the token's next version (as rate buckets are),
//! so the request path counts with a relaxed add and no map lookup or lock. Counters
//! live in memory only (per replica, since start); `last_used_at` is also written to
//! the store by [`flush`] (every `[telemetry] usage_flush`), at most once per interval per
//! token, never per request.

use crate::store::TokenStore;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Never used: `last_used_at` is unset.
const NEVER: i64 = i64::MIN;

/// One token's usage counters.
#[derive(Debug)]
pub struct Usage {
    forwarded: AtomicU64,
    refused: AtomicU64,
    rate_limited: AtomicU64,
    /// Unix seconds of the last successful authentication ([`NEVER`] if none).
    last_used_at: AtomicI64,
    /// The `last_used_at` the store is known to have, so the flusher writes only tokens
    /// used since its last pass.
    flushed: AtomicI64,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            last_used_at: AtomicI64::new(NEVER),
            flushed: AtomicI64::new(NEVER),
        }
    }
}

/// What became of a request that authenticated as a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the backend (whatever the backend answered).
    Forwarded,
    /// Answered with an error by the gateway, other than a rate limit.
    Refused,
    /// Answered 429 by the rate limiter.
    RateLimited,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Forwarded, Outcome::Refused, Outcome::RateLimited];

    /// The metric label and API field name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Refused => "refused",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

impl Usage {
    /// Counts one request that authenticated at Unix time `now`. The time is stored
    /// only when it changed (once a second at most), so a busy token does not write
    /// the same cache line on every request.
    pub fn record(&self, outcome: Outcome, now: i64) {
        let counter = match outcome {
            Outcome::Forwarded => &self.forwarded,
            Outcome::Refused => &self.refused,
            Outcome::RateLimited => &self.rate_limited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.last_used_at.load(Ordering::Relaxed) < now {
            self.last_used_at.fetch_max(now, Ordering::Relaxed);
        }
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Forwarded => self.forwarded.load(Ordering::Relaxed),
            Outcome::Refused => self.refused.load(Ordering::Relaxed),
            Outcome::RateLimited => self.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// Unix seconds of the last successful authentication seen by this replica.
    pub fn last_used_at(&self) -> Option<i64> {
        Some(self.last_used_at.load(Ordering::Relaxed)).filter(|t| *t != NEVER)
    }

    /// The last use not yet written to the store, if any.
    fn unflushed(&self) -> Option<i64> {
        let at = self.last_used_at()?;
        (at > self.flushed.load(Ordering::Relaxed)).then_some(at)
    }

    fn mark_flushed(&self, at: i64) {
        self.flushed.fetch_max(at, Ordering::Relaxed);
    }
}

/// Writes every token's `last_used_at` that changed since the last pass to the store,
/// in one call. `tokens` are the snapshot's (uid, counters), a token once per secret
/// it has; tokens from the config file have no row, so theirs stays in memory.
pub async fn flush<'a>(tokens: impl Iterator<Item = (&'a str, &'a Arc<Usage>)>, store: &dyn TokenStore) {
    // Only the tokens used since the last pass are hashed (a regenerated token's two
    // entries share one `Usage`): a pass over a million idle tokens is a million loads.
    let mut batch = Vec::new();
    let mut flushed = Vec::new();
    {
        let mut seen = HashSet::new();
        for (uid, usage) in tokens {
            let Some(at) = usage.unflushed() else { continue };
            if seen.insert(Arc::as_ptr(usage)) {
                batch.push((uid.to_owned(), at));
                flushed.push((Arc::clone(usage), at));
            }
        }
    }
    if batch.is_empty() {
        return;
    }
    match store.record_last_used(&batch).await {
        Ok(()) => {
            for (usage, at) in flushed {
                usage.mark_flushed(at);
            }
        }
        // Kept unflushed: the next pass tries again.
        Err(e) => tracing::warn!(error = %e, tokens = batch.len(), "could not record token last use"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_remembers_the_latest_use() {
        let u = Usage::default();
        assert_eq!(u.last_used_at(), None);
        u.record(Outcome::Forwarded, 10);
        u.record(Outcome::Refused, 12);
        u.record(Outcome::RateLimited, 11);
        assert_eq!(Outcome::ALL.map(|o| u.count(o)), [1, 1, 1],);
        assert_eq!(u.last_used_at(), Some(12));
        assert_eq!(u.unflushed(), Some(12));
        u.mark_flushed(12);
        assert_eq!(u.unflushed(), None);
        u.record(Outcome::Forwarded, 13);
        assert_eq!(u.unflushed(), Some(13));
    }
}

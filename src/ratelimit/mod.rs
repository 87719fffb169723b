//! Stage 6: rate limiting (DESIGN.md sections 3 and 7), behind one trait,
//! [`RateLimit`], with two backends: this process's GCRA buckets from `governor`
//! (default, [`check`]) and Redis shared by every replica ([`redis::RedisLimiter`]).
//!
//! A token with a custom rate owns read and write buckets that live beside its record
//! in the snapshot (no keyed lookup on the hot path); every organisation owns read,
//! write and bulk buckets shared by all its tokens. [`check`] charges the token's
//! bucket first and the organisation's only if the token's admitted, so a token over
//! its own limit never spends its organisation's budget. Buckets are `Arc`s carried
//! from one snapshot to the next while their rate is unchanged (see `snapshot.rs`).

pub mod redis;

pub use crate::rate_fields::RateInfo;

use crate::cma::{Access, Operation, Rule};
use crate::error::GatewayError;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::header::HeaderValue;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The buckets' time source: `std::time::Instant` (monotonic on every core), or a
/// manually advanced clock for tests.
#[derive(Debug, Clone)]
pub struct RateClock {
    origin: Instant,
    fake: Option<Arc<AtomicU64>>,
}

impl RateClock {
    pub fn monotonic() -> Self {
        RateClock { origin: Instant::now(), fake: None }
    }

    /// A clock that only moves when [`RateClock::advance`] is called.
    pub fn fake() -> Self {
        RateClock { origin: Instant::now(), fake: Some(Arc::new(AtomicU64::new(0))) }
    }

    /// Moves a fake clock forward (no effect on the monotonic clock).
    pub fn advance(&self, by: Duration) {
        if let Some(fake) = &self.fake {
            fake.fetch_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
        }
    }
}

impl Clock for RateClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match &self.fake {
            Some(fake) => Nanos::from(fake.load(Ordering::SeqCst)),
            None => Nanos::from(self.origin.elapsed()),
        }
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, RateClock, StateInformationMiddleware>;

/// Which figures a response reports: the whole bucket (charged in Redis, shared by
/// every replica) or this replica's part of it (the local buckets that enforce it here,
/// `rate / share`). The two differ only for a bucket split between replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Whole,
    Part,
}

/// One GCRA bucket with the facts its headers need.
#[derive(Debug)]
pub struct Bucket {
    name: &'static str,
    rate: u32,
    burst: u32,
    /// How many replicas split the bucket; the local limiter holds this one's part.
    share: u32,
    /// The per-second limit each scope reports, as header values built once (every
    /// response carries one): the whole `rate`, and the part's, rounded down but at
    /// least 1 (`RateLimit-Policy` gives the part exactly).
    limit_headers: [HeaderValue; 2],
    limiter: Gcra,
    clock: RateClock,
    /// The bucket's key in Redis, made on its first charge there (see [`Bucket::redis_key`]).
    redis_key: OnceLock<Box<str>>,
}

impl Bucket {
    /// A bucket admitting `rate` per second with room for `burst` at once.
    pub fn new(name: &'static str, rate: u32, burst: u32, clock: &RateClock) -> Bucket {
        Bucket::shared(name, rate, burst, 1, clock)
    }

    /// One replica's part of a bucket that `share` replicas split evenly: `rate / share`
    /// per second (fractions kept), room for `burst / share` (rounded up) at once.
    pub fn shared(name: &'static str, rate: u32, burst: u32, share: u32, clock: &RateClock) -> Bucket {
        let rate_nz = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst_nz = NonZeroU32::new(burst).unwrap_or(rate_nz);
        let share = share.max(1);
        let period = Duration::from_secs(u64::from(share)) / rate_nz.get();
        let burst_part = NonZeroU32::new(burst_nz.get().div_ceil(share)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period).unwrap_or(Quota::per_second(rate_nz)).allow_burst(burst_part);
        let limiter =
            RateLimiter::direct_with_clock(quota, clock.clone()).with_middleware::<StateInformationMiddleware>();
        let rate = rate_nz.get();
        let limit_headers = [HeaderValue::from(rate), HeaderValue::from((rate / share).max(1))];
        let burst = burst_nz.get();
        Bucket { name, rate, burst, share, limit_headers, limiter, clock: clock.clone(), redis_key: OnceLock::new() }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Takes one cell: `Ok(remaining)` or `Err(wait until one is free)`.
    fn take(&self) -> Result<u32, Duration> {
        match self.limiter.check() {
            Ok(state) => Ok(state.remaining_burst_capacity()),
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// This bucket's key in Redis, made by `make` on the first call. A bucket belongs
    /// to one organisation (or one token) and the key prefix is fixed at start, so the
    /// key never changes; making it once keeps its allocation off the request path.
    pub(crate) fn redis_key(&self, make: impl FnOnce() -> String) -> &str {
        self.redis_key.get_or_init(|| make().into_boxed_str())
    }

    /// The per-second limit `scope` reports, as a number and as a header value.
    fn limit(&self, scope: Scope) -> (u32, &HeaderValue) {
        match scope {
            Scope::Whole => (self.rate, &self.limit_headers[0]),
            Scope::Part => ((self.rate / self.share).max(1), &self.limit_headers[1]),
        }
    }

    /// Seconds until the bucket (whole or this replica's part) is full again, from
    /// `remaining` free cells. A part refills one cell every `share / rate` seconds.
    fn reset_secs(&self, remaining: u32, scope: Scope) -> u64 {
        let (burst, share) = match scope {
            Scope::Whole => (self.burst, 1),
            Scope::Part => (self.burst.div_ceil(self.share), self.share),
        };
        let missing = u64::from(burst.saturating_sub(remaining));
        (missing * u64::from(share)).div_ceil(u64::from(self.rate))
    }

    /// `"name";q=QUOTA;w=WINDOW`, for the draft `RateLimit-Policy` field: the whole
    /// bucket's `rate` per second, or this replica's part exactly, `rate` per `share`
    /// seconds (`X-RateLimit-Limit` can only say it per second, rounded).
    fn policy_item(&self, scope: Scope) -> String {
        let window = match scope {
            Scope::Whole => 1,
            Scope::Part => self.share,
        };
        format!("\"{}\";q={};w={window}", self.name, self.rate)
    }
}

/// An organisation's shared buckets.
#[derive(Debug, Clone)]
pub struct OrgBuckets {
    pub read: Arc<Bucket>,
    pub write: Arc<Bucket>,
    pub bulk: Arc<Bucket>,
}

/// A token's buckets for one access: its own (custom rate) and its organisation's,
/// with the `RateLimit-Policy` value precomputed so the hot path does not format it.
#[derive(Debug, Clone)]
pub struct Charge {
    own: Option<Arc<Bucket>>,
    /// The organisation's bulk bucket, for `/v3/bulk/...`.
    bulk: Option<Arc<Bucket>>,
    org: Arc<Bucket>,
    /// Per [`Scope`]: whole, part.
    policies: [HeaderValue; 2],
}

impl Charge {
    pub fn new(own: Option<Arc<Bucket>>, bulk: Option<Arc<Bucket>>, org: Arc<Bucket>) -> Charge {
        let empty = HeaderValue::from_static("");
        let mut charge = Charge { own, bulk, org, policies: [empty.clone(), empty] };
        charge.policies = [Scope::Whole, Scope::Part].map(|scope| {
            let items: Vec<String> = charge.buckets().map(|b| b.policy_item(scope)).collect();
            HeaderValue::from_str(&items.join(", ")).unwrap_or(HeaderValue::from_static(""))
        });
        charge
    }

    /// In charging order. Scarcest first: a request refused by a later bucket has
    /// already spent a cell of the earlier ones, so the token's own and the bulk bucket
    /// go before the organisation's read/write bucket.
    fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.parts().map(|(bucket, _)| &**bucket)
    }

    pub fn own(&self) -> Option<&Arc<Bucket>> {
        self.own.as_ref()
    }

    /// The buckets in charging order (see `buckets`), each with whether it is the
    /// token's own.
    pub fn parts(&self) -> impl Iterator<Item = (&Arc<Bucket>, bool)> {
        self.own.iter().map(|b| (b, true)).chain(self.bulk.iter().chain(Some(&self.org)).map(|b| (b, false)))
    }

    /// The `RateLimit-Policy` value of this charge, for the figures `scope` reports.
    pub fn policy(&self, scope: Scope) -> &HeaderValue {
        match scope {
            Scope::Whole => &self.policies[0],
            Scope::Part => &self.policies[1],
        }
    }
}

/// The buckets a token draws from, per kind of request.
#[derive(Debug, Clone)]
pub struct TokenBuckets {
    pub read: Charge,
    pub write: Charge,
    pub bulk_read: Charge,
    pub bulk_write: Charge,
}

/// Who a request is charged to: a token's buckets, and the names a shared backend
/// keys them by.
#[derive(Debug, Clone, Copy)]
pub struct Payer<'a> {
    pub buckets: &'a TokenBuckets,
    pub token_uid: &'a str,
    pub org_uid: &'a str,
}

/// The rate-limit backend's own metrics (registered by the telemetry module):
/// whether the shared backend answers, and how often each fail mode was applied.
#[derive(Debug, Clone, Default)]
pub struct BackendMetrics {
    pub up: prometheus_client::metrics::gauge::Gauge,
    /// `open`, `closed`, `local`.
    pub fallbacks: [prometheus_client::metrics::counter::Counter; 3],
    /// Calls to the shared backend (each carries every charge waiting for it).
    pub round_trips: prometheus_client::metrics::counter::Counter,
}

/// The rate-limit backends' one interface: charge a management-token request to its
/// buckets. `Ok(None)`: admitted with nothing to report (Redis unreachable, fail open).
pub trait RateLimit: Send + Sync {
    fn charge(
        &self,
        payer: Payer<'_>,
        op: &Operation,
    ) -> impl Future<Output = Result<Option<RateInfo>, GatewayError>> + Send;
}

/// The configured backend. An enum rather than a trait object so the local path stays
/// a plain function call (no boxed future per request).
pub enum Limiter {
    /// This process's buckets, kept in the snapshot beside each token.
    Local,
    /// Buckets in Redis, shared by every replica.
    Redis(Arc<redis::RedisLimiter>),
}

impl Limiter {
    /// What `/readyz` says of the rate limits.
    pub fn state(&self) -> &'static str {
        match self {
            Limiter::Local => "local",
            Limiter::Redis(r) => r.state(),
        }
    }

    /// Sets the gauge that mirrors [`Limiter::state`] (`ratelimit_backend_up`), before a
    /// scrape reads it; with local buckets it stays 1.
    pub fn report(&self) {
        if let Limiter::Redis(r) = self {
            r.report();
        }
    }
}

impl RateLimit for Limiter {
    async fn charge(&self, payer: Payer<'_>, op: &Operation) -> Result<Option<RateInfo>, GatewayError> {
        match self {
            Limiter::Local => check(payer.buckets, op).map(Some),
            Limiter::Redis(r) => r.charge(payer, op).await,
        }
    }
}

/// Which of a token's four charges a request draws from.
pub fn charge_for<'a>(buckets: &'a TokenBuckets, op: &Operation) -> &'a Charge {
    match (op.rule == Rule::Bulk, op.access) {
        (false, Access::Read) => &buckets.read,
        (false, Access::Write) => &buckets.write,
        (true, Access::Read) => &buckets.bulk_read,
        (true, Access::Write) => &buckets.bulk_write,
    }
}

/// The answer for a request that `bucket` of `charge` refuses until `wait` has passed.
fn refused(bucket: &Bucket, charge: &Charge, scope: Scope, wait: Duration) -> GatewayError {
    let retry_after = wait.as_nanos().div_ceil(1_000_000_000).max(1);
    let retry_after = u64::try_from(retry_after).unwrap_or(u64::MAX);
    let (limit, limit_header) = bucket.limit(scope);
    let info = RateInfo {
        name: bucket.name,
        limit,
        remaining: 0,
        reset: retry_after,
        policy: charge.policy(scope).clone(),
        limit_header: limit_header.clone(),
    };
    GatewayError::RateLimited { retry_after, info: Box::new(info) }
}

/// The headers of an admitted request, from the bucket of `charge` closest to empty.
fn admitted(bucket: &Bucket, remaining: u32, charge: &Charge, scope: Scope) -> RateInfo {
    let (limit, limit_header) = bucket.limit(scope);
    RateInfo {
        name: bucket.name,
        limit,
        remaining,
        reset: bucket.reset_secs(remaining, scope),
        policy: charge.policy(scope).clone(),
        limit_header: limit_header.clone(),
    }
}

/// Charges a management-token request to this process's buckets, token first. The
/// headers report what these buckets enforce: this replica's part where a fail mode
/// splits a bucket between replicas.
pub fn check(buckets: &TokenBuckets, op: &Operation) -> Result<RateInfo, GatewayError> {
    let charge = charge_for(buckets, op);
    let mut closest: Option<(&Bucket, u32)> = None;
    for bucket in charge.buckets() {
        match bucket.take() {
            Ok(remaining) => {
                if closest.is_none_or(|(_, r)| remaining < r) {
                    closest = Some((bucket, remaining));
                }
            }
            Err(wait) => return Err(refused(bucket, charge, Scope::Part, wait)),
        }
    }
    let (bucket, remaining) = closest.unwrap_or((&charge.org, 0));
    Ok(admitted(bucket, remaining, charge, Scope::Part))
}

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;

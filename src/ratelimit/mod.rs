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
use std::sync::Arc;
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

/// One GCRA bucket with the facts its headers need.
#[derive(Debug)]
pub struct Bucket {
    name: &'static str,
    rate: u32,
    /// `rate` as a header value, built once (every response carries it).
    limit_header: HeaderValue,
    burst: u32,
    limiter: Gcra,
    clock: RateClock,
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
        let limit_header = HeaderValue::from(rate_nz.get());
        Bucket { name, rate: rate_nz.get(), limit_header, burst: burst_nz.get(), limiter, clock: clock.clone() }
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

    /// Seconds until the bucket is full again, from `remaining` free cells.
    fn reset_secs(&self, remaining: u32) -> u64 {
        let missing = u64::from(self.burst.saturating_sub(remaining));
        missing.div_ceil(u64::from(self.rate))
    }

    /// `"name";q=rate;w=1`, for the draft `RateLimit-Policy` field.
    fn policy_item(&self) -> String {
        format!("\"{}\";q={};w=1", self.name, self.rate)
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
    policy: HeaderValue,
}

impl Charge {
    pub fn new(own: Option<Arc<Bucket>>, bulk: Option<Arc<Bucket>>, org: Arc<Bucket>) -> Charge {
        let mut charge = Charge { own, bulk, org, policy: HeaderValue::from_static("") };
        let items: Vec<String> = charge.buckets().map(|b| b.policy_item()).collect();
        charge.policy = HeaderValue::from_str(&items.join(", ")).unwrap_or(HeaderValue::from_static(""));
        charge
    }

    /// In charging order. Scarcest first: a request refused by a later bucket has
    /// already spent a cell of the earlier ones, so the token's own and the bulk bucket
    /// go before the organisation's read/write bucket.
    fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.parts().map(|(bucket, _)| bucket)
    }

    pub fn own(&self) -> Option<&Arc<Bucket>> {
        self.own.as_ref()
    }

    /// The buckets in charging order (see `buckets`), each with whether it is the
    /// token's own.
    pub fn parts(&self) -> impl Iterator<Item = (&Bucket, bool)> {
        self.own.iter().map(|b| (&**b, true)).chain(self.bulk.iter().chain(Some(&self.org)).map(|b| (&**b, false)))
    }

    /// The `RateLimit-Policy` value of this charge.
    pub fn policy(&self) -> &HeaderValue {
        &self.policy
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

/// The answer for a request that `bucket` refuses until `wait` has passed.
fn refused(bucket: &Bucket, policy: &HeaderValue, wait: Duration) -> GatewayError {
    let retry_after = wait.as_nanos().div_ceil(1_000_000_000).max(1);
    let retry_after = u64::try_from(retry_after).unwrap_or(u64::MAX);
    let info = RateInfo {
        name: bucket.name,
        limit: bucket.rate,
        remaining: 0,
        reset: retry_after,
        policy: policy.clone(),
        limit_header: bucket.limit_header.clone(),
    };
    GatewayError::RateLimited { retry_after, info: Box::new(info) }
}

/// The headers of an admitted request, from the bucket closest to empty.
fn admitted(bucket: &Bucket, remaining: u32, policy: &HeaderValue) -> RateInfo {
    RateInfo {
        name: bucket.name,
        limit: bucket.rate,
        remaining,
        reset: bucket.reset_secs(remaining),
        policy: policy.clone(),
        limit_header: bucket.limit_header.clone(),
    }
}

/// Charges a management-token request to this process's buckets, token first.
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
            Err(wait) => return Err(refused(bucket, &charge.policy, wait)),
        }
    }
    let (bucket, remaining) = closest.unwrap_or((&charge.org, 0));
    Ok(admitted(bucket, remaining, &charge.policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(bucket: &Bucket, tries: u32) -> u32 {
        (0..tries).filter(|_| bucket.take().is_ok()).count() as u32
    }

    #[test]
    fn burst_then_refill() {
        let clock = RateClock::fake();
        let b = Bucket::new("t", 5, 5, &clock);
        assert_eq!(admitted(&b, 20), 5);
        clock.advance(Duration::from_millis(200));
        assert_eq!(admitted(&b, 20), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(admitted(&b, 20), 5);
        clock.advance(Duration::from_secs(100));
        assert_eq!(admitted(&b, 20), 5, "never more than the burst");
    }

    #[test]
    fn burst_differs_from_rate() {
        let clock = RateClock::fake();
        let b = Bucket::new("o", 2, 10, &clock);
        assert_eq!(admitted(&b, 50), 10);
        clock.advance(Duration::from_secs(1));
        assert_eq!(admitted(&b, 50), 2);
    }

    #[test]
    fn shared_bucket_takes_its_part() {
        let clock = RateClock::fake();
        // 5/s with burst 5 split three ways: burst 2, one cell every 600 ms.
        let b = Bucket::shared("t", 5, 5, 3, &clock);
        assert_eq!(admitted(&b, 20), 2);
        clock.advance(Duration::from_millis(599));
        assert_eq!(admitted(&b, 20), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(admitted(&b, 20), 1);
        clock.advance(Duration::from_secs(3));
        assert_eq!(admitted(&b, 20), 2, "never more than its part of the burst");
        assert_eq!((b.rate(), b.burst()), (5, 5), "headers still show the whole bucket");
    }

    #[test]
    fn wait_is_reported() {
        let clock = RateClock::fake();
        let b = Bucket::new("t", 1, 1, &clock);
        assert!(b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
    }
}

/// Admission counts through whole snapshots, with a fake clock.
#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use crate::config;
    use crate::pipeline::{classify, Module};
    use crate::snapshot::Snapshot;
    use crate::token::{hash_secret, Origin, RateLimit, TokenRecord};
    use http::Method;

    const A: &str = "csaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "csbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn cfg(org: &str, a_rate: Option<(u32, u32)>) -> config::Config {
        let rate = a_rate.map_or(String::new(), |(r, w)| {
            format!("rate_limit = {{ read_per_second = {r}, write_per_second = {w} }}")
        });
        let text = format!(
            r#"
[upstream]
url = "http://127.0.0.1:9"
[[organizations]]
uid = "o"
{org}
[[stacks]]
api_key = "k"
organization = "o"
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

    fn snap(c: config::Config, prev: Option<&Snapshot>, clock: &RateClock) -> Snapshot {
        let upstream = crate::proxy::UpstreamClient::new(&c.upstream).unwrap();
        Snapshot::build(Arc::new(c), &[], prev, clock, upstream)
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

    #[test]
    fn headers_report_the_bucket_closest_to_empty() {
        let clock = RateClock::fake();
        let s = snap(cfg("read_per_second = 10", Some((3, 3))), None, &clock);
        let token = s.token(&hash_secret(A.as_bytes())).unwrap();
        let info = check(&token.buckets, &read()).unwrap();
        assert_eq!((info.name, info.limit, info.remaining), ("token-read", 3, 2));
        assert_eq!(info.policy, "\"token-read\";q=3;w=1, \"org-read\";q=10;w=1");
    }
}

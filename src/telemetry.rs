//! Metrics in the Prometheus text format (`prometheus-client`). Every counter a request
//! touches is created up front and indexed by enum, so recording is a relaxed atomic
//! add: no map lookup and no lock on the request path. Labels are module names,
//! reasons and fixed kinds only, never paths, tokens or other client data.

use crate::cma::Module;
use crate::error::{GatewayError, Reason, UpstreamFailure};
use crate::snapshot::Snapshot;
use crate::usage::Outcome;
use arc_swap::ArcSwapOption;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Per-token request counts (`[telemetry] per_token_metrics`). Nothing is counted
/// for it: a scrape reads the [`crate::usage::Usage`] counters the tokens of the
/// current snapshot already keep, so the request path pays nothing whether it is on
/// or off, and the setting takes effect on reload. Off, the family is absent.
#[derive(Debug, Default)]
struct TokenUsage(ArcSwapOption<Snapshot>);

impl Collector for TokenUsage {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(snap) = self.0.load_full() else { return Ok(()) };
        if !snap.config.telemetry.per_token_metrics {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let mut tokens: Vec<_> = snap.tokens().filter(|t| seen.insert(&*t.uid)).collect();
        tokens.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut family = encoder.encode_descriptor(
            "token_requests",
            "Requests that authenticated as a token, by token uid and outcome (this replica, since start)",
            None,
            MetricType::Counter,
        )?;
        for token in tokens {
            for outcome in Outcome::ALL {
                let labels = [("token_uid", &*token.uid), ("outcome", outcome.name())];
                ConstCounter::new(token.usage.count(outcome)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];

/// Status classes counted per module.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Module label for requests that failed before classification.
const NO_MODULE: &str = "none";
const UPSTREAM_KINDS: [&str; 3] = ["connect", "protocol", "timeout"];

/// Latency buckets in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Lets a warning through at most once every [`Throttle::EVERY`]: a failure that
/// repeats per request or per accept (an unreachable backend, a process out of file
/// descriptors) is what an operator needs once, not a line per event.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Milliseconds since the process's first check, plus one, of the last warning let
    /// through (0: never). A monotonic clock, so a clock stepped back silences nothing.
    last: AtomicU64,
}

impl Throttle {
    pub const EVERY: Duration = Duration::from_secs(10);

    pub const fn new() -> Self {
        Throttle { last: AtomicU64::new(0) }
    }

    /// Whether to say it now.
    pub fn allow(&self) -> bool {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let elapsed = ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_millis();
        let now = u64::try_from(elapsed).unwrap_or(u64::MAX - 1) + 1;
        let every = u64::try_from(Self::EVERY.as_millis()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last.saturating_add(every))
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// A histogram of atomics (prometheus-client's own takes a mutex per observation).
/// Clones share the same counts.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<HistogramCells>);

#[derive(Debug)]
pub struct HistogramCells {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram(Arc::new(HistogramCells {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }))
    }
}

impl std::ops::Deref for AtomicHistogram {
    type Target = HistogramCells;
    fn deref(&self) -> &HistogramCells {
        &self.0
    }
}

impl AtomicHistogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl EncodeMetric for AtomicHistogram {
    /// Hands the encoder each bucket's own count: prometheus-client's `encode_histogram`
    /// accumulates them itself (passing running totals counted every observation again
    /// in each later bucket). The last bucket's bound is `f64::INFINITY`, which the
    /// encoder writes as `le="+Inf"`; `_count` is the sum of the same loads, so it equals
    /// the `+Inf` bucket even while observations race with the scrape.
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut total = 0u64;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            total += n;
            buckets.push((BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// All of stackgate's metrics.
pub struct Metrics {
    registry: Registry,
    /// `token_requests{token_uid, outcome}`, read off the tokens' own counters at scrape.
    token_usage: Arc<TokenUsage>,
    /// `[module index][class]`; the last row is for requests without a module.
    requests: Vec<[Counter; 5]>,
    decisions: [Counter; Reason::ALL.len()],
    upstream_errors: [Counter; 3],
    pub latency: AtomicHistogram,
    pub open_connections: Gauge,
    /// Bytes held by bodies being read for the body rules (`max_inspected_total`).
    pub inspected_body_bytes: Gauge,
    pub tokens_loaded: Gauge,
    reloads_ok: Counter,
    reloads_failed: Counter,
    pub notices_sent: Counter,
    pub notices_failed: Counter,
    /// Completed passes of the expiry notifier over the tokens (this replica's).
    pub notice_scans: Counter,
    /// 1 while the shared rate-limit backend (Redis) answers, 0 while the fail mode applies.
    pub ratelimit_backend_up: Gauge,
    /// Requests decided by the fail mode, by mode (`open`, `closed`, `local`).
    pub ratelimit_fallbacks: [Counter; 3],
    /// Script calls to Redis (one carries every charge waiting for it).
    pub ratelimit_round_trips: Counter,
}

/// A failure's index in `upstream_errors` (see `UPSTREAM_KINDS`; 2 is a timeout).
fn upstream_kind(failure: UpstreamFailure) -> usize {
    match failure {
        UpstreamFailure::Connect => 0,
        UpstreamFailure::Protocol => 1,
    }
}

impl Metrics {
    /// The rate-limit backend's metrics, sharing these series.
    pub fn ratelimit_backend(&self) -> crate::ratelimit::BackendMetrics {
        crate::ratelimit::BackendMetrics {
            up: self.ratelimit_backend_up.clone(),
            fallbacks: self.ratelimit_fallbacks.clone(),
            round_trips: self.ratelimit_round_trips.clone(),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stackgate");
        let requests_family = Family::<Labels2, Counter>::default();
        let requests: Vec<[Counter; 5]> = Module::ALL
            .iter()
            .map(|m| m.name())
            .chain(std::iter::once(NO_MODULE))
            .map(|module| {
                std::array::from_fn(|c| {
                    requests_family.get_or_create(&[("module", module), ("class", CLASSES[c])]).clone()
                })
            })
            .collect();
        registry.register("requests", "Requests by CMA module and status class", requests_family);
        let decisions_family = Family::<Labels1, Counter>::default();
        let decisions = Reason::ALL.map(|r| decisions_family.get_or_create(&[("reason", r.name())]).clone());
        registry.register("decisions", "Gateway decisions by reason", decisions_family);
        let upstream_family = Family::<Labels1, Counter>::default();
        let upstream_errors =
            std::array::from_fn(|i| upstream_family.get_or_create(&[("kind", UPSTREAM_KINDS[i])]).clone());
        registry.register("upstream_errors", "Failed upstream requests by kind", upstream_family);
        let latency = AtomicHistogram::default();
        registry.register("request_duration_seconds", "Request latency as seen by the gateway", latency.clone());
        let open_connections = Gauge::default();
        registry.register("open_connections", "Open client connections", open_connections.clone());
        let inspected_body_bytes = Gauge::default();
        registry.register(
            "inspected_body_bytes",
            "Bytes held by request bodies being read for the body rules, in all",
            inspected_body_bytes.clone(),
        );
        registry.register(
            "upstream_stray_discards",
            "Upstream connections closed instead of reused: the backend sent bytes no request asked for",
            crate::http1::client::STRAY_DISCARDS.clone(),
        );
        registry.register(
            "upstream_stray_cool_downs",
            "Cool-downs begun after a stray: one tenant's upstream connections not reused for 10 s",
            crate::proxy::STRAY_COOL_DOWNS.clone(),
        );
        registry.register(
            "upstream_connections_opened",
            "Upstream connections opened (TCP or TLS, HTTP/2 ones included): requests that found none to reuse",
            crate::proxy::CONNECTIONS_OPENED.clone(),
        );
        registry.register(
            "upstream_idle_evictions",
            "Idle upstream connections closed because their thread's idle list (1,024, fewer under a low open-file limit) was full",
            crate::proxy::IDLE_EVICTIONS.clone(),
        );
        let tokens_loaded = Gauge::default();
        registry.register("tokens_loaded", "Management tokens in the active snapshot", tokens_loaded.clone());
        let reloads = Family::<Labels1, Counter>::default();
        let reloads_ok = reloads.get_or_create(&[("result", "success")]).clone();
        let reloads_failed = reloads.get_or_create(&[("result", "failure")]).clone();
        registry.register("config_reloads", "Configuration reloads by result", reloads);
        let notices = Family::<Labels1, Counter>::default();
        let notices_sent = notices.get_or_create(&[("result", "sent")]).clone();
        let notices_failed = notices.get_or_create(&[("result", "failed")]).clone();
        registry.register("expiry_notices", "Token expiry notices by result", notices);
        let notice_scans = Counter::default();
        registry.register(
            "expiry_notice_scans",
            "Completed passes of the expiry notifier over the tokens (while this replica holds the lease)",
            notice_scans.clone(),
        );
        let ratelimit_backend_up = Gauge::default();
        ratelimit_backend_up.set(1);
        registry.register(
            "ratelimit_backend_up",
            "Whether the shared rate-limit backend answers (always 1 with local buckets)",
            ratelimit_backend_up.clone(),
        );
        let fallbacks = Family::<Labels1, Counter>::default();
        let ratelimit_fallbacks =
            std::array::from_fn(|i| fallbacks.get_or_create(&[("mode", ["open", "closed", "local"][i])]).clone());
        registry.register(
            "ratelimit_fallbacks",
            "Requests decided by the rate-limit fail mode: Redis unreachable, or not answering within the timeout",
            fallbacks,
        );
        let ratelimit_round_trips = Counter::default();
        registry.register(
            "ratelimit_backend_round_trips",
            "Script calls to the shared rate-limit backend; each carries the charges of every request waiting for it",
            ratelimit_round_trips.clone(),
        );
        let token_usage = Arc::new(TokenUsage::default());
        registry.register_collector(Box::new(Arc::clone(&token_usage)));
        Metrics {
            token_usage,
            registry,
            requests,
            decisions,
            upstream_errors,
            latency,
            open_connections,
            inspected_body_bytes,
            tokens_loaded,
            reloads_ok,
            reloads_failed,
            notices_sent,
            notices_failed,
            notice_scans,
            ratelimit_backend_up,
            ratelimit_fallbacks,
            ratelimit_round_trips,
        }
    }

    /// Records one finished request.
    pub fn request(&self, module: Option<Module>, status: u16, error: Option<&GatewayError>, took: Duration) {
        let row = module.map_or(Module::ALL.len(), Module::index);
        let class = usize::from(status / 100).saturating_sub(1).min(4);
        if let Some(c) = self.requests.get(row).and_then(|r| r.get(class)) {
            c.inc();
        }
        let reason = error.map_or(Reason::Allowed, GatewayError::reason);
        if let Some(c) = self.decisions.get(reason.index()) {
            c.inc();
        }
        let upstream = match error {
            Some(GatewayError::BadGateway(failure)) => Some(upstream_kind(*failure)),
            Some(GatewayError::GatewayTimeout) => Some(2),
            _ => None,
        };
        if let Some(c) = upstream.and_then(|i| self.upstream_errors.get(i)) {
            c.inc();
        }
        self.latency.observe(took);
    }

    /// Records a request that ended before any decision was answered (its client went
    /// away): counted as 499 with no decision, since none was made or sent.
    pub fn cut_short(&self, module: Option<Module>, took: Duration) {
        let row = module.map_or(Module::ALL.len(), Module::index);
        if let Some(c) = self.requests.get(row).and_then(|r| r.get(3)) {
            c.inc();
        }
        self.latency.observe(took);
    }

    /// Counts an upstream failure met after its request was recorded (a response body
    /// that broke before any of it was sent).
    pub fn upstream_failed(&self, failure: UpstreamFailure) {
        if let Some(c) = self.upstream_errors.get(upstream_kind(failure)) {
            c.inc();
        }
    }

    /// Counts a decision made outside the main listener's requests (the console's
    /// sign-in), so failed and throttled sign-ins show with the main listener's.
    pub fn decision(&self, error: &GatewayError) {
        if let Some(c) = self.decisions.get(error.reason().index()) {
            c.inc();
        }
    }

    /// Points the per-token metrics at the snapshot now serving (every swap).
    pub fn set_snapshot(&self, snapshot: Arc<Snapshot>) {
        self.token_usage.0.store(Some(snapshot));
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.inc();
        } else {
            self.reloads_failed.inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

//! Buckets shared by every replica, in Redis (DESIGN.md section 7).
//!
//! A Lua script runs GCRA over each request's buckets in charging order (the token's
//! own, bulk, then the organisation's) on Redis's own clock, so replicas' clocks never
//! matter. It is all-or-nothing per request: a request refused by any bucket charges
//! none, so a token over its own limit never spends its organisation's budget.
//!
//! Requests are charged in batches: one task per serving thread (a lane, with its own
//! connection on that thread's runtime) sends every charge waiting for Redis in one
//! script call, in arrival order, and the next batch gathers while that call is out.
//! Before it sends, the lane waits one pass of the scheduler ([`gather`]), so that
//! requests whose bytes arrived together share a call. Under load that is one round
//! trip (and one script run) for many requests; alone, a request waits that one pass.
//! A request, its lane and the lane's connection share one thread: no charge crosses
//! threads on its way to Redis and back. Redis runs the batch's charges one after
//! another inside the script, exactly as it would run one script per request in that
//! order. Keys are hash-tagged by organisation (`{org}`); on a cluster a batch is split
//! into one call per organisation, so each call's keys live on one slot.
//!
//! While Redis cannot be reached, the configured fail mode decides; the connection is
//! re-established in the background and Redis takes over again without a restart.
//!
//! One server (`redis://`, or `rediss://` over rustls) or a Redis Cluster: the cluster
//! client routes each script by its first key's slot, which is every key's slot (the
//! organisation's hash tag), and follows a failover to the promoted replica.

use super::{admitted, charge_for, check, refused, BackendMetrics, Payer, RateInfo, Scope};
use crate::cma::Operation;
use crate::config::{FailMode, RedisLimits};
use crate::error::GatewayError;
use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Script, TlsCertificates};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// GCRA over a batch of requests' buckets. The batch comes as runs of consecutive
/// requests with the same buckets (under load, mostly one token's): ARGV is the number of
/// runs, then per run the number of its buckets, how many requests it holds and, per
/// bucket, its emission interval and its tolerance (interval x burst) in microseconds;
/// KEYS: each run's bucket keys in order (at least one: the organisation's).
///
/// The answer is exactly what charging each request of a run in turn, in arrival order,
/// would give, computed once per run rather than once per request. Every request of a
/// run is charged at the same instant with the same buckets, so with `n[i]` the charges
/// bucket `i` still admits now, the run's first `min(times, min n)` requests are admitted
/// and the rest refused; once one is refused nothing has changed, so all after it are
/// refused the same way. An admitted request's remaining count is `min n` less its place
/// in the run; a refused one names the first bucket that has no charge left after the
/// admitted ones, and how long until it has.
///
/// Returns six numbers per run, all in one string (one bulk reply to parse):
/// `admitted, i, n` (how many of the run's requests were admitted; the bucket closest to
/// empty and its `n`) then `ok, i, value` for every request after them: `0, i, wait_us`
/// with the bucket that refused, or `-1, i, 0` if bucket `i`'s key cannot be read (it
/// holds another type): the run is then left to the fail mode and charges nothing, so
/// one organisation's broken key never decides another's requests in the same batch. A
/// key's time is read once per batch and written once at its end, with what the batch's
/// last charge left. [`per_request`] turns the six numbers back into each request's own.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat_of, changed = {}, {}
local out = {}
local key, arg = 0, 2
for r = 1, tonumber(ARGV[1]) do
  local count, times = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1])
  arg = arg + 2
  local bases, n = {}, {}
  local least, broken = 1, 0
  for i = 1, count do
    local name = KEYS[key + i]
    local tat = tat_of[name]
    if tat == nil then
      local stored = redis.pcall('GET', name)
      if type(stored) == 'table' and stored.err then
        broken = i
        break
      end
      tat = tonumber(stored) or now
    end
    if tat < now then tat = now end
    bases[i] = tat
    n[i] = math.floor((tonumber(ARGV[arg + 2 * i - 1]) - (tat - now)) / tonumber(ARGV[arg + 2 * i - 2]))
    if n[i] < n[least] then least = i end
  end
  local admitted = 0
  if broken == 0 then admitted = math.max(0, math.min(times, n[least])) end
  local ok, at, value = -1, broken, 0
  if admitted < times then
    for i = 1, #n do
      if n[i] <= admitted then
        local interval, tolerance = tonumber(ARGV[arg + 2 * i - 2]), tonumber(ARGV[arg + 2 * i - 1])
        ok, at, value = 0, i, bases[i] + (admitted + 1) * interval - tolerance - now
        break
      end
    end
  end
  if admitted > 0 then
    for i = 1, count do
      local name = KEYS[key + i]
      if tat_of[name] == nil then changed[#changed + 1] = name end
      tat_of[name] = bases[i] + admitted * tonumber(ARGV[arg + 2 * i - 2])
    end
  end
  out[#out + 1] = string.format('%d,%d,%d,%d,%d,%d', admitted, least, n[least] or 0, ok, at, value)
  key = key + count
  arg = arg + 2 * count
end
for _, name in ipairs(changed) do
  local tat = tat_of[name]
  redis.call('SET', name, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return table.concat(out, ',')
";

/// The most charges waiting for Redis on one lane; more wait for room (at most
/// `timeout`, then the fail mode decides). One script call takes every charge waiting,
/// so a queued request waits for at most two calls: the one out when it was queued,
/// then its own.
const MAX_WAITING: usize = 1024;

/// One request's buckets in charging order (one to three; see
/// [`super::Charge::parts`]), each with its Redis key made.
type Buckets = [Option<Arc<super::Bucket>>; 3];

/// One request's charge on its way to Redis.
struct Pending {
    buckets: Buckets,
    /// The script's three numbers for this request; `None`: Redis did not answer
    /// (the fail mode decides).
    reply: oneshot::Sender<Option<[i64; 3]>>,
}

/// How long a lane's connection may carry nothing before the lane pings it (see
/// [`send_batches`]): shorter than any idle cut worth configuring.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// The least time [`watch_shared`]'s PING is given.
const WATCH_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a failed Redis stays out of the request path before a reconnect attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(2);

/// Where the buckets are: one server or a cluster.
// One per process, built once: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Endpoint {
    Node(Client),
    Cluster(ClusterClient),
}

/// A live connection to [`Endpoint`] (both kinds are cheap clones of one multiplexed
/// connection per node).
#[derive(Clone)]
enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// The Redis backend of [`super::RateLimit`].
pub struct RedisLimiter {
    endpoint: Endpoint,
    /// `None` while Redis is unreachable (the fail mode applies without waiting). The
    /// connection made at start and by each reconnect; lanes open their own beside it.
    conn: ArcSwapOption<Conn>,
    /// Counts reconnects: a lane whose connection is older opens a new one.
    generation: AtomicU64,
    reconnecting: AtomicBool,
    /// A failed shared connection is being replaced (see `replace_shared`).
    replacing_shared: AtomicBool,
    /// A connection was found lost (a call or a PING unanswered), and no call or PING has
    /// been answered since: Redis may still be in the request path while the connection
    /// is replaced, but its charges are decided by the fail mode.
    lost: AtomicBool,
    /// The last calls were answered with errors (out of memory): an answered call clears
    /// it, since Redis answers PING meanwhile; on a gateway that has sent no call for a
    /// whole [`KEEPALIVE`], so does an answered PING (see [`watch_shared`]).
    refusing: AtomicBool,
    script: Script,
    settings: RedisLimits,
    metrics: BackendMetrics,
    /// Each serving thread's queue to its lane (at most [`MAX_WAITING`] charges each).
    lanes: thread_local::ThreadLocal<mpsc::Sender<Pending>>,
    /// Error lines for calls Redis refused, and for keys of another type (see [`Repeats`]).
    refusals: Repeats,
    wrong_types: Repeats,
}

impl RedisLimiter {
    /// Connects (or, if Redis is down, starts reconnecting in the background: the
    /// gateway serves in the fail mode meanwhile).
    pub async fn start(settings: &RedisLimits, metrics: BackendMetrics) -> Result<Arc<Self>, redis::RedisError> {
        let endpoint = endpoint(settings)?;
        let limiter = Arc::new(RedisLimiter {
            endpoint,
            conn: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            reconnecting: AtomicBool::new(false),
            replacing_shared: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            script: Script::new(GCRA),
            settings: settings.clone(),
            metrics,
            lanes: thread_local::ThreadLocal::new(),
            refusals: Repeats::new(),
            wrong_types: Repeats::new(),
        });
        match limiter.connect().await {
            Ok(conn) => limiter.conn.store(Some(Arc::new(conn))),
            Err(e) => {
                tracing::warn!(error = %e, fail_mode = ?settings.fail_mode, "Redis unreachable at start; the fail mode applies until it answers");
                limiter.reconnect();
            }
        }
        // A cluster connection finds lost nodes and new masters itself, and a PING to
        // every node fails while a failed master is still listed.
        if matches!(limiter.endpoint, Endpoint::Node(_)) {
            tokio::spawn(watch_shared(Arc::downgrade(&limiter)));
        }
        Ok(limiter)
    }

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        match &self.endpoint {
            Endpoint::Node(client) => {
                let timeout = self.settings.timeout.max(Duration::from_millis(500));
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(self.settings.timeout));
                let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
                // Loading the script now keeps the first request to one round trip.
                self.script.prepare_invoke().load_async(&mut conn).await?;
                Ok(Conn::Node(conn))
            }
            Endpoint::Cluster(client) => {
                let mut conn = client.get_async_connection().await?;
                // SCRIPT LOAD goes to every master, so this also fails while one of
                // them is down and not yet replaced: the cluster is back when every
                // slot answers.
                self.script.prepare_invoke().load_async(&mut conn).await?;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// Takes Redis out of the request path and reconnects in the background (once).
    fn reconnect(self: &Arc<Self>) {
        self.conn.store(None);
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = RECONNECT_BACKOFF;
            loop {
                tokio::time::sleep(backoff).await;
                match this.connect().await {
                    Ok(conn) => {
                        // Before the connection shows: a lane that sees it must also
                        // see that its own connection is from before the failure.
                        this.generation.fetch_add(1, Ordering::SeqCst);
                        this.conn.store(Some(Arc::new(conn)));
                        this.set_flag(&this.lost, false);
                        this.set_flag(&this.refusing, false);
                        this.reconnecting.store(false, Ordering::Release);
                        tracing::info!("Redis answers again; shared rate limits resumed");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "Redis still unreachable"),
                }
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
            }
        });
    }

    /// Sets `lost` or `refusing`; written only on a change, since every lane's batches
    /// set them and a store would take the cache line from the other threads each time.
    fn set_flag(&self, flag: &AtomicBool, value: bool) {
        if flag.load(Ordering::Relaxed) != value {
            flag.store(value, Ordering::Relaxed);
        }
    }

    /// Whether Redis decides charges: connected, not found lost, not refusing calls.
    fn answering(&self) -> bool {
        self.conn.load().is_some() && !self.lost.load(Ordering::Relaxed) && !self.refusing.load(Ordering::Relaxed)
    }

    /// Sets `stackgate_ratelimit_backend_up` from [`Self::answering`], as a scrape reads
    /// it: the gauge and `/readyz` read the same state, so they cannot disagree.
    pub fn report(&self) {
        self.metrics.up.set(i64::from(self.answering()));
    }

    /// How `/readyz` reports this backend: whether Redis is in the request path, and if
    /// not, what requests get meanwhile (the fail mode).
    pub fn state(&self) -> &'static str {
        match (self.answering(), self.settings.fail_mode) {
            (true, _) => "redis up",
            (false, FailMode::Open) => "redis unavailable (fail_mode open: admitting without limits)",
            (false, FailMode::Closed) => "redis unavailable (fail_mode closed: management-token requests answer 503)",
            (false, FailMode::Local) => "redis unavailable (fail_mode local: this replica's own buckets)",
        }
    }

    /// Charges the request in Redis (in the next batch), or applies the fail mode.
    pub async fn charge(self: &Arc<Self>, payer: Payer<'_>, op: &Operation) -> Result<Option<RateInfo>, GatewayError> {
        if self.conn.load().is_none() {
            return self.fail(payer, op);
        }
        let charge = charge_for(payer.buckets, op);
        let org = payer.org_uid;
        let mut buckets: Buckets = Default::default();
        for ((bucket, own), slot) in charge.parts().zip(&mut buckets) {
            let token = own.then_some(payer.token_uid);
            bucket.redis_key(|| bucket_key(&self.settings.key_prefix, org, bucket.name(), token));
            *slot = Some(Arc::clone(bucket));
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending { buckets, reply };
        // A full queue (a burst larger than it, or Redis slower than requests arrive)
        // waits up to `timeout` for room: each call empties the queue, so a healthy Redis
        // makes room within one call. Deciding by the fail mode at once would let one
        // client with enough concurrent requests past its limit under `open`.
        match self.lane().try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(pending)) => {
                match tokio::time::timeout(self.settings.timeout, self.lane().send(pending)).await {
                    Ok(Ok(())) => {}
                    _ => return self.fail(payer, op),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return self.fail(payer, op),
        }
        // The lane bounds each call by `timeout` and never waits for anything else (a
        // connection is opened beside it), so this waits at most twice that (the call
        // out when the charge was queued, then its own) without a timer per request. A
        // request that stops waiting is left out of any call not yet sent (its receiver
        // is gone); an `Err` means the lane is gone.
        let [ok, index, value] = match answer.await {
            Ok(Some(numbers)) => numbers,
            _ => return self.fail(payer, op),
        };
        if ok == -1 {
            if let Some(held) = self.wrong_types.due() {
                tracing::error!(organization = %org, held, "a rate-limit key in Redis holds another type; the fail mode decides");
            }
            return self.fail(payer, op);
        }
        let bucket = usize::try_from(index - 1).ok().and_then(|i| charge.parts().nth(i)).map(|(b, _)| b);
        let Some(bucket) = bucket else {
            return self.fail(payer, op);
        };
        let value = u64::try_from(value).unwrap_or(0);
        if ok == 1 {
            Ok(Some(admitted(bucket, u32::try_from(value).unwrap_or(u32::MAX), charge, Scope::Whole)))
        } else {
            Err(refused(bucket, charge, Scope::Whole, Duration::from_micros(value)))
        }
    }

    /// This thread's queue to its lane, the lane started (on this thread's runtime) by
    /// the thread's first charge.
    fn lane(self: &Arc<Self>) -> &mpsc::Sender<Pending> {
        self.lanes.get_or(|| {
            let (queue, waiting) = mpsc::channel(MAX_WAITING);
            tokio::spawn(send_batches(Arc::downgrade(self), waiting));
            queue
        })
    }

    /// The connection a lane sends on: its own, opened on its thread once per
    /// generation, or the shared one while its own is being opened (in the background:
    /// no batch waits for a connection) or could not be (until the next reconnect);
    /// `None` while Redis is out of the request path.
    fn lane_connection(self: &Arc<Self>, lane: &mut LaneConn) -> Option<Lent> {
        let shared = self.conn.load_full()?;
        let generation = self.generation.load(Ordering::SeqCst);
        lane.take_opened(generation);
        if let Some((_, conn)) = lane.own.as_ref().filter(|(made, _)| *made == generation) {
            return Some(Lent::Own(conn.clone()));
        }
        if lane.opening.is_none() && lane.shares != Some(generation) {
            lane.open(self, generation, false);
        }
        Some(Lent::Shared(shared))
    }

    /// Sends one batch on `conn`: one script call (per organisation on a cluster), each
    /// request answered with its three numbers, or `None` if the call failed. Returns
    /// `false` if the connection failed (the caller decides what that takes down).
    async fn send_batch(&self, conn: Option<Conn>, mut batch: Vec<Pending>) -> bool {
        // Requests that gave up (their client gone) are not charged.
        batch.retain(|pending| !pending.reply.is_closed());
        if batch.is_empty() {
            return true;
        }
        let Some(conn) = conn else {
            for pending in batch {
                let _ = pending.reply.send(None);
            }
            return true;
        };
        let groups = match &conn {
            Conn::Node(_) => vec![batch],
            Conn::Cluster(_) => by_organisation(batch),
        };
        let calls = groups.into_iter().map(|group| self.call(&conn, group));
        let outcomes = futures_util::future::join_all(calls).await;
        // Any call that did not answer (lost, timed out, or refused by Redis: out of
        // memory, a script error) left its requests to the fail mode.
        self.set_flag(&self.lost, !outcomes.iter().all(|(connected, _)| *connected));
        self.set_flag(&self.refusing, outcomes.iter().any(|(connected, answered)| *connected && !*answered));
        outcomes.iter().all(|(connected, _)| *connected)
    }

    /// After a call failed on `lent`. The lane's own connection: a new one for the
    /// lane, opened in the background (its batches go on the shared connection
    /// meanwhile). If Redis takes it, the connection alone was lost (a `CLIENT KILL`, an
    /// idle cut by something in between) and no other lane is disturbed; if not, Redis
    /// leaves the request path for every lane and is reconnected in the background.
    /// The shared connection: the same, for the shared one.
    fn after_failure(self: &Arc<Self>, lent: Lent, lane: &mut LaneConn) {
        match lent {
            Lent::Own(_) => {
                lane.own = None;
                // One already being opened (for a new generation) is taken when ready.
                if lane.opening.is_none() {
                    lane.open(self, self.generation.load(Ordering::SeqCst), true);
                }
            }
            Lent::Shared(failed) => self.replace_shared(failed),
        }
    }

    /// Replaces a failed shared connection, in the background and once at a time,
    /// unless it has been replaced already; if Redis refuses a new one, it leaves the
    /// request path.
    fn replace_shared(self: &Arc<Self>, failed: Arc<Conn>) {
        if self.replacing_shared.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let generation = this.generation.load(Ordering::SeqCst);
            match this.connect_within_timeout().await {
                Some(conn) => {
                    let previous = this.conn.compare_and_swap(&Some(failed), Some(Arc::new(conn)));
                    this.set_flag(&this.lost, false);
                    tracing::info!(replaced = previous.is_some(), "the shared Redis connection failed; opened another");
                }
                None if this.generation.load(Ordering::SeqCst) == generation => this.reconnect(),
                None => {}
            }
            this.replacing_shared.store(false, Ordering::Release);
        });
    }

    /// Pings the connection an idle lane would send on, bounded by `timeout` (as a call
    /// is, so a charge arriving meanwhile waits no longer than behind a call); a lost
    /// connection is handled as after a failed call.
    async fn ping(self: &Arc<Self>, lane: &mut LaneConn) {
        let Some(lent) = self.lane_connection(lane) else { return };
        let lost = unanswered(lent.conn(), self.settings.timeout).await;
        // An answered PING clears `lost` only: Redis answers PING while it refuses
        // every script (out of memory).
        self.set_flag(&self.lost, lost);
        if lost {
            tracing::info!("an idle Redis connection no longer answers; replacing it");
            self.after_failure(lent, lane);
        }
    }

    /// A new connection for a lane, bounded as the first one is (`timeout`, at least
    /// 500 ms): a lane waits for it with its charges queued.
    async fn connect_within_timeout(&self) -> Option<Conn> {
        let bound = self.settings.timeout.max(Duration::from_millis(500));
        tokio::time::timeout(bound, self.connect()).await.ok()?.ok()
    }

    /// One script call for `group`, each request answered. Returns whether the
    /// connection held (`false`: I/O, timeout) and whether Redis answered the call; an
    /// error reply from Redis or an answer of the wrong shape fails only this call's
    /// requests (the fail mode decides them).
    async fn call(&self, conn: &Conn, group: Vec<Pending>) -> (bool, bool) {
        let runs = runs(&group);
        let sizes: Vec<usize> = runs.iter().map(|(_, times)| *times).collect();
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(runs.len());
        for (buckets, times) in runs {
            invocation.arg(buckets.iter().flatten().count()).arg(times);
            for bucket in buckets.iter().flatten() {
                let interval = 1_000_000u64.div_ceil(u64::from(bucket.rate()));
                invocation.key(key_of(bucket)).arg(interval).arg(interval * u64::from(bucket.burst()));
            }
        }
        let call = async {
            match conn.clone() {
                Conn::Node(mut c) => invocation.invoke_async::<Vec<u8>>(&mut c).await,
                Conn::Cluster(mut c) => invocation.invoke_async::<Vec<u8>>(&mut c).await,
            }
        };
        self.metrics.round_trips.inc();
        let (numbers, connected) = match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(reply)) => match parse_reply(&reply).and_then(|runs| per_request(&runs, &sizes)) {
                Some(v) => (v, true),
                None => {
                    if let Some(held) = self.refusals.due() {
                        tracing::error!(held, "rate-limit script answered in an unexpected shape");
                    }
                    (Vec::new(), true)
                }
            },
            Ok(Err(e)) if connection_lost(&e) => {
                tracing::warn!(error = %e, "Redis rate-limit call failed; reconnecting");
                (Vec::new(), false)
            }
            Ok(Err(e)) => {
                if let Some(held) = self.refusals.due() {
                    tracing::error!(error = %e, held, "Redis refused the rate-limit script");
                }
                (Vec::new(), true)
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.settings.timeout, "Redis rate-limit call timed out; reconnecting");
                (Vec::new(), false)
            }
        };
        let answered = !numbers.is_empty();
        let mut numbers = numbers.into_iter();
        for pending in group {
            let _ = pending.reply.send(numbers.next());
        }
        (connected, answered)
    }

    /// What a request gets while Redis is out (see [`FailMode`]).
    fn fail(&self, payer: Payer<'_>, op: &Operation) -> Result<Option<RateInfo>, GatewayError> {
        let [open, closed, local] = &self.metrics.fallbacks;
        match self.settings.fail_mode {
            FailMode::Open => {
                open.inc();
                Ok(None)
            }
            FailMode::Closed => {
                closed.inc();
                Err(GatewayError::Unavailable)
            }
            FailMode::Local => {
                local.inc();
                check(payer.buckets, op).map(Some)
            }
        }
    }
}

/// `PREFIX:{org}:bucket[:token]`, built in one allocation (this runs for every bucket
/// of every request; `format!` would cost several times as much).
fn bucket_key(prefix: &str, org: &str, bucket: &str, token: Option<&str>) -> String {
    let parts = [prefix, ":{", org, "}:", bucket];
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + token.map_or(0, |t| t.len() + 1);
    let mut key = String::with_capacity(len);
    for part in parts {
        key.push_str(part);
    }
    if let Some(token) = token {
        key.push(':');
        key.push_str(token);
    }
    key
}

/// A bucket's key, made by [`RedisLimiter::charge`] before the bucket is queued.
fn key_of(bucket: &super::Bucket) -> &str {
    bucket.redis_key(String::new)
}

/// The script's reply, `n,n,n,...`, as numbers; `None` if any is not one.
fn parse_reply(reply: &[u8]) -> Option<Vec<i64>> {
    let text = std::str::from_utf8(reply).ok()?;
    text.split(',').filter(|n| !n.is_empty()).map(|n| n.parse().ok()).collect()
}

/// Each request's three numbers (`ok, i, value`, as [`RedisLimiter::charge`] reads
/// them) from the script's six per run of `sizes[r]` requests (see [`GCRA`]): the run's
/// first `admitted` requests are admitted with one fewer remaining each, the rest get the
/// run's refusal. `None` if the reply does not fit the runs.
fn per_request(reply: &[i64], sizes: &[usize]) -> Option<Vec<[i64; 3]>> {
    if reply.len() != 6 * sizes.len() {
        return None;
    }
    let mut answers = Vec::with_capacity(sizes.iter().sum());
    for (run, &size) in reply.chunks_exact(6).zip(sizes) {
        let &[admitted, least, left, ok, at, value] = run else { return None };
        let admitted = usize::try_from(admitted).ok().filter(|&a| a <= size)?;
        let mut remaining = left;
        for _ in 0..admitted {
            remaining -= 1;
            answers.push([1, least, remaining]);
        }
        answers.extend(std::iter::repeat_n([ok, at, value], size - admitted));
    }
    Some(answers)
}

/// Whether an error means the connection itself failed (reconnect), rather than Redis
/// answering with an error.
fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Whether `conn` is lost: PING unanswered within `timeout` (an error reply is an
/// answer).
async fn unanswered(conn: Conn, timeout: Duration) -> bool {
    let ping = async {
        match conn {
            Conn::Node(mut c) => redis::cmd("PING").query_async::<()>(&mut c).await,
            Conn::Cluster(mut c) => redis::cmd("PING").query_async::<()>(&mut c).await,
        }
    };
    match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(())) => false,
        Ok(Err(e)) => connection_lost(&e),
        Err(_) => true,
    }
}

/// A lane's connections: its own (with the generation it was opened for), and the one
/// being opened for it in the background.
#[derive(Default)]
struct LaneConn {
    own: Option<(u64, Conn)>,
    opening: Option<Opening>,
    /// A generation for which the lane could not open its own connection: it shares
    /// the first until the next reconnect.
    shares: Option<u64>,
}

struct Opening {
    generation: u64,
    /// Read without waiting (and without spending the lane's scheduling budget).
    result: oneshot::Receiver<Option<Conn>>,
}

/// The connection a batch goes on: the lane's own, or the shared one (kept to replace
/// it if it fails).
enum Lent {
    Own(Conn),
    Shared(Arc<Conn>),
}

impl Lent {
    fn conn(&self) -> Conn {
        match self {
            Lent::Own(conn) => conn.clone(),
            Lent::Shared(conn) => (**conn).clone(),
        }
    }
}

impl LaneConn {
    /// Takes the connection opened in the background once it is ready, if it is for
    /// the current `generation`; if it could not be opened, the lane shares the first
    /// until the next reconnect.
    fn take_opened(&mut self, generation: u64) {
        let Some(opening) = &mut self.opening else { return };
        let opened = match opening.result.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return,
            opened => opened.ok().flatten(),
        };
        if opening.generation == generation {
            match opened {
                Some(conn) => self.own = Some((generation, conn)),
                None => {
                    tracing::debug!("a lane could not open its own Redis connection; it shares the first");
                    self.shares = Some(generation);
                }
            }
        }
        self.opening = None;
    }

    /// Starts opening a connection for this lane, on the lane's thread. One that
    /// `replaces` a failed connection and cannot be opened takes Redis out of the
    /// request path.
    fn open(&mut self, limiter: &Arc<RedisLimiter>, generation: u64, replacing: bool) {
        let limiter = Arc::clone(limiter);
        let (done, result) = oneshot::channel();
        tokio::spawn(async move {
            let conn = limiter.connect_within_timeout().await;
            match &conn {
                Some(_) if replacing => tracing::info!("a lane's Redis connection failed; the lane opened another"),
                // Unless Redis was reconnected meanwhile (this failure is then stale).
                None if replacing && limiter.generation.load(Ordering::SeqCst) == generation => limiter.reconnect(),
                _ => {}
            }
            let _ = done.send(conn);
        });
        self.opening = Some(Opening { generation, result });
    }
}

/// A lane's batch task: takes every charge waiting and sends them in one call on the
/// lane's connection, then the next. Ends with the limiter.
/// A lane whose connection has carried nothing for a whole tick pings it, so that a
/// connection cut while idle (Redis's `timeout`, a NAT or firewall in between) is found
/// and replaced by the ping rather than by requests' charges.
async fn send_batches(limiter: Weak<RedisLimiter>, mut waiting: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(64);
    let mut lane = LaneConn::default();
    let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut used = false;
    loop {
        // Both branches are cancel-safe: a charge received is in `batch`, a tick missed
        // comes later.
        tokio::select! {
            received = waiting.recv_many(&mut batch, MAX_WAITING) => {
                let Some(limiter) = limiter.upgrade().filter(|_| received > 0) else { return };
                used = true;
                gather(&mut waiting, &mut batch).await;
                let lent = limiter.lane_connection(&mut lane);
                let conn = lent.as_ref().map(Lent::conn);
                let sent = std::mem::replace(&mut batch, Vec::with_capacity(64));
                if !limiter.send_batch(conn, sent).await {
                    if let Some(lent) = lent {
                        limiter.after_failure(lent, &mut lane);
                    }
                }
            }
            _ = idle.tick() => {
                if !std::mem::take(&mut used) {
                    let Some(limiter) = limiter.upgrade() else { return };
                    limiter.ping(&mut lane).await;
                }
            }
        }
    }
}

/// Lets the requests whose bytes have arrived add their charges before the batch goes.
/// The lane is woken by the first charge (or by the answer to its last call) in the
/// middle of a scheduler pass. On a current-thread runtime (each of `stackgate run`'s
/// serving threads) a yield runs it again only after the runtime's next look at its
/// sockets, behind the tasks that look wakes: those that reach their charge at once
/// share this call rather than the next. A call has a fixed cost beyond its charges,
/// in Redis and in the gateway, so fewer, larger calls cost less per request. A
/// multi-thread runtime may run a yielded task before the tasks its look at the
/// sockets wakes (its LIFO slot), so there the yield could only delay the batch, and is
/// skipped.
async fn gather<T>(waiting: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) {
    let flavor = tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)) {
        tokio::task::yield_now().await;
    }
    while batch.len() < MAX_WAITING {
        match waiting.try_recv() {
            Ok(charge) => batch.push(charge),
            Err(_) => break,
        }
    }
}

/// Pings the shared connection every [`KEEPALIVE`], whatever the lanes do. Lanes start
/// with a thread's first charge: in a gateway that has served no management-token
/// request yet, nothing else would find Redis gone, `/readyz` and the gauge would say
/// "up" through an outage, and the first request after it would meet the dead
/// connection. A lost connection is replaced, or Redis leaves the request path until
/// the reconnect loop finds it again.
/// On a gateway that sent no call since the last ping, an answered PING also ends
/// `refusing`: nothing else would, and an idle replica would report Redis unavailable
/// (and its gauge 0) until its next request.
async fn watch_shared(limiter: Weak<RedisLimiter>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calls = None;
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else { return };
        let sent = limiter.metrics.round_trips.get();
        let idle = calls.replace(sent) == Some(sent);
        // None: out of the request path, and the reconnect loop is at work; unless a
        // reconnect that found it at work took it out again just as the loop ended.
        let Some(shared) = limiter.conn.load_full() else {
            if !limiter.reconnecting.load(Ordering::Acquire) {
                limiter.reconnect();
            }
            continue;
        };
        // At least a second: one slow reply under load is not a lost connection (and a
        // lost one takes Redis out for every lane if no new one opens).
        let lost = unanswered((*shared).clone(), limiter.settings.timeout.max(WATCH_TIMEOUT)).await;
        // Only for the connection still in use: another may have replaced it meanwhile.
        let current = limiter.conn.load_full().is_some_and(|now| Arc::ptr_eq(&now, &shared));
        if current {
            limiter.set_flag(&limiter.lost, lost);
            if idle && !lost {
                limiter.set_flag(&limiter.refusing, false);
            }
        }
        if lost && current {
            tracing::info!("the shared Redis connection no longer answers; replacing it");
            limiter.replace_shared(shared);
        }
    }
}

/// The batch as runs of consecutive requests with the same buckets: each run's buckets
/// and how many requests it holds (the script's input, see [`GCRA`]).
/// Buckets are compared by identity: the same key with another rate is another bucket
/// (a reload in between), and splitting a run never changes an answer.
fn runs(group: &[Pending]) -> Vec<(&Buckets, usize)> {
    let mut runs: Vec<(&Buckets, usize)> = Vec::new();
    for pending in group {
        match runs.last_mut() {
            Some((buckets, times)) if same_buckets(buckets, &pending.buckets) => *times += 1,
            _ => runs.push((&pending.buckets, 1)),
        }
    }
    runs
}

fn same_buckets(a: &Buckets, b: &Buckets) -> bool {
    a.iter().zip(b).all(|pair| match pair {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (a, b) => a.is_none() && b.is_none(),
    })
}

/// A batch split by organisation, each part in arrival order (a cluster routes a call
/// by its keys' slot, and one organisation's keys share one: see [`hash_tag`]).
fn by_organisation(batch: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for pending in batch {
        match groups.iter_mut().find(|g| hash_tag(&g[0]) == hash_tag(&pending)) {
            Some(group) => group.push(pending),
            None => groups.push(vec![pending]),
        }
    }
    groups
}

/// What decides a request's cluster slot: its keys' `{org}` hash tag (every key of a
/// request carries the same one).
fn hash_tag(pending: &Pending) -> &str {
    let key = pending.buckets.iter().flatten().next().map_or("", |bucket| key_of(bucket));
    let tag = key.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(tag, _)| tag);
    tag.filter(|tag| !tag.is_empty()).unwrap_or(key)
}

/// The client for the configured URL(s), with the CA file's roots for `rediss://`.
fn endpoint(settings: &RedisLimits) -> Result<Endpoint, redis::RedisError> {
    let certs = match &settings.ca_file {
        Some(path) => Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(path).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read [ratelimit] ca_file",
                    format!("{}: {e}", path.display()),
                ))
            })?),
        }),
        None => None,
    };
    if !settings.cluster {
        let url = settings.urls.first().map(|u| u.expose()).unwrap_or_default();
        return Ok(Endpoint::Node(match certs {
            Some(certs) => Client::build_with_tls(url, certs)?,
            None => Client::open(url)?,
        }));
    }
    let mut builder = ClusterClientBuilder::new(settings.urls.iter().map(|u| u.expose()))
        .connection_timeout(settings.timeout.max(Duration::from_millis(500)))
        .response_timeout(settings.timeout)
        // A call never outlives `timeout` (the fail mode then decides), so retries
        // beyond a redirect or two would only be cut off.
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(50);
    if let Some(certs) = certs {
        builder = builder.certs(certs);
    }
    Ok(Endpoint::Cluster(builder.build()?))
}

/// At most one log line a second for errors Redis answers calls with: while it refuses
/// every script (out of memory) or a key holds another type, each call or request
/// would write one, thousands a second. A line says how many were held back since the
/// last (`held`); `stackgate_ratelimit_fallbacks_total` counts every request.
struct Repeats {
    since: std::time::Instant,
    /// Milliseconds after `since` from which the next line may be written.
    next: AtomicU64,
    held: AtomicU64,
}

impl Repeats {
    const EVERY_MS: u64 = 1000;

    fn new() -> Self {
        Repeats { since: std::time::Instant::now(), next: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    /// Whether a line is due now; if so, how many were held back.
    fn due(&self) -> Option<u64> {
        self.due_at(u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn due_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next.load(Ordering::Relaxed);
        let won = now_ms >= next
            && self.next.compare_exchange(next, now_ms + Self::EVERY_MS, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        match won {
            true => Some(self.held.swap(0, Ordering::Relaxed)),
            false => {
                self.held.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Errors Redis repeats on every call make one line a second, the next saying how
    /// many were held back.
    #[test]
    fn repeated_refusals_are_logged_once_a_second_with_the_count_held_back() {
        let repeats = super::Repeats::new();
        assert_eq!(repeats.due_at(5), Some(0));
        assert_eq!(repeats.due_at(6), None);
        assert_eq!(repeats.due_at(1004), None);
        assert_eq!(repeats.due_at(1005), Some(2));
        assert_eq!(repeats.due_at(1500), None);
        assert_eq!(repeats.due_at(9000), Some(1));
    }

    /// Redis Cluster's key slot (CRC16/XMODEM of the hash tag, mod 16384).
    fn slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
            let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        });
        let mut crc: u16 = 0;
        for &b in tagged.unwrap_or(bytes) {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            }
        }
        crc % 16384
    }

    #[test]
    fn only_consecutive_requests_with_the_same_buckets_share_a_run() {
        use crate::ratelimit::{Bucket, RateClock};
        use std::sync::Arc;
        let clock = RateClock::fake();
        let bucket = |key: &str, rate: u32| {
            let bucket = Arc::new(Bucket::new("b", rate, 5, &clock));
            bucket.redis_key(|| key.to_owned());
            bucket
        };
        let (a, b, org) = (bucket("t:a", 5), bucket("t:b", 5), bucket("org", 10));
        // Same key, another rate (a reload between the two): another bucket.
        let a_reloaded = bucket("t:a", 10);
        let pending = |buckets: [&Arc<Bucket>; 2]| super::Pending {
            buckets: [Some(Arc::clone(buckets[0])), Some(Arc::clone(buckets[1])), None],
            reply: tokio::sync::oneshot::channel().0,
        };
        let batch = [
            pending([&a, &org]),
            pending([&a, &org]),
            pending([&b, &org]),
            pending([&a, &org]),
            pending([&a_reloaded, &org]),
        ];
        let runs: Vec<(Vec<&str>, usize)> = super::runs(&batch)
            .into_iter()
            .map(|(buckets, times)| (buckets.iter().flatten().map(|b| super::key_of(b)).collect(), times))
            .collect();
        let expected =
            [(vec!["t:a", "org"], 2), (vec!["t:b", "org"], 1), (vec!["t:a", "org"], 1), (vec!["t:a", "org"], 1)];
        assert_eq!(runs, expected);
        assert_eq!(runs.iter().map(|(_, n)| n).sum::<usize>(), batch.len(), "every request, in order");
    }

    #[test]
    fn each_runs_six_numbers_become_its_requests_answers() {
        // Run of 4: 2 admitted (bucket 2 closest to empty, 5 left before), then refused by
        // bucket 1 for 300 µs. Run of 1: its key broken.
        let answers = super::per_request(&[2, 2, 5, 0, 1, 300, 0, 1, 0, -1, 3, 0], &[4, 1]);
        let expected = vec![[1, 2, 4], [1, 2, 3], [0, 1, 300], [0, 1, 300], [-1, 3, 0]];
        assert_eq!(answers, Some(expected));
        assert_eq!(super::per_request(&[1, 1, 1, -1, 0, 0], &[1]), Some(vec![[1, 1, 0]]));
        // A reply that does not fit the runs fails the whole call (the fail mode decides).
        assert_eq!(super::per_request(&[1, 1, 1, -1, 0, 0], &[1, 1]), None, "a run missing");
        assert_eq!(super::per_request(&[3, 1, 9, -1, 0, 0], &[2]), None, "more admitted than sent");
        assert_eq!(super::per_request(&[-1, 1, 9, 0, 1, 5], &[2]), None, "a negative count");
    }

    /// The script charges a run in closed form; this checks it against charging each
    /// request in turn (the script as it was before, kept here as the reference) on a
    /// real Redis, over random batches: the same answers for every request and the same
    /// times left in every key. Both see one fixed clock (their `TIME` replaced), and
    /// start from the same keys: absent, in the past, in the future, or of another type.
    #[tokio::test]
    async fn a_run_charged_at_once_answers_as_charging_each_request_in_turn() {
        let Ok(url) = std::env::var("STACKGATE_TEST_REDIS_URL") else {
            eprintln!("SKIPPED: set STACKGATE_TEST_REDIS_URL (bash .ci/run does)");
            return;
        };
        let client = redis::Client::open(url).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        const NOW: i64 = 1_700_000_000_000_000;
        // One clock for both, and keys that outlive the comparison (the script's own
        // expiry follows its clock, milliseconds after it for a nearly empty bucket).
        let fixed = |script: &str| {
            let (time, expiry) = ("redis.call('TIME')", "'PX', math.ceil((tat - now) / 1000) + 1");
            assert!(script.contains(time) && script.contains(expiry));
            script.replace(time, "{'1700000000', '0'}").replace(expiry, "'PX', 60000")
        };
        let (reference, closed_form) =
            (redis::Script::new(&fixed(ONE_BY_ONE)), redis::Script::new(&fixed(super::GCRA)));
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let prefix = format!("sgtest:{}:{}", std::process::id(), NOW);
        let intervals = [1u64, 3, 1_000, 200_000, 333_334];
        for case in 0..400 {
            let names: Vec<String> = (0..4).map(|k| format!("k{k}")).collect();
            let mut start = Vec::new();
            for _ in &names {
                start.push(match next(10) {
                    0..=2 => None,
                    3..=5 => Some(Some(NOW - next(3_000_000) as i64)),
                    6..=8 => Some(Some(NOW + next(2_000_000) as i64)),
                    _ => Some(None),
                });
            }
            let mut batch = Vec::new();
            for _ in 0..1 + next(4) {
                let mut keys = names.clone();
                let mut buckets = Vec::new();
                for _ in 0..1 + next(3) {
                    let name = keys.remove(next(keys.len() as u64) as usize);
                    let interval = intervals[next(intervals.len() as u64) as usize];
                    buckets.push((name, interval, interval * (1 + next(6))));
                }
                batch.push((buckets, 1 + next(10) as usize));
            }
            let mut answers = Vec::new();
            let mut left = Vec::new();
            for (side, script) in [("one", &reference), ("run", &closed_form)] {
                let key = |name: &str| format!("{prefix}:{case}:{side}:{name}");
                for (name, state) in names.iter().zip(&start) {
                    let _: () = redis::cmd("DEL").arg(key(name)).query_async(&mut conn).await.unwrap();
                    match state {
                        Some(Some(tat)) => {
                            let _: () = redis::cmd("SET").arg(key(name)).arg(tat).query_async(&mut conn).await.unwrap();
                        }
                        Some(None) => {
                            let _: () =
                                redis::cmd("RPUSH").arg(key(name)).arg("x").query_async(&mut conn).await.unwrap();
                        }
                        None => {}
                    }
                }
                let mut invocation = script.prepare_invoke();
                invocation.arg(batch.len());
                for (buckets, times) in &batch {
                    invocation.arg(buckets.len()).arg(*times);
                    for (name, interval, tolerance) in buckets {
                        invocation.key(key(name)).arg(*interval).arg(*tolerance);
                    }
                }
                let reply: Vec<u8> = invocation.invoke_async(&mut conn).await.unwrap();
                let numbers = super::parse_reply(&reply).expect("numbers");
                answers.push(if side == "one" {
                    Some(numbers.chunks_exact(3).map(|n| [n[0], n[1], n[2]]).collect::<Vec<_>>())
                } else {
                    super::per_request(&numbers, &batch.iter().map(|(_, times)| *times).collect::<Vec<_>>())
                });
                let mut times = Vec::new();
                for name in &names {
                    let stored: redis::Value =
                        redis::cmd("GET").arg(key(name)).query_async(&mut conn).await.unwrap_or(redis::Value::Nil);
                    times.push(format!("{stored:?}"));
                    let _: () = redis::cmd("DEL").arg(key(name)).query_async(&mut conn).await.unwrap();
                }
                left.push(times);
            }
            assert!(answers[0].is_some(), "case {case}");
            assert_eq!(answers[0], answers[1], "case {case}: {batch:?} from {start:?}");
            assert_eq!(left[0], left[1], "case {case}: {batch:?} from {start:?}");
        }
    }

    #[test]
    fn bucket_keys_are_hash_tagged_by_organisation() {
        assert_eq!(super::bucket_key("sg", "org_a", "org-read", None), "sg:{org_a}:org-read");
        assert_eq!(super::bucket_key("sg", "org_a", "token-read", Some("blt1")), "sg:{org_a}:token-read:blt1");
    }

    /// More charges at once than a lane's queue holds, with Redis healthy: every one is
    /// charged in Redis (the rest wait for room), none is left to the fail mode, which
    /// under `open` would admit them all.
    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_larger_than_the_queue_is_charged_in_redis() {
        use crate::cma::{Access, Module, Operation, Rule};
        use crate::ratelimit::{BackendMetrics, Bucket, Charge, Payer, RateClock, TokenBuckets};
        use std::sync::Arc;
        let Ok(url) = std::env::var("STACKGATE_TEST_REDIS_URL") else {
            eprintln!("SKIPPED: set STACKGATE_TEST_REDIS_URL (bash .ci/run does)");
            return;
        };
        let prefix = format!("queue-{}-{}", std::process::id(), line!());
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[ratelimit]\nbackend = \"redis\"\nurl = \"{url}\"\n\
             fail_mode = \"open\"\nkey_prefix = \"{prefix}\"\ntimeout = \"2s\"\n"
        );
        let config = crate::config::from_str(&text).expect("config");
        let settings = config.ratelimit.redis.clone().expect("redis settings");
        let metrics = BackendMetrics::default();
        let limiter = super::RedisLimiter::start(&settings, metrics.clone()).await.expect("redis");
        let clock = RateClock::fake();
        // One a second with a burst of 5: a second of charging admits 6 at most.
        let own = Arc::new(Bucket::new("token-read", 1, 5, &clock));
        let charge = Charge::new(Some(own), None, Arc::new(Bucket::new("org-read", 100_000, 100_000, &clock)));
        let buckets =
            TokenBuckets { read: charge.clone(), write: charge.clone(), bulk_read: charge.clone(), bulk_write: charge };
        let payer = Payer { buckets: &buckets, token_uid: "t", org_uid: "o" };
        let op = Operation { module: Module::Entry, access: Access::Read, rule: Rule::Plain };
        let answers =
            futures_util::future::join_all((0..3 * super::MAX_WAITING).map(|_| limiter.charge(payer, &op))).await;
        let admitted = answers.iter().filter(|a| matches!(a, Ok(Some(_)))).count();
        let refused =
            answers.iter().filter(|a| matches!(a, Err(crate::error::GatewayError::RateLimited { .. }))).count();
        assert_eq!(metrics.fallbacks.iter().map(|c| c.get()).sum::<u64>(), 0, "none left to the fail mode");
        assert!((5..=6).contains(&admitted), "admitted {admitted}");
        assert_eq!(admitted + refused, answers.len());
    }

    /// The lane's wait before it sends, on a current-thread runtime as `stackgate run`'s:
    /// a request whose bytes are on its socket when the lane is woken (the runtime has
    /// not looked yet) joins the batch; without the wait it would go in the next call.
    #[tokio::test(flavor = "current_thread")]
    async fn a_charge_whose_bytes_have_arrived_joins_the_batch() {
        use std::io::Write;
        use tokio::sync::{mpsc, oneshot};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let probe = server.try_clone().unwrap();
        let server = tokio::net::TcpStream::from_std(server).unwrap();
        let (queue, mut waiting) = mpsc::channel(super::MAX_WAITING);
        // A request: charged once its bytes are there.
        let request = tokio::spawn({
            let queue = queue.clone();
            async move {
                server.readable().await.unwrap();
                queue.send("second").await.unwrap();
            }
        });
        let (sent, batch) = oneshot::channel();
        let lane = tokio::spawn(async move {
            let mut batch = Vec::new();
            waiting.recv_many(&mut batch, super::MAX_WAITING).await;
            super::gather(&mut waiting, &mut batch).await;
            let _ = sent.send(batch);
        });
        // Both wait (the request on its socket, the lane on its queue).
        tokio::task::yield_now().await;
        client.write_all(b"GET").unwrap();
        // On the socket before the lane is woken (loopback may queue them a moment later
        // on a loaded machine); peeked without the runtime, which must not look yet.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while probe.peek(&mut [0u8; 1]).is_err() {
            assert!(std::time::Instant::now() < deadline, "the bytes never arrived");
            std::thread::yield_now();
        }
        queue.send("first").await.unwrap();
        assert_eq!(batch.await.unwrap(), ["first", "second"]);
        request.await.unwrap();
        lane.await.unwrap();
    }

    #[test]
    fn the_scripts_reply_reads_as_numbers_or_not_at_all() {
        assert_eq!(super::parse_reply(b"1,2,99,0,1,5000,-1,3,0"), Some(vec![1, 2, 99, 0, 1, 5000, -1, 3, 0]));
        assert_eq!(super::parse_reply(b""), Some(vec![]));
        for bad in [&b"1,2,x"[..], b"1,,2.5", b"\xff", b"1e5"] {
            assert_eq!(super::parse_reply(bad), None, "{bad:?}");
        }
    }

    /// Every key one request's script touches is in the organisation's slot, so the
    /// script runs on one cluster node (no CROSSSLOT), whatever the organisation uid.
    #[test]
    fn a_scripts_keys_share_one_slot() {
        assert_eq!(slot("123456789"), 12739, "the CRC16 of the Redis Cluster spec");
        for org in ["org_small", "o", "a}b", "x{y", "\u{e9}t\u{e9}"] {
            let keys: Vec<String> = ["token-read:blt1", "bulk", "org-read"]
                .iter()
                .map(|bucket| format!("stackgate:{{{org}}}:{bucket}"))
                .collect();
            let first = slot(&keys[0]);
            assert!(keys.iter().all(|k| slot(k) == first), "{org}: {keys:?}");
        }
        assert_ne!(slot("stackgate:{org_a}:org-read"), slot("stackgate:{org_b}:org-read"), "organisations spread");
    }

    /// The script before runs were charged in closed form: each request in turn.
    const ONE_BY_ONE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat_of, changed = {}, {}
local out = {}
local key, arg = 0, 2
for r = 1, tonumber(ARGV[1]) do
  local count, times = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1])
  arg = arg + 2
  local names, intervals, tolerances = {}, {}, {}
  for i = 1, count do
    names[i] = KEYS[key + i]
    intervals[i] = tonumber(ARGV[arg + 2 * i - 2])
    tolerances[i] = tonumber(ARGV[arg + 2 * i - 1])
  end
  local tats = {}
  for _ = 1, times do
    local ok, at, value = 1, 1, -1
    for i = 1, count do
      local name, interval, tolerance = names[i], intervals[i], tolerances[i]
      local tat = tat_of[name]
      if tat == nil then
        local stored = redis.pcall('GET', name)
        if type(stored) == 'table' and stored.err then
          ok, at, value = -1, i, 0
          break
        end
        tat = tonumber(stored) or now
      end
      if tat < now then tat = now end
      local new_tat = tat + interval
      local allow_at = new_tat - tolerance
      if now < allow_at then
        ok, at, value = 0, i, allow_at - now
        break
      end
      tats[i] = new_tat
      local remaining = math.floor((tolerance - (new_tat - now)) / interval)
      if value < 0 or remaining < value then
        at, value = i, remaining
      end
    end
    if ok == 1 then
      for i = 1, count do
        local name = names[i]
        if tat_of[name] == nil then changed[#changed + 1] = name end
        tat_of[name] = tats[i]
      end
    end
    out[#out + 1] = string.format('%d,%d,%d', ok, at, value)
  end
  key = key + count
  arg = arg + 2 * count
end
for _, name in ipairs(changed) do
  local tat = tat_of[name]
  redis.call('SET', name, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return table.concat(out, ',')
";
}

//! Buckets shared by every replica, in Redis (DESIGN.md section 7).
//!
//! One Lua script per request (one round trip) runs GCRA over the request's buckets in
//! charging order (the token's own, bulk, then the organisation's) on Redis's own
//! clock, so replicas' clocks never matter. It is all-or-nothing: a request refused by
//! any bucket charges none, so a token over its own limit never spends its
//! organisation's budget. Keys are hash-tagged by organisation (`{org}`), so the keys a
//! script touches live on one Redis Cluster slot.
//!
//! While Redis cannot be reached, the configured fail mode decides; the connection is
//! re-established in the background and Redis takes over again without a restart.
//!
//! One server (`redis://`, or `rediss://` over rustls) or a Redis Cluster: the cluster
//! client routes each script by its first key's slot, which is every key's slot (the
//! organisation's hash tag), and follows a failover to the promoted replica.

use super::{admitted, charge_for, check, refused, BackendMetrics, Payer, RateInfo};
use crate::cma::Operation;
use crate::config::{FailMode, RedisLimits};
use crate::error::GatewayError;
use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Script, TlsCertificates};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// GCRA over `#KEYS` buckets. ARGV holds, per bucket, its emission interval and its
/// tolerance (interval x burst), in microseconds. Returns `{1, i, remaining}` with the
/// bucket closest to empty, or `{0, i, wait_us}` with the bucket that refused.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local closest, closest_remaining = 1, -1
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance
  if now < allow_at then
    return {0, i, allow_at - now}
  end
  tats[i] = new_tat
  local remaining = math.floor((tolerance - (new_tat - now)) / interval)
  if closest_remaining < 0 or remaining < closest_remaining then
    closest, closest_remaining = i, remaining
  end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return {1, closest, closest_remaining}
";

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
    /// `None` while Redis is unreachable (the fail mode applies without waiting).
    conn: ArcSwapOption<Conn>,
    reconnecting: AtomicBool,
    script: Script,
    settings: RedisLimits,
    metrics: BackendMetrics,
}

impl RedisLimiter {
    /// Connects (or, if Redis is down, starts reconnecting in the background: the
    /// gateway serves in the fail mode meanwhile).
    pub async fn start(settings: &RedisLimits, metrics: BackendMetrics) -> Result<Arc<Self>, redis::RedisError> {
        let endpoint = endpoint(settings)?;
        let limiter = Arc::new(RedisLimiter {
            endpoint,
            conn: ArcSwapOption::empty(),
            reconnecting: AtomicBool::new(false),
            script: Script::new(GCRA),
            settings: settings.clone(),
            metrics,
        });
        match limiter.connect().await {
            Ok(conn) => limiter.conn.store(Some(Arc::new(conn))),
            Err(e) => {
                tracing::warn!(error = %e, fail_mode = ?settings.fail_mode, "Redis unreachable at start; the fail mode applies until it answers");
                limiter.metrics.up.set(0);
                limiter.reconnect();
            }
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
        self.metrics.up.set(0);
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
                        this.conn.store(Some(Arc::new(conn)));
                        this.metrics.up.set(1);
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

    /// Charges the request in Redis, or applies the fail mode.
    pub async fn charge(self: &Arc<Self>, payer: Payer<'_>, op: &Operation) -> Result<Option<RateInfo>, GatewayError> {
        let Some(conn) = self.conn.load_full() else {
            return self.fail(payer, op);
        };
        let charge = charge_for(payer.buckets, op);
        let org = payer.org_uid;
        let mut invocation = self.script.prepare_invoke();
        let mut key = String::with_capacity(64);
        for (bucket, own) in charge.parts() {
            key.clear();
            let _ = write!(key, "{}:{{{org}}}:{}", self.settings.key_prefix, bucket.name());
            if own {
                let _ = write!(key, ":{}", payer.token_uid);
            }
            let interval = 1_000_000u64.div_ceil(u64::from(bucket.rate()));
            invocation.key(key.as_str()).arg(interval).arg(interval * u64::from(bucket.burst()));
        }
        let call = async {
            match (*conn).clone() {
                Conn::Node(mut c) => invocation.invoke_async::<Vec<i64>>(&mut c).await,
                Conn::Cluster(mut c) => invocation.invoke_async::<Vec<i64>>(&mut c).await,
            }
        };
        let answer = tokio::time::timeout(self.settings.timeout, call).await;
        let (ok, index, value) = match answer {
            Ok(Ok(v)) if v.len() == 3 => (v[0] == 1, v[1], v[2]),
            Ok(Ok(_)) => {
                tracing::error!("rate-limit script answered in an unexpected shape");
                return self.fail(payer, op);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis rate-limit call failed; reconnecting");
                self.reconnect();
                return self.fail(payer, op);
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.settings.timeout, "Redis rate-limit call timed out; reconnecting");
                self.reconnect();
                return self.fail(payer, op);
            }
        };
        let bucket = usize::try_from(index - 1).ok().and_then(|i| charge.parts().nth(i)).map(|(b, _)| b);
        let Some(bucket) = bucket else {
            return self.fail(payer, op);
        };
        let value = u64::try_from(value).unwrap_or(0);
        if ok {
            Ok(Some(admitted(bucket, u32::try_from(value).unwrap_or(u32::MAX), charge.policy())))
        } else {
            Err(refused(bucket, charge.policy(), Duration::from_micros(value)))
        }
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

#[cfg(test)]
mod tests {
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
}

//! The running gateway's shared state: the one [`Snapshot`] every request reads
//! (config, tokens, upstream client, TLS certificates, swapped whole), and the
//! ways it changes: a config reload, a committed token change, another replica's
//! change followed from the shared store. Changes are serialised by one writer lock;
//! readers never wait.

use crate::clock::Clock;
use crate::config::{self, Config, ConfigErrors};
use crate::error::GatewayError;
use crate::guard::{Kind, Known};
use crate::pipeline::Presented;
use crate::proxy::UpstreamClient;
use crate::ratelimit::{Limiter, RateClock};
use crate::snapshot::{Snapshot, SnapshotBuilder};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{StoreError, StoreEvent, TokenStore};
use crate::telemetry::Metrics;
use crate::tls::TlsError;
use crate::token::TokenRecord;
use arc_swap::ArcSwap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How a committed store change alters the snapshot.
pub enum Change<'a> {
    /// A token created or updated (same secret hashes: replaced).
    Upsert(&'a TokenRecord),
    /// A token regenerated: its old index entries go (the old secret comes back as the
    /// previous one while a grace period keeps it), the new ones come in.
    Rotate(&'a TokenRecord),
    /// A token deleted: every secret hash it had.
    Remove(&'a TokenRecord),
}

/// Why a new configuration was not installed; the running one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("rate-limit backend: {0}")]
    RateLimit(#[from] redis::RedisError),
    #[error("no config file to reload from")]
    NoFile,
}

/// What a successful reload did not apply because it needs a restart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub restart_required: Vec<&'static str>,
}

/// The running gateway's shared state.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    store: Arc<dyn TokenStore>,
    /// Serialises "commit to the store / reload, then swap the snapshot" so two changes
    /// can never swap in snapshots that each miss the other's change.
    writer: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    rate_clock: RateClock,
    config_path: Option<PathBuf>,
    draining: AtomicBool,
    /// `shutdown_grace` ran out: what is still open is being dropped.
    cut: AtomicBool,
    /// Failed-authentication counters per client address.
    guard: crate::guard::AuthGuard,
    /// The bytes held by bodies being read for the body rules, in all.
    inspecting: crate::server::BodyBudget,
    /// The same for token-API bodies, apart: no token's bodies can keep owners from
    /// suspending or rotating tokens.
    token_api_bodies: crate::server::BodyBudget,
    /// Where rate buckets are charged (set at start; changing it needs a restart).
    pub(crate) limiter: Limiter,
    /// This process among replicas (lease holder name).
    replica_id: String,
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    /// Builds the first snapshot from a validated config and the store's tokens.
    pub async fn new(
        config: Config,
        store: Arc<dyn TokenStore>,
        clock: Arc<dyn Clock>,
        rate_clock: RateClock,
        config_path: Option<PathBuf>,
    ) -> Result<Self, ReloadError> {
        crate::config::log_warnings(&config, clock.now());
        let tls = config.server.tls.as_ref().map(crate::tls::server_config).transpose()?;
        let upstream = UpstreamClient::new(&config.upstream)?;
        let notify = config.notify.clone();
        let warn = move |rec: &TokenRecord| crate::config::warn_if_no_channel(&notify, rec);
        let loaded = load_snapshot(&*store, Arc::new(config), None, &rate_clock, upstream, warn).await?;
        let snapshot = loaded.unless_clashing()?.with_tls(tls);
        // At start the tokens are served (refusing to start would take every stack
        // down); the token API creates none on these stacks until they are under it.
        for over in snapshot.stacks_over_cap() {
            tracing::warn!(
                "{over}: this stack holds more tokens than its organisation allows; the token API \
                 creates none there until it is under the cap"
            );
        }
        let metrics = Arc::new(Metrics::new());
        metrics.tokens_loaded.set(i64::try_from(snapshot.token_count()).unwrap_or(i64::MAX));
        let limiter = match &snapshot.config.ratelimit.redis {
            None => Limiter::Local,
            Some(settings) => Limiter::Redis(
                crate::ratelimit::redis::RedisLimiter::start(settings, metrics.ratelimit_backend()).await?,
            ),
        };
        let snapshot = Arc::new(snapshot);
        metrics.set_snapshot(Arc::clone(&snapshot));
        Ok(Gateway {
            snapshot: ArcSwap::new(snapshot),
            store,
            writer: tokio::sync::Mutex::new(()),
            clock,
            rate_clock,
            config_path,
            draining: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            guard: crate::guard::AuthGuard::default(),
            inspecting: crate::server::BodyBudget::new(metrics.inspected_body_bytes.clone()),
            token_api_bodies: crate::server::BodyBudget::new(metrics.inspected_body_bytes.clone()),
            limiter,
            replica_id: crate::store::process_id(),
            metrics,
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// This process's name among replicas sharing a store.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Counts a failed sign-in outside the pipeline (the token console's) as a
    /// credential guess from `ip`, as the main listener does: `Err(seconds)` while that
    /// address cools down.
    pub(crate) fn failed_sign_in(&self, ip: std::net::IpAddr) -> Result<(), u64> {
        self.guard.guess(ip, &self.snapshot().config.guard)
    }

    /// The guard's gate, asked before a credential is looked up: 429 while `ip`'s
    /// address cools down and the credential presented is not at work there (see
    /// `guard`), on every route that reads a credential.
    pub(crate) fn gate(
        &self,
        ip: std::net::IpAddr,
        cfg: &config::Guard,
        now: i64,
        presented: Presented<'_>,
    ) -> Result<(), GatewayError> {
        let refused = |retry_after| GatewayError::Throttled { retry_after };
        self.guard.gate(ip, cfg, now, || self.known(presented)).map_err(refused)
    }

    /// Whether a credential that succeeded from `ip` (`who`) gets its answer (the
    /// guard's 429 for a cool-down that began after the gate), remembering it as at work
    /// there.
    pub(crate) fn admit(
        &self,
        ip: std::net::IpAddr,
        cfg: &config::Guard,
        now: i64,
        who: Option<Known>,
    ) -> Result<(), GatewayError> {
        self.guard.admits(ip, cfg, now, who).map_err(|retry_after| GatewayError::Throttled { retry_after })
    }

    /// What the guard remembers of a presented credential (none for a missing one),
    /// hashing its secret.
    pub(crate) fn known(&self, presented: Presented<'_>) -> Option<Known> {
        let (kind, secret, api_key) = match presented {
            Presented::Token { secret, api_key } => (Kind::Token, secret, api_key),
            Presented::User { authtoken, api_key } => (Kind::User, authtoken, api_key),
            Presented::Console { authtoken } => (Kind::Console, authtoken, &b""[..]),
            Presented::Missing => return None,
        };
        Some(self.guard.known(kind, &crate::token::hash_secret(secret), api_key))
    }

    /// Whether shutdown has begun (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Shutdown has begun.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether `shutdown_grace` ran out: a request ending unanswered now was cut off
    /// by the gateway, not left by its client.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    /// `shutdown_grace` ran out; the connections still open are being dropped.
    pub fn cut_off(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Failed-authentication counters per client address.
    pub fn guard(&self) -> &crate::guard::AuthGuard {
        &self.guard
    }

    /// The bytes held by bodies being read for the body rules (`max_inspected_total`).
    pub(crate) fn inspecting(&self) -> &crate::server::BodyBudget {
        &self.inspecting
    }

    /// The bytes held by token-API bodies (`max_inspected_total` too, counted apart).
    pub(crate) fn token_api_bodies(&self) -> &crate::server::BodyBudget {
        &self.token_api_bodies
    }

    /// Installs `next`; returns its token count (a scan of the index, done once).
    fn swap(&self, next: Snapshot) -> usize {
        let count = next.token_count();
        self.metrics.tokens_loaded.set(i64::try_from(count).unwrap_or(i64::MAX));
        let next = Arc::new(next);
        self.metrics.set_snapshot(Arc::clone(&next));
        self.snapshot.store(next);
        count
    }

    /// Validates and installs a new config whole: a new snapshot (with the store's
    /// tokens), reloaded certificates, a new upstream client if its settings changed.
    /// Settings that need a restart keep their running values and are reported.
    pub async fn install(&self, mut config: Config) -> Result<ReloadReport, ReloadError> {
        let _writer = self.writer.lock().await;
        let current = self.snapshot.load_full();
        let report = keep_restart_only_settings(&current.config, &mut config);
        let tls = config.server.tls.as_ref().map(crate::tls::server_config).transpose()?;
        let upstream = UpstreamClient::reuse_or_new(Some(&current.upstream), &config.upstream)?;
        let next = load_snapshot(&*self.store, Arc::new(config), Some(current), &self.rate_clock, upstream, |_| {});
        let next = next.await?.unless_clashing()?;
        // A reload is a change made now: one that passes a stack's cap is refused whole.
        let over = next.stacks_over_cap();
        if !over.is_empty() {
            let message =
                format!("{}; remove static tokens or delete stored ones through the token API first", over.join(", "));
            return Err(ReloadError::Config(crate::config::ConfigErrors::single("stacks", message)));
        }
        self.swap(next.with_tls(tls));
        Ok(report)
    }

    /// Applies a change another replica made to the shared store: re-reads the token
    /// (gone: deleted) and swaps in a snapshot with it.
    async fn apply_remote(&self, stack: &str, uid: &str) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let rec = self.store.get(stack, uid).await?;
        let current = self.snapshot.load();
        // The notification names the token, not its secret's hash: find what it replaces.
        let old = current.find_stored(stack, uid);
        let kept = rec.as_ref().map(TokenRecord::hashes).unwrap_or_default();
        for hash in old.iter().filter(|h| !kept.contains(h)) {
            self.guard.revoked(*hash);
        }
        let next = current.with_token_change(rec.as_ref(), &old);
        self.swap(next);
        tracing::debug!(token.uid = %uid, present = rec.is_some(), "token change from another replica applied");
        Ok(())
    }

    /// Deletes a token this replica's given-up create made after all (answered 503,
    /// its secret shown to no one): as the answer said, nothing is left. Finding none
    /// is the usual case (the commit did not land).
    async fn remove_orphan(self: &Arc<Self>, stack: &str, uid: &str) -> Result<(), StoreError> {
        let (stack, uid) = (stack.to_owned(), uid.to_owned());
        let at = crate::token_api::now_rfc3339(self.clock.now());
        let removed = self
            .commit(
                move |store| async move { store.delete(&stack, &uid, "stackgate", &at).await },
                |rec| Change::Remove(rec),
            )
            .await;
        match removed {
            Ok(rec) => {
                tracing::warn!(token.uid = %rec.uid, stack = %rec.stack,
                    "deleted a token whose create was answered 503 but committed after the answer");
                Ok(())
            }
            Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Re-reads every stored token into a new snapshot (same config; rate buckets of
    /// unchanged tokens kept), after changes may have been missed.
    async fn resync(&self) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let current = self.snapshot.load_full();
        let (config, upstream, tls) = (Arc::clone(&current.config), current.upstream.clone(), current.tls.clone());
        // A clash was refused when the config came in; one made since (the token API
        // never gives a static token's uid) is left out and logged.
        let loaded = load_snapshot(&*self.store, config, Some(current), &self.rate_clock, upstream, |_| {}).await?;
        crate::snapshot::log_clashes(&loaded.clashes);
        let next = loaded.snapshot;
        let count = self.swap(next.with_tls(tls));
        tracing::debug!(tokens = count, "tokens re-read from the shared store");
        Ok(())
    }

    /// Applies other replicas' changes as the shared store reports them. A change that
    /// cannot be read back (store down) turns into a full re-read, retried until it
    /// succeeds, so a deletion is never dropped. Re-reads queued one behind another
    /// (reconnects while a slow server answered the last) are made once: the one made
    /// after them all covers them.
    pub async fn follow(self: Arc<Self>, mut events: tokio::sync::mpsc::UnboundedReceiver<StoreEvent>) {
        let mut held = None;
        while let Some(event) = next_event(&mut held, &mut events).await {
            let mut result = match &event {
                StoreEvent::Changed { stack, uid } => self.apply_remote(stack, uid).await,
                StoreEvent::Resync => self.resync().await,
                StoreEvent::Orphaned { stack, uid } => self.remove_orphan(stack, uid).await,
            };
            let mut backoff = std::time::Duration::from_millis(100);
            while let Err(e) = result {
                tracing::warn!(error = %e, retry_in = ?backoff, "could not apply token changes from the shared store");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                result = match &event {
                    StoreEvent::Orphaned { stack, uid } => self.remove_orphan(stack, uid).await,
                    _ => self.resync().await,
                };
            }
        }
    }

    /// Re-reads the config file (SIGHUP, `POST /reload`). An invalid file is rejected
    /// whole, logged and counted; the running config keeps serving.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = match &self.config_path {
            None => Err(ReloadError::NoFile),
            Some(path) => match config::load(path) {
                Ok(cfg) => self.install(cfg).await,
                Err(e) => Err(ReloadError::Config(e)),
            },
        };
        self.metrics.reload(result.is_ok());
        match &result {
            Ok(report) if report.restart_required.is_empty() => {
                tracing::info!("configuration reloaded")
            }
            Ok(report) => {
                tracing::warn!(restart_required = ?report.restart_required, "configuration reloaded; some changes need a restart and were not applied")
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload rejected; the previous configuration stays")
            }
        }
        result
    }

    /// Runs a store operation and, once it has committed, applies its change to the
    /// snapshot. Runs on its own task so a client that hangs up cannot leave the store
    /// changed and the snapshot not.
    pub async fn commit<T, F, Fut>(
        self: &Arc<Self>,
        op: F,
        change: for<'a> fn(&'a T) -> Change<'a>,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn TokenStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let gw = Arc::clone(self);
        let task = tokio::spawn(async move {
            // Bounded like the store call itself: behind a store that does not answer,
            // changes queued here would otherwise wait one bound each, in turn.
            let waited = tokio::time::timeout(crate::store::answered::ANSWER_TIMEOUT, gw.writer.lock()).await;
            let _writer =
                waited.map_err(|_| StoreError::Unavailable("earlier token changes are still waiting".into()))?;
            let value = op(Arc::clone(&gw.store)).await?;
            let current = gw.snapshot.load();
            let next = match change(&value) {
                Change::Upsert(rec) => current.with_token_change(Some(rec), &[]),
                Change::Rotate(rec) => {
                    let old = current.find_stored(&rec.stack, &rec.uid);
                    let kept = rec.hashes();
                    // A secret that stops at once is a stale credential, not a guess.
                    for hash in old.iter().filter(|h| !kept.contains(h)) {
                        gw.guard.revoked(*hash);
                    }
                    current.with_token_change(Some(rec), &old)
                }
                Change::Remove(rec) => {
                    let hashes = rec.hashes();
                    for hash in &hashes {
                        gw.guard.revoked(*hash);
                    }
                    current.with_token_change(None, &hashes)
                }
            };
            gw.swap(next);
            Ok(value)
        });
        task.await.map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

/// Reads every stored token into a new snapshot. The snapshot is built on the blocking
/// pool while the store reads (with a million tokens it takes seconds, which must not
/// stall a thread that serves requests), batch by batch, so the records are never all
/// in memory at once: each is dropped once its index entry is made. `each` sees every
/// stored record on the way (start-up warnings).
async fn load_snapshot(
    store: &dyn TokenStore,
    config: Arc<Config>,
    previous: Option<Arc<Snapshot>>,
    rate_clock: &RateClock,
    upstream: UpstreamClient,
    each: impl Fn(&TokenRecord) + Send + 'static,
) -> Result<Loaded, StoreError> {
    // A few batches in flight let the store read the next while this one is indexed.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<TokenRecord>>(4);
    let rate_clock = rate_clock.clone();
    let expected = store.count().await?;
    // The build's warnings go where the caller's would (its subscriber, not the global one).
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let build = tokio::task::spawn_blocking(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            let mut builder = SnapshotBuilder::new(config, previous, &rate_clock, upstream);
            builder.expect(expected);
            while let Some(batch) = rx.blocking_recv() {
                for rec in &batch {
                    each(rec);
                    builder.add(rec);
                }
            }
            let clashes = builder.clashes().to_vec();
            (builder.finish(), clashes)
        })
    });
    let loaded = store.load_all(tx).await;
    let (snapshot, clashes) = build.await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
    loaded?;
    Ok(Loaded { snapshot, clashes })
}

/// A snapshot built from the store, and the stored tokens left out of it because a
/// static token has their uid (see [`SnapshotBuilder::clashes`]).
struct Loaded {
    snapshot: Snapshot,
    clashes: Vec<String>,
}

impl Loaded {
    /// The snapshot, unless a static token took a stored token's uid: the config is
    /// then refused (at start and on reload), naming each uid.
    fn unless_clashing(self) -> Result<Snapshot, ReloadError> {
        if self.clashes.is_empty() {
            return Ok(self.snapshot);
        }
        let message = format!(
            "{}; a static token's uid must not be one the token API gave a stored token (rename the static token)",
            self.clashes.join(", ")
        );
        Err(ReloadError::Config(crate::config::ConfigErrors::single("stacks.tokens.uid", message)))
    }
}

/// Copies the settings that only a restart can change from `running` into `next`, and
/// names those that differed.
fn keep_restart_only_settings(running: &Config, next: &mut Config) -> ReloadReport {
    let mut report = ReloadReport::default();
    let mut keep = |name: &'static str, differs: bool| {
        if differs {
            report.restart_required.push(name);
        }
    };
    keep("server.listen", running.server.listen != next.server.listen && next.server.listen.port() != 0);
    next.server.listen = running.server.listen;
    keep("admin.listen", running.admin_listen != next.admin_listen && next.admin_listen.port() != 0);
    next.admin_listen = running.admin_listen;
    keep("server.tls (enabling or disabling)", running.server.tls.is_some() != next.server.tls.is_some());
    if running.server.tls.is_none() {
        next.server.tls = None;
    } else if next.server.tls.is_none() {
        next.server.tls = running.server.tls.clone();
    }
    keep("server limits", running.server.limits != next.server.limits);
    next.server.limits = running.server.limits.clone();
    keep("store", running.store != next.store);
    next.store = running.store.clone();
    keep("ratelimit", running.ratelimit != next.ratelimit);
    next.ratelimit = running.ratelimit.clone();
    keep("notify", running.notify != next.notify);
    next.notify = running.notify.clone();
    // The flusher's period is set at start; per_token_metrics is read at each scrape.
    keep("telemetry.usage_flush", running.telemetry.usage_flush != next.telemetry.usage_flush);
    next.telemetry.usage_flush = running.telemetry.usage_flush;
    report
}

/// Opens the configured store: PostgreSQL (`[store] url`), the embedded file
/// (`[store] path`), else in memory with a warning.
pub async fn open_store(config: &Config) -> Result<Arc<dyn TokenStore>, StoreError> {
    if let Some(pg) = &config.store.postgres {
        return Ok(Arc::new(crate::store::answered::Answered(PgStore::connect(pg).await?)));
    }
    match &config.store.path {
        Some(path) => Ok(Arc::new(SqliteStore::open_exclusive(path)?)),
        None => {
            tracing::warn!("no [store] path configured: tokens created through the API live only in memory");
            Ok(Arc::new(SqliteStore::in_memory()?))
        }
    }
}

/// The next change to apply: one held back, else the next to come. A re-read takes the
/// re-reads queued right behind it along (holding back the first other change, so the
/// order stays).
async fn next_event(
    held: &mut Option<StoreEvent>,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<StoreEvent>,
) -> Option<StoreEvent> {
    let event = match held.take() {
        Some(event) => event,
        None => events.recv().await?,
    };
    if event == StoreEvent::Resync {
        while let Ok(queued) = events.try_recv() {
            if queued != StoreEvent::Resync {
                *held = Some(queued);
                break;
            }
        }
    }
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::{next_event, StoreEvent};

    /// Re-reads queued one behind another are made once; every other change is kept, in
    /// order, and a re-read after it is made again.
    #[tokio::test]
    async fn queued_re_reads_are_made_once_and_changes_keep_their_order() {
        let changed = |uid: &str| StoreEvent::Changed { stack: "s".into(), uid: uid.into() };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for event in [
            changed("a"),
            StoreEvent::Resync,
            StoreEvent::Resync,
            StoreEvent::Resync,
            changed("b"),
            StoreEvent::Resync,
            StoreEvent::Resync,
        ] {
            tx.send(event).unwrap();
        }
        drop(tx);
        let mut held = None;
        let mut seen = Vec::new();
        while let Some(event) = next_event(&mut held, &mut rx).await {
            seen.push(event);
        }
        assert_eq!(seen, [changed("a"), StoreEvent::Resync, changed("b"), StoreEvent::Resync]);
    }
}

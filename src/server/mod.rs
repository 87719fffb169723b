//! Listeners, connections, reload and shutdown, and the [`Gateway`] that owns the
//! swappable snapshot.

mod admin;
mod handler;
mod idle;
mod listener;
mod request_id;

pub use handler::handle;

use crate::clock::Clock;
use crate::config::{self, Config, ConfigErrors};
use crate::proxy::UpstreamClient;
use crate::ratelimit::RateClock;
use crate::snapshot::Snapshot;
use crate::store::sqlite::SqliteStore;
use crate::store::{StoreError, TokenStore};
use crate::telemetry::Metrics;
use crate::tls::TlsError;
use crate::token::TokenRecord;
use arc_swap::{ArcSwap, ArcSwapOption};
use request_id::RequestIds;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a committed store change alters the snapshot.
pub enum Change<'a> {
    /// A token created or updated (same secret hash: replaced).
    Upsert(&'a TokenRecord),
    /// A token deleted, by secret hash.
    Remove(&'a [u8; 32]),
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
    /// The listener's TLS config (certificates are reloadable).
    tls: ArcSwapOption<rustls::ServerConfig>,
    store: Arc<dyn TokenStore>,
    /// Serialises "commit to the store / reload, then swap the snapshot" so two changes
    /// can never swap in snapshots that each miss the other's change.
    writer: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    rate_clock: RateClock,
    ids: RequestIds,
    config_path: Option<PathBuf>,
    draining: AtomicBool,
    /// Failed-authentication counters per client address.
    guard: crate::guard::AuthGuard,
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
        let stored = store.load_all().await?;
        let tls = config.server.tls.as_ref().map(crate::tls::server_config).transpose()?;
        let upstream = UpstreamClient::new(&config.upstream)?;
        let snapshot = Snapshot::build(Arc::new(config), &stored, None, &rate_clock, upstream);
        let metrics = Arc::new(Metrics::new());
        metrics.tokens_loaded.set(i64::try_from(snapshot.token_count()).unwrap_or(i64::MAX));
        Ok(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            tls: ArcSwapOption::new(tls),
            store,
            writer: tokio::sync::Mutex::new(()),
            clock,
            rate_clock,
            ids: RequestIds::new(),
            config_path,
            draining: AtomicBool::new(false),
            guard: crate::guard::AuthGuard::default(),
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

    /// Whether shutdown has begun (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn swap(&self, next: Snapshot) {
        self.metrics.tokens_loaded.set(i64::try_from(next.token_count()).unwrap_or(i64::MAX));
        self.snapshot.store(Arc::new(next));
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
        let stored = self.store.load_all().await?;
        let next = Snapshot::build(Arc::new(config), &stored, Some(&current), &self.rate_clock, upstream);
        self.tls.store(tls);
        self.swap(next);
        Ok(report)
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
            let _writer = gw.writer.lock().await;
            let value = op(Arc::clone(&gw.store)).await?;
            let current = gw.snapshot.load();
            let next = match change(&value) {
                Change::Upsert(rec) => current.with_token_change(Some(rec), None),
                Change::Remove(hash) => current.with_token_change(None, Some(hash)),
            };
            gw.swap(next);
            Ok(value)
        });
        task.await.map_err(|e| StoreError::Unavailable(e.to_string()))?
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
    keep("store", running.store.path != next.store.path);
    next.store = running.store.clone();
    keep("notify", format!("{:?}", running.notify) != format!("{:?}", next.notify));
    next.notify = running.notify.clone();
    report
}

/// A gateway serving on bound listeners (used by `run`, the demo and tests).
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// The main listener's task; it ends once shutdown has drained connections.
    pub task: JoinHandle<()>,
    /// The expiry notifier, when a channel is configured.
    pub notifier: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// Graceful shutdown: `/readyz` turns 503, the listener stops accepting, open
    /// connections finish their in-flight requests (up to `shutdown_grace`).
    /// Returns whether everything finished within the grace period.
    pub async fn shutdown(self) -> bool {
        self.gateway.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let grace = self.gateway.snapshot().config.server.limits.shutdown_grace;
        let drained = tokio::time::timeout(grace, self.task).await.is_ok();
        if let Some(n) = self.notifier {
            n.abort();
        }
        drained
    }

    /// Starts draining without waiting (see [`Running::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.gateway.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
    }
}

/// Opens the configured store (`[store] path`, else in memory with a warning).
pub fn open_store(config: &Config) -> Result<Arc<dyn TokenStore>, StoreError> {
    match &config.store.path {
        Some(path) => Ok(Arc::new(SqliteStore::open(path)?)),
        None => {
            tracing::warn!("no [store] path configured: tokens created through the API live only in memory");
            Ok(Arc::new(SqliteStore::in_memory()?))
        }
    }
}

/// Binds the configured listeners (port 0 picks a free port) and starts serving, with
/// the configured store, the monotonic clock for rate limits and `clock` for expiry.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> std::io::Result<Running> {
    let store = open_store(&config).map_err(std::io::Error::other)?;
    start_with(config, store, clock, RateClock::monotonic(), None).await
}

/// [`start`] with every dependency given; `config_path` enables reload.
pub async fn start_with(
    mut config: Config,
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    rate_clock: RateClock,
    config_path: Option<PathBuf>,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let admin_listener = TcpListener::bind(config.admin_listen).await?;
    let admin_addr = admin_listener.local_addr()?;
    // The snapshot's own-authority list must name the port actually bound.
    config.server.listen = addr;
    config.admin_listen = admin_addr;
    let gateway = Gateway::new(config, store, clock, rate_clock, config_path).await.map_err(std::io::Error::other)?;
    let gateway = Arc::new(gateway);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(listener::serve(listener, Arc::clone(&gateway), shutdown_rx));
    tokio::spawn(admin::serve(admin_listener, Arc::clone(&gateway)));
    let notifier = crate::notify::spawn(Arc::clone(&gateway));
    Ok(Running { addr, admin_addr, gateway, task, notifier, shutdown })
}

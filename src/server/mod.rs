//! Listeners, connections, and the [`Gateway`] that owns the swappable snapshot.

mod handler;
mod request_id;

pub use handler::handle;

use crate::clock::Clock;
use crate::config::Config;
use crate::ratelimit::RateClock;
use crate::snapshot::Snapshot;
use crate::store::sqlite::SqliteStore;
use crate::store::{StoreError, TokenStore};
use crate::token::TokenRecord;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use request_id::RequestIds;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a committed store change alters the snapshot.
pub enum Change<'a> {
    /// A token created or updated (same secret hash: replaced).
    Upsert(&'a TokenRecord),
    /// A token deleted, by secret hash.
    Remove(&'a [u8; 32]),
}

/// The running gateway's shared state: one swappable snapshot, the token store, clocks.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    store: Arc<dyn TokenStore>,
    /// Serialises "commit to the store, then swap the snapshot" so two changes can
    /// never swap in snapshots that each miss the other's change.
    writer: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    rate_clock: RateClock,
    ids: RequestIds,
    pub notify_stats: Arc<crate::notify::NotifyStats>,
}

impl Gateway {
    /// Builds the first snapshot from a validated config and the store's tokens.
    pub async fn new(
        config: Config,
        store: Arc<dyn TokenStore>,
        clock: Arc<dyn Clock>,
        rate_clock: RateClock,
    ) -> Result<Self, StoreError> {
        let stored = store.load_all().await?;
        let snapshot = Snapshot::build(Arc::new(config), &stored, None, &rate_clock);
        Ok(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            writer: tokio::sync::Mutex::new(()),
            clock,
            rate_clock,
            ids: RequestIds::new(),
            notify_stats: Arc::default(),
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

    /// Swaps in a snapshot built from a new config and the store's current tokens;
    /// open connections see it on their next request.
    pub async fn install(&self, config: Config) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        let stored = self.store.load_all().await?;
        let previous = self.snapshot.load();
        let next = Snapshot::build(Arc::new(config), &stored, Some(&previous), &self.rate_clock);
        self.snapshot.store(Arc::new(next));
        Ok(())
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
            gw.snapshot.store(Arc::new(next));
            Ok(value)
        });
        task.await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

/// A gateway serving on a bound listener (used by `run`, the demo and tests).
pub struct Running {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub task: JoinHandle<()>,
    /// The expiry notifier, when a channel is configured.
    pub notifier: Option<JoinHandle<()>>,
}

/// Opens the configured store (`[store] path`, else in memory with a warning).
pub fn open_store(config: &Config) -> Result<Arc<dyn TokenStore>, StoreError> {
    match &config.store.path {
        Some(path) => Ok(Arc::new(SqliteStore::open(path)?)),
        None => {
            tracing::warn!(
                "no [store] path configured: tokens created through the API live only in memory"
            );
            Ok(Arc::new(SqliteStore::in_memory()?))
        }
    }
}

/// Binds `config.server.listen` (port 0 picks a free port) and starts serving, with
/// the configured store, the system's monotonic clock for rate limits and `clock` for
/// expiry.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> std::io::Result<Running> {
    let store = open_store(&config).map_err(std::io::Error::other)?;
    start_with(config, store, clock, RateClock::monotonic()).await
}

/// [`start`] with every dependency given.
pub async fn start_with(
    mut config: Config,
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    rate_clock: RateClock,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    // The snapshot's own-authority list must name the port actually bound.
    config.server.listen = addr;
    let gateway = Arc::new(
        Gateway::new(config, store, clock, rate_clock)
            .await
            .map_err(std::io::Error::other)?,
    );
    let task = tokio::spawn(accept_loop(listener, Arc::clone(&gateway)));
    let notifier = crate::notify::spawn(Arc::clone(&gateway));
    Ok(Running {
        addr,
        gateway,
        task,
        notifier,
    })
}

/// Accepts connections until the task is dropped; each connection runs on its own task.
async fn accept_loop(listener: TcpListener, gateway: Arc<Gateway>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&gateway), req, peer));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, peer = %peer, "connection closed with error");
            }
        });
    }
}

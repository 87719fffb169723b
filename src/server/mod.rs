//! Listeners, connections and shutdown around the shared state ([`crate::gateway`]):
//! the main listener (the HTTP/1.1 loop, hyper, TLS), the admin listener, and the
//! background tasks of a running gateway.

pub mod access_log;
mod admin;
mod client;
mod console;
mod cors;
mod handler;
mod idle;
mod inspecting;
mod listener;
pub mod open_files;
mod request_id;
mod signals;
mod streams;
mod supervisor;

pub use crate::gateway::open_store;
pub use crate::gateway::{Change, Gateway, ReloadError, ReloadReport};
pub use handler::handle;
pub(crate) use handler::ConnInfo;
pub(crate) use inspecting::{BodyBudget, BodyCap, Share};
#[cfg(unix)]
pub use signals::ShutdownSignals;
pub use signals::{reload_on_sighup, shutdown_signal, Hangups};
pub use supervisor::{ignore_hangups_for_now, tell_service_manager};

use crate::clock::Clock;
use crate::config::Config;
use crate::ratelimit::RateClock;
use crate::store::TokenStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A gateway serving on bound listeners (used by `run`, the demo and tests).
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// The main listener's task; it ends once shutdown has drained connections.
    pub task: JoinHandle<()>,
    /// The expiry notifier, when a channel is configured.
    pub notifier: Option<JoinHandle<()>>,
    /// Writes tokens' `last_used_at` to the store every `[telemetry] usage_flush`.
    usage_flusher: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    /// Ends the drain when `shutdown_grace` runs out (see [`Running::shutdown`]).
    cut: watch::Sender<bool>,
}

/// How long the listeners' threads have, once `shutdown_grace` is over, to drop what
/// they still hold (each request cut off writes its access line as it is dropped).
const CUT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Running {
    /// Graceful shutdown: `/readyz` turns 503, the listener stops accepting, open
    /// connections finish their in-flight requests (up to `shutdown_grace`).
    /// Returns whether everything finished within the grace period. If not, the
    /// listeners' own threads drop their connections before this returns, so every
    /// request cut off is counted and logged (reason `shutdown`) before the process
    /// ends; those on the caller's runtime are dropped with it.
    pub async fn shutdown(self) -> bool {
        self.gateway.begin_draining();
        let _ = self.shutdown.send(true);
        let grace = self.gateway.snapshot().config.server.limits.shutdown_grace;
        let mut task = self.task;
        let drained = tokio::time::timeout(grace, &mut task).await.is_ok();
        if !drained {
            tracing::warn!(?grace, "shutdown grace period over; closing remaining connections");
            self.gateway.cut_off();
            let _ = self.cut.send(true);
            let _ = tokio::time::timeout(CUT_WAIT, task).await;
        }
        if let Some(n) = self.notifier {
            n.abort();
        }
        // A last flush, so a restart shows the uses of the final interval too.
        self.usage_flusher.abort();
        flush_usage(&self.gateway).await;
        drained
    }

    /// Starts draining without waiting (see [`Running::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.gateway.begin_draining();
        let _ = self.shutdown.send(true);
    }
}

/// Binds the configured listeners (port 0 picks a free port) and starts serving, with
/// the configured store, the monotonic clock for rate limits and `clock` for expiry.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> std::io::Result<Running> {
    let store = open_store(&config).await.map_err(std::io::Error::other)?;
    start_with(config, store, clock, RateClock::monotonic(), None).await
}

/// [`start`] with every dependency given; `config_path` enables reload. The main
/// listener is served on the caller's runtime.
pub async fn start_with(
    config: Config,
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    rate_clock: RateClock,
    config_path: Option<PathBuf>,
) -> std::io::Result<Running> {
    start_workers(config, store, clock, rate_clock, config_path, 1).await
}

/// [`start_with`], the main listener served by `workers` accept loops: the caller's
/// runtime and `workers - 1` threads of their own, each with a current-thread runtime
/// and its own `SO_REUSEPORT` socket on the same address (thread per core, as nginx's
/// workers). A connection lives on the thread whose socket the kernel gave it to, with
/// its upstream connection, timers and buffers: nothing on the request path crosses
/// threads but the snapshot (and, once per connection, the `max_connections` cap).
/// Everything else (admin listener, notices, usage flushes, other replicas' changes)
/// runs on the caller's runtime.
pub async fn start_workers(
    mut config: Config,
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    rate_clock: RateClock,
    config_path: Option<PathBuf>,
    workers: usize,
) -> std::io::Result<Running> {
    let mut sockets = listener::bind(config.server.listen, workers.max(1))?.into_iter();
    let first = sockets.next().ok_or_else(|| std::io::Error::other("no listener"))?;
    let listener = TcpListener::from_std(first)?;
    let addr = listener.local_addr()?;
    let admin_listener = TcpListener::bind(config.admin_listen).await?;
    let admin_addr = admin_listener.local_addr()?;
    // The snapshot's own-authority list must name the port actually bound.
    config.server.listen = addr;
    config.admin_listen = admin_addr;
    let gateway = Gateway::new(config, store, clock, rate_clock, config_path).await.map_err(std::io::Error::other)?;
    let gateway = Arc::new(gateway);
    // Built before anything serves, so a bad webhook CA file stops the start.
    let channels = crate::notify::Channels::new(&gateway.snapshot().config.notify).map_err(std::io::Error::other)?;
    if let Some(events) = gateway.store().subscribe() {
        tokio::spawn(Arc::clone(&gateway).follow(events));
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (cut, cut_rx) = watch::channel(false);
    let permits = listener::connection_cap(&gateway, workers.max(1));
    let others: Vec<_> = sockets
        .map(|socket| {
            let stop = listener::Stop { drain: shutdown_rx.clone(), cut: cut_rx.clone() };
            listener::serve_on_own_thread(socket, Arc::clone(&gateway), Arc::clone(&permits), stop)
        })
        .collect::<std::io::Result<_>>()?;
    let gw = Arc::clone(&gateway);
    let task = tokio::spawn(async move {
        listener::serve(listener, gw, permits, listener::Stop { drain: shutdown_rx, cut: cut_rx }).await;
        for done in others {
            let _ = done.await;
        }
    });
    tokio::spawn(admin::serve(admin_listener, Arc::clone(&gateway)));
    let notifier = crate::notify::spawn(Arc::clone(&gateway), channels);
    let usage_interval = gateway.snapshot().config.telemetry.usage_flush;
    let usage_flusher = spawn_usage_flusher(Arc::clone(&gateway), usage_interval);
    Ok(Running { addr, admin_addr, gateway, task, notifier, usage_flusher, shutdown, cut })
}

/// Writes tokens' `last_used_at` to the store (see [`crate::usage::flush`]).
async fn flush_usage(gw: &Gateway) {
    let snap = gw.snapshot();
    crate::usage::flush(snap.tokens().map(|t| (&*t.uid, &t.usage)), &**gw.store()).await;
}

/// Flushes usage every `interval` (`[telemetry] usage_flush`), so the store sees at
/// most one write per token per interval however busy the token is.
fn spawn_usage_flusher(gw: Arc<Gateway>, interval: std::time::Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            flush_usage(&gw).await;
        }
    })
}

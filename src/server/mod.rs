//! Listeners, connections, and the [`Gateway`] that owns the swappable snapshot.

mod handler;
mod request_id;

pub use handler::handle;

use crate::clock::Clock;
use crate::config::Config;
use crate::ratelimit::RateClock;
use crate::snapshot::Snapshot;
use crate::token::TokenRecord;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use request_id::RequestIds;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The running gateway's shared state: one swappable snapshot and the clock.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    clock: Arc<dyn Clock>,
    rate_clock: RateClock,
    ids: RequestIds,
}

impl Gateway {
    /// Builds the first snapshot from a validated config and the store's tokens.
    pub fn new(
        config: Config,
        stored: &[TokenRecord],
        clock: Arc<dyn Clock>,
        rate_clock: RateClock,
    ) -> Self {
        let snapshot = Snapshot::build(Arc::new(config), stored, None, &rate_clock);
        Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            clock,
            rate_clock,
            ids: RequestIds::new(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a snapshot built from a new config; open connections see it on their
    /// next request.
    pub fn install(&self, config: Config, stored: &[TokenRecord]) {
        let previous = self.snapshot.load();
        let next = Snapshot::build(Arc::new(config), stored, Some(&previous), &self.rate_clock);
        self.snapshot.store(Arc::new(next));
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }
}

/// A gateway serving on a bound listener (used by `run`, the demo and tests).
pub struct Running {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub task: JoinHandle<()>,
}

/// Binds `config.server.listen` (port 0 picks a free port) and starts serving.
pub async fn start(
    mut config: Config,
    stored: &[TokenRecord],
    clock: Arc<dyn Clock>,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    // The snapshot's own-authority list must name the port actually bound.
    config.server.listen = addr;
    let gateway = Arc::new(Gateway::new(config, stored, clock, RateClock::monotonic()));
    let task = tokio::spawn(accept_loop(listener, Arc::clone(&gateway)));
    Ok(Running {
        addr,
        gateway,
        task,
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

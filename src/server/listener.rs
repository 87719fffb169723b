//! The main listener: a connection cap, optional TLS (ALPN h2 / http/1.1), HTTP/1.1 and
//! HTTP/2 on the same port, header, idle and size limits, and graceful drain.

use super::handler::{refuse, respond, ConnInfo};
use super::idle::IdleIo;
use super::streams::{Counted, Quiet, Streams};
use super::{handle, Gateway};
use crate::http1::server as http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// On shutdown, how long an HTTP/2 connection with no request open stays after its
/// GOAWAY: long enough for a request the client sent before the GOAWAY reached it to
/// arrive (one round trip), short enough that a client that never answers the GOAWAY's
/// PING does not hold the drain until `shutdown_grace`. Go's HTTP/2 server waits 1 s too.
const GOAWAY_LINGER: Duration = Duration::from_secs(1);

/// Binds `count` listening sockets on `addr` (port 0: a free port, the same for all).
/// Several share the address through `SO_REUSEPORT`, the kernel spreading new
/// connections over them. That would also let them join another process's
/// `SO_REUSEPORT` listener on the address and take only a share of its connections, so
/// the address is first bound once without it: taken by anything that listens, the
/// start fails with "address in use", as with one thread.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if count > 1 && addr.port() != 0 {
        let probe = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let mut sockets = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count {
        let socket = socket2::Socket::new(socket2::Domain::for_address(at), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        at = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

/// The listeners' shutdown: `drain` stops accepting and lets open connections finish
/// their requests; `cut` (`shutdown_grace` is over) stops waiting for them.
#[derive(Clone)]
pub struct Stop {
    pub drain: watch::Receiver<bool>,
    pub cut: watch::Receiver<bool>,
}

/// Serves `socket` on a thread of its own with a current-thread runtime; the receiver
/// completes when that listener has drained, or been cut and dropped what it held.
pub fn serve_on_own_thread(
    socket: std::net::TcpListener,
    gw: Arc<Gateway>,
    permits: Arc<Semaphore>,
    stop: Stop,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, drained) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("stackgate-worker".into()).spawn(move || {
        rt.block_on(async move {
            match TcpListener::from_std(socket) {
                Ok(listener) => serve(listener, gw, permits, stop).await,
                Err(e) => tracing::error!(error = %e, "worker listener failed"),
            }
        });
        // Drops the connections a cut left open, each request among them writing its
        // access line, before the process is told this thread is done.
        rt.shutdown_timeout(Duration::from_millis(500));
        let _ = done.send(());
    })?;
    Ok(drained)
}

/// The places under `max_connections`, one set shared by every thread's listener; fewer
/// when the open-file limit cannot carry that many clients with their upstream
/// connections and `threads` idle lists, whose size it also sets (see
/// [`super::open_files`]). Said once at start when lowered.
pub fn connection_cap(gw: &Gateway, threads: usize) -> Arc<Semaphore> {
    let wanted = gw.snapshot().config.server.limits.max_connections;
    let Some(limit) = super::open_files::current() else { return Arc::new(Semaphore::new(wanted)) };
    let budget = super::open_files::budget(limit.soft, threads);
    crate::proxy::cap_idle_per_thread(budget.idle_per_thread);
    if budget.clients < wanted {
        tracing::warn!(
            max_connections = wanted,
            served_at_once = budget.clients,
            open_file_limit = limit.soft,
            hard_limit = limit.hard,
            "the open-file limit leaves room for fewer client connections than max_connections \
             (with their upstream connections and idle ones, a third of it each); the others wait \
             to be accepted. Raise it (ulimit -n, systemd LimitNOFILE=) to serve max_connections"
        );
    }
    Arc::new(Semaphore::new(wanted.min(budget.clients)))
}

/// Accept failures (out of descriptors, mostly) are said at most once every 10 s.
static ACCEPT_FAILURE: crate::telemetry::Throttle = crate::telemetry::Throttle::new();

/// Accepts until shutdown, then waits for open connections to finish their requests
/// (or for the cut). A connection takes one of `permits` while it lives.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, permits: Arc<Semaphore>, stop: Stop) {
    let Stop { drain: mut shutdown, mut cut } = stop;
    let limits = Arc::new(gw.snapshot().config.server.limits.clone());
    let builder = Arc::new(Builders { any: builder(&limits), h2: builder(&limits).http2_only() });
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    if ACCEPT_FAILURE.allow() {
                        tracing::warn!(error = %e, "accept failed (said at most once every 10 s)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // A place under the cap, taken once a connection is there: a thread whose own
        // socket has none waiting must not hold the place that another thread's waiting
        // connection needs. At the cap each thread holds the one connection it accepted
        // unserved; the others wait in the kernel's backlog.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn =
            Connection { gw: Arc::clone(&gw), builder: Arc::clone(&builder), peer, permit, shutdown: shutdown.clone() };
        let watcher = graceful.watcher();
        let limits = Arc::clone(&limits);
        tokio::spawn(async move { conn.run(stream, watcher, &limits).await });
    }
    drop(listener);
    tracing::info!(open = graceful.count(), "listener closed; draining connections");
    // A cut, not a closed channel: `Running` dropped without `shutdown` lets the drain
    // finish.
    let cut = async {
        if cut.wait_for(|&cut| cut).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = graceful.shutdown() => {}
        () = cut => {}
    }
}

fn builder(limits: &crate::config::Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Bound the work a misbehaving client can cause (RST floods, CONTINUATION abuse).
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

/// hyper's servers: `any` takes HTTP/1 or the HTTP/2 preface (cleartext, and after the
/// gateway's own loop hands a connection over); `h2` serves TLS connections that agreed
/// on ALPN `h2`, which speak only HTTP/2 (RFC 9113, 3.2).
struct Builders {
    any: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

/// One accepted connection and what it holds until it closes.
struct Connection {
    gw: Arc<Gateway>,
    builder: Arc<Builders>,
    peer: SocketAddr,
    /// Released (freeing a place under `max_connections`) when the connection ends.
    permit: OwnedSemaphorePermit,
    /// Tells the gateway's own HTTP/1 loop to stop taking requests.
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, stream: TcpStream, watcher: Watcher, limits: &crate::config::Limits) {
        let metrics = Arc::clone(&self.gw.metrics);
        metrics.open_connections.inc();
        let tls = self.gw.snapshot().tls.as_ref().map(|t| Arc::clone(&t.config));
        match tls {
            Some(cfg) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let mut io = IdleIo::new(tls_stream, limits.idle_timeout);
                        match h2 {
                            true => {
                                io.time_writes_only();
                                let info = Arc::new(ConnInfo::new(self.peer, true));
                                self.serve(io, info, watcher, true).await
                            }
                            false => self.serve_h1(io, true, watcher, limits).await,
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
                }
            }
            None => self.serve_h1(IdleIo::new(stream, limits.idle_timeout), false, watcher, limits).await,
        }
        metrics.open_connections.dec();
    }

    /// Serves an HTTP/1 (or not yet known) connection: the gateway's own loop first,
    /// hyper from the first request that loop hands over.
    async fn serve_h1<T>(mut self, mut io: IdleIo<T>, https: bool, watcher: Watcher, limits: &crate::config::Limits)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = Arc::new(ConnInfo::new(self.peer, https));
        let h1_limits = http1::Limits {
            header_read_timeout: limits.header_read_timeout,
            max_header_bytes: limits.max_header_bytes,
            http2_preface: !https,
        };
        let (gw, conn) = (&self.gw, &info);
        let service = |req: hyper::Request<()>, body| {
            respond(Arc::clone(gw), req.map(|()| crate::proxy::ClientBody::read_whole(body)), Arc::clone(conn))
        };
        let refusal = |why, failed: Option<&_>| refuse(gw, conn, why, failed);
        match http1::serve(&mut io, service, refusal, &h1_limits, &mut self.shutdown).await {
            http1::Outcome::Closed => drop(watcher),
            http1::Outcome::Handover(read) => {
                io.time_writes_only();
                self.serve(http1::Prefixed::new(read, io), info, watcher, false).await
            }
        }
    }

    /// Serves a connection through hyper (HTTP/2, or HTTP/1 after a handover) until it
    /// ends, is idle (see [`Streams`]) or the gateway shuts down; `h2_only` for a TLS
    /// connection that agreed on `h2`.
    async fn serve<I>(self, io: I, info: Arc<ConnInfo>, watcher: Watcher, h2_only: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { gw, builder, peer, permit, mut shutdown } = self;
        let (first_request_within, idle) = {
            let limits = &gw.snapshot().config.server.limits;
            (limits.header_read_timeout, limits.idle_timeout)
        };
        let streams = Streams::new();
        let counting = Arc::clone(&streams);
        // Boxed: hyper spawns each HTTP/2 stream's future as a task, and the task is
        // moved several times on its way into the runtime (and written once more when
        // it ends). A pointer moves for nothing; the whole request future, kilobytes
        // of state for every stage it may await, would be copied each time. It is built
        // in its box (`Box::write` into an uninitialised one): `Box::pin(handle(..))`
        // builds it on the stack and copies it in.
        // An HTTP/2 write's body ends only once its future has seen hyper look for a
        // reset (`Confirming`).
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let open = counting.open();
            let req = crate::proxy::Unread::track(req);
            let end = req.body().end_check();
            let (gw, info) = (Arc::clone(&gw), Arc::clone(&info));
            let request = Box::into_pin(Box::write(Box::new_uninit(), async move {
                let resp = handle(gw, req, info).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| Counted::new(body, open)))
            }));
            crate::proxy::Confirming { request, end }
        });
        let builder = if h2_only { &builder.h2 } else { &builder.any };
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn.into_owned());
        // hyper bounds the wait for an HTTP/1 head itself, not for an HTTP/2 connection's
        // first request, nor its idleness between requests.
        let closing = async {
            tokio::select! {
                quiet = streams.quiet(first_request_within, idle) => Some(quiet),
                _ = shutdown.wait_for(|&stop| stop) => None,
            }
        };
        // hyper first: a request handed over by the HTTP/1.1 loop is already buffered,
        // and must be read (and so drained as a request in flight) before a shutdown
        // that began meanwhile closes the connection.
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, peer = %peer, "connection closed with error");
                }
            }
            why = closing => match why {
                // Preface, SETTINGS or PINGs only: dropped, as a head that never comes.
                Some(Quiet::NeverAsked) => tracing::debug!(peer = %peer, "no request within header_read_timeout; closed"),
                // GOAWAY: requests in flight finish, the client retries anything later
                // elsewhere. Bounded: a client that reads nothing does not hold it.
                Some(Quiet::Idle) => {
                    tracing::debug!(peer = %peer, "no request for idle_timeout; closing");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(first_request_within, conn.as_mut()).await;
                }
                // The drain: every request in flight is answered (the listener bounds
                // the whole drain by shutdown_grace); with none left, the client has
                // GOAWAY_LINGER to send what crossed the GOAWAY, acknowledged or not.
                None => {
                    let draining = tokio::time::Instant::now();
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = streams.settled(draining, GOAWAY_LINGER) => {
                            tracing::debug!(peer = %peer, "no request open after the GOAWAY; closed");
                        }
                    }
                }
            },
        }
        // Held, not watched: the listener's drain counts the connection until here, and
        // the drain itself reached it through `shutdown` above.
        drop(watcher);
        drop(permit);
    }
}

#[cfg(test)]
mod tests {
    /// Another process's `SO_REUSEPORT` listener on the address is not joined: the
    /// threads' sockets are refused as one thread's would be, and bind once it is gone.
    #[test]
    fn a_port_another_listener_holds_is_refused_even_with_reuseport() {
        let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        other.set_reuse_port(true).unwrap();
        other.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        other.listen(16).unwrap();
        let addr = other.local_addr().unwrap().as_socket().unwrap();
        for count in [1, 2, 4] {
            let err = super::bind(addr, count).err().unwrap_or_else(|| panic!("{count} thread(s): bound"));
            assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{count} thread(s)");
        }
        drop(other);
        assert_eq!(super::bind(addr, 2).unwrap().len(), 2);
    }
}

//! The `stackgate` command line: `run`, `check`, `demo` and `token`.

pub(crate) mod log_format;
mod token;

use crate::clock::SystemClock;
use crate::config;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(name = "stackgate", version, about = "Management-token gateway for a Contentstack-style CMA")]
struct Cli {
    /// Log format (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The TOML config file (see config/stackgate.example.toml); reloaded on SIGHUP.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads (default: the cores this process may use): each serves the
        /// main listener on its own `SO_REUSEPORT` socket with a current-thread runtime;
        /// the first also runs the admin listener and the background tasks.
        #[arg(long, env = "STACKGATE_THREADS")]
        threads: Option<std::num::NonZeroUsize>,
    },
    /// Validate a config file and exit (non-zero with every error listed; warnings are
    /// printed to stderr and leave the exit status 0).
    Check {
        /// The TOML config file to validate.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Manage tokens through a running gateway's API (authtoken from STACKGATE_AUTHTOKEN).
    Token(Box<token::TokenArgs>),
    /// Start an embedded demo backend and the gateway in front of it.
    Demo {
        /// Gateway listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, threads } => {
            crate::server::ignore_hangups_for_now();
            let workers = threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, |n| n.get());
            match raise_open_file_limit() {
                true => block_on(std::num::NonZeroUsize::new(1), run(config, workers)),
                false => ExitCode::FAILURE,
            }
        }
        Command::Demo { listen } => match raise_open_file_limit() {
            true => block_on(None, crate::demo::run(listen)),
            false => ExitCode::FAILURE,
        },
        Command::Token(args) => block_on(None, token::run(*args)),
    };
    flush_logs();
    code
}

/// Raises the open-file limit for a serving process (see
/// [`crate::server::open_files`]), before the runtime starts: the limit is the process's.
/// `false` (said on stderr) when even the hard limit is too low to serve anything.
fn raise_open_file_limit() -> bool {
    use crate::server::open_files::{raise, MIN_TO_SERVE};
    let Some((before, after)) = raise() else { return true };
    if after.soft > before.soft {
        tracing::info!(from = before.soft, to = after.soft, "open-file limit raised to the hard limit");
    }
    if after.soft < MIN_TO_SERVE {
        eprintln!(
            "stackgate: the open-file limit ({}, hard {}) is too low to serve: at least {MIN_TO_SERVE} \
             descriptors are needed (ulimit -n, systemd LimitNOFILE=)",
            after.soft, after.hard
        );
        return false;
    }
    true
}

/// The log writer's thread, held until the process ends (see [`flush_logs`]).
static LOG_WRITER: std::sync::Mutex<Option<LogWriter>> = std::sync::Mutex::new(None);

/// The log thread and what [`flush_logs`] needs to wait for it.
struct LogWriter {
    /// Dropping it ends the thread (after waiting at most a second for it).
    guard: tracing_appender::non_blocking::WorkerGuard,
    /// Where [`flush_logs`] queues its marker, after every line.
    queue: tracing_appender::non_blocking::NonBlocking,
    /// Told when the thread has written everything queued before the marker.
    reached: std::sync::mpsc::Receiver<()>,
}

/// stderr as the log thread writes to it. An empty write is [`flush_logs`]'s marker: the
/// thread writes in order, so when it reaches the marker every line queued before it
/// has been written. No line is empty (a formatted line ends with a newline, and the
/// access log writes whole lines); an empty write of anyone else's would end the wait
/// early.
struct LogOut {
    out: std::io::BufWriter<std::io::Stderr>,
    reached: std::sync::mpsc::SyncSender<()>,
}

impl std::io::Write for LogOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if buf.is_empty() {
            let flushed = self.out.flush();
            let _ = self.reached.try_send(());
            return flushed;
        }
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Log lines (one per request with the access log on) are formatted on the thread that
/// logs them and written to stderr by a thread of their own, through a buffer flushed
/// whenever no line is waiting: under load many lines leave in one `write`, instead of
/// a system call per request on the serving thread, and when the gateway is quiet each
/// line appears at once. Not lossy: a serving thread waits when `BUFFERED_LINES` lines
/// are queued (stderr not keeping up), as it waited on each `write` before.
/// The libraries [`init_logging`] keeps at info or above (rustls at error).
const RAW_BYTES_LIBRARIES: [&str; 9] =
    ["h2", "hyper", "hyper_util", "rustls", "tokio_rustls", "tokio_postgres", "postgres_protocol", "redis", "lettre"];

fn init_logging(format: LogFormat) {
    const BUFFERED_LINES: usize = 16 * 1024;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Libraries that see a request's or a store's raw bytes log them at debug and trace
    // (h2 writes a malformed `:path` into its line, secret and all): capped at info,
    // whatever RUST_LOG says, so that no secret reaches a log at any level.
    // rustls warns, at WARN, of an illegal SNI name with the name itself (a client's
    // bytes, before any authentication): it logs errors only.
    let filter = RAW_BYTES_LIBRARIES
        .iter()
        .map(|&target| if target == "rustls" { "rustls=error".to_owned() } else { format!("{target}=info") })
        .filter_map(|directive| directive.parse().ok())
        .fold(filter, |filter, directive| filter.add_directive(directive));
    let (marked, reached) = std::sync::mpsc::sync_channel(1);
    let out = LogOut { out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()), reached: marked };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("stackgate-log")
        .finish(out);
    if let Ok(mut slot) = LOG_WRITER.lock() {
        *slot = Some(LogWriter { guard, queue: writer.clone(), reached });
    }
    crate::server::access_log::install(matches!(format, LogFormat::Json), writer.clone());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_timer(log_format::Rfc3339Micros);
    match format {
        LogFormat::Text => builder.with_ansi(false).fmt_fields(log_format::PlainFields::default()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether the signal thread is watching (see [`watch_shutdown_signals`]): a second
/// signal can then end a wait on a stalled stderr.
static SIGNALS_WATCHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes the log lines still buffered (before the process exits), however long stderr
/// takes to take them: the log writer's own shutdown waits at most a second, and a
/// stalled log shipper would lose the last lines (a drain's 499s among them) while the
/// process exits 0. A second signal still exits at once (see [`exit_now`]); with no
/// thread watching for it, the wait is a second, as the log writer's own.
fn flush_logs() {
    use std::io::Write as _;
    let Some(mut log) = LOG_WRITER.lock().ok().and_then(|mut slot| slot.take()) else { return };
    // Err: the thread is gone, and there is nothing to wait for.
    if log.queue.write(&[]).is_ok() {
        if SIGNALS_WATCHED.load(std::sync::atomic::Ordering::Acquire) {
            let _ = log.reached.recv();
        } else {
            let _ = log.reached.recv_timeout(std::time::Duration::from_secs(1));
        }
    }
    drop(log.guard);
}

/// Runs `fut` on a runtime of `threads` workers (default: the cores this process may
/// use, which honours CPU affinity). A single worker gets tokio's current-thread
/// scheduler: a lone work-stealing worker still pays for the machinery (atomics, the
/// injection queue, cross-thread wake-ups) it cannot use; in `benches/load.sh`'s setup
/// (gateway pinned to one core) the current-thread scheduler served 14% more requests
/// per second with 13% less CPU per request.
fn block_on(
    threads: Option<std::num::NonZeroUsize>,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let threads = threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, |n| n.get());
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stackgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stackgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            let tokens: usize = cfg.stacks.iter().map(|s| s.tokens.len()).sum();
            println!(
                "{}: OK ({} organizations, {} users, {} stacks, {} static tokens)",
                path.display(),
                cfg.organizations.len(),
                cfg.users.len(),
                cfg.stacks.len(),
                tokens
            );
            // Allowed, so not errors, but worth a look before the gateway runs with it.
            for warning in cfg.warnings(crate::clock::Clock::now(&crate::clock::SystemClock)) {
                eprintln!("{}: warning: {warning}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{}: {errors}", path.display());
            ExitCode::from(2)
        }
    }
}

/// Runs the gateway from `path`, its main listener served by `workers` threads.
async fn run(path: PathBuf, workers: usize) -> anyhow::Result<()> {
    // First: a SIGHUP during start-up must not end the process (see `Hangups`).
    let hangups = crate::server::Hangups::register();
    let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let (listen, admin) = (cfg.server.listen, cfg.admin_listen);
    let store = crate::server::open_store(&cfg).await.map_err(|e| anyhow::anyhow!("token store: {e}"))?;
    let running = crate::server::start_workers(
        cfg,
        store,
        Arc::new(SystemClock),
        crate::ratelimit::RateClock::monotonic(),
        Some(path),
        workers,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start (listen {listen}, admin {admin}): {e}"))?;
    let scheme = if running.gateway.snapshot().config.server.tls.is_some() { "https" } else { "http" };
    // Written, not `println!`: a stdout nobody reads any more (a supervisor that read
    // the first line, `| head -1`) must not end the gateway with a panic.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "stackgate listening on {scheme}://{}", running.addr);
        let _ = writeln!(out, "stackgate admin listening on http://{}", running.admin_addr);
        let _ = out.flush();
    }
    tracing::info!(addr = %running.addr, admin = %running.admin_addr, tokens = running.gateway.snapshot().token_count(), "listening");
    crate::server::reload_on_sighup(std::sync::Arc::clone(&running.gateway), hangups);
    // Ready only once SIGTERM drains: before its handler, it ends the process at once.
    let first_signal = watch_shutdown_signals();
    crate::server::tell_service_manager("READY=1");
    match first_signal {
        Some(first) => {
            let _ = first.await;
        }
        None => crate::server::shutdown_signal().await,
    }
    // Before the log line: a stalled stderr can hold whoever logs (see the signal thread).
    crate::server::tell_service_manager("STOPPING=1");
    tracing::info!("shutting down: draining connections (a second signal exits at once)");
    running.shutdown().await;
    Ok(())
}

/// Waits for SIGINT and SIGTERM on a thread and runtime of its own: the first begins
/// the drain (the returned receiver resolves), the second exits at once, whatever every
/// other thread is doing. A log line can block whoever writes it (stderr that stopped
/// taking output fills the log queue, and then the serving threads and the main one
/// wait on it), so nothing here logs before acting. `None` if the thread could not
/// start or register.
fn watch_shutdown_signals() -> Option<tokio::sync::oneshot::Receiver<()>> {
    #[cfg(unix)]
    {
        let (first, is_first) = tokio::sync::oneshot::channel();
        let (registered, is_registered) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("stackgate-signals".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(mut signals) = crate::server::ShutdownSignals::register() else { return };
                    let _ = registered.send(());
                    signals.next().await;
                    let _ = first.send(());
                    signals.next().await;
                    exit_now();
                });
            })
            .ok()?;
        is_registered.recv_timeout(std::time::Duration::from_secs(5)).ok()?;
        SIGNALS_WATCHED.store(true, std::sync::atomic::Ordering::Release);
        Some(is_first)
    }
    #[cfg(not(unix))]
    None
}

/// Exits with status 1, after writing the buffered log lines if that takes at most a
/// second (stderr may be what has stalled).
fn exit_now() -> ! {
    let (flushed, is_flushed) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new().name("stackgate-exit".into()).spawn(move || {
        tracing::warn!("second signal: exiting at once");
        flush_logs();
        let _ = flushed.send(());
    });
    let _ = is_flushed.recv_timeout(std::time::Duration::from_secs(1));
    std::process::exit(1);
}

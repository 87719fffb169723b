//! Process signals: SIGINT/SIGTERM begin shutdown, SIGHUP reloads the config.

use crate::gateway::Gateway;
use std::sync::Arc;

/// SIGHUP, taken over from its default action (which ends the process; ignored until
/// now, see [`super::ignore_hangups_for_now`]) as soon as `stackgate run` has a
/// runtime: a reload asked for while the store loads (seconds
/// with a million tokens, or while PostgreSQL is slow to answer) would otherwise kill
/// the gateway, and systemd, which counts a death by SIGHUP as a clean exit, would not
/// restart it (the forty-sixth outside probe). One that comes during start-up is
/// answered by a reload once the gateway serves.
pub struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    /// Registers now, on the current runtime.
    pub fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let hangups = signal(SignalKind::hangup());
            if let Err(e) = &hangups {
                tracing::warn!(error = %e, "cannot take SIGHUP over: it stays ignored (reload through POST /reload)");
            }
            Hangups(hangups.ok())
        }
        #[cfg(not(unix))]
        Hangups()
    }
}

/// SIGHUP re-reads the config file (same as `POST /reload` on the admin listener).
pub fn reload_on_sighup(gw: Arc<Gateway>, hangups: Hangups) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Some(mut hup) = hangups.0 else { return };
        while hup.recv().await.is_some() {
            let _ = gw.reload().await;
        }
    });
    #[cfg(not(unix))]
    let _ = (gw, hangups);
}

/// SIGINT and SIGTERM, registered once (none is missed between two waits): each
/// [`ShutdownSignals::next`] resolves on the next of either.
#[cfg(unix)]
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl ShutdownSignals {
    /// Registers now, on the current runtime.
    pub fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

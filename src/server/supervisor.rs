//! What `stackgate run` tells the service manager that started it, and what it keeps
//! from the signals such a manager sends before the gateway can answer them.
//!
//! systemd's `Type=notify` (deploy/systemd) waits for `READY=1` before it counts the
//! service as started: units ordered after it, and a `systemctl reload`, wait for the
//! listeners instead of racing start-up (seconds with a million tokens or a slow
//! PostgreSQL). The protocol is one datagram to the socket `NOTIFY_SOCKET` names, a
//! path or, with a leading `@`, a Linux abstract name; without it nothing is sent.

/// Sends `state` (`READY=1`, `STOPPING=1`) to the service manager, if there is one.
/// A manager that cannot be told is logged, never fatal: the gateway serves either way.
pub fn tell_service_manager(state: &str) {
    #[cfg(target_os = "linux")]
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = send(&socket, state) {
            tracing::warn!(error = %e, state, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = state;
}

#[cfg(target_os = "linux")]
fn send(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr).map(drop)
}

/// Ignores SIGHUP until [`super::Hangups::register`] takes it over on the runtime:
/// its default action ends the process, and a reload sent by a supervisor that does not
/// wait for `READY=1` (a `kill -HUP` right after start) would otherwise end the gateway
/// between argument parsing and the runtime's start. The runtime's handler replaces
/// this one (and does not pass signals on to an ignoring one). Must come before
/// `Hangups::register`: after it, this would turn reloads off.
pub fn ignore_hangups_for_now() {
    #[cfg(unix)]
    // SAFETY: called on the main thread before any signal handler is installed; it sets
    // one signal's disposition to "ignore", so no handler code runs. An ignored signal
    // is inherited by programs started before tokio takes it over, and `run` starts none.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

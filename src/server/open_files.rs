//! The process's open-file limit, and how many client connections it can carry.
//!
//! A client connection holds a descriptor, and while it is served a second one for its
//! upstream connection. Shells and service managers commonly start a process with a
//! soft limit of 1,024 and a far higher hard one: at about 450 clients every upstream
//! connect would then fail (`EMFILE`) and every request be answered 502, well below
//! `max_connections`. So `run` and `demo` raise the soft limit to the hard one
//! ([`raise`], as Go's runtime and HAProxy do), and the connection cap is the smaller of
//! `max_connections` and what the limit leaves room for ([`connection_room`]): a client
//! beyond it waits in the kernel's backlog until a place frees, as at the cap.

/// Descriptors kept for everything but client connections and their upstream ones:
/// listeners and runtimes (epoll, wakers), the store's files, the log, the admin
/// listener's clients, Redis or PostgreSQL connections, webhook and mail relays.
const RESERVED: u64 = 128;

/// `RLIMIT_NOFILE`: the soft limit (what `open` and `accept` are held to) and the hard
/// one (how far an unprivileged process may raise it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

/// The limit in effect, if the platform has one.
pub fn current() -> Option<Limit> {
    #[cfg(unix)]
    return read().map(|lim| Limit { soft: lim.rlim_cur, hard: lim.rlim_max });
    #[cfg(not(unix))]
    None
}

#[cfg(unix)]
fn read() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live local.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (read == 0).then_some(lim)
}

/// Raises the soft limit to the hard one. Returns the limit before and after (the same
/// when it was already as high, or the platform refused: macOS caps the soft limit
/// below an unlimited hard one, and the old limit then stays).
pub fn raise() -> Option<(Limit, Limit)> {
    let before = current()?;
    #[cfg(unix)]
    if before.soft < before.hard {
        let mut lim = read()?;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `setrlimit` reads one `rlimit` through a pointer to a live local; the
        // soft limit asked for is the hard one, which an unprivileged process may take.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Some((before, before));
        }
    }
    Some((before, current().unwrap_or(before)))
}

/// How many client connections a soft limit of `soft` descriptors can carry: two each
/// (the client's and its upstream connection), after [`RESERVED`]; at least one. An
/// HTTP/2 connection whose streams are in flight together holds one upstream
/// connection per stream, beyond this count.
pub fn connection_room(soft: u64) -> usize {
    usize::try_from((soft.saturating_sub(RESERVED) / 2).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_two_descriptors_per_client_after_the_reserve() {
        assert_eq!(connection_room(1024), 448);
        assert_eq!(connection_room(65_536), 32_704);
        // A limit below the reserve still serves one client at a time.
        assert_eq!(connection_room(100), 1);
        assert_eq!(connection_room(0), 1);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let Some((before, after)) = raise() else { return };
        assert!(after.soft >= before.soft && after.hard == before.hard, "{before:?} -> {after:?}");
        assert_eq!(current(), Some(after));
    }
}

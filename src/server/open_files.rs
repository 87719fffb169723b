//! The process's open-file limit, and how many client connections it can carry.
//!
//! A client connection holds a descriptor, and while it is served a second one for its
//! upstream connection. Shells and service managers commonly start a process with a
//! soft limit of 1,024 and a far higher hard one: at about 450 clients every upstream
//! connect would then fail (`EMFILE`) and every request be answered 502, well below
//! `max_connections`. So `run` and `demo` raise the soft limit to the hard one
//! ([`raise`], as Go's runtime and HAProxy do), and the limit is shared ([`budget`])
//! between clients, their upstream connections and the idle lists: the connection cap
//! is the smaller of `max_connections` and the clients' share (a client beyond it waits
//! in the kernel's backlog until a place frees, as at the cap), and each thread's idle
//! list keeps no more than its share. HTTP/2 streams in flight each hold an upstream
//! connection beyond the clients' count: one that finds no descriptor waits for a
//! connection to come back or close (within its deadline) instead of failing.

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

/// What a soft limit of `soft` descriptors is shared into, after [`RESERVED`]: a third
/// for client connections, a third for their own upstream connections, a third for the
/// idle lists (a connection whose client left, or an HTTP/2 stream's, kept for the next
/// request; each thread has its own list). At least one client, and one idle connection
/// per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub clients: usize,
    pub idle_per_thread: usize,
}

/// The [`Budget`] of a soft limit, for `threads` serving threads (each with its idle list).
pub fn budget(soft: u64, threads: usize) -> Budget {
    let usable = usize::try_from(soft.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
    let clients = (usable / 3).max(1);
    let idle = usable.saturating_sub(2 * clients);
    Budget { clients, idle_per_thread: (idle / threads.max(1)).max(1) }
}

/// Below this many descriptors the gateway cannot serve at all (its listeners,
/// runtimes and store hold about 30 before the first client): `run` refuses to start.
pub const MIN_TO_SERVE: u64 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_third_each_for_clients_their_upstream_connections_and_the_idle_lists() {
        assert_eq!(budget(1024, 1), Budget { clients: 298, idle_per_thread: 300 });
        assert_eq!(budget(1024, 2), Budget { clients: 298, idle_per_thread: 150 });
        assert_eq!(budget(65_536, 2), Budget { clients: 21_802, idle_per_thread: 10_902 });
        // Clients, their upstream connections and the idle lists fit what is left.
        for (soft, threads) in [(300, 2), (1024, 3), (20_000, 2), (4096, 1)] {
            let b = budget(soft, threads);
            assert!(2 * b.clients + threads * b.idle_per_thread <= (soft - RESERVED) as usize, "{soft} {threads}");
        }
        // A limit below the reserve still serves one client at a time.
        assert_eq!(budget(100, 2), Budget { clients: 1, idle_per_thread: 1 });
        assert_eq!(budget(0, 0), Budget { clients: 1, idle_per_thread: 1 });
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let Some((before, after)) = raise() else { return };
        assert!(after.soft >= before.soft && after.hard == before.hard, "{before:?} -> {after:?}");
        assert_eq!(current(), Some(after));
    }
}

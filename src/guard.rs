//! Credential-guessing protection: failed authentications are counted per client
//! address; past `max_failures` within `window`, the address gets 429 for `cooldown`.
//!
//! The request path pays one atomic load while no address is blocked; the map is only
//! touched on a failure or while some address is in its cool-down.

use crate::config::Guard;
use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Addresses tracked at most; beyond this, stale entries are dropped first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

/// Per-address failure counters (survive reloads; the limits are read per call).
#[derive(Debug, Default)]
pub struct AuthGuard {
    entries: DashMap<IpAddr, Entry>,
    /// Entries with `blocked_until` set, so the common case skips the map.
    blocked: AtomicUsize,
}

impl AuthGuard {
    /// `Err(seconds)` while `ip` is cooling down.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut entry = match self.entries.get_mut(&ip) {
            Some(e) => e,
            None => return Ok(()),
        };
        match entry.blocked_until {
            Some(until) if until > now => {
                let secs = (until - now).as_nanos().div_ceil(1_000_000_000).max(1);
                Err(u64::try_from(secs).unwrap_or(u64::MAX))
            }
            Some(_) => {
                entry.blocked_until = None;
                entry.failures = 0;
                entry.window_start = now;
                self.blocked.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`.
    pub fn failure(&self, ip: IpAddr, cfg: &Guard) {
        if cfg.max_failures == 0 {
            return;
        }
        let now = Instant::now();
        if self.entries.len() >= MAX_TRACKED {
            self.prune(now, cfg.window);
        }
        let mut entry = self.entries.entry(ip).or_insert(Entry { window_start: now, failures: 0, blocked_until: None });
        if entry.blocked_until.is_some() {
            return;
        }
        if now.duration_since(entry.window_start) > cfg.window {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures >= cfg.max_failures {
            entry.blocked_until = Some(now + cfg.cooldown);
            self.blocked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %ip, failures = entry.failures, cooldown = ?cfg.cooldown, "too many failed authentications; cooling down");
        }
    }

    fn prune(&self, now: Instant, window: Duration) {
        self.entries.retain(|_, e| e.blocked_until.is_some() || now.duration_since(e.window_start) <= window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_threshold_and_only_that_address() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 3, window: Duration::from_secs(60), cooldown: Duration::from_millis(200) };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        g.failure(a, &cfg);
        g.failure(a, &cfg);
        assert!(g.check(a).is_ok());
        g.failure(a, &cfg);
        assert_eq!(g.check(a), Err(1));
        assert!(g.check(b).is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(g.check(a).is_ok(), "cool-down over");
        assert_eq!(g.blocked.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn zero_disables() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 0, window: Duration::from_secs(60), cooldown: Duration::from_secs(60) };
        let ip: IpAddr = "::1".parse().unwrap();
        for _ in 0..100 {
            g.failure(ip, &cfg);
        }
        assert!(g.check(ip).is_ok());
    }
}

//! Credential-guessing protection: it slows guessing, it never denies service.
//!
//! Guesses (credentials that match no token or user the gateway knows, valid or not)
//! are counted per client address; past `max_failures` within `window`, the address
//! cools down for `cooldown`: its guesses get 429 instead of 401, and only one at a
//! time, each after [`TARPIT`] (a tarpit: without it a 429 came as fast as a 401, so a
//! guesser went on at full speed and a right guess still answered 200). A request whose
//! credentials are valid is never refused nor held by the guard, so a sidecar, a NAT or
//! a load balancer that puts many clients behind one address does not let one client's
//! failures take the others down; and presenting a known token that expired or was
//! revoked is a stale credential, not a guess, so it gets its own 401.
//!
//! Only failed requests touch the guard; the request path of a valid one never does.

use crate::config::Guard;
use dashmap::DashMap;
use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Addresses tracked at most; beyond this, stale entries are dropped first.
const MAX_TRACKED: usize = 100_000;

/// How long each guess from a cooling address holds that address's one slot before its
/// 429: a guesser gets one answer a second, however many connections or streams it opens.
pub const TARPIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    /// The address's one tarpit slot (see [`TARPIT`]).
    slot: Arc<Semaphore>,
}

/// A guess from an address that is cooling down: answered 429 once it had the address's
/// slot for [`TARPIT`] ([`Cooling::wait`]).
#[derive(Debug)]
pub struct Cooling {
    until: Instant,
    slot: Arc<Semaphore>,
}

impl Cooling {
    /// Waits for the address's slot and holds it for [`TARPIT`]; then the seconds of
    /// cool-down left, for `Retry-After` (at least 1).
    pub async fn wait(self) -> u64 {
        if let Ok(_held) = Arc::clone(&self.slot).acquire_owned().await {
            tokio::time::sleep(TARPIT).await;
        }
        self.retry_after()
    }

    /// The seconds of cool-down left now, without waiting (at least 1).
    pub fn retry_after(&self) -> u64 {
        let left = self.until.saturating_duration_since(Instant::now()).as_nanos().div_ceil(1_000_000_000);
        u64::try_from(left).unwrap_or(u64::MAX).max(1)
    }
}

/// Per-address failure counters (survive reloads; the limits are read per call), and
/// the secrets of recently deleted tokens.
#[derive(Debug, Default)]
pub struct AuthGuard {
    entries: DashMap<IpAddr, Entry>,
    /// Entries with `blocked_until` set, so the common case skips the map.
    blocked: AtomicUsize,
    revoked: Mutex<Revoked>,
}

/// Secret hashes of deleted tokens, the latest `MAX_REVOKED` (kept in memory only).
#[derive(Debug, Default)]
struct Revoked {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

/// Deleted tokens remembered as "known" at most.
const MAX_REVOKED: usize = 16_384;

/// The address a guess is counted against: an IPv4 address (also when written as
/// IPv4-mapped IPv6), or an IPv6 address's /64, the smallest block one subscriber or
/// host is given (RFC 6177): every address in it is one guesser's to rotate through.
fn holder(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl AuthGuard {
    /// Remembers a deleted token's secret hash: presenting it later is not a guess.
    pub fn revoked(&self, secret_sha256: [u8; 32]) {
        let Ok(mut r) = self.revoked.lock() else { return };
        if r.set.insert(secret_sha256) {
            r.order.push_back(secret_sha256);
        }
        while r.order.len() > MAX_REVOKED {
            if let Some(old) = r.order.pop_front() {
                r.set.remove(&old);
            }
        }
    }

    /// Whether a secret hash is one of a recently deleted token.
    pub fn was_revoked(&self, secret_sha256: &[u8; 32]) -> bool {
        self.revoked.lock().is_ok_and(|r| r.set.contains(secret_sha256))
    }

    /// Decides what a guess from `ip` gets: `Err` while the address is cooling down (the
    /// caller waits its turn, [`Cooling::wait`], and answers 429), else the guess is
    /// counted (which may start a cool-down for the next ones) and `Ok`.
    pub fn guess(&self, ip: IpAddr, cfg: &Guard) -> Result<(), Cooling> {
        let ip = holder(ip);
        self.check(ip)?;
        self.failure(ip, cfg);
        Ok(())
    }

    /// `Err` while `ip` is cooling down.
    fn check(&self, ip: IpAddr) -> Result<(), Cooling> {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut entry = match self.entries.get_mut(&ip) {
            Some(e) => e,
            None => return Ok(()),
        };
        match entry.blocked_until {
            Some(until) if until > now => Err(Cooling { until, slot: Arc::clone(&entry.slot) }),
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
    fn failure(&self, ip: IpAddr, cfg: &Guard) {
        if cfg.max_failures == 0 {
            return;
        }
        let now = Instant::now();
        if self.entries.len() >= MAX_TRACKED {
            self.prune(now, cfg.window);
        }
        let mut entry = self.entries.entry(ip).or_insert_with(|| Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
            slot: Arc::new(Semaphore::new(1)),
        });
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
        assert_eq!(g.check(a).map_err(|c| c.retry_after()), Err(1));
        assert!(g.check(b).is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(g.check(a).is_ok(), "cool-down over");
        assert_eq!(g.blocked.load(Ordering::Relaxed), 0);
    }

    /// A cooling address's guesses are answered one at a time, [`TARPIT`] each, however
    /// many arrive at once; another address's are not held by them.
    #[tokio::test(start_paused = true)]
    async fn a_cooling_address_is_answered_one_guess_a_second() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 1, window: Duration::from_secs(60), cooldown: Duration::from_secs(60) };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(g.guess(a, &cfg).is_ok() && g.guess(b, &cfg).is_ok());
        let started = tokio::time::Instant::now();
        let (x, y, z) = (g.guess(a, &cfg).unwrap_err(), g.guess(a, &cfg).unwrap_err(), g.guess(b, &cfg).unwrap_err());
        let timed = |c: Cooling| async move { (c.wait().await, started.elapsed()) };
        let ((x, x_at), (y, y_at), (_, z_at)) = tokio::join!(timed(x), timed(y), timed(z));
        assert!((58..=60).contains(&x) && (58..=60).contains(&y), "Retry-After {x} {y}");
        assert_eq!((x_at, y_at), (TARPIT, TARPIT * 2), "one address, one slot");
        assert_eq!(z_at, TARPIT, "another address waits only its own turn");
    }

    #[test]
    fn revoked_secrets_are_remembered_up_to_a_bound() {
        let g = AuthGuard::default();
        g.revoked([1; 32]);
        assert!(g.was_revoked(&[1; 32]) && !g.was_revoked(&[2; 32]));
        for i in 0..MAX_REVOKED {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            h[31] = 9;
            g.revoked(h);
        }
        assert!(!g.was_revoked(&[1; 32]), "the oldest is forgotten first");
    }

    /// Rotating through the addresses of one IPv6 /64 (or writing an IPv4 address as
    /// IPv4-mapped IPv6) is one guesser; the next /64 is another.
    #[test]
    fn an_ipv6_slash_64_is_one_guesser() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 3, window: Duration::from_secs(60), cooldown: Duration::from_secs(60) };
        for k in 1..=3 {
            assert!(g.guess(format!("2001:db8:1:2::{k:x}").parse().unwrap(), &cfg).is_ok());
        }
        assert!(g.guess("2001:db8:1:2:ffff::9".parse().unwrap(), &cfg).is_err());
        assert!(g.guess("2001:db8:1:3::1".parse().unwrap(), &cfg).is_ok(), "another /64");
        for _ in 0..3 {
            let _ = g.guess("192.0.2.7".parse().unwrap(), &cfg);
        }
        assert!(g.guess("::ffff:192.0.2.7".parse().unwrap(), &cfg).is_err(), "the same IPv4 address");
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

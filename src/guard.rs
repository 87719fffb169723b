//! Credential-guessing protection: it stops guessing, and keeps serving the clients
//! already at work.
//!
//! Guesses (credentials that match no token or user the gateway knows, valid or not)
//! are counted per client address; past `max_failures` within `window`, the address
//! cools down for `cooldown`. While it does, a credential from it is answered only if it
//! is one of the address's *known* ones: a credential that succeeded from that address
//! since its first counted failure (the clients at work beside a guesser, behind a
//! sidecar, a NAT or a load balancer, keep working). Any other credential, right or
//! wrong, gets 429 without an answer on it: a right guess no longer answers 200 while
//! wrong ones get 429, which let a guesser go on at full speed (a delay on wrong
//! guesses does not help: a guesser abandons the slow ones). Presenting a known token
//! that expired or was revoked is a stale credential, not a guess, so outside a
//! cool-down it gets its own 401 and is not counted.
//!
//! The cool-down is decided at the gate, before the credential is looked up: the
//! presented credential's hash (and `api_key`) against the address's ones at work,
//! computed alike for every request from a cooling address. Deciding after the lookup
//! let an existing `api_key` or a right secret answer a little later than a wrong one.
//!
//! While no address cools down the gate costs one atomic load, and while no address has
//! a failure on record so does remembering the credentials at work; once one has, a
//! lookup in the map (entries are pruned past `MAX_TRACKED`).

use crate::config::Guard;
use dashmap::DashMap;
use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; beyond this, stale entries are dropped first.
const MAX_TRACKED: usize = 100_000;

/// Credentials remembered as known per address at most (a NAT's clients at work);
/// beyond them a new credential waits for the cool-down's end. With `MAX_TRACKED`
/// addresses this bounds what the lists hold (a few hundred MiB at worst, for someone
/// holding 64 valid tokens and 100,000 IPv6 /64s).
const MAX_KNOWN: usize = 64;

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    /// Credentials that succeeded from this address since its first counted failure.
    known: Vec<Known>,
}

/// A credential as the guard remembers it at work: what it is, the SHA-256 of its
/// secret and the `api_key` it came with. Built from the request's fields alone, never
/// from a lookup, so that during a cool-down a right guess and a wrong one cost the same
/// (the store is not read for either). A user at work on one stack is not at work on
/// another: else the token API's 403 (a stack that exists) against 429 (a key that names
/// none) would list the stacks to anyone with a configured user's authtoken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    kind: Kind,
    digest: [u8; 32],
    api_key: Box<[u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A management token (`authorization`).
    Token,
    /// A user's `authtoken` on the token API.
    User,
    /// A user's `authtoken` signing in to the console (no stack named).
    Console,
}

impl Known {
    /// A management token's secret with the `api_key` it was sent with.
    pub fn token(secret: &[u8], api_key: &[u8]) -> Self {
        Self::new(Kind::Token, secret, api_key)
    }

    /// A user's `authtoken` on the token API, with the `api_key` it names.
    pub fn user(authtoken: &[u8], api_key: &[u8]) -> Self {
        Self::new(Kind::User, authtoken, api_key)
    }

    /// A user's `authtoken` signing in to the console.
    pub fn console(authtoken: &[u8]) -> Self {
        Self::new(Kind::Console, authtoken, b"")
    }

    fn new(kind: Kind, secret: &[u8], api_key: &[u8]) -> Self {
        Known { kind, digest: crate::token::hash_secret(secret), api_key: api_key.into() }
    }
}

/// Per-address failure counters (survive reloads; the limits are read per call), and
/// the secrets of recently deleted tokens.
#[derive(Debug, Default)]
pub struct AuthGuard {
    entries: DashMap<IpAddr, Entry>,
    /// Entries in `entries`, so that while there are none (the common case) a request
    /// skips the map.
    tracked: AtomicUsize,
    /// Entries with `blocked_until` set.
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

    /// Whether a request from `ip` presenting `who` may be decided on at all:
    /// `Err(seconds)` (429) while the address cools down and `who` is none of its
    /// credentials at work (or there is none), before anything is looked up. `who` is
    /// built only while the address cools down, and then for every request alike.
    pub fn gate(&self, ip: IpAddr, who: impl FnOnce() -> Option<Known>) -> Result<(), u64> {
        let ip = holder(ip);
        let Err(retry_after) = self.check(ip) else { return Ok(()) };
        let who = who();
        let at_work = self.entries.get(&ip).is_some_and(|e| who.is_some_and(|w| e.known.contains(&w)));
        if at_work {
            Ok(())
        } else {
            Err(retry_after)
        }
    }

    /// Whether a request from `ip` whose credential succeeded (`who`) gets its answer:
    /// `Err(seconds)` (429) while the address cools down and `who` is none of its
    /// credentials at work (a cool-down that began after the gate), else `Ok`,
    /// remembering `who` as at work while the address has failures in its window.
    pub fn admits(&self, ip: IpAddr, who: impl FnOnce() -> Option<Known>) -> Result<(), u64> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let Some(mut entry) = self.entries.get_mut(&holder(ip)) else { return Ok(()) };
        let cooling = match entry.blocked_until {
            Some(until) if until > Instant::now() => Some(seconds_until(until)),
            _ => None,
        };
        let Some(who) = who() else { return cooling.map_or(Ok(()), Err) };
        if entry.known.contains(&who) {
            return Ok(());
        }
        match cooling {
            Some(retry_after) => Err(retry_after),
            None => {
                if entry.known.len() < MAX_KNOWN {
                    entry.known.push(who);
                }
                Ok(())
            }
        }
    }

    /// `Err(seconds)` while `ip`'s address cools down.
    pub fn cooling(&self, ip: IpAddr) -> Result<(), u64> {
        self.check(holder(ip))
    }

    /// Decides what a guess from `ip` gets: `Err(seconds)` while the address is cooling
    /// down (the caller answers 429), else the guess is counted (which may start a
    /// cool-down for the next ones) and `Ok`.
    pub fn guess(&self, ip: IpAddr, cfg: &Guard) -> Result<(), u64> {
        let ip = holder(ip);
        self.check(ip)?;
        self.failure(ip, cfg);
        Ok(())
    }

    /// `Err(seconds)` while `ip` is cooling down.
    fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut entry = match self.entries.get_mut(&ip) {
            Some(e) => e,
            None => return Ok(()),
        };
        match entry.blocked_until {
            Some(until) if until > now => Err(seconds_until(until)),
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
        let mut entry = self.entries.entry(ip).or_insert_with(|| {
            self.tracked.fetch_add(1, Ordering::Relaxed);
            Entry { window_start: now, failures: 0, blocked_until: None, known: Vec::new() }
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
        self.entries.retain(|_, e| {
            let keep = e.blocked_until.is_some() || now.duration_since(e.window_start) <= window;
            if !keep {
                self.tracked.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }
}

/// Whole seconds from now to `until`, at least 1 (for `Retry-After`).
fn seconds_until(until: Instant) -> u64 {
    let left = until.saturating_duration_since(Instant::now()).as_nanos().div_ceil(1_000_000_000).max(1);
    u64::try_from(left).unwrap_or(u64::MAX)
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

    /// While an address cools down only its credentials at work (those that succeeded
    /// from it since its first counted failure) are answered; before any failure nothing
    /// is remembered, and another address is untouched.
    #[test]
    fn a_cooling_address_is_answered_only_on_its_credentials_at_work() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 2, window: Duration::from_secs(60), cooldown: Duration::from_secs(60) };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let token = |secret: &str| Some(Known::token(secret.as_bytes(), b"blt1"));
        let user = |authtoken: &str, stack: &str| Some(Known::user(authtoken.as_bytes(), stack.as_bytes()));
        assert!(g.admits(a, || token("before")).is_ok());
        assert_eq!(g.tracked.load(Ordering::Relaxed), 0, "no failure, nothing kept");
        assert!(g.guess(a, &cfg).is_ok());
        assert!(g.admits(a, || token("at work")).is_ok());
        assert!(g.admits(a, || user("alice", "blt1")).is_ok());
        assert!(g.admits(a, || Some(Known::console(b"bob"))).is_ok());
        assert!(g.gate(a, || token("anything")).is_ok(), "no cool-down yet");
        assert!(g.guess(a, &cfg).is_ok(), "the second failure starts the cool-down");
        assert!(g.cooling(a).is_err());
        for at_work in [token("at work"), user("alice", "blt1"), Some(Known::console(b"bob"))] {
            assert!(g.gate(a, || at_work.clone()).is_ok() && g.admits(a, || at_work.clone()).is_ok());
        }
        let others = [
            user("alice", "blt2"),                   // at work on one stack only
            token("before"),                         // not seen since the first failure
            user("at work", "blt1"),                 // a token's secret is not a user's
            Some(Known::token(b"at work", b"blt2")), // nor with another key
            Some(Known::console(b"alice")),          // the token API is not the console
            None,                                    // no credential
        ];
        for other in others {
            assert!(g.gate(a, || other.clone()).is_err(), "{other:?}");
            assert!(g.admits(a, || other.clone()).is_err(), "{other:?}");
        }
        assert!(g.gate(b, || None).is_ok() && g.admits(b, || token("anything")).is_ok() && g.cooling(b).is_ok());
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

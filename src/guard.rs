//! Credential-guessing protection: it stops guessing, and keeps serving the clients
//! already at work.
//!
//! Guesses (credentials that match no token or user the gateway knows, valid or not)
//! are counted per client address; past `max_failures` within `window`, the address
//! cools down for `cooldown`. While it does, a credential from it is answered only if it
//! is *at work* there: it succeeded from that address within the last `window`, or since
//! the address's first counted failure (the clients at work beside a guesser, behind a
//! sidecar, a NAT or a load balancer, keep working; a guesser reaches the cool-down in
//! under a millisecond, so "since the first failure" alone would shut out everyone it
//! did not see in that gap). Any other credential, right or wrong, gets 429 without an
//! answer on it: a right guess no longer answers 200 while wrong ones get 429, which let
//! a guesser go on at full speed (a delay on wrong guesses does not help: a guesser
//! abandons the slow ones). Presenting a known token that expired or was revoked is a
//! stale credential, not a guess, so outside a cool-down it gets its own 401 and is not
//! counted.
//!
//! The cool-down is decided at the gate, before the credential is looked up: the
//! presented credential's SHA-256, mixed with its kind and `api_key` (see [`Known`]),
//! against the address's ones at work, computed alike for every request from a cooling
//! address. Deciding after the
//! lookup let an existing `api_key` or a right secret answer a little later than a
//! wrong one.
//!
//! Costs: every successful authentication stores its (address, credential) pair in a
//! fixed table (a mix of the digest its lookup computed, and one atomic store). While no address cools down the
//! gate costs one atomic load; while no address has a failure on record, so does the
//! list of credentials at work since the first failure; once one has, a lookup in the
//! map (entries are pruned past `MAX_TRACKED`).

use crate::config::Guard;
use dashmap::DashMap;
use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// A credential as the guard remembers it at work: the SHA-256 of its secret, what it is
/// and the `api_key` it came with, mixed under this process's random seed into 64 bits.
/// Built from the request's fields alone, never from a lookup, so that during a
/// cool-down a right guess and a wrong one cost the same (the store is not read for
/// either); on success it reuses the digest the lookup computed. A user at work on one
/// stack is not at work on another: else the token API's 403 (a stack that exists)
/// against 429 (a key that names none) would list the stacks to anyone with a
/// configured user's authtoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known(u64);

/// The guard's own zero of time, for instants kept in atomics.
#[derive(Debug)]
struct Epoch(Instant);

impl Default for Epoch {
    fn default() -> Self {
        Epoch(Instant::now())
    }
}

impl Epoch {
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_millis()).unwrap_or(u64::MAX)
    }
}

/// This process's random seed of [`Known`] (from the standard library's random hash
/// keys).
#[derive(Debug)]
struct Seed(u64);

impl Default for Seed {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Seed(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }
}

/// What a credential is, as the guard tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A management token (`authorization`).
    Token,
    /// A user's `authtoken` on the token API.
    User,
    /// A user's `authtoken` signing in to the console (no stack named).
    Console,
}

/// Which (address, credential) pairs succeeded lately: one slot per pair, by a hash of
/// both, holding a tag of the pair and the Unix second of its latest success. A client
/// at work before its address's first counted failure stays at work through the
/// cool-down (else a guesser on a shared address, which reaches the cool-down in under
/// a millisecond, would lock out everyone not seen since). A success costs one store;
/// a slot another pair took since is a miss (with 2^18 slots, about 4% of the pairs when
/// 10,000 are at work at once), and that client waits as one new on the address does.
struct Recent {
    slots: Box<[AtomicU64]>,
}

const RECENT_SLOTS: usize = 1 << 18;

impl Default for Recent {
    fn default() -> Self {
        Recent { slots: (0..RECENT_SLOTS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recent")
    }
}

impl Recent {
    /// The slot of `who` on `address`, and the tag that says the slot holds this pair
    /// (never 0, which an empty slot holds).
    fn slot(who: Known, address: IpAddr) -> (usize, u64) {
        let bits = match address {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        let h = mix(who.0 ^ mix(bits as u64 ^ mix((bits >> 64) as u64)));
        ((h as usize) & (RECENT_SLOTS - 1), (h >> 32) | 1)
    }

    fn record(&self, who: Known, address: IpAddr, now: i64) {
        let (slot, tag) = Self::slot(who, address);
        let second = u64::try_from(now).unwrap_or(0) & 0xffff_ffff;
        self.slots[slot].store(tag << 32 | second, Ordering::Relaxed);
    }

    /// Whether `who` succeeded from `address` within `within` of Unix second `now`.
    /// Whole seconds, rounded in the client's favour: a client idle for a little less
    /// than the window is at work (up to a second longer is), never the reverse (the
    /// eleventh outside attack: rounding the other way refused a client idle 4.1 s of a
    /// 5 s window, for as long as the guessing went on).
    fn holds(&self, who: Known, address: IpAddr, now: i64, within: Duration) -> bool {
        let (slot, tag) = Self::slot(who, address);
        let held = self.slots[slot].load(Ordering::Relaxed);
        let second = i64::try_from(held & 0xffff_ffff).unwrap_or(0);
        held >> 32 == tag && now.saturating_sub(second) <= i64::try_from(within.as_secs()).unwrap_or(i64::MAX)
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
    /// When the entries were last pruned.
    pruned: Mutex<Option<Instant>>,
    /// Until when (milliseconds since `epoch`) an entry may still count: the latest end
    /// of a failure's window or of a cool-down.
    live_until: AtomicU64,
    epoch: Epoch,
    seed: Seed,
    recent: Recent,
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

    /// What the guard remembers of a credential whose secret hashes to `digest` (see
    /// [`Known`]). The digest is uniform and unknown to a guesser; the mix only has to
    /// bind the kind and the `api_key` to it.
    pub fn known(&self, kind: Kind, digest: &[u8; 32], api_key: &[u8]) -> Known {
        let word = |i: usize| u64::from_le_bytes(digest[i..i + 8].try_into().unwrap_or_default());
        let mut h = mix(self.seed.0 ^ word(0));
        h = mix(h ^ kind as u64 ^ (api_key.len() as u64) << 8);
        for chunk in api_key.chunks(8) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            h = mix(h ^ u64::from_le_bytes(bytes));
        }
        Known(h ^ word(8))
    }

    /// Whether a request from `ip` presenting `who` may be decided on at all:
    /// `Err(seconds)` (429) while the address cools down and `who` is not at work there
    /// (it succeeded from that address within `cfg.window` at Unix second `now`, or
    /// since the address's first counted failure), before anything is looked up. `who`
    /// is built only while the address cools down, and then for every request alike.
    pub fn gate(&self, ip: IpAddr, cfg: &Guard, now: i64, who: impl FnOnce() -> Option<Known>) -> Result<(), u64> {
        if self.blocked.load(Ordering::Relaxed) == 0 || self.quiet(cfg.window) {
            return Ok(());
        }
        let address = holder(ip);
        let Err(retry_after) = self.check(address) else { return Ok(()) };
        let at_work = who().is_some_and(|who| {
            self.recent.holds(who, address, now, cfg.window)
                || self.entries.get(&address).is_some_and(|e| e.known.contains(&who))
        });
        if at_work {
            Ok(())
        } else {
            Err(retry_after)
        }
    }

    /// Whether a request from `ip` whose credential succeeded (`who`) gets its answer:
    /// `Err(seconds)` (429) while the address cools down and `who` is not at work there
    /// (a cool-down that began after the gate), else `Ok`, remembering `who` as at work
    /// (at Unix second `now`; and in the address's list while it has failures in its
    /// window).
    pub fn admits(&self, ip: IpAddr, cfg: &Guard, now: i64, who: Option<Known>) -> Result<(), u64> {
        let address = holder(ip);
        let record = |who: Option<Known>| {
            if let Some(who) = who {
                self.recent.record(who, address, now);
            }
        };
        if self.tracked.load(Ordering::Relaxed) == 0 || self.quiet(cfg.window) {
            record(who);
            return Ok(());
        }
        let (cooling, listed) = match self.entries.get(&address) {
            None => {
                record(who);
                return Ok(());
            }
            Some(e) => (
                e.blocked_until.filter(|until| *until > Instant::now()).map(seconds_until),
                who.is_some_and(|who| e.known.contains(&who)),
            ),
        };
        let Some(who) = who else { return cooling.map_or(Ok(()), Err) };
        if !listed {
            if let Some(retry_after) = cooling.filter(|_| !self.recent.holds(who, address, now, cfg.window)) {
                return Err(retry_after);
            }
            self.list(address, who);
        }
        record(Some(who));
        Ok(())
    }

    /// Whether any address has a failure on record (else nothing is listed at work).
    pub fn watching(&self) -> bool {
        self.tracked.load(Ordering::Relaxed) > 0
    }

    /// Remembers `who` as at work on `ip` at Unix second `now` without asking: a
    /// credential another one just proved (a user's authtoken signing in to the console
    /// is at work on the token API for the user's stacks, and the reverse).
    pub fn remember(&self, ip: IpAddr, now: i64, who: Known) {
        let address = holder(ip);
        self.recent.record(who, address, now);
        if self.tracked.load(Ordering::Relaxed) > 0 {
            self.list(address, who);
        }
    }

    /// Lists `who` at work on `address` since its first counted failure, if the address
    /// has an entry and room in it.
    fn list(&self, address: IpAddr, who: Known) {
        if let Some(mut entry) = self.entries.get_mut(&address) {
            if !entry.known.contains(&who) && entry.known.len() < MAX_KNOWN {
                entry.known.push(who);
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
        match self.entries.get(&ip).and_then(|e| e.blocked_until) {
            Some(until) if until > now => return Err(seconds_until(until)),
            Some(_) => {}
            None => return Ok(()),
        }
        // Ended: reset under the write lock (once, whoever gets there first).
        if let Some(mut entry) = self.entries.get_mut(&ip) {
            if entry.blocked_until.is_some_and(|until| until <= now) {
                entry.blocked_until = None;
                entry.failures = 0;
                entry.window_start = now;
                entry.known.clear();
                self.blocked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Whether nothing on record counts any more (every window and cool-down is over);
    /// then the entries are pruned (at most once a second), so that after a guesser has
    /// gone the requests pay one atomic load again, not a map lookup each.
    fn quiet(&self, window: Duration) -> bool {
        let now = Instant::now();
        if self.epoch.millis(now) <= self.live_until.load(Ordering::Relaxed) {
            return false;
        }
        self.prune(now, window);
        true
    }

    /// Counts a failed authentication from `ip`.
    fn failure(&self, ip: IpAddr, cfg: &Guard) {
        if cfg.max_failures == 0 {
            return;
        }
        let now = Instant::now();
        if self.entries.len() >= MAX_TRACKED {
            self.prune(now, cfg.window);
            // Past twice the bound, with every entry cooling down, a new address is not
            // counted until room is made (memory stays bounded).
            if self.entries.len() >= 2 * MAX_TRACKED && !self.entries.contains_key(&ip) {
                return;
            }
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
            entry.known.clear();
        }
        entry.failures += 1;
        self.live_until.fetch_max(self.epoch.millis(now + cfg.window), Ordering::Relaxed);
        if entry.failures >= cfg.max_failures {
            entry.blocked_until = Some(now + cfg.cooldown);
            self.live_until.fetch_max(self.epoch.millis(now + cfg.cooldown), Ordering::Relaxed);
            self.blocked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %ip, failures = entry.failures, cooldown = ?cfg.cooldown, "too many failed authentications; cooling down");
        }
    }

    /// Makes room, at most once a second (a pass is linear in the entries; run per new
    /// address past the bound, a flood of new addresses made every failure cost
    /// milliseconds): drops what no longer counts (an ended cool-down, a window gone by),
    /// and at twice the bound every entry not cooling down (their counts restart: a
    /// guesser needs 200,000 addresses for that, and gets at most `max_failures` - 1
    /// guesses per address each second).
    fn prune(&self, now: Instant, window: Duration) {
        {
            let Ok(mut last) = self.pruned.try_lock() else { return };
            if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        let cooling = |e: &Entry| e.blocked_until.is_some_and(|until| until > now);
        let drop = |e: &Entry| {
            if e.blocked_until.is_some() {
                self.blocked.fetch_sub(1, Ordering::Relaxed);
            }
            self.tracked.fetch_sub(1, Ordering::Relaxed);
            false
        };
        self.entries.retain(|_, e| {
            cooling(e) || (e.blocked_until.is_none() && now.duration_since(e.window_start) <= window) || drop(e)
        });
        if self.entries.len() >= 2 * MAX_TRACKED {
            self.entries.retain(|_, e| cooling(e) || drop(e));
        }
    }
}

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
    /// is listed, and another address is untouched.
    #[test]
    fn a_cooling_address_is_answered_only_on_its_credentials_at_work() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 2, window: Duration::from_secs(60), cooldown: Duration::from_secs(60) };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = 1_000_000;
        let token = |secret: &str| Some(g.known(Kind::Token, &crate::token::hash_secret(secret.as_bytes()), b"blt1"));
        let user = |authtoken: &str, stack: &str| {
            Some(g.known(Kind::User, &crate::token::hash_secret(authtoken.as_bytes()), stack.as_bytes()))
        };
        let console =
            |authtoken: &str| Some(g.known(Kind::Console, &crate::token::hash_secret(authtoken.as_bytes()), b""));
        assert!(g.admits(b, &cfg, now - 61, token("before")).is_ok());
        assert_eq!(g.tracked.load(Ordering::Relaxed), 0, "no failure, nothing listed");
        assert!(g.guess(a, &cfg).is_ok());
        assert!(g.admits(a, &cfg, now, token("at work")).is_ok());
        assert!(g.admits(a, &cfg, now, user("alice", "blt1")).is_ok());
        assert!(g.admits(a, &cfg, now, console("bob")).is_ok());
        assert!(g.gate(a, &cfg, now, || token("anything")).is_ok(), "no cool-down yet");
        assert!(g.guess(a, &cfg).is_ok(), "the second failure starts the cool-down");
        assert!(g.cooling(a).is_err());
        for at_work in [token("at work"), user("alice", "blt1"), console("bob")] {
            assert!(g.gate(a, &cfg, now, || at_work).is_ok() && g.admits(a, &cfg, now, at_work).is_ok());
        }
        let others = [
            user("alice", "blt2"),   // at work on one stack only
            token("before"),         // at work on another address
            user("at work", "blt1"), // a token's secret is not a user's
            Some(g.known(Kind::Token, &crate::token::hash_secret(b"at work"), b"blt2")), // nor with another key
            console("alice"),        // the token API is not the console
            None,                    // no credential
        ];
        for other in others {
            assert!(g.gate(a, &cfg, now, || other).is_err(), "{other:?}");
            assert!(g.admits(a, &cfg, now, other).is_err(), "{other:?}");
        }
        assert!(g.gate(b, &cfg, now, || None).is_ok() && g.cooling(b).is_ok());
    }

    /// A credential that succeeded from an address shortly before its first counted
    /// failure stays at work through the cool-down a guesser starts there: a guesser
    /// reaches it in under a millisecond, so "since the first failure" alone would lock
    /// out everyone on the address not seen in that gap. Past `window` it is new again.
    #[test]
    fn a_credential_at_work_before_the_guessing_stays_at_work() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 2, window: Duration::from_secs(60), cooldown: Duration::from_secs(600) };
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let now = 1_000_000;
        let neighbour = Some(g.known(Kind::Token, &crate::token::hash_secret(b"neighbour"), b"blt1"));
        let idle = Some(g.known(Kind::Token, &crate::token::hash_secret(b"idle"), b"blt1"));
        assert!(g.admits(a, &cfg, now - 61, idle).is_ok());
        assert!(g.admits(a, &cfg, now - 30, neighbour).is_ok());
        assert_eq!(g.tracked.load(Ordering::Relaxed), 0, "a success alone lists nothing");
        for _ in 0..2 {
            assert!(g.guess(a, &cfg).is_ok());
        }
        assert!(g.cooling(a).is_err());
        let other_host_of_the_64: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(g.gate(other_host_of_the_64, &cfg, now, || neighbour).is_ok(), "at work 30 s before");
        assert!(g.admits(a, &cfg, now, neighbour).is_ok());
        assert!(g.gate(a, &cfg, now + 50, || neighbour).is_ok(), "its own requests keep it at work");
        assert!(g.gate(a, &cfg, now, || idle).is_err(), "idle past the window: a new credential");
        assert!(g.gate("2001:db8:0:1::1".parse().unwrap(), &cfg, now, || neighbour).is_ok(), "not cooling");
        let elsewhere: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            assert!(g.guess(elsewhere, &cfg).is_ok());
        }
        assert!(g.gate(elsewhere, &cfg, now, || neighbour).is_err(), "at work on another address only");
    }

    /// A flood of new addresses (many /64s, or a trusted proxy's forwarded ones) keeps
    /// the table bounded, keeps the addresses cooling down, and prunes at most once a
    /// second (found by the tenth outside attack: pruning on every new address past the
    /// bound made each failure cost milliseconds of CPU, and entries grew without end).
    #[test]
    fn a_flood_of_addresses_keeps_the_table_bounded() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 3, window: Duration::from_secs(600), cooldown: Duration::from_secs(600) };
        let guesser: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            let _ = g.guess(guesser, &cfg);
        }
        for i in 0..(5 * MAX_TRACKED as u32 / 2) {
            let _ = g.guess(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), &cfg);
        }
        assert!(g.entries.len() <= 2 * MAX_TRACKED, "{}", g.entries.len());
        assert!(g.cooling(guesser).is_err(), "a cool-down survives the flood");
        std::thread::sleep(Duration::from_millis(1100));
        let _ = g.guess("192.0.2.1".parse().unwrap(), &cfg);
        assert_eq!(g.entries.len(), 2, "the counts that were not cooling made room");
        assert_eq!(g.tracked.load(Ordering::Relaxed), 2);
        assert_eq!(g.blocked.load(Ordering::Relaxed), 1);
    }

    /// Once every window and cool-down is over, the next request prunes what is left:
    /// the requests after a guesser has gone pay one atomic load again (found in review:
    /// an address that never came back kept every request on the map).
    #[test]
    fn after_the_guessing_the_map_is_left_alone_again() {
        let g = AuthGuard::default();
        let cfg = Guard { max_failures: 2, window: Duration::from_millis(300), cooldown: Duration::from_millis(300) };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..2 {
            let _ = g.guess(a, &cfg);
        }
        assert!(g.gate(a, &cfg, 0, || None).is_err());
        assert!(g.watching() && g.blocked.load(Ordering::Relaxed) == 1);
        std::thread::sleep(Duration::from_millis(400));
        assert!(g.admits("10.0.0.2".parse().unwrap(), &cfg, 0, None).is_ok());
        assert!(!g.watching(), "pruned");
        assert_eq!((g.entries.len(), g.blocked.load(Ordering::Relaxed)), (0, 0));
        assert!(g.gate(a, &cfg, 0, || None).is_ok());
    }

    /// A success is at work for the whole window, whatever the fraction of a second it
    /// fell in: the comparison of whole seconds errs towards the client.
    #[test]
    fn a_success_is_at_work_for_the_whole_window() {
        let r = Recent::default();
        let who = Known(42);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let window = Duration::from_secs(5);
        r.record(who, a, 100);
        for now in [100, 104, 105] {
            assert!(r.holds(who, a, now, window), "{now}");
        }
        assert!(!r.holds(who, a, 106, window));
        assert!(!r.holds(Known(43), a, 100, window) && !r.holds(who, "10.0.0.2".parse().unwrap(), 100, window));
        assert!(r.holds(who, a, 100, Duration::from_millis(500)), "a sub-second window keeps its second");
    }

    /// The mix binds the kind and the `api_key` to the digest, whatever their bytes.
    #[test]
    fn a_known_credential_binds_its_kind_and_key() {
        let g = AuthGuard::default();
        let d = crate::token::hash_secret(b"secret");
        let token = g.known(Kind::Token, &d, b"blt1");
        assert_eq!(token, g.known(Kind::Token, &d, b"blt1"));
        for other in [
            g.known(Kind::User, &d, b"blt1"),
            g.known(Kind::User, &d, b"clt1"),
            g.known(Kind::Token, &d, b"blt2"),
            g.known(Kind::Token, &d, b"blt1\0"),
            g.known(Kind::Token, &d, b""),
            g.known(Kind::Token, &crate::token::hash_secret(b"secreT"), b"blt1"),
        ] {
            assert_ne!(token, other);
        }
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

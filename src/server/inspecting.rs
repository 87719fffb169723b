//! What the bodies being read for the body rules may hold together. Each is bounded by
//! `max_inspected_body`, but one client with a write token can have many read at once
//! (256 streams on every HTTP/2 connection it opens), and the rules run before the rate
//! limits (a body a rule refuses spends no budget): without a bound shared by all of
//! them, reading bodies is memory on demand. A body that does not fit is answered 503
//! with `Retry-After`, as an overloaded upstream would be.
//!
//! A body holds what has arrived of it, not what it declares: a declared length costs
//! the client nothing to state, and bodies that declare a megabyte each and then send
//! a byte a minute would otherwise hold the whole budget for nothing (an outside probe
//! did it with one write token, and every stack's inspected writes were 503 while it
//! lasted). And one holder (a token) may hold at most a quarter of the budget, so that
//! no one token can spend it all on bodies it sends slowly.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One holder may hold at most this part of a budget (but always one whole body).
const HOLDER_PART: u64 = 4;

/// A budget of buffered-body bytes. The bytes it holds are also added to a gauge
/// (`stackgate_inspected_body_bytes`, which the token API's budget shares).
#[derive(Debug, Clone, Default)]
pub struct BodyBudget(Arc<Held>);

#[derive(Debug, Default)]
struct Held {
    /// Locked once per data frame of a body read for the rules: those are writes to a
    /// few paths, and the check and the change must be one.
    bytes: Mutex<Holders>,
    gauge: Gauge,
}

/// What a budget holds in all, and what each holder with bytes held holds (no entry
/// once back to none).
#[derive(Debug, Default)]
struct Holders {
    all: u64,
    by_holder: HashMap<u64, u64>,
}

/// How much a budget may hold: `total` in all, of which one holder at most
/// `total / 4`, or one body (`body`) if that is more.
#[derive(Debug, Clone, Copy)]
pub struct BodyCap {
    pub total: u64,
    pub body: u64,
}

impl BodyCap {
    fn per_holder(self) -> u64 {
        (self.total / HOLDER_PART).max(self.body).min(self.total)
    }
}

impl BodyBudget {
    pub fn new(gauge: Gauge) -> Self {
        BodyBudget(Arc::new(Held { gauge, ..Held::default() }))
    }

    /// An empty share of `holder` (a token, a user), to grow as its body arrives.
    pub fn share(&self, holder: u64) -> Share {
        Share { budget: Arc::clone(&self.0), holder, bytes: 0 }
    }
}

/// One body's bytes in the budget, given back when the share is dropped (once the body
/// was forwarded, or refused).
#[derive(Debug)]
pub struct Share {
    budget: Arc<Held>,
    holder: u64,
    bytes: u64,
}

impl Share {
    /// Takes `n` more bytes, if the budget and the holder's part of it still have them.
    #[must_use]
    pub fn grow(&mut self, n: u64, cap: BodyCap) -> bool {
        let Ok(mut held) = self.budget.bytes.lock() else { return false };
        let holder = held.by_holder.get(&self.holder).copied().unwrap_or(0);
        let fits = |now: u64, most: u64| now.checked_add(n).is_some_and(|after| after <= most);
        if !fits(holder, cap.per_holder()) || !fits(held.all, cap.total) {
            return false;
        }
        held.all += n;
        held.by_holder.insert(self.holder, holder + n);
        self.bytes += n;
        self.budget.gauge.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        true
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        if let Ok(mut held) = self.budget.bytes.lock() {
            held.all = held.all.saturating_sub(self.bytes);
            if let Some(holder) = held.by_holder.get_mut(&self.holder) {
                *holder = holder.saturating_sub(self.bytes);
                if *holder == 0 {
                    held.by_holder.remove(&self.holder);
                }
            }
        }
        self.budget.gauge.dec_by(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::BodyCap;

    #[test]
    fn shares_are_bounded_together_and_given_back() {
        let budget = super::BodyBudget::default();
        let cap = BodyCap { total: 100, body: 100 };
        let (mut a, mut b) = (budget.share(1), budget.share(2));
        assert!(a.grow(60, cap) && a.grow(20, cap));
        assert!(!b.grow(21, cap), "81 + 20 would pass the total");
        assert!(b.grow(20, cap));
        assert_eq!(budget.0.gauge.get(), 100);
        drop(a);
        assert_eq!(budget.0.gauge.get(), 20);
        assert!(b.grow(80, cap) && !b.grow(1, cap));
        assert!(!b.grow(u64::MAX, BodyCap { total: u64::MAX, body: u64::MAX }), "no overflow");
        drop(b);
        assert_eq!(budget.0.gauge.get(), 0);
        assert!(budget.0.bytes.lock().unwrap().by_holder.is_empty());
    }

    /// One holder's bodies together take at most a quarter of the budget (or one whole
    /// body), whatever number of bodies it has open; others still find room.
    #[test]
    fn one_holder_takes_at_most_its_part() {
        let budget = super::BodyBudget::default();
        let cap = BodyCap { total: 100, body: 10 };
        let mut mine: Vec<_> = (0..10).map(|_| budget.share(7)).collect();
        let taken = mine.iter_mut().map(|share| share.grow(10, cap)).filter(|&taken| taken).count();
        assert_eq!(taken, 2, "25 bytes of 100: two bodies of 10");
        assert!(mine[9].grow(5, cap), "up to the quarter exactly");
        assert!(!mine[9].grow(1, cap));
        let mut other = budget.share(8);
        assert!(other.grow(25, cap), "another holder has its own part");
        drop(mine);
        assert!(budget.share(7).grow(25, cap), "given back");
        // A body larger than a quarter still fits, alone.
        assert!(budget.share(9).grow(60, BodyCap { total: 100, body: 60 }));
    }
}

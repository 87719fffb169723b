//! What the bodies being read for the body rules may hold together. Each is bounded by
//! `max_inspected_body`, but one client with a write token can have many read at once
//! (256 streams on every HTTP/2 connection it opens), and the rules run before the rate
//! limits (a body a rule refuses spends no budget): without a bound shared by all of
//! them, reading bodies is memory on demand. A body that does not fit is answered 503
//! with `Retry-After`, as an overloaded upstream would be.

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::Ordering;

/// The bytes held by bodies being read for the rules, in all: the
/// `stackgate_inspected_body_bytes` gauge itself, so what is exported is what is held.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: Gauge,
}

impl BodyBudget {
    pub fn new(held: Gauge) -> Self {
        BodyBudget { held }
    }

    /// An empty share, to grow as a body arrives.
    pub fn share(&self) -> Share {
        Share { held: self.held.clone(), bytes: 0 }
    }
}

/// One body's bytes in the budget, given back when the share is dropped (once the body
/// was forwarded, or refused).
#[derive(Debug)]
pub struct Share {
    held: Gauge,
    bytes: i64,
}

impl Share {
    /// Takes `n` more bytes, if the budget (`total` in all) still has them.
    #[must_use]
    pub fn grow(&mut self, n: u64, total: u64) -> bool {
        let (Ok(n), Ok(total)) = (i64::try_from(n), i64::try_from(total)) else { return false };
        let room = |held: i64| held.checked_add(n).filter(|&after| after <= total);
        let taken = self.held.inner().fetch_update(Ordering::AcqRel, Ordering::Acquire, room).is_ok();
        if taken {
            self.bytes += n;
        }
        taken
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.held.dec_by(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shares_are_bounded_together_and_given_back() {
        let budget = super::BodyBudget::default();
        let (mut a, mut b) = (budget.share(), budget.share());
        assert!(a.grow(60, 100) && a.grow(20, 100));
        assert!(!b.grow(21, 100), "81 + 20 would pass the total");
        assert!(b.grow(20, 100));
        assert_eq!(budget.held.get(), 100);
        drop(a);
        assert_eq!(budget.held.get(), 20);
        assert!(b.grow(80, 100) && !b.grow(1, 100));
        assert!(!b.grow(u64::MAX, u64::MAX), "no overflow");
        drop(b);
        assert_eq!(budget.held.get(), 0);
    }
}

//! Tests of `ratelimit`.

use super::*;

fn admitted(bucket: &Bucket, tries: u32) -> u32 {
    (0..tries).filter(|_| bucket.take().is_ok()).count() as u32
}

#[test]
fn burst_then_refill() {
    let clock = RateClock::fake();
    let b = Bucket::new("t", 5, 5, &clock);
    assert_eq!(admitted(&b, 20), 5);
    clock.advance(Duration::from_millis(200));
    assert_eq!(admitted(&b, 20), 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&b, 20), 5);
    clock.advance(Duration::from_secs(100));
    assert_eq!(admitted(&b, 20), 5, "never more than the burst");
}

#[test]
fn burst_differs_from_rate() {
    let clock = RateClock::fake();
    let b = Bucket::new("o", 2, 10, &clock);
    assert_eq!(admitted(&b, 50), 10);
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&b, 50), 2);
}

#[test]
fn shared_bucket_takes_its_part() {
    let clock = RateClock::fake();
    // 5/s with burst 5 split three ways: burst 2, one cell every 600 ms.
    let b = Bucket::shared("t", 5, 5, 3, &clock);
    assert_eq!(admitted(&b, 20), 2);
    clock.advance(Duration::from_millis(599));
    assert_eq!(admitted(&b, 20), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(admitted(&b, 20), 1);
    clock.advance(Duration::from_secs(3));
    assert_eq!(admitted(&b, 20), 2, "never more than its part of the burst");
    // Redis is charged the whole bucket, with the whole figures.
    assert_eq!((b.rate(), b.burst()), (5, 5));
    assert_eq!(b.limit(Scope::Whole).0, 5);
    assert_eq!(b.reset_secs(0, Scope::Whole), 1, "5 cells at 5/s");
}

#[test]
fn a_shared_buckets_headers_report_the_part_it_enforces() {
    let clock = RateClock::fake();
    let own = Arc::new(Bucket::shared("token-read", 5, 5, 3, &clock));
    let org = Arc::new(Bucket::shared("org-read", 10, 10, 3, &clock));
    let charge = Charge::new(Some(own), None, org);
    let buckets =
        TokenBuckets { read: charge.clone(), write: charge.clone(), bulk_read: charge.clone(), bulk_write: charge };
    let op = Operation { module: crate::cma::Module::Entry, access: Access::Read, rule: Rule::Plain };
    let first = check(&buckets, &op).unwrap();
    // 5/3 per second, rounded down; a burst of 2 with one taken, back in 600 ms.
    assert_eq!((first.name, first.limit, first.remaining, first.reset), ("token-read", 1, 1, 1));
    assert_eq!(first.limit_header, "1");
    // The policy says it exactly: 5 per 3 s, 10 per 3 s.
    assert_eq!(first.policy, "\"token-read\";q=5;w=3, \"org-read\";q=10;w=3");
    assert!(check(&buckets, &op).is_ok());
    let GatewayError::RateLimited { retry_after, info } = check(&buckets, &op).unwrap_err() else {
        panic!("the part's burst is 2")
    };
    assert_eq!((retry_after, info.limit, info.remaining), (1, 1, 0));
    assert_eq!(info.limit_header, "1");
    // Six cells of the part take 3.6 s to refill: a reset of 4 s, not the whole's 2 s.
    let refused_org = Bucket::shared("org-read", 10, 12, 2, &clock);
    assert_eq!((refused_org.limit(Scope::Part).0, refused_org.reset_secs(0, Scope::Part)), (5, 2));
    assert_eq!(Bucket::shared("t", 5, 18, 3, &clock).reset_secs(0, Scope::Part), 4);
}

#[test]
fn wait_is_reported() {
    let clock = RateClock::fake();
    let b = Bucket::new("t", 1, 1, &clock);
    assert!(b.take().is_ok());
    let wait = b.take().unwrap_err();
    assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
}

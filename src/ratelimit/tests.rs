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
    assert_eq!((b.rate(), b.burst()), (5, 5), "headers still show the whole bucket");
}

#[test]
fn wait_is_reported() {
    let clock = RateClock::fake();
    let b = Bucket::new("t", 1, 1, &clock);
    assert!(b.take().is_ok());
    let wait = b.take().unwrap_err();
    assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
}

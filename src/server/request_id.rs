//! Request ids: a random per-process prefix and a counter. Unique, cheap, and unlike
//! a client-sent `X-Request-Id`, trustworthy.

use http::HeaderValue;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 4];
        // A fixed prefix only weakens uniqueness across restarts, never safety.
        let _ = getrandom::getrandom(&mut seed);
        RequestIds { prefix: u32::from_le_bytes(seed), next: AtomicU64::new(1) }
    }

    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let text = format!("{:08x}-{:012x}", self.prefix, n);
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("-"))
    }
}

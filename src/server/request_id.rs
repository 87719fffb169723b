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

    /// `pppppppp-nnnnnnnnnnnn`: prefix and counter in hex, built without `format!`.
    pub fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [b'-'; 21];
        for (i, slot) in buf.iter_mut().take(8).enumerate() {
            *slot = HEX[((self.prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        for (i, slot) in buf.iter_mut().skip(9).enumerate() {
            *slot = HEX[((n >> (44 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_hex_and_increasing() {
        let ids = super::RequestIds { prefix: 0xdeadbeef, next: std::sync::atomic::AtomicU64::new(0x2a) };
        assert_eq!(ids.next(), "deadbeef-00000000002a");
        assert_eq!(ids.next(), "deadbeef-00000000002b");
    }
}

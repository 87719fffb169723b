//! Stage 6: rate limiting (DESIGN.md section 3).
//!
//! This is the seam the rate-limit work plugs into: [`check`] is called once per
//! management-token request after authorisation, with the token (whose own buckets
//! will live beside its record) and the operation (read, write, bulk). It returns the
//! header values to send, or [`GatewayError::RateLimited`].

use crate::error::GatewayError;
use crate::pipeline::Operation;
use crate::snapshot::Token;

/// Rate-limit facts to report in response headers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// `(limit, remaining)` of the bucket closest to empty, when limits apply.
    pub headers: Option<(u32, u32)>,
}

/// Charges the request to its buckets. Not yet enforcing: admits everything.
pub fn check(_token: &Token, _op: &Operation) -> Result<RateInfo, GatewayError> {
    Ok(RateInfo::default())
}

//! Configuration: the raw file ([`raw`]) compiled once into validated runtime types
//! ([`compile`]). Every error is collected with its TOML path and reported together,
//! before any port is bound.

mod compile;
pub mod cors;
pub mod raw;
pub mod trusted;
mod units;

pub use compile::{
    compile, Config, ConfigError, ConfigErrors, ConfigWarning, FailMode, Guard, Limits, Notify, Organization, Postgres,
    RateLimiting, RedisLimits, Role, Secret, Server, Smtp, SmtpAuth, Stack, Store, Telemetry, TlsFiles, Upstream, User,
    UserSessions,
};
pub use units::{parse_duration, parse_size};

use std::path::Path;

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single("", format!("cannot read {}: {e}", path.display())))?;
    from_str(&text)
}

/// Parses and validates config text.
pub fn from_str(text: &str) -> Result<Config, ConfigErrors> {
    let (raw, unknown) =
        raw::parse(text).map_err(|e| ConfigErrors::single("", format!("invalid TOML: {}", e.to_string().trim())))?;
    compile(raw, &unknown)
}

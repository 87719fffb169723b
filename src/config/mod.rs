//! Configuration: the raw file ([`raw`]) compiled once into validated runtime types
//! ([`compile`]). Every error is collected with its TOML path and reported together,
//! before any port is bound.

mod compile;
pub mod cors;
pub mod pg_url;
pub mod raw;
pub mod trusted;
mod units;

pub use compile::{
    compile, Config, ConfigError, ConfigErrors, ConfigWarning, FailMode, Guard, Limits, Notify, Organization, Postgres,
    RateLimiting, RedisLimits, Role, Secret, Server, Smtp, SmtpAuth, Stack, Store, Telemetry, TlsFiles, Upstream, User,
    UserSessions,
};
pub use units::{parse_duration, parse_size};

use crate::token::TokenRecord;
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

/// Logs at start-up what the config allows but probably does not mean (see
/// [`ConfigWarning`]), and each stored token that asks for notices no channel carries.
/// Names token uids only, never a secret or its hash.
pub fn log_warnings(config: &Config, stored: &[TokenRecord]) {
    for warning in config.warnings() {
        match &warning {
            ConfigWarning::NoticeWithoutChannel { token_uid, .. } => {
                tracing::warn!(token.uid = %token_uid, "{warning}")
            }
            ConfigWarning::CleartextSmtpAuth { .. } => tracing::warn!("{warning}"),
        }
    }
    for token in stored {
        warn_if_no_channel(&config.notify, token);
    }
}

/// A token that asks for expiry notices while no channel is configured is accepted
/// (a channel may be added later), but said so in the log.
pub fn warn_if_no_channel(cfg: &Notify, token: &TokenRecord) {
    if token.is_email_notification_enabled && !cfg.has_channel() {
        tracing::warn!(token.uid = %token.uid, stack = %token.stack,
            "token has is_email_notification_enabled = true, but [notify] has neither webhook nor smtp: \
             no expiry notice will be sent");
    }
}

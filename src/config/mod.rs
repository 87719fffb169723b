//! Configuration: the raw file ([`raw`]) compiled once into validated runtime types
//! ([`types`]). [`compile`] orchestrates the per-section checks (`sections`,
//! `tenants`, over the shared `checks`); environment variables are read here, at
//! load, and handed to it, so compiling is a function of its inputs. Every error is
//! collected with its TOML path and reported together, before any port is bound.

mod checks;
mod compile;
pub mod console;
pub mod cors;
mod errors;
pub mod pg_url;
pub mod raw;
mod sections;
mod tenants;
pub mod trusted;
pub mod types;
mod units;

pub(crate) use checks::host_and_port;
pub use compile::compile;
pub use errors::{ConfigError, ConfigErrors};
pub use types::{
    Config, ConfigWarning, FailMode, Guard, Limits, Notify, Organization, Postgres, RateLimiting, RedisLimits, Role,
    Secret, Server, Smtp, SmtpAuth, Stack, Store, Telemetry, TlsFiles, Upstream, User, UserSessions,
};
pub use units::{parse_duration, parse_size};

/// How the compiler reads an environment variable (`url_env`, `password_env`):
/// [`std::env::var`] at load, a fixed map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

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
    let (raw, unknown) = raw::parse(text).map_err(|e| ConfigErrors::single("", toml_error(text, &e)))?;
    compile(raw, &unknown, &process_env)
}

/// A TOML error by its place and its message, never the text there: toml's own display
/// quotes the line, and the line may hold a secret (a webhook URL with its key, a
/// PostgreSQL URL with its password) that would reach `/reload`'s answer and the log. A
/// value a message repeats (serde's "invalid type: string ...") is withheld the same way.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim().to_owned();
    // serde's "invalid type: string \"...\", expected ..." (or integer `...`): the kind
    // stays, the value goes, whichever way it was quoted.
    for prefix in ["invalid type: ", "invalid value: "] {
        if let (true, Some(end)) = (message.starts_with(prefix), message.rfind(", expected")) {
            let shown = message.get(prefix.len()..end).unwrap_or_default();
            let kind = shown.split(' ').next().unwrap_or_default().to_owned();
            if kind.len() < shown.len() {
                message.replace_range(prefix.len()..end, &format!("{kind} (withheld)"));
            }
        }
    }
    // serde's "unknown field `KEY`, expected ..." (a table that takes fixed keys: an
    // `acl`, a `rate_limit`) and toml's "duplicate key `KEY`": a key shown only when it
    // reads as a name, as for any unknown key.
    for prefix in ["unknown field `", "duplicate key `", "unknown variant `"] {
        if let Some(start) = message.find(prefix).map(|at| at + prefix.len()) {
            if let Some(len) = message.get(start..).and_then(|rest| rest.find('`')) {
                let key = message.get(start..start + len).unwrap_or_default();
                if !checks::reads_as_name(key) {
                    message.replace_range(start..start + len, "(not shown)");
                }
            }
        }
    }
    let Some(span) = e.span() else { return format!("invalid TOML: {message}") };
    let before = text.get(..span.start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("invalid TOML at line {line}, column {column}: {message}")
}

/// Logs at start-up what the config allows but probably does not mean (see
/// [`ConfigWarning`]), and each stored token that asks for notices no channel carries.
/// Names token uids only, never a secret or its hash.
pub fn log_warnings(config: &Config, now: i64) {
    for warning in config.warnings(now) {
        match &warning {
            ConfigWarning::NoticeWithoutChannel { token_uid, .. } | ConfigWarning::ExpiredToken { token_uid, .. } => {
                tracing::warn!(token.uid = %token_uid, "{warning}")
            }
            ConfigWarning::CleartextSmtpAuth { .. } => tracing::warn!("{warning}"),
        }
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

#[cfg(test)]
mod tests;

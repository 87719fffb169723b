//! The file as written: plain serde structs. Unknown keys are collected by
//! `serde_ignored` (so all of them are reported, with their TOML paths), and values
//! that need checking stay loose here (strings, i64) so `compile` can report every
//! problem at once instead of stopping at the first.

use crate::token::{RateLimit, ScopeEntry};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub ratelimit: RawRateLimit,
    #[serde(default)]
    pub notify: RawNotify,
    #[serde(default)]
    pub guard: RawGuard,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub console: super::console::RawConsole,
    #[serde(default)]
    pub organizations: Vec<RawOrganization>,
    #[serde(default)]
    pub users: Vec<RawUser>,
    #[serde(default)]
    pub stacks: Vec<RawStack>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub user_sessions: Option<String>,
    pub max_inspected_body: Option<String>,
    pub max_inspected_total: Option<String>,
    /// Extra host names an HTTP/1 absolute-form target may carry.
    #[serde(default)]
    pub hostnames: Vec<String>,
    pub max_header_bytes: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_request_body: Option<String>,
    pub shutdown_grace: Option<String>,
    pub cors: Option<super::cors::RawCors>,
    /// Proxies (CIDR blocks) whose `X-Forwarded-For` / `Forwarded` are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Which of the two those proxies write: `"x-forwarded-for"` or `"forwarded"`.
    pub forwarded_field: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawUpstream {
    pub url: String,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub forward_token: Option<bool>,
    /// PEM bundle of CAs to trust for an https upstream (default: the system's roots).
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawStore {
    pub path: Option<String>,
    /// `postgres://...` (shared by several replicas), instead of `path`.
    pub url: Option<String>,
    /// Name of an environment variable holding the URL (keeps a password out of the file).
    pub url_env: Option<String>,
    pub pool_size: Option<i64>,
    /// How often a shared store is re-read whole, as a backstop to change notifications.
    pub resync_interval: Option<String>,
    /// PEM CAs for PostgreSQL's certificate (as `sslrootcert=` in the URL).
    pub ca_file: Option<String>,
}

/// Where rate buckets live: this process (default) or Redis, shared by replicas.
#[derive(Debug, Default, Deserialize)]
pub struct RawRateLimit {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub fail_mode: Option<String>,
    pub replicas: Option<i64>,
    /// How long a request waits for Redis before the fail mode applies.
    pub timeout: Option<String>,
    /// Prefix of every Redis key (several deployments can share one Redis).
    pub key_prefix: Option<String>,
    /// A Redis Cluster: `url` (or `url_env`, comma-separated) or `urls` are seed nodes.
    pub cluster: Option<bool>,
    /// Seed nodes of a Redis Cluster (implies `cluster = true`).
    pub urls: Option<Vec<String>>,
    /// PEM CAs for a `rediss://` server's certificate (default: the system's roots).
    pub ca_file: Option<String>,
}

/// Credential-guessing protection.
#[derive(Debug, Default, Deserialize)]
pub struct RawGuard {
    pub max_failures: Option<i64>,
    pub window: Option<String>,
    pub cooldown: Option<String>,
}

/// Optional metrics and per-token usage bookkeeping.
#[derive(Debug, Default, Deserialize)]
pub struct RawTelemetry {
    /// Metrics labelled by token uid (off by default: one series per token).
    pub per_token_metrics: Option<bool>,
    /// How often tokens' `last_used_at` is written to the store.
    pub usage_flush: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawNotify {
    pub before: Option<String>,
    /// How often to look for tokens entering the warning window.
    pub interval: Option<String>,
    pub webhook: Option<String>,
    /// PEM CAs to trust for an https webhook (default: the system's roots).
    pub webhook_ca_file: Option<String>,
    pub smtp: Option<RawSmtp>,
}

#[derive(Debug, Deserialize)]
pub struct RawSmtp {
    pub relay: String,
    pub from: String,
    pub to: Option<Vec<String>>,
    /// Upgrade the relay connection with STARTTLS before anything else (required, not
    /// opportunistic: a relay that does not offer it gets nothing).
    pub starttls: Option<bool>,
    pub username: Option<String>,
    /// Name of the environment variable holding the password (keeps it out of the file).
    pub password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawOrganization {
    pub uid: String,
    pub read_per_second: Option<i64>,
    pub write_per_second: Option<i64>,
    pub burst: Option<i64>,
    pub bulk_per_second: Option<i64>,
    pub max_tokens_per_stack: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct RawUser {
    pub uid: String,
    pub email: Option<String>,
    pub authtoken_sha256: String,
}

#[derive(Debug, Deserialize)]
pub struct RawStack {
    pub api_key: String,
    pub organization: String,
    pub name: Option<String>,
    pub branches: Option<Vec<String>>,
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub members: BTreeMap<String, String>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
pub struct RawToken {
    pub uid: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub secret_sha256: String,
    pub scope: Vec<ScopeEntry>,
    #[serde(default, deserialize_with = "text_or_date")]
    pub expires_on: Option<String>,
    #[serde(default)]
    pub is_email_notification_enabled: bool,
    pub rate_limit: Option<RateLimit>,
}

/// `expires_on` as a string or as a TOML date or date-time (`expires_on = 2027-01-01`,
/// unquoted, is how TOML writes a date): either reads as the same text, which the
/// token's own rules then check.
fn text_or_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(text) => Ok(Some(text)),
        toml::Value::Datetime(date) => Ok(Some(date.to_string())),
        _ => Err(serde::de::Error::custom("expires_on must be a date such as \"2027-01-01\" or 2027-01-01")),
    }
}

/// Parses TOML text, returning the raw config and every ignored (unknown) key's path,
/// as the errors show it.
pub fn parse(text: &str) -> Result<(RawConfig, Vec<String>), toml::de::Error> {
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(text);
    let raw = serde_ignored::deserialize(de, |path| unknown.push(super::checks::ignored_key_path(&path)))?;
    Ok((raw, unknown))
}

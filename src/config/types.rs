//! The validated configuration: what the rest of the gateway reads. Built once by
//! [`super::compile`]; every value here has passed its check.

use crate::token::{BranchCatalog, TokenRecord};
use http::uri::{Authority, Scheme};
use http::Uri;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub admin_listen: SocketAddr,
    pub upstream: Upstream,
    pub store: Store,
    pub ratelimit: RateLimiting,
    pub notify: Notify,
    pub guard: Guard,
    pub telemetry: Telemetry,
    /// `[console]`: the token console on the admin listener.
    pub console: super::console::Console,
    pub organizations: Vec<Organization>,
    pub users: Vec<User>,
    pub stacks: Vec<Stack>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub user_sessions: UserSessions,
    pub max_inspected_body: u64,
    /// What all bodies being read for the rules may hold together (503 over it).
    pub max_inspected_total: u64,
    pub hostnames: Vec<String>,
    pub limits: Limits,
    /// `[server.cors]`; `None`: no CORS headers, preflights answered without them.
    pub cors: Option<super::cors::Cors>,
    /// Proxies whose forwarding fields name the client (empty: the socket's peer).
    pub trusted_proxies: Vec<super::trusted::Cidr>,
    /// The one field those proxies write the client's address into.
    pub forwarded_field: super::trusted::ForwardedField,
}

pub use crate::tls::TlsFiles;

/// Connection and request limits of the main listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_request_body: u64,
    pub shutdown_grace: Duration,
}

/// What to do with user-session (`authtoken`) and OAuth traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSessions {
    Pass,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without trailing `/` (usually empty).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How long a request on its way to the backend waits for the next part of the
    /// client's body: `[server] idle_timeout`.
    pub client_timeout: Duration,
    pub forward_token: bool,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    /// The embedded store's file (`None` with no `postgres`: in memory).
    pub path: Option<PathBuf>,
    /// A PostgreSQL store shared by several replicas, instead of `path`.
    pub postgres: Option<Postgres>,
}

/// A shared PostgreSQL token store.
#[derive(Clone, PartialEq, Eq)]
pub struct Postgres {
    /// The connection URL without `sslmode`/`sslrootcert` (they are `ssl_mode` and
    /// `ca_file`); may hold a password, so never printed (see `Debug`).
    pub url: Secret,
    pub pool_size: usize,
    pub resync_interval: Duration,
    /// libpq's `sslmode` (default `prefer`, as libpq).
    pub ssl_mode: super::pg_url::SslMode,
    /// CAs the server's certificate must chain to (`sslrootcert=` or `[store] ca_file`;
    /// read and checked at load).
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("pool_size", &self.pool_size)
            .field("ssl_mode", &self.ssl_mode)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// A value that must not reach logs (a URL with a password). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Where rate buckets live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimiting {
    /// Shared buckets in Redis; `None`: this process's own (governor) buckets.
    pub redis: Option<RedisLimits>,
}

impl RateLimiting {
    /// Each replica's share of a rate in its local buckets: `replicas` when they stand
    /// in for Redis (`fail_mode = "local"`), else 1 (the whole rate).
    pub fn local_share(&self) -> u32 {
        match &self.redis {
            Some(r) if r.fail_mode == FailMode::Local => r.replicas,
            _ => 1,
        }
    }
}

/// Redis-backed buckets.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisLimits {
    /// The server's URL, or with `cluster`, the seed nodes' (the rest are discovered).
    /// All `redis://` or all `rediss://`; may hold a password, so never printed.
    pub urls: Vec<Secret>,
    /// A Redis Cluster (slots routed by the client, failovers followed).
    pub cluster: bool,
    /// CAs a `rediss://` server's certificate must chain to (else the system's roots);
    /// read and checked at load.
    pub ca_file: Option<PathBuf>,
    pub fail_mode: FailMode,
    pub replicas: u32,
    pub timeout: Duration,
    pub key_prefix: String,
}

impl fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimits")
            .field("nodes", &self.urls.len())
            .field("cluster", &self.cluster)
            .field("ca_file", &self.ca_file)
            .field("fail_mode", &self.fail_mode)
            .field("replicas", &self.replicas)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// What a request gets while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Admitted, and counted.
    Open,
    /// Refused with 503.
    Closed,
    /// Charged to this replica's local buckets at `rate / replicas`.
    Local,
}

/// Failed authentications per client address before a cool-down (0 = off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub max_failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

/// `[telemetry]`: optional observability that costs something to turn on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    /// `stackgate_token_requests_total{token_uid, outcome}`: one series per token and
    /// outcome, so off by default to keep the metric count bounded by the config.
    pub per_token_metrics: bool,
    /// How often changed `last_used_at` times are written to the store: a bound on
    /// store writes (one per token per interval) and on how stale the stored time is.
    pub usage_flush: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub before: Duration,
    pub interval: Duration,
    /// An `http://` or `https://` URL.
    pub webhook: Option<Uri>,
    /// PEM CAs trusted for an https webhook instead of the system roots (a receiver
    /// with a private CA), as `upstream.ca_file` does for the backend.
    pub webhook_ca_file: Option<PathBuf>,
    pub smtp: Option<Smtp>,
}

impl Notify {
    /// Whether any channel would carry an expiry notice.
    pub fn has_channel(&self) -> bool {
        self.webhook.is_some() || self.smtp.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub from: String,
    pub to: Vec<String>,
    /// STARTTLS is required: without it the relay gets neither credentials nor mail.
    pub starttls: bool,
    pub auth: Option<SmtpAuth>,
}

/// SMTP AUTH credentials. The password comes from the environment at load and is
/// never printed: `Secret` redacts it from `Debug`, and errors name only the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpAuth {
    pub username: String,
    pub password: Secret,
}

/// Something the config allows but an operator probably did not mean. `stackgate
/// check` prints these and the gateway logs them at start-up; they never stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// A static token asks for expiry notices, but `[notify]` has no channel.
    NoticeWithoutChannel { path: String, token_uid: String },
    /// SMTP AUTH without STARTTLS to a relay off this host: the password would cross
    /// the network in clear.
    CleartextSmtpAuth { relay: String },
    /// A static token whose `expires_on` has passed: valid config (a token may expire
    /// while the gateway runs), but every request with it is refused.
    ExpiredToken { path: String, token_uid: String },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::NoticeWithoutChannel { path, token_uid } => write!(
                f,
                "{path}: token {token_uid} has is_email_notification_enabled = true, but [notify] has neither \
                 webhook nor smtp: no expiry notice will be sent"
            ),
            ConfigWarning::CleartextSmtpAuth { relay } => write!(
                f,
                "notify.smtp: AUTH without starttls = true sends the password in clear to {relay}, which is not \
                 on this host"
            ),
            ConfigWarning::ExpiredToken { path, token_uid } => write!(
                f,
                "{path}: token {token_uid} has expired (the date has passed): every request with it is refused \
                 (401, error_code 105)"
            ),
        }
    }
}

impl Config {
    /// The warnings of a validated config (see [`ConfigWarning`]) at `now` (Unix
    /// seconds).
    pub fn warnings(&self, now: i64) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        for (i, stack) in self.stacks.iter().enumerate() {
            for (j, t) in stack.tokens.iter().enumerate() {
                if t.expires_on.as_ref().is_some_and(|e| now >= e.at) {
                    out.push(ConfigWarning::ExpiredToken {
                        path: format!("stacks[{i}].tokens[{j}].expires_on"),
                        token_uid: t.uid.clone(),
                    });
                }
            }
        }
        if !self.notify.has_channel() {
            for (i, stack) in self.stacks.iter().enumerate() {
                for (j, t) in stack.tokens.iter().enumerate().filter(|(_, t)| t.is_email_notification_enabled) {
                    out.push(ConfigWarning::NoticeWithoutChannel {
                        path: format!("stacks[{i}].tokens[{j}].is_email_notification_enabled"),
                        token_uid: t.uid.clone(),
                    });
                }
            }
        }
        if let Some(s) = self.notify.smtp.as_ref().filter(|s| s.auth.is_some() && !s.starttls && !is_loopback(&s.host))
        {
            out.push(ConfigWarning::CleartextSmtpAuth { relay: format!("{}:{}", s.host, s.port) });
        }
        out
    }
}

/// `localhost` or a loopback address (brackets of an IPv6 literal allowed).
fn is_loopback(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub uid: String,
    pub read_per_second: u32,
    pub write_per_second: u32,
    pub burst: Option<u32>,
    pub bulk_per_second: u32,
    pub max_tokens_per_stack: u32,
}

#[derive(Debug, Clone)]
pub struct User {
    pub uid: String,
    pub email: String,
    pub authtoken_sha256: [u8; 32],
}

/// A member's role in a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    Developer,
    ContentManager,
}

impl Role {
    pub(super) fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "developer" => Some(Role::Developer),
            "content_manager" => Some(Role::ContentManager),
            _ => None,
        }
    }

    /// Owners and admins manage tokens.
    pub fn manages_tokens(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

#[derive(Debug, Clone)]
pub struct Stack {
    pub api_key: String,
    pub organization: String,
    pub name: String,
    pub branches: Vec<String>,
    /// alias -> target branch
    pub aliases: BTreeMap<String, String>,
    /// user uid -> role
    pub members: BTreeMap<String, Role>,
    pub tokens: Vec<TokenRecord>,
}

impl BranchCatalog for Stack {
    fn has_branch(&self, name: &str) -> bool {
        self.branches.iter().any(|b| b == name)
    }
    fn has_alias(&self, name: &str) -> bool {
        self.aliases.contains_key(name)
    }
}

//! Raw config -> validated [`Config`]. Collects every problem with its TOML path.

use super::raw::{RawConfig, RawOrganization, RawRateLimit, RawStack, RawStore, RawToken, RawUpstream, RawUser};
use super::units::{parse_duration, parse_size};
use crate::token::{compile_scope, parse_digest, parse_expiry, BranchCatalog, Origin, TokenRecord};
use http::uri::{Authority, Scheme};
use http::Uri;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// TOML path such as `stacks[0].tokens[1].scope`; empty for file-level problems.
    pub path: String,
    pub message: String,
}

/// All validation problems of one file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(path: &str, message: String) -> Self {
        ConfigErrors(vec![ConfigError { path: path.into(), message }])
    }

    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError { path: path.into(), message: message.into() });
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration error(s):", self.0.len())?;
        for e in &self.0 {
            if e.path.is_empty() {
                writeln!(f, "  - {}", e.message)?;
            } else {
                writeln!(f, "  - {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

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
    pub hostnames: Vec<String>,
    pub limits: Limits,
    /// `[server.cors]`; `None`: no CORS headers, preflights answered without them.
    pub cors: Option<super::cors::Cors>,
    /// Proxies whose forwarding fields name the client (empty: the socket's peer).
    pub trusted_proxies: Vec<super::trusted::Cidr>,
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
pub struct Secret(String);

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
        }
    }
}

impl Config {
    /// The warnings of a validated config (see [`ConfigWarning`]).
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
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
    fn parse(s: &str) -> Option<Role> {
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

/// Default organisation limits, as Contentstack's CMA.
const DEFAULT_RATE: u32 = 10;
const DEFAULT_BULK_RATE: u32 = 1;
const DEFAULT_MAX_TOKENS: u32 = 30;
/// Sanity bounds: anything above is almost certainly a typo.
const MAX_RATE: i64 = 1_000_000;
const MAX_BURST: i64 = 100_000;
const MAX_NAME: usize = 255;

/// Validates a raw config; `unknown` are the ignored key paths from the parser.
pub fn compile(raw: RawConfig, unknown: &[String]) -> Result<Config, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    for key in unknown {
        errs.push(toml_path(key), "unknown key");
    }
    let server = server(&raw, &mut errs);
    let admin_listen = socket(raw.admin.listen.as_deref().unwrap_or("127.0.0.1:9901"), "admin.listen", &mut errs);
    let upstream = match &raw.upstream {
        Some(u) => upstream(u, &mut errs),
        None => {
            errs.push("upstream", "missing table [upstream] (with url = \"http://...\")");
            None
        }
    };
    let notify = notify(&raw, &mut errs);
    let guard = guard(&raw.guard, &mut errs);
    let telemetry = telemetry(&raw.telemetry, &mut errs);
    let organizations = organizations(&raw.organizations, &mut errs);
    let users = users(&raw.users, &mut errs);
    let stacks = stacks(&raw.stacks, &organizations, &users, &mut errs);
    let store = store(&raw.store, &mut errs);
    let ratelimit = ratelimit(&raw.ratelimit, &mut errs);
    if let (Some(s), Some(u)) = (&server, &upstream) {
        if u.request_timeout >= s.limits.idle_timeout {
            errs.push(
                "server.idle_timeout",
                "must be longer than upstream.request_timeout (an idle connection would be cut mid-request)",
            );
        }
    }
    match (server, admin_listen, upstream, notify, guard, store, ratelimit, telemetry) {
        (
            Some(server),
            Some(admin_listen),
            Some(upstream),
            Some(notify),
            Some(guard),
            Some(store),
            Some(ratelimit),
            Some(telemetry),
        ) if errs.0.is_empty() => Ok(Config {
            server,
            admin_listen,
            upstream,
            store,
            ratelimit,
            notify,
            guard,
            telemetry,
            organizations,
            users,
            stacks,
        }),
        _ => Err(errs),
    }
}

/// `stacks.1.tokens.0.extra` (serde_ignored) -> `stacks[1].tokens[0].extra`.
fn toml_path(dotted: &str) -> String {
    let mut out = String::with_capacity(dotted.len() + 4);
    for part in dotted.split('.') {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn socket(text: &str, path: &str, errs: &mut ConfigErrors) -> Option<SocketAddr> {
    text.parse().map_err(|_| errs.push(path, format!("'{text}' is not an address such as \"127.0.0.1:8080\""))).ok()
}

fn server(raw: &RawConfig, errs: &mut ConfigErrors) -> Option<Server> {
    let s = &raw.server;
    let tls = s.tls.as_ref().map(|t| TlsFiles { cert: PathBuf::from(&t.cert), key: PathBuf::from(&t.key) });
    let listen = socket(s.listen.as_deref().unwrap_or("127.0.0.1:8080"), "server.listen", errs);
    let user_sessions = match s.user_sessions.as_deref().unwrap_or("pass") {
        "pass" => Some(UserSessions::Pass),
        "deny" => Some(UserSessions::Deny),
        other => {
            errs.push("server.user_sessions", format!("'{other}' must be \"pass\" or \"deny\""));
            None
        }
    };
    let max_inspected_body = positive_size(s.max_inspected_body.as_deref(), "1MiB", "server.max_inspected_body", errs);
    for (i, h) in s.hostnames.iter().enumerate() {
        if h.parse::<Authority>().is_err() {
            errs.push(format!("server.hostnames[{i}]"), format!("'{h}' is not a host[:port]"));
        }
    }
    let limits = limits(s, errs);
    let cors = match &s.cors {
        None => Some(None),
        Some(c) => super::cors::compile(c, errs).map(Some),
    };
    Some(Server {
        listen: listen?,
        tls,
        user_sessions: user_sessions?,
        max_inspected_body: max_inspected_body?,
        hostnames: s.hostnames.clone(),
        limits: limits?,
        cors: cors?,
        trusted_proxies: super::trusted::compile(&s.trusted_proxies, errs),
    })
}

/// A size above zero (`default` when absent); an error is recorded under `path`.
fn positive_size(v: Option<&str>, default: &str, path: &str, errs: &mut ConfigErrors) -> Option<u64> {
    parse_size(v.unwrap_or(default))
        .and_then(|n| if n == 0 { Err("must be greater than zero".to_owned()) } else { Ok(n) })
        .map_err(|e| errs.push(path, e))
        .ok()
}

/// An integer within `min..=max` (`default` when absent); an error is recorded under `path`.
fn bounded<T: TryFrom<i64>>(
    v: Option<i64>,
    default: T,
    min: i64,
    max: i64,
    path: String,
    errs: &mut ConfigErrors,
) -> Option<T> {
    match v {
        None => Some(default),
        Some(n) if (min..=max).contains(&n) => T::try_from(n).ok(),
        Some(n) => {
            errs.push(path, format!("{n} must be between {min} and {max}"));
            None
        }
    }
}

fn positive_duration(v: Option<&str>, default: &str, path: &str, errs: &mut ConfigErrors) -> Option<Duration> {
    parse_duration(v.unwrap_or(default))
        .and_then(|d| if d.is_zero() { Err("must be greater than zero".to_owned()) } else { Ok(d) })
        .map_err(|e| errs.push(path, e))
        .ok()
}

fn limits(s: &super::raw::RawServer, errs: &mut ConfigErrors) -> Option<Limits> {
    let header_bytes = parse_size(s.max_header_bytes.as_deref().unwrap_or("64KiB"))
        .and_then(|n| {
            if (8192..=(16 << 20)).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} must be between 8KiB and 16MiB"))
            }
        })
        .map_err(|e| errs.push("server.max_header_bytes", e))
        .ok();
    let body = positive_size(s.max_request_body.as_deref(), "1GiB", "server.max_request_body", errs);
    let max_connections = bounded(s.max_connections, 10_000usize, 1, 1_000_000, "server.max_connections".into(), errs);
    Some(Limits {
        max_header_bytes: usize::try_from(header_bytes?).ok()?,
        header_read_timeout: positive_duration(
            s.header_read_timeout.as_deref(),
            "10s",
            "server.header_read_timeout",
            errs,
        )?,
        idle_timeout: positive_duration(s.idle_timeout.as_deref(), "60s", "server.idle_timeout", errs)?,
        max_connections: max_connections?,
        max_request_body: body?,
        shutdown_grace: positive_duration(s.shutdown_grace.as_deref(), "30s", "server.shutdown_grace", errs)?,
    })
}

fn upstream(u: &RawUpstream, errs: &mut ConfigErrors) -> Option<Upstream> {
    let uri: Option<Uri> =
        u.url.parse().map_err(|_| errs.push("upstream.url", format!("'{}' is not a URL", u.url))).ok();
    let parts = uri.and_then(|uri| {
        let scheme = uri.scheme().cloned();
        let authority = uri.authority().cloned();
        match (scheme, authority) {
            (Some(s), Some(a)) if s == Scheme::HTTP || s == Scheme::HTTPS => {
                Some((s, a, uri.path().trim_end_matches('/').to_owned()))
            }
            _ => {
                errs.push("upstream.url", format!("'{}' must be an absolute http:// or https:// URL", u.url));
                None
            }
        }
    });
    if uri_has_query(&u.url) {
        errs.push("upstream.url", "must not have a query");
    }
    let connect_timeout = positive_duration(u.connect_timeout.as_deref(), "2s", "upstream.connect_timeout", errs);
    let request_timeout = positive_duration(u.request_timeout.as_deref(), "30s", "upstream.request_timeout", errs);
    let (scheme, authority, base_path) = parts?;
    Some(Upstream {
        scheme,
        authority,
        base_path,
        connect_timeout: connect_timeout?,
        request_timeout: request_timeout?,
        forward_token: u.forward_token.unwrap_or(false),
        ca_file: u.ca_file.as_ref().map(PathBuf::from),
    })
}

/// A URL given inline (`url`) or by the name of an environment variable (`url_env`).
fn url_setting(
    inline: Option<&String>,
    env: Option<&String>,
    section: &str,
    errs: &mut ConfigErrors,
) -> Option<Option<Secret>> {
    match (inline, env) {
        (None, None) => Some(None),
        (Some(_), Some(_)) => {
            errs.push(format!("{section}.url_env"), "give either url or url_env, not both");
            None
        }
        (Some(url), None) => Some(Some(Secret(url.clone()))),
        (None, Some(var)) => match std::env::var(var) {
            Ok(url) if !url.is_empty() => Some(Some(Secret(url))),
            _ => {
                errs.push(format!("{section}.url_env"), format!("environment variable {var} is not set"));
                None
            }
        },
    }
}

fn store(s: &RawStore, errs: &mut ConfigErrors) -> Option<Store> {
    let url = url_setting(s.url.as_ref(), s.url_env.as_ref(), "store", errs)?;
    let pool_size = bounded(s.pool_size, 8usize, 1, 1024, "store.pool_size".into(), errs);
    let resync = positive_duration(s.resync_interval.as_deref(), "5m", "store.resync_interval", errs);
    let postgres = match url {
        None => {
            if s.ca_file.is_some() {
                errs.push("store.ca_file", "only used with a PostgreSQL url");
            }
            None
        }
        Some(url) => {
            if s.path.is_some() {
                errs.push("store.url", "give either path (embedded) or url (PostgreSQL), not both");
            }
            let scheme_ok = url.0.starts_with("postgres://") || url.0.starts_with("postgresql://");
            let split = super::pg_url::split_url(&url.0);
            if !scheme_ok || split.url.parse::<tokio_postgres::Config>().is_err() {
                // The URL itself is not echoed: it may carry a password.
                errs.push("store.url", "must be a postgres://user@host/database URL");
            }
            let ssl_mode = match split.sslmode.as_deref().map(super::pg_url::SslMode::parse) {
                None => Some(super::pg_url::SslMode::default()),
                Some(Some(mode)) => Some(mode),
                Some(None) => {
                    errs.push("store.url", "sslmode must be disable, prefer, require, verify-ca or verify-full");
                    None
                }
            };
            let ca_file = match (split.sslrootcert, &s.ca_file) {
                (Some(_), Some(_)) => {
                    errs.push("store.ca_file", "give either ca_file or sslrootcert in the URL, not both");
                    None
                }
                (Some(path), None) => Some(PathBuf::from(path)),
                (None, Some(path)) => Some(PathBuf::from(path)),
                (None, None) => None,
            };
            if let Some(path) = &ca_file {
                if let Err(e) = crate::tls::read_roots(path) {
                    errs.push("store.ca_file", e);
                }
            }
            if ssl_mode == Some(super::pg_url::SslMode::Disable) && ca_file.is_some() {
                errs.push("store.ca_file", "a CA file with sslmode=disable: TLS is off, nothing would be checked");
            }
            Some(Postgres {
                url: Secret(split.url),
                pool_size: pool_size?,
                resync_interval: resync?,
                ssl_mode: ssl_mode?,
                ca_file,
            })
        }
    };
    Some(Store { path: s.path.as_ref().map(PathBuf::from), postgres })
}

fn ratelimit(r: &RawRateLimit, errs: &mut ConfigErrors) -> Option<RateLimiting> {
    let url = url_setting(r.url.as_ref(), r.url_env.as_ref(), "ratelimit", errs)?;
    let fail_mode = match r.fail_mode.as_deref().unwrap_or("local") {
        "open" => Some(FailMode::Open),
        "closed" => Some(FailMode::Closed),
        "local" => Some(FailMode::Local),
        other => {
            errs.push("ratelimit.fail_mode", format!("'{other}' must be \"open\", \"closed\" or \"local\""));
            None
        }
    };
    let replicas = bounded(r.replicas, 1u32, 1, 10_000, "ratelimit.replicas".into(), errs);
    let timeout = positive_duration(r.timeout.as_deref(), "100ms", "ratelimit.timeout", errs);
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "stackgate".to_owned());
    if key_prefix.is_empty() || !key_prefix.bytes().all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}') {
        errs.push("ratelimit.key_prefix", "must be printable ASCII without spaces or braces");
    }
    match r.backend.as_deref().unwrap_or("local") {
        "local" => {
            if url.is_some() || r.urls.is_some() {
                errs.push("ratelimit.url", "only used with backend = \"redis\"");
            }
            if r.cluster.is_some() || r.ca_file.is_some() {
                errs.push("ratelimit.backend", "cluster and ca_file are only used with backend = \"redis\"");
            }
            Some(RateLimiting { redis: None })
        }
        "redis" => {
            let (urls, cluster, ca_file) = redis_nodes(r, url, errs)?;
            Some(RateLimiting {
                redis: Some(RedisLimits {
                    urls,
                    cluster,
                    ca_file,
                    fail_mode: fail_mode?,
                    replicas: replicas?,
                    timeout: timeout?,
                    key_prefix,
                }),
            })
        }
        other => {
            errs.push("ratelimit.backend", format!("'{other}' must be \"local\" or \"redis\""));
            None
        }
    }
}

/// `[ratelimit]` with `backend = "redis"`: the node URLs, whether they are a cluster,
/// and the CA file. URLs are never echoed in errors (they may hold a password).
fn redis_nodes(
    r: &RawRateLimit,
    url: Option<Secret>,
    errs: &mut ConfigErrors,
) -> Option<(Vec<Secret>, bool, Option<PathBuf>)> {
    let cluster = match (r.cluster, &r.urls) {
        (Some(false), Some(_)) => {
            errs.push("ratelimit.urls", "several nodes are a cluster: drop cluster = false or give one url");
            return None;
        }
        (flag, urls) => flag.unwrap_or(false) || urls.is_some(),
    };
    let (key, urls): (&str, Vec<Secret>) = match (url, &r.urls) {
        (Some(_), Some(_)) => {
            errs.push("ratelimit.urls", "give either url (or url_env) or urls, not both");
            return None;
        }
        (None, None) => {
            errs.push("ratelimit.url", "backend = \"redis\" needs url (or url_env) = \"redis://host:6379\"");
            return None;
        }
        (None, Some(list)) => ("ratelimit.urls", list.iter().map(|u| Secret(u.trim().to_owned())).collect()),
        // A cluster's seeds may come comma-separated in one value (one Secret).
        (Some(one), None) if cluster => (
            "ratelimit.url",
            one.0.split(',').map(|u| Secret(u.trim().to_owned())).filter(|u| !u.0.is_empty()).collect(),
        ),
        (Some(one), None) => ("ratelimit.url", vec![one]),
    };
    if urls.is_empty() {
        errs.push(key, "a cluster needs at least one node URL");
        return None;
    }
    let mut tls = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        let at = if urls.len() > 1 { format!("{key}[{i}]") } else { key.to_owned() };
        match redis::Client::open(u.expose()).map(|c| c.get_connection_info().addr().clone()) {
            Ok(redis::ConnectionAddr::TcpTls { .. }) => tls.push(true),
            Ok(redis::ConnectionAddr::Tcp(..)) => tls.push(false),
            Ok(_) if cluster => errs.push(at, "cluster nodes are reached over TCP (redis:// or rediss://)"),
            Ok(_) => tls.push(false),
            Err(_) => errs.push(at, "must be a redis:// or rediss:// URL"),
        }
    }
    if tls.iter().any(|t| *t) && !tls.iter().all(|t| *t) {
        errs.push(key, "either every node is rediss:// (TLS) or none");
    }
    let ca_file = r.ca_file.as_ref().map(PathBuf::from);
    if let Some(path) = &ca_file {
        if !tls.iter().any(|t| *t) {
            errs.push("ratelimit.ca_file", "only used with rediss:// (TLS) URLs");
        } else if let Err(e) = crate::tls::client_config(Some(path)) {
            errs.push("ratelimit.ca_file", e.to_string());
        }
    }
    Some((urls, cluster, ca_file))
}

fn uri_has_query(url: &str) -> bool {
    url.contains('?') || url.contains('#')
}

fn notify(raw: &RawConfig, errs: &mut ConfigErrors) -> Option<Notify> {
    let n = &raw.notify;
    let before = parse_duration(n.before.as_deref().unwrap_or("7d")).map_err(|e| errs.push("notify.before", e)).ok();
    let interval = positive_duration(n.interval.as_deref(), "60s", "notify.interval", errs);
    let webhook = n.webhook.as_ref().and_then(|w| match w.parse::<Uri>() {
        Ok(uri) if is_http_or_https(uri.scheme()) && uri.authority().is_some() => Some(uri),
        _ => {
            errs.push("notify.webhook", format!("'{w}' must be an absolute http:// or https:// URL"));
            None
        }
    });
    // A CA file that nothing would use is a mistake (an http:// URL or no webhook).
    if n.webhook_ca_file.is_some() && !webhook.as_ref().is_some_and(|u| u.scheme() == Some(&Scheme::HTTPS)) {
        errs.push("notify.webhook_ca_file", "only used with an https:// webhook");
    }
    let smtp = n.smtp.as_ref().and_then(|s| smtp(s, errs));
    Some(Notify {
        before: before?,
        interval: interval?,
        webhook,
        webhook_ca_file: n.webhook_ca_file.as_ref().map(PathBuf::from),
        smtp,
    })
}

fn is_http_or_https(scheme: Option<&Scheme>) -> bool {
    scheme == Some(&Scheme::HTTP) || scheme == Some(&Scheme::HTTPS)
}

/// `username` and `password_env` come together; the password is read here, once, and
/// neither it nor anything derived from it is ever put in an error. `None`: a problem
/// was reported in `errs` (as every compile step here does); `Some(None)`: no AUTH.
fn smtp_auth(s: &super::raw::RawSmtp, errs: &mut ConfigErrors) -> Option<Option<SmtpAuth>> {
    match (&s.username, &s.password_env) {
        (None, None) => Some(None),
        (Some(_), None) => {
            errs.push(
                "notify.smtp.password_env",
                "required with username (the environment variable holding the password)",
            );
            None
        }
        (None, Some(_)) => {
            errs.push("notify.smtp.username", "required with password_env");
            None
        }
        (Some(username), Some(var)) => {
            let mut ok = true;
            if username.is_empty() {
                errs.push("notify.smtp.username", "must not be empty");
                ok = false;
            }
            let password = match std::env::var(var) {
                Ok(p) if !p.is_empty() => Some(Secret(p)),
                _ => {
                    errs.push("notify.smtp.password_env", format!("environment variable {var} is not set"));
                    None
                }
            };
            match (ok, password) {
                (true, Some(password)) => Some(Some(SmtpAuth { username: username.clone(), password })),
                _ => None,
            }
        }
    }
}

fn smtp(s: &super::raw::RawSmtp, errs: &mut ConfigErrors) -> Option<Smtp> {
    let relay = s.relay.rsplit_once(':').and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)));
    if relay.is_none() {
        errs.push("notify.smtp.relay", format!("'{}' must be host:port", s.relay));
    }
    let mut ok = relay.is_some();
    for (i, addr) in std::iter::once(&s.from).chain(s.to.iter().flatten()).enumerate() {
        if addr.parse::<lettre::message::Mailbox>().is_err() {
            let path = if i == 0 { "notify.smtp.from".to_owned() } else { format!("notify.smtp.to[{}]", i - 1) };
            errs.push(path, format!("'{addr}' is not an e-mail address"));
            ok = false;
        }
    }
    let auth = smtp_auth(s, errs);
    let (host, port) = relay?;
    let auth = auth?;
    ok.then(|| Smtp {
        host,
        port,
        from: s.from.clone(),
        to: s.to.clone().unwrap_or_default(),
        starttls: s.starttls.unwrap_or(false),
        auth,
    })
}

fn guard(g: &super::raw::RawGuard, errs: &mut ConfigErrors) -> Option<Guard> {
    let max_failures = bounded(g.max_failures, 50u32, 0, 1_000_000, "guard.max_failures".into(), errs);
    Some(Guard {
        max_failures: max_failures?,
        window: positive_duration(g.window.as_deref(), "60s", "guard.window", errs)?,
        cooldown: positive_duration(g.cooldown.as_deref(), "60s", "guard.cooldown", errs)?,
    })
}

fn telemetry(t: &super::raw::RawTelemetry, errs: &mut ConfigErrors) -> Option<Telemetry> {
    Some(Telemetry {
        per_token_metrics: t.per_token_metrics.unwrap_or(false),
        usage_flush: positive_duration(t.usage_flush.as_deref(), "60s", "telemetry.usage_flush", errs)?,
    })
}

fn rate(value: Option<i64>, default: u32, path: String, errs: &mut ConfigErrors) -> u32 {
    bounded(value, default, 1, MAX_RATE, path, errs).unwrap_or(default)
}

fn organizations(raw: &[RawOrganization], errs: &mut ConfigErrors) -> Vec<Organization> {
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, o)| {
            let p = |k: &str| format!("organizations[{i}].{k}");
            if !seen.insert(o.uid.as_str()) {
                errs.push(p("uid"), format!("duplicate organization uid '{}'", o.uid));
            }
            check_ident(&o.uid, &p("uid"), errs);
            // No default: an absent burst means "the rate" (decided per bucket).
            let burst = o.burst.and_then(|b| bounded(Some(b), 0u32, 1, MAX_BURST, p("burst"), errs));
            let max_tokens =
                bounded(o.max_tokens_per_stack, DEFAULT_MAX_TOKENS, 1, 10_000, p("max_tokens_per_stack"), errs)
                    .unwrap_or(DEFAULT_MAX_TOKENS);
            Organization {
                uid: o.uid.clone(),
                read_per_second: rate(o.read_per_second, DEFAULT_RATE, p("read_per_second"), errs),
                write_per_second: rate(o.write_per_second, DEFAULT_RATE, p("write_per_second"), errs),
                burst,
                bulk_per_second: rate(o.bulk_per_second, DEFAULT_BULK_RATE, p("bulk_per_second"), errs),
                max_tokens_per_stack: max_tokens,
            }
        })
        .collect()
}

/// Identifiers (uids, api keys, branch names) are short ASCII words.
fn check_ident(value: &str, path: &str, errs: &mut ConfigErrors) {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        errs.push(path, format!("'{value}' must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'"));
    }
}

fn users(raw: &[RawUser], errs: &mut ConfigErrors) -> Vec<User> {
    let mut uids = HashSet::new();
    let mut hashes = HashSet::new();
    raw.iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let p = |k: &str| format!("users[{i}].{k}");
            check_ident(&u.uid, &p("uid"), errs);
            if !uids.insert(u.uid.as_str()) {
                errs.push(p("uid"), format!("duplicate user uid '{}'", u.uid));
            }
            let Some(hash) = parse_digest(&u.authtoken_sha256) else {
                errs.push(p("authtoken_sha256"), "must be 64 hex characters (SHA-256 of the authtoken)");
                return None;
            };
            if !hashes.insert(hash) {
                errs.push(p("authtoken_sha256"), "the same authtoken is configured for another user");
            }
            Some(User { uid: u.uid.clone(), email: u.email.clone().unwrap_or_default(), authtoken_sha256: hash })
        })
        .collect()
}

fn stacks(raw: &[RawStack], orgs: &[Organization], users: &[User], errs: &mut ConfigErrors) -> Vec<Stack> {
    let orgs: HashMap<&str, &Organization> = orgs.iter().map(|o| (o.uid.as_str(), o)).collect();
    let mut api_keys = HashSet::new();
    let mut token_uids = HashSet::new();
    let mut secrets = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let p = |k: &str| format!("stacks[{i}].{k}");
        check_ident(&s.api_key, &p("api_key"), errs);
        if !api_keys.insert(s.api_key.as_str()) {
            errs.push(p("api_key"), format!("duplicate api_key '{}'", s.api_key));
        }
        let org = orgs.get(s.organization.as_str()).copied();
        if org.is_none() {
            errs.push(p("organization"), format!("unknown organization '{}'", s.organization));
        }
        let mut stack = Stack {
            api_key: s.api_key.clone(),
            organization: s.organization.clone(),
            name: s.name.clone().unwrap_or_default(),
            branches: s.branches.clone().unwrap_or_else(|| vec!["main".into()]),
            aliases: s.aliases.clone(),
            members: BTreeMap::new(),
            tokens: Vec::new(),
        };
        branches(&stack, i, errs);
        for (uid, role) in &s.members {
            if !users.iter().any(|u| &u.uid == uid) {
                errs.push(p(&format!("members.{uid}")), format!("unknown user '{uid}'"));
            }
            match Role::parse(role) {
                Some(r) => {
                    stack.members.insert(uid.clone(), r);
                }
                None => errs.push(
                    p(&format!("members.{uid}")),
                    format!("'{role}' must be owner, admin, developer or content_manager"),
                ),
            }
        }
        for (j, t) in s.tokens.iter().enumerate() {
            let tp = format!("stacks[{i}].tokens[{j}]");
            if !token_uids.insert(t.uid.as_str()) {
                errs.push(format!("{tp}.uid"), format!("duplicate token uid '{}'", t.uid));
            }
            if let Some(rec) = token(t, &stack, org, &tp, errs) {
                if !secrets.insert(rec.secret_sha256) {
                    errs.push(format!("{tp}.secret_sha256"), "the same secret is used by another token");
                }
                stack.tokens.push(rec);
            }
        }
        if let Some(org) = org {
            if s.tokens.len() > org.max_tokens_per_stack as usize {
                errs.push(
                    p("tokens"),
                    format!("{} tokens exceed max_tokens_per_stack = {}", s.tokens.len(), org.max_tokens_per_stack),
                );
            }
        }
        out.push(stack);
    }
    out
}

fn branches(stack: &Stack, i: usize, errs: &mut ConfigErrors) {
    let mut seen = HashSet::new();
    for (j, b) in stack.branches.iter().enumerate() {
        check_ident(b, &format!("stacks[{i}].branches[{j}]"), errs);
        if !seen.insert(b.as_str()) {
            errs.push(format!("stacks[{i}].branches[{j}]"), format!("duplicate branch '{b}'"));
        }
    }
    if !stack.has_branch("main") {
        errs.push(format!("stacks[{i}].branches"), "must include \"main\" (the default branch)");
    }
    for (alias, target) in &stack.aliases {
        let p = format!("stacks[{i}].aliases.{alias}");
        check_ident(alias, &p, errs);
        if stack.has_branch(alias) {
            errs.push(p.as_str(), format!("alias '{alias}' has the name of a branch"));
        }
        if !stack.has_branch(target) {
            errs.push(p.as_str(), format!("alias points at unknown branch '{target}'"));
        }
    }
}

fn token(
    t: &RawToken,
    stack: &Stack,
    org: Option<&Organization>,
    tp: &str,
    errs: &mut ConfigErrors,
) -> Option<TokenRecord> {
    check_ident(&t.uid, &format!("{tp}.uid"), errs);
    if t.name.trim().is_empty() || t.name.len() > MAX_NAME {
        errs.push(format!("{tp}.name"), format!("must be 1-{MAX_NAME} characters"));
    }
    if let Err(fields) = compile_scope(&t.scope, stack) {
        for (field, msgs) in fields {
            for m in msgs {
                errs.push(format!("{tp}.{field}"), m);
            }
        }
    }
    let expires_on = t
        .expires_on
        .as_deref()
        .and_then(|e| parse_expiry(e).map_err(|m| errs.push(format!("{tp}.expires_on"), m)).ok());
    if let (Some(rl), Some(org)) = (t.rate_limit, org) {
        check_token_rate(rl.read_per_second, org.read_per_second, &format!("{tp}.rate_limit.read_per_second"), errs);
        check_token_rate(rl.write_per_second, org.write_per_second, &format!("{tp}.rate_limit.write_per_second"), errs);
    }
    let Some(secret_sha256) = parse_digest(&t.secret_sha256) else {
        errs.push(format!("{tp}.secret_sha256"), "must be 64 hex characters (SHA-256 of the secret)");
        return None;
    };
    Some(TokenRecord {
        uid: t.uid.clone(),
        stack: stack.api_key.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        secret_sha256,
        scope: t.scope.clone(),
        expires_on,
        is_email_notification_enabled: t.is_email_notification_enabled,
        rate_limit: t.rate_limit,
        created_by: "config".into(),
        updated_by: "config".into(),
        created_at: String::new(),
        updated_at: String::new(),
        expiry_notified_at: None,
        enabled: true,
        previous_secret: None,
        origin: Origin::Config,
    })
}

fn check_token_rate(rate: u32, org_rate: u32, path: &str, errs: &mut ConfigErrors) {
    if rate == 0 || rate > org_rate {
        errs.push(path, format!("{rate} must be between 1 and the organization's {org_rate}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(extra: &str) -> Vec<String> {
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{extra}");
        match crate::config::from_str(&text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect(),
        }
    }

    #[test]
    fn telemetry_defaults_and_checks() {
        let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";
        let cfg = crate::config::from_str(base).unwrap();
        assert_eq!(cfg.telemetry, Telemetry { per_token_metrics: false, usage_flush: Duration::from_secs(60) });
        let on = format!("{base}[telemetry]\nper_token_metrics = true\nusage_flush = \"5s\"");
        let cfg = crate::config::from_str(&on).unwrap();
        assert_eq!(cfg.telemetry, Telemetry { per_token_metrics: true, usage_flush: Duration::from_secs(5) });
        let bad = errors("[telemetry]\nusage_flush = \"0s\"\nper_token = true");
        assert!(bad.iter().any(|e| e.starts_with("telemetry.usage_flush:")), "{bad:?}");
        assert!(bad.iter().any(|e| e == "telemetry.per_token: unknown key"), "{bad:?}");
    }

    #[test]
    fn scale_out_settings_are_validated() {
        let ok = "[store]\nurl = \"postgres://sg:pw@db/stackgate\"\n[ratelimit]\nbackend = \"redis\"\nurl = \"redis://r:6379\"\nfail_mode = \"closed\"\nreplicas = 3";
        let cfg = crate::config::from_str(&format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{ok}")).unwrap();
        let redis = cfg.ratelimit.redis.as_ref().unwrap();
        assert_eq!((redis.fail_mode, redis.replicas, cfg.ratelimit.local_share()), (FailMode::Closed, 3, 1));
        assert_eq!(cfg.store.postgres.as_ref().unwrap().pool_size, 8);
        // URLs may hold passwords: never in Debug output.
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("pw@") && !shown.contains("redis://r"), "{shown}");

        let bad = errors(
            "[store]\npath = \"x.db\"\nurl = \"mysql://db\"\n[ratelimit]\nbackend = \"redis\"\nfail_mode = \"maybe\"\nreplicas = 0",
        );
        assert!(bad.iter().any(|e| e.starts_with("store.url: give either path")), "{bad:?}");
        assert!(bad.iter().any(|e| e.starts_with("store.url: must be a postgres://")), "{bad:?}");
        assert!(bad.iter().any(|e| e.starts_with("ratelimit.fail_mode:")), "{bad:?}");
        assert!(bad.iter().any(|e| e.starts_with("ratelimit.replicas:")), "{bad:?}");
        assert!(bad.iter().any(|e| e.starts_with("ratelimit.url: backend = \"redis\" needs url")), "{bad:?}");
        assert!(!bad.iter().any(|e| e.contains("mysql://db")), "the URL is not echoed: {bad:?}");

        let bad = errors("[ratelimit]\nbackend = \"memcached\"\n[store]\nurl_env = \"STACKGATE_TEST_SURELY_UNSET\"");
        assert!(bad.iter().any(|e| e.starts_with("ratelimit.backend:")), "{bad:?}");
        assert!(bad.iter().any(|e| e.contains("STACKGATE_TEST_SURELY_UNSET is not set")), "{bad:?}");

        let local = "[ratelimit]\nbackend = \"redis\"\nurl = \"redis://r\"\nreplicas = 4";
        let cfg = crate::config::from_str(&format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{local}")).unwrap();
        assert_eq!(cfg.ratelimit.local_share(), 4, "fail_mode defaults to local");
    }

    /// Issue #22: sslmode/sslrootcert leave the URL for typed settings; cluster seeds
    /// from `urls` or a comma-separated `url`; every mistake reported, no URL echoed.
    #[test]
    fn tls_and_cluster_settings() {
        use crate::config::pg_url::SslMode;
        let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";
        let text = format!(
            "{base}[store]\nurl = \"postgres://sg:pw@db/x?sslmode=verify-full&application_name=a\"\n\
             [ratelimit]\nbackend = \"redis\"\ncluster = true\nurl = \"redis://:pw@a:1, redis://:pw@b:2\""
        );
        let cfg = crate::config::from_str(&text).unwrap();
        let pg = cfg.store.postgres.as_ref().unwrap();
        assert_eq!((pg.ssl_mode, pg.ca_file.as_ref()), (SslMode::VerifyFull, None));
        assert_eq!(pg.url.expose(), "postgres://sg:pw@db/x?application_name=a");
        let redis = cfg.ratelimit.redis.as_ref().unwrap();
        assert!(redis.cluster && redis.urls.len() == 2, "{redis:?}");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("pw"), "{shown}");

        let cfg = crate::config::from_str(&format!(
            "{base}[store]\nurl = \"postgres://db/x\"\n[ratelimit]\nbackend = \"redis\"\nurls = [\"redis://a:1\"]"
        ))
        .unwrap();
        assert_eq!(cfg.store.postgres.as_ref().unwrap().ssl_mode, SslMode::Prefer, "libpq's default");
        assert!(cfg.ratelimit.redis.as_ref().unwrap().cluster, "urls imply a cluster");

        let bad = errors(
            "[store]\nurl = \"postgres://u:pw@db/x?sslmode=allow\"\n[ratelimit]\nbackend = \"redis\"\n\
             cluster = false\nurls = [\"redis://:pw@a:1\"]",
        );
        assert!(bad.iter().any(|e| e.starts_with("store.url: sslmode must be")), "{bad:?}");
        assert!(bad.iter().any(|e| e.starts_with("ratelimit.urls: several nodes are a cluster")), "{bad:?}");
        let bad = errors(
            "[store]\nurl = \"postgres://db/x?sslrootcert=/nonexistent/ca.pem&sslmode=disable\"\n\
             [ratelimit]\nbackend = \"redis\"\nurls = [\"redis://:pw@a:1\", \"rediss://:pw@b:2\"]\nca_file = \"/nonexistent/r.pem\"",
        );
        assert!(bad.iter().any(|e| e.starts_with("store.ca_file: /nonexistent/ca.pem:")), "{bad:?}");
        assert!(bad.iter().any(|e| e.starts_with("store.ca_file: a CA file with sslmode=disable")), "{bad:?}");
        assert!(bad.iter().any(|e| e.starts_with("ratelimit.urls: either every node is rediss://")), "{bad:?}");
        assert!(bad.iter().any(|e| e.starts_with("ratelimit.ca_file: /nonexistent/r.pem")), "{bad:?}");
        assert!(!bad.iter().any(|e| e.contains("pw")), "no URL echoed: {bad:?}");
        let bad = errors("[ratelimit]\nbackend = \"redis\"\nurl = \"redis://a:1\"\nca_file = \"/x.pem\"");
        assert!(bad.iter().any(|e| e.starts_with("ratelimit.ca_file: only used with rediss://")), "{bad:?}");
    }

    fn notify_config(notify: &str) -> Result<Config, Vec<String>> {
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[notify]\n{notify}");
        crate::config::from_str(&text)
            .map_err(|e| e.0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect())
    }

    #[test]
    fn webhook_may_be_https_with_its_own_ca_file() {
        let cfg =
            notify_config("webhook = \"https://hooks.example.com/expiry\"\nwebhook_ca_file = \"ca.pem\"").unwrap();
        assert_eq!(
            cfg.notify.webhook.as_ref().map(|u| u.to_string()).as_deref(),
            Some("https://hooks.example.com/expiry")
        );
        assert_eq!(cfg.notify.webhook_ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert!(notify_config("webhook = \"http://127.0.0.1:9100/h\"").is_ok());
        let bad = notify_config("webhook = \"ftp://h/x\"").unwrap_err();
        assert!(
            bad.iter().any(|e| e.starts_with("notify.webhook: 'ftp://h/x' must be an absolute http:// or https://")),
            "{bad:?}"
        );
        let bad = notify_config("webhook = \"http://h/x\"\nwebhook_ca_file = \"ca.pem\"").unwrap_err();
        assert_eq!(bad, ["notify.webhook_ca_file: only used with an https:// webhook"]);
        let bad = notify_config("webhook_ca_file = \"ca.pem\"").unwrap_err();
        assert_eq!(bad, ["notify.webhook_ca_file: only used with an https:// webhook"]);
    }

    #[test]
    fn smtp_starttls_and_auth_are_validated_and_the_password_never_shown() {
        // A variable only this test sets (each test binary is its own process).
        let var = "STACKGATE_TEST_COMPILE_SMTP_PASSWORD";
        std::env::set_var(var, "pa55-w0rd-value");
        let smtp =
            |extra: &str| format!("smtp = {{ relay = \"mail.example.com:587\", from = \"sg@example.com\"{extra} }}");
        let cfg = notify_config(&smtp(&format!(", starttls = true, username = \"mailer\", password_env = \"{var}\"")))
            .unwrap();
        let s = cfg.notify.smtp.as_ref().unwrap();
        assert!(s.starttls);
        let auth = s.auth.as_ref().unwrap();
        assert_eq!((auth.username.as_str(), auth.password.expose()), ("mailer", "pa55-w0rd-value"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("pa55-w0rd-value") && shown.contains("mailer"), "{shown}");
        assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());

        let plain = notify_config(&smtp("")).unwrap();
        let s = plain.notify.smtp.as_ref().unwrap();
        assert!(!s.starttls && s.auth.is_none(), "starttls defaults to false, no AUTH");

        let bad = notify_config(&smtp(", username = \"mailer\"")).unwrap_err();
        assert_eq!(
            bad,
            ["notify.smtp.password_env: required with username (the environment variable holding the password)"]
        );
        let bad = notify_config(&smtp(&format!(", password_env = \"{var}\""))).unwrap_err();
        assert_eq!(bad, ["notify.smtp.username: required with password_env"]);
        let bad = notify_config(&smtp(", username = \"mailer\", password_env = \"STACKGATE_TEST_SURELY_UNSET\""))
            .unwrap_err();
        assert_eq!(bad, ["notify.smtp.password_env: environment variable STACKGATE_TEST_SURELY_UNSET is not set"]);
        let bad = notify_config(&smtp(&format!(", username = \"\", password_env = \"{var}\", starttls = \"yes\"")))
            .unwrap_err();
        assert!(bad.iter().all(|e| !e.contains("pa55-w0rd-value")), "{bad:?}");
        let bad = notify_config(&smtp(&format!(", username = \"\", password_env = \"{var}\""))).unwrap_err();
        assert_eq!(bad, ["notify.smtp.username: must not be empty"]);

        // AUTH in clear: allowed, but a warning unless the relay is on this host.
        let cleartext = notify_config(&smtp(&format!(", username = \"mailer\", password_env = \"{var}\""))).unwrap();
        let warnings: Vec<String> = cleartext.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("mail.example.com:587") && !warnings[0].contains("pa55"), "{warnings:?}");
        let local = format!("smtp = {{ relay = \"127.0.0.1:2525\", from = \"sg@example.com\", username = \"m\", password_env = \"{var}\" }}");
        assert!(notify_config(&local).unwrap().warnings().is_empty());
    }

    #[test]
    fn notices_without_a_channel_are_a_warning_not_an_error() {
        let token = "[[organizations]]\nuid = \"o\"\n[[stacks]]\napi_key = \"k\"\norganization = \"o\"\n[[stacks.tokens]]\nuid = \"blt00000000000000n1\"\nname = \"n\"\nsecret_sha256 = \"48c9f795c89445276749b08e0e69d3e177a9e1d408cbfb968aab1272f246af24\"\nis_email_notification_enabled = true\nscope = [{ module = \"branch\", branches = [\"main\"], acl = { read = true } }]\n";
        let cfg = crate::config::from_str(&format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{token}")).unwrap();
        let warnings: Vec<String> = cfg.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            ["stacks[0].tokens[0].is_email_notification_enabled: token blt00000000000000n1 has is_email_notification_enabled = true, but [notify] has neither webhook nor smtp: no expiry notice will be sent"]
        );
        assert!(!warnings[0].contains("48c9f7"), "never the secret's hash");
        let with_hook =
            format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[notify]\nwebhook = \"http://127.0.0.1:9/h\"\n{token}");
        assert!(crate::config::from_str(&with_hook).unwrap().warnings().is_empty());
    }
}

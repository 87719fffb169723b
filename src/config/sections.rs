//! One compile function per section of the file but the tenants (`[server]`,
//! `[upstream]`, `[store]`, `[ratelimit]`, `[notify]`, `[guard]`, `[telemetry]`).

use super::checks::*;
use super::errors::ConfigErrors;
use super::raw::{RawConfig, RawRateLimit, RawStore, RawUpstream};
use super::types::*;
use super::units::{parse_size, setting_duration};
use super::Env;
use http::uri::{Authority, Scheme};
use http::Uri;
use std::path::PathBuf;

pub(super) fn server(raw: &RawConfig, errs: &mut ConfigErrors) -> Option<Server> {
    let s = &raw.server;
    let tls = s.tls.as_ref().map(|t| TlsFiles { cert: PathBuf::from(&t.cert), key: PathBuf::from(&t.key) });
    // Loaded here too, so that `check` and a reload report a bad certificate or key (or a
    // pair that does not match) instead of the start or the reload failing on it.
    if let Some(Err(e)) = tls.as_ref().map(crate::tls::server_config) {
        errs.push("server.tls", e.to_string());
    }
    let listen = socket(s.listen.as_deref().unwrap_or("127.0.0.1:8080"), "server.listen", errs);
    let user_sessions = match s.user_sessions.as_deref().unwrap_or("pass") {
        "pass" => Some(UserSessions::Pass),
        "deny" => Some(UserSessions::Deny),
        _ => {
            errs.push("server.user_sessions", "must be \"pass\" or \"deny\" (the value is not shown)");
            None
        }
    };
    let max_inspected_body = positive_size(s.max_inspected_body.as_deref(), "1MiB", "server.max_inspected_body", errs);
    let max_inspected_total =
        positive_size(s.max_inspected_total.as_deref(), "64MiB", "server.max_inspected_total", errs);
    // One body at its limit must fit in the total, or no such body could ever be read.
    let max_inspected_total = match (max_inspected_body, max_inspected_total) {
        (Some(one), Some(total)) if total < one => {
            errs.push("server.max_inspected_total", format!("{total} bytes is less than max_inspected_body ({one})"));
            None
        }
        (_, total) => total,
    };
    for (i, h) in s.hostnames.iter().enumerate() {
        // `http` takes user info in an authority; a Host field never carries it.
        if h.parse::<Authority>().is_err() || !host_and_port(h) {
            errs.push(format!("server.hostnames[{i}]"), "not a host[:port] (the value is not shown)");
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
        max_inspected_total: max_inspected_total?,
        hostnames: s.hostnames.clone(),
        limits: limits?,
        cors: cors?,
        trusted_proxies: super::trusted::compile(&s.trusted_proxies, errs),
        forwarded_field: super::trusted::field(s.forwarded_field.as_deref(), errs)?,
    })
}

pub(super) fn limits(s: &super::raw::RawServer, errs: &mut ConfigErrors) -> Option<Limits> {
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

pub(super) fn upstream(u: &RawUpstream, errs: &mut ConfigErrors) -> Option<Upstream> {
    // The URL is never repeated: it may hold a password or a key (the errors say what
    // is wrong with it).
    let uri: Option<Uri> =
        u.url.parse().map_err(|_| errs.push("upstream.url", "not a URL (the value is not shown)")).ok();
    let parts = uri.and_then(|uri| {
        let scheme = uri.scheme().cloned();
        let authority = uri.authority().cloned();
        let path = uri.path().trim_end_matches('/');
        match (scheme, authority) {
            // Credentials in the URL would not be sent (the backend is not asked to
            // authenticate the gateway): refused rather than silently dropped.
            (Some(_), Some(a)) if a.as_str().contains('@') => {
                errs.push("upstream.url", "must not hold user info (user:password@): it would not be sent");
                None
            }
            // The base path is prefixed to every forwarded path as it is: a dot or empty
            // segment would reach the backend literally (`/a/../b/v3/...`).
            _ if path.split('/').skip(1).any(|seg| seg.is_empty() || seg == "." || seg == "..") => {
                errs.push(
                    "upstream.url",
                    "its path must not hold empty, `.` or `..` segments (the value is not shown)",
                );
                None
            }
            // `http` reads a port it cannot parse (`:4901099`) as none, and the default
            // port would be dialled instead (the forty-sixth outside probe: port 80).
            (Some(_), Some(a)) if !is_host_and_port(&a) => {
                errs.push(
                    "upstream.url",
                    "its host or port is not one a connection can be made to (the port must be 1 to 65535)",
                );
                None
            }
            (Some(s), Some(a)) if s == Scheme::HTTP || s == Scheme::HTTPS => Some((s, a, path.to_owned())),
            _ => {
                errs.push("upstream.url", "must be an absolute http:// or https:// URL (the value is not shown)");
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
    // As `notify.webhook_ca_file`: a CA file beside a plain http:// backend checks nothing.
    match &u.ca_file {
        Some(_) if scheme != Scheme::HTTPS => errs.push("upstream.ca_file", "only used with an https:// upstream url"),
        // Read here too, so that `check` and a reload report a file that holds no CA.
        Some(path) => {
            if let Err(e) = crate::tls::read_roots(std::path::Path::new(path)) {
                errs.push("upstream.ca_file", e);
            }
        }
        None => {}
    }
    Some(Upstream {
        scheme,
        authority,
        base_path,
        connect_timeout: connect_timeout?,
        request_timeout: request_timeout?,
        // `[server] idle_timeout`, set once both sections are read (compile.rs).
        client_timeout: std::time::Duration::from_secs(60),
        forward_token: u.forward_token.unwrap_or(false),
        ca_file: u.ca_file.as_ref().map(PathBuf::from),
    })
}

pub(super) fn store(s: &RawStore, env: Env<'_>, errs: &mut ConfigErrors) -> Option<Store> {
    let url = url_setting(s.url.as_ref(), s.url_env.as_ref(), "store", env, errs)?;
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

pub(super) fn ratelimit(r: &RawRateLimit, env: Env<'_>, errs: &mut ConfigErrors) -> Option<RateLimiting> {
    let url = url_setting(r.url.as_ref(), r.url_env.as_ref(), "ratelimit", env, errs)?;
    let fail_mode = match r.fail_mode.as_deref().unwrap_or("local") {
        "open" => Some(FailMode::Open),
        "closed" => Some(FailMode::Closed),
        "local" => Some(FailMode::Local),
        _ => {
            errs.push("ratelimit.fail_mode", "must be \"open\", \"closed\" or \"local\" (the value is not shown)");
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
        _ => {
            errs.push("ratelimit.backend", "must be \"local\" or \"redis\" (the value is not shown)");
            None
        }
    }
}

/// `[ratelimit]` with `backend = "redis"`: the node URLs, whether they are a cluster,
/// and the CA file. URLs are never echoed in errors (they may hold a password).
pub(super) fn redis_nodes(
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

/// Whether an authority names something to connect to (see `checks::host_and_port`).
fn is_host_and_port(authority: &http::uri::Authority) -> bool {
    host_and_port(authority.as_str())
}

pub(super) fn notify(raw: &RawConfig, env: Env<'_>, errs: &mut ConfigErrors) -> Option<Notify> {
    let n = &raw.notify;
    let before = setting_duration(n.before.as_deref().unwrap_or("7d")).map_err(|e| errs.push("notify.before", e)).ok();
    let interval = positive_duration(n.interval.as_deref(), "60s", "notify.interval", errs);
    // A webhook URL is often a secret itself (a Slack or Teams one carries its key in the
    // path): it is never echoed. User info would not be sent (the notifier sends no
    // `Authorization`), so it is refused rather than silently dropped.
    let webhook = n.webhook.as_ref().and_then(|w| match w.parse::<Uri>() {
        Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            errs.push("notify.webhook", "must not hold user info (user:password@): it would not be sent");
            None
        }
        Ok(uri) if is_http_or_https(uri.scheme()) && uri.authority().is_some_and(is_host_and_port) => Some(uri),
        _ => {
            errs.push("notify.webhook", "must be an absolute http:// or https:// URL (the URL is not shown)");
            None
        }
    });
    // A CA file that nothing would use is a mistake (an http:// URL or no webhook).
    if n.webhook_ca_file.is_some() && !webhook.as_ref().is_some_and(|u| u.scheme() == Some(&Scheme::HTTPS)) {
        errs.push("notify.webhook_ca_file", "only used with an https:// webhook");
    }
    let smtp = n.smtp.as_ref().and_then(|s| smtp(s, env, errs));
    Some(Notify {
        before: before?,
        interval: interval?,
        webhook,
        webhook_ca_file: n.webhook_ca_file.as_ref().map(PathBuf::from),
        smtp,
    })
}

/// `username` and `password_env` come together; the password is read here, once, and
/// neither it nor anything derived from it is ever put in an error. `None`: a problem
/// was reported in `errs` (as every compile step here does); `Some(None)`: no AUTH.
pub(super) fn smtp_auth(s: &super::raw::RawSmtp, env: Env<'_>, errs: &mut ConfigErrors) -> Option<Option<SmtpAuth>> {
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
            let password = match env(var).ok_or(()) {
                Ok(p) if !p.is_empty() => Some(Secret(p)),
                _ => {
                    errs.push("notify.smtp.password_env", format!("environment variable {} is not set", env_name(var)));
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

pub(super) fn smtp(s: &super::raw::RawSmtp, env: Env<'_>, errs: &mut ConfigErrors) -> Option<Smtp> {
    // A host (no user info: a relay's credentials go in `username` and `password_env`)
    // and a port.
    let relay = s
        .relay
        .rsplit_once(':')
        .filter(|_| host_and_port(&s.relay))
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)));
    if relay.is_none() {
        errs.push("notify.smtp.relay", "must be host:port (the value is not shown)");
    }
    let mut ok = relay.is_some();
    for (i, addr) in std::iter::once(&s.from).chain(s.to.iter().flatten()).enumerate() {
        if addr.parse::<lettre::message::Mailbox>().is_err() {
            let path = if i == 0 { "notify.smtp.from".to_owned() } else { format!("notify.smtp.to[{}]", i - 1) };
            errs.push(path, "not an e-mail address (the value is not shown)");
            ok = false;
        }
    }
    let auth = smtp_auth(s, env, errs);
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

pub(super) fn guard(g: &super::raw::RawGuard, errs: &mut ConfigErrors) -> Option<Guard> {
    let max_failures = bounded(g.max_failures, 50u32, 0, 1_000_000, "guard.max_failures".into(), errs);
    Some(Guard {
        max_failures: max_failures?,
        window: positive_duration(g.window.as_deref(), "60s", "guard.window", errs)?,
        cooldown: positive_duration(g.cooldown.as_deref(), "60s", "guard.cooldown", errs)?,
    })
}

pub(super) fn telemetry(t: &super::raw::RawTelemetry, errs: &mut ConfigErrors) -> Option<Telemetry> {
    Some(Telemetry {
        per_token_metrics: t.per_token_metrics.unwrap_or(false),
        usage_flush: positive_duration(t.usage_flush.as_deref(), "60s", "telemetry.usage_flush", errs)?,
    })
}

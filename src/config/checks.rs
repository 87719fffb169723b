//! The checks every section shares: sizes, durations, bounded numbers, socket
//! addresses, identifiers, URLs given inline or by environment variable.

use super::errors::ConfigErrors;
use super::types::Secret;
use super::units::{parse_size, setting_duration};
use super::Env;
use http::uri::Scheme;
use std::net::SocketAddr;
use std::time::Duration;

/// Default organisation limits, as Contentstack's CMA.
pub(super) const DEFAULT_RATE: u32 = 10;

pub(super) const DEFAULT_BULK_RATE: u32 = 1;

pub(super) const DEFAULT_MAX_TOKENS: u32 = 30;

/// Sanity bounds: anything above is almost certainly a typo.
pub(super) const MAX_RATE: i64 = 1_000_000;

pub(super) const MAX_BURST: i64 = 100_000;

pub(super) const MAX_NAME: usize = 255;

/// Whether an unknown key may be shown as written: at most 40 of letters, digits,
/// `_` and `-`, no more than 4 of them digits (see [`ignored_key_path`]).
pub(super) fn reads_as_name(key: &str) -> bool {
    let digits = key.bytes().filter(u8::is_ascii_digit).count();
    (1..=40).contains(&key.len())
        && digits <= 4
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An environment variable's name as an error shows it: as written when it reads as
/// one (1-64 of `A-Z`, `a-z`, `0-9`, `_`), else withheld: a value pasted where its
/// name belongs (`url_env = "postgres://u:pw@db"`) would be repeated.
pub(super) fn env_name(var: &str) -> &str {
    let name = (1..=64).contains(&var.len()) && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if name {
        var
    } else {
        "(a name not shown: it does not read as one)"
    }
}

/// A key of the user's own (a member's uid, an alias) as an error's path shows it: as
/// written when it reads as a name ([`reads_as_name`]), else `(a key not shown)`, for
/// the reason [`ignored_key_path`] gives.
pub(super) fn shown_key(key: &str) -> &str {
    if reads_as_name(key) {
        key
    } else {
        "(a key not shown)"
    }
}

/// An ignored key's place as the errors name it (`stacks[1].tokens[0].extra`), from
/// serde_ignored's path. A key is shown only when it reads as a name: at most 40 of
/// letters, digits, `_` and `-`, no more than 4 of them digits (every key the config
/// knows is one); any other is `(a key not shown)`, since an unknown key may be a value
/// pasted in the wrong place (a webhook URL with its key, a secret), and this path
/// reaches `/reload`'s answer and the log. An index is shown up to 6 digits.
pub(super) fn ignored_key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => {
            let shown = if *index < 1_000_000 { index.to_string() } else { "(an index not shown)".into() };
            format!("{}[{shown}]", ignored_key_path(parent))
        }
        Path::Map { parent, key } => {
            let parent = ignored_key_path(parent);
            let key = if reads_as_name(key) { key.as_str() } else { "(a key not shown)" };
            if parent.is_empty() {
                key.to_owned()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            ignored_key_path(parent)
        }
    }
}

/// Whether an authority (`host[:port]`, an IPv6 host bracketed) names something a
/// connection can be made to: a host, and a port of 1 to 65535 if one is stated (empty
/// means the default). `http` parses `127.0.0.1:s3cr3t`, `[s3cr3t]`, `u:pw@h`,
/// `h:99999` and `[::1]8080` as authorities, and reads a port it cannot parse as none,
/// so a client built on it dials the default port instead (the forty-sixth outside
/// probe: an upstream on `:4901099` was sent port 80's way).
pub(crate) fn host_and_port(text: &str) -> bool {
    let (host_ok, port) = match text.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        // After the brackets: nothing, or `:` and the port.
        Some((v6, after)) => {
            let port = after.strip_prefix(':');
            (v6.parse::<std::net::Ipv6Addr>().is_ok() && (after.is_empty() || port.is_some()), port)
        }
        None if text.starts_with('[') => (false, None),
        None => match text.rsplit_once(':') {
            Some((host, port)) => (!host.is_empty() && !host.contains([']', ':', '@']), Some(port)),
            None => (!text.is_empty() && !text.contains([']', '@']), None),
        },
    };
    let port_ok =
        |p: &str| p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n != 0));
    host_ok && port.is_none_or(port_ok)
}

pub(super) fn socket(text: &str, path: &str, errs: &mut ConfigErrors) -> Option<SocketAddr> {
    text.parse().map_err(|_| errs.push(path, "not an address such as \"127.0.0.1:8080\" (the value is not shown)")).ok()
}

/// A size above zero (`default` when absent); an error is recorded under `path`.
pub(super) fn positive_size(v: Option<&str>, default: &str, path: &str, errs: &mut ConfigErrors) -> Option<u64> {
    parse_size(v.unwrap_or(default))
        .and_then(|n| if n == 0 { Err("must be greater than zero".to_owned()) } else { Ok(n) })
        .map_err(|e| errs.push(path, e))
        .ok()
}

/// An integer within `min..=max` (`default` when absent); an error is recorded under `path`.
pub(super) fn bounded<T: TryFrom<i64>>(
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

pub(super) fn positive_duration(
    v: Option<&str>,
    default: &str,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Duration> {
    setting_duration(v.unwrap_or(default))
        .and_then(|d| if d.is_zero() { Err("must be greater than zero".to_owned()) } else { Ok(d) })
        .map_err(|e| errs.push(path, e))
        .ok()
}

/// A URL given inline (`url`) or by the name of an environment variable (`url_env`).
pub(super) fn url_setting(
    inline: Option<&String>,
    var: Option<&String>,
    section: &str,
    env: Env<'_>,
    errs: &mut ConfigErrors,
) -> Option<Option<Secret>> {
    match (inline, var) {
        (None, None) => Some(None),
        (Some(_), Some(_)) => {
            errs.push(format!("{section}.url_env"), "give either url or url_env, not both");
            None
        }
        (Some(url), None) => Some(Some(Secret(url.clone()))),
        (None, Some(var)) => match env(var) {
            Some(url) if !url.is_empty() => Some(Some(Secret(url))),
            _ => {
                errs.push(format!("{section}.url_env"), format!("environment variable {} is not set", env_name(var)));
                None
            }
        },
    }
}

pub(super) fn uri_has_query(url: &str) -> bool {
    url.contains('?') || url.contains('#')
}

pub(super) fn is_http_or_https(scheme: Option<&Scheme>) -> bool {
    scheme == Some(&Scheme::HTTP) || scheme == Some(&Scheme::HTTPS)
}

pub(super) fn rate(value: Option<i64>, default: u32, path: String, errs: &mut ConfigErrors) -> u32 {
    bounded(value, default, 1, MAX_RATE, path, errs).unwrap_or(default)
}

/// Identifiers (uids, api keys, branch names) are short ASCII words.
pub(super) fn check_ident(value: &str, path: &str, errs: &mut ConfigErrors) {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        errs.push(path, "must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-' (the value is not shown)");
    }
}

pub(super) fn check_token_rate(rate: u32, org_rate: u32, path: &str, errs: &mut ConfigErrors) {
    if rate == 0 || rate > org_rate {
        errs.push(path, format!("{rate} must be between 1 and the organization's {org_rate}"));
    }
}

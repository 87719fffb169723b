//! `[console]`: the token console on the admin listener (see `crate::console`). It is
//! on by default because the admin listener is loopback by default; on any other
//! address it carries users' authtokens over plain HTTP (the admin listener has no
//! TLS), so that takes an explicit opt-in and is refused at load otherwise.

use super::errors::ConfigErrors;
use serde::Deserialize;
use std::net::SocketAddr;

/// The section as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawConsole {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub allow_plain_http_on_public_address: Option<bool>,
}

/// The validated section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// Whether the admin listener serves the console at all.
    pub enabled: bool,
    /// Where it is served: `/` followed by plain segments, no trailing `/` (`/console`).
    pub path: String,
    /// The operator accepts plain HTTP on a non-loopback admin address (e.g. behind a
    /// TLS-terminating proxy on the same host).
    pub allow_plain_http_on_public_address: bool,
}

/// Admin endpoints the console path may not shadow.
const RESERVED: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/reload"];

pub(super) fn compile(raw: &RawConsole, admin_listen: Option<SocketAddr>, errs: &mut ConfigErrors) -> Option<Console> {
    let enabled = raw.enabled.unwrap_or(true);
    let allow_plain = raw.allow_plain_http_on_public_address.unwrap_or(false);
    let path = raw.path.clone().unwrap_or_else(|| "/console".to_owned());
    let mut ok = true;
    let plain_segments = path.strip_prefix('/').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .split('/')
                .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    });
    if !plain_segments {
        errs.push(
            "console.path",
            "must be '/' followed by segments of A-Z a-z 0-9 - _, without a trailing '/' (e.g. \"/console\"; the value is not shown)",
        );
        ok = false;
    } else if let Some(r) = RESERVED.iter().find(|r| path == **r || path.starts_with(&format!("{r}/"))) {
        errs.push("console.path", format!("would shadow the admin endpoint {r}"));
        ok = false;
    }
    if let Some(addr) = admin_listen {
        if enabled && !allow_plain && !addr.ip().is_loopback() {
            errs.push(
                "console.enabled",
                format!(
                    "the console would carry users' authtokens over plain HTTP on {addr} (admin.listen is not a \
                     loopback address and the admin listener has no TLS): bind admin.listen to loopback, set \
                     [console] enabled = false, or set [console] allow_plain_http_on_public_address = true \
                     if a TLS-terminating proxy on this host is the only way in"
                ),
            );
            ok = false;
        }
    }
    ok.then_some(Console { enabled, path, allow_plain_http_on_public_address: allow_plain })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<Console, Vec<String>> {
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{extra}");
        crate::config::from_str(&text)
            .map(|c| c.console)
            .map_err(|e| e.0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect())
    }

    #[test]
    fn on_at_console_by_default_on_loopback() {
        let c = load("").unwrap();
        assert_eq!(c, Console { enabled: true, path: "/console".into(), allow_plain_http_on_public_address: false });
        let c = load("[console]\npath = \"/ops/tokens\"").unwrap();
        assert_eq!(c.path, "/ops/tokens");
        assert!(!load("[console]\nenabled = false").unwrap().enabled);
    }

    #[test]
    fn paths_are_plain_and_shadow_nothing() {
        for bad in ["console", "/", "/console/", "/a//b", "/con sole", "/a/../b", "/metrics", "/healthz/x", "/%2e"] {
            let errors = load(&format!("[console]\npath = \"{bad}\"")).unwrap_err();
            assert!(errors.iter().any(|e| e.starts_with("console.path:")), "{bad}: {errors:?}");
        }
        let errors = load("[console]\ncolour = \"red\"").unwrap_err();
        assert!(errors.iter().any(|e| e == "console.colour: unknown key"), "{errors:?}");
    }

    #[test]
    fn a_public_admin_address_needs_an_opt_in() {
        let errors = load("[admin]\nlisten = \"0.0.0.0:9901\"").unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("console.enabled:") && e.contains("allow_plain_http_on_public_address")),
            "{errors:?}"
        );
        assert!(load("[admin]\nlisten = \"0.0.0.0:9901\"\n[console]\nenabled = false").is_ok());
        let opted = load("[admin]\nlisten = \"10.0.0.5:9901\"\n[console]\nallow_plain_http_on_public_address = true");
        assert!(opted.is_ok_and(|c| c.allow_plain_http_on_public_address));
        assert!(load("[admin]\nlisten = \"[::1]:9901\"").is_ok());
    }
}

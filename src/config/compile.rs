//! Raw config -> validated [`Config`]: a short orchestrator over the per-section
//! checks (`sections`, `tenants`), with the cross-section rules. Collects every
//! problem with its TOML path.

use super::checks::socket;
use super::errors::ConfigErrors;
use super::raw::RawConfig;
use super::sections::*;
use super::tenants::{organizations, stacks, users};
use super::types::Config;
use super::Env;

/// Validates a raw config; `unknown` are the ignored key paths from the parser, `env`
/// the environment variables the file names.
pub fn compile(raw: RawConfig, unknown: &[String], env: Env<'_>) -> Result<Config, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    for key in unknown {
        errs.push(key.as_str(), "unknown key");
    }
    let server = server(&raw, &mut errs);
    let admin_listen = socket(raw.admin.listen.as_deref().unwrap_or("127.0.0.1:9901"), "admin.listen", &mut errs);
    if let (Some(s), Some(a)) = (&server, admin_listen) {
        if s.listen == a && a.port() != 0 {
            errs.push("admin.listen", "must differ from server.listen (both cannot bind one address)");
        }
    }
    let mut upstream = match &raw.upstream {
        Some(u) => upstream(u, &mut errs),
        None => {
            errs.push("upstream", "missing table [upstream] (with url = \"http://...\")");
            None
        }
    };
    let notify = notify(&raw, env, &mut errs);
    let guard = guard(&raw.guard, &mut errs);
    let telemetry = telemetry(&raw.telemetry, &mut errs);
    let console = super::console::compile(&raw.console, admin_listen, &mut errs);
    let organizations = organizations(&raw.organizations, &mut errs);
    let users = users(&raw.users, &mut errs);
    let stacks = stacks(&raw.stacks, &organizations, &users, &mut errs);
    let store = store(&raw.store, env, &mut errs);
    let ratelimit = ratelimit(&raw.ratelimit, env, &mut errs);
    if let (Some(s), Some(u)) = (&server, &mut upstream) {
        u.client_timeout = s.limits.idle_timeout;
        if u.request_timeout >= s.limits.idle_timeout {
            errs.push(
                "server.idle_timeout",
                "must be longer than upstream.request_timeout (an idle connection would be cut mid-request)",
            );
        }
    }
    match (server, admin_listen, upstream, notify, guard, store, ratelimit, telemetry, console) {
        (
            Some(server),
            Some(admin_listen),
            Some(upstream),
            Some(notify),
            Some(guard),
            Some(store),
            Some(ratelimit),
            Some(telemetry),
            Some(console),
        ) if errs.0.is_empty() => Ok(Config {
            server,
            admin_listen,
            upstream,
            store,
            ratelimit,
            notify,
            guard,
            telemetry,
            console,
            organizations,
            users,
            stacks,
        }),
        _ => Err(errs),
    }
}

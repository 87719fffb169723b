//! The config compiler's tests.

use super::*;
use std::time::Duration;

/// A fixed "now" for warnings: 2026-12-07T00:00:00Z.
const NOW: i64 = 1_796_601_600;

/// Compiles config text with the given environment variables (and no others).
fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let (raw, unknown) = raw::parse(text).map_err(|e| ConfigErrors::single("", e.to_string()))?;
    let env = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
    compile(raw, &unknown, &env)
}

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

/// The password variable the SMTP tests name (given to the compiler, not the process).
const SMTP_PASSWORD_VAR: &str = "STACKGATE_TEST_COMPILE_SMTP_PASSWORD";

fn notify_config(notify: &str) -> Result<Config, Vec<String>> {
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[notify]\n{notify}");
    with_env(&text, &[(SMTP_PASSWORD_VAR, "pa55-w0rd-value")])
        .map_err(|e| e.0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect())
}

/// Found by the thirty-third outside probe: a TOML syntax error on the webhook line put
/// the URL, key and all, into `/reload`'s answer, the log and `check`'s output (toml's
/// own message quotes the line). Errors name the place, never the text there; a value a
/// message would repeat is withheld too.
#[test]
fn toml_errors_name_the_place_not_the_text() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";
    for (broken, line) in [
        ("[notify]\nwebhook = \"http://h/hooks?key=SLACKSECRET123\n", 4),
        ("[store]\nurl = \"postgres://sg:DBPASSWORD@db/sg\ntimeout = 1\n", 4),
        ("[notify]\nsmtp = \"smtp://u:SMTPSECRET@relay\"\n", 4),
        ("[store]\nurl = [\"postgres://sg:DBPASSWORD@db/sg\"]\n", 4),
        ("[server]\nmax_connections = \"SECRETLIKE\"\n", 4),
        ("[notify]\nwebhook = 987654321987\n", 4),
    ] {
        let text = format!("{base}{broken}");
        let errors = from_str(&text).unwrap_err().0;
        let shown = format!("{errors:?}");
        assert!(shown.contains(&format!("invalid TOML at line {line}, column")), "{broken}: {shown}");
        for secret in ["SLACKSECRET123", "DBPASSWORD", "SMTPSECRET", "SECRETLIKE", "987654321987"] {
            assert!(!shown.contains(secret), "{broken}: {shown}");
        }
    }
}

/// Found by the forty-sixth outside probe: a value in the wrong field was repeated by
/// its error (`check`'s output, `/reload`'s answer and the log): an SMTP password in
/// `relay`, a webhook URL in a duration, a Redis URL in `trusted_proxies`, an authtoken
/// as a role. An error names the field and what it takes, never the value it refused;
/// a duplicate or unknown entry is named by its path, a key in a path only when it reads
/// as a name.
#[test]
fn a_refused_value_is_never_repeated() {
    let stack = "[[organizations]]\nuid = \"o\"\n[[users]]\nuid = \"alice\"\nemail = \"a@example.com\"\n\
                 authtoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000001\"\n";
    let cases = [
        ("[server]\nhostnames = [\"u:HOSTSECRET@h\"]\n".to_owned(), "server.hostnames[0]"),
        ("[server]\ntrusted_proxies = [\"redis://:TRUSTSECRET@h\"]\n".to_owned(), "server.trusted_proxies[0]"),
        ("[server]\nuser_sessions = \"SESSSECRET\"\n".to_owned(), "server.user_sessions"),
        ("[server]\nlisten = \"u:LISTENSECRET@h\"\n".to_owned(), "server.listen"),
        ("[server.cors]\nallowed_origins = [\"https://u:CORSSECRET@h\"]\n".to_owned(), "server.cors.allowed_origins[0]"),
        ("[ratelimit]\ntimeout = \"rediss://:KPSECRET_Q9@h\"\n".to_owned(), "ratelimit.timeout"),
        ("[ratelimit]\nfail_mode = \"FAILSECRET\"\n".to_owned(), "ratelimit.fail_mode"),
        ("[notify]\nbefore = \"https://hooks.slack.com/services/T0/B0/SLACKSECRET\"\n".to_owned(), "notify.before"),
        (
            "[notify]\nsmtp = { relay = \"smtpuser:SMTPPASS_VVV111@smtp.example.com\", from = \"a@example.com\" }\n"
                .to_owned(),
            "notify.smtp.relay",
        ),
        (
            "[notify]\nsmtp = { relay = \"h:25\", from = \"smtp://u:FROMSECRET@h\" }\n".to_owned(),
            "notify.smtp.from",
        ),
        (format!("{stack}[[stacks]]\napi_key = \"k\"\norganization = \"ORG:SECRET@x\"\n"), "stacks[0].organization"),
        (
            format!("{stack}[[stacks]]\napi_key = \"k\"\norganization = \"o\"\nmembers = {{ alice = \"blt0123ROLESECRET\" }}\n"),
            "stacks[0].members.alice",
        ),
    ];
    let stack_with = |extra: &str| {
        format!("{stack}[[stacks]]\napi_key = \"k\"\norganization = \"o\"\nbranches = [\"main\"]\n{extra}")
    };
    let more = [
        (
            "[notify]\nsmtp = { relay = \"user:SMTPPASS@smtp.example.com:587\", from = \"a@example.com\" }\n"
                .to_owned(),
            "notify.smtp.relay",
        ),
        ("[upstream]\nurl = \"my SECRET\"\n".to_owned(), "upstream.url"),
        ("[store]\nurl_env = \"postgres://u:ENVSECRET@db/x\"\n".to_owned(), "store.url_env"),
        (stack_with("aliases = { \"u:ALIASSECRET@h\" = \"main\" }\n"), "stacks[0].aliases.(a key not shown)"),
        (stack_with("members = { \"u:MEMBERSECRET@h\" = \"owner\" }\n"), "stacks[0].members.(a key not shown)"),
        (
            stack_with(&format!(
                "[[stacks.tokens]]\nuid = \"t\"\nname = \"t\"\nsecret_sha256 = \"{}\"\n\
                 scope = [{{ module = \"https://hooks.example/MODSECRET\", acl = {{ read = true }} }}, \
                 {{ module = \"branch\", branches = [\"BRANCHSECRET\"] }}]\n",
                "1".repeat(64)
            )),
            "stacks[0].tokens[0].scope[0].module",
        ),
    ];
    for (extra, path) in cases.into_iter().chain(more) {
        let text = if extra.starts_with("[upstream]") {
            extra.clone()
        } else {
            format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{extra}")
        };
        let bad = match crate::config::from_str(&text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>(),
        };
        assert!(bad.iter().any(|e| e.starts_with(&format!("{path}: "))), "{path}: {bad:?}");
        assert!(!bad.iter().any(|e| e.contains("SECRET") || e.contains("SMTPPASS")), "{path}: {bad:?}");
    }
}

#[test]
fn unknown_keys_are_named_only_when_they_read_as_names() {
    let bad = errors(
        "[notify]\nwebhok = \"http://h/x\"\n\"https://hooks.example/x?key=HOOKSECRET\" = 1\n\
         key_HOOKSECRET_but_a_long_name_that_is_surely_not_ours = 2\n4111111111111111 = 3\n\
         cs0123456789abcdef0123456789abcdef = 4\n\"a.b\" = 5\n[[organizations]]\nuid = \"o\"\n[[stacks]]\napi_key = \"k\"\norganization = \"o\"\nmembers_HOOK1234567 = 6",
    );
    assert!(bad.iter().any(|e| e == "notify.webhok: unknown key"), "{bad:?}");
    assert_eq!(bad.iter().filter(|e| e.starts_with("notify.(a key not shown): unknown key")).count(), 5, "{bad:?}");
    assert!(bad.iter().any(|e| e == "stacks[0].(a key not shown): unknown key"), "{bad:?}");
    for secret in ["HOOKSECRET", "4111", "0123456789abcdef", "HOOK1234567"] {
        assert!(!bad.iter().any(|e| e.contains(secret)), "{secret}: {bad:?}");
    }
    assert!(errors("[server]\ncolour = 1").iter().any(|e| e == "server.colour: unknown key"));
    // In tables of fixed keys the parser itself names the key (the thirty-ninth probe).
    let token = "[[organizations]]\nuid = \"o\"\n[[stacks]]\napi_key = \"k\"\norganization = \"o\"\n\
                 [[stacks.tokens]]\nuid = \"t\"\nname = \"n\"\nsecret_sha256 = \"00\"\n";
    for (table, shown) in [
        ("acl = { read = true, \"https://hooks.example/T0/SECRETxyz\" = true }", false),
        ("acl = { read = true, cs00000000000000000000000000000009 = true }", false),
        ("acl = { read = true, writ = true }", true),
    ] {
        let text = format!("{token}scope = [{{ module = \"branch\", branches = [\"main\"], {table} }}]\n");
        let bad = errors(&text).join("\n");
        assert!(bad.contains("unknown field"), "{bad}");
        assert!(!bad.contains("SECRETxyz") && !bad.contains("0000000009"), "{bad}");
        assert_eq!(bad.contains("`writ`"), shown, "{bad}");
    }
}

#[test]
fn an_upstream_ca_file_needs_an_https_upstream() {
    let with = |url: &str| {
        let text = format!("[upstream]\nurl = \"{url}\"\nca_file = \"ca.pem\"\n");
        crate::config::from_str(&text).map(|_| ()).map_err(|e| e.to_string())
    };
    // Read at load (the thirty-ninth probe: `check` passed a file that held no CA).
    let missing = with("https://cma.internal:8443").unwrap_err();
    assert!(missing.contains("upstream.ca_file: ") && missing.contains("ca.pem"), "{missing}");
    let bad = with("http://127.0.0.1:9").unwrap_err();
    assert!(bad.contains("upstream.ca_file: only used with an https:// upstream url"), "{bad}");
}

#[test]
fn webhook_may_be_https_with_its_own_ca_file() {
    let cfg = notify_config("webhook = \"https://hooks.example.com/expiry\"\nwebhook_ca_file = \"ca.pem\"").unwrap();
    assert_eq!(cfg.notify.webhook.as_ref().map(|u| u.to_string()).as_deref(), Some("https://hooks.example.com/expiry"));
    assert_eq!(cfg.notify.webhook_ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
    assert!(notify_config("webhook = \"http://127.0.0.1:9100/h\"").is_ok());
    // Never echoed (a webhook URL often carries its key); user info would not be sent.
    let bad = notify_config("webhook = \"http://u:hooksecret@h/x y\"").unwrap_err();
    assert_eq!(bad, ["notify.webhook: must be an absolute http:// or https:// URL (the URL is not shown)"]);
    for unusable in ["http://127.0.0.1:s3cr3tpw/hook", "http://[s3cr3tpw]/hook", "http://h:99999/x"] {
        let bad = notify_config(&format!("webhook = \"{unusable}\"")).unwrap_err();
        assert_eq!(bad, ["notify.webhook: must be an absolute http:// or https:// URL (the URL is not shown)"]);
    }
    assert!(notify_config("webhook = \"http://[::1]:9100/h\"").is_ok());
    let bad = notify_config("webhook = \"http://u:hooksecret@h/services/x\"").unwrap_err();
    assert_eq!(bad, ["notify.webhook: must not hold user info (user:password@): it would not be sent"]);
    let bad = notify_config("webhook = \"ftp://h/x\"").unwrap_err();
    assert!(bad.iter().any(|e| e.starts_with("notify.webhook: must be an absolute http:// or https://")), "{bad:?}");
    let bad = notify_config("webhook = \"http://h/x\"\nwebhook_ca_file = \"ca.pem\"").unwrap_err();
    assert_eq!(bad, ["notify.webhook_ca_file: only used with an https:// webhook"]);
    let bad = notify_config("webhook_ca_file = \"ca.pem\"").unwrap_err();
    assert_eq!(bad, ["notify.webhook_ca_file: only used with an https:// webhook"]);
}

#[test]
fn smtp_starttls_and_auth_are_validated_and_the_password_never_shown() {
    let var = SMTP_PASSWORD_VAR;
    let smtp = |extra: &str| format!("smtp = {{ relay = \"mail.example.com:587\", from = \"sg@example.com\"{extra} }}");
    let cfg =
        notify_config(&smtp(&format!(", starttls = true, username = \"mailer\", password_env = \"{var}\""))).unwrap();
    let s = cfg.notify.smtp.as_ref().unwrap();
    assert!(s.starttls);
    let auth = s.auth.as_ref().unwrap();
    assert_eq!((auth.username.as_str(), auth.password.expose()), ("mailer", "pa55-w0rd-value"));
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("pa55-w0rd-value") && shown.contains("mailer"), "{shown}");
    assert!(cfg.warnings(NOW).is_empty(), "{:?}", cfg.warnings(NOW));

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
    let bad =
        notify_config(&smtp(", username = \"mailer\", password_env = \"STACKGATE_TEST_SURELY_UNSET\"")).unwrap_err();
    assert_eq!(bad, ["notify.smtp.password_env: environment variable STACKGATE_TEST_SURELY_UNSET is not set"]);
    let bad =
        notify_config(&smtp(&format!(", username = \"\", password_env = \"{var}\", starttls = \"yes\""))).unwrap_err();
    assert!(bad.iter().all(|e| !e.contains("pa55-w0rd-value")), "{bad:?}");
    let bad = notify_config(&smtp(&format!(", username = \"\", password_env = \"{var}\""))).unwrap_err();
    assert_eq!(bad, ["notify.smtp.username: must not be empty"]);

    // AUTH in clear: allowed, but a warning unless the relay is on this host.
    let cleartext = notify_config(&smtp(&format!(", username = \"mailer\", password_env = \"{var}\""))).unwrap();
    let warnings: Vec<String> = cleartext.warnings(NOW).iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("mail.example.com:587") && !warnings[0].contains("pa55"), "{warnings:?}");
    let local = format!("smtp = {{ relay = \"127.0.0.1:2525\", from = \"sg@example.com\", username = \"m\", password_env = \"{var}\" }}");
    assert!(notify_config(&local).unwrap().warnings(NOW).is_empty());
}

#[test]
fn notices_without_a_channel_are_a_warning_not_an_error() {
    let token = "[[organizations]]\nuid = \"o\"\n[[stacks]]\napi_key = \"k\"\norganization = \"o\"\n[[stacks.tokens]]\nuid = \"blt00000000000000n1\"\nname = \"n\"\nsecret_sha256 = \"48c9f795c89445276749b08e0e69d3e177a9e1d408cbfb968aab1272f246af24\"\nis_email_notification_enabled = true\nscope = [{ module = \"branch\", branches = [\"main\"], acl = { read = true } }]\n";
    let cfg = crate::config::from_str(&format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{token}")).unwrap();
    let warnings: Vec<String> = cfg.warnings(NOW).iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["stacks[0].tokens[0].is_email_notification_enabled: token blt00000000000000n1 has is_email_notification_enabled = true, but [notify] has neither webhook nor smtp: no expiry notice will be sent"]
    );
    assert!(!warnings[0].contains("48c9f7"), "never the secret's hash");
    let with_hook =
        format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[notify]\nwebhook = \"http://127.0.0.1:9/h\"\n{token}");
    assert!(crate::config::from_str(&with_hook).unwrap().warnings(NOW).is_empty());
}

/// A static token whose date has passed loads (it may expire while the gateway runs),
/// with a warning naming it; one expiring later, none.
#[test]
fn a_static_token_already_expired_is_a_warning() {
    let token = |expires: &str| {
        format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[[organizations]]\nuid = \"o\"\n[[stacks]]\napi_key = \"k\"\norganization = \"o\"\n[[stacks.tokens]]\nuid = \"blt00000000000000x1\"\nname = \"n\"\nsecret_sha256 = \"48c9f795c89445276749b08e0e69d3e177a9e1d408cbfb968aab1272f246af24\"\nexpires_on = \"{expires}\"\nscope = [{{ module = \"branch\", branches = [\"main\"], acl = {{ read = true }} }}]\n")
    };
    let past = crate::config::from_str(&token("2020-01-01")).unwrap();
    let warnings: Vec<String> = past.warnings(NOW).iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["stacks[0].tokens[0].expires_on: token blt00000000000000x1 has expired (the date has passed): every request with it is refused (401, error_code 105)"]
    );
    // Expiry is at midnight UTC of the date: expired from that second on.
    let midnight = 1_893_456_000; // 2030-01-01T00:00:00Z
    let at = crate::config::from_str(&token("2030-01-01")).unwrap();
    assert!(at.warnings(midnight - 1).is_empty());
    assert_eq!(at.warnings(midnight).len(), 1);
}

#[test]
fn static_token_names_follow_the_token_apis_rules() {
    let token = |name: &str, description: &str| {
        format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[[organizations]]\nuid = \"o\"\n[[stacks]]\napi_key = \"k\"\norganization = \"o\"\n[[stacks.tokens]]\nuid = \"blt00000000000000n1\"\nname = \"{name}\"\ndescription = \"{description}\"\nsecret_sha256 = \"48c9f795c89445276749b08e0e69d3e177a9e1d408cbfb968aab1272f246af24\"\nscope = [{{ module = \"branch\", branches = [\"main\"], acl = {{ read = true }} }}]\n")
    };
    assert!(crate::config::from_str(&token("ci export", "line one\\nline two")).is_ok());
    for (name, description, field) in [
        ("static\\u202eevil", "", "stacks[0].tokens[0].name"),
        ("a\\u001b[31m", "", "stacks[0].tokens[0].name"),
        ("n", "x\\u200by", "stacks[0].tokens[0].description"),
        ("n", "bell\\u0007", "stacks[0].tokens[0].description"),
    ] {
        let errors = crate::config::from_str(&token(name, description)).unwrap_err().to_string();
        assert!(errors.contains(field), "{name:?} {description:?}: {errors}");
    }
    // Plain spaces at the ends are trimmed, as the API trims them (the diff review of
    // the thirty-seventh probe's fixes), and a name is unique within its stack.
    let cfg = crate::config::from_str(&token("  ci export ", "")).unwrap();
    assert_eq!(cfg.stacks[0].tokens[0].name, "ci export");
    let second = "[[stacks.tokens]]\nuid = \"blt00000000000000n2\"\nname = \"ci export \"\nsecret_sha256 = \"58c9f795c89445276749b08e0e69d3e177a9e1d408cbfb968aab1272f246af24\"\nscope = [{ module = \"branch\", branches = [\"main\"], acl = { read = true } }]\n";
    let errors = crate::config::from_str(&(token("ci export", "") + second)).unwrap_err().to_string();
    assert!(errors.contains("stacks[0].tokens[1].name: is already used by another token of this stack"), "{errors}");
    // A branch list names one (the thirty-seventh probe).
    let empty = token("n", "").replace("branches = [\"main\"]", "branches = []");
    let errors = crate::config::from_str(&empty).unwrap_err().to_string();
    assert!(errors.contains("stacks[0].tokens[0].scope[0].branches"), "{errors}");
}

/// An upstream URL's user info (never sent, and maybe a password: not echoed) and dot or
/// empty segments in its base path (prefixed to every forwarded path as they are) are
/// refused; so is an admin listener on the main listener's address.
#[test]
fn upstream_urls_and_listen_addresses_that_cannot_work_are_refused() {
    let compiled = |text: &str| match crate::config::from_str(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect(),
    };
    for url in [
        "http://user:s3cret@127.0.0.1:9",
        "http://127.0.0.1:9/a/../b",
        "http://127.0.0.1:9/a/./b",
        "http://h:9/a//b",
        // A query may hold a token (twenty-eighth outside probe: it was echoed).
        "http://127.0.0.1:9/pre fix?token=s3cret",
        "http://127.0.0.1:9/a?token=s3cret",
        "ftp://127.0.0.1:9/#s3cret",
        // A port `http` cannot read would be dialled as the default one (the
        // forty-sixth outside probe: port 80).
        "http://127.0.0.1:4901099/x",
        "http://127.0.0.1:65536",
        "https://h:0",
        "http://[::1]:99999",
        "http://[::1]8080",
        "http://127.0.0.1:+80",
    ] {
        let bad = compiled(&format!("[upstream]\nurl = \"{url}\"\n"));
        assert!(bad.iter().any(|e| e.starts_with("upstream.url: ")), "{url}: {bad:?}");
        assert!(!bad.iter().any(|e| e.contains("s3cret")), "{url}: the password was echoed: {bad:?}");
    }
    assert!(compiled("[upstream]\nurl = \"http://127.0.0.1:9/api/v1/\"\n").is_empty());
    for good in ["http://127.0.0.1:65535", "https://[::1]:8443/v", "http://[::1]", "https://cma.example", "http://h:/"]
    {
        assert!(compiled(&format!("[upstream]\nurl = \"{good}\"\n")).is_empty(), "{good}");
    }
    let same = "[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n";
    assert!(compiled(same).iter().any(|e| e.starts_with("admin.listen: must differ")), "{:?}", compiled(same));
    let ephemeral = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n";
    assert!(compiled(ephemeral).is_empty(), "{:?}", compiled(ephemeral));
}

#[test]
fn inspected_bodies_are_bounded_each_and_together() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";
    let cfg = crate::config::from_str(base).unwrap();
    assert_eq!((cfg.server.max_inspected_body, cfg.server.max_inspected_total), (1 << 20, 64 << 20));
    // The total must hold one body at its limit, or no such body could ever be read.
    let bad = errors("[server]\nmax_inspected_body = \"2MiB\"\nmax_inspected_total = \"1MiB\"");
    assert_eq!(bad, ["server.max_inspected_total: 1048576 bytes is less than max_inspected_body (2097152)"]);
    assert!(errors("[server]\nmax_inspected_body = \"2MiB\"\nmax_inspected_total = \"2MiB\"").is_empty());
    assert!(errors("[server]\nmax_inspected_total = \"0B\"")
        .iter()
        .any(|e| e.starts_with("server.max_inspected_total")));
}

/// `expires_on` written as TOML writes a date (unquoted) reads as the quoted text; a
/// value of another type is named by its path, never repeated.
#[test]
fn expires_on_may_be_a_toml_date() {
    let token = |expires: &str| {
        format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[[organizations]]\nuid = \"o\"\n[[stacks]]\napi_key = \"k\"\norganization = \"o\"\n[[stacks.tokens]]\nuid = \"blt00000000000000x1\"\nname = \"n\"\nsecret_sha256 = \"48c9f795c89445276749b08e0e69d3e177a9e1d408cbfb968aab1272f246af24\"\nexpires_on = {expires}\nscope = [{{ module = \"branch\", branches = [\"main\"], acl = {{ read = true }} }}]\n")
    };
    let expiry = |text: &str| crate::config::from_str(&token(text)).map(|c| c.stacks[0].tokens[0].expires_on.clone());
    let quoted = expiry("\"2027-01-01\"").unwrap().unwrap();
    assert_eq!(expiry("2027-01-01").unwrap(), Some(quoted.clone()));
    assert_eq!(quoted.at, 1_798_761_600);
    let instant = expiry("\"2027-01-01T12:00:00Z\"").unwrap().unwrap();
    assert_eq!(expiry("2027-01-01T12:00:00Z").unwrap(), Some(instant));
    // A local date-time has no offset: refused as the quoted one is.
    assert!(expiry("2027-01-01T12:00:00").is_err());
    assert!(expiry("\"2027-01-01T12:00:00\"").is_err());
    let err = expiry("20270101").unwrap_err().to_string();
    assert!(err.contains("expires_on") && !err.contains("20270101"), "{err}");
}

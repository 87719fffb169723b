//! `stackgate token ...`: an operator client for a running gateway's token API.
//! The authtoken comes from `STACKGATE_AUTHTOKEN`, never a flag (flags end up in shell
//! history and `ps`).

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// The environment variable holding the operator's authtoken.
pub const AUTHTOKEN_ENV: &str = "STACKGATE_AUTHTOKEN";

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Gateway base URL, e.g. http://127.0.0.1:8080 or https://gw.example.com:8443
    /// (https trusts the system roots, or only --cacert).
    #[arg(long, env = "STACKGATE_URL")]
    url: String,
    /// PEM file of the CA(s) to trust for an https --url instead of the system roots
    /// (a gateway with a certificate from a private CA).
    #[arg(long, env = "STACKGATE_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// The stack's api key.
    #[arg(long, env = "STACKGATE_API_KEY")]
    api_key: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Create a token; prints its secret once.
    Create(Fields),
    /// List the stack's tokens (static and stored).
    List,
    /// Show one token.
    Show { uid: String },
    /// Update a token (only the given fields change).
    Update {
        uid: String,
        #[command(flatten)]
        fields: Fields,
    },
    /// Delete (revoke) a token.
    Delete { uid: String },
    /// Suspend a token: refused at once (401, "is disabled."), kept for `resume`.
    Suspend { uid: String },
    /// Restore a suspended token.
    Resume { uid: String },
    /// Show the stack's audit trail of token changes, newest first.
    Audit {
        /// How many entries (1..=500; default 50).
        #[arg(long)]
        limit: Option<u64>,
        /// How many of the newest entries to leave out.
        #[arg(long)]
        skip: Option<u64>,
    },
    /// Issue a new secret (printed once); the old one keeps working for --grace.
    Regenerate {
        uid: String,
        /// How long the old secret keeps working, e.g. 1h (default 0: it stops at
        /// once; at most 7d).
        #[arg(long)]
        grace: Option<String>,
    },
}

#[derive(Debug, Args)]
struct Fields {
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// `read` or `read-write`, applied to every --module (default: `read`).
    #[arg(long, value_parser = ["read", "read-write"])]
    access: Option<String>,
    /// A module to grant (repeatable; default `$all`).
    #[arg(long = "module")]
    modules: Vec<String>,
    /// A branch in scope (repeatable).
    #[arg(long = "branch")]
    branches: Vec<String>,
    /// A branch alias in scope (repeatable).
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// The whole scope as JSON (instead of --access/--module/--branch/--alias).
    #[arg(long, conflicts_with_all = ["access", "modules", "branches", "aliases"])]
    scope_json: Option<String>,
    /// YYYY-MM-DD (expires at 00:00 UTC that day), RFC 3339, or `never`.
    #[arg(long)]
    expires_on: Option<String>,
    /// Send expiry warnings for this token.
    #[arg(long)]
    notify: Option<bool>,
    /// Custom reads per second (with --rate-write); `--rate-read 0 --rate-write 0` resets
    /// to the organisation default.
    #[arg(long, requires = "rate_write")]
    rate_read: Option<u32>,
    #[arg(long, requires = "rate_read")]
    rate_write: Option<u32>,
}

impl Fields {
    fn to_body(&self, creating: bool) -> anyhow::Result<Value> {
        let mut t = Map::new();
        if let Some(n) = &self.name {
            t.insert("name".into(), json!(n));
        }
        if let Some(d) = &self.description {
            t.insert("description".into(), json!(d));
        }
        if let Some(scope) = self.scope(creating)? {
            t.insert("scope".into(), scope);
        }
        if let Some(e) = &self.expires_on {
            t.insert("expires_on".into(), if e == "never" { Value::Null } else { json!(e) });
        }
        if let Some(n) = self.notify {
            t.insert("is_email_notification_enabled".into(), json!(n));
        }
        if let (Some(r), Some(w)) = (self.rate_read, self.rate_write) {
            let rl = if r == 0 && w == 0 { Value::Null } else { json!({"read_per_second": r, "write_per_second": w}) };
            t.insert("rate_limit".into(), rl);
        }
        Ok(json!({ "token": t }))
    }

    fn scope(&self, creating: bool) -> anyhow::Result<Option<Value>> {
        if let Some(raw) = &self.scope_json {
            return Ok(Some(serde_json::from_str(raw).context("--scope-json is not JSON")?));
        }
        let given =
            self.access.is_some() || !self.modules.is_empty() || !self.branches.is_empty() || !self.aliases.is_empty();
        if !given && !creating {
            return Ok(None);
        }
        if self.branches.is_empty() && self.aliases.is_empty() {
            bail!("give at least one --branch or --alias");
        }
        let write = self.access.as_deref() == Some("read-write");
        let modules = if self.modules.is_empty() { vec!["$all".to_owned()] } else { self.modules.clone() };
        let mut scope: Vec<Value> =
            modules.iter().map(|m| json!({"module": m, "acl": {"read": true, "write": write}})).collect();
        if !self.branches.is_empty() {
            scope.push(json!({"module": "branch", "branches": self.branches, "acl": {"read": true}}));
        }
        if !self.aliases.is_empty() {
            scope.push(json!({"module": "branch_alias", "branch_aliases": self.aliases, "acl": {"read": true}}));
        }
        Ok(Some(Value::Array(scope)))
    }
}

/// Runs a `token` subcommand.
pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let authtoken = std::env::var(AUTHTOKEN_ENV).map_err(|_| anyhow!("set {AUTHTOKEN_ENV} to your authtoken"))?;
    let base = format!("{}/v3/stacks/management_tokens", base_url(&args.url)?);
    let (method, url, body) = match &args.action {
        Action::Create(f) => (Method::POST, base, Some(f.to_body(true)?)),
        Action::List => (Method::GET, base, None),
        Action::Show { uid } => (Method::GET, format!("{base}/{uid}"), None),
        Action::Update { uid, fields } => (Method::PUT, format!("{base}/{uid}"), Some(fields.to_body(false)?)),
        Action::Delete { uid } => (Method::DELETE, format!("{base}/{uid}"), None),
        Action::Suspend { uid } => (Method::PUT, format!("{base}/{uid}"), Some(json!({"token": {"enabled": false}}))),
        Action::Audit { limit, skip } => {
            let mut query = Vec::new();
            query.extend(skip.map(|s| format!("skip={s}")));
            query.extend(limit.map(|l| format!("limit={l}")));
            let url =
                if query.is_empty() { format!("{base}/audit") } else { format!("{base}/audit?{}", query.join("&")) };
            (Method::GET, url, None)
        }
        Action::Regenerate { uid, grace } => {
            (Method::POST, format!("{base}/{uid}/regenerate"), grace.as_ref().map(|g| json!({ "grace_period": g })))
        }
        Action::Resume { uid } => (Method::PUT, format!("{base}/{uid}"), Some(json!({"token": {"enabled": true}}))),
    };
    let tls = client_tls(&url, args.cacert.as_deref())?;
    let (status, value) = call(tls, method, &url, &args.api_key, &authtoken, body).await?;
    if !status.is_success() {
        bail!("{status}: {}", serde_json::to_string_pretty(&value).unwrap_or_default());
    }
    if let Action::Create(_) = args.action {
        let secret = value["token"]["token"].as_str().unwrap_or_default();
        let uid = value["token"]["uid"].as_str().unwrap_or_default();
        println!("created {uid}");
        println!("secret: {secret}");
        println!("(the secret is shown only this once; store it now)");
        return Ok(());
    }
    if let Action::Regenerate { .. } = args.action {
        let secret = value["token"]["token"].as_str().unwrap_or_default();
        let uid = value["token"]["uid"].as_str().unwrap_or_default();
        println!("regenerated {uid}");
        println!("secret: {secret}");
        match value["token"]["previous_token_expires_at"].as_str() {
            Some(until) => println!("the old secret works until {until}"),
            None => println!("the old secret no longer works"),
        }
        println!("(the secret is shown only this once; store it now)");
        return Ok(());
    }
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    Ok(())
}

/// `--url` as the base the API paths are added to: `http(s)://host[:port][/prefix]`.
/// Refused without echoing it when it holds user info (a password, which would not be
/// sent: the gateway takes the authtoken) or a query or fragment (the paths would land
/// after them), so that no error message repeats a credential.
fn base_url(url: &str) -> anyhow::Result<&str> {
    let refused = || anyhow!("--url must be http(s)://host[:port][/prefix], without user info, a query or a fragment");
    let uri: http::Uri = url.parse().map_err(|_| refused())?;
    let usable = matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| crate::config::host_and_port(a.as_str()))
        && !url.contains(['?', '#']);
    usable.then(|| url.trim_end_matches('/')).ok_or_else(refused)
}

/// The TLS settings for `url`: the CAs of `--cacert`, else the system roots for an https
/// URL. A plain-http URL without `--cacert` loads no roots, so a machine without any
/// still reaches a local http gateway.
fn client_tls(url: &str, cacert: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    let https = url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    let cfg = match (cacert, https) {
        (Some(file), _) => crate::tls::client_config(Some(file)),
        (None, true) => crate::tls::client_config(None),
        (None, false) => crate::tls::empty_client_config(),
    };
    cfg.context("TLS setup")
}

async fn call(
    tls: rustls::ClientConfig,
    method: Method,
    url: &str,
    api_key: &str,
    authtoken: &str,
    body: Option<Value>,
) -> anyhow::Result<(http::StatusCode, Value)> {
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    // Checked one by one, so that the message names what is wrong (never its value).
    let field = |value: &str, what: &str| {
        http::HeaderValue::from_str(value).map_err(|_| anyhow!("{what} holds a character a header cannot carry"))
    };
    let (api_key, authtoken) = (field(api_key, "--api-key")?, field(authtoken, AUTHTOKEN_ENV)?);
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("api_key", api_key)
        .header("authtoken", authtoken)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .context("invalid --url")?;
    // `{:#}` of the error chain: hyper's own message ("client error (Connect)") hides
    // the reason, such as an untrusted certificate.
    let resp = client.request(req).await.map_err(|e| anyhow!("cannot reach {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.context("reading the response")?.to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, value))
}

/// An error and its sources, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

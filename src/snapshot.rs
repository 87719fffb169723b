//! The one immutable value the request path reads. A reload or a token change builds
//! a new [`Snapshot`] and swaps it in whole (see [`crate::server::Gateway`]), so every
//! request sees a consistent config, token set and upstream.

use crate::config::{Config, Organization, UserSessions};
use crate::proxy::UpstreamClient;
use crate::token::{compile_scope, Grants, TokenRecord};
use http::uri::Authority;
use std::collections::HashMap;
use std::sync::Arc;

/// A stack as the request path needs it.
#[derive(Debug)]
pub struct StackView {
    pub api_key: Box<str>,
    pub branches: Box<[Box<str>]>,
    /// (alias, target branch)
    pub aliases: Box<[(Box<str>, Box<str>)]>,
    pub organization: Arc<Organization>,
}

impl StackView {
    pub fn has_branch(&self, name: &str) -> bool {
        self.branches.iter().any(|b| &**b == name)
    }

    pub fn alias_target(&self, name: &str) -> Option<&str> {
        self.aliases
            .iter()
            .find(|(a, _)| &**a == name)
            .map(|(_, t)| &**t)
    }
}

/// A token as the request path needs it.
#[derive(Debug)]
pub struct Token {
    pub uid: Box<str>,
    pub stack: Arc<StackView>,
    pub grants: Grants,
    /// Unix seconds; expired when `now >= expires_at`.
    pub expires_at: Option<i64>,
    /// `read` or `read-write`, for the identity header.
    pub access_label: &'static str,
}

/// Request-path settings copied out of the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub user_sessions: UserSessions,
    pub max_inspected_body: u64,
    pub forward_token: bool,
    /// Authorities an HTTP/1 absolute-form target may name.
    pub own_authorities: Vec<Authority>,
}

/// Everything the request path reads, built once per change.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub settings: Settings,
    pub upstream: UpstreamClient,
    stacks: HashMap<Box<str>, Arc<StackView>>,
    tokens: HashMap<[u8; 32], Arc<Token>>,
    /// authtoken SHA-256 -> user uid
    users: HashMap<[u8; 32], Box<str>>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config plus the store's tokens. Stored tokens
    /// whose stack or branches no longer exist are skipped (fail closed) and logged.
    /// State worth keeping (the upstream connection pool) is taken from `previous`.
    pub fn build(
        config: Arc<Config>,
        stored: &[TokenRecord],
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let orgs: HashMap<&str, Arc<Organization>> = config
            .organizations
            .iter()
            .map(|o| (o.uid.as_str(), Arc::new(o.clone())))
            .collect();
        let mut stacks = HashMap::with_capacity(config.stacks.len());
        for s in &config.stacks {
            let Some(org) = orgs.get(s.organization.as_str()) else {
                continue;
            };
            let view = StackView {
                api_key: s.api_key.as_str().into(),
                branches: s.branches.iter().map(|b| b.as_str().into()).collect(),
                aliases: s
                    .aliases
                    .iter()
                    .map(|(a, t)| (a.as_str().into(), t.as_str().into()))
                    .collect(),
                organization: Arc::clone(org),
            };
            stacks.insert(s.api_key.as_str().into(), Arc::new(view));
        }
        let mut tokens = HashMap::new();
        let config_tokens = config.stacks.iter().flat_map(|s| s.tokens.iter());
        for rec in config_tokens.chain(stored.iter()) {
            match compile_token(rec, &config, &stacks) {
                Some(token) => {
                    tokens.insert(rec.secret_sha256, Arc::new(token));
                }
                None => {
                    tracing::warn!(token.uid = %rec.uid, "token no longer matches its stack's config; ignored")
                }
            }
        }
        let users = config
            .users
            .iter()
            .map(|u| (u.authtoken_sha256, u.uid.as_str().into()))
            .collect();
        let settings = settings(&config);
        let upstream = match previous {
            Some(prev) if prev.upstream.matches(&config.upstream) => prev.upstream.clone(),
            _ => UpstreamClient::new(&config.upstream),
        };
        Snapshot {
            config,
            settings,
            upstream,
            stacks,
            tokens,
            users,
        }
    }

    pub fn stack(&self, api_key: &str) -> Option<&Arc<StackView>> {
        self.stacks.get(api_key)
    }

    pub fn token(&self, secret_sha256: &[u8; 32]) -> Option<&Arc<Token>> {
        self.tokens.get(secret_sha256)
    }

    /// The configured user with this authtoken hash.
    pub fn user(&self, authtoken_sha256: &[u8; 32]) -> Option<&str> {
        self.users.get(authtoken_sha256).map(|u| &**u)
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }
}

fn compile_token(
    rec: &TokenRecord,
    config: &Config,
    stacks: &HashMap<Box<str>, Arc<StackView>>,
) -> Option<Token> {
    let stack_cfg = config.stacks.iter().find(|s| s.api_key == rec.stack)?;
    let view = stacks.get(rec.stack.as_str())?;
    let grants = compile_scope(&rec.scope, stack_cfg).ok()?;
    let access_label = if grants.write.is_empty() {
        "read"
    } else {
        "read-write"
    };
    Some(Token {
        uid: rec.uid.as_str().into(),
        stack: Arc::clone(view),
        grants,
        expires_at: rec.expires_on.as_ref().map(|e| e.at),
        access_label,
    })
}

fn settings(config: &Config) -> Settings {
    let listen = config.server.listen;
    let mut own: Vec<Authority> = config
        .server
        .hostnames
        .iter()
        .filter_map(|h| h.parse().ok())
        .collect();
    for host in [listen.to_string(), format!("localhost:{}", listen.port())] {
        if let Ok(a) = host.parse() {
            own.push(a);
        }
    }
    Settings {
        user_sessions: config.server.user_sessions,
        max_inspected_body: config.server.max_inspected_body,
        forward_token: config.upstream.forward_token,
        own_authorities: own,
    }
}
